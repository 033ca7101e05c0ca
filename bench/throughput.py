"""Throughput of the real broker, end to end, beside a bare aiohttp + aiokafka baseline.

One run, one process, one event loop. Each path gets its own topics, a warm-up, then N referrals
posted over HTTP(S) on 127.0.0.1 at a fixed concurrency; a referral counts as delivered when every
recipient's consumer has handed it to its handler, and its latency runs from the start of its POST
until then. The paths, in the order they run:

- ``baseline-idem``: a bare aiohttp handler over plain HTTP reads the JSON body and does one
  idempotent ``acks=all`` ``send_and_wait`` per recipient (concurrently, no transaction), then
  answers 202.
- ``baseline-txn``: the same handler, but both records go in one Kafka transaction, one
  transaction at a time per producer, exactly as ``KafkaTransport`` publishes.
- ``cairn``: ``broker.web.app.create_app`` with ``KafkaTransport`` over mutual TLS on a real TCP
  socket, with a throwaway federation's keys made for the run in a temporary folder; each sender
  submits compact JWS through ``adapters.client.ReferralClient``; recipients read with
  ``adapters.inbox.Inbox``, which decrypts each JWE and verifies the broker's JWS.

Baseline records have the same key, header names and value size as the broker's sealed records,
and their consumers mirror ``Inbox.drain`` (read_committed, consumer group, one commit per
batch), so the ratio is the cost of what Cairn adds: mutual TLS, verifying the sender's JWS,
validation, policy, the replay check, signing and sealing (JWS inside JWE) per recipient, and
opening and verifying in the inbox. ``--recipient plain`` reads every path with a bare
read_committed consumer instead (no group, no commits, no opening), which isolates the sending
side. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import json
import logging
import math
import os
import re
import resource
import secrets
import ssl
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.protocol.admin import DeleteGroupsRequest

from adapters.agency import opener_for
from adapters.client import ReferralClient, SubmissionRefused
from adapters.inbox import Delivery, Inbox
from broker.config import Settings
from broker.envelope import CONTENT_TYPE, seal
from broker.federation import load_federation
from broker.kafka.topics import TopicSpec, delivery_topic, federation_topics
from broker.kafka.transport import KafkaTransport, create_topics, kafka_options
from broker.logs import configure_logging
from broker.policy.agreements import AGREEMENTS_DIR, load_agreements
from broker.policy.decide import decide
from broker.replay import ReplayStore
from broker.trust import TrustStore
from broker.web.app import JOSE, create_app
from keys import (
    BROKER_ID,
    FileStore,
    client_context,
    init_federation,
    server_context,
    sign_referral,
)
from schemas.errors import CairnError, TransportError
from schemas.federation import Federation
from schemas.receipt import RecipientStatus
from schemas.referral import Referral

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost"})
RSS_SAMPLE_INTERVAL_S = 0.005  # seconds between VmRSS samples
CLEANUP_TIMEOUT_S = 30.0  # seconds for deleting topics and stopping clients after the run
CONNECT_TIMEOUT_S = 10.0  # seconds for any Kafka client to start
REQUEST_TIMEOUT_S = 60.0  # seconds for one submission, connection included
# Pre-signing: bodies are signed before the clock starts only if the phase, estimated from the
# warm-up's rate, fits PRESIGN_SAFETY times over in the broker's max_signature_age_s, less the
# margin. The margin also covers iat being whole seconds and a request waiting in the event loop
# between the age check here and the broker's own.
PRESIGN_SAFETY = 2.0  # times the estimated phase duration
SIGNATURE_MARGIN_S = 20.0  # seconds kept in hand below max_signature_age_s


class BenchError(Exception):
    """The benchmark could not produce a meaningful figure; the message says why."""


# --- measuring ----------------------------------------------------------------------------------


class RssProbe:
    """Peak resident set size of this process during one phase.

    Where the kernel allows it (Linux >= 4.0), the high-water mark VmHWM is reset at the start by
    writing 5 to /proc/self/clear_refs and read at the end, which is exact. A thread also samples
    VmRSS every few milliseconds, as the fallback where the reset is refused.
    """

    def __init__(self) -> None:
        self.start_mib = 0.0
        self.peak_mib = 0.0
        self.method = "VmRSS sampled every 5 ms"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="rss-probe", daemon=True)
        self._hwm_reset = False

    def __enter__(self) -> RssProbe:
        self.start_mib = self.peak_mib = _status_mib("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
                f.write("5")
            self._hwm_reset = True
            self.method = "VmHWM reset per phase (/proc/self/clear_refs)"
        except OSError:
            self._hwm_reset = False
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)
        if self._hwm_reset:
            self.peak_mib = max(self.peak_mib, _status_mib("VmHWM"))

    def _sample(self) -> None:
        # Bounded by the phase: __exit__ sets the event.
        while not self._stop.wait(RSS_SAMPLE_INTERVAL_S):
            self.peak_mib = max(self.peak_mib, _status_mib("VmRSS"))


def _status_mib(field_name: str) -> float:
    """A memory field of /proc/self/status in MiB; the lifetime ru_maxrss where there is none."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            match = re.search(rf"^{field_name}:\s+(\d+) kB", f.read(), re.MULTILINE)
        if match:
            return int(match.group(1)) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


