"""No 202 without Kafka's acknowledgement: stop Kafka, submit, restart, submit again.

This test runs its own Kafka broker on a free port with its own state folder, so stopping it
disturbs neither the other tests nor another test run on the same machine.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from broker.config import Settings
from broker.kafka.topics import delivery_topic, federation_topics
from broker.kafka.transport import create_topics
from schemas.federation import Federation
from tests.conftest import FederationKeys
from tests.integration.conftest import client, make_settings, running_broker
from tests.kafka_support import LocalKafka, private_kafka, read_committed
from tests.samples import sample

JOSE = {"Content-Type": "application/jose"}


@pytest.fixture(scope="module")
def own_kafka(tmp_path_factory: pytest.TempPathFactory, kafka: LocalKafka) -> Iterator[LocalKafka]:
    yield from private_kafka(tmp_path_factory.mktemp("outage-kafka"))


@pytest.fixture
async def outage_broker(
    own_kafka: LocalKafka, federation: Federation, federation_keys: FederationKeys
) -> AsyncIterator[tuple[str, Settings]]:
    settings = make_settings(
        own_kafka.bootstrap, federation_keys.root, publish_timeout_s=5.0, readiness_timeout_s=2.0
    )
    await create_topics(settings, federation_topics(federation, settings.topic_prefix))
    async with running_broker(settings, federation, federation_keys) as url:
        yield url, settings


async def test_stopped_kafka_means_503_and_nothing_half_sent(
    own_kafka: LocalKafka,
    outage_broker: tuple[str, Settings],
    federation_keys: FederationKeys,
    federation: Federation,
) -> None:
    """With Kafka down the sender gets 503 problem+json; after restart the same submission is
    accepted and each recipient has it exactly once."""
    url, settings = outage_broker
    data = sample()
    rid = data["header"]["referral_id"].encode()
    police = client(federation_keys, url)
    connector = aiohttp.TCPConnector(ssl=federation_keys.client_ssl("kelder-police"))
    async with aiohttp.ClientSession(connector=connector) as s:
        warm = police.sign(json.dumps(sample()).encode())
        r = await s.post(f"{url}/v1/referrals", data=warm, headers=JOSE)
        assert r.status == 202  # the producer is connected before the outage
        body = police.sign(json.dumps(data).encode())

        own_kafka.stop()
        try:
            r = await s.post(f"{url}/v1/referrals", data=body, headers=JOSE)
            assert r.status == 503
            assert r.content_type == "application/problem+json"
            assert (await r.json())["type"] == "urn:cairn:problem:kafka-unavailable"
            assert (await s.get(f"{url}/readyz")).status == 503
        finally:
            own_kafka.start()
            # Wait for partition leaders again before reading back.
            await create_topics(settings, federation_topics(federation, settings.topic_prefix))

        for agency in data["header"]["recipients"]:
            topic = delivery_topic(settings.topic_prefix, agency)
            keys = [r.key for r in await read_committed(own_kafka.bootstrap, topic)]
            assert rid not in keys, f"{agency} saw a submission that was answered 503"

        r = await s.post(f"{url}/v1/referrals", data=body, headers=JOSE)
        assert r.status == 202, await r.text()
        assert (await s.get(f"{url}/readyz")).status == 200

    for agency in data["header"]["recipients"]:
        topic = delivery_topic(settings.topic_prefix, agency)
        keys: list[bytes] = []
        for _ in range(20):  # bounded: the restarted broker may take a moment to mark commits
            keys = [r.key for r in await read_committed(own_kafka.bootstrap, topic)]
            if rid in keys:
                break
            await asyncio.sleep(0.5)
        assert keys.count(rid) == 1, f"{agency} has the referral {keys.count(rid)} times"
