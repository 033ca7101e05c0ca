"""What every consumer shares (broker.kafka.consumer): dead letters, reason codes, the pause
between reconnections, closing a client after a Kafka restart, and the stall watchdog."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError

from broker.kafka.consumer import (
    DLQ_CONSUMER,
    DLQ_OFFSET,
    DLQ_PARTITION,
    DLQ_REASON,
    DLQ_TOPIC,
    Backoff,
    ConsumerStalled,
    Retry,
    Watchdog,
    close,
    dead_letter,
    is_infrastructure,
    reason_code,
)
from keys.errors import Reason, VerificationError
from schemas.errors import InputError, RegistryUntrusted, SchemaError, TransportError


@dataclass
class Message:
    """What aiokafka hands a consumer, as far as the consumers read it."""

    value: bytes | None
    offset: int = 7
    topic: str = "unit.receipts"
    partition: int = 2
    key: bytes | None = b"5b0c7c9e-2f59-4c61-9b1c-0d5f6a1f2e3d"
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def test_a_dead_letter_keeps_the_bytes_the_ids_and_says_where_who_and_why() -> None:
    """The value is the record's own bytes; headers: its id headers, source, consumer, reason."""
    sealed = b"eyJhbGciOiJFZERTQSJ9.e30.c2ln"
    msg = Message(
        sealed,
        headers=[
            ("cairn-referral-id", b"5b0c7c9e-2f59-4c61-9b1c-0d5f6a1f2e3d"),
            ("cairn-agency", b"kelder-idva"),
        ],
    )
    record = dead_letter("unit.dlq", "receipts", msg, "malformed")
    assert record.topic == "unit.dlq"
    assert record.value == sealed
    assert record.key == msg.key
    headers = dict(record.headers)
    assert headers["cairn-referral-id"] == b"5b0c7c9e-2f59-4c61-9b1c-0d5f6a1f2e3d"
    assert headers["cairn-agency"] == b"kelder-idva"
    assert headers[DLQ_REASON] == b"malformed"
    assert headers[DLQ_CONSUMER] == b"receipts"
    assert headers[DLQ_TOPIC] == b"unit.receipts"
    assert headers[DLQ_PARTITION] == b"2"
    assert headers[DLQ_OFFSET] == b"7"


def test_a_dead_letter_carries_no_free_text_from_the_record_headers() -> None:
    """A hostile producer's header values that are not ids, and unknown headers, are left out."""
    msg = Message(
        b"x",
        headers=[
            ("cairn-referral-id", b"Jane Doe, 12 High Street"),
            ("cairn-note", b"free text"),
            ("cairn-agency", "kelder-\u00e9".encode()),
        ],
    )
    record = dead_letter("unit.dlq", "inbox", msg, "Not A Code!")
    names = [name for name, _ in record.headers]
    assert "cairn-referral-id" not in names
    assert "cairn-note" not in names
    assert "cairn-agency" not in names
    assert dict(record.headers)[DLQ_REASON] == b"unreadable"
    assert b"Jane" not in b"".join(v for _, v in record.headers)


def test_ids_the_consumer_read_are_added_to_the_dead_letter() -> None:
    record = dead_letter(
        "unit.dlq", "inbox", Message(b"x", headers=[]), "refused", {"cairn-agency": "kelder-nhs"}
    )
    assert dict(record.headers)["cairn-agency"] == b"kelder-nhs"


def test_a_tombstone_is_dead_lettered_with_an_empty_value() -> None:
    record = dead_letter("unit.dlq", "auditor", Message(None, key=None), "unreadable")
    assert record.value == b""
    assert record.key == b""


def test_reason_codes_name_the_cause_never_the_message() -> None:
    assert reason_code(VerificationError(Reason.MALFORMED, "the header is nested 1000 deep")) == (
        "malformed"
    )
    assert reason_code(SchemaError("bad", ())) == "schema_invalid"
    assert reason_code(InputError("no", reasons=("not_queued",))) == "not_queued"
    assert reason_code(InputError("no")) == "refused"
    assert reason_code(RecursionError("maximum recursion depth exceeded")) == "unreadable"
    assert reason_code(UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start")) == (
        "unreadable"
    )


def test_kafka_and_our_own_dependencies_failing_are_not_the_records_fault() -> None:
    for exc in (KafkaConnectionError(), OSError(), TimeoutError(), TransportError("x")):
        assert is_infrastructure(exc)
    assert is_infrastructure(RegistryUntrusted("expired"))
    for exc in (RecursionError(), ValueError(), SchemaError("x"), KeyError("kid")):
        assert not is_infrastructure(exc)