@dataclass
class Tracker:
    """Which referrals of a phase are still on their way to which recipients."""

    waiting: dict[str, set[str]]
    started: dict[str, float] = field(default_factory=dict)
    accepted: dict[str, float] = field(default_factory=dict)  # seconds from POST start to 202
    delivered: dict[str, float] = field(default_factory=dict)  # perf_counter when all had it
    failures: dict[str, str] = field(default_factory=dict)
    complete: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        if not self.waiting:
            self.complete.set()

    def seen(self, referral_id: str, recipient: str, at: float) -> None:
        remaining = self.waiting.get(referral_id)
        if remaining is None or recipient not in remaining:
            return  # another phase's record, or a redelivery
        remaining.discard(recipient)
        if not remaining:
            del self.waiting[referral_id]
            self.delivered[referral_id] = at
            if not self.waiting:
                self.complete.set()

    def failed(self, referral_id: str, reason: str) -> None:
        self.failures[referral_id] = reason
        self.waiting.pop(referral_id, None)
        if not self.waiting:
            self.complete.set()


@dataclass
class Sink:
    """What every consumer reports to; the current phase swaps its tracker in."""

    tracker: Tracker = field(default_factory=lambda: Tracker({}))

    def seen(self, referral_id: str, recipient: str) -> None:
        self.tracker.seen(referral_id, recipient, time.perf_counter())


@dataclass
class Job:
    referral_id: str
    sender: str
    recipients: tuple[str, ...]
    payload: bytes  # the referral JSON: what the baselines post, and what a sender signs
    signed: bytes | None = None  # its compact JWS, when signed before the clock starts
    signed_at: float = math.nan  # time.time() just before it was signed


@dataclass
class Result:
    path: str
    note: str
    count: int
    delivered: int
    failures: dict[str, int]
    elapsed_s: float
    e2e_ms: list[float]
    accept_ms: list[float]
    rss_start_mib: float
    rss_peak_mib: float
    rss_method: str
    signing: str = ""  # how the sender signed, on the Cairn path
    signed_in_loop: bool = False  # whether the sender's signing was inside the measured loop

    @property
    def rate(self) -> float:
        return self.delivered / self.elapsed_s if self.elapsed_s > 0 else math.nan

    def summary(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "note": self.note,
            "count": self.count,
            "delivered": self.delivered,
            "failures": self.failures,
            "elapsed_s": round(self.elapsed_s, 3),
            "referrals_per_s": round(self.rate, 1),
            "e2e_ms": {f"p{p}": round(percentile(self.e2e_ms, p), 2) for p in (50, 95, 99)},
            "accept_ms": {f"p{p}": round(percentile(self.accept_ms, p), 2) for p in (50, 95, 99)},
            "rss_peak_mib": round(self.rss_peak_mib, 1),
            "rss_growth_mib": round(self.rss_peak_mib - self.rss_start_mib, 1),
            "rss_method": self.rss_method,
            "signing": self.signing,
            "signed_in_loop": self.signed_in_loop,
        }


# --- driving ------------------------------------------------------------------------------------


def fresh_referral(sample: dict[str, Any]) -> Referral:
    """The sample with a new referral id and creation time, so the broker sees a new referral
    rather than a replay of the last one."""
    header = {
        **sample["header"],
        "referral_id": str(uuid.uuid4()),
        "created_at": datetime.now(UTC).isoformat(),
    }
    return Referral.model_validate({**sample, "header": header})


def make_jobs(sample: dict[str, Any], count: int) -> list[Job]:
    """``count`` fresh copies of the sample, serialised before the clock starts."""
    jobs = []
    for _ in range(count):
        referral = fresh_referral(sample)
        jobs.append(
            Job(
                str(referral.header.referral_id),
                referral.header.sender_agency,
                tuple(referral.header.recipients),
                referral.model_dump_json().encode(),
            )
        )
    return jobs


class Poster(Protocol):
    """How one path's client submits a job."""

    def prepare(self, jobs: Sequence[Job], *, expected_s: float) -> None:
        """Called before the clock starts; ``expected_s`` estimates how long the phase takes."""

    async def post(self, job: Job) -> str | None:
        """Submit ``job``; None once it is accepted, else why it was not."""

    def signing(self) -> tuple[str, bool]:
        """How the last prepared phase was signed ('' if not at all), and whether any of its
        signing happened inside the measured loop."""


