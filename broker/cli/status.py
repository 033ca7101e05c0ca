"""``cairn status``: the ops picture in the terminal: flows, overdue disclosures, health, and
the credentials that expire soon.

Reads the broker's ``GET /metrics`` and ``GET /readyz`` over mutual TLS with an agency's (or
the auditor's) certificate, and the flows and the overdue disclosures from the brokers' state
store (read-only: the SQLite file under the state folder, or the PostgreSQL database
``CAIRN_DATABASE_URL`` names, shown as user@host:port/db, never with its password); with
``--offline`` it reads the store alone. Prints codes, ids and counts only: the metrics and the
store hold no personal data.

The flows (disclosures per sender, recipient and purpose) and the overdue count are the store's
(``delivery_counts``, ``overdue_counts``), never one broker process's counters: every broker's,
the same after a restart, and the same overdue figure as ``/metrics`` and the ops view.

Credential expiry (the registry, the CA, TLS certificates, active keys) comes from the broker's
``cairn_credential_expiry_seconds`` gauge, or, offline or when the broker does not answer, from
the key store's public files (``keys.expiry``; no passphrase needed). Each one expiring within
``credential_warn_days`` is a ``warning:`` line naming the command that renews it.

The Health table also says when the registry and the first certificate expire, and when the
school calendar's term dates end (the broker's ``cairn_school_calendar_days_left``, else the
federation's calendar file): after that day Operation Encompass deadlines follow the
conservative rule (``broker.ops.health``).
"""

from __future__ import annotations

import asyncio
import ssl
import sys
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import click
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from broker.cli.common import settings_or_exit
from broker.config import Settings, https_url
from broker.ops.health import (
    CERTIFICATE_KINDS,
    REGISTRY_KINDS,
    calendar_text,
    expiry_text,
    soonest,
)
from broker.state import OVERDUE_LATE, StateStore, store_for
from keys.expiry import read_key_folder
from schemas.errors import CairnError, StateUnavailable

__all__ = [
    "Status",
    "credential_warnings",
    "down",
    "horizon_rows",
    "overdue_figures",
    "parse_metrics",
    "read_key_store",
    "read_store",
    "render",
    "status",
]

_DAY_S = 86_400
_ROTATE = "run 'cairn keys rotate --agency {subject}'"
# What renews each kind, when it is not 'cairn keys refresh'.
_FIXES = {
    "signing_key": _ROTATE,
    "encryption_key": _ROTATE,
    "kafka_ca": "renew the file CAIRN_KAFKA_SSL_CA_FILE names",
    "kafka_client": "renew the file CAIRN_KAFKA_SSL_CERT_FILE names",
}


@dataclass
class Status:
    """What ``cairn status`` shows, from whichever sources answered."""

    flows: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (from, to, purpose)
    refused: dict[str, int] = field(default_factory=dict)  # reason -> submissions
    # (overdue at, referral id, purpose, recipient, due at, acknowledged), newest first
    overdue: list[tuple[str, str, str, str, str, str]] = field(default_factory=list)
    # (purpose, recipient, late|never) -> overdue disclosures (StateStore.overdue_counts)
    overdue_counts: dict[tuple[str, str, str], int] = field(default_factory=dict)
    health: dict[str, str] = field(default_factory=dict)
    # (kind, subject) -> seconds until it expires (negative: expired)
    credentials: dict[tuple[str, str], float] = field(default_factory=dict)
    warn_days: int = 14  # credential_warn_days
    # Days until the school calendar's last term ends (negative: ended); None: not known.
    calendar_days_left: int | None = None


