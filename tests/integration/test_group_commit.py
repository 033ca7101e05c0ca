"""Group commit through real Kafka: concurrent submissions share transactions, each answered
only after the transaction holding its records committed, and a record Kafka refuses fails
its own submission only."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import time
import uuid
from collections import Counter
from typing import Any, ClassVar

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

import broker.kafka.transport as transport_module
from broker.config import Settings
from broker.kafka.ledger import Claim, ledger_topic
from broker.kafka.topics import delivery_topic
from broker.kafka.transport import KafkaTransport, Record
from schemas.errors import DisclosureTooLarge
from schemas.federation import Federation
from tests.conftest import FederationKeys
from tests.integration.conftest import client, running_broker
from tests.integration.test_ledger import set_topic_config
from tests.kafka_support import read_committed
from tests.samples import sample

JOSE = {"Content-Type": "application/jose"}


class SpyProducer(AIOKafkaProducer):  # type: ignore[misc]
    """Notes which keys each committed transaction held, and when its commit returned."""

    commits: ClassVar[list[tuple[float, set[bytes]]]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._keys: set[bytes] = set()

    async def begin_transaction(self) -> None:
        self._keys = set()
        await super().begin_transaction()

    async def send(self, topic: str, value: Any = None, key: Any = None, **kw: Any) -> Any:
        if key is not None:
            self._keys.add(key)
        return await super().send(topic, value, key=key, **kw)

    async def commit_transaction(self) -> None:
        await super().commit_transaction()
        SpyProducer.commits.append((time.monotonic(), set(self._keys)))


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> type[SpyProducer]:
    SpyProducer.commits = []
    monkeypatch.setattr(transport_module, "AIOKafkaProducer", SpyProducer)
    return SpyProducer


async def offsets_of(bootstrap: str, topic: str) -> list[tuple[str, int, int]]:
    """(key, partition, offset) of every committed record of ``topic``."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False
    )
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        await asyncio.sleep(0.5)  # the commit markers of the last transaction settle
        end = await consumer.end_offsets(tps)
        out: list[tuple[str, int, int]] = []
        for _ in range(200):
            if all([await consumer.position(tp) >= end[tp] for tp in tps]):
                return out
            for messages in (await consumer.getmany(timeout_ms=200)).values():
                out += [(m.key.decode(), m.partition, m.offset) for m in messages if m.key]
        raise TimeoutError(f"could not read {topic} to its end")
    finally:
        await consumer.stop()


async def test_concurrent_submissions_share_transactions_and_wait_for_their_commit(
    kafka_settings: Settings,
    federation: Federation,
    federation_keys: FederationKeys,
    spy: type[SpyProducer],
) -> None:
    settings = kafka_settings.model_copy(update={"group_commit_linger_s": 0.02})
    police = client(federation_keys, "https://unused")
    bodies = [sample() for _ in range(50)]
    signed = [police.sign(json.dumps(b).encode()) for b in bodies]
    answered: dict[str, float] = {}
    connector = aiohttp.TCPConnector(ssl=federation_keys.client_ssl("kelder-police"), limit=50)
    async with (
        running_broker(settings, federation, federation_keys) as url,
        aiohttp.ClientSession(connector=connector) as session,
    ):

        async def submit(body: dict[str, Any], jws: bytes) -> int:
            async with session.post(f"{url}/v1/referrals", data=jws, headers=JOSE) as response:
                await response.read()
                answered[body["header"]["referral_id"]] = time.monotonic()
                return response.status

        statuses = await asyncio.wait_for(
            asyncio.gather(*(submit(b, s) for b, s in zip(bodies, signed, strict=True))), 60
        )
    assert statuses == [202] * 50
    ids = [b["header"]["referral_id"] for b in bodies]
    # Each answer came after the commit of the transaction that held its ledger record.
    committed_at = {}
    for at, keys in spy.commits:
        for rid in ids:
            if rid.encode() in keys:
                assert rid not in committed_at, "a referral was committed twice"
                committed_at[rid] = at
    assert set(committed_at) == set(ids)
    for rid in ids:
        assert answered[rid] >= committed_at[rid]
    transactions = {at for at, keys in spy.commits if keys & {r.encode() for r in ids}}
    assert 1 <= len(transactions) < 50
    # Kafka's view: fewer commit markers in the ledger than referrals (each transaction writes
    # one marker per partition it wrote; a marker takes an offset, so it shows as a gap).
    kept = await offsets_of(settings.kafka_bootstrap_servers, ledger_topic(settings.topic_prefix))
    assert Counter(key for key, _, _ in kept) == dict.fromkeys(ids, 1)
    runs = 0
    for partition in {p for _, p, _ in kept}:
        offsets = sorted(o for _, p, o in kept if p == partition)
        runs += 1 + sum(1 for a, b in itertools.pairwise(offsets) if b != a + 1)
    assert runs < 50, f"{runs} transactions wrote the ledger for 50 referrals"
    idva = delivery_topic(settings.topic_prefix, "kelder-idva")
    delivered = Counter(
        r.key.decode() for r in await read_committed(settings.kafka_bootstrap_servers, idva)
    )
    assert delivered == dict.fromkeys(ids, 1)


async def test_a_record_kafka_refuses_fails_its_submission_alone(
    kafka_settings: Settings,
) -> None:
    """50 claimed publishes in one batch; Kafka refuses the records of one (its topic takes
    nothing that large). That one gets DisclosureTooLarge; the 49 others are committed.

    Kafka's limit is on a record batch: the topic's (20 kB) is above what the 49 innocent
    submissions put in any one partition's batch, or innocent batches would be refused too
    (they would still get through, in ever smaller transactions)."""
    settings = kafka_settings.model_copy(update={"group_commit_linger_s": 0.3})
    small = delivery_topic(settings.topic_prefix, "kelder-brook-primary")
    wide = delivery_topic(settings.topic_prefix, "kelder-idva")
    await set_topic_config(settings, small, **{"max.message.bytes": "20000"})
    await asyncio.sleep(1)
    ids = [str(uuid.uuid4()) for _ in range(50)]
    bad = ids[17]
    transport = KafkaTransport(settings)
    await transport.start()
    try:

        async def publish(rid: str) -> str:
            value = b"x" * (30_000 if rid == bad else 500)
            records = [Record(topic=wide, key=rid.encode(), value=b"d" * 500)]
            records.append(Record(topic=small, key=rid.encode(), value=value))
            try:
                await transport.publish(records, claim=Claim(rid, b"kept"))
            except DisclosureTooLarge:
                return "refused"
            return "published"

        outcomes = await asyncio.wait_for(asyncio.gather(*(publish(r) for r in ids)), 60)
        transactions = transport.transactions
    finally:
        await transport.stop()
    assert outcomes.count("refused") == 1
    assert outcomes[17] == "refused"
    # Kafka refuses the whole partition batch holding the large record, so the submissions
    # sharing it are accused with it: the others commit in one transaction, and halving the
    # accused finds the one in at most log2(50) more (one at a time would take up to 49).
    assert transactions <= 1 + math.ceil(math.log2(50)), transactions
    for topic in (small, wide, ledger_topic(settings.topic_prefix)):
        seen = Counter(
            r.key.decode() for r in await read_committed(settings.kafka_bootstrap_servers, topic)
        )
        assert seen == {rid: 1 for rid in ids if rid != bad}, topic
