"""The agency inbox with fake Kafka clients: a record it cannot open is dead-lettered, counted
and committed past while the next one is handled; Kafka down or lost means waiting (saying so)
and following on, never exiting."""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from uuid import uuid4

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError

from adapters.inbox import Delivery, Inbox
from broker.kafka.consumer import DLQ_CONSUMER, DLQ_OFFSET, DLQ_REASON, Retry
from keys.errors import Reason, VerificationError
from schemas.errors import RegistryUntrusted, TransportError
from tests.conftest import FederationKeys
from tests.unit.broker.test_kafka_consumer import Message

TP = TopicPartition("unit.deliver.kelder-idva", 0)
FAST = Retry(initial_s=0.01, max_s=0.02, stall_s=0.2, wait_s=5.0, connect_s=1.0)


class Consumer:
    """Hands out ``batches`` (a KafkaError in place of a batch is raised), then nothing."""

    def __init__(self, batches: list[list[Message] | BaseException], end: int = 0) -> None:
        self.batches = batches
        self.commits: list[dict[TopicPartition, int]] = []
        self.end = end
        self.at = 0
        self.silent = False

    async def getmany(self, **_kw: Any) -> dict[TopicPartition, list[Message]]:
        if not self.batches:
            await asyncio.sleep(0.01)
            return {}
        batch = self.batches.pop(0)
        if isinstance(batch, BaseException):
            raise batch
        return {TP: batch}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))
        self.at = max(offsets.values())

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        if self.silent:
            raise KafkaConnectionError()
        return dict.fromkeys(tps, max(self.end, self.at))

    async def position(self, _tp: TopicPartition) -> int:
        return self.at

    async def committed(self, _tp: TopicPartition) -> int | None:
        return self.at if self.commits else None

    def seek(self, _tp: TopicPartition, offset: int) -> None:
        self.at = offset


class Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, list[tuple[str, bytes]]]] = []

    async def send_and_wait(self, topic: str, value: bytes, **kw: Any) -> None:
        self.sent.append((topic, value, kw["headers"]))


class FakeInbox(Inbox):
    """An inbox whose connections are fakes; ``refusals`` connection attempts fail first."""

    def __init__(self, consumers: list[Consumer], refusals: int = 0, **kw: Any) -> None:
        super().__init__(
            {"bootstrap_servers": ["127.0.0.1:1"]},
            agency="kelder-idva",
            topic=TP.topic,
            dlq_topic="unit.dlq",
            retry=FAST,
            **kw,
        )
        self.consumers = consumers
        self.refusals = refusals
        self.producer = Producer()
        self.connects = 0

    async def _connect(self) -> None:
        self.connects += 1
        if self.refusals:
            self.refusals -= 1
            raise KafkaConnectionError()
        self._consumer = self.consumers.pop(0)  # type: ignore[assignment]
        self._producer = self.producer  # type: ignore[assignment]


def opener(poison: dict[bytes, BaseException]) -> Callable[[bytes], Any]:
    def open_value(value: bytes) -> Any:
        if value in poison:
            raise poison[value]
        return SimpleNamespace(referral_id=uuid4(), value=value)

    return open_value


def m(value: bytes, offset: int) -> Message:
    headers = [("cairn-referral-id", b"0f6c3a52-3c4e-4f0e-9a83-6d1f7d4f5b2a")]
    return Message(value, offset=offset, topic=TP.topic, partition=0, headers=headers)


