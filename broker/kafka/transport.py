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
import contextvars
import enum
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CorruptRecordException,
    InvalidMessageError,
    InvalidProducerEpoch,
    InvalidTxnState,
    KafkaError,
    MessageSizeTooLargeError,
    ProducerFenced,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAlreadyExistsError,
)
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from broker.config import Settings
from broker.kafka.ledger import (
    KIND_HEADER,
    AlreadyPublished,
    Claim,
    ShardView,
    ledger_topic,
    shard_of,
)
from broker.kafka.topics import TopicSpec
from schemas.errors import DisclosureTooLarge, TransportError

__all__ = [
    "Consumed",
    "KafkaTransport",
    "MemoryTransport",
    "OutcomeUnknown",
    "Record",
    "Transport",
    "admin_client",
    "create_topics",
    "kafka_options",
    "kafka_ssl_context",
]

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Record:
    """One Kafka record. Keys and headers carry ids and codes only, never personal data."""

    topic: str
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()
    partition: int | None = None  # None: Kafka's partitioner picks by key


class OutcomeUnknown(TransportError):
    """Kafka did not answer the commit of the transaction holding the records: they may be
    visible. Nothing is to be taken as sent or unsent until the ledger settles it
    (``Claim.unsettled_by``): the caller must not let another publish start from scratch."""


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

    async def publish(
        self,
        records: Sequence[Record],
        consumed: Consumed | None = None,
        *,
        claim: Claim | None = None,
    ) -> None:
        """Make every record visible to read-committed consumers, or none; else TransportError.

        With ``consumed``, the group's offsets are committed in the same transaction. With
        ``claim``, the records disclose that referral: they are published only if no broker
        ever published it (else ``AlreadyPublished``, nothing sent), and the ledger records
        that it is published in the same transaction (``broker.kafka.ledger``).
        """

    async def ready(self) -> bool:
        """True while a publish could succeed now."""

    def publisher_id(self) -> str:
        """The transactional id claimed publishes use now: what a claim's ``unsettled_by``
        names if this process dies with the claim unsettled."""

    async def health(self) -> str:
        """``ok``, ``unreachable`` or ``failing`` (Kafka answers but publishing fails)."""


