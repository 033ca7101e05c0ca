"""The dashboard: an operations view served by the broker, an IG view served by the auditor.

Both are small static pages (``broker/web/static/``, served by ``broker.web.pages``) that read
JSON from the app that serves them, over the same mutual TLS and client-certificate roles as the
API; the IG view's routes live with the auditor (``broker.audit.service``):

    broker   GET  /ui/                  the ops view (any federation member's certificate)
             GET  /ui/api/ops?window_s= flows, per-agency lag, DLQ count, overdue items, health,
                                        credentials expiring soon
    auditor  GET  /ui/ig                the IG view (the auditor's certificate only: the auditor
                                        app's middleware refuses every other one with 401)
             POST /ui/ig/api/verify     verify the audit log's files now (``audit.verify.verify``)

The IG page otherwise reads the audit API itself (``/v1/audit/checkpoint``, ``/entries``,
``/subject``). The ops JSON holds ids, agencies, purposes, counts and times only: never a
name, date of birth, NHS number or address, and never a subject pseudonym.

Where the ops figures come from is behind ``OpsSource``. ``StoreOpsSource`` is the built-in
one: ``TappedTransport`` wraps the broker's transport and, after each successful publish,
records the audit facts the broker itself committed (``disclosed``, ``refused``,
``acknowledged``) in the shared state store (``broker.state``), so every broker's ops view
shows the flows of all of them, and a restarted broker's shows what came before. A snapshot
reads the facts of its window only (indexed by time), the newest ``MAX_FACTS_READ``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol

import structlog
from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from broker.config import Settings
from broker.kafka.ledger import Claim
from broker.kafka.transport import Consumed, Record, Transport, kafka_options
from broker.state import OVERDUE_LATE, Fact, StateStore
from broker.web.middleware import tls_agency
from broker.web.pages import json_page, static_file, static_route
from schemas.audit import AuditEvent, AuditEventType
from schemas.errors import (
    AuthenticationError,
    CairnError,
    FieldProblem,
    SchemaError,
    StateUnavailable,
)

__all__ = [
    "DEFAULT_WINDOW_S",
    "MAX_WINDOW_S",
    "OpsSource",
    "StoreOpsSource",
    "TappedTransport",
    "add_ops_routes",
    "dlq_counter",
    "facts_of",
]

log = structlog.get_logger(__name__)

DEFAULT_WINDOW_S: Final = 86_400  # seconds: the ops view's window unless the page asks
MAX_WINDOW_S: Final = 30 * 86_400  # seconds
MAX_FACTS_READ: Final = 100_000  # flow facts one snapshot reads, the newest first
OVERDUE_SHOWN: Final = 200  # overdue items listed, the newest found first

# The audit events the ops view counts, and their cairn-event-type header values.
_COUNTED: Final = (AuditEventType.DISCLOSED, AuditEventType.REFUSED, AuditEventType.ACKNOWLEDGED)
_COUNTED_HEADERS: Final = frozenset(t.value.encode() for t in _COUNTED)
_OPS_FILES: Final = {"ops.js": "text/javascript", "style.css": "text/css"}
Probe = Callable[[], Awaitable[bool]]


# --- where the ops figures come from ---------------------------------------------------------


class OpsSource(Protocol):
    """Anything that can summarise the exchange for the ops view."""

    async def snapshot(self, window: timedelta) -> dict[str, Any]:
        """The ops JSON (see ``StoreOpsSource.snapshot`` for its shape) over ``window``."""


def facts_of(records: Sequence[Record]) -> list[Fact]:
    """The audit facts the ops view counts among ``records`` (which Kafka has just committed):
    disclosures, refusals and acknowledgements, as ids, agencies, purpose and times."""
    facts = []
    for record in records:
        if not record.topic.endswith(".audit"):
            continue
        # The type header (broker.receipts.audit_record sets it from the event) spares parsing
        # the events not counted (received, decided: half of a submission's); no header, parse.
        kind = next((v for k, v in record.headers if k == "cairn-event-type"), None)
        if kind is not None and kind not in _COUNTED_HEADERS:
            continue
        try:
            event = AuditEvent.model_validate_json(record.value)
        except ValidationError:
            log.warning("dashboard.unreadable_audit_record", topic=record.topic)
            continue
        if event.type not in _COUNTED or event.message_id is None or event.recipient is None:
            continue
        facts.append(
            Fact(
                type=event.type.value,
                at=event.at,
                message_id=str(event.message_id),
                recipient=event.recipient,
                sender=event.sender,
                purpose=event.purpose.value if event.purpose is not None else None,
                due_at=event.due_at,
            )
        )
    return facts


class TappedTransport:
    """A transport that records in the state store what each successful publish committed."""

    def __init__(self, inner: Transport, store: StateStore) -> None:
        self.inner = inner
        self.store = store

    async def start(self) -> None:
        await self.inner.start()

    async def stop(self) -> None:
        await self.inner.stop()

    async def publish(
        self,
        records: Sequence[Record],
        consumed: Consumed | None = None,
        *,
        claim: Claim | None = None,
    ) -> None:
        await self.inner.publish(records, consumed, claim=claim)
        # Only after the commit: a failed publish disclosed nothing.
        facts = facts_of(records)
        if not facts:
            return
        try:
            await self.store.record_facts(facts)
        except StateUnavailable as exc:
            # Kafka has committed: the submission stands; the ops view misses these facts.
            log.warning("dashboard.facts_not_recorded", error=type(exc).__name__, facts=len(facts))

    def publisher_id(self) -> str:
        return self.inner.publisher_id()

    async def ready(self) -> bool:
        return await self.inner.ready()

    async def health(self) -> str:
        return await self.inner.health()


class StoreOpsSource:
    """The ops figures from the state store's flow facts, health probes and a DLQ counter."""

    def __init__(
        self,
        store: StateStore,
        *,
        probes: Mapping[str, Probe] | None = None,
        dlq_count: Callable[[], Awaitable[int]] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        probe_timeout_s: float = 3.0,  # seconds per probe
        credentials: Callable[[], list[dict[str, object]]] | None = None,
        horizons: Callable[[], Awaitable[dict[str, Any]]] | None = None,
    ) -> None:
        self.store = store
        self.probes = dict(probes or {})
        self.dlq_count = dlq_count
        self.clock = clock
        self.probe_timeout_s = probe_timeout_s
        self.credentials = credentials  # what expires soon (broker.ops.credentials)
        self.horizons = horizons  # the auditor, first expiries, calendar end (broker.ops.health)

    async def snapshot(self, window: timedelta) -> dict[str, Any]:
        """Flows, lag per recipient, overdue items, DLQ count and health, as plain JSON.

        ``flows``: one row per (sender, recipient, purpose) with ``disclosed`` and ``refused``
        counts in the window and ``per_hour`` (disclosed per hour). ``agencies``: per recipient,
        disclosures not yet acknowledged and the age of the oldest (the lag). ``overdue``: the
        disclosures the overdue sweep found not acknowledged by their deadline, the newest found
        first (at most ``OVERDUE_SHOWN``), each with ``acknowledged_at`` (acknowledged late) or
        null (never yet); ``overdue_total`` and ``overdue_late`` count all of them, whatever the
        window: the state store's ``overdue_counts``, the figure ``/metrics`` and ``cairn
        status`` show and the ``overdue`` audit events record.
        ``credentials``: the registry, CA, certificates and keys expiring within
        ``credential_warn_days`` (kind, subject, expires_at, seconds_left), soonest first.
        ``horizons`` (when the source has them, ``broker.ops.health.horizons``): the auditor
        (answering, tree size, checkpoint age), the registry and the certificate that expire
        first, and the school calendar's last covered day.
        """
        now = self.clock()
        since = now - window
        hours = window.total_seconds() / 3600
        flows: dict[tuple[str, str, str], dict[str, int]] = {}
        pending: dict[str, list[datetime]] = {}
        disclosed = AuditEventType.DISCLOSED.value
        for fact in await self.store.facts(since, MAX_FACTS_READ):
            key = (fact.sender or "?", fact.recipient, fact.purpose or "?")
            row = flows.setdefault(key, {"disclosed": 0, "refused": 0})
            row["disclosed" if fact.type == disclosed else "refused"] += 1
            if fact.type != disclosed or fact.acknowledged:
                continue
            pending.setdefault(fact.recipient, []).append(fact.at)
        # Overdue: what the sweep marked in the store (never this view's own reckoning).
        counts = await self.store.overdue_counts()
        overdue = [
            {
                "message_id": d.referral_id,
                "purpose": d.purpose,
                "sender": d.sender,
                "recipient": d.agency,
                "due_at": (d.due_at or d.delivered_at).isoformat(),
                "overdue_s": int((now - (d.due_at or d.delivered_at)).total_seconds()),
                "acknowledged_at": d.acknowledged_at.isoformat() if d.acknowledged_at else None,
            }
            for d in await self.store.overdue(OVERDUE_SHOWN)
        ]
        recipients = sorted({k[1] for k in flows} | set(pending))
        return {
            "generated_at": now.isoformat(),
            "window_s": int(window.total_seconds()),
            "flows": [
                {
                    "sender": sender,
                    "recipient": recipient,
                    "purpose": purpose,
                    **counts,
                    "per_hour": round(counts["disclosed"] / hours, 3) if hours else 0.0,
                }
                for (sender, recipient, purpose), counts in sorted(flows.items())
            ],
            "agencies": [
                {
                    "agency": agency,
                    "unacknowledged": len(pending.get(agency, [])),
                    "oldest_unacknowledged_s": (
                        int((now - min(pending[agency])).total_seconds())
                        if pending.get(agency)
                        else None
                    ),
                }
                for agency in recipients
            ],
            "overdue": overdue,
            "overdue_total": sum(counts.values()),
            "overdue_late": sum(n for (_p, _r, a), n in counts.items() if a == OVERDUE_LATE),
            "dlq": await self._dlq(),
            "quarantine": None,  # quarantine happens in the recipients' inboxes, not here
            "health": await self._health(),
            "credentials": self.credentials() if self.credentials is not None else [],
            **({"horizons": await self._horizons()} if self.horizons is not None else {}),
        }

    async def _horizons(self) -> dict[str, Any] | None:
        assert self.horizons is not None
        try:
            return await asyncio.wait_for(self.horizons(), self.probe_timeout_s + 1.0)
        except (CairnError, KafkaError, OSError, TimeoutError):
            return None

    async def _dlq(self) -> int | None:
        if self.dlq_count is None:
            return None
        try:
            return await asyncio.wait_for(self.dlq_count(), self.probe_timeout_s)
        except (CairnError, KafkaError, OSError, TimeoutError):
            return None

    async def _health(self) -> dict[str, str]:
        async def one(probe: Probe) -> str:
            try:
                return "up" if await asyncio.wait_for(probe(), self.probe_timeout_s) else "down"
            except (CairnError, KafkaError, OSError, TimeoutError):
                return "down"

        names = sorted(self.probes)
        states = await asyncio.gather(*(one(self.probes[n]) for n in names))
        return dict(zip(names, states, strict=True))


