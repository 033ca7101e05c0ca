"""Exactly one publication per referral id, across brokers and after a wedged transaction.

Two ``KafkaTransport``s with the same topic prefix are two brokers of one deployment: they
share the ledger (``broker.kafka.ledger``) and fence each other per shard.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import aiohttp
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from broker.config import Settings
from broker.kafka.ledger import AlreadyPublished, Claim, ledger_topic
from broker.kafka.topics import delivery_topic
from broker.kafka.transport import KafkaTransport, Record
from schemas.errors import TransportError
from schemas.federation import Federation
from tests.conftest import FederationKeys
from tests.integration.conftest import client, running_broker
from tests.kafka_support import read_committed
from tests.samples import sample

JOSE = {"Content-Type": "application/jose"}


@contextlib.asynccontextmanager
async def brokers(settings: Settings, n: int) -> AsyncIterator[list[KafkaTransport]]:
    transports = [
        KafkaTransport(settings.model_copy(update={"transactional_id": f"{tid}-{i}"}))
        for i, tid in enumerate([settings.transactional_id] * n)
    ]
    for t in transports:
        await t.start()
    try:
        yield transports
    finally:
        for t in transports:
            await t.stop()


async def claim_until_done(t: KafkaTransport, topic: str, referral_id: str) -> str:
    """Publish ``referral_id`` as a retrying broker would: until it is published or known."""
    for _ in range(20):
        try:
            await t.publish(
                [Record(topic=topic, key=referral_id.encode(), value=b"disclosure")],
                claim=Claim(referral_id, b"kept"),
            )
            return "published"
        except AlreadyPublished:
            return "known"
        except TransportError:  # fenced by the other broker: nothing of ours is visible
            await asyncio.sleep(0.05)
    raise AssertionError(f"{referral_id} neither published nor known after 20 tries")


async def test_two_brokers_racing_publish_each_referral_once(kafka_settings: Settings) -> None:
    """The same 40 referral ids sent to two brokers at once: each is on the topic once."""
    topic = delivery_topic(kafka_settings.topic_prefix, "kelder-idva")
    ids = [str(uuid.uuid4()) for _ in range(40)]
    async with brokers(kafka_settings, 2) as (a, b):
        outcomes = await asyncio.wait_for(
            asyncio.gather(
                *(claim_until_done(t, topic, rid) for rid in ids for t in (a, b)),
            ),
            120,
        )
    assert Counter(outcomes) == {"published": 40, "known": 40}
    seen = Counter(
        r.key.decode() for r in await read_committed(kafka_settings.kafka_bootstrap_servers, topic)
    )
    assert seen == dict.fromkeys(ids, 1)
    kept = await read_committed(
        kafka_settings.kafka_bootstrap_servers, ledger_topic(kafka_settings.topic_prefix)
    )
    assert Counter(r.key.decode() for r in kept) == dict.fromkeys(ids, 1)


async def test_a_restarted_broker_knows_what_its_predecessor_published(
    kafka_settings: Settings,
) -> None:
    """What one broker published, a broker started afterwards finds in the ledger."""
    topic = delivery_topic(kafka_settings.topic_prefix, "kelder-csc")
    rid = str(uuid.uuid4())
    async with brokers(kafka_settings, 1) as (first,):
        assert await claim_until_done(first, topic, rid) == "published"
    async with brokers(kafka_settings, 1) as (second,):
        assert await claim_until_done(second, topic, rid) == "known"


async def set_topic_config(settings: Settings, topic: str, **configs: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, configs=configs)]
        )
    finally:
        await admin.close()


async def readyz(session: aiohttp.ClientSession, url: str) -> dict[str, str]:
    async with session.get(f"{url}/readyz") as response:
        body = await response.json()
        assert (response.status == 200) == (body["status"] == "ready")
        return dict(body)


async def wait_kafka_state(session: aiohttp.ClientSession, url: str, state: str) -> None:
    for _ in range(120):
        if (await readyz(session, url))["kafka"] == state:
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"/readyz never said kafka {state}")


async def submit(session: aiohttp.ClientSession, url: str, signed: bytes) -> int:
    async with session.post(f"{url}/v1/referrals", data=signed, headers=JOSE) as response:
        await response.read()
        return response.status


async def test_broker_heals_after_the_audit_topic_is_writable_again(
    kafka_settings: Settings, federation: Federation, federation_keys: FederationKeys
) -> None:
    """The audit topic refuses every record (no batch fits), which also wedges the shard's
    transactional id: Kafka cannot write the abort marker. Once the topic takes records again,
    the same submission succeeds without restarting anything (the shard moves to a fresh
    transactional id), and /readyz says failing, then ready."""
    settings = kafka_settings.model_copy(
        update={
            "kafka_connect_timeout_s": 3.0,
            "publish_timeout_s": 4.0,
            "readiness_probe_every_s": 0.5,
        }
    )
    audit = f"{settings.topic_prefix}.audit"
    police = client(federation_keys, "https://unused")
    connector = aiohttp.TCPConnector(ssl=federation_keys.client_ssl("kelder-police"))
    async with (
        running_broker(settings, federation, federation_keys) as url,
        aiohttp.ClientSession(connector=connector) as s,
    ):
        assert await submit(s, url, police.sign(json.dumps(sample()).encode())) == 202
        assert (await readyz(s, url))["kafka"] == "reachable"
        await set_topic_config(settings, audit, **{"max.message.bytes": "10"})
        await asyncio.sleep(1)
        body = sample()
        signed = police.sign(json.dumps(body).encode())
        assert await submit(s, url, signed) == 503
        await wait_kafka_state(s, url, "failing")
        assert await submit(s, url, signed) == 503  # still refused, and still nothing sent
        await set_topic_config(settings, audit, **{"max.message.bytes": "1048588"})
        await wait_kafka_state(s, url, "reachable")
        statuses = []
        for _ in range(10):  # bounded: the shard may first have to leave its wedged id
            statuses.append(await submit(s, url, signed))
            if statuses[-1] == 202:
                break
        assert statuses[-1] == 202, statuses
        assert set(statuses[:-1]) <= {503}
        assert await submit(s, url, signed) == 200  # a retry gets the first receipt
    rid = body["header"]["referral_id"]
    topic = delivery_topic(settings.topic_prefix, "kelder-idva")
    delivered = Counter(
        r.key.decode() for r in await read_committed(settings.kafka_bootstrap_servers, topic)
    )
    assert delivered[rid] == 1
