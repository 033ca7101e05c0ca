"""The broker's operational metrics: one Prometheus registry per app, codes in every label.

``Metrics`` holds a ``CollectorRegistry`` of its own (never the global one, so tests can run
several apps in one process) and the counters, histograms and gauges ``GET /metrics`` serves.
Label values are agency ids, purpose codes, reason codes, stage names and exception class
names only; ``code`` turns anything else into ``"other"``, so a value that is not a code can
never reach the exposition, whatever a call site passes.

Kafka figures (consumer lag per delivery topic, dead letters) come from ``KafkaProbe``:
refreshed in the background at most every ``ops_refresh_s`` seconds and within a bounded time,
so ``/metrics`` answers from the cache and never waits on Kafka. The auditor's figures are the
auditor's own, from its public status route (``broker.ops.health.AuditorProbe``, asked before
each render by ``read_auditor``, bounded in time and cached a few seconds): its lag behind the
audit topic's last stable offset (``cairn_auditor_lag``), its latest checkpoint's age
(``cairn_auditor_checkpoint_age_seconds``), the forks its witnesses reported and each witness's
cosigned size (``cairn_audit_witness_forks``, ``cairn_audit_witness_cosigned_size``), and
``cairn_auditor_up`` (1 if it answered). Nothing is read from the auditor's files, so broker and
auditor need not share a disk; an auditor that does not answer leaves those gauges out (not the
last numbers), with ``cairn_auditor_up`` 0.

``CalendarWatch`` keeps an eye on the school calendar's horizon: the gauge
``cairn_school_calendar_days_left`` (days until the last configured term ends, read when scraped;
negative once it has ended), and once a day the log line ``calendar.running_out`` from
``calendar_warn_days`` before the end, ``calendar.ended`` after it (deadlines then follow the
conservative rule), or ``calendar.no_term_dates``.

Under ``cairn serve --workers N`` every worker is a process of its own, so its instruments
live in prometheus-client's multiprocess mode (``Metrics(multiprocess_dir=...)``: the
supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` before a worker imports prometheus-client) and
``GET /metrics`` from any worker shows every worker's counters and histograms summed
(``MultiProcessCollector``), a dead worker's counts included. The figures ``_OpsCollector``
computes when scraped (checkpoint age, calendar, Kafka lag) are facts about the deployment,
not counts: they are added once, from the worker that answers, never summed. A gauge added
to ``Metrics`` must name its ``multiprocess_mode``.

``CredentialWatch`` (``broker.ops.credentials``) gives the gauge
``cairn_credential_expiry_seconds{kind,subject}``: seconds until the registry, the CA, a TLS
certificate or an active key expires (negative once it has), from the key store's files as
last read, computed when scraped; a deployment figure like the calendar's, added once.

Overdue disclosures are the state store's figure, read at each scrape (``read_state``, which
``GET /metrics`` awaits before rendering): ``cairn_disclosures_overdue{purpose,recipient,
acknowledged}``, the deliveries the overdue sweep marked, ``acknowledged`` ``late`` or
``never`` (``StateStore.overdue_counts``): the same count the ops view and ``cairn status``
show, for every broker and across restarts. ``cairn_overdue_disclosures_total`` only counts
what this process's sweep found (for an alert's ``increase()``).

``CountingTransport`` wraps any transport to count produce errors and retries.
``ops_snapshot`` gives the same picture as a JSON-ready dict for the dashboard and
``cairn status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from broker.config import Settings
from broker.kafka.ledger import Claim
from broker.kafka.topics import delivery_topic
from broker.kafka.transport import Consumed, Record, Transport, kafka_options
from broker.ops.credentials import CredentialWatch
from broker.policy.calendar import CONSERVATIVE_RULE, SchoolCalendar
from broker.state import OVERDUE_LATE, StateStore
from schemas.errors import StateUnavailable, TransportError

if TYPE_CHECKING:
    from broker.ops.health import AuditorAnswer, AuditorProbe

__all__ = [
    "CONTENT_TYPE",
    "STAGES",
    "CalendarWatch",
    "CountingTransport",
    "KafkaFigures",
    "KafkaProbe",
    "Metrics",
    "auditor_exposition",
    "code",
    "ops_snapshot",
]

log = structlog.get_logger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STAGES = ("verify", "validate", "decide", "seal", "publish")
# Seconds: a submission is tens of milliseconds when healthy, up to publish_timeout_s when not.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0)
_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


def code(value: object) -> str:
    """``value`` as a label value if it looks like a code (id, purpose, reason), else "other"."""
    text = str(value)
    return text if _CODE.fullmatch(text) else "other"


class Metrics:
    """The registry and its collectors; attributes are the instruments the broker updates.

    With ``multiprocess_dir`` (a worker of ``cairn serve --workers``), ``exposed`` sums every
    worker's files in that folder; see the module docstring.
    """

    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        if multiprocess_dir is not None and not getattr(values.ValueClass, "_multiprocess", False):
            raise RuntimeError(
                "multiprocess metrics need PROMETHEUS_MULTIPROC_DIR set before prometheus_client "
                "is imported"
            )
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.received = Counter(
            "cairn_referrals_received", "Submissions that reached POST /v1/referrals", registry=r
        )
        self.accepted = Counter(
            "cairn_referrals_accepted",
            "Submissions accepted (committed to Kafka), by sender agency and purpose",
            ["sender", "purpose"],
            registry=r,
        )
        self.replayed = Counter(
            "cairn_referrals_replayed",
            "Identical resubmissions answered with their original receipt",
            registry=r,
        )
        self.refused = Counter(
            "cairn_referrals_refused",
            "Submissions refused as a whole, by problem type (reason code)",
            ["reason"],
            registry=r,
        )
        self.disclosures = Counter(
            "cairn_disclosures",
            "Disclosures committed, by sender agency, recipient agency and purpose",
            ["sender", "recipient", "purpose"],
            registry=r,
        )
        self.withheld = Counter(
            "cairn_disclosures_refused",
            "Recipients refused by the sharing policy, by reason code",
            ["sender", "recipient", "purpose", "reason"],
            registry=r,
        )
        self.stage_seconds = Histogram(
            "cairn_stage_seconds",
            "Time in each pipeline stage",
            ["stage"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.submission_seconds = Histogram(
            "cairn_submission_seconds",
            "Time from receiving a submission's body to answering it, by outcome",
            ["outcome"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.produce_errors = Counter(
            "cairn_kafka_produce_errors",
            "Kafka publishes that failed, by cause (exception class)",
            ["error"],
            registry=r,
        )
        self.produce_retries = Counter(
            "cairn_kafka_produce_retries",
            "Kafka publishes attempted again after a failed one",
            registry=r,
        )
        self.acknowledged = Counter(
            "cairn_acknowledgements",
            "Recipients' acknowledgements audited, by recipient agency",
            ["recipient"],
            registry=r,
        )
        self.dead_letters = Counter(
            "cairn_consumer_dead_letters",
            "Records a consumer could not handle and sent to the dead-letter topic, by consumer "
            "(receipts, auditor, inbox) and reason code",
            ["consumer", "reason"],
            registry=r,
        )
        self.overdue = Counter(
            "cairn_overdue_disclosures",
            "Disclosures not acknowledged by their deadline, by purpose and recipient agency",
            ["purpose", "recipient"],
            registry=r,
        )
        self.connections_cut = Counter(
            "cairn_http_connections_cut",
            "HTTP connections cut off (too slow) or refused (over a limit), by reason code",
            ["reason"],
            registry=r,
        )
        self.witness_results = Counter(
            "cairn_audit_witness_results",
            "Checkpoints submitted to a witness (C2SP tlog-witness), by witness name and result "
            "(cosigned, unreachable, fork, refused, invalid)",
            ["witness", "result"],
            registry=r,
        )
        # (purpose, recipient, late|never) -> overdue deliveries, as the store said at the
        # last read_state; None: not read, or the store did not answer
        self.overdue_now: dict[tuple[str, str, str], int] | None = None
        self.probe: KafkaProbe | None = None
        # The auditor's public status route, asked by read_auditor (cached, bounded), and its
        # last answer; None: not asked (no auditor configured)
        self.auditor: AuditorProbe | None = None
        self.auditor_now: AuditorAnswer | None = None
        self.calendar_watch: CalendarWatch | None = None
        self.credential_watch: CredentialWatch | None = None
        r.register(_OpsCollector(self))
        for stage in STAGES:  # every stage is exposed from the start, at zero
            self.stage_seconds.labels(stage=stage)
        self.multiprocess_dir = multiprocess_dir
        self.exposed = r  # what /metrics, the ops view and `cairn status` read
        if multiprocess_dir is not None:
            self.exposed = CollectorRegistry(auto_describe=False)
            folder = str(multiprocess_dir)
            # prometheus-client leaves this constructor unannotated
            MultiProcessCollector(self.exposed, folder)  # type: ignore[no-untyped-call]
            self.exposed.register(_OpsCollector(self))  # once: these figures are not counts

    async def read_state(self, store: StateStore) -> None:
        """Read the store's overdue counts for the next render (``GET /metrics`` calls this
        first); a store that does not answer leaves the gauge out, it never fails a scrape."""
        try:
            self.overdue_now = await store.overdue_counts()
        except StateUnavailable as exc:
            log.warning("ops.state_unreadable", error=type(exc).__name__)
            self.overdue_now = None

    async def read_auditor(self) -> None:
        """Ask the auditor for its figures for the next render (``GET /metrics`` and
        ``ops_snapshot`` call this); bounded by the probe's timeout, cached by it."""
        if self.auditor is not None:
            self.auditor_now = await self.auditor.answer()

    def witness_result(self, witness: str, result: str) -> None:
        """Count one witness's answer to one checkpoint (``broker.audit.service``)."""
        self.witness_results.labels(witness=code(witness), result=code(result)).inc()

    def dead_letter(self, consumer: str, reason: str) -> None:
        """Count one dead letter (``broker.kafka.consumer.CountDeadLetter``)."""
        self.dead_letters.labels(consumer=code(consumer), reason=code(reason)).inc()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block into ``cairn_stage_seconds{stage=name}``, even when it raises."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stage_seconds.labels(stage=code(name)).observe(time.perf_counter() - start)

    def render(self) -> bytes:
        """The Prometheus text exposition of ``exposed`` (every worker's, summed)."""
        return generate_latest(self.exposed)

    def answered(self) -> AuditorAnswer | None:
        """The auditor's last answer if it answered, else None (its figures are unknown)."""
        now = self.auditor_now
        return now if now is not None and now.answering else None

    def checkpoint_age_s(self) -> float | None:
        """Seconds since the auditor last wrote a checkpoint, as it said; None if it has not,
        or did not answer."""
        now = self.answered()
        return None if now is None or now.checkpoint_age_s is None else float(now.checkpoint_age_s)