async def test_a_record_it_cannot_open_is_dead_lettered_counted_and_the_next_handled() -> None:
    """Whatever opening raises (a RecursionError as much as a bad signature) is the record's:
    dead-lettered with its reason, counted, committed; the next record is handled."""
    poison = {
        b"deep": RecursionError("maximum recursion depth exceeded"),
        b"forged": VerificationError(Reason.BAD_SIGNATURE, "the signature does not verify"),
    }
    consumer = Consumer([[m(b"deep", 0), m(b"forged", 1), m(b"good", 2)]])
    handled: list[bytes] = []

    async def handler(delivery: Delivery) -> None:
        handled.append(delivery.disclosure.value)  # type: ignore[attr-defined]

    inbox = FakeInbox([consumer], open_value=opener(poison))
    async with inbox:
        count = await inbox.drain(handler, idle_timeout_s=0.1, total_timeout_s=5)
    assert count == 3
    assert handled == [b"good"]
    assert consumer.commits == [{TP: 3}]
    letters = [(topic, value, dict(h)) for topic, value, h in inbox.producer.sent]
    assert [(t, v) for t, v, _ in letters] == [("unit.dlq", b"deep"), ("unit.dlq", b"forged")]
    assert [h[DLQ_REASON] for _, _, h in letters] == [b"unreadable", b"bad_signature"]
    assert [h[DLQ_OFFSET] for _, _, h in letters] == [b"0", b"1"]
    assert {h[DLQ_CONSUMER] for _, _, h in letters} == {b"inbox"}
    assert {h["cairn-agency"] for _, _, h in letters} == {b"kelder-idva"}
    assert dict(inbox.dead_letters) == {"unreadable": 1, "bad_signature": 1}
    assert inbox.quarantined == 2


async def test_our_own_keys_failing_is_not_the_records_fault() -> None:
    """An unusable registry dead-letters nothing and commits nothing: the record comes again."""
    poison = {b"good": RegistryUntrusted("the registry expired")}
    consumer = Consumer([[m(b"good", 0)]])
    inbox = FakeInbox([consumer, Consumer([])], open_value=opener(poison))

    async def handler(_delivery: Delivery) -> None:
        raise AssertionError("never handed over")

    async with inbox:
        await inbox.drain(handler, idle_timeout_s=0.1, total_timeout_s=2)
    assert inbox.producer.sent == []
    assert consumer.commits == []
    assert inbox.reconnections == 1


async def test_kafka_down_at_the_start_means_waiting_and_saying_so() -> None:
    lines: list[str] = []
    consumer = Consumer([[m(b"good", 0)]])
    inbox = FakeInbox([consumer], refusals=3, open_value=opener({}), progress=lines.append)

    async def handler(_delivery: Delivery) -> None:
        return None

    async with inbox:
        assert await inbox.drain(handler, idle_timeout_s=0.1, total_timeout_s=5) == 1
    waiting = [line for line in lines if line.startswith("waiting for Kafka at 127.0.0.1:1")]
    assert len(waiting) == 3
    assert "retrying in 0.01s" in waiting[0]
    assert lines[-1] == f"Kafka at 127.0.0.1:1 answers; following {TP.topic}"


async def test_kafka_gone_for_longer_than_the_wait_is_a_one_line_error() -> None:
    inbox = FakeInbox([], refusals=10_000, open_value=opener({}))
    inbox._retry = Retry(initial_s=0.01, max_s=0.02, wait_s=0.1)

    async def handler(_delivery: Delivery) -> None:
        return None

    async with inbox:
        with pytest.raises(TransportError, match=r"Kafka at 127.0.0.1:1 did not answer"):
            await inbox.drain(handler, total_timeout_s=5)


async def test_losing_kafka_mid_stream_reconnects_and_follows_on() -> None:
    first = Consumer([[m(b"a", 0)], KafkaConnectionError()])
    second = Consumer([[m(b"b", 1)]])
    inbox = FakeInbox([first, second], refusals=0, open_value=opener({}))
    seen: list[bytes] = []

    async def handler(delivery: Delivery) -> None:
        seen.append(delivery.disclosure.value)  # type: ignore[attr-defined]

    async with inbox:
        await inbox.drain(handler, idle_timeout_s=0.1, total_timeout_s=5)
    assert seen == [b"a", b"b"]
    assert inbox.reconnections == 1


async def test_an_idle_inbox_does_not_stop_while_kafka_is_silent() -> None:
    """Nothing to read and Kafka not answering is an outage, not the end of the stream: the
    inbox reconnects instead of exiting as idle."""
    silent = Consumer([])
    silent.silent = True
    back = Consumer([[m(b"late", 0)]])
    inbox = FakeInbox([silent, back], open_value=opener({}))
    seen: list[bytes] = []

    async def handler(delivery: Delivery) -> None:
        seen.append(delivery.disclosure.value)  # type: ignore[attr-defined]

    async with inbox:
        await inbox.drain(handler, idle_timeout_s=0.05, total_timeout_s=5)
    assert seen == [b"late"]


