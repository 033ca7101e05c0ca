"""The Prometheus alert rules in deploy/prometheus and the Grafana dashboard in deploy/grafana are
valid, the rules do what their tests say, and both only name metrics Cairn exports.

``promtool`` comes from Debian's prometheus package (``make test`` installs it, as it does
chromium); without it these tests fail rather than skip, because an alert file nobody checked
is an alert that may never fire.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

import broker.ops.metrics

RULES_DIR = Path(__file__).resolve().parents[3] / "deploy" / "prometheus"
RULES = RULES_DIR / "cairn-rules.yml"
RULE_TESTS = RULES_DIR / "cairn-rules.test.yml"


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is missing: apt-get install prometheus (make test does it)")
    return found


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_promtool(), *args], cwd=RULES_DIR, capture_output=True, text=True, timeout=60
    )


def test_promtool_accepts_the_rules() -> None:
    result = _run("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rules_pass_their_unit_tests() -> None:
    result = _run("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_refuses_a_rule_whose_test_no_longer_holds(tmp_path: Path) -> None:
    """The rule tests can fail: a threshold moved without its test is caught."""
    changed = RULES.read_text().replace("cairn_auditor_lag > 0", "cairn_auditor_lag > 100")
    (tmp_path / RULES.name).write_text(changed)
    (tmp_path / RULE_TESTS.name).write_text(RULE_TESTS.read_text())
    result = subprocess.run(
        [_promtool(), "test", "rules", RULE_TESTS.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "CairnAuditorLag" in result.stdout + result.stderr


def _exported() -> set[str]:
    """Every metric name broker.ops.metrics defines (counters are scraped with ``_total``)."""
    source = Path(broker.ops.metrics.__file__).read_text()
    names = set(re.findall(r'"(cairn_[a-z_]+)"', source))
    return names | {f"{n}_total" for n in names}


def test_every_rule_names_a_metric_cairn_exports() -> None:
    exported = _exported() | {"up"}
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            used = set(re.findall(r"\b(cairn_[a-z_]+|up)\b(?=\s*[{\[)<>=!]|\s*$)", rule["expr"]))
            assert used, rule["alert"]
            assert used <= exported, (rule["alert"], used - exported)


def test_every_alert_is_tested() -> None:
    alerts = {
        rule["alert"]
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
    }
    tested = {
        case["alertname"]
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", ())
    }
    assert alerts == tested


DASHBOARD = RULES_DIR.parent / "grafana" / "cairn-dashboard.json"


def _dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


def test_the_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses every dashboard query (as recording rules), so none shows 'bad query'."""
    exprs = _dashboard_exprs()
    assert exprs
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"cairn:dashboard_{i}", "expr": e} for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump(rules))
    result = subprocess.run(
        [_promtool(), "check", "rules", "dashboard.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboard_shows_only_metrics_cairn_exports() -> None:
    exported = _exported()
    for expr in _dashboard_exprs():
        used = {n.removesuffix("_bucket") for n in re.findall(r"\bcairn_[a-z_]+", expr)}
        assert used, expr
        assert used <= exported, (expr, used - exported)