async def run_phase(
    poster: Poster,
    jobs: Sequence[Job],
    sink: Sink,
    *,
    concurrency: int,
    deadline: float,
) -> tuple[Tracker, float, float]:
    """POST every job, wait until each is delivered or failed; return (tracker, start, end)."""
    tracker = Tracker({j.referral_id: set(j.recipients) for j in jobs})
    sink.tracker = tracker
    queue = iter(jobs)  # shared by the workers: each job is taken once

    async def worker() -> None:
        for job in queue:
            tracker.started[job.referral_id] = began = time.perf_counter()
            failure = await poster.post(job)
            if failure is None:
                tracker.accepted[job.referral_id] = time.perf_counter() - began
            else:
                tracker.failed(job.referral_id, failure)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(jobs)))))
    remaining = deadline - time.monotonic()
    try:
        await asyncio.wait_for(tracker.complete.wait(), max(0.0, remaining))
    except TimeoutError:
        raise BenchError(
            f"{len(tracker.waiting)} of {len(jobs)} referrals were accepted but not delivered "
            "before the overall timeout; raise --timeout or lower --count"
        ) from None
    end = max(tracker.delivered.values(), default=time.perf_counter())
    return tracker, start, end


async def measure(
    sink: Sink,
    *,
    path: str,
    note: str,
    poster: Poster,
    sample: dict[str, Any],
    args: argparse.Namespace,
    deadline: float,
) -> Result:
    """Warm up, then measure one path."""
    expected_s = math.inf  # no warm-up, no estimate
    if args.warmup:
        warm_jobs = make_jobs(sample, args.warmup)
        poster.prepare(warm_jobs, expected_s=math.inf)
        warm, warm_start, warm_end = await run_phase(
            poster, warm_jobs, sink, concurrency=args.concurrency, deadline=deadline
        )
        if warm.failures:
            raise BenchError(f"{path}: warm-up failed: {sorted(set(warm.failures.values()))}")
        if warm.delivered and warm_end > warm_start:
            # The warm-up includes connecting and Kafka's first transactions, so this
            # overestimates the phase: on the safe side for pre-signing.
            expected_s = args.count * (warm_end - warm_start) / len(warm.delivered)
    jobs = make_jobs(sample, args.count)
    poster.prepare(jobs, expected_s=expected_s)
    gc.collect()
    with RssProbe() as rss:
        tracker, start, end = await run_phase(
            poster, jobs, sink, concurrency=args.concurrency, deadline=deadline
        )
    signing, signed_in_loop = poster.signing()
    failures: dict[str, int] = {}
    for reason in tracker.failures.values():
        failures[reason] = failures.get(reason, 0) + 1
    return Result(
        path=path,
        note=note,
        signing=signing,
        signed_in_loop=signed_in_loop,
        count=len(jobs),
        delivered=len(tracker.delivered),
        failures=failures,
        elapsed_s=end - start,
        e2e_ms=[(t - tracker.started[rid]) * 1000 for rid, t in tracker.delivered.items()],
        accept_ms=[s * 1000 for s in tracker.accepted.values()],
        rss_start_mib=rss.start_mib,
        rss_peak_mib=rss.peak_mib,
        rss_method=rss.method,
    )


# --- the paths ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchKeys:
    """A throwaway federation's keys, PKI and registry, in a folder that lives for one run."""

    folder: Path
    store: FileStore
    passphrase: bytes

    def trust(self, member: str) -> TrustStore:
        return TrustStore(self.store, self.passphrase, member_id=member, clock=_utcnow)


def _utcnow() -> datetime:
    return datetime.now(UTC)


@contextlib.contextmanager
def throwaway_keys(federation: Federation) -> Iterator[BenchKeys]:
    """Every key of ``federation`` made afresh in a temporary folder, deleted afterwards."""
    with tempfile.TemporaryDirectory(prefix="cairn-bench-") as folder:
        root = Path(folder)
        store = FileStore(root / "keys")
        passphrase = secrets.token_urlsafe(32).encode()  # random: it leaves with the folder
        init_federation(store, federation, passphrase, now=_utcnow())
        yield BenchKeys(root, store, passphrase)


async def serve_local(
    app: web.Application, ssl_context: ssl.SSLContext | None = None
) -> tuple[web.AppRunner, str]:
    """Start ``app`` on a free port on 127.0.0.1; return the runner and its base URL."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    host, port = runner.addresses[0][:2]
    return runner, f"{'https' if ssl_context else 'http'}://{host}:{port}"


@dataclass
class PlainPoster:
    """The baselines' client: the referral JSON as it is, over plain HTTP."""

    session: aiohttp.ClientSession
    url: str

    def prepare(self, jobs: Sequence[Job], *, expected_s: float) -> None:
        """Nothing to do: the JSON is the body."""

    async def post(self, job: Job) -> str | None:
        try:
            async with self.session.post(
                self.url, data=job.payload, headers={"Content-Type": "application/json"}
            ) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            return type(exc).__name__
        return None if status == 202 else f"HTTP {status}"

    def signing(self) -> tuple[str, bool]:
        return "", False


