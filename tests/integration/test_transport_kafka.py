"""KafkaTransport held to the same Transport contract as MemoryTransport."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from broker.config import Settings
from broker.kafka.topics import delivery_topic
from broker.kafka.transport import KafkaTransport, Record
from tests.contracts import transport as contract
from tests.kafka_support import read_committed


@pytest.fixture
async def transport(kafka_settings: Settings) -> AsyncIterator[KafkaTransport]:
    t = KafkaTransport(kafka_settings)
    await t.start()
    yield t
    await t.stop()


def reader(settings: Settings):  # type: ignore[no-untyped-def]
    async def read(topic: str) -> list[Record]:
        return await read_committed(settings.kafka_bootstrap_servers, topic)

    return read


async def test_publishes_all_records(transport: KafkaTransport, kafka_settings: Settings) -> None:
    """Every record of one publish is committed and readable, headers included."""
    topics = [delivery_topic(kafka_settings.topic_prefix, a) for a in ("kelder-idva", "kelder-csc")]
    await contract.publishes_all_records(transport, reader(kafka_settings), topics)


async def test_refuses_empty_publish(transport: KafkaTransport) -> None:
    """Publishing nothing is a programming error."""
    await contract.refuses_empty_publish(transport)


async def test_unknown_topic_publishes_nothing(
    transport: KafkaTransport, kafka_settings: Settings
) -> None:
    """A topic that does not exist fails the whole publish fast; the other record is not visible."""
    good = delivery_topic(kafka_settings.topic_prefix, "kelder-idva")
    missing = delivery_topic(kafka_settings.topic_prefix, "no-such-agency")
    await contract.unknown_topic_publishes_nothing(transport, reader(kafka_settings), good, missing)


async def test_ready_while_kafka_answers(transport: KafkaTransport) -> None:
    """readiness is true against a running cluster."""
    assert await transport.ready()


async def test_claims_a_referral_once(transport: KafkaTransport, kafka_settings: Settings) -> None:
    """A claim settled against the ledger in Kafka is published once."""
    topic = delivery_topic(kafka_settings.topic_prefix, "kelder-idva")
    await contract.claims_a_referral_once(transport, reader(kafka_settings), topic)


async def test_publishes_an_unsettled_claim_nobody_published(
    transport: KafkaTransport, kafka_settings: Settings
) -> None:
    """Settling fences the producer named, reads the ledger, and publishes what was not."""
    topic = delivery_topic(kafka_settings.topic_prefix, "kelder-idva")
    await contract.publishes_an_unsettled_claim_nobody_published(
        transport, reader(kafka_settings), topic
    )