def kafka_options(settings: Settings) -> dict[str, Any]:
    """Connection options shared by every aiokafka client Cairn creates: the bootstrap
    servers, and the credentials the settings give (TLS with the CA file and, for mutual TLS,
    the client certificate; SASL SCRAM), secrets read from their files now."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers.split(","),
        "security_protocol": settings.kafka_security_protocol,
        "request_timeout_ms": int(settings.publish_timeout_s * 1000),
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = kafka_ssl_context(settings)
    if settings.kafka_sasl_mechanism:
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = _setting(settings.kafka_sasl_secret)
    return options


def kafka_ssl_context(settings: Settings) -> ssl.SSLContext:
    """The TLS context of Cairn's Kafka clients: Kafka's listener verified against
    ``kafka_ssl_ca_file`` (else the system's CAs), host name included, TLS 1.2 at least, and
    the client certificate presented if one is set. A file that cannot be used is a
    ``TransportError`` naming its setting's variable (the settings checked it is readable)."""
    ca = settings.kafka_ssl_ca_file
    try:
        context = ssl.create_default_context(cafile=None if ca is None else str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise TransportError(
            f"CAIRN_KAFKA_SSL_CA_FILE: {ca} holds no usable PEM certificate ({_why(exc)})"
        ) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    cert, key = settings.kafka_ssl_cert_file, settings.kafka_ssl_key_file
    if cert is not None and key is not None:
        password = _setting(settings.kafka_ssl_key_password)
        try:
            context.load_cert_chain(str(cert), str(key), password=password)
        except (OSError, ssl.SSLError) as exc:
            raise TransportError(
                f"CAIRN_KAFKA_SSL_CERT_FILE / CAIRN_KAFKA_SSL_KEY_FILE: cannot load the client "
                f"certificate {cert} with its key {key} (a wrong key password, a key that does "
                f"not match the certificate, or not PEM: {_why(exc)})"
            ) from None
    return context


def _setting(read: Callable[[], str | None]) -> str | None:
    """A secret read from its file now; a file gone since the settings loaded is a
    ``TransportError`` with the reason (which names the variable)."""
    try:
        return read()
    except ValueError as exc:
        raise TransportError(str(exc)) from None


def _why(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None)
    return str(reason) if reason else type(exc).__name__


@dataclass
class _Slot:
    """One transactional producer: the id it uses (per era), and its lock."""

    tid: Callable[[int], str]
    era: int = 0
    producer: AIOKafkaProducer | None = None
    # One transaction at a time per transactional id; the lock also guards (re)connection.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    connecting: asyncio.Task[AIOKafkaProducer] | None = None  # a connection in the background


@dataclass(eq=False)
class _Pending:
    """One claimed submission waiting for the transaction that will hold its records."""

    records: list[Record]  # its disclosures and audit events, then its ledger record
    size: int  # bytes, estimated as Kafka counts them
    deadline: float  # loop time: answered by then, committed or not
    done: asyncio.Future[None]


@dataclass(frozen=True)
class _Fault:
    """A record of ``item`` that Kafka refused, on ``topic``."""

    item: _Pending
    error: BaseException
    topic: str


# Refusals that are one record's own fault: retrying it cannot help, and it must not fail the
# records that share its transaction. Everything else is the cluster's, and retried.
_REFUSED = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError)
_RECORD_FAULTS = (*_REFUSED, InvalidMessageError, CorruptRecordException)
# The commit was answered "no": the transaction was aborted, so it is safe to publish again.
_NOT_COMMITTED = (ProducerFenced, InvalidProducerEpoch, InvalidTxnState)
DELIVERY_MARK = ".deliver."  # a delivery topic is <prefix>.deliver.<agency> (broker.kafka.topics)


class _Outcome(enum.Enum):
    COMMITTED = "committed"
    RETRY = "retry"  # certainly not committed: publish the same records again
    UNKNOWN = "unknown"  # the commit was sent and not answered: it may have committed


class KafkaTransport:
    """Transactional publishing to a real Kafka cluster, reconnecting after failures.

    Claimed publishes (``claim=``, one per accepted referral) are committed together: the
    submissions that arrive while one transaction commits, up to ``group_commit_max_records``
    records and ``group_commit_max_bytes`` bytes, and waiting at most ``group_commit_linger_s``
    for more, share the next one (group commit), each with its ledger record
    (``broker.kafka.ledger``). Each caller returns only after the transaction holding its
    records committed. A record Kafka refuses fails its own submission only: the others are
    published again in a fresh transaction. The rest (receipts, sweeps) go through a general
    producer, one transaction per call, so that their consumed offsets commit with them.

    The producers' transactional ids derive from the ``transactional_id`` setting, unique per
    broker process (``broker.instance``): ``<id>`` (general), ``<id>.claims`` (group commit)
    and ``<id>.probe``. Each moves to a fresh id (era, ``.e<N>``) when Kafka cannot initialise
    its current one.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        base = settings.transactional_id
        self._general = _Slot(tid=lambda era: base if era == 0 else f"{base}.e{era}")
        self._claims = _Slot(tid=lambda era: _era(f"{base}.claims", era))
        self._probe_slot = _Slot(tid=lambda era: f"{base}.probe.e{era}")
        self._probing: asyncio.Task[None] | None = None
        self._probe_after = 0.0  # loop time before which no new probe starts
        self._queue: list[_Pending] = []
        self._queued = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._views: dict[int, ShardView] = {}
        self._reader: AIOKafkaConsumer | None = None
        self._reader_lock = asyncio.Lock()
        self._ledger_checked = False
        # After a failed publish: the topics it wrote, until a publish or probe succeeds.
        self._failing: frozenset[str] | None = None
        self.transactions = 0  # claimed-publish transactions committed (tests, metrics)

    def publisher_id(self) -> str:
        """The transactional id claimed publishes use now (it changes only with its era)."""
        return self._claims.tid(self._claims.era)

    async def start(self) -> None:
        async with self._general.lock:
            with contextlib.suppress(TransportError):
                await self._connect(self._general)

    async def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(BaseException):
                await self._flusher
        for item in self._queue:
            _fail(item, TransportError("the broker is stopping; nothing was sent, retry later"))
        self._queue.clear()
        if self._probing is not None:
            self._probing.cancel()
            with contextlib.suppress(BaseException):
                await self._probing
        for slot in (self._general, self._claims, self._probe_slot):
            if slot.connecting is not None and not slot.connecting.done():
                slot.connecting.cancel()
                with contextlib.suppress(BaseException):
                    await slot.connecting
            async with slot.lock:
                await self._discard(slot)
        async with self._reader_lock:
            await self._close_reader()

    async def publish(
        self,
        records: Sequence[Record],
        consumed: Consumed | None = None,
        *,
        claim: Claim | None = None,
    ) -> None:
        if not records and consumed is None:
            raise RuntimeError("publish() needs at least one record")
        topics = {r.topic for r in records}
        if claim is None:
            async with self._general.lock:
                producer = await self._connect(self._general)
                await self._check_topics(producer, topics)
                await self._run(self._general, producer, records, consumed, topics)
            return
        if consumed is not None:
            raise RuntimeError("a claimed publish commits no consumer offsets")
        await self._check_ledger()
        ledger = ledger_topic(self._settings.topic_prefix)
        shard = shard_of(claim.referral_id, self._settings.ledger_partitions)
        if claim.unsettled_by is not None:
            kept = await self._settle(claim.unsettled_by, claim.referral_id, shard)
            if kept is not None:
                raise AlreadyPublished(claim.referral_id, kept)
        entry = Record(
            topic=ledger,
            key=claim.referral_id.encode(),
            value=claim.value,
            headers=((KIND_HEADER, b"published"),),
            partition=shard,
        )
        mine = [*records, entry]
        # What can be checked before the transaction is, so that it fails this submission
        # alone: the topics exist, and no record is larger than a request may be.
        try:
            producer = await self._shielded_connect(
                self._claims, self._settings.kafka_connect_timeout_s
            )
        except TimeoutError as exc:  # still connecting (or leaving a wedged id) in the background
            raise TransportError(
                "Kafka did not let the broker start publishing in time; nothing was sent, "
                "retry later"
            ) from exc
        await self._check_topics(producer, topics | {ledger})
        sizes = [_record_size(r) for r in mine]
        if max(sizes) > self._settings.kafka_max_request_bytes:
            raise DisclosureTooLarge(
                f"a disclosure of this referral is {max(sizes)} bytes, more than Kafka accepts "
                f"({self._settings.kafka_max_request_bytes}); nothing was sent"
            )
        loop = asyncio.get_running_loop()
        item = _Pending(
            records=mine,
            size=sum(sizes),
            deadline=loop.time() + self._settings.publish_timeout_s,
            done=loop.create_future(),
        )
        self._queue.append(item)
        self._queued.set()
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), context=contextvars.Context())
            self._flusher.add_done_callback(_retrieve)
        # Shielded: a caller that goes away does not take its records out of a transaction
        # that is already being written.
        await asyncio.shield(item.done)

    # -- group commit -------------------------------------------------------------------------

    async def _flush(self) -> None:
        """Commit what is queued, batch after batch, one transaction at a time."""
        loop = asyncio.get_running_loop()
        linger = self._settings.group_commit_linger_s
        while True:
            if not self._queue:
                self._queued.clear()
                await self._queued.wait()
                continue
            # The first submission waits at most ``linger`` for company; a full batch goes now.
            first = self._queue[0]
            opened = first.deadline - self._settings.publish_timeout_s
            while not self._full() and loop.time() < opened + linger:
                self._queued.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._queued.wait(), opened + linger - loop.time())
            batch = self._take()
            try:
                await self._commit(batch)
            except Exception as exc:  # never leave a caller waiting for ever
                log.exception("kafka.group_commit_crashed")
                for item in batch:
                    _fail(item, TransportError("the broker failed to publish; retry later"))
                if isinstance(exc, asyncio.CancelledError):
                    raise

    def _full(self) -> bool:
        records = sum(len(i.records) for i in self._queue)
        size = sum(i.size for i in self._queue)
        return (
            records >= self._settings.group_commit_max_records
            or size >= self._settings.group_commit_max_bytes
        )

    def _take(self) -> list[_Pending]:
        """The next batch: the oldest submissions up to the record and byte bounds (at least
        one, however large)."""
        batch: list[_Pending] = []
        records = size = 0
        while self._queue:
            item = self._queue[0]
            over = (
                records + len(item.records) > self._settings.group_commit_max_records
                or size + item.size > self._settings.group_commit_max_bytes
            )
            if batch and over:
                break
            batch.append(self._queue.pop(0))
            records += len(item.records)
            size += item.size
        return batch

    async def _commit(self, batch: list[_Pending]) -> None:
        """Publish every submission of ``batch``, each in a committed transaction or failed.

        A submission whose record Kafka refuses fails alone: the others go again in a fresh
        transaction (and when several had refused records, halves of them, to find which was
        at fault). A transaction that certainly did not commit is retried while its
        submissions' deadlines allow; one whose commit may have gone through is not, and its
        submissions get a 503 (a retry settles them through the ledger, ``_settle``).
        """
        loop = asyncio.get_running_loop()
        groups: list[list[_Pending]] = [batch]
        rounds = 0
        while groups and rounds < 2 * len(batch) + 4:  # bounded: each round settles or splits
            rounds += 1
            group = [i for i in groups.pop(0) if not i.done.done()]
            for item in [i for i in group if loop.time() >= i.deadline]:
                _fail(item, _not_acknowledged())
            group = [i for i in group if not i.done.done()]
            if not group:
                continue
            outcome, faults = await self._attempt(group)
            if outcome is _Outcome.COMMITTED:
                self.transactions += 1
                for item in group:
                    if not item.done.done():
                        item.done.set_result(None)
                continue
            if outcome is _Outcome.UNKNOWN:
                for item in group:
                    _fail(item, OutcomeUnknown(_not_acknowledged().args[0]))
                continue
            if len(faults) == 1:
                fault = faults[0]
                _fail(fault.item, self._refusal(fault))
            elif faults:
                # Several submissions had refused records: they may have shared a batch on a
                # partition with the one at fault. Halves, then halves of the half that fails,
                # find it in a few transactions.
                accused_items = [f.item for f in faults]
                half = len(accused_items) // 2
                groups.extend([accused_items[:half], accused_items[half:]])
            else:
                await asyncio.sleep(0.1)  # the cluster's fault: a moment before trying again
            accused = {id(f.item) for f in faults}
            innocent = [i for i in group if id(i) not in accused and not i.done.done()]
            if innocent:
                groups.insert(0, innocent)
        for group in groups:
            for item in group:
                _fail(item, _not_acknowledged())

    async def _attempt(self, group: list[_Pending]) -> tuple[_Outcome, list[_Fault]]:
        """One transaction over ``group``'s records: its outcome, and the submissions whose
        records Kafka refused as the records' own fault (empty unless RETRY)."""
        slot = self._claims
        topics = {r.topic for i in group for r in i.records}
        remaining = min(i.deadline for i in group) - asyncio.get_running_loop().time()
        async with slot.lock:
            try:
                producer = await self._connect(slot)
            except TransportError:
                return _Outcome.RETRY, []  # nothing was sent
            committing = False
            try:
                async with asyncio.timeout(max(remaining, 0.1)):
                    await producer.begin_transaction()
                    sent: list[list[asyncio.Future[Any]]] = []
                    for item in group:
                        futures = []
                        for r in item.records:
                            futures.append(
                                await producer.send(
                                    r.topic,
                                    r.value,
                                    key=r.key,
                                    headers=list(r.headers),
                                    partition=r.partition,
                                )
                            )
                        sent.append(futures)
                    results = await asyncio.gather(
                        *(f for futures in sent for f in futures), return_exceptions=True
                    )
                    failures = [r for r in results if isinstance(r, BaseException)]
                    if not failures:
                        committing = True
                        await producer.commit_transaction()
                        self._failing = None
                        return _Outcome.COMMITTED, []
                    faults = []
                    at = 0
                    for item, futures in zip(group, sent, strict=True):
                        mine = zip(item.records, results[at : at + len(futures)], strict=True)
                        at += len(futures)
                        fault = next(
                            ((r, e) for r, e in mine if isinstance(e, _RECORD_FAULTS)), None
                        )
                        if fault is not None:
                            faults.append(_Fault(item, fault[1], fault[0].topic))
                    if not faults:
                        raise failures[0]
                    # A refused batch leaves a gap in its partition's sequence that this
                    # producer never closes: every later batch there fails too
                    # (OutOfOrderSequenceNumber), in this transaction and the next. Abort,
                    # drop the producer, and let the innocent go again on a fresh one.
                    log.warning(
                        "kafka.records_refused",
                        error=type(faults[0].error).__name__,
                        submissions=len(faults),
                        records=sum(len(i.records) for i in group),
                    )
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(producer.abort_transaction(), 5)
                    await self._discard(slot, flush=False)
                    return _Outcome.RETRY, faults
            except _NOT_COMMITTED as exc:
                log.warning("kafka.transaction_fenced", error=type(exc).__name__)
                await self._discard(slot, flush=False)
                return _Outcome.RETRY, []
            except (KafkaError, OSError, TimeoutError) as exc:
                log.warning(
                    "kafka.publish_failed",
                    error=type(exc).__name__,
                    records=sum(len(i.records) for i in group),
                    committing=committing,
                )
                self._failing = frozenset(topics)
                if not committing:
                    # Bounded abort while Kafka still answers, so read-committed consumers are
                    # not held at this open transaction until a new producer fences it.
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(producer.abort_transaction(), 5)
                # Never trust (or let retry on its own) a producer that failed mid-transaction:
                # kill it unflushed; the next one re-initialises the id, fencing it, and has
                # the coordinator finish whatever it left open.
                await self._discard(slot, flush=False)
                return (_Outcome.UNKNOWN if committing else _Outcome.RETRY), []

    def _refusal(self, fault: _Fault) -> Exception:
        """The error for a submission whose record Kafka refused when it was alone.

        A disclosure's size follows from what the sender wrote: too large is the sender's to
        fix (413). The audit and ledger records are the broker's own, small and of a fixed
        shape: their refusal is the deployment's fault (a topic's limits), a 503, and readiness
        says failing until a probe transaction gets through.
        """
        size_refused = isinstance(fault.error, _REFUSED)
        if size_refused and DELIVERY_MARK in fault.topic:
            log.warning("kafka.disclosure_refused", topic=fault.topic)
            return DisclosureTooLarge(
                "Kafka refused a disclosure of this referral as larger than the recipient's "
                "topic accepts; nothing was sent, and the same submission would be refused again"
            )
        log.error("kafka.record_refused", topic=fault.topic, error=type(fault.error).__name__)
        self._failing = frozenset({fault.topic})
        return TransportError(
            f"Kafka refused the broker's own record on {fault.topic} "
            f"({type(fault.error).__name__}); nothing was sent, retry later (an operator must "
            "check the topic's limits)"
        )

    # -- settling a claim a dead producer may have published --------------------------------

    async def _settle(self, holder: str, referral_id: str, shard: int) -> bytes | None:
        """Fence ``holder`` (a transactional id), then read the id's ledger shard to its end:
        what was kept for ``referral_id`` if it was published, else None (and never will be)."""
        if holder == self.publisher_id():
            # Our own producer: re-initialising it fences its earlier life.
            async with self._claims.lock:
                await self._discard(self._claims, flush=False)
                await self._connect(self._claims)
        else:
            await self._fence(holder)
        view = self._views.setdefault(shard, ShardView())
        await self._catch_up(shard, view)
        log.info("kafka.claim_settled", shard=shard, published=referral_id in view.entries)
        return view.entries.get(referral_id)

    def _producer(self, tid: str) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            **kafka_options(self._settings),
            acks="all",
            enable_idempotence=True,
            transactional_id=tid,
            max_request_size=self._settings.kafka_max_request_bytes,
            # One request per partition per transaction, however many submissions share it.
            max_batch_size=min(1_048_576, self._settings.kafka_max_request_bytes),
        )

    async def _fence(self, tid: str) -> None:
        producer = self._producer(tid)
        try:
            await asyncio.wait_for(producer.start(), self._settings.kafka_connect_timeout_s)
        except (KafkaError, OSError, TimeoutError) as exc:
            log.warning("kafka.fence_failed", error=type(exc).__name__)
            raise TransportError(
                "Kafka did not let the broker settle an earlier attempt at this referral; "
                "nothing was sent, retry later"
            ) from exc
        finally:
            await _kill(producer)

    async def ready(self) -> bool:
        return await self.health() == "ok"

    async def health(self) -> str:
        """``ok``, ``unreachable`` (Kafka does not answer) or ``failing`` (Kafka answers, but
        the last publish failed and no probe transaction has succeeded since).

        While failing, a probe runs in the background at most every
        ``readiness_probe_every_s``: a transaction over the topics that failed, acknowledged by
        Kafka and then aborted, so no consumer ever sees it. Its success makes this ``ok``.
        """
        if self._failing is not None:
            self._maybe_probe()
            return "failing" if await self._answers() else "unreachable"
        return "ok" if await self._answers() else "unreachable"

    async def _answers(self) -> bool:
        try:
            producer = await self._shielded_connect(
                self._general, self._settings.readiness_timeout_s
            )
            await asyncio.wait_for(
                producer.client.fetch_all_metadata(), self._settings.readiness_timeout_s
            )
        except (KafkaError, OSError, TimeoutError, TransportError):
            return False
        return True

    async def _shielded_connect(self, slot: _Slot, timeout_s: float) -> AIOKafkaProducer:
        """Connect ``slot``, waiting at most ``timeout_s``; the connection (which may have to
        move past a wedged transactional id) goes on in the background if it takes longer."""
        if slot.producer is not None:
            return slot.producer
        if slot.connecting is None or slot.connecting.done():

            async def locked() -> AIOKafkaProducer:
                async with slot.lock:
                    return await self._connect(slot)

            # A fresh context: the request that happened to start it is not its request.
            slot.connecting = asyncio.create_task(locked(), context=contextvars.Context())
            slot.connecting.add_done_callback(_retrieve)
        return await asyncio.wait_for(asyncio.shield(slot.connecting), timeout_s)

    def _maybe_probe(self) -> None:
        loop = asyncio.get_running_loop()
        if self._probing is not None and not self._probing.done():
            return
        if loop.time() < self._probe_after:
            return
        self._probe_after = loop.time() + self._settings.readiness_probe_every_s
        self._probing = asyncio.create_task(self._probe(), context=contextvars.Context())
        self._probing.add_done_callback(_retrieve)

    async def _probe(self) -> None:
        failing = self._failing
        if failing is None:
            return
        slot = self._probe_slot
        async with slot.lock:
            try:
                producer = await self._connect(slot)
                await self._check_topics(producer, set(failing))
                await asyncio.wait_for(
                    self._probe_transaction(producer, failing), self._settings.publish_timeout_s
                )
            except (KafkaError, OSError, TimeoutError, TransportError) as exc:
                log.info("kafka.probe_failed", error=type(exc).__name__)
                # An aborted probe can wedge its id as the failed publish did: the next probe
                # starts a fresh producer, which moves to a fresh id if it must.
                await self._discard(slot, flush=False)
                return
        if self._failing is failing:
            self._failing = None
        log.info("kafka.healed", topics=sorted(failing))

    @staticmethod
    async def _probe_transaction(producer: AIOKafkaProducer, topics: frozenset[str]) -> None:
        await producer.begin_transaction()
        try:
            futures = [
                await producer.send(t, b"", key=b"probe", headers=[("cairn-probe", b"1")])
                for t in sorted(topics)
            ]
            await asyncio.gather(*futures)
        finally:
            await producer.abort_transaction()

    # -- internals ---------------------------------------------------------------------------

    async def _run(
        self,
        slot: _Slot,
        producer: AIOKafkaProducer,
        records: Sequence[Record],
        consumed: Consumed | None,
        topics: set[str],
    ) -> None:
        try:
            await asyncio.wait_for(
                self._transaction(producer, records, consumed),
                self._settings.publish_timeout_s,
            )
        except (KafkaError, OSError, TimeoutError) as exc:
            log.warning(
                "kafka.publish_failed",
                error=type(exc).__name__,
                records=len(records),
            )
            self._failing = frozenset(topics)
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
            await self._discard(slot, flush=False)
            raise TransportError(
                "Kafka did not acknowledge the submission, so nothing was sent; "
                "retry the same submission later"
            ) from exc
        self._failing = None

    async def _check_ledger(self) -> None:
        """Once: the ledger topic has the configured number of shards (ids map to shards)."""
        if self._ledger_checked:
            return
        ledger = ledger_topic(self._settings.topic_prefix)
        async with self._general.lock:
            producer = await self._connect(self._general)
            await self._check_topics(producer, {ledger})
            partitions = producer.client.cluster.partitions_for_topic(ledger) or set()
        if len(partitions) != self._settings.ledger_partitions:
            log.error(
                "kafka.ledger_mismatch",
                partitions=len(partitions),
                expected=self._settings.ledger_partitions,
            )
            raise TransportError(
                f"the ledger topic {ledger} has {len(partitions)} partitions but "
                f"CAIRN_LEDGER_PARTITIONS is {self._settings.ledger_partitions}; nothing was "
                "sent. Every broker must use the topic's partition count"
            )
        self._ledger_checked = True

    async def _catch_up(self, shard: int, view: ShardView) -> None:
        """Read one ledger partition, read_committed, from where ``view`` was to its end."""
        tp = TopicPartition(ledger_topic(self._settings.topic_prefix), shard)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.publish_timeout_s
        async with self._reader_lock:
            try:
                reader = await self._ledger_reader()
                reader.assign([tp])
                end = (await asyncio.wait_for(reader.end_offsets([tp]), 5))[tp]
                reader.seek(tp, view.next_offset)
                while await reader.position(tp) < end:
                    if loop.time() > deadline:
                        raise TimeoutError("ledger catch-up")
                    batch = await reader.getmany(tp, timeout_ms=200, max_records=5000)
                    for msg in batch.get(tp, []):
                        view.apply(msg.key, msg.value, msg.offset)
                view.next_offset = await reader.position(tp)
            except (KafkaError, OSError, TimeoutError) as exc:
                log.warning("kafka.ledger_unreadable", error=type(exc).__name__, shard=shard)
                await self._close_reader()
                raise TransportError(
                    "Kafka did not let the broker read its ledger, so nothing was sent; "
                    "retry the same submission later"
                ) from exc

    async def _ledger_reader(self) -> AIOKafkaConsumer:
        if self._reader is None:
            reader = AIOKafkaConsumer(
                **kafka_options(self._settings),
                group_id=None,
                isolation_level="read_committed",
                enable_auto_commit=False,
                auto_offset_reset="earliest",
            )
            try:
                await asyncio.wait_for(reader.start(), self._settings.kafka_connect_timeout_s)
            except BaseException:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(reader.stop(), 5)
                raise
            self._reader = reader
        return self._reader

    async def _close_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(reader.stop(), 5)

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
            await producer.send(
                r.topic, r.value, key=r.key, headers=list(r.headers), partition=r.partition
            )
            for r in records
        ]
        results = await asyncio.gather(*futures, return_exceptions=True)
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is not None:
            raise failure
        if consumed is not None:
            await producer.send_offsets_to_transaction(consumed.offsets, consumed.group_id)
        await producer.commit_transaction()

    async def _connect(self, slot: _Slot) -> AIOKafkaProducer:
        """The slot's producer, initialised; a wedged transactional id moves to a fresh era.

        Kafka wedges an id when it cannot write the markers of the id's last transaction:
        initialising the id then waits forever. Waiting for the marker would keep every
        submission failing after Kafka itself has healed, so the slot moves on (bounded).
        """
        if slot.producer is not None:
            return slot.producer
        for _ in range(3):
            tid = slot.tid(slot.era)
            producer = self._producer(tid)
            try:
                await asyncio.wait_for(producer.start(), self._settings.kafka_connect_timeout_s)
            except (KafkaError, OSError, TimeoutError) as exc:
                reachable = bool(producer.client.cluster.brokers())
                await _kill(producer)
                if isinstance(exc, TimeoutError) and reachable:
                    log.warning("kafka.transaction_wedged", transactional_id=tid, era=slot.era)
                    slot.era += 1
                    continue
                log.warning("kafka.connect_failed", error=type(exc).__name__)
                raise TransportError(
                    f"cannot reach Kafka at {self._settings.kafka_bootstrap_servers}; "
                    "check CAIRN_KAFKA_BOOTSTRAP_SERVERS and that the cluster is up"
                ) from exc
            log.info("kafka.connected", transactional_id=tid)
            slot.producer = producer
            return producer
        raise TransportError(
            "Kafka answers but would not start a transaction for the broker; nothing was sent, "
            "retry later"
        )

    async def _discard(self, slot: _Slot, *, flush: bool = True) -> None:
        producer, slot.producer = slot.producer, None
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