class SigningPoster:
    """The Cairn path's client: one ``ReferralClient`` per sender, signing with its key and
    connecting with its TLS client certificate.

    ``auto`` signs every body before the clock starts when the phase is expected to end well
    within the broker's ``max_signature_age_s``; a body that nevertheless gets too old before
    its turn is signed again inside the loop, and counted. ``inside`` always signs inside the
    loop, as ``ReferralClient.submit`` does.
    """

    def __init__(self, clients: dict[str, ReferralClient], *, max_age_s: float, mode: str) -> None:
        self.clients = clients
        self.max_age_s = max_age_s
        self.mode = mode
        self.expected_s = math.inf
        self.presigned = False
        self.resigned = 0

    def prepare(self, jobs: Sequence[Job], *, expected_s: float) -> None:
        self.expected_s = expected_s
        self.resigned = 0
        self.presigned = (
            self.mode == "auto"
            and PRESIGN_SAFETY * expected_s + SIGNATURE_MARGIN_S <= self.max_age_s
        )
        if self.presigned:
            for job in jobs:
                job.signed_at = time.time()
                job.signed = self.clients[job.sender].sign(job.payload)

    def _fresh(self, job: Job) -> bool:
        """Whether the broker will still take ``job``'s pre-made signature (iat is time.time()
        at signing or later, floored to the second: hence the margin)."""
        return time.time() - job.signed_at + SIGNATURE_MARGIN_S <= self.max_age_s

    async def post(self, job: Job) -> str | None:
        client = self.clients[job.sender]
        try:
            if job.signed is not None and self._fresh(job):
                receipt = await client.post_raw(job.signed, content_type=JOSE)
            else:
                if job.signed is not None:
                    self.resigned += 1
                receipt = await client.submit(job.payload)  # signs now
        except SubmissionRefused as exc:
            return f"HTTP {exc.status} {exc.problem.get('title', '')}".rstrip()
        except TransportError as exc:
            return f"TransportError: {exc}"
        refused = [r.agency for r in receipt.recipients if r.status is not RecipientStatus.QUEUED]
        return f"not queued for {', '.join(refused)}" if refused else None

    def signing(self) -> tuple[str, bool]:
        inside = "signed inside the loop by ReferralClient.submit"
        if self.mode == "inside":
            return f"{inside} (--sign inside)", True
        if not self.presigned:
            if math.isinf(self.expected_s):
                return f"{inside} (no warm-up to estimate the phase from)", True
            return (
                f"{inside}: the phase, estimated at {self.expected_s:.0f} s, could outlive "
                f"max_signature_age_s {self.max_age_s:g}",
                True,
            )
        note = (
            f"pre-signed before the clock (phase estimated at {self.expected_s:.0f} s, "
            f"max_signature_age_s {self.max_age_s:g})"
        )
        if self.resigned:
            note += f"; {self.resigned} signed again inside the loop as their signature aged"
        return note, self.resigned > 0


@contextlib.asynccontextmanager
async def cairn_path(
    settings: Settings,
    federation: Federation,
    keys: BenchKeys,
    senders: Sequence[str],
    args: argparse.Namespace,
) -> AsyncIterator[SigningPoster]:
    """The real broker app with the real Kafka transport over mutual TLS, as ``cairn serve``
    builds it, and a signing client per sender."""
    replay = ReplayStore(None if args.replay == "memory" else keys.folder / "replay.sqlite")
    app = create_app(
        settings, federation, KafkaTransport(settings), keys.trust(BROKER_ID), replay=replay
    )
    runner, base_url = await serve_local(app, server_context(keys.store, keys.passphrase))
    try:
        async with contextlib.AsyncExitStack() as stack:
            clients = {
                sender: await stack.enter_async_context(
                    ReferralClient(
                        base_url,
                        ssl_context=client_context(keys.store, sender, keys.passphrase),
                        signing_key=keys.trust(sender).signing_key(),
                        timeout_s=REQUEST_TIMEOUT_S,
                    )
                )
                for sender in senders
            }
            yield SigningPoster(clients, max_age_s=settings.max_signature_age_s, mode=args.sign)
    finally:
        await runner.cleanup()  # drains, then the cleanup context stops the transport


@contextlib.asynccontextmanager
async def baseline_path(
    settings: Settings,
    prefix: str,
    padding: dict[str, int],
    *,
    transactional: bool,
    concurrency: int,
) -> AsyncIterator[PlainPoster]:
    """A bare aiohttp handler that writes one record per recipient and answers 202 after acks."""
    producer = AIOKafkaProducer(
        **kafka_options(settings),
        acks="all",
        enable_idempotence=True,
        transactional_id=f"{prefix}-producer" if transactional else None,
    )
    await asyncio.wait_for(producer.start(), CONNECT_TIMEOUT_S)
    lock = asyncio.Lock()  # one transaction at a time per transactional id, as KafkaTransport

    async def submit(request: web.Request) -> web.Response:
        body = await request.read()
        header = json.loads(body)["header"]
        referral_id = header["referral_id"]
        request_id = str(uuid.uuid4())
        records = [
            (
                delivery_topic(prefix, r),
                body + b" " * padding.get(r, 0),  # the size of the broker's sealed record
                [
                    ("cairn-referral-id", referral_id.encode()),
                    ("cairn-sender", header["sender_agency"].encode()),
                    ("cairn-recipient", r.encode()),
                    ("cairn-purpose", header["purpose"].encode()),
                    ("cairn-schema-version", header["schema_version"].encode()),
                    ("cairn-request-id", request_id.encode()),
                    ("content-type", CONTENT_TYPE),
                ],
            )
            for r in header["recipients"]
        ]
        key = referral_id.encode()
        if transactional:
            async with lock, producer.transaction():
                for topic, value, headers in records:
                    await producer.send(topic, value, key=key, headers=headers)
        else:
            await asyncio.gather(
                *(
                    producer.send_and_wait(topic, value, key=key, headers=headers)
                    for topic, value, headers in records
                )
            )
        return web.json_response({"referral_id": referral_id, "status": "queued"}, status=202)

    app = web.Application(client_max_size=settings.max_body_bytes)
    app.router.add_post("/v1/referrals", submit)
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    try:
        runner, base_url = await serve_local(app)
        try:
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
                yield PlainPoster(session, f"{base_url}/v1/referrals")
        finally:
            await runner.cleanup()
    finally:
        await asyncio.wait_for(producer.stop(), CLEANUP_TIMEOUT_S)