async def test_a_consumer_behind_and_not_moving_is_recreated() -> None:
    stuck = Consumer([], end=5)  # Kafka has 5 records the consumer never gets
    fresh = Consumer([[m(b"x", 0)]])
    inbox = FakeInbox([stuck, fresh], open_value=opener({}))
    seen: list[bytes] = []

    async def handler(delivery: Delivery) -> None:
        seen.append(delivery.disclosure.value)  # type: ignore[attr-defined]

    async with inbox:
        await inbox.drain(handler, idle_timeout_s=30, total_timeout_s=5, max_messages=1)
    assert seen == [b"x"]
    assert inbox.reconnections == 1


def test_cairn_inbox_waits_for_kafka_saying_so_and_ctrl_c_stops_it_cleanly(
    federation_keys: FederationKeys, tmp_path: Path
) -> None:
    """With nothing listening where Kafka should be, 'cairn inbox' says it is waiting instead
    of exiting; Ctrl-C (SIGINT) then stops it at once, without a traceback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CAIRN_")}
    env = {
        **environ,
        "CAIRN_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}",
        "CAIRN_KEY_DIR": str(federation_keys.root),
        "CAIRN_KEY_PASSPHRASE": federation_keys.passphrase.decode(),
        "CAIRN_STATE_DIR": str(tmp_path / "state"),
        "CAIRN_LOG_LEVEL": "warning",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "broker", "inbox", "--as", "kelder-idva", "--timeout", "120"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr or ()])
    reader.start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while not any(line.startswith("waiting for Kafka at 127.0.0.1:") for line in seen):
            assert proc.poll() is None, "cairn inbox exited instead of waiting:\n" + "".join(seen)
            assert time.monotonic() < deadline, "no waiting line:\n" + "".join(seen)
            with contextlib.suppress(queue.Empty):
                seen.append(lines.get(timeout=1))
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()
    while not lines.empty():
        seen.append(lines.get())
    output = "".join(seen)
    assert f"waiting for Kafka at 127.0.0.1:{port}, retrying in 0.5s" in output
    assert "Traceback" not in output
    assert proc.returncode != 0


class MarkedConsumer(Consumer):
    """After its batches, the position is past a transaction marker: at ``end``."""

    def __init__(self, batches: list[list[Message] | BaseException], end: int = 0) -> None:
        super().__init__(batches, end)
        self.seeks: list[int] = []

    async def position(self, _tp: TopicPartition) -> int:
        return self.at if self.batches else max(self.at, self.end)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append(offset)
        super().seek(tp, offset)


async def test_caught_up_it_commits_past_the_transaction_marker() -> None:
    """Records at 0..2, the commit marker at 3: handled, then committed to 4 (lag 0)."""
    consumer = MarkedConsumer([[m(b"a", 0), m(b"b", 1), m(b"c", 2)]], end=4)
    inbox = FakeInbox([consumer], open_value=opener({}))

    async def handler(_delivery: Delivery) -> None:
        pass

    async with inbox:
        assert await inbox.drain(handler, idle_timeout_s=0.1, total_timeout_s=5) == 3
    assert consumer.commits[0] == {TP: 3}
    assert consumer.commits[1] == {TP: 4}
    assert len(consumer.commits) == 2  # once: the position does not move again


async def test_records_fetched_beyond_max_are_read_again_never_committed_past() -> None:
    """--max 2 of a batch of 3: the third is sought back to, so no later commit skips it."""
    consumer = MarkedConsumer([[m(b"a", 0), m(b"b", 1), m(b"c", 2)]], end=4)
    inbox = FakeInbox([consumer], open_value=opener({}))
    handled: list[bytes] = []

    async def handler(delivery: Delivery) -> None:
        handled.append(delivery.disclosure.value)  # type: ignore[attr-defined]

    async with inbox:
        assert await inbox.drain(handler, max_messages=2, total_timeout_s=5) == 2
    assert handled == [b"a", b"b"]
    assert consumer.commits == [{TP: 2}]
    assert consumer.seeks == [2]  # the position is back at the record not handled
