"""Getting sealed disclosures into Kafka: all of a submission's records, or none of them.

A submission becomes several Kafka records (one per recipient, and later its audit events). They
are published in one Kafka transaction by an idempotent, ``acks=all`` transactional producer, and
every consumer reads committed records only, so a recipient never sees half a submission and the
sender only hears "accepted" once Kafka has acknowledged the lot.

``Transport`` is the interface; ``KafkaTransport`` is the real one and ``MemoryTransport`` the
fast fake beside it for unit tests. Both are held to the same contract (tests/contract).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from broker.config import Settings
from broker.kafka.topics import TopicSpec
from schemas.errors import TransportError

__all__ = [
    "Consumed",
    "KafkaTransport",
    "MemoryTransport",
    "Record",
    "Transport",
    "create_topics",
    "kafka_options",
]

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Record:
    """One Kafka record. Keys and headers carry ids and codes only, never personal data."""

    topic: str
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True)
class Consumed:
    """Offsets a consumer group has processed, to commit in the same transaction as its output
    (consume-transform-produce: the output and the progress are both kept, or neither)."""

    group_id: str
    offsets: dict[TopicPartition, int]  # the next offset to read, per partition


class Transport(Protocol):
    async def start(self) -> None:
        """Prepare to publish; must not fail when Kafka is down (readiness says so instead)."""

    async def stop(self) -> None:
        """Flush what was accepted and release connections."""

    async def publish(self, records: Sequence[Record], consumed: Consumed | None = None) -> None:
        """Make every record visible to read-committed consumers, or none; else TransportError.

        With ``consumed``, the group's offsets are committed in the same transaction.
        """

    async def ready(self) -> bool:
        """True while a publish could succeed now."""


def kafka_options(settings: Settings) -> dict[str, Any]:
    """Connection options shared by every aiokafka client Cairn creates."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers.split(","),
        "security_protocol": settings.kafka_security_protocol,
        "request_timeout_ms": int(settings.publish_timeout_s * 1000),
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = ssl.create_default_context()
    if settings.kafka_sasl_mechanism:
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        if settings.kafka_sasl_password is not None:
            options["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    return options


class KafkaTransport:
    """Transactional publishing to a real Kafka cluster, reconnecting after failures."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._producer: AIOKafkaProducer | None = None
        # One transaction at a time per transactional id; the lock also guards (re)connection.
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        async with self._lock:
            with contextlib.suppress(TransportError):
                await self._connect()

    async def stop(self) -> None:
        async with self._lock:
            await self._discard()

    async def publish(self, records: Sequence[Record], consumed: Consumed | None = None) -> None:
        if not records and consumed is None:
            raise RuntimeError("publish() needs at least one record")
        async with self._lock:
            producer = await self._connect()
            await self._check_topics(producer, {r.topic for r in records})
            try:
                await asyncio.wait_for(
                    self._transaction(producer, records, consumed),
                    self._settings.publish_timeout_s,
                )
            except (KafkaError, OSError, TimeoutError) as exc:
                log.warning("kafka.publish_failed", error=type(exc).__name__, records=len(records))
                # Abort while Kafka still answers, so that read_committed consumers are not held
                # at this open transaction until a new producer fences it (bounded: with Kafka
                # gone the abort cannot complete, and the producer is killed below anyway).
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(producer.abort_transaction(), 5)
                # A producer that failed mid-transaction cannot be trusted to be in a known
                # state, and left alone it would retry its commit once Kafka is back, making
                # a submission we answered 503 visible. Kill it without flushing; the next
                # producer re-initialises the transactional id, which fences this one and has
                # the coordinator abort whatever it left open.
                await self._discard(flush=False)
                raise TransportError(
                    "Kafka did not acknowledge the submission, so nothing was sent; "
                    "retry the same submission later"
                ) from exc

    async def ready(self) -> bool:
        try:
            async with asyncio.timeout(self._settings.readiness_timeout_s):
                async with self._lock:
                    producer = await self._connect()
                await producer.client.fetch_all_metadata()
        except (KafkaError, OSError, TimeoutError, TransportError):
            return False
        return True

    async def _check_topics(self, producer: AIOKafkaProducer, topics: set[str]) -> None:
        """Fail fast, before any transaction begins, when a topic does not exist.

        aiokafka would otherwise wait for the topic's metadata until the request timeout, and
        auto-creation is off on purpose.
        """
        cluster = producer.client.cluster
        unknown = {t for t in topics if cluster.partitions_for_topic(t) is None}
        if not unknown:
            return
        for t in unknown:
            producer.client.add_topic(t)
        try:
            await asyncio.wait_for(
                producer.client.force_metadata_update(), self._settings.readiness_timeout_s
            )
        except (KafkaError, OSError, TimeoutError) as exc:
            await self._discard()
            raise TransportError(
                "Kafka did not answer a metadata request; nothing was sent"
            ) from exc
        missing = sorted(t for t in unknown if cluster.partitions_for_topic(t) is None)
        if missing:
            log.error("kafka.topic_missing", topics=missing)
            raise TransportError(
                f"Kafka topic(s) {', '.join(missing)} do not exist, so nothing was sent; "
                "an operator must run 'cairn topics create'"
            )

    @staticmethod
    async def _transaction(
        producer: AIOKafkaProducer, records: Sequence[Record], consumed: Consumed | None
    ) -> None:
        # Not ``async with producer.transaction()``: aiokafka commits even when one record of
        # the transaction was refused (e.g. too large for its topic), because a refused record
        # only fails its own future. Every future is awaited here, and any failure raises
        # before the commit, so the transaction is never committed with a record missing.
        await producer.begin_transaction()
        futures = [
            await producer.send(r.topic, r.value, key=r.key, headers=list(r.headers))
            for r in records
        ]
        results = await asyncio.gather(*futures, return_exceptions=True)
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is not None:
            raise failure
        if consumed is not None:
            await producer.send_offsets_to_transaction(consumed.offsets, consumed.group_id)
        await producer.commit_transaction()

    async def _connect(self) -> AIOKafkaProducer:
        if self._producer is not None:
            return self._producer
        producer = AIOKafkaProducer(
            **kafka_options(self._settings),
            acks="all",
            enable_idempotence=True,
            transactional_id=self._settings.transactional_id,
        )
        try:
            await asyncio.wait_for(producer.start(), self._settings.kafka_connect_timeout_s)
        except (KafkaError, OSError, TimeoutError) as exc:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), 5)
            log.warning("kafka.connect_failed", error=type(exc).__name__)
            raise TransportError(
                f"cannot reach Kafka at {self._settings.kafka_bootstrap_servers}; "
                "check CAIRN_KAFKA_BOOTSTRAP_SERVERS and that the cluster is up"
            ) from exc
        log.info("kafka.connected", transactional_id=self._settings.transactional_id)
        self._producer = producer
        return producer

    async def _discard(self, *, flush: bool = True) -> None:
        producer, self._producer = self._producer, None
        if producer is None:
            return
        if flush:
            try:
                # Bounded: with Kafka gone, stop() waits for pending batches indefinitely.
                await asyncio.wait_for(producer.stop(), 5)
                return
            except (KafkaError, OSError, TimeoutError):
                pass
        await _kill(producer)


async def _kill(producer: AIOKafkaProducer) -> None:
    """Stop a producer without flushing: cancel its sender, close its connections.

    aiokafka has no public "close now"; this is ``stop()`` minus the wait for pending batches,
    whose futures the cancelled sender fails.
    """
    producer._closed = True
    sender = producer._sender
    with contextlib.suppress(Exception):
        await asyncio.wait_for(sender.close(), 5)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(producer.client.close(), 5)


@dataclass
class MemoryTransport:
    """In-memory twin of KafkaTransport for unit tests: same all-or-nothing contract."""

    available: bool = True
    topics: dict[str, list[Record]] = field(default_factory=dict)
    known_topics: set[str] | None = None  # None: any topic exists
    published: int = 0
    committed: dict[str, dict[TopicPartition, int]] = field(default_factory=dict)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def publish(self, records: Sequence[Record], consumed: Consumed | None = None) -> None:
        if not records and consumed is None:
            raise RuntimeError("publish() needs at least one record")
        if not self.available:
            raise TransportError(
                "Kafka did not acknowledge the submission, so nothing was sent; "
                "retry the same submission later"
            )
        if self.known_topics is not None and any(r.topic not in self.known_topics for r in records):
            raise TransportError("a topic does not exist; run 'cairn topics create'")
        for r in records:
            self.topics.setdefault(r.topic, []).append(r)
        self.published += len(records)
        if consumed is not None:
            self.committed.setdefault(consumed.group_id, {}).update(consumed.offsets)

    async def ready(self) -> bool:
        return self.available

    def read_committed(self, topic: str) -> list[Record]:
        return list(self.topics.get(topic, []))


async def create_topics(settings: Settings, specs: Sequence[TopicSpec]) -> dict[str, str]:
    """Create each topic that does not exist yet; return topic -> "created" or "exists"."""
    admin = AIOKafkaAdminClient(**kafka_options(settings))
    try:
        await asyncio.wait_for(admin.start(), settings.kafka_connect_timeout_s)
    except (KafkaError, OSError, TimeoutError) as exc:
        with contextlib.suppress(Exception):
            await admin.close()
        raise TransportError(
            f"cannot reach Kafka at {settings.kafka_bootstrap_servers} to create topics"
        ) from exc
    try:
        existing = set(await admin.list_topics())
        result = {s.name: "exists" for s in specs if s.name in existing}
        missing = [s for s in specs if s.name not in existing]
        if missing:
            response = await admin.create_topics(
                [NewTopic(s.name, s.partitions, settings.topic_replication_factor) for s in missing]
            )
            for name, code, message in _topic_errors(response):
                if code == 0:
                    result[name] = "created"
                elif code == TopicAlreadyExistsError.errno:
                    result[name] = "exists"
                else:
                    raise TransportError(f"Kafka refused to create {name}: {message} (code {code})")
            await _wait_for_leaders(
                admin, [s.name for s in missing], settings.kafka_connect_timeout_s
            )
        return result
    finally:
        await admin.close()


async def _wait_for_leaders(admin: AIOKafkaAdminClient, names: list[str], timeout_s: float) -> None:
    """Return once every partition of the new topics has a leader, so the first produce works."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        topics = await admin.describe_topics(names)
        if all(
            t["error_code"] == 0
            and t["partitions"]
            and all(p["leader"] >= 0 for p in t["partitions"])
            for t in topics
        ):
            return
        if asyncio.get_running_loop().time() > deadline:
            raise TransportError(f"new topics had no partition leaders after {timeout_s}s")
        await asyncio.sleep(0.1)


def _topic_errors(response: Any) -> list[tuple[str, int, str | None]]:
    out = []
    for entry in response.topic_errors:
        name, code = entry[0], entry[1]
        message = entry[2] if len(entry) > 2 else None
        out.append((name, code, message))
    return out
