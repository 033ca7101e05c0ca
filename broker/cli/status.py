"""``cairn status``: the ops picture in the terminal: flows, overdue disclosures, health.

Reads the broker's ``GET /metrics`` and ``GET /readyz`` over mutual TLS with an agency's (or
the auditor's) certificate, and the overdue list from the broker's replay store (read-only);
with ``--offline`` it reads the store alone. Prints codes, ids and counts only: the metrics and
the store hold no personal data.
"""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from broker.config import Settings

__all__ = ["Status", "parse_metrics", "read_store", "render", "status"]


@dataclass
class Status:
    """What ``cairn status`` shows, from whichever sources answered."""

    flows: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (from, to, purpose)
    refused: dict[str, int] = field(default_factory=dict)  # reason -> submissions
    overdue: list[tuple[str, str, str, str, str]] = field(default_factory=list)
    health: dict[str, str] = field(default_factory=dict)


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
    return into


def read_store(path: Path, into: Status, *, limit: int = 50) -> Status:
    """Overdue deliveries, newest first, from the replay store, opened read-only."""
    if not path.is_file():
        into.health["replay store"] = "not found"
        return into
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2.0)
    try:
        rows = db.execute(
            "SELECT overdue_at, referral_id, purpose, agency, due_at FROM deliveries "
            "WHERE overdue_at IS NOT NULL ORDER BY overdue_at DESC, referral_id DESC LIMIT ?",
            (limit,),
        ).fetchall()
        if not into.flows:
            for sender, agency, purpose, n in db.execute(
                "SELECT sender, agency, purpose, COUNT(*) FROM deliveries "
                "GROUP BY sender, agency, purpose"
            ):
                into.flows[(sender, agency, purpose)] = int(n)
    except sqlite3.Error as exc:
        into.health["replay store"] = f"unreadable ({type(exc).__name__})"
        return into
    finally:
        db.close()
    into.overdue = [(r[0], r[1], r[2], r[3], r[4] or "") for r in rows]
    into.health.setdefault("replay store", "read")
    return into


def render(view: Status, console: Console) -> None:
    """Print the flows, overdue and health tables."""
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
    overdue = Table(title="Overdue disclosures (newest first)")
    for col in ("overdue at", "referral id", "purpose", "recipient", "due at"):
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


async def _fetch(settings: Settings, agency: str, url: str) -> tuple[str | None, dict[str, Any]]:
    import aiohttp

    from keys import FileStore, client_context, passphrase_from_env

    context = client_context(FileStore(settings.keys_path), agency, passphrase_from_env())
    timeout = aiohttp.ClientTimeout(total=settings.readiness_timeout_s * 3)
    connector = aiohttp.TCPConnector(ssl=context)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async with session.get(f"{url}/readyz") as response:
            ready: dict[str, Any] = await response.json()
        async with session.get(f"{url}/metrics") as response:
            text = await response.text() if response.status == 200 else None
    return text, ready


@click.command("status")
@click.option(
    "--as",
    "agency",
    default="cairn-auditor",
    show_default=True,
    help="Whose certificate to present to the broker",
)
@click.option("--url", default=None, help="Broker URL [default: https://HTTP_HOST:HTTP_PORT]")
@click.option("--offline", is_flag=True, help="Read the replay store only; do not call the broker")
def status(agency: str, url: str | None, offline: bool) -> None:
    """Flows sender → recipient, overdue disclosures and health, as tables (codes and ids only)."""
    settings = Settings()
    view = Status()
    if not offline:
        base = url or f"https://{settings.http_host}:{settings.http_port}"
        try:
            text, ready = asyncio.run(_fetch(settings, agency, base))
        except Exception as exc:  # unreachable broker, bad credentials: say so, show the store
            view.health["broker"] = f"unreachable ({type(exc).__name__})"
        else:
            view.health["broker"] = str(ready.get("status", "unknown"))
            view.health["kafka"] = str(ready.get("kafka", "unknown"))
            if text is not None:
                parse_metrics(text, view)
    read_store(settings.state_dir / "broker" / "replay.sqlite", view)
    render(view, Console())
