"""Throughput of the real broker, end to end, beside a bare aiohttp + aiokafka baseline.

One run, one process, one event loop. Each path gets its own topics, a warm-up, then N referrals
posted over HTTP on 127.0.0.1 at a fixed concurrency; a referral counts as delivered when every
recipient's consumer has handed it to its handler, and its latency runs from the start of its POST
until then. The paths, in the order they run:

- ``baseline-idem``: a bare aiohttp handler reads the body and does one idempotent ``acks=all``
  ``send_and_wait`` per recipient (concurrently, no transaction), then answers 202.
- ``baseline-txn``: the same handler, but both records go in one Kafka transaction, one
  transaction at a time per producer, exactly as ``KafkaTransport`` publishes.
- ``cairn``: ``broker.app.create_app`` with ``KafkaTransport`` on a real TCP socket; recipients
  read with ``adapters.inbox.Inbox``.

Baseline records have the same key, header names and value size as the broker's sealed records,
and their consumers mirror ``Inbox.drain`` (read_committed, consumer group, commit after each
record), so the ratio is the cost of what the broker and the inbox add: validation, policy,
sealing, opening. ``--recipient plain`` reads every path with a bare read_committed consumer
instead (no group, no commits), which isolates the sending side. See bench/README.md.
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
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.protocol.admin import DeleteGroupsRequest

from adapters.inbox import Delivery, Inbox
from broker.app import create_app
from broker.config import Settings
from broker.demo import fresh_copy
from broker.envelope import CONTENT_TYPE, seal
from broker.federation import load_federation
from broker.logs import configure_logging
from broker.policy import decide
from broker.topics import TopicSpec, delivery_topic, federation_topics
from broker.transport import KafkaTransport, create_topics, kafka_options
from schemas.errors import CairnError
from schemas.federation import Federation

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost"})
RSS_SAMPLE_INTERVAL_S = 0.005  # seconds between VmRSS samples
CLEANUP_TIMEOUT_S = 30.0  # seconds for deleting topics and stopping clients after the run
CONNECT_TIMEOUT_S = 10.0  # seconds for any Kafka client to start


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


@dataclass(frozen=True)
class Job:
    referral_id: str
    body: bytes
    recipients: tuple[str, ...]


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
        }


# --- driving ------------------------------------------------------------------------------------


def make_jobs(sample: dict[str, Any], count: int) -> list[Job]:
    """``count`` fresh copies of the sample, serialised before the clock starts."""
    jobs = []
    for _ in range(count):
        referral = fresh_copy(sample)
        jobs.append(
            Job(
                str(referral.header.referral_id),
                referral.model_dump_json().encode(),
                tuple(referral.header.recipients),
            )
        )
    return jobs


async def run_phase(
    session: aiohttp.ClientSession,
    url: str,
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
            try:
                async with session.post(
                    url, data=job.body, headers={"Content-Type": "application/json"}
                ) as response:
                    await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                tracker.failed(job.referral_id, type(exc).__name__)
                continue
            if status == 202:
                tracker.accepted[job.referral_id] = time.perf_counter() - began
            else:
                tracker.failed(job.referral_id, f"HTTP {status}")

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
    url: str,
    sample: dict[str, Any],
    args: argparse.Namespace,
    deadline: float,
) -> Result:
    """Warm up, then measure one path."""
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        if args.warmup:
            warm, _, _ = await run_phase(
                session,
                url,
                make_jobs(sample, args.warmup),
                sink,
                concurrency=args.concurrency,
                deadline=deadline,
            )
            if warm.failures:
                raise BenchError(f"{path}: warm-up failed: {sorted(set(warm.failures.values()))}")
        jobs = make_jobs(sample, args.count)
        gc.collect()
        with RssProbe() as rss:
            tracker, start, end = await run_phase(
                session, url, jobs, sink, concurrency=args.concurrency, deadline=deadline
            )
    failures: dict[str, int] = {}
    for reason in tracker.failures.values():
        failures[reason] = failures.get(reason, 0) + 1
    return Result(
        path=path,
        note=note,
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


async def serve_local(app: web.Application) -> tuple[web.AppRunner, str]:
    """Start ``app`` on a free port on 127.0.0.1; return the runner and the submission URL."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}/v1/referrals"


@contextlib.asynccontextmanager
async def cairn_path(settings: Settings, federation: Federation) -> AsyncIterator[str]:
    """The real broker app with the real Kafka transport, as ``cairn serve`` builds it."""
    runner, url = await serve_local(create_app(settings, federation, KafkaTransport(settings)))
    try:
        yield url
    finally:
        await runner.cleanup()  # drains, then the cleanup context stops the transport


