"""Helpers for tests against the real local Kafka: starting it, reading topics back."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from broker.kafka.transport import Record
from tests.samples import REPO

KAFKA_LOCAL = REPO / "deploy" / "kafka" / "kafka-local"


@dataclass
class LocalKafka:
    """One local Kafka broker driven through deploy/kafka/kafka-local."""

    port: int
    state_dir: Path | None = None  # None: the repo's .cairn

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run(self, action: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "CAIRN_KAFKA_PORT": str(self.port)}
        if self.state_dir is not None:
            env["CAIRN_STATE_DIR"] = str(self.state_dir)
        return subprocess.run(
            [str(KAFKA_LOCAL), action],
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )

    def start(self) -> None:
        result = self._run("start")
        if result.returncode != 0:
            raise RuntimeError(f"kafka-local start failed:\n{result.stdout}\n{result.stderr}")

    def stop(self) -> None:
        self._run("stop")

    def answers(self) -> bool:
        return self._run("status").returncode == 0


async def read_committed(
    bootstrap: str,
    topic: str,
    *,
    timeout_s: float = 20.0,
    isolation_level: str = "read_committed",
    settle_s: float = 0.3,
) -> list[Record]:
    """Everything a consumer sees on ``topic``, from the beginning to the end (read_committed
    unless told otherwise; read_uncommitted also returns records of aborted transactions)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level=isolation_level, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        if partitions is None:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        # Kafka answers a commit before it has written the commit markers, so the last
        # stable offset (what read_committed can reach) may lag a just-committed transaction
        # by a moment: read to the end, then look once more after a short pause.
        end = await consumer.end_offsets(tps)
        records: list[Record] = []
        deadline = time.monotonic() + timeout_s
        await asyncio.sleep(settle_s)
        end = await consumer.end_offsets(tps)
        while any([await consumer.position(tp) < end[tp] for tp in tps]):
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {topic} to its end in {timeout_s}s")
            batches = await consumer.getmany(timeout_ms=200)
            for messages in batches.values():
                records += [
                    Record(m.topic, m.key, m.value, tuple(m.headers or ())) for m in messages
                ]
        return records
    finally:
        await asyncio.wait_for(consumer.stop(), 10)


async def topics_with_prefix(bootstrap: str, prefix: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return sorted(t for t in await admin.list_topics() if t.startswith(prefix + "."))
    finally:
        await admin.close()


async def read_committed_many(
    bootstrap: str, topics: Sequence[str], *, timeout_s: float = 20.0
) -> dict[str, list[Record]]:
    """Everything committed on each of ``topics``, from the beginning to the end, read by one
    read_committed consumer (one consumer for many topics, where ``read_committed`` makes one
    per topic)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False
    )
    await consumer.start()
    try:
        if any(consumer.partitions_for_topic(t) is None for t in topics):
            await consumer._client.force_metadata_update()
        unknown = [t for t in topics if not consumer.partitions_for_topic(t)]
        if unknown:
            raise LookupError(f"no such topics: {', '.join(unknown)}")
        tps = [
            TopicPartition(t, p)
            for t in topics
            for p in sorted(consumer.partitions_for_topic(t) or ())
        ]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        records: dict[str, list[Record]] = {t: [] for t in topics}
        deadline = time.monotonic() + timeout_s
        while any([await consumer.position(tp) < end[tp] for tp in tps]):
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {', '.join(topics)} to the end in {timeout_s}s")
            batches = await consumer.getmany(timeout_ms=200)
            for messages in batches.values():
                for m in messages:
                    records[m.topic].append(Record(m.topic, m.key, m.value, tuple(m.headers or ())))
        return records
    finally:
        await asyncio.wait_for(consumer.stop(), 10)


def free_port_pair() -> int:
    """A loopback port whose successor is free too (client and controller listeners)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port < 65535:
            with socket.socket() as s2:
                try:
                    s2.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free pair of loopback ports")


def private_kafka(state_dir: Path) -> Iterator[LocalKafka]:
    """A Kafka broker of a test's own (free ports, ``state_dir``), so that stopping or killing
    it disturbs neither the other tests nor another run on the machine; stopped afterwards."""
    local = LocalKafka(free_port_pair(), state_dir)
    local.start()
    try:
        yield local
    finally:
        local.stop()