async def inbox_consumer(
    settings: Settings,
    prefix: str,
    agency: str,
    sink: Sink,
    deadline: float,
    *,
    keys: BenchKeys,
) -> None:
    """The recipient side of the Cairn path: the agency adapter's own inbox, opening each
    record with the agency's own keys."""
    trust = keys.trust(agency)
    trust.decryption_keys()  # decrypt the private keys now, not in the first measured record
    opener = opener_for(trust, agency)

    def dead_lettered(reason: str) -> None:
        # Inbox dead-letters a record it cannot open and goes on, leaving this run to wait
        # for the timeout; a benchmark stops at once instead.
        raise BenchError(f"{agency}'s inbox could not open a record ({reason})")

    async with Inbox(
        kafka_options(settings),
        agency=agency,
        topic=delivery_topic(prefix, agency),
        dlq_topic=f"{prefix}.dlq",
        open_value=opener,
        group_id=f"{prefix}-inbox-{agency}",
        connect_timeout_s=CONNECT_TIMEOUT_S,
        on_dead_letter=dead_lettered,
    ) as inbox:

        async def handle(delivery: Delivery) -> None:
            sink.seen(str(delivery.disclosure.referral_id), agency)

        while time.monotonic() < deadline:
            await inbox.drain(
                handle, idle_timeout_s=1.0, total_timeout_s=max(0.1, deadline - time.monotonic())
            )


async def plain_consumer(
    settings: Settings,
    prefix: str,
    agency: str,
    sink: Sink,
    deadline: float,
    *,
    commit: bool = True,
) -> None:
    """The baselines' recipient: ``Inbox.drain`` without opening the record (read_committed,
    a consumer group, one commit per batch). Without ``commit`` it is a bare read_committed
    reader: no group, no offset commits."""
    consumer = AIOKafkaConsumer(
        delivery_topic(prefix, agency),
        **kafka_options(settings),
        group_id=f"{prefix}-consumer-{agency}" if commit else None,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await asyncio.wait_for(consumer.start(), CONNECT_TIMEOUT_S)
    try:
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500, max_records=100)
            done: dict[TopicPartition, int] = {}
            for tp, messages in batches.items():
                for msg in messages:
                    sink.seen(msg.key.decode(), agency)
                    done[tp] = msg.offset + 1
            if commit and done:
                await consumer.commit(done)  # one commit per batch, as Inbox.drain
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(consumer.stop(), CLEANUP_TIMEOUT_S)


Consumer = Callable[[Settings, str, str, Sink, float], Coroutine[Any, Any, None]]


async def with_consumers(
    consumer: Consumer,
    settings: Settings,
    prefix: str,
    recipients: Sequence[str],
    deadline: float,
    body: Callable[[Sink], Awaitable[Result]],
) -> Result:
    """Run ``body`` while one consumer per recipient reports to its sink; a failed consumer
    fails the phase rather than leaving it waiting for the timeout."""
    sink = Sink()
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(consumer(settings, prefix, r, sink, deadline)) for r in recipients
            ]
            try:
                return await body(sink)
            finally:
                for task in tasks:
                    task.cancel()
    except BaseExceptionGroup as errors:
        first: BaseException = errors
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        if isinstance(first, BenchError):
            raise first from None
        raise BenchError(f"{type(first).__name__}: {first}") from first


# --- setup, report, main ------------------------------------------------------------------------


def check_local(bootstrap: str) -> None:
    for server in bootstrap.split(","):
        host = server.strip().rsplit(":", 1)[0].strip("[]")
        if host not in LOCAL_HOSTS:
            raise BenchError(
                f"--bootstrap {server!r} is not on 127.0.0.1; this benchmark talks to a local "
                "Kafka only (start it with deploy/kafka/kafka-local start)"
            )