class _OpsCollector(Collector):
    """Gauges read when scraped: cached Kafka figures and the auditor's own figures."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return ()  # computed on collect; nothing to register up front

    def collect(self) -> Iterable[Metric]:
        watch = self._metrics.calendar_watch
        left = watch.days_left() if watch is not None else None
        if left is not None:
            days = GaugeMetricFamily(
                "cairn_school_calendar_days_left",
                "Days until the school calendar's last configured term ends (negative: ended, "
                "deadlines follow the conservative rule)",
            )
            days.add_metric([], left)
            yield days
        credentials = self._metrics.credential_watch
        if credentials is not None:
            expiry = GaugeMetricFamily(
                "cairn_credential_expiry_seconds",
                "Seconds until the registry, the CA, a TLS certificate or an active key expires "
                "(negative: expired), by kind and subject (agency id or component)",
                labels=["kind", "subject"],
            )
            for credential, seconds in credentials.seconds_left():
                expiry.add_metric([credential.kind.value, code(credential.subject)], seconds)
            yield expiry
        yield from _auditor_gauges(self._metrics.auditor_now)
        overdue = self._metrics.overdue_now
        if overdue is not None:
            g = GaugeMetricFamily(
                "cairn_disclosures_overdue",
                "Disclosures not acknowledged by their deadline (the state store's, every "
                "broker's), by purpose, recipient agency and acknowledged (late, or never yet)",
                labels=["purpose", "recipient", "acknowledged"],
            )
            for (purpose, recipient, acked), n in sorted(overdue.items()):
                g.add_metric([code(purpose), code(recipient), code(acked)], float(n))
            yield g
        probe = self._metrics.probe
        if probe is None:
            return
        probe.refresh_soon()
        figures = probe.figures
        up = GaugeMetricFamily(
            "cairn_kafka_probe_up", "1 if the last Kafka lag probe answered in time"
        )
        up.add_metric([], 1.0 if figures.ok else 0.0)
        yield up
        if not figures.ok:
            return
        lag = GaugeMetricFamily(
            "cairn_consumer_lag",
            "Offsets on an agency's delivery topic its inbox group has not committed yet",
            labels=["agency"],
        )
        for agency, value in sorted(figures.consumer_lag.items()):
            lag.add_metric([code(agency)], value)
        yield lag
        if figures.dlq_offsets is not None:
            d = GaugeMetricFamily(
                "cairn_dlq_offsets", "Offsets on the dead-letter topic (commit markers included)"
            )
            d.add_metric([], figures.dlq_offsets)
            yield d


def _auditor_gauges(answer: AuditorAnswer | None) -> Iterator[Metric]:
    """The auditor's own figures as it last said them (``read_auditor``): whether it
    answered, its lag, its checkpoint's age, its witnesses' forks and cosigned sizes."""
    if answer is None:
        return
    up = GaugeMetricFamily(
        "cairn_auditor_up", "1 if the auditor answered its public routes at the last ask"
    )
    up.add_metric([], 1.0 if answer.answering else 0.0)
    yield up
    if not answer.answering:
        return  # not answering: its figures are unknown, not the last ones
    status = answer
    if status.lag is not None:
        lag = GaugeMetricFamily(
            "cairn_auditor_lag",
            "Offsets on the audit topic the auditor has not read yet (its position against "
            "the partition's last stable offset, as the auditor measured it; 0: caught up)",
        )
        lag.add_metric([], float(status.lag))
        yield lag
    if status.checkpoint_age_s is not None:
        age = GaugeMetricFamily(
            "cairn_auditor_checkpoint_age_seconds",
            "Seconds since the auditor's latest checkpoint was written, as the auditor said",
        )
        age.add_metric([], float(status.checkpoint_age_s))
        yield age
    if status.forks is not None:
        forks = GaugeMetricFamily(
            "cairn_audit_witness_forks",
            "Forks the auditor's witnesses reported (another tree of the log for the same "
            "size, or no consistency from what they hold), over the log's life; anything "
            "above 0 is an incident",
        )
        forks.add_metric([], float(status.forks))
        yield forks
    if status.cosigned_size:
        g = GaugeMetricFamily(
            "cairn_audit_witness_cosigned_size",
            "The largest tree size each witness has cosigned",
            labels=["witness"],
        )
        for name, size in sorted(status.cosigned_size.items()):
            g.add_metric([code(name)], float(size))
        yield g


class _AuditorCollector(Collector):
    """One answer's gauges, for the auditor's own ``/metrics`` (``auditor_exposition``)."""

    def __init__(self, answer: AuditorAnswer) -> None:
        self._answer = answer

    def describe(self) -> Iterable[Metric]:
        return ()

    def collect(self) -> Iterable[Metric]:
        return _auditor_gauges(self._answer)


def auditor_exposition(answer: AuditorAnswer) -> bytes:
    """The auditor's figures (``broker.audit.service.Auditor.status`` as ``answer``) as a
    Prometheus text exposition with the broker's names, for the auditor's own ``/metrics``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_AuditorCollector(answer))
    return generate_latest(registry)


