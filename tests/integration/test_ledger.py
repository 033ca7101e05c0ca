"""Exactly one publication per referral id, across brokers, crashes and a wedged transaction.

Brokers of one deployment share the state store (``broker.state``): of two given the same id
at once, one claims and publishes it, the other answers with its receipt. A broker that dies
(or loses its store) between Kafka's commit and recording the receipt leaves a pending claim;
the next submission of that id settles it against the ledger in Kafka
(``broker.kafka.ledger``) and replays the receipt instead of publishing again.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from broker.config import Settings
from broker.kafka.ledger import AlreadyPublished, Claim, ledger_topic
from broker.kafka.topics import delivery_topic
from broker.kafka.transport import KafkaTransport, Record
from broker.state import Published, SqliteStore
from schemas.errors import StateUnavailable
from schemas.federation import Federation
from tests.conftest import FederationKeys
from tests.integration.conftest import client, running_broker
from tests.kafka_support import read_committed
from tests.samples import sample

JOSE = {"Content-Type": "application/jose"}


def shared(path: Path) -> SqliteStore:
    return SqliteStore(path, busy_timeout_s=10.0)


async def post(session: aiohttp.ClientSession, url: str, signed: bytes) -> tuple[int, Any]:
    async with session.post(f"{url}/v1/referrals", data=signed, headers=JOSE) as response:
        return response.status, await response.json()


async def test_two_brokers_given_the_same_ids_at_once_publish_each_once(
    kafka_settings: Settings,
    federation: Federation,
    federation_keys: FederationKeys,
    tmp_path: Path,
) -> None:
    """40 referrals, each sent to two brokers (one state store) at the same moment: each is
    delivered once, one broker answers 202 and the other 200 with the same receipt."""
    police = client(federation_keys, "https://unused")
    bodies = [sample() for _ in range(40)]
    signed = [police.sign(json.dumps(b).encode()) for b in bodies]
    a_settings = kafka_settings.model_copy(update={"transactional_id": "race-a"})
    b_settings = kafka_settings.model_copy(update={"transactional_id": "race-b"})
    connector = aiohttp.TCPConnector(ssl=federation_keys.client_ssl("kelder-police"), limit=40)
    async with (
        running_broker(a_settings, federation, federation_keys, store=shared(tmp_path / "s")) as a,
        running_broker(b_settings, federation, federation_keys, store=shared(tmp_path / "s")) as b,
        aiohttp.ClientSession(connector=connector) as session,
    ):
        answers = await asyncio.wait_for(
            asyncio.gather(*(post(session, url, s) for s in signed for url in (a, b))), 120
        )
    for i in range(40):
        (first, r1), (second, r2) = answers[2 * i], answers[2 * i + 1]
        assert sorted([first, second]) == [200, 202], (first, second)
        assert r1 == r2  # the same receipt, whichever broker published
    ids = [b["header"]["referral_id"] for b in bodies]
    topic = delivery_topic(kafka_settings.topic_prefix, "kelder-idva")
    seen = Counter(
        r.key.decode() for r in await read_committed(kafka_settings.kafka_bootstrap_servers, topic)
    )
    assert seen == dict.fromkeys(ids, 1)
    kept = await read_committed(
        kafka_settings.kafka_bootstrap_servers, ledger_topic(kafka_settings.topic_prefix)
    )
    assert Counter(r.key.decode() for r in kept) == dict.fromkeys(ids, 1)


class ForgetfulStore(SqliteStore):
    """A store that fails to record the first receipt, as if the broker died right after
    Kafka's commit: the claim stays pending."""

    failed = False

    async def published(self, items: Sequence[Published], owner: str, now: datetime) -> None:
        if not self.failed:
            self.failed = True
            raise StateUnavailable("the state store did not answer (test)")
        await super().published(items, owner, now)


async def test_a_claim_left_pending_after_the_commit_is_settled_not_published_again(
    kafka_settings: Settings,
    federation: Federation,
    federation_keys: FederationKeys,
    tmp_path: Path,
) -> None:
    """Broker A commits a referral but cannot record its receipt (503). The sender's retry
    to broker B waits while A's claim is young, then settles it against the ledger: 200 with
    the receipt A committed, and still one disclosure. A retry to A itself settles at once."""
    settings = kafka_settings.model_copy(update={"publish_timeout_s": 2.0, "claim_lease_s": 4.0})
    a_settings = settings.model_copy(update={"transactional_id": "settle-a"})
    b_settings = settings.model_copy(update={"transactional_id": "settle-b"})
    police = client(federation_keys, "https://unused")
    first, second = sample(), sample()
    connector = aiohttp.TCPConnector(ssl=federation_keys.client_ssl("kelder-police"))
    forgetful = ForgetfulStore(tmp_path / "s")
    async with (
        running_broker(a_settings, federation, federation_keys, store=forgetful) as a,
        running_broker(b_settings, federation, federation_keys, store=shared(tmp_path / "s")) as b,
        aiohttp.ClientSession(connector=connector) as session,
    ):
        signed = police.sign(json.dumps(first).encode())
        assert (await post(session, a, signed))[0] == 503
        statuses = []
        for _ in range(30):  # bounded: the lease is 4 s, each BUSY answer takes 2 s
            status, receipt = await post(session, b, signed)
            statuses.append(status)
            if status != 503:
                break
        assert statuses[-1] == 200, statuses
        assert receipt["referral_id"] == first["header"]["referral_id"]
        # A retry to the broker that lost track settles its own claim at once.
        forgetful.failed = False
        other = police.sign(json.dumps(second).encode())
        a_store_fails_again = (await post(session, a, other))[0]
        assert a_store_fails_again == 503
        assert (await post(session, a, other))[0] == 200
    topic = delivery_topic(settings.topic_prefix, "kelder-idva")
    seen = Counter(
        r.key.decode() for r in await read_committed(settings.kafka_bootstrap_servers, topic)
    )
    ids = [first["header"]["referral_id"], second["header"]["referral_id"]]
    assert {rid: seen[rid] for rid in ids} == dict.fromkeys(ids, 1)


async def test_a_restarted_transport_settles_what_its_predecessor_published(
    kafka_settings: Settings,
) -> None:
    """What one producer published, a later one finds when asked to settle the claim."""
    topic = delivery_topic(kafka_settings.topic_prefix, "kelder-csc")
    rid = str(uuid.uuid4())
    first = KafkaTransport(kafka_settings)
    await first.start()
    try:
        await first.publish([Record(topic, rid.encode(), b"d")], claim=Claim(rid, b"kept"))
        holder = first.publisher_id()
    finally:
        await first.stop()
    second = KafkaTransport(kafka_settings)
    await second.start()
    try:
        with pytest.raises(AlreadyPublished) as raised:
            await second.publish(
                [Record(topic, rid.encode(), b"again")],
                claim=Claim(rid, b"x", unsettled_by=holder),
            )
        assert raised.value.value == b"kept"
    finally:
        await second.stop()


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
    """The audit topic refuses every record (no batch fits), which can also wedge the claims
    producer's transactional id: Kafka cannot write the abort marker. Once the topic takes
    records again, the same submission succeeds without restarting anything (the producer
    moves to a fresh transactional id if it must), and /readyz says failing, then ready."""
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
        for _ in range(10):  # bounded: the producer may first have to leave its wedged id
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
