"""Every consumer against real Kafka: a poison record is dead-lettered with its reason code,
counted, and the next record handled; the same signed acknowledgement produced again and again
is audited once; Kafka killed and restarted under the auditor and an inbox, both catch up
without being restarted.

The restart test runs its own Kafka broker on a free port with its own state folder, so killing
it disturbs neither the other tests nor another run on the same machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from aiokafka import AIOKafkaProducer

from adapters.agency import inbox_for
from adapters.inbox import Delivery
from broker.audit.index import Query
from broker.audit.service import Auditor
from broker.config import Settings
from broker.kafka.consumer import DLQ_CONSUMER, DLQ_OFFSET, DLQ_REASON, DLQ_TOPIC
from broker.kafka.topics import federation_topics
from broker.kafka.transport import KafkaTransport, Record, create_topics
from broker.ops.metrics import Metrics
from broker.receipts import ReceiptsLoop, audit_record
from broker.state import SqliteStore, StateStore
from keys import AUDITOR_ID
from schemas.audit import AuditEventType, key_rotated
from schemas.errors import CairnError
from schemas.federation import Federation
from tests.conftest import PASSPHRASE, FederationKeys
from tests.integration.conftest import cairn_env, client, make_settings, running_broker
from tests.kafka_support import LocalKafka, private_kafka, read_committed
from tests.samples import sample
from tests.unit.broker.test_receipts import ack_message, nested_header_ack, queued

AGENCY = "kelder-idva"
CAIRN = [sys.executable, "-m", "broker"]
WAIT_S = 60.0  # seconds any one wait below may take before the test fails


async def eventually(check: Callable[[], Any], what: str, timeout_s: float = WAIT_S) -> None:
    """Wait (bounded) until ``check()`` is true; an awaitable result is awaited."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:g} s: {what}")
        await asyncio.sleep(0.2)


async def produce(settings: Settings, records: list[Record]) -> None:
    """Produce ``records`` without a transaction, all sent before any is awaited (so that
    records for one partition travel, and are fetched, together)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers, acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        sent = [
            await producer.send(r.topic, r.value, key=r.key, headers=list(r.headers))
            for r in records
        ]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


def as_record(topic: str, msg: Any) -> Record:
    return Record(topic, msg.key, msg.value, tuple(msg.headers))


@pytest.fixture
async def auditor(
    kafka_settings: Settings, federation_keys: FederationKeys, tmp_path: Path
) -> AsyncIterator[Auditor]:
    async with FollowingAuditor(kafka_settings, federation_keys, tmp_path / "audit") as a:
        yield a


class FollowingAuditor:
    """An in-process auditor following the audit topic until the block ends."""

    def __init__(self, settings: Settings, keys: FederationKeys, directory: Path) -> None:
        self.auditor = Auditor(
            settings, keys.trust(AUDITOR_ID), directory=directory, metrics=Metrics()
        )
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Auditor:
        await self.auditor.open()
        self.task = asyncio.create_task(self.auditor.run(self.stop))
        return self.auditor

    async def __aexit__(self, *_exc: object) -> None:
        self.stop.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, 60)
        await self.auditor.close()


async def acknowledged_in(auditor: Auditor, rid: UUID) -> list[str | None]:
    """The agencies of the ``acknowledged`` entries about ``rid`` in the auditor's log."""
    entries = await auditor.call(
        auditor.log.query, Query(types=(AuditEventType.ACKNOWLEDGED,), message_id=rid)
    )
    return [e.event.recipient for e in entries]


def dead_letters(metrics: Metrics, consumer: str, reason: str) -> float:
    value = metrics.registry.get_sample_value(
        "cairn_consumer_dead_letters_total", {"consumer": consumer, "reason": reason}
    )
    return value or 0.0


# --- poison records, one consumer at a time ---------------------------------------------------


