"""Metrics across workers: counts are summed over every worker, deployment figures never are.

Two workers are simulated in this process: each ``Metrics`` gets prometheus-client's
multiprocess values under a process id of its own, as two worker processes would (the real
processes are driven by tests/e2e/test_workers.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import values
from prometheus_client.multiprocess import mark_process_dead

from broker.ops.health import AuditorAnswer
from broker.ops.metrics import Metrics

ACCEPTED = "cairn_referrals_accepted_total"
LABELS = {"sender": "kelder-police", "purpose": "MARAC"}
AGE = "cairn_auditor_checkpoint_age_seconds"


@pytest.fixture
def worker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Callable[[int], Metrics]]:
    """Metrics as worker ``pid`` of one supervisor would make them (one shared folder)."""
    folder = tmp_path / "metrics"
    folder.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(folder))
    classes: list[type] = []

    def make(pid: int) -> Metrics:
        value_class = values.MultiProcessValue(lambda: pid)  # type: ignore[no-untyped-call]
        classes.append(value_class)
        monkeypatch.setattr(values, "ValueClass", value_class)
        return Metrics(multiprocess_dir=folder)

    yield make
    for value_class in classes:
        value_class.close_all_files()  # type: ignore[attr-defined]


def test_counters_and_histograms_are_summed_over_workers(
    worker: Callable[[int], Metrics],
) -> None:
    """Whichever worker answers /metrics, it shows both workers' counts and observations."""
    first, second = worker(1001), worker(1002)
    for _ in range(3):
        first.accepted.labels(**LABELS).inc()
    for _ in range(2):
        second.accepted.labels(**LABELS).inc()
    first.submission_seconds.labels(outcome="accepted").observe(0.01)
    second.submission_seconds.labels(outcome="accepted").observe(0.02)
    second.received.inc(5)
    for metrics in (first, second):
        assert metrics.exposed.get_sample_value(ACCEPTED, LABELS) == 5.0
        assert metrics.exposed.get_sample_value("cairn_referrals_received_total") == 5.0
        count = metrics.exposed.get_sample_value(
            "cairn_submission_seconds_count", {"outcome": "accepted"}
        )
        assert count == 2.0
        text = metrics.render().decode()
        assert 'cairn_referrals_accepted_total{purpose="MARAC",sender="kelder-police"} 5.0' in text
    assert first.registry.get_sample_value(ACCEPTED, LABELS) == 3.0  # its own, unchanged


def test_figures_about_the_deployment_are_shown_once_not_summed(
    worker: Callable[[int], Metrics],
) -> None:
    """The checkpoint's age is the same fact in every worker: one sample, not one per worker."""
    first, second = worker(2001), worker(2002)
    for metrics in (first, second):
        metrics.auditor_now = AuditorAnswer(True, 5, checkpoint_age_s=7)
    assert first.exposed.get_sample_value(AGE) == 7.0
    lines = [s for s in second.render().decode().splitlines() if s.startswith(AGE)]
    assert len(lines) == 1


def test_a_dead_workers_counts_stay_in_the_totals(worker: Callable[[int], Metrics]) -> None:
    """A worker that exits (and is marked dead) still counts: its referrals were accepted."""
    first, second = worker(3001), worker(3002)
    first.accepted.labels(**LABELS).inc(4)
    second.accepted.labels(**LABELS).inc()
    assert second.multiprocess_dir is not None
    mark_process_dead(3001, str(second.multiprocess_dir))  # type: ignore[no-untyped-call]
    assert second.exposed.get_sample_value(ACCEPTED, LABELS) == 5.0


def test_multiprocess_metrics_need_the_folder_set_before_import(tmp_path: Path) -> None:
    """Asking for summed metrics in a process without multiprocess values is a clear error."""
    with pytest.raises(RuntimeError, match="PROMETHEUS_MULTIPROC_DIR"):
        Metrics(multiprocess_dir=tmp_path)


def test_one_process_keeps_its_own_registry() -> None:
    """Without a folder (one worker, the default) /metrics is this process's registry."""
    metrics = Metrics()
    assert metrics.exposed is metrics.registry
    metrics.accepted.labels(**LABELS).inc()
    assert metrics.exposed.get_sample_value(ACCEPTED, LABELS) == 1.0
