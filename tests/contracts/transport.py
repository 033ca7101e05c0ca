"""The Transport contract, run against MemoryTransport (unit) and KafkaTransport (integration).

``read`` returns what a read-committed consumer of a topic sees.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from broker.kafka.ledger import AlreadyPublished, Claim
from broker.kafka.transport import Record, Transport
from schemas.errors import TransportError

Reader = Callable[[str], Awaitable[list[Record]]]


async def publishes_all_records(transport: Transport, read: Reader, topics: list[str]) -> None:
    records = [
        Record(topic=t, key=b"r-1", value=f"v-{t}".encode(), headers=(("h", b"1"),)) for t in topics
    ]
    await transport.publish(records)
    for t in topics:
        got = await read(t)
        assert [(r.key, r.value) for r in got] == [(b"r-1", f"v-{t}".encode())]
        assert ("h", b"1") in got[0].headers


async def refuses_empty_publish(transport: Transport) -> None:
    with pytest.raises(RuntimeError):
        await transport.publish([])


async def unknown_topic_publishes_nothing(
    transport: Transport, read: Reader, good_topic: str, missing_topic: str
) -> None:
    records = [
        Record(topic=good_topic, key=b"r-2", value=b"x"),
        Record(topic=missing_topic, key=b"r-2", value=b"y"),
    ]
    with pytest.raises(TransportError):
        await transport.publish(records)
    assert [r for r in await read(good_topic) if r.key == b"r-2"] == []


async def claims_a_referral_once(transport: Transport, read: Reader, topic: str) -> None:
    """A claim the caller could not settle (``unsettled_by``: a producer that may have
    published it, e.g. one that died before its claim was marked published) is checked against
    the ledger: published already sends nothing and says what was kept the first time."""
    record = Record(topic=topic, key=b"r-claim", value=b"first")
    await transport.publish([record], claim=Claim("r-claim", b"kept"))
    with pytest.raises(AlreadyPublished) as raised:
        await transport.publish(
            [Record(topic=topic, key=b"r-claim", value=b"second")],
            claim=Claim("r-claim", b"x", unsettled_by=transport.publisher_id()),
        )
    assert raised.value.value == b"kept"
    assert [r.value for r in await read(topic) if r.key == b"r-claim"] == [b"first"]


async def publishes_an_unsettled_claim_nobody_published(
    transport: Transport, read: Reader, topic: str
) -> None:
    """Settling finds the referral was never published: it is published now, once."""
    record = Record(topic=topic, key=b"r-unsettled", value=b"only")
    await transport.publish(
        [record], claim=Claim("r-unsettled", b"kept", unsettled_by=transport.publisher_id())
    )
    assert [r.value for r in await read(topic) if r.key == b"r-unsettled"] == [b"only"]