async def test_a_poison_ack_is_dead_lettered_and_a_repeated_ack_audited_once(
    kafka_settings: Settings, federation_keys: FederationKeys, auditor: Auditor
) -> None:
    """The reported poison (a JOSE header nested 5,000 deep) before a valid acknowledgement,
    the acknowledgement again in the same batch, in a later batch, and after the receipts loop
    restarts with another broker's memory (a fresh state store): one dead letter, counted, and
    one ``acknowledged`` entry in the audit log."""
    settings = kafka_settings
    topic = f"{settings.topic_prefix}.receipts"
    transport = KafkaTransport(settings)
    await transport.start()
    replay = SqliteStore(None)
    rid = await queued(replay)
    metrics = Metrics()

    def receipts_loop(store: StateStore) -> ReceiptsLoop:
        return ReceiptsLoop(
            settings,
            federation_keys.trust(),
            store,
            transport,
            lambda: datetime.now(UTC),
            metrics=metrics,
        )

    ack = as_record(topic, ack_message(federation_keys, rid, 0))
    poison = as_record(topic, nested_header_ack(rid, 0))
    try:
        first, stop = receipts_loop(replay), asyncio.Event()
        task = asyncio.create_task(first.run(stop))
        await produce(settings, [poison, ack, ack])
        await eventually(lambda: first.audited == 1 and first.repeats == 1, "the ack audited")
        assert first.dead_letters == 1
        await produce(settings, [ack])
        await eventually(lambda: first.repeats == 2, "the later repeat committed past")
        stop.set()
        await asyncio.wait_for(task, 30)

        # Another broker (or this one, its memory lost) audits the same acknowledgement again.
        other = SqliteStore(None)
        await queued(other, rid=rid)
        second, stop = receipts_loop(other), asyncio.Event()
        task = asyncio.create_task(second.run(stop))
        await produce(settings, [ack])
        await eventually(lambda: second.audited == 1, "the other broker audited it")
        await eventually(lambda: auditor.duplicates == 1, "the auditor saw the second event")
        stop.set()
        await asyncio.wait_for(task, 30)
    finally:
        await transport.stop()

    assert await acknowledged_in(auditor, rid) == [AGENCY]
    assert second.dead_letters == 0  # the poison was committed past: never read again
    letters = await read_committed(settings.kafka_bootstrap_servers, f"{settings.topic_prefix}.dlq")
    assert len(letters) == 1
    headers = dict(letters[0].headers)
    assert letters[0].value == poison.value
    assert headers[DLQ_CONSUMER] == b"receipts"
    assert headers[DLQ_TOPIC] == topic.encode()
    assert headers[DLQ_REASON] == b"malformed"
    assert headers["cairn-referral-id"] == str(rid).encode()
    assert dead_letters(metrics, "receipts", "malformed") == 1


async def test_the_auditor_dead_letters_what_is_not_an_event_and_appends_the_next(
    kafka_settings: Settings, federation_keys: FederationKeys, tmp_path: Path
) -> None:
    """A record on the audit topic that is not an event is dead-lettered, counted, and the
    event behind it appended; after a restart it is read again but not dead-lettered again."""
    settings = kafka_settings
    audit = f"{settings.topic_prefix}.audit"
    transport = KafkaTransport(settings)
    garbage = Record(audit, b"k", b'{"type": "disclosed", "nested": ' + b"[" * 3000 + b"]" * 3000)

    def event() -> Record:
        kid = uuid4().hex + uuid4().hex[:11]  # 43 characters, as a kid is
        return audit_record(
            settings.topic_prefix, key_rotated("kelder-police", [kid], at=datetime.now(UTC))
        )

    try:
        async with FollowingAuditor(settings, federation_keys, tmp_path / "audit") as first:
            await transport.publish([event()])
            await produce(settings, [garbage])
            await transport.publish([event()])
            await eventually(lambda: first.appended == 2, "both events appended")
            assert first.dead_letters == 1
            assert first.metrics is not None
            assert dead_letters(first.metrics, "auditor", "schema_invalid") == 1
            await produce(settings, [garbage])  # the last record on the topic, this time
            await eventually(lambda: first.dead_letters == 2, "the second one dead-lettered")
        async with FollowingAuditor(settings, federation_keys, tmp_path / "audit") as second:
            await transport.publish([event()])
            await eventually(lambda: second.appended == 1, "the restarted auditor appends")
            assert second.dead_letters == 0
            assert second.log.size == 3
    finally:
        await transport.stop()
    letters = await read_committed(settings.kafka_bootstrap_servers, f"{settings.topic_prefix}.dlq")
    assert [dict(r.headers)[DLQ_CONSUMER] for r in letters] == [b"auditor", b"auditor"]
    assert [r.value for r in letters] == [garbage.value, garbage.value]
    assert dict(letters[0].headers)[DLQ_OFFSET] != dict(letters[1].headers)[DLQ_OFFSET]


