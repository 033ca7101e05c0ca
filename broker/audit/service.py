"""The auditor: the verifiable audit log's only writer, and its HTTP face for IG officers.

``cairn auditor`` runs as its own process, not as a task inside ``cairn serve``: it holds its
own signing key, its own files and its own failure domain, so the broker, which produces the
events, can never rewrite the record of what it did, and a stuck or crashing auditor never holds
up a referral (the broker's Kafka transaction already made the events durable on
``cairn.audit``; the auditor catches up).

It reads ``cairn.audit`` (one partition, read_committed) from the log's next Kafka offset, so
the offset is the idempotency key: after a crash at any point it resumes without a gap or a
duplicate. Every ``every_entries`` leaves or ``every_s`` seconds it signs a checkpoint (C2SP
signed note) and publishes it to ``cairn.checkpoints`` (a checkpoint Kafka does not take is
still in the log's files; the next one supersedes it).

Witnesses (``broker.audit.witness``, C2SP tlog-witness): with ``auditor_witnesses`` set, each
new checkpoint is submitted to every witness at once, with the RFC 9162 consistency proof from
the size that witness last cosigned (taken on the log's thread); the cosignatures that verify
against the configured keys are kept in the log (``AuditLog.add_cosignatures``), and the
cosigned note is what ``cairn.checkpoints`` and the public tlog-tiles checkpoint get. A witness
down or slow costs at most two requests of ``auditor_witness_timeout_s`` and is tried again at
the next checkpoint; checkpoints never wait for it beyond that. A witness that holds another
tree of this log (tlog-witness 409 for the same size, 422, or a size above ours) is a fork: it
is logged as ``auditor.witness_fork`` (error; the witness, sizes and the code, nothing else),
counted (``forks``, ``cairn_audit_witness_results{result="fork"}``), and kept in the status
file ``witnesses.json`` beside the log (``WITNESS_STATUS_FILE``), so that the count outlives a
restart; operators may read it, but nothing else depends on it.

The auditor measures its own lag: after its steps, at most every ``LAG_EVERY_S`` seconds, it
asks Kafka for the audit partition's last stable offset (``end_offsets`` of a read_committed
consumer, KIP-98) and compares it with its own position (``broker.kafka.consumer.lag``); a
caught-up auditor has read past the last transaction's commit marker, so it is 0, with nothing
subtracted. ``Auditor.status`` is one snapshot of its figures (the log's size and next offset,
that lag, the latest checkpoint's size and age, the witnesses' answers and the forks); it is
served publicly as ``GET /v1/audit/status``, which the broker's health and ``/metrics`` read
(``broker.ops.health.AuditorProbe``): broker and auditor need not share a disk.

A record that is not a canonical audit event is that record's fault: it is dead-lettered
(``broker.kafka.consumer``), counted and skipped, and the events behind it are appended. A
second acknowledgement of the same disclosure by the same agency is a counted duplicate, not a
new entry (``broker.audit.store.ONCE_PER_RECIPIENT``), however many brokers produced it. The
log decides where to resume; the consumer group ``cairn-auditor`` only remembers which records
were examined already, so that a dead letter or a duplicate at the end of the topic is not
sent or counted again after a restart. Kafka going away, or an outage aiokafka does not notice,
makes the auditor reconnect after a bounded pause and resume by itself.

HTTP, over mutual TLS, for the auditor's certificate only (IG tools present it), but for the
IG view's routes (``/ui/ig``, its verify call, ``/v1/audit/checkpoint``, ``overrides`` and
``subject``), which an IG officer's own certificate (CN ``ig-officer.<id>``, issued by the
federation CA: ``cairn audit officer enrol``) may use too:

    GET  /v1/audit/checkpoint                          latest signed checkpoint (text/plain)
    GET  /v1/audit/entries?agency=&purpose=&...        events matching the filters (JSON)
    GET  /v1/audit/overrides?since=&override_by=&...   the consent overrides: who decided
                                                       (role, staff id), why, on what paragraph
    GET  /v1/audit/proof/inclusion?index=&size=        RFC 9162 §2.1.3 inclusion proof
    GET  /v1/audit/proof/consistency?first=&second=    RFC 9162 §2.1.4 consistency proof
                                                       (both JSON in the shape of
                                                       broker.audit.proofs, the same as
                                                       ``cairn audit prove``: RFC 9162 §4
                                                       names, the signed checkpoint, and
                                                       for inclusion C2SP tlog-proof text)
    POST /v1/audit/subject[?format=csv]                every event about a person, given their
                                                       identifiers and the officer's reason in a
                                                       JSON body (never in a URL); itself an
                                                       ig_search (ig_export for CSV) audit event
                                                       (broker.audit.trail), recorded first

The log in the C2SP tlog-tiles layout (``broker.audit.tiles``), under ``/v1/audit/log``:

    GET  /v1/audit/log/checkpoint                      latest signed checkpoint with the
                                                       witnesses' cosignatures so far (public)
    GET  /v1/audit/log/tile/<L>/<N>[.p/<W>]            hash tiles (public)
    GET  /v1/audit/log/tile/entries/<N>[.p/<W>]        entry bundles (auditor's certificate)
    GET  /v1/audit/verifier-key                        the checkpoint verifier key(s), C2SP
                                                       signed-note ``name+hash+base64`` (public)
    GET  /v1/audit/jwks                                the registry's keys as a JWK Set, RFC
                                                       7517 §5 (``keys.jwks``; public)
    GET  /v1/audit/status                              the auditor's own figures (``Auditor.
                                                       status``: sizes, offsets, lag, ages,
                                                       witness results; public, JSON)
    GET  /metrics                                      the same as Prometheus text (public)
    GET  /openapi.json                                 this API's OpenAPI 3.1 document
                                                       (broker/audit/openapi.json)

The public paths hold no personal data (a checkpoint is an origin, a size and a root hash; a
hash tile is SHA-256 hashes of events; the keys are public keys and member ids; the status is
numbers, witness names and result codes), so any tiles
client, witness or JOSE library may read them without a client certificate: the TLS context
asks for a certificate but does not require one (``tls_context``), and ``auditor_only`` lets
only those handlers through without the auditor's. The events themselves (entry bundles and
every other path) stay behind the auditor's certificate.

Every log operation runs on one dedicated thread: the store is not thread-safe, and its
appends block on fsync.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, TypeVar

import aiohttp
import structlog
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from broker.audit.checkpoint import NoteVerifier
from broker.audit.cosign import CosignerVerifier
from broker.audit.files import (
    CHECKPOINTS_FILE,
    DEFAULT_ORIGIN,
    WITNESS_STATUS_FILE,
    Disk,
    checkpoint_size,
)
from broker.audit.index import Query
from broker.audit.proofs import checkpoint_for, consistency_document, inclusion_document
from broker.audit.report import disclosure_report, override_report, report_csv
from broker.audit.store import AuditLog, CheckpointPolicy, Entry
from broker.audit.tiles import (
    EntryTooLarge,
    TileNotFound,
    bundle_range,
    cache_control,
    encode_bundle,
    hash_tile,
    parse_tile_path,
)
from broker.audit.trail import KafkaRecorder, Recorder, check_reason, identifier_kinds
from broker.audit.verify import verify
from broker.audit.witness import WitnessEndpoint, WitnessOutcome, WitnessResult, cosign_with
from broker.config import Settings
from broker.kafka.consumer import (
    Backoff,
    ConsumerStalled,
    Retry,
    Watchdog,
    close,
    dead_letter,
    dlq_topic,
    follow_until_stopped,
    lag,
    reason_code,
)
from broker.kafka.transport import kafka_options
from broker.ops.health import status_answer
from broker.ops.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from broker.ops.metrics import Metrics, auditor_exposition
from broker.trust import TrustStore
from broker.web.middleware import REQUEST_ID, TLS_AGENCY, problems_middleware
from broker.web.openapi import openapi_route
from broker.web.pages import json_page, static_file, static_route
from keys import AUDITOR_ID, peer_agency, server_context
from keys.errors import VerificationError as KeyVerificationError
from keys.jwks import JWK_SET_MEDIA_TYPE, jwk_set
from keys.registry import KeyStatus, KeyUse
from keys.store import PathStore
from schemas.audit import IG_OFFICER_PREFIX, AuditEvent, ig_searched
from schemas.consent import OverrideReason
from schemas.errors import AuthenticationError, FieldProblem, SchemaError
from schemas.pseudonyms import nhs_identifier, person_pseudonyms
from schemas.referral import Purpose

__all__ = [
    "CONSUMER",
    "GROUP_ID",
    "LAG_EVERY_S",
    "WITNESS_STATUS_FILE",
    "Auditor",
    "add_ig_routes",
    "auditor_app",
    "tls_context",
    "witness_endpoints",
]

log = structlog.get_logger(__name__)

CONSUMER: Final = "auditor"  # the consumer's name on its dead letters and in the metric
GROUP_ID: Final = "cairn-auditor"  # remembers what was examined; the log says what is stored
#: Seconds between two measures of the auditor's lag (``Auditor.status``): a bound on what it asks
#: of Kafka, and on how old the figure the broker shows can be.
LAG_EVERY_S: Final = 5.0


def witness_endpoints(settings: Settings) -> list[WitnessEndpoint]:
    """The configured witnesses; ``keys.errors.VerificationError`` for a vkey whose key id
    does not match its name and key (the settings check only its form)."""
    endpoints = []
    for n, w in enumerate(settings.auditor_witnesses):
        try:
            endpoints.append(WitnessEndpoint(w.url, CosignerVerifier.from_vkey(w.vkey)))
        except KeyVerificationError as exc:
            raise KeyVerificationError(
                exc.reason, f"CAIRN_AUDITOR_WITNESSES[{n}] ({w.name}): {exc}"
            ) from None
    return endpoints


T = TypeVar("T")


class Auditor:
    """Consumes the audit topic into the log and signs checkpoints; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        trust: TrustStore,
        *,
        directory: Path | None = None,
        policy: CheckpointPolicy | None = None,
        origin: str = DEFAULT_ORIGIN,
        metrics: Metrics | None = None,
        witnesses: Sequence[WitnessEndpoint] | None = None,
        recorder: Recorder | None = None,
    ) -> None:
        self.settings = settings
        # Where IG searches' own events go: cairn.audit, like every event (broker.audit.trail).
        self.recorder: Recorder = recorder or KafkaRecorder(settings)
        self.trust = trust
        self.directory = directory or settings.state_dir / "audit"
        self.policy = policy or CheckpointPolicy(
            every_entries=settings.checkpoint_every_entries, every_s=settings.checkpoint_every_s
        )
        self.origin = origin
        self.metrics = metrics
        self._retry = Retry.from_settings(settings)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="auditlog")
        self._log: AuditLog | None = None
        self._examined = 0  # the next offset not yet examined (dead letters sent, duplicates)
        self.appended = 0
        self.appended_since_checkpoint = 0
        self.dead_letters = 0
        self.duplicates = 0
        self.reconnections = 0
        self.witnesses = tuple(witness_endpoints(settings) if witnesses is None else witnesses)
        self._witness_sizes: dict[str, int] = {}  # by URL: the size each last cosigned
        self._session: aiohttp.ClientSession | None = None
        self.witness_status: dict[str, dict[str, Any]] = {}  # by witness name: its last answer
        self.forks = 0  # fork reports from witnesses, over the log's life (witnesses.json)
        self.last_fork: dict[str, Any] | None = None
        # Offsets on the audit partition's last stable offset not read yet, as Kafka said at
        # the last measure (None: not measured while following, e.g. Kafka unreachable).
        self.lag: int | None = None
        self._lag_at = float("-inf")  # time.monotonic() of the last measure

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the log's own thread."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    @property
    def log(self) -> AuditLog:
        if self._log is None:
            raise RuntimeError("the auditor has not opened its log")
        return self._log

    async def open(self) -> None:
        verifiers = [w.verifier for w in self.witnesses]
        self._log = await self.call(
            lambda: AuditLog.open(self.directory, origin=self.origin, witnesses=verifiers)
        )
        opened = self._log
        self._witness_sizes = {
            w.url: await self.call(opened.cosigned_size, w.verifier) for w in self.witnesses
        }
        await self.call(self._load_witness_status)
        log.info(
            "auditor.opened",
            size=self._log.size,
            next_offset=self._log.next_offset,
            witnesses=len(self.witnesses),
        )

    async def close(self) -> None:
        await self.recorder.close()
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._log is not None:
            await self.call(self._log.close)
            self._log = None
        self._thread.shutdown(wait=True)

    def _reconnected(self) -> None:
        self.reconnections += 1

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the audit topic until ``stop``; after any failure reconnect, with a bounded
        pause, and resume from the log."""
        await follow_until_stopped(
            stop,
            lambda backoff: self._follow(stop, backoff),
            self._retry,
            event="auditor.reconnecting",
            reconnected=self._reconnected,
        )
        if self.appended_since_checkpoint:
            # Stopped without Kafka: the last events are still attested, in the files.
            with contextlib.suppress(Exception):
                await self.checkpoint()

    async def _follow(self, stop: asyncio.Event, backoff: Backoff) -> None:
        options = kafka_options(self.settings)
        tp = TopicPartition(f"{self.settings.topic_prefix}.audit", 0)
        consumer = AIOKafkaConsumer(
            **options, group_id=GROUP_ID, isolation_level="read_committed", enable_auto_commit=False
        )
        producer = AIOKafkaProducer(**options, acks="all", enable_idempotence=True)
        try:
            await asyncio.wait_for(consumer.start(), self._retry.connect_s)
            await asyncio.wait_for(producer.start(), self._retry.connect_s)
            consumer.assign([tp])
            committed = await asyncio.wait_for(consumer.committed(tp), self._retry.connect_s)
            self._examined = max(self._examined, committed or 0)
            # The log, not the consumer group, knows where we are: its next Kafka offset.
            consumer.seek(tp, self.log.next_offset)
            await self._measure_lag(consumer, tp)  # how far behind it starts (then bounded)
            watchdog = Watchdog(self._retry)
            while not stop.is_set():
                if await self._step(consumer, producer, tp):
                    watchdog.progressed()
                    backoff.reset()
                else:
                    await watchdog.check(consumer, [tp])
                await self._measure_lag(consumer, tp)
                if await self.call(self.log.checkpoint_due, self.policy):
                    await self.checkpoint(producer)
            # Stopping: catch up with what is already committed (bounded), then sign a final
            # checkpoint so that the last events do not wait for the next run to be attested.
            end = (await consumer.end_offsets([tp]))[tp]
            deadline = asyncio.get_running_loop().time() + self.settings.shutdown_timeout_s
            while await consumer.position(tp) < end:
                if asyncio.get_running_loop().time() > deadline:
                    log.warning("auditor.stopped_behind", position=await consumer.position(tp))
                    break
                await self._step(consumer, producer, tp)
            if self.appended_since_checkpoint:
                await self.checkpoint(producer)
        finally:
            self.lag = None  # not following: the lag is not known, not the last figure
            self._lag_at = float("-inf")
            await close(consumer)
            await close(producer)

    async def _measure_lag(self, consumer: AIOKafkaConsumer, tp: TopicPartition) -> None:
        """Ask Kafka how far behind the audit partition's last stable offset the auditor is,
        at most every ``LAG_EVERY_S`` and within the connect timeout; no answer: unknown."""
        now = time.monotonic()
        if now - self._lag_at < LAG_EVERY_S:
            return
        self._lag_at = now
        try:
            self.lag = await lag(consumer, [tp], self._retry.connect_s)
        except ConsumerStalled:
            self.lag = None

    def status(self) -> dict[str, Any]:
        """The auditor's figures, one snapshot (run on the log's thread: ``call``). Numbers,
        witness names and result codes only; served as ``GET /v1/audit/status``."""
        opened = self.log
        note = opened.latest_checkpoint()
        try:
            written = (self.directory / CHECKPOINTS_FILE).stat().st_mtime
            age: float | None = max(0.0, time.time() - written) if note is not None else None
        except OSError:
            age = None
        return {
            "size": opened.size,
            "next_offset": opened.next_offset,
            "lag": self.lag,
            "checkpoint": {
                "size": None if note is None else checkpoint_size(note),
                "age_s": None if age is None else int(age),
            },
            "witnesses": {
                name: {
                    "result": s.get("result"),
                    "checkpoint_size": s.get("checkpoint_size"),
                    "witness_size": s.get("witness_size"),
                    "at": s.get("at"),
                }
                for name, s in sorted(self.witness_status.items())
            },
            "cosigned_size": {w.name: self._witness_sizes.get(w.url, 0) for w in self.witnesses},
            "forks": self.forks,
        }

    async def _step(
        self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer, tp: TopicPartition
    ) -> bool:
        """Append one batch: dead-letter what is not an event first, then store the rest, then
        remember what was examined. False if there was nothing to read."""
        batch = await consumer.getmany(tp, timeout_ms=500, max_records=500)
        messages = batch.get(tp, [])
        if not messages:
            return False
        events: list[tuple[int, bytes, AuditEvent]] = []
        dead: list[tuple[Any, str]] = []
        for m in messages:
            if isinstance(m.value, bytes) and len(m.value) > self.log.max_event_bytes:
                dead.append((m, "too_large"))
                continue
            try:
                events.append((m.offset, m.value, AuditEvent.from_canonical(m.value)))
            except Exception as exc:  # whatever reading it raises is the record's fault
                dead.append((m, reason_code(exc)))
        fresh = [(m, reason) for m, reason in dead if m.offset >= self._examined]
        if fresh:
            await self._dead_letter(producer, fresh)
        if events:
            result = await self.call(self.log.append, events)
            self.appended += result.appended
            self.appended_since_checkpoint += result.appended
            repeated = [o for o in result.duplicates if o >= self._examined]
            if repeated:
                self.duplicates += len(repeated)
                log.info("auditor.duplicates", offsets=repeated)
        self._examined = max(self._examined, messages[-1].offset + 1)
        await asyncio.wait_for(consumer.commit({tp: self._examined}), self._retry.connect_s)
        return True

    async def _dead_letter(self, producer: AIOKafkaProducer, dead: list[tuple[Any, str]]) -> None:
        topic = dlq_topic(self.settings.topic_prefix)
        sent = []
        for m, reason in dead:
            log.warning("auditor.dead_lettered", offset=m.offset, reason=reason)
            r = dead_letter(topic, CONSUMER, m, reason)
            sent.append(await producer.send(r.topic, r.value, key=r.key, headers=list(r.headers)))
        await asyncio.wait_for(asyncio.gather(*sent), self.settings.publish_timeout_s)
        for _m, reason in dead:
            self.dead_letters += 1
            if self.metrics is not None:
                self.metrics.dead_letter(CONSUMER, reason)

    async def checkpoint(self, producer: AIOKafkaProducer | None = None) -> bytes:
        """Sign a checkpoint of the log as it is now, have the witnesses cosign it (if any are
        configured), and publish it, cosigned as far as it got, if given a producer."""
        key = self.trust.signing_key()
        note = await self.call(self.log.sign_checkpoint, key)
        self.appended_since_checkpoint = 0
        log.info("auditor.checkpoint", size=self.log.size)
        if self.witnesses:
            note = await self.collect_cosignatures(note)
        if producer is not None:
            try:
                await asyncio.wait_for(
                    producer.send_and_wait(f"{self.settings.topic_prefix}.checkpoints", note),
                    self.settings.publish_timeout_s,
                )
            except (KafkaError, OSError, TimeoutError) as exc:
                # Signed and in the files already; the next checkpoint supersedes this one.
                log.warning("auditor.checkpoint_unpublished", error=type(exc).__name__)
        return note

    # -- witnesses --

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            cafile = self.settings.auditor_witness_ca_file
            context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=context, limit=2 * len(self.witnesses)),
                trust_env=False,
            )
        return self._session

    async def collect_cosignatures(self, note: bytes) -> bytes:
        """Submit ``note`` (a checkpoint just signed) to the witnesses that have not cosigned
        its size yet; keep what verifies; report each answer. Returns the note with every
        cosignature the log holds for its size (``note`` itself if none)."""
        size = checkpoint_size(note)
        have = await self.call(self.log.cosigned_checkpoint, size)
        pending = [w for w in self.witnesses if self._witness_sizes.get(w.url) != size or not have]
        if pending:
            opened = self.log

            async def proof_from(old: int) -> list[bytes]:
                return await self.call(opened.consistency_proof, old, size)

            cosigned, outcomes = await cosign_with(
                self._http(),
                note,
                size,
                proof_from,
                pending,
                old_sizes=self._witness_sizes,
                timeout_s=self.settings.auditor_witness_timeout_s,
            )
            for outcome in outcomes:
                self._witness_answered(outcome, size)
            if cosigned != note:
                try:
                    have = await self.call(self.log.add_cosignatures, cosigned)
                except KeyVerificationError as exc:  # cosign_with verified each: a bug if so
                    log.error("auditor.cosignatures_refused", size=size, reason=exc.reason)
            await self.call(self._save_witness_status, size)
        cosigners = len(self.witnesses) - sum(
            1 for w in self.witnesses if self._witness_sizes.get(w.url) != size
        )
        if cosigners < self.settings.auditor_witness_quorum:
            log.warning(
                "auditor.witness_quorum_missed",
                size=size,
                cosigned=cosigners,
                quorum=self.settings.auditor_witness_quorum,
            )
        return have or note

    def _witness_answered(self, outcome: WitnessOutcome, size: int) -> None:
        endpoint, result = outcome.endpoint, outcome.result
        if result is WitnessResult.COSIGNED:
            self._witness_sizes[endpoint.url] = size
        elif outcome.held_size is not None and result is not WitnessResult.FORK:
            self._witness_sizes[endpoint.url] = outcome.held_size
        status = {
            "url": endpoint.url,
            "result": result.value,
            "detail": outcome.detail,
            "checkpoint_size": size,
            "witness_size": outcome.held_size,
            "at": int(time.time()),
        }
        self.witness_status[endpoint.name] = status
        if self.metrics is not None:
            self.metrics.witness_result(endpoint.name, result.value)
        if result is WitnessResult.COSIGNED:
            log.info("auditor.cosigned", witness=endpoint.name, size=size)
        elif result is WitnessResult.FORK:
            self.forks += 1
            self.last_fork = {"witness": endpoint.name, **status}
            log.error(
                "auditor.witness_fork",
                witness=endpoint.name,
                size=size,
                witness_size=outcome.held_size,
                detail=outcome.detail,
                forks=self.forks,
            )
        else:
            log.warning(
                "auditor.witness_failed",
                witness=endpoint.name,
                size=size,
                result=result.value,
                detail=outcome.detail,
            )

    def _load_witness_status(self) -> None:
        try:
            doc = json.loads((self.directory / WITNESS_STATUS_FILE).read_bytes())
            self.forks = int(doc.get("forks", 0))
            self.last_fork = doc.get("last_fork")
        except (OSError, ValueError, TypeError, AttributeError):
            return  # no status yet (or unreadable: it is a report, not the log; rewritten)

    def _save_witness_status(self, size: int) -> None:
        doc = {
            "checkpoint_size": size,
            "quorum": self.settings.auditor_witness_quorum,
            "cosigned_size": {w.name: self._witness_sizes.get(w.url, 0) for w in self.witnesses},
            "witnesses": self.witness_status,
            "forks": self.forks,
            "last_fork": self.last_fork,
        }
        data = json.dumps(doc, indent=2, sort_keys=True).encode("utf-8") + b"\n"
        try:
            Disk().replace(data, self.directory / WITNESS_STATUS_FILE)
        except OSError as exc:
            log.warning("auditor.witness_status_not_written", error=exc.strerror)


# --- HTTP -------------------------------------------------------------------------------------

AUDITOR = web.AppKey("auditor", Auditor)


def tls_context(store: PathStore, passphrase: bytes) -> ssl.SSLContext:
    """The auditor's server context: a client certificate is asked for and verified when
    presented, but not required, so the public tiles paths are readable by any tiles client;
    ``auditor_only`` requires the auditor's certificate everywhere else."""
    context = server_context(store, passphrase)
    context.verify_mode = ssl.CERT_OPTIONAL
    return context


