"""MemoryTransport held to the Transport contract (KafkaTransport's twin is in integration)."""

from __future__ import annotations

from broker.kafka.transport import MemoryTransport, Record
from tests.contracts import transport as contract


async def read_from(t: MemoryTransport, topic: str) -> list[Record]:
    return t.read_committed(topic)


async def test_publishes_all_records() -> None:
    """Every record of a publish becomes visible on its topic."""
    t = MemoryTransport()
    await contract.publishes_all_records(t, lambda topic: read_from(t, topic), ["a", "b"])


async def test_refuses_empty_publish() -> None:
    """Publishing nothing is a programming error."""
    await contract.refuses_empty_publish(MemoryTransport())


async def test_unknown_topic_publishes_nothing() -> None:
    """One missing topic makes the whole publish fail with nothing visible."""
    t = MemoryTransport(known_topics={"a"})
    await contract.unknown_topic_publishes_nothing(t, lambda topic: read_from(t, topic), "a", "zz")


async def test_claims_a_referral_once() -> None:
    """A claim settled against the ledger is published once."""
    t = MemoryTransport()
    await contract.claims_a_referral_once(t, lambda topic: read_from(t, topic), "a")


async def test_publishes_an_unsettled_claim_nobody_published() -> None:
    t = MemoryTransport()
    await contract.publishes_an_unsettled_claim_nobody_published(
        t, lambda topic: read_from(t, topic), "a"
    )