async def test_the_inbox_dead_letters_a_record_it_cannot_open_and_handles_the_next(
    broker_url: str, kafka_settings: Settings, federation_keys: FederationKeys
) -> None:
    settings = kafka_settings
    topic = f"{settings.topic_prefix}.deliver.{AGENCY}"
    rid = uuid4()
    forged = Record(topic, str(rid).encode(), b"not.a.jwe", (("cairn-referral-id", b"x y"),))
    await produce(settings, [forged])
    data = sample()
    async with client(federation_keys, broker_url) as police:
        await police.submit(json.dumps(data).encode())
    handled: list[str] = []

    async def handler(delivery: Delivery) -> None:
        handled.append(str(delivery.disclosure.referral_id))

    async with inbox_for(settings, AGENCY, passphrase=PASSPHRASE) as inbox:
        await inbox.drain(handler, max_messages=2, idle_timeout_s=20, total_timeout_s=WAIT_S)
    assert handled == [data["header"]["referral_id"]]
    assert sum(inbox.dead_letters.values()) == 1
    (letter,) = await read_committed(
        settings.kafka_bootstrap_servers, f"{settings.topic_prefix}.dlq"
    )
    headers = dict(letter.headers)
    assert letter.value == b"not.a.jwe"
    assert headers[DLQ_CONSUMER] == b"inbox"
    assert headers[DLQ_TOPIC] == topic.encode()
    assert headers[DLQ_REASON] == next(iter(inbox.dead_letters)).encode()
    assert "cairn-referral-id" not in headers  # "x y" is not an id: left out
    assert headers["cairn-agency"] == AGENCY.encode()


# --- Kafka killed and restarted under the auditor and an inbox ------------------------------


@pytest.fixture(scope="module")
def own_kafka(tmp_path_factory: pytest.TempPathFactory, kafka: LocalKafka) -> Iterator[LocalKafka]:
    yield from private_kafka(tmp_path_factory.mktemp("faults-kafka"))


def kill(local: LocalKafka) -> None:
    """SIGKILL the broker process, as the fault runs did (no clean shutdown)."""
    assert local.state_dir is not None
    pid = int((local.state_dir / f"kafka-{local.port}" / "kafka.pid").read_text().strip())
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise AssertionError("the Kafka process did not die")


