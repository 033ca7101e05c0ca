"""No 202 without Kafka's acknowledgement: stop Kafka, submit, restart, submit again.

This test runs its own Kafka broker on another port with its own state folder, so stopping it
does not disturb the other tests.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from broker.app import create_app
from broker.config import Settings
from broker.topics import delivery_topic, federation_topics
from broker.transport import KafkaTransport, create_topics
from schemas.federation import Federation
from tests.integration.conftest import make_settings
from tests.kafka_support import LocalKafka, read_committed
from tests.samples import sample

JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def own_kafka(tmp_path_factory: pytest.TempPathFactory, kafka: LocalKafka) -> Iterator[LocalKafka]:
    local = LocalKafka(kafka.port + 10_000, tmp_path_factory.mktemp("outage-kafka"))
    local.start()
    yield local
    local.stop()


@pytest.fixture
async def outage_broker(
    own_kafka: LocalKafka, federation: Federation
) -> AsyncIterator[tuple[str, Settings]]:
    settings = make_settings(own_kafka.bootstrap, publish_timeout_s=5.0, readiness_timeout_s=2.0)
    await create_topics(settings, federation_topics(federation, settings.topic_prefix))
    server = TestServer(create_app(settings, federation, KafkaTransport(settings)))
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/"), settings
    finally:
        await asyncio.wait_for(server.close(), 30)


async def test_stopped_kafka_means_503_and_nothing_half_sent(
    own_kafka: LocalKafka, outage_broker: tuple[str, Settings], tmp_path: Path
) -> None:
    """With Kafka down the sender gets 503 problem+json; after restart the same submission is
    accepted and each recipient has it exactly once."""
    url, settings = outage_broker
    data = sample()
    body = json.dumps(data)
    rid = data["header"]["referral_id"].encode()
    async with aiohttp.ClientSession() as s:
        warm = sample()
        r = await s.post(f"{url}/v1/referrals", data=json.dumps(warm), headers=JSON)
        assert r.status == 202  # the producer is connected before the outage

        own_kafka.stop()
        try:
            r = await s.post(f"{url}/v1/referrals", data=body, headers=JSON)
            assert r.status == 503
            assert r.content_type == "application/problem+json"
            assert (await r.json())["type"] == "urn:cairn:problem:kafka-unavailable"
            assert (await s.get(f"{url}/readyz")).status == 503
        finally:
            own_kafka.start()

        for agency in data["header"]["recipients"]:
            topic = delivery_topic(settings.topic_prefix, agency)
            keys = [r.key for r in await read_committed(own_kafka.bootstrap, topic)]
            assert rid not in keys, f"{agency} saw a submission that was answered 503"

        r = await s.post(f"{url}/v1/referrals", data=body, headers=JSON)
        assert r.status == 202, await r.text()
        assert (await s.get(f"{url}/readyz")).status == 200

    for agency in data["header"]["recipients"]:
        topic = delivery_topic(settings.topic_prefix, agency)
        keys = [r.key for r in await read_committed(own_kafka.bootstrap, topic)]
        assert keys.count(rid) == 1, f"{agency} has the referral {keys.count(rid)} times"