# --- HTTP: the ops view (broker) ------------------------------------------------------------


OPS_SOURCE = web.AppKey("ops_source", OpsSource)
OPS_VIEWERS = web.AppKey("ops_viewers", frozenset)


def _viewer(request: web.Request) -> str:
    """The certificate's member, if it may see the ops view (403-style refusal otherwise)."""
    member = tls_agency(request)
    viewers = request.app[OPS_VIEWERS]
    if viewers and member not in viewers:
        raise AuthenticationError(f"'{member}' may not see the ops view")
    return member


async def ops_page(request: web.Request) -> web.Response:
    _viewer(request)
    return static_file("index.html", "text/html")


async def ops_data(request: web.Request) -> web.Response:
    _viewer(request)
    raw = request.query.get("window_s", str(DEFAULT_WINDOW_S))
    try:
        seconds = int(raw)
    except ValueError:
        raise SchemaError(
            "'window_s' is not a whole number of seconds",
            (FieldProblem("window_s", "not an integer"),),
        ) from None
    if not 60 <= seconds <= MAX_WINDOW_S:
        raise SchemaError(
            f"'window_s' must be between 60 and {MAX_WINDOW_S} seconds",
            (FieldProblem("window_s", "out of range"),),
        )
    return json_page(await request.app[OPS_SOURCE].snapshot(timedelta(seconds=seconds)))