def test_the_pause_doubles_up_to_its_ceiling_and_starts_over_once_connected() -> None:
    backoff = Backoff(Retry(initial_s=0.5, max_s=3.0))
    assert [backoff.next() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.next() == 0.5


class Client:
    """A client whose stop() behaves like aiokafka's after a Kafka restart."""

    def __init__(self, stop_raises: BaseException | None = None, stop_s: float = 0.0) -> None:
        self.stop_raises = stop_raises
        self.stop_s = stop_s
        self.connections = Connections()
        self._client = self.connections

    async def stop(self) -> None:
        await asyncio.sleep(self.stop_s)
        if self.stop_raises is not None:
            raise self.stop_raises


class Connections:
    closed = False

    async def close(self) -> None:
        self.closed = True


async def test_a_cancelled_error_from_a_clients_stop_does_not_stop_its_owner() -> None:
    """aiokafka's consumer.stop() can raise CancelledError after Kafka restarts (its fetcher
    awaits the tasks it just cancelled); close() absorbs it and closes the connections, so the
    consumer that was reconnecting carries on instead of ending as if it were cancelled."""
    client = Client(stop_raises=asyncio.CancelledError())

    async def owner() -> str:
        await close(client)
        return "carried on"

    assert await asyncio.create_task(owner()) == "carried on"
    assert client.connections.closed


async def test_cancelling_the_owner_while_it_closes_a_client_still_cancels_it() -> None:
    client = Client(stop_s=30)
    task = asyncio.create_task(close(client))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_client_that_does_not_stop_in_time_is_closed_anyway() -> None:
    client = Client(stop_s=30)
    await close(client, timeout_s=0.05)
    assert client.connections.closed


async def test_a_consumer_that_does_not_stop_leaves_no_heartbeat_behind() -> None:
    """Its background tasks are cancelled: a consumer still heartbeating after it was given up
    keeps partitions of its group that nobody reads."""
    client: Any = Client(stop_s=30)
    heartbeat = asyncio.create_task(asyncio.sleep(60))
    fetch = asyncio.create_task(asyncio.sleep(60))
    client._coordinator = type("Coordinator", (), {"_heartbeat_task": heartbeat})()
    client._fetcher = type("Fetcher", (), {"_fetch_task": fetch, "_pending_tasks": set()})()
    client._closed = False
    await close(client, timeout_s=0.05)
    await asyncio.sleep(0)
    assert heartbeat.cancelled()
    assert fetch.cancelled()
    assert client._closed


class Positions:
    """A consumer as the watchdog asks it: the partitions' ends and its positions."""

    def __init__(self, end: int, position: int, *, answers: bool = True) -> None:
        self.end, self.at, self.answers = end, position, answers

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        if not self.answers:
            raise KafkaConnectionError()
        return dict.fromkeys(tps, self.end)

    async def position(self, _tp: TopicPartition) -> int:
        return self.at


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


TP = TopicPartition("unit.audit", 0)


async def test_the_watchdog_calls_a_consumer_behind_and_not_moving_stalled() -> None:
    """Behind at the same position twice, a moment apart: stalled; caught up: never."""
    clock = Clock()
    dog = Watchdog(Retry(stall_s=10), clock)
    consumer: Any = Positions(end=20, position=12)
    clock.now = 5
    await dog.check(consumer, [TP])  # not due yet: no question asked
    clock.now = 10
    await dog.check(consumer, [TP])  # behind: looked at again shortly
    clock.now = 12
    with pytest.raises(ConsumerStalled):
        await dog.check(consumer, [TP])


async def test_the_watchdog_leaves_a_caught_up_or_moving_consumer_alone() -> None:
    clock = Clock()
    dog = Watchdog(Retry(stall_s=10), clock)
    caught_up: Any = Positions(end=20, position=20)
    for t in (10, 20, 30, 40):
        clock.now = t
        await dog.check(caught_up, [TP])
    moving = Positions(end=20, position=12)
    clock.now = 50
    await dog.check(moving, [TP])
    moving.at = 15  # it read something meanwhile (records produced a moment ago)
    clock.now = 52
    await dog.check(moving, [TP])


async def test_the_watchdog_calls_a_silent_kafka_stalled() -> None:
    clock = Clock()
    dog = Watchdog(Retry(stall_s=10), clock)
    clock.now = 10
    silent: Any = Positions(end=0, position=0, answers=False)
    with pytest.raises(ConsumerStalled):
        await dog.check(silent, [TP])
