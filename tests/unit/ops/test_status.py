"""``cairn status``: the ops picture parsed from /metrics and the state store, as tables."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from rich.console import Console

from broker.cli.status import Status, overdue_figures, parse_metrics, read_store, render
from broker.ops.metrics import Metrics
from broker.state import Delivery, SqliteStore

AT = datetime(2026, 11, 26, 6, 0, tzinfo=UTC)
LATE = timedelta(hours=5)  # after the deadline (AT + 1 h) and the sweep (AT + 2 h)


async def test_status_shows_flows_overdue_newest_first_and_health(tmp_path: Path) -> None:
    """Flows and overdue items come from the store (overdue newest first, with the count and
    whether each was acknowledged late), never from one process's counters: this broker
    counted 3 IDVA disclosures since it started, the store holds every broker's history."""
    metrics = Metrics()
    metrics.disclosures.labels(sender="kelder-police", recipient="kelder-idva", purpose="IDVA").inc(
        3
    )
    path = tmp_path / "state.sqlite"
    store = SqliteStore(path)
    for n, agency in enumerate(("kelder-marac", "kelder-idva")):
        rid = f"00000000-0000-0000-0000-00000000000{n}"
        await store.record_deliveries(
            [Delivery(rid, agency, "MARAC", "kelder-police", AT, AT + timedelta(hours=1))]
        )
        await store.mark_overdue(rid, agency, AT + timedelta(hours=2 + n))
    await store.remember_ack("00000000-0000-0000-0000-000000000000", "kelder-marac", AT + LATE)
    await store.close()
    view = await read_store(
        SqliteStore(path, read_only=True), parse_metrics(metrics.render().decode(), Status())
    )
    assert view.flows == {
        ("kelder-police", "kelder-marac", "MARAC"): 1,
        ("kelder-police", "kelder-idva", "MARAC"): 1,
    }
    assert [row[3] for row in view.overdue] == ["kelder-idva", "kelder-marac"]
    assert [row[5] for row in view.overdue] == ["not yet", f"late, {(AT + LATE).isoformat()}"]
    assert overdue_figures(view) == (2, 1)
    assert view.health["state store"] == f"sqlite {path} (read-only)"
    assert view.health["state store read"] == "read"
    console = Console(record=True, width=160)
    render(view, console)
    text = console.export_text()
    assert "kelder-idva" in text
    assert "Overdue disclosures: 2 (1 acknowledged late)" in text


async def test_status_says_which_store_it_could_not_read(tmp_path: Path) -> None:
    """A store that is not there is named in the health table, and nothing else breaks."""
    view = await read_store(SqliteStore(tmp_path / "none.sqlite", read_only=True), Status())
    assert view.health["state store"] == f"sqlite {tmp_path / 'none.sqlite'} (read-only)"
    assert "does not exist" in view.health["state store read"]
    assert view.overdue == []