@dataclass(frozen=True)
class Sizes:
    """What one referral weighs on each path, in bytes."""

    json: int  # the referral JSON, as the baselines post it
    jws: int  # the same signed as a compact JWS, as Cairn's senders post it
    records: dict[str, int]  # the broker's sealed record (JWE) per recipient

    def record_range(self) -> str:
        low, high = min(self.records.values(), default=0), max(self.records.values(), default=0)
        return f"{low}" if low == high else f"{low}-{high}"

    def padding(self) -> dict[str, int]:
        """Bytes a baseline adds to the JSON so that its record weighs what the broker's does."""
        return {r: max(0, n - self.json) for r, n in self.records.items()}


def message_sizes(
    sample: dict[str, Any], federation: Federation, settings: Settings, keys: BenchKeys
) -> Sizes:
    """Sign one fresh copy as its sender would and seal it as the broker would."""
    referral = fresh_referral(sample)
    payload = referral.model_dump_json().encode()
    now = _utcnow()
    signed = sign_referral(
        payload, keys.trust(referral.header.sender_agency).signing_key(), issued_at=now
    )
    broker = keys.trust(BROKER_ID)
    records = {}
    decisions = decide(
        referral,
        federation,
        agreements=load_agreements(settings.federation_dir / AGREEMENTS_DIR),
        now=now,
        max_recipients=settings.max_recipients,
    )
    for decision in (d for d in decisions if d.allowed):
        record = seal(
            referral,
            decision,
            topic_prefix=settings.topic_prefix,
            request_id=str(uuid.uuid4()),
            broker_key=broker.signing_key(),
            registry=broker.registry(),
            now=now,
        )
        records[decision.recipient] = len(record.value)
    return Sizes(len(payload), len(signed), records)


async def wait_for_leaders(
    settings: Settings, specs: Sequence[TopicSpec], timeout_s: float
) -> None:
    """Until every partition of the new topics answers a ListOffsets request from its leader,
    so the warm-up is not spent (and the terminal not filled) on NotLeaderForPartition retries.
    aiokafka retries the request itself and logs each retry, hence the muted logger."""
    partitions = [TopicPartition(s.name, p) for s in specs for p in range(s.partitions)]
    consumer = AIOKafkaConsumer(**kafka_options(settings))  # no group, no subscription
    await asyncio.wait_for(consumer.start(), CONNECT_TIMEOUT_S)
    fetcher_log = logging.getLogger("aiokafka.consumer.fetcher")
    level = fetcher_log.level
    fetcher_log.setLevel(logging.CRITICAL)
    try:
        await asyncio.wait_for(consumer.end_offsets(partitions), timeout_s)
    except (KafkaError, TimeoutError) as exc:
        raise BenchError(
            f"the new topics had no working leaders after {timeout_s:g} s "
            f"({type(exc).__name__}); is Kafka healthy?"
        ) from exc
    finally:
        fetcher_log.setLevel(level)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(consumer.stop(), CLEANUP_TIMEOUT_S)


async def delete_leftovers(
    settings: Settings, topics: Sequence[str], groups: Sequence[str]
) -> None:
    """Best effort: a failure here only leaves empty topics or groups behind."""
    admin = AIOKafkaAdminClient(**kafka_options(settings))
    try:
        await asyncio.wait_for(admin.start(), CONNECT_TIMEOUT_S)
        await asyncio.wait_for(admin.delete_topics(list(topics)), CLEANUP_TIMEOUT_S)
        # aiokafka's admin client has no delete_consumer_groups; send DeleteGroups to each
        # group's coordinator as its own methods send requests. Unknown groups are ignored.
        by_coordinator: dict[int, list[str]] = {}
        for group in groups:
            node = await asyncio.wait_for(admin.find_coordinator(group), CONNECT_TIMEOUT_S)
            by_coordinator.setdefault(node, []).append(group)
        for node, names in by_coordinator.items():
            await asyncio.wait_for(
                admin._send_request(DeleteGroupsRequest(names), node), CLEANUP_TIMEOUT_S
            )
    except Exception as exc:  # cleanup must not hide the results
        print(f"note: could not delete the run's topics or groups: {exc!r}", file=sys.stderr)
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


async def run(args: argparse.Namespace) -> tuple[list[Result], Sizes]:
    run_id = secrets.token_hex(4)
    prefix = f"bench{run_id}"
    settings = Settings(
        kafka_bootstrap_servers=args.bootstrap,
        topic_prefix=prefix,
        transactional_id=f"{prefix}-broker",
        http_host="127.0.0.1",
        http_port=0,
        log_level="warning",
    )
    federation = load_federation(settings.federation_dir)
    sample = json.loads(args.sample.read_text(encoding="utf-8"))
    with throwaway_keys(federation) as keys:
        sizes = message_sizes(sample, federation, settings, keys)
        results = await run_paths(args, settings, federation, keys, sample, sizes)
    return results, sizes