@contextlib.asynccontextmanager
async def baseline_path(
    settings: Settings, prefix: str, padding: dict[str, int], *, transactional: bool
) -> AsyncIterator[str]:
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
    try:
        runner, url = await serve_local(app)
        try:
            yield url
        finally:
            await runner.cleanup()
    finally:
        await asyncio.wait_for(producer.stop(), CLEANUP_TIMEOUT_S)


async def inbox_consumer(
    settings: Settings, prefix: str, agency: str, sink: Sink, deadline: float
) -> None:
    """The recipient side of the Cairn path: the agency adapter's own inbox."""
    async with Inbox(
        kafka_options(settings),
        agency=agency,
        topic=delivery_topic(prefix, agency),
        dlq_topic=f"{prefix}.dlq",
        group_id=f"{prefix}-inbox-{agency}",
        connect_timeout_s=CONNECT_TIMEOUT_S,
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
    """The baselines' recipient: ``Inbox.drain`` without opening the record. Without ``commit``
    it is a bare read_committed reader: no group, no offset commits."""
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
            for tp, messages in batches.items():
                for msg in messages:
                    sink.seen(msg.key.decode(), agency)
                    if commit:
                        await consumer.commit({tp: msg.offset + 1})
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


def record_padding(sample: dict[str, Any], federation: Federation, prefix: str) -> dict[str, int]:
    """Bytes the broker's sealed record adds to the submitted body, per recipient."""
    referral = fresh_copy(sample)
    body = referral.model_dump_json().encode()
    padding = {}
    for decision in decide(referral, federation, max_recipients=16):
        record = seal(referral, decision, topic_prefix=prefix, request_id=str(uuid.uuid4()))
        padding[decision.recipient] = max(0, len(record.value) - len(body))
    return padding


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


async def run(args: argparse.Namespace) -> list[Result]:
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
    recipients = tuple(sample["header"]["recipients"])
    padding = record_padding(sample, federation, prefix)

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
            if args.recipient == "inbox":
                base_consumer: Consumer = plain_consumer
                cairn_consumer: Consumer = inbox_consumer
                cairn_note = "broker.app + KafkaTransport (one transaction per referral), Inbox"
            else:
                base_consumer = cairn_consumer = functools.partial(plain_consumer, commit=False)
                cairn_note = "broker.app + KafkaTransport (one transaction per referral)"
            for base, transactional, note in (
                (base_idem, False, "aiohttp + idempotent send_and_wait, no transaction"),
                (base_txn, True, "aiohttp + one Kafka transaction per request"),
            ):
                name = "baseline-txn" if transactional else "baseline-idem"
                if name not in args.paths:
                    continue
                async with baseline_path(
                    settings, base, padding, transactional=transactional
                ) as url:
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
                                url=url,
                                sample=sample,
                                args=args,
                                deadline=deadline,
                            ),
                        )
                    )
            if "cairn" in args.paths:
                async with cairn_path(settings, federation) as url:
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
                                url=url,
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


def render(
    results: Sequence[Result], args: argparse.Namespace, body_bytes: int, recipients: int
) -> str:
    columns = (
        f"{'path':<14}{'referrals/s':>12}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
        f"{'202 p50':>9}{'202 p99':>9}{'peak RSS MiB':>14}{'+RSS MiB':>10}"
    )
    lines = [
        f"Cairn throughput: {args.count} referrals per path after {args.warmup} warm-up, "
        f"concurrency {args.concurrency}, {recipients} recipients each, body {body_bytes} B, "
        f"recipient {args.recipient}, Kafka {args.bootstrap}",
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
    for base in (r for r in results if r.path != "cairn"):
        if cairn is None:
            break
        lines.append(
            f"ratio cairn/{base.path}: throughput {cairn.rate / base.rate:.2f}x, "
            f"p50 {percentile(cairn.e2e_ms, 50) / percentile(base.e2e_ms, 50):.2f}x, "
            f"p99 {percentile(cairn.e2e_ms, 99) / percentile(base.e2e_ms, 99):.2f}x"
        )
    for r in results:
        lines.append(f"{r.path}: {r.note}")
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
        help="inbox (default): Cairn is read by adapters.inbox.Inbox and the baselines by a "
        "consumer that, like Inbox, commits after each record; plain: every path is read by a "
        "bare read_committed consumer without group or commits, isolating the sending side",
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
        results = asyncio.run(run(args))
    except (BenchError, CairnError, OSError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    probe = make_jobs(json.loads(args.sample.read_text(encoding="utf-8")), 1)[0]
    body_bytes = len(probe.body)
    print(render(results, args, body_bytes, len(probe.recipients)))
    if args.json:
        print(
            json.dumps(
                {
                    "count": args.count,
                    "warmup": args.warmup,
                    "concurrency": args.concurrency,
                    "recipient": args.recipient,
                    "body_bytes": body_bytes,
                    "bootstrap": args.bootstrap,
                    "results": [r.summary() for r in results],
                }
            )
        )
    return 0 if all(not r.failures for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