async def _to_slash(_request: web.Request) -> web.Response:
    raise web.HTTPFound("/ui/")


def add_ops_routes(
    app: web.Application, source: OpsSource, *, viewers: Collection[str] = ()
) -> None:
    """Mount the ops view on the broker ``app``; ``viewers`` empty: any member may look."""
    app[OPS_SOURCE] = source
    app[OPS_VIEWERS] = frozenset(viewers)
    app.router.add_get("/ui", _to_slash)
    app.router.add_get("/ui/", ops_page)
    app.router.add_get("/ui/api/ops", ops_data)
    app.router.add_get("/ui/static/{name}", _guarded(static_route(_OPS_FILES)))


def _guarded(
    handler: Callable[[web.Request], Awaitable[web.Response]],
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def guarded(request: web.Request) -> web.Response:
        _viewer(request)
        return await handler(request)

    return guarded


# --- DLQ counting over Kafka -----------------------------------------------------------------


def dlq_counter(settings: Settings) -> Callable[[], Awaitable[int]]:
    """Count the records kept on ``<prefix>.dlq``: end minus beginning offsets, all partitions."""
    topic = f"{settings.topic_prefix}.dlq"

    async def count() -> int:
        consumer = AIOKafkaConsumer(**kafka_options(settings))
        try:
            # Inside the try: a start that fails or times out still closes the consumer.
            await asyncio.wait_for(consumer.start(), settings.kafka_connect_timeout_s)
            await consumer.topics()  # refresh metadata so the topic's partitions are known
            tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
            if not tps:
                return 0
            end = await consumer.end_offsets(tps)
            begin = await consumer.beginning_offsets(tps)
            return sum(end[tp] - begin[tp] for tp in tps)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer.stop(), 10)

    return count