@web.middleware
async def auditor_only(request: web.Request, handler: Any) -> web.StreamResponse:
    """Only the auditor's client certificate may read the log (IG tools present it), except
    the public handlers (checkpoint, hash tiles, verifier key, JWK Set), chosen by the matched
    route rather than the path text."""
    if request.match_info.handler in _PUBLIC:
        response: web.StreamResponse = await handler(request)
        return response
    if request.match_info.handler in _IG:
        _require_ig(request)
        response = await handler(request)
        return response
    _require_auditor(request)
    response = await handler(request)
    return response


def _peer(request: web.Request) -> str:
    """The subject CN of the verified client certificate (``TLS_AGENCY`` on the request)."""
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    if ssl_object is None:
        raise AuthenticationError("the audit API is served over mutual TLS only")
    try:
        agency = peer_agency(ssl_object)
    except KeyVerificationError:
        raise AuthenticationError("the client certificate does not identify anyone") from None
    request[TLS_AGENCY] = agency
    return agency


def _require_ig(request: web.Request) -> str:
    """The IG view's routes: the auditor's certificate or an IG officer's (CN
    ``ig-officer.<id>``; the handshake checked it is the federation CA's, and no agency's own
    CA may issue that name, ``keys.tls.peer_agency``). Returns who it is."""
    who = _peer(request)
    if who != AUDITOR_ID and not (who.startswith(IG_OFFICER_PREFIX) and _OFFICER.match(who)):
        raise AuthenticationError(
            f"'{who}' may not use the IG view; present an IG officer's certificate"
        )
    return who