# Seconds between looks at the calendar: the log line is written at most once a local day, so
# this only bounds how late after midnight the day's line comes.
_CALENDAR_CHECK_EVERY_S = 3600.0


class CalendarWatch:
    """Warns before the school calendar's term dates run out; see the module docstring."""

    def __init__(
        self, calendar: SchoolCalendar, clock: Callable[[], datetime], warn_days: int
    ) -> None:
        self._calendar = calendar
        self._clock = clock
        self._warn_days = warn_days
        self._logged_on: date | None = None

    def today(self) -> date:
        """Today in the calendar's own time zone."""
        return self._clock().astimezone(self._calendar.zone).date()

    def days_left(self) -> int | None:
        """Days until the last configured term ends (negative after), None without terms."""
        return self._calendar.days_left(self.today())

    def check(self) -> int | None:
        """Log the horizon if it needs attention, at most once per local day; days left."""
        today = self.today()
        left = self._calendar.days_left(today)
        if self._logged_on == today:
            return left
        self._logged_on = today
        last = self._calendar.last_day
        if left is None or last is None:
            log.warning("calendar.no_term_dates", rule=CONSERVATIVE_RULE)
        elif left < 0:
            log.error(
                "calendar.ended", last_day=last.isoformat(), days_ago=-left, rule=CONSERVATIVE_RULE
            )
        elif left <= self._warn_days:
            log.warning(
                "calendar.running_out",
                last_day=last.isoformat(),
                days_left=left,
                warn_days=self._warn_days,
            )
        return left

    async def run(self, stop: asyncio.Event) -> None:
        """Check at start and then hourly until ``stop`` is set."""
        while not stop.is_set():
            self.check()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), _CALENDAR_CHECK_EVERY_S)