def _era(base: str, era: int) -> str:
    return base if era == 0 else f"{base}.e{era}"


def _record_size(record: Record) -> int:
    """A record's size as Kafka counts it against its request and message limits."""
    return int(
        DefaultRecordBatchBuilder.estimate_size_in_bytes(
            record.key, record.value, list(record.headers)
        )
    )


def _not_acknowledged() -> TransportError:
    return TransportError(
        "Kafka did not acknowledge the submission, so nothing was sent; "
        "retry the same submission later"
    )


def _fail(item: _Pending, exc: Exception) -> None:
    if not item.done.done():
        item.done.set_exception(exc)
        item.done.exception()  # retrieved here too: a caller gone away is not an error


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Done callback: a background task's failure is logged where it happens, not re-raised."""
    if not task.cancelled():
        task.exception()


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
    ledger: dict[str, bytes] = field(default_factory=dict)  # referral id -> what was kept

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def publish(
        self,
        records: Sequence[Record],
        consumed: Consumed | None = None,
        *,
        claim: Claim | None = None,
    ) -> None:
        if not records and consumed is None:
            raise RuntimeError("publish() needs at least one record")
        if claim is not None and claim.referral_id in self.ledger:
            raise AlreadyPublished(claim.referral_id, self.ledger[claim.referral_id])
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
        if claim is not None:
            self.ledger[claim.referral_id] = claim.value
        if consumed is not None:
            self.committed.setdefault(consumed.group_id, {}).update(consumed.offsets)

    async def ready(self) -> bool:
        return self.available

    def publisher_id(self) -> str:
        return "memory"

    async def health(self) -> str:
        return "ok" if self.available else "unreachable"

    def read_committed(self, topic: str) -> list[Record]:
        return list(self.topics.get(topic, []))