def parse_metrics(text: str, into: Status) -> Status:
    """Fill ``into`` from a Prometheus text exposition of the broker's metrics."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = s.labels
            if s.name == "cairn_disclosures_total":
                key = (labels["sender"], labels["recipient"], labels["purpose"])
                into.flows[key] = int(s.value)
            elif s.name == "cairn_referrals_refused_total":
                into.refused[labels["reason"]] = int(s.value)
            elif s.name == "cairn_consumer_lag":
                into.health[f"lag {labels['agency']}"] = str(int(s.value))
            elif s.name == "cairn_auditor_lag":
                into.health["auditor lag"] = str(int(s.value))
            elif s.name == "cairn_auditor_checkpoint_age_seconds":
                into.health["auditor checkpoint age"] = f"{s.value:.0f} s"
            elif s.name == "cairn_kafka_probe_up":
                into.health["kafka lag probe"] = "answering" if s.value else "no answer"
            elif s.name == "cairn_dlq_offsets":
                into.health["dead letters (offsets)"] = str(int(s.value))
            elif s.name == "cairn_credential_expiry_seconds":
                into.credentials[(labels["kind"], labels["subject"])] = s.value
            elif s.name == "cairn_school_calendar_days_left":
                into.calendar_days_left = int(s.value)
    return into


def horizon_rows(
    view: Status, *, today: date, calendar_days_left: int | None, calendar_warn_days: int
) -> Status:
    """The Health table's rows for what runs out: the registry and the first certificate to
    expire (of the credentials read), and the school calendar's end (``today`` and the days
    left by the calendar's own zone; the broker's figure, when it gave one, wins)."""
    items = [(kind, subject, left) for (kind, subject), left in view.credentials.items()]
    view.health["registry expires"] = expiry_text(soonest(items, REGISTRY_KINDS), view.warn_days)
    view.health["first certificate expires"] = expiry_text(
        soonest(items, CERTIFICATE_KINDS), view.warn_days
    )
    left = view.calendar_days_left if view.calendar_days_left is not None else calendar_days_left
    last = None if left is None else today + timedelta(days=left)
    view.health["school calendar ends"] = calendar_text(last, left, calendar_warn_days)
    return view


async def read_store(store: StateStore, into: Status, *, limit: int = 50) -> Status:
    """The flows, the overdue count and the newest ``limit`` overdue deliveries, from the
    state store (the flows replace any from /metrics: one process's counters start again at a
    restart, the store's do not); the health table names the store and whether it could be
    read."""
    into.health["state store"] = store.describe()
    try:
        overdue = await store.overdue(limit)
        counts = await store.overdue_counts()
        flows = await store.delivery_counts()
    except StateUnavailable as exc:
        into.health["state store read"] = f"unreadable: {exc}"
        return into
    finally:
        await store.close()
    into.flows = dict(flows)
    into.overdue_counts = dict(counts)
    into.overdue = [
        (
            d.overdue_at.isoformat() if d.overdue_at else "",
            d.referral_id,
            d.purpose,
            d.agency,
            d.due_at.isoformat() if d.due_at else "",
            f"late, {d.acknowledged_at.isoformat()}" if d.acknowledged_at else "not yet",
        )
        for d in overdue
    ]
    into.health["state store read"] = "read"
    return into


def overdue_figures(view: Status) -> tuple[int, int]:
    """How many disclosures are overdue, and how many of them were acknowledged late."""
    total = sum(view.overdue_counts.values())
    late = sum(n for (_p, _r, acked), n in view.overdue_counts.items() if acked == OVERDUE_LATE)
    return total, late


def read_key_store(
    folder: Path,
    into: Status,
    *,
    now: datetime,
    public: Path | None = None,
    root_kid: str | None = None,
) -> Status:
    """The credentials' expiry from the public files of the key folder's stores (however
    custody splits them, ``keys.expiry.read_key_folder``), if /metrics gave none."""
    if into.credentials:
        return into
    found, unreadable = read_key_folder(folder, public=public, root_kid=root_kid)
    for c in found:
        into.credentials[(c.kind.value, c.subject)] = c.seconds_left(now)
    into.health["credentials"] = f"read from {folder}"
    for problem in unreadable:
        into.health[f"credentials {problem.name}"] = problem.reason
    return into


def _left(seconds: float) -> str:
    days, rest = divmod(abs(seconds), _DAY_S)
    text = f"{int(days)} d {int(rest // 3600)} h"
    return text if seconds > 0 else f"expired {text} ago"


def credential_warnings(view: Status) -> list[str]:
    """One line per credential expiring within ``warn_days`` (or expired), soonest first,
    naming what renews it."""
    lines = []
    for (kind, subject), seconds in sorted(view.credentials.items(), key=lambda kv: kv[1]):
        if seconds > view.warn_days * _DAY_S:
            continue
        fix = _FIXES.get(kind, "run 'cairn keys refresh'").format(subject=subject)
        when = (
            f"expires in {int(seconds // _DAY_S)} days"
            if seconds > 0
            else f"expired {int(-seconds // _DAY_S)} days ago"
        )
        lines.append(
            f"warning: {kind} {subject} {when} (credential_warn_days {view.warn_days}); {fix}"
        )
    return lines


def render(view: Status, console: Console) -> None:
    """Print the flows, overdue, health and credentials tables, then the expiry warnings."""
    flows = Table(title="Flows (disclosures committed)")
    for col in ("sender", "recipient", "purpose"):
        flows.add_column(col)
    flows.add_column("count", justify="right")
    for (sender, recipient, purpose), n in sorted(view.flows.items()):
        flows.add_row(sender, recipient, purpose, str(n))
    console.print(flows)
    if view.refused:
        refused = Table(title="Submissions refused")
        refused.add_column("reason")
        refused.add_column("count", justify="right")
        for reason, n in sorted(view.refused.items()):
            refused.add_row(reason, str(n))
        console.print(refused)
    total, late = overdue_figures(view)
    overdue = Table(title=f"Overdue disclosures: {total} ({late} acknowledged late), newest first")
    for col in ("overdue at", "referral id", "purpose", "recipient", "due at", "acknowledged"):
        overdue.add_column(col)
    for row in view.overdue:
        overdue.add_row(*row)
    console.print(overdue)
    health = Table(title="Health")
    health.add_column("check")
    health.add_column("state")
    for check, state in view.health.items():
        health.add_row(check, state)
    console.print(health)
    if view.credentials:
        credentials = Table(title="Credentials (soonest to expire first)")
        for col in ("kind", "subject", "expires in", "state"):
            credentials.add_column(col)
        for (kind, subject), seconds in sorted(view.credentials.items(), key=lambda kv: kv[1]):
            if seconds <= 0:
                state = "EXPIRED"
            elif seconds <= view.warn_days * _DAY_S:
                state = "renew soon"
            else:
                state = "ok"
            credentials.add_row(kind, subject, _left(seconds), state)
        console.print(credentials)
    for line in credential_warnings(view):
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def _client_context(settings: Settings, agency: str) -> ssl.SSLContext:
    from broker.trust import custody_of
    from keys import client_context
    from keys.custody import store_of

    # The member's own store (over the published one) and its passphrase (keys.custody).
    custody = custody_of(settings)
    return client_context(
        custody.member_store(agency), agency, custody.passphrase(store_of(agency))
    )


async def _fetch(
    settings: Settings, context: ssl.SSLContext, url: str
) -> tuple[str | None, dict[str, Any]]:
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=settings.readiness_timeout_s * 3)
    connector = aiohttp.TCPConnector(ssl=context)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async with session.get(f"{url}/readyz") as response:
            ready: dict[str, Any] = await response.json()
        async with session.get(f"{url}/metrics") as response:
            text = await response.text() if response.status == 200 else None
    return text, ready


async def _auditor(settings: Settings, context: ssl.SSLContext, url: str) -> str:
    """The auditor's own answer: its latest checkpoint's tree size (the public tlog-tiles
    checkpoint route), or why it gave none."""
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=settings.readiness_timeout_s * 3)
    connector = aiohttp.TCPConnector(ssl=context)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
        session.get(f"{url}/v1/audit/log/checkpoint") as response,
    ):
        if response.status == 404:
            return "answering (no checkpoint signed yet)"
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}")
        lines = (await response.text()).split("\n")
    size = lines[1] if len(lines) > 1 and lines[1].isdigit() else "?"
    return f"answering (checkpoint of {size} entries)"


def _calendar(settings: Settings) -> tuple[date, int | None]:
    """Today in the federation's school calendar's zone, and the days its term dates have left
    (None: no calendar, or none that can be read)."""
    from broker.policy.calendar import CALENDAR_FILE, load_calendar

    try:
        calendar = load_calendar(settings.federation_dir / CALENDAR_FILE)
    except (CairnError, OSError, ValueError):
        return datetime.now(UTC).date(), None
    today = datetime.now(UTC).astimezone(calendar.zone).date()
    return today, calendar.days_left(today)


def _why(exc: BaseException) -> str:
    """An operator's reason: a Cairn error's own message (written to say how to fix it, and
    free of personal data), else the exception's kind."""
    if isinstance(exc, CairnError):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    return type(exc).__name__


def down(view: Status, *, offline: bool) -> list[str]:
    """The checks that make ``cairn status`` exit non-zero: the broker not ready, Kafka not
    reachable, the auditor not answering (online), the state store unreadable (always)."""
    failing = []
    if not offline:
        if view.health.get("broker") != "ready":
            failing.append("broker")
        if view.health.get("kafka") != "reachable":
            failing.append("kafka")
        if not view.health.get("auditor", "").startswith("answering"):
            failing.append("auditor")
    if view.health.get("state store read") != "read":
        failing.append("state store")
    return failing


@click.command("status")
@click.option(
    "--as",
    "agency",
    default="cairn-auditor",
    show_default=True,
    help="Whose certificate to present to the broker",
)
@click.option(
    "--url",
    default=None,
    help="Broker URL [default: CAIRN_BROKER_URL, else https://HTTP_HOST:HTTP_PORT]",
)
@click.option(
    "--auditor-url",
    envvar="CAIRN_AUDITOR_URL",
    default=None,
    help="Auditor URL (or CAIRN_AUDITOR_URL) [default: https://HTTP_HOST:AUDITOR_HTTP_PORT]",
)
@click.option(
    "--offline",
    is_flag=True,
    help="Read the state store and the key store's public files only; do not call the broker",
)
def status(agency: str, url: str | None, auditor_url: str | None, offline: bool) -> None:
    """Flows sender → recipient, overdue disclosures, health and credential expiry, as tables
    (codes and ids only); a warning line for each credential expiring within
    credential_warn_days.

    Exit status: 0 when the broker is ready, Kafka reachable, the auditor answering and the
    state store readable (with --offline: the store alone); 1 when any of them is not, after
    the tables, with a last line naming them."""
    settings = settings_or_exit()
    view = Status(warn_days=settings.credential_warn_days)
    if not offline:
        base = (url or settings.broker_client_url).rstrip("/")  # CAIRN_BROKER_URL, else served
        audit = auditor_url or https_url(settings.http_host, settings.auditor_http_port)
        try:
            context = _client_context(settings, agency)
        except CairnError as exc:  # no passphrase, no store: the message says how to fix it
            view.health["broker"] = view.health["auditor"] = f"not asked: {exc}"
        else:
            try:
                text, ready = asyncio.run(_fetch(settings, context, base))
            except Exception as exc:  # unreachable broker, bad credentials: say so, go on
                view.health["broker"] = f"unreachable ({_why(exc)})"
            else:
                view.health["broker"] = str(ready.get("status", "unknown"))
                view.health["kafka"] = str(ready.get("kafka", "unknown"))
                if text is not None:
                    parse_metrics(text, view)
            try:
                view.health["auditor"] = asyncio.run(_auditor(settings, context, audit))
            except Exception as exc:
                view.health["auditor"] = f"unreachable ({_why(exc)})"
        view.health.setdefault("kafka", "unknown (the broker did not answer)")
    try:
        store = store_for(settings, read_only=True)
    except StateUnavailable as exc:  # a malformed CAIRN_DATABASE_URL: say so, show the rest
        view.health["state store"] = str(exc)
    else:
        asyncio.run(read_store(store, view))
    if view.credentials:
        view.health["credentials"] = "from the broker"
    else:
        read_key_store(
            settings.keys_path,
            view,
            now=datetime.now(UTC),
            # where split custody publishes the registry, if elsewhere (keys.custody)
            public=settings.public_key_dir,
            root_kid=settings.registry_root_kid,
        )
    calendar_today, calendar_left = _calendar(settings)
    horizon_rows(
        view,
        today=calendar_today,
        calendar_days_left=calendar_left,
        calendar_warn_days=settings.calendar_warn_days,
    )
    render(view, Console())
    failing = down(view, offline=offline)
    if failing:
        click.echo(f"status: not healthy: {', '.join(failing)} (see the Health table)", err=True)
        sys.exit(1)