@dataclass(frozen=True)
class KafkaFigures:
    """One probe's answer; ``ok`` False until Kafka has answered once."""

    ok: bool = False
    consumer_lag: dict[str, int] = field(default_factory=dict)  # agency -> offsets behind
    dlq_offsets: int | None = None
    at: float = 0.0  # time.monotonic() of the answer


class KafkaProbe:
    """Asks Kafka for end offsets and the inbox groups' commits; cached, bounded, background."""

    def __init__(self, settings: Settings, agencies: Sequence[str]) -> None:
        self._settings = settings
        self._agencies = tuple(agencies)
        self.figures = KafkaFigures()
        self._task: asyncio.Task[KafkaFigures] | None = None
        self._tried = float("-inf")

    def refresh_soon(self) -> None:
        """Start a background refresh if the figures are stale and none is running."""
        if self._task is not None and not self._task.done():
            return
        if time.monotonic() - self._tried < self._settings.ops_refresh_s:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # scraped outside the event loop (a test): keep the cache
        self._tried = time.monotonic()
        self._task = loop.create_task(self.refresh())

    async def refresh(self) -> KafkaFigures:
        """Probe Kafka now, within ``readiness_timeout_s`` x 2; keep the old figures on failure."""
        try:
            async with asyncio.timeout(self._settings.readiness_timeout_s * 2):
                figures = await self._probe()
        except Exception as exc:  # any failure only means "no fresh figures"
            log.warning("ops.kafka_probe_failed", error=type(exc).__name__)
            self.figures = KafkaFigures(ok=False, at=time.monotonic())
            return self.figures
        self.figures = figures
        return figures

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _probe(self) -> KafkaFigures:
        prefix = self._settings.topic_prefix
        options = kafka_options(self._settings)
        consumer = AIOKafkaConsumer(
            **options, enable_auto_commit=False, isolation_level="read_committed"
        )
        admin = AIOKafkaAdminClient(**options)
        try:
            await consumer.start()
            await admin.start()
            deliver = {a: delivery_topic(prefix, a) for a in self._agencies}
            topics = [*deliver.values(), f"{prefix}.dlq"]
            described = await admin.describe_topics(topics)
            parts: dict[str, list[TopicPartition]] = {t: [] for t in topics}
            for d in described:
                if d["error_code"] == 0 and d["topic"] in parts:
                    parts[d["topic"]] = sorted(
                        TopicPartition(d["topic"], p["partition"]) for p in d["partitions"]
                    )
            every = [tp for tps in parts.values() for tp in tps]
            end = await consumer.end_offsets(every)
            begin = await consumer.beginning_offsets(every)
            lag: dict[str, int] = {}
            for agency, topic in deliver.items():
                if not parts[topic]:
                    continue
                committed = await admin.list_consumer_group_offsets(f"cairn-inbox-{agency}")
                behind = 0
                for tp in parts[topic]:
                    meta = committed.get(tp)
                    done = meta.offset if meta is not None and meta.offset >= 0 else begin[tp]
                    behind += max(0, end[tp] - done)
                lag[agency] = behind
            dlq = parts[f"{prefix}.dlq"]
            dlq_offsets = sum(end[tp] - begin[tp] for tp in dlq) if dlq else None
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()
            with contextlib.suppress(Exception):
                await admin.close()
        return KafkaFigures(True, lag, dlq_offsets, time.monotonic())