async def run_paths(
    args: argparse.Namespace,
    settings: Settings,
    federation: Federation,
    keys: BenchKeys,
    sample: dict[str, Any],
    sizes: Sizes,
) -> list[Result]:
    prefix = settings.topic_prefix
    recipients = tuple(sample["header"]["recipients"])
    senders = (sample["header"]["sender_agency"],)
    base_idem, base_txn = f"{prefix}-idem", f"{prefix}-txn"
    specs = list(federation_topics(federation, prefix))
    for base in (base_idem, base_txn):
        specs += [TopicSpec(delivery_topic(base, r), 3, "baseline") for r in recipients]
    results: list[Result] = []
    deadline = time.monotonic() + args.timeout
    created = False
    try:
        async with asyncio.timeout(args.timeout):
            await create_topics(settings, specs)
            created = True
            await wait_for_leaders(settings, specs, CONNECT_TIMEOUT_S)
            cairn_note = (
                f"broker.web.app over mutual TLS + KafkaTransport (one transaction per referral), "
                f"{args.replay} replay store"
            )
            if args.recipient == "inbox":
                base_consumer: Consumer = plain_consumer
                cairn_consumer: Consumer = functools.partial(inbox_consumer, keys=keys)
                cairn_note += ", Inbox (JWE open + JWS verify)"
            else:
                base_consumer = cairn_consumer = functools.partial(plain_consumer, commit=False)
                cairn_note += ", records not opened"
            for base, transactional, note in (
                (
                    base_idem,
                    False,
                    "plain HTTP, aiohttp + idempotent send_and_wait, no transaction",
                ),
                (base_txn, True, "plain HTTP, aiohttp + one Kafka transaction per request"),
            ):
                name = "baseline-txn" if transactional else "baseline-idem"
                if name not in args.paths:
                    continue
                async with baseline_path(
                    settings,
                    base,
                    sizes.padding(),
                    transactional=transactional,
                    concurrency=args.concurrency,
                ) as poster:
                    results.append(
                        await with_consumers(
                            base_consumer,
                            settings,
                            base,
                            recipients,
                            deadline,
                            functools.partial(
                                measure,
                                path=name,
                                note=note,
                                poster=poster,
                                sample=sample,
                                args=args,
                                deadline=deadline,
                            ),
                        )
                    )
            if "cairn" in args.paths:
                async with cairn_path(settings, federation, keys, senders, args) as cairn:
                    results.append(
                        await with_consumers(
                            cairn_consumer,
                            settings,
                            prefix,
                            recipients,
                            deadline,
                            functools.partial(
                                measure,
                                path="cairn",
                                note=cairn_note,
                                poster=cairn,
                                sample=sample,
                                args=args,
                                deadline=deadline,
                            ),
                        )
                    )
    except TimeoutError:
        raise BenchError(
            f"the run did not finish within --timeout {args.timeout:g} s; raise it or lower --count"
        ) from None
    finally:
        if created and not args.keep_topics:
            groups = [
                f"{p}-{kind}-{r}"
                for p, kind in ((prefix, "inbox"), (base_idem, "consumer"), (base_txn, "consumer"))
                for r in recipients
            ]
            await delete_leftovers(settings, [s.name for s in specs], groups)
    return results