_OFFICER: Final = re.compile(r"^ig-officer\.[a-z0-9][a-z0-9-]{1,47}$")  # schemas.audit.OfficerId


def _require_auditor(request: web.Request) -> None:
    agency = _peer(request)
    if agency != AUDITOR_ID:
        raise AuthenticationError(
            f"'{agency}' may not read the audit log; present the auditor's certificate"
        )


def _int(request: web.Request, name: str, default: int | None = None) -> int:
    raw = request.query.get(name)
    if raw is None:
        if default is None:
            raise SchemaError(f"'{name}' is required", (FieldProblem(name, "required"),))
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SchemaError(
            f"'{name}' is not a whole number", (FieldProblem(name, "not an integer"),)
        ) from None
    if value < 0:
        raise SchemaError(f"'{name}' is negative", (FieldProblem(name, "must be 0 or more"),))
    return value


def _entries(entries: list[Entry]) -> web.Response:
    return web.json_response(
        {
            "entries": [
                {"index": e.index, "offset": e.offset, "event": json.loads(e.data)} for e in entries
            ]
        }
    )


def _moment(request: web.Request, name: str) -> datetime | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise SchemaError(
            f"'{name}' is not an ISO 8601 date or time", (FieldProblem(name, "not a date"),)
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


async def checkpoint(request: web.Request) -> web.Response:
    auditor = request.app[AUDITOR]
    note = await auditor.call(auditor.log.latest_checkpoint)
    if note is None:
        raise web.HTTPNotFound(text="no checkpoint has been signed yet")
    return web.Response(body=note, content_type="text/plain", charset="utf-8")


_Code = TypeVar("_Code", bound=StrEnum)


def _choice(q: Mapping[str, str], name: str, kind: type[_Code]) -> _Code | None:
    """The code parameter ``name`` as one of ``kind``; the refusal lists the codes, never
    repeating what was sent (a query parameter can carry anything, a name included)."""
    if name not in q:
        return None
    try:
        return kind(q[name])
    except ValueError:
        codes = ", ".join(sorted(m.value for m in kind))
        raise SchemaError(
            f"'{name}' is not one of the codes: {codes}", (FieldProblem(name, "not a code"),)
        ) from None


def _query(request: web.Request) -> Query:
    """The entries query the request's parameters ask for (``/v1/audit/entries``, ``overrides``)."""
    q = request.query
    purpose = _choice(q, "purpose", Purpose)
    reason = _choice(q, "override_reason", OverrideReason)
    if q.get("override", "true") not in ("true", "false"):
        raise SchemaError("'override' is true or false", (FieldProblem("override", "not a code"),))
    override = {"true": True, "false": False}.get(q.get("override", ""))
    return Query(
        agency=q.get("agency"),
        sender=q.get("sender"),
        recipient=q.get("recipient"),
        purpose=purpose,
        lawful_basis=q.get("lawful_basis"),
        override=override,
        override_reason=reason,
        override_by=q.get("override_by"),
        override_role=q.get("override_role"),
        override_paragraph=q.get("override_paragraph"),
        since=_moment(request, "since"),
        until=_moment(request, "until"),
        limit=min(_int(request, "limit", 1000), 10_000),
    )


async def entries(request: web.Request) -> web.Response:
    auditor = request.app[AUDITOR]
    return _entries(await auditor.call(auditor.log.query, _query(request)))


async def overrides(request: web.Request) -> web.Response:
    """Every consent override: who decided (role, staff id), why, on what paragraph, for what.

    The same filters as ``/v1/audit/entries``; a staff id is staff personal data, shown here
    to the auditor's certificate only, for accountability.
    """
    auditor = request.app[AUDITOR]
    rows = await auditor.call(override_report, auditor.log, _query(request))
    return web.json_response({"overrides": [vars(row) for row in rows]})


async def inclusion(request: web.Request) -> web.Response:
    auditor = request.app[AUDITOR]
    size = _int(request, "size", auditor.log.size)
    index = _int(request, "index")
    if not index < size <= auditor.log.size:
        raise SchemaError(
            "need index < size <= the tree size", (FieldProblem("index", "out of range"),)
        )
    log = auditor.log
    document = await auditor.call(
        lambda: inclusion_document(
            index=index,
            size=size,
            leaf=log.entry(index).leaf_hash,
            root_hash=log.root(size),
            path=log.inclusion_proof(index, size),
            checkpoint=checkpoint_for(log.checkpoints, size),
        )
    )
    return web.json_response(document)


async def consistency(request: web.Request) -> web.Response:
    auditor = request.app[AUDITOR]
    second = _int(request, "second", auditor.log.size)
    first = _int(request, "first")
    if not 0 < first <= second <= auditor.log.size:
        raise SchemaError(
            "need 0 < first <= second <= the tree size", (FieldProblem("first", "out of range"),)
        )
    log = auditor.log
    document = await auditor.call(
        lambda: consistency_document(
            size_1=first,
            size_2=second,
            root_hash_1=log.root(first),
            root_hash_2=log.root(second),
            path=log.consistency_proof(first, second),
            checkpoint_1=checkpoint_for(log.checkpoints, first),
            checkpoint_2=checkpoint_for(log.checkpoints, second),
        )
    )
    return web.json_response(document)


_IDENTIFIERS: Final = ("nhs_number", "given_name", "family_name", "date_of_birth", "aliases")
_SUBJECT_FORMATS: Final = ("json", "csv")


def _subject_body(body: object) -> dict[str, Any]:
    """The identifiers and reason of a subject search, type-checked; refusals name the
    field and never repeat what was sent."""
    if not isinstance(body, dict):
        raise SchemaError("send the identifiers and the reason as a JSON object")
    unknown = sorted(set(body) - {*_IDENTIFIERS, "reason"})
    if unknown:
        raise SchemaError(
            "unknown fields: send identifiers and a reason only",
            tuple(FieldProblem(k[:64], "not an identifier") for k in unknown),
        )
    aliases = body.get("aliases") or []
    wrong = [k for k in _IDENTIFIERS[:4] if not isinstance(body.get(k, ""), str | None)]
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        wrong.append("aliases")
    if not isinstance(body.get("reason", ""), str | None):
        wrong.append("reason")
    if wrong:  # a number, an object: refused by name, never echoed
        raise SchemaError(
            "identifiers and the reason are strings, aliases a list of strings",
            tuple(FieldProblem(k, "wrong type") for k in wrong),
        )
    try:
        dob = date.fromisoformat(body["date_of_birth"]) if body.get("date_of_birth") else None
    except ValueError:
        raise SchemaError(
            "the date of birth is not a date",
            (FieldProblem("date_of_birth", "not a date: YYYY-MM-DD"),),
        ) from None
    nhs = body.get("nhs_number") or None
    if nhs is not None:
        try:
            nhs_identifier(nhs)
        except ValueError as exc:  # the rule broken (digits, check digit), not the number
            raise SchemaError(
                "the NHS number is not valid", (FieldProblem("nhs_number", str(exc)),)
            ) from None
    return {
        "nhs_number": nhs,
        "given_name": body.get("given_name") or None,
        "family_name": body.get("family_name") or None,
        "date_of_birth": dob,
        "aliases": tuple(aliases),
        "reason": body.get("reason"),
    }


async def subject(request: web.Request) -> web.Response:
    """Every event about one person, found by identifiers sent in the body, not the URL, for
    the reason the officer typed; the search is recorded first (``broker.audit.trail``): an
    ``ig_search`` event, or ``ig_export`` for ``?format=csv`` (the disclosure report as RFC
    4180 CSV). Nothing is searched until Kafka holds the event."""
    auditor = request.app[AUDITOR]
    officer = _require_ig(request)
    fmt = request.query.get("format", "json")
    if fmt not in _SUBJECT_FORMATS:
        raise SchemaError("'format' is json or csv", (FieldProblem("format", "not a code"),))
    try:
        raw = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise SchemaError("send the identifiers and the reason as a JSON object") from None
    found = _subject_body(raw)
    ids = {k: v for k, v in found.items() if k != "reason"}
    try:
        pseudonyms = person_pseudonyms(auditor.trust.pseudonym_secret(), **ids)
    except ValueError:
        raise SchemaError(
            "give an NHS number, or a given name, family name and date of birth",
            tuple(
                FieldProblem(k, "give an NHS number, or names and a date of birth")
                for k in ("nhs_number", "date_of_birth")
            ),
        ) from None
    reason = check_reason(found["reason"], **ids)
    event = ig_searched(  # SchemaError naming 'reason': its bounds, or an identifier's shape
        officer=officer,
        reason=reason,
        subjects=pseudonyms,
        identifiers=identifier_kinds(**ids),
        export=None if fmt == "json" else fmt,
        at=datetime.now(UTC),
        request_id=request.get(REQUEST_ID),
    )
    await auditor.recorder.record(event)  # SearchNotRecorded: a 503, nothing searched
    log = auditor.log
    rows = await auditor.call(lambda: disclosure_report(log, pseudonyms))
    if fmt == "csv":
        return web.Response(
            text=report_csv(rows, newline="\r\n"),
            content_type="text/csv",
            charset="utf-8",
            headers={
                "Content-Disposition": 'attachment; filename="disclosures.csv"',
                "Cache-Control": "no-store",
                "Cairn-Audit-Event": str(event.event_id),
            },
        )
    found_entries = await auditor.call(log.query, Query(subjects=tuple(pseudonyms)))
    return web.json_response(
        {
            "searched": {
                "identifiers": [k.value for k in event.identifiers],
                "pseudonyms": list(event.subjects),
                "officer": officer,
                "reason": event.ig_reason,
                "audit_event": str(event.event_id),
            },
            "entries": [
                {"index": e.index, "offset": e.offset, "event": json.loads(e.data)}
                for e in found_entries
            ],
            "disclosures": [vars(row) for row in rows],
        },
        headers={"Cache-Control": "no-store"},
    )


# --- HTTP: the C2SP tlog-tiles layout (public but for entry bundles) ------------------------


async def log_checkpoint(request: web.Request) -> web.Response:
    """tlog-tiles ``<prefix>/checkpoint``: the latest signed checkpoint with the witnesses'
    cosignatures collected so far (C2SP tlog-cosignature: the same text, more signature
    lines; a client ignores the lines of keys it does not know), never cached long."""
    auditor = request.app[AUDITOR]
    note = await auditor.call(auditor.log.published_checkpoint)
    if note is None:
        raise web.HTTPNotFound(text="no checkpoint has been signed yet")
    return web.Response(
        body=note, content_type="text/plain", charset="utf-8", headers={"Cache-Control": "no-cache"}
    )


async def tile(request: web.Request) -> web.Response:
    """A hash tile (public) or an entry bundle (the auditor's certificate only), cut at the
    latest checkpoint's size so every tile served matches a signed tree head."""
    coord = parse_tile_path("tile/" + request.match_info["tail"])
    if coord.level is None:
        _require_auditor(request)
    auditor = request.app[AUDITOR]

    def build() -> bytes:
        note = auditor.log.latest_checkpoint()
        if note is None:
            raise TileNotFound("no checkpoint has been signed yet")
        size = checkpoint_size(note)
        if coord.level is not None:
            return hash_tile(auditor.log.tree, size, coord)
        return encode_bundle(auditor.log.entry(i).data for i in bundle_range(size, coord))

    try:
        body = await auditor.call(build)
    except TileNotFound as exc:
        raise web.HTTPNotFound(text=str(exc)) from None
    except EntryTooLarge as exc:  # the log's fault, not the client's: that bundle cannot exist
        raise web.HTTPNotFound(text=str(exc)) from None
    return web.Response(
        body=body,
        content_type="application/octet-stream",
        headers={"Cache-Control": cache_control(coord)},
    )


async def verifier_key(request: web.Request) -> web.Response:
    """The checkpoint verifier keys (C2SP signed-note ``name+hash+base64``), one a line."""
    verifiers = _verifiers(request.app[AUDITOR])
    if not verifiers:
        raise web.HTTPNotFound(text="the registry lists no auditor signing key")
    text = "".join(v.vkey() + "\n" for v in verifiers)
    return web.Response(text=text, content_type="text/plain", headers={"Cache-Control": "no-cache"})


async def jwks(request: web.Request) -> web.Response:
    """The verified registry's public keys as a JWK Set (RFC 7517 §5, ``keys.jwks``), revoked
    ones left out, as ``application/jwk-set+json`` (RFC 7517 §8.5.1): public keys and member
    ids only, so any party (an adapter, a court checking an evidence pack) may fetch it."""
    document = jwk_set(request.app[AUDITOR].trust.registry())  # RegistryUntrusted: a 503
    return web.Response(
        text=json.dumps(document),
        content_type=JWK_SET_MEDIA_TYPE,
        headers={"Cache-Control": "no-cache"},
    )


async def audit_status(request: web.Request) -> web.Response:
    """The auditor's own figures (``Auditor.status``): what the broker's health and
    ``/metrics`` show of it, and what Prometheus or an operator may read directly."""
    auditor = request.app[AUDITOR]
    document = await auditor.call(auditor.status)
    return web.json_response(document, headers={"Cache-Control": "no-cache"})


async def audit_metrics(request: web.Request) -> web.Response:
    """The same figures as a Prometheus text exposition, under the names the broker's
    ``/metrics`` gives them (``cairn_auditor_lag``, ``cairn_auditor_checkpoint_age_seconds``,
    the witness gauges), so Prometheus may scrape the auditor directly."""
    auditor = request.app[AUDITOR]
    document = await auditor.call(auditor.status)
    body = auditor_exposition(status_answer(document, document["checkpoint"]["size"]))
    return web.Response(
        body=body, headers={"Content-Type": METRICS_CONTENT_TYPE, "Cache-Control": "no-cache"}
    )


_PUBLIC: Final = frozenset({log_checkpoint, tile, verifier_key, jwks, audit_status, audit_metrics})


# --- HTTP: the IG view --------------------------------------------------------------


def _verifiers(auditor: Auditor) -> list[NoteVerifier]:
    """The auditor's signing keys from the verified registry, retired ones included."""
    member = auditor.trust.registry().member(AUDITOR_ID)
    found = []
    for k in member.keys if member is not None else ():
        public = k.jwk.public_key()
        usable = k.use is KeyUse.SIGNING and k.status is not KeyStatus.REVOKED
        if usable and isinstance(public, Ed25519PublicKey):
            found.append(NoteVerifier(auditor.origin, public))
    return found


async def ig_page(_request: web.Request) -> web.Response:
    return static_file("ig.html", "text/html")


async def ig_verify(request: web.Request) -> web.Response:
    """Verify the log's files now, on the log's own thread so no append runs meanwhile."""
    auditor = request.app[AUDITOR]
    verifiers = _verifiers(auditor)
    report = await auditor.call(lambda: verify(auditor.directory, verifiers, origin=auditor.origin))
    return json_page(
        {
            "ok": report.ok,
            "entries": report.entries,
            "checkpoints": report.checkpoints,
            "verified_size": report.verified_size,
            "unattested": report.unattested,
            "root": report.root.hex(),
            "problems": [str(p) for p in report.problems[:50]],
            "verifiers": [v.vkey() for v in verifiers],
        }
    )


def add_ig_routes(app: web.Application, auditor: Auditor) -> None:
    """Mount the IG view on the auditor's ``app``, behind its auditor-only middleware."""
    if AUDITOR not in app:
        app[AUDITOR] = auditor
    app.router.add_get("/ui/ig", ig_page)
    app.router.add_post("/ui/ig/api/verify", ig_verify)
    app.router.add_get("/ui/static/{name}", _IG_STATIC)


_IG_FILES: Final = {"ig.js": "text/javascript", "style.css": "text/css"}
_IG_STATIC: Final = static_route(_IG_FILES)
# The IG view's handlers: the auditor's certificate or an IG officer's (``_require_ig``).
_IG: Final = frozenset({ig_page, ig_verify, _IG_STATIC, checkpoint, overrides, subject})


def auditor_app(auditor: Auditor, *, dashboard: bool = False) -> web.Application:
    """The audit API; with ``dashboard``, also the IG view at /ui/ig (broker.web.dashboard)."""
    app = web.Application(middlewares=[problems_middleware, auditor_only])
    app[AUDITOR] = auditor
    app.router.add_get("/v1/audit/checkpoint", checkpoint)
    app.router.add_get("/v1/audit/entries", entries)
    app.router.add_get("/v1/audit/overrides", overrides)
    app.router.add_get("/v1/audit/proof/inclusion", inclusion)
    app.router.add_get("/v1/audit/proof/consistency", consistency)
    app.router.add_post("/v1/audit/subject", subject)
    app.router.add_get("/v1/audit/log/checkpoint", log_checkpoint)
    app.router.add_get("/v1/audit/log/tile/{tail:.+}", tile)
    app.router.add_get("/v1/audit/verifier-key", verifier_key)
    app.router.add_get("/v1/audit/jwks", jwks)
    app.router.add_get("/v1/audit/status", audit_status)
    app.router.add_get("/metrics", audit_metrics)
    app.router.add_get("/openapi.json", openapi_route("broker.audit"))  # auditor's cert only
    if dashboard:
        add_ig_routes(app, auditor)
    return app
