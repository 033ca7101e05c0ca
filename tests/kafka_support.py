"""Helpers for tests against the real local Kafka: starting it, reading topics back."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
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
        env = {**os.environ, "CAIRN_KAFKA_PORT": str(self.port), "CAIRN_KAFKA_NODES": "1"}
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


@dataclass
class LocalCluster:
    """A local three-node Kafka cluster (KRaft, every node broker and controller, replication 3,
    min.insync.replicas 2) driven through ``CAIRN_KAFKA_NODES=3 deploy/kafka/kafka-local``.

    Node ``n`` (1-based, also its Kafka ``node.id``) listens on ``port + 2(n-1)`` and its
    controller on the port after that; each has its own data under ``state_dir``."""

    port: int  # node 1's client port
    state_dir: Path
    nodes: int = 3

    def node_port(self, node: int) -> int:
        if not 1 <= node <= self.nodes:
            raise ValueError(f"no node {node} in a cluster of {self.nodes}")
        return self.port + 2 * (node - 1)

    @property
    def bootstrap(self) -> str:
        """Every node's client address, comma-separated."""
        return ",".join(f"127.0.0.1:{self.node_port(n)}" for n in range(1, self.nodes + 1))

    def _run(self, *args: str, timeout_s: float = 240) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "CAIRN_KAFKA_NODES": str(self.nodes),
            "CAIRN_KAFKA_PORT": str(self.port),
            "CAIRN_STATE_DIR": str(self.state_dir),
        }
        return subprocess.run(
            [str(KAFKA_LOCAL), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def _must(self, *args: str) -> str:
        result = self._run(*args)
        if result.returncode != 0:
            raise RuntimeError(
                f"kafka-local {' '.join(args)} failed (exit {result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result.stdout

    def start(self) -> None:
        """Start every node; return once each reports all of them registered."""
        self._must("start")

    def stop(self) -> None:
        self._run("stop")

    def kill(self, node: int) -> None:
        """SIGKILL one node and wait until its process is gone."""
        self.node_port(node)
        self._must("kill", str(node))

    def restart(self, node: int) -> None:
        """Start one node again (stopping it first if it runs); return once the whole cluster
        answers again."""
        self.node_port(node)
        self._must("restart", str(node))

    def answers(self) -> bool:
        """Every node runs and reports every node registered."""
        return self._run("status").returncode == 0

    def logs(self, node: int) -> Path:
        return self.state_dir / f"kafka-cluster-{self.port}" / f"node-{node}" / "logs"


async def read_committed(
    bootstrap: str,
    topic: str,
    *,
    timeout_s: float = 20.0,
    isolation_level: str = "read_committed",
    settle_s: float = 2.0,
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
        records: list[Record] = []
        await _read_to_end(bootstrap, consumer, tps, records.append, timeout_s, settle_s)
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
    bootstrap: str, topics: Sequence[str], *, timeout_s: float = 20.0, settle_s: float = 2.0
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
        records: dict[str, list[Record]] = {t: [] for t in topics}

        def keep(record: Record) -> None:
            records[record.topic].append(record)

        await _read_to_end(bootstrap, consumer, tps, keep, timeout_s, settle_s)
        return records
    finally:
        await asyncio.wait_for(consumer.stop(), 10)


async def _read_to_end(
    bootstrap: str,
    consumer: AIOKafkaConsumer,
    tps: list[TopicPartition],
    keep: Callable[[Record], None],
    timeout_s: float,
    settle_s: float,
) -> None:
    """Read ``consumer``'s assigned ``tps`` to their end: every record written before the call
    once its transaction is settled.

    Kafka answers a commit before it has written the commit markers, so right after a 202 the
    last stable offset (the end a read_committed consumer is told) may not yet cover a
    committed transaction. The target is the high watermark (everything written, read
    uncommitted); a transaction still open there (a producer that died mid-transaction, until
    Kafka aborts it) would hold a read_committed reader back, so after ``settle_s`` the target
    falls back to the last stable offset of that moment.
    """
    peek = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_uncommitted")
    await peek.start()
    try:
        end = await peek.end_offsets(tps)
    finally:
        await asyncio.wait_for(peek.stop(), 10)
    started = time.monotonic()
    settled = False
    while any([await consumer.position(tp) < end[tp] for tp in tps]):
        now = time.monotonic()
        if now - started > timeout_s:
            topics = sorted({tp.topic for tp in tps})
            raise TimeoutError(f"could not read {', '.join(topics)} to the end in {timeout_s}s")
        if not settled and now - started > settle_s:
            settled = True
            stable = await consumer.end_offsets(tps)
            end = {tp: min(end[tp], stable[tp]) for tp in tps}
        batches = await consumer.getmany(timeout_ms=200)
        for messages in batches.values():
            for m in messages:
                keep(Record(m.topic, m.key, m.value, tuple(m.headers or ())))


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


def free_port_run(count: int) -> int:
    """The first of ``count`` consecutive free loopback ports, below the kernel's ephemeral
    range (so that no client connection takes one of them between now and the bind)."""
    rng = random.Random()  # noqa: S311 - picks a port, not a secret
    for _ in range(200):
        base = rng.randrange(20_000, 32_000 - count)
        try:
            with contextlib.ExitStack() as stack:
                for port in range(base, base + count):
                    s = stack.enter_context(socket.socket())
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError(f"no {count} consecutive free loopback ports")


def local_cluster(state_dir: Path, nodes: int = 3) -> Iterator[LocalCluster]:
    """A three-node Kafka cluster of a test's own (free ports, ``state_dir``), stopped
    afterwards, every node included."""
    cluster = LocalCluster(free_port_run(2 * nodes), state_dir, nodes)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def private_kafka(state_dir: Path) -> Iterator[LocalKafka]:
    """A Kafka broker of a test's own (free ports, ``state_dir``), so that stopping or killing
    it disturbs neither the other tests nor another run on the machine; stopped afterwards."""
    local = LocalKafka(free_port_pair(), state_dir)
    local.start()
    try:
        yield local
    finally:
        local.stop()