def render(results: Sequence[Result], args: argparse.Namespace, sizes: Sizes) -> str:
    columns = (
        f"{'path':<14}{'referrals/s':>12}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
        f"{'202 p50':>9}{'202 p99':>9}{'peak RSS MiB':>14}{'+RSS MiB':>10}"
    )
    lines = [
        f"Cairn throughput: {args.count} referrals per path after {args.warmup} warm-up, "
        f"concurrency {args.concurrency}, {len(sizes.records)} recipients each, "
        f"recipient {args.recipient}, Kafka {args.bootstrap}",
        f"body {sizes.json} B JSON (baselines) / {sizes.jws} B JWS (cairn); records "
        f"{sizes.record_range()} B (the broker's JWE per recipient; baselines padded to it)",
        "latency ms = POST start -> every recipient has consumed it (202 = HTTP answer)",
        columns,
        "-" * len(columns),
    ]
    for r in results:
        lines.append(
            f"{r.path:<14}{r.rate:>12.1f}"
            f"{percentile(r.e2e_ms, 50):>9.1f}{percentile(r.e2e_ms, 95):>9.1f}"
            f"{percentile(r.e2e_ms, 99):>9.1f}"
            f"{percentile(r.accept_ms, 50):>9.1f}{percentile(r.accept_ms, 99):>9.1f}"
            f"{r.rss_peak_mib:>14.1f}{r.rss_peak_mib - r.rss_start_mib:>10.1f}"
        )
    lines.append("")
    cairn = next((r for r in results if r.path == "cairn"), None)
    bases = [r for r in results if r.path != "cairn"]
    if cairn is not None:
        for base in bases:
            lines.append(
                f"ratio cairn/{base.path}: throughput {cairn.rate / base.rate:.2f}x, "
                f"p50 {percentile(cairn.e2e_ms, 50) / percentile(base.e2e_ms, 50):.2f}x, "
                f"p99 {percentile(cairn.e2e_ms, 99) / percentile(base.e2e_ms, 99):.2f}x"
            )
        if bases:
            opened = " + JWE open + JWS verify" if args.recipient == "inbox" else ""
            signed = " + JWS sign (sender, in the loop)" if cairn.signed_in_loop else ""
            lines += [
                f"the ratios include TLS + JWS verify + JWE seal{opened}{signed}, besides "
                "validation, policy and the replay check:",
                "  the baselines do the same Kafka work over plain HTTP with plain JSON, "
                "without TLS, signatures or encryption",
            ]
    for r in results:
        lines.append(f"{r.path}: {r.note}")
        if r.signing:
            lines.append(f"{r.path} signing: {r.signing}")
    if results:
        lines.append(f"peak RSS: {results[0].rss_method}; +RSS = peak minus RSS at phase start")
    for r in results:
        if percentile(r.e2e_ms, 50) > 3 * percentile(r.accept_ms, 50) + 50:
            lines.append(
                f"note {r.path}: its recipients fell behind the sender (e2e p50 far above 202 "
                "p50), so its latency is queueing and grows with -n; --recipient plain isolates "
                "the sending side"
            )
        if r.failures:
            lines.append(f"WARNING {r.path}: {r.count - r.delivered} not delivered: {r.failures}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/throughput.py",
        description=(
            "Send N referrals through HTTP -> broker -> Kafka -> recipient inbox, and the same "
            "number through a bare aiohttp + aiokafka baseline, in one run; print referrals/s, "
            "end-to-end p50/p95/p99 latency and peak RSS for each, and the ratios."
        ),
    )
    parser.add_argument("-n", "--count", type=int, default=2000, help="referrals per path")
    parser.add_argument(
        "--concurrency", type=int, default=32, help="HTTP requests in flight (default 32)"
    )
    parser.add_argument(
        "--warmup", type=int, default=100, help="unmeasured referrals per path first (100)"
    )
    parser.add_argument(
        "--bootstrap",
        default=os.environ.get("CAIRN_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        help="local Kafka, host:port on 127.0.0.1 (default $CAIRN_KAFKA_BOOTSTRAP_SERVERS or "
        "127.0.0.1:9092)",
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds for the whole run (default 600)"
    )
    parser.add_argument(
        "--paths",
        default="baseline-idem,baseline-txn,cairn",
        help="comma-separated subset of baseline-idem,baseline-txn,cairn (default all)",
    )
    parser.add_argument(
        "--sample",
        type=Path,
        default=None,
        help="referral JSON to copy (default deploy/federation/samples/referral-high-risk.json)",
    )
    parser.add_argument(
        "--recipient",
        choices=("inbox", "plain"),
        default="inbox",
        help="inbox (default): Cairn is read by adapters.inbox.Inbox (which opens and verifies "
        "each record) and the baselines by a consumer that, like Inbox, commits once per batch; "
        "plain: every path is read by a bare read_committed consumer without group, commits or "
        "opening, isolating the sending side",
    )
    parser.add_argument(
        "--sign",
        choices=("auto", "inside"),
        default="auto",
        help="auto (default): the cairn path's bodies are signed before the clock starts if "
        "the phase, estimated from the warm-up, ends well within the broker's "
        "max_signature_age_s, else inside the loop; inside: always inside the loop "
        "(ReferralClient.submit), so the sender's signing is measured too",
    )
    parser.add_argument(
        "--replay",
        choices=("memory", "file"),
        default="memory",
        help="the broker's replay store: memory (default, ReplayStore(None)), or file: SQLite "
        "(WAL, synchronous=FULL) in the run's temporary folder, as 'cairn serve' keeps it",
    )
    parser.add_argument(
        "--keep-topics",
        action="store_true",
        help="leave the run's bench<hex>* topics and consumer groups behind",
    )
    parser.add_argument(
        "--json", action="store_true", help="also print the results as one JSON object"
    )
    args = parser.parse_args(argv)
    if args.count < 1 or args.concurrency < 1 or args.warmup < 0 or args.timeout <= 0:
        parser.error("--count and --concurrency must be >= 1, --warmup >= 0, --timeout > 0")
    args.paths = {p.strip() for p in args.paths.split(",") if p.strip()}
    unknown = args.paths - {"baseline-idem", "baseline-txn", "cairn"}
    if unknown or not args.paths:
        parser.error(f"--paths: unknown {sorted(unknown)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(fmt="console", level="warning")
    if args.sample is None:
        args.sample = Settings().federation_dir / "samples" / "referral-high-risk.json"
    try:
        check_local(args.bootstrap)
        results, sizes = asyncio.run(run(args))
    except (BenchError, CairnError, OSError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    print(render(results, args, sizes))
    if args.json:
        print(
            json.dumps(
                {
                    "count": args.count,
                    "warmup": args.warmup,
                    "concurrency": args.concurrency,
                    "recipient": args.recipient,
                    "sign": args.sign,
                    "replay": args.replay,
                    "body_bytes": {"json": sizes.json, "jws": sizes.jws},
                    "record_bytes": sizes.records,
                    "bootstrap": args.bootstrap,
                    "results": [r.summary() for r in results],
                }
            )
        )
    return 0 if all(not r.failures for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