async def test_kafka_killed_under_the_auditor_and_an_inbox_both_catch_up_by_themselves(
    own_kafka: LocalKafka,
    federation: Federation,
    federation_keys: FederationKeys,
    tmp_path: Path,
) -> None:
    """Referrals before and after a SIGKILL and restart of Kafka: the auditor that was
    following cairn.audit, the inbox that was draining its topic and the broker's receipts
    follower, none restarted, reach every referral (and its acknowledgement) in bounded time;
    a 'cairn inbox' started while Kafka was down waited for it and then printed every
    referral."""
    settings = make_settings(
        own_kafka.bootstrap,
        federation_keys.root,
        publish_timeout_s=5.0,
        kafka_connect_timeout_s=5.0,
        consumer_retry_initial_s=0.2,
        consumer_retry_max_s=2.0,
        consumer_stall_s=5.0,
    )
    await create_topics(settings, federation_topics(federation, settings.topic_prefix))
    received: set[str] = set()
    lines: list[str] = []

    async def handler(delivery: Delivery) -> None:
        received.add(str(delivery.disclosure.referral_id))

    async def follow(inbox: Any) -> None:
        async with inbox:
            await inbox.drain(handler, idle_timeout_s=600, total_timeout_s=240)

    inbox = inbox_for(settings, AGENCY, passphrase=PASSPHRASE, progress=lines.append)
    inbox_task = asyncio.create_task(follow(inbox))
    command: asyncio.subprocess.Process | None = None
    out = err = b""
    submitted: list[str] = []

    async def submit(url: str, count: int) -> None:
        async with client(federation_keys, url) as police:
            for _ in range(count):
                data = sample()
                for _attempt in range(60):  # bounded: the broker reconnects to Kafka too
                    try:
                        await police.submit(json.dumps(data).encode())
                        break
                    except CairnError:
                        await asyncio.sleep(1.0)
                else:
                    raise AssertionError("the broker never accepted the referral")
                submitted.append(data["header"]["referral_id"])

    async def acknowledged_events(a: Auditor) -> set[str]:
        entries = await a.call(a.log.query, Query(types=(AuditEventType.ACKNOWLEDGED,)))
        return {str(e.event.message_id) for e in entries}

    async def received_events(a: Auditor) -> set[str]:
        entries = await a.call(a.log.query, Query(types=(AuditEventType.RECEIVED,)))
        return {str(e.event.message_id) for e in entries}

    try:
        async with (
            FollowingAuditor(settings, federation_keys, tmp_path / "audit") as auditor,
            running_broker(settings, federation, federation_keys, consume_receipts=True) as url,
        ):
            await submit(url, 3)
            await eventually(lambda: received >= set(submitted), "the inbox before the outage")
            before = set(submitted)
            await eventually(
                lambda: _contains(received_events(auditor), before), "the auditor before"
            )

            await asyncio.to_thread(kill, own_kafka)
            # 'cairn inbox' started while Kafka is down waits instead of exiting.
            command = await asyncio.create_subprocess_exec(
                *CAIRN,
                *("inbox", "--as", "kelder-marac", "--json", "--max", "6"),
                *("--idle", "120", "--timeout", "180"),
                env=cli_env(settings, federation_keys, tmp_path / "cli"),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            await asyncio.sleep(3)  # long enough for every consumer to notice
            await asyncio.to_thread(own_kafka.start)
            await create_topics(settings, federation_topics(federation, settings.topic_prefix))
            await submit(url, 3)

            everything = set(submitted)
            try:
                await eventually(lambda: received >= everything, "the inbox caught up after it")
            except AssertionError as exc:
                raise AssertionError(f"{exc}; the inbox said: {lines}") from None
            await eventually(
                lambda: _contains(received_events(auditor), everything), "the auditor caught up"
            )
            # The broker's receipts follower lived through the restart too: the inbox's
            # acknowledgements after it reached the audit log.
            await eventually(
                lambda: _contains(acknowledged_events(auditor), everything),
                "the receipts follower caught up",
            )
            assert not inbox_task.done()
            assert auditor.reconnections >= 1
            out, err = await asyncio.wait_for(command.communicate(), WAIT_S)
    finally:
        inbox_task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await inbox_task
        if command is not None and command.returncode is None:
            command.kill()
            await command.wait()
    assert received == set(submitted)
    assert command.returncode == 0, err.decode()
    assert "waiting for Kafka at " in err.decode()
    shown = {json.loads(line)["referral_id"] for line in out.decode().splitlines()}
    assert shown == set(submitted)


def cli_env(settings: Settings, keys: FederationKeys, state: Path) -> dict[str, str]:
    """The environment of a ``cairn`` process on this test's Kafka, topics and keys."""
    return cairn_env(
        settings,
        keys,
        state,
        CAIRN_CONSUMER_RETRY_MAX_S="2",
        CAIRN_CONSUMER_STALL_S="5",
        CAIRN_LOG_LEVEL="warning",
    )


async def _contains(found: Any, wanted: set[str]) -> bool:
    return wanted <= await found