class CountingTransport:
    """A transport that counts produce errors (by cause) and retries into ``metrics``."""

    def __init__(self, inner: Transport, metrics: Metrics) -> None:
        self.inner = inner
        self._metrics = metrics
        self._failed = False  # the previous publish failed: the next one is a retry

    async def start(self) -> None:
        await self.inner.start()

    async def stop(self) -> None:
        await self.inner.stop()

    async def ready(self) -> bool:
        return await self.inner.ready()

    async def health(self) -> str:
        return await self.inner.health()

    def publisher_id(self) -> str:
        return self.inner.publisher_id()

    async def publish(
        self,
        records: Sequence[Record],
        consumed: Consumed | None = None,
        *,
        claim: Claim | None = None,
    ) -> None:
        if self._failed:
            self._metrics.produce_retries.inc()
        try:
            await self.inner.publish(records, consumed, claim=claim)
        except TransportError as exc:
            self._failed = True
            cause = exc.__cause__
            self._metrics.produce_errors.labels(
                error=code(type(cause if cause is not None else exc).__name__)
            ).inc()
            raise
        self._failed = False


async def ops_snapshot(
    metrics: Metrics,
    store: StateStore | None = None,
    *,
    kafka_ready: bool | None = None,
    overdue_limit: int = 50,
    clock: Callable[[], datetime] | None = None,
) -> dict[str, Any]:
    """The ops picture as JSON-ready codes, ids and numbers (no personal data).

    ``flows``: sender → recipient per purpose with disclosure counts (the state store's, which
    every broker shares and which outlives a restart, if given; else this process's counters);
    ``refused``: per reason; ``overdue``: newest first, each with ``acknowledged_at`` (late) or
    null, and ``overdue_total`` / ``overdue_late`` (the store's ``overdue_counts``, the figure
    ``/metrics`` shows); ``health``: Kafka, the lag probe, the auditor.
    """
    flows = [
        {"sender": s, "recipient": r, "purpose": p, "count": int(v)}
        for (s, r, p), v in _samples(metrics, "cairn_disclosures_total", 3)
    ]
    counts: dict[tuple[str, str, str], int] = {}
    if store is not None:
        flows = [
            {"sender": s, "recipient": r, "purpose": p, "count": n}
            for (s, r, p), n in sorted((await store.delivery_counts()).items())
        ]
        counts = await store.overdue_counts()
    refused = {
        labels[0]: int(v) for labels, v in _samples(metrics, "cairn_referrals_refused_total", 1)
    }
    accepted = sum(v for _l, v in _samples(metrics, "cairn_referrals_accepted_total", 2))
    overdue: list[dict[str, Any]] = []
    if store is not None:
        overdue = [
            {
                "referral_id": d.referral_id,
                "recipient": d.agency,
                "purpose": d.purpose,
                "sender": d.sender,
                "due_at": d.due_at.isoformat() if d.due_at else None,
                "overdue_at": d.overdue_at.isoformat() if d.overdue_at else None,
                "acknowledged_at": d.acknowledged_at.isoformat() if d.acknowledged_at else None,
            }
            for d in await store.overdue(overdue_limit)
        ]
    figures = metrics.probe.figures if metrics.probe is not None else None
    await metrics.read_auditor()
    auditor = metrics.answered()
    return {
        "received": int(_value(metrics, "cairn_referrals_received_total")),
        "accepted": int(accepted),
        "refused": refused,
        "flows": flows,
        "overdue": overdue,
        "overdue_total": sum(counts.values()),
        "overdue_late": sum(n for (_p, _r, acked), n in counts.items() if acked == OVERDUE_LATE),
        "dlq": figures.dlq_offsets if figures is not None and figures.ok else None,
        "health": {
            "kafka": None
            if kafka_ready is None
            else ("reachable" if kafka_ready else "unreachable"),
            "kafka_probe": None if figures is None else figures.ok,
            "consumer_lag": dict(figures.consumer_lag) if figures and figures.ok else {},
            "auditor_lag": None if auditor is None else auditor.lag,
            "auditor_checkpoint_age_s": metrics.checkpoint_age_s(),
            "auditor_witness_forks": None if auditor is None else auditor.forks,
        },
        "at": (clock() if clock is not None else datetime.now().astimezone()).isoformat(),
    }


def _samples(metrics: Metrics, name: str, arity: int) -> list[tuple[tuple[str, ...], float]]:
    out = []
    for family in metrics.exposed.collect():
        for s in family.samples:
            if s.name == name:
                labels = tuple(s.labels.values())
                if len(labels) == arity:
                    out.append((labels, s.value))
    return sorted(out)


def _value(metrics: Metrics, name: str) -> float:
    return metrics.exposed.get_sample_value(name) or 0.0
