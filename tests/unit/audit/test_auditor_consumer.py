"""The auditor as a consumer: a record that is not an audit event is dead-lettered, counted and
skipped while the events behind it are appended; an acknowledgement is kept once per
(referral, agency) however often Kafka or several brokers deliver it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from aiokafka import TopicPartition

from broker.audit.index import Query
from broker.audit.service import Auditor
from broker.audit.store import AuditLog
from broker.config import Settings
from broker.kafka.consumer import DLQ_CONSUMER, DLQ_OFFSET, DLQ_REASON
from broker.ops.metrics import Metrics
from keys import AUDITOR_ID
from schemas.audit import AuditEventType, acknowledged
from schemas.receipt import Acknowledgement, AcknowledgementStatus
from tests.conftest import FederationKeys
from tests.unit.broker.test_kafka_consumer import Message

Feed = list[tuple[int, bytes]]
TP = TopicPartition("unit.audit", 0)
NOW = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)


def ack_event(rid: UUID, agency: str = "kelder-idva", minutes: int = 0) -> bytes:
    """The ``acknowledged`` event a broker produces for one signed acknowledgement."""
    ack = Acknowledgement(
        referral_id=rid,
        agency=agency,
        status=AcknowledgementStatus.FILED,
        acknowledged_at=NOW + timedelta(minutes=minutes),
    )
    return acknowledged(ack).canonical()


def acks_in(log: AuditLog) -> list[tuple[UUID | None, str | None]]:
    entries = log.query(Query(types=(AuditEventType.ACKNOWLEDGED,)))
    return [(e.event.message_id, e.event.recipient) for e in entries]


# --- the store: once per (referral, agency) -------------------------------------------------


def test_the_same_acknowledgement_twice_in_one_batch_is_one_entry(tmp_path: Path) -> None:
    rid = uuid4()
    with AuditLog.open(tmp_path) as log:
        # Two brokers audited the same signed acknowledgement: two events, two offsets.
        result = log.append([(0, ack_event(rid)), (1, ack_event(rid, minutes=1))])
        assert (result.appended, result.duplicates) == (1, (1,))
        assert acks_in(log) == [(rid, "kelder-idva")]


def test_the_same_acknowledgement_in_later_batches_and_after_reopening_is_one_entry(
    tmp_path: Path, feed: Feed
) -> None:
    rid = uuid4()
    with AuditLog.open(tmp_path) as log:
        log.append([*feed[:3], (10, ack_event(rid))])
        result = log.append([(11, ack_event(rid)), (12, feed[3][1])])
        assert (result.appended, result.duplicates) == (1, (11,))
    with AuditLog.open(tmp_path) as log:
        assert log.append([(13, ack_event(rid))]).duplicates == (13,)
        # Rebuilt from the entries, the index gives the same answer.
        log.rebuild_index()
        assert log.append([(14, ack_event(rid))]).duplicates == (14,)
        assert acks_in(log) == [(rid, "kelder-idva")]
        assert log.size == 5


def test_another_agency_or_another_referral_is_a_new_fact(tmp_path: Path) -> None:
    rid = uuid4()
    with AuditLog.open(tmp_path) as log:
        log.append([(0, ack_event(rid)), (1, ack_event(rid, "kelder-nhs"))])
        log.append([(2, ack_event(uuid4()))])
        assert len(acks_in(log)) == 3


def test_a_redelivered_duplicate_below_the_last_offset_is_not_tampering(tmp_path: Path) -> None:
    """The duplicate's offset was never stored; after it a later offset was: Kafka delivering
    the duplicate again must not look like offsets going backwards."""
    rid = uuid4()
    with AuditLog.open(tmp_path) as log:
        log.append([(0, ack_event(rid)), (1, ack_event(rid)), (2, ack_event(uuid4()))])
        result = log.append([(1, ack_event(rid)), (2, log.entry(1).data)])
        assert (result.appended, result.skipped, result.duplicates) == (0, 1, (1,))


# --- the auditor's consumer ------------------------------------------------------------------


class Batches:
    """A consumer that hands out the given batches, then nothing; records commits."""

    def __init__(self, *batches: list[Message]) -> None:
        self.batches = list(batches)
        self.commits: list[dict[TopicPartition, int]] = []

    async def getmany(self, *_tps: TopicPartition, **_kw: Any) -> dict[TopicPartition, Any]:
        return {TP: self.batches.pop(0)} if self.batches else {}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))


class Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, list[tuple[str, bytes]]]] = []

    async def send(self, topic: str, value: bytes, **kw: Any) -> asyncio.Future[None]:
        self.sent.append((topic, value, kw["headers"]))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


@pytest.fixture
async def auditor(settings: Settings, federation_keys: FederationKeys, tmp_path: Path) -> Any:
    auditor = Auditor(
        settings,
        federation_keys.trust(AUDITOR_ID),
        directory=tmp_path / "audit",
        metrics=Metrics(),
    )
    await auditor.open()
    yield auditor
    await auditor.close()


def m(value: bytes | None, offset: int) -> Message:
    return Message(value, offset=offset, topic=TP.topic, partition=0, key=b"k")


async def test_a_record_that_is_not_an_event_is_dead_lettered_and_the_next_appended(
    auditor: Auditor, feed: Feed
) -> None:
    """Garbage, a non-canonical event, a too-deep JSON and a tombstone: each dead-lettered
    with its reason and offset, counted; the events around them are in the log."""
    deep = b'{"a":' * 5000 + b"1" + b"}" * 5000
    consumer = Batches(
        [
            m(feed[0][1], 0),
            m(b"\xff\xfe not json", 1),
            m(deep, 2),
            m(None, 3),
            m(feed[1][1] + b" ", 4),
            m(feed[2][1], 5),
        ]
    )
    producer = Producer()
    assert await auditor._step(consumer, producer, TP)  # type: ignore[arg-type]
    assert [e.data for e in auditor.log.entries()] == [feed[0][1], feed[2][1]]
    assert [topic for topic, _, _ in producer.sent] == ["unit.dlq"] * 4
    letters = [dict(h) for _, _, h in producer.sent]
    assert [h[DLQ_OFFSET] for h in letters] == [b"1", b"2", b"3", b"4"]
    assert {h[DLQ_CONSUMER] for h in letters} == {b"auditor"}
    assert {h[DLQ_REASON] for h in letters} <= {b"schema_invalid", b"unreadable"}
    assert producer.sent[0][1] == b"\xff\xfe not json"  # the bytes as they came
    assert consumer.commits == [{TP: 6}]
    assert auditor.dead_letters == 4
    assert auditor.metrics is not None
    counted = sum(
        auditor.metrics.registry.get_sample_value(
            "cairn_consumer_dead_letters_total", {"consumer": "auditor", "reason": reason}
        )
        or 0
        for reason in ("schema_invalid", "unreadable")
    )
    assert counted == 4
    assert not await auditor._step(consumer, producer, TP)  # type: ignore[arg-type]


async def test_what_was_examined_before_a_restart_is_not_dead_lettered_or_counted_again(
    auditor: Auditor, feed: Feed
) -> None:
    """The log resumes at its next offset; a poison record after the last stored event is
    read again, but the group offset says it was dead-lettered already."""
    rid = uuid4()
    auditor._examined = 3  # as the consumer group remembered it
    consumer = Batches([m(feed[0][1], 0), m(b"garbage", 1), m(ack_event(rid), 2)])
    producer = Producer()
    await auditor._step(consumer, producer, TP)  # type: ignore[arg-type]
    assert producer.sent == []
    assert auditor.dead_letters == 0
    assert auditor.log.size == 2


async def test_the_auditor_keeps_one_acknowledged_whatever_is_produced_twice(
    auditor: Auditor,
) -> None:
    rid = uuid4()
    batches = Batches(
        [m(ack_event(rid), 0), m(ack_event(rid), 1)], [m(ack_event(rid, minutes=5), 3)]
    )
    producer = Producer()
    await auditor._step(batches, producer, TP)  # type: ignore[arg-type]
    await auditor._step(batches, producer, TP)  # type: ignore[arg-type]
    assert await auditor.call(acks_in, auditor.log) == [(rid, "kelder-idva")]
    assert auditor.duplicates == 2
    assert producer.sent == []