@contextlib.asynccontextmanager
async def admin_client(settings: Settings, purpose: str) -> AsyncIterator[AIOKafkaAdminClient]:
    """A started admin client for the settings' Kafka, closed after; ``TransportError`` naming
    the servers and ``purpose`` (what it was for: "create topics") if it cannot start."""
    admin = AIOKafkaAdminClient(**kafka_options(settings))
    try:
        await asyncio.wait_for(admin.start(), settings.kafka_connect_timeout_s)
    except (KafkaError, OSError, TimeoutError) as exc:
        with contextlib.suppress(Exception):
            await admin.close()
        raise TransportError(
            f"cannot reach Kafka at {settings.kafka_bootstrap_servers} to {purpose}"
        ) from exc
    try:
        yield admin
    finally:
        await admin.close()


async def create_topics(settings: Settings, specs: Sequence[TopicSpec]) -> dict[str, str]:
    """Create each topic that does not exist yet; return topic -> "created" or "exists"."""
    async with admin_client(settings, "create topics") as admin:
        existing = set(await admin.list_topics())
        result = {s.name: "exists" for s in specs if s.name in existing}
        missing = [s for s in specs if s.name not in existing]
        if missing:
            response = await admin.create_topics(
                [
                    NewTopic(
                        s.name,
                        s.partitions,
                        settings.topic_replication_factor,
                        topic_configs=s.config or None,
                    )
                    for s in missing
                ]
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
