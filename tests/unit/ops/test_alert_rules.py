"""The Prometheus alert rules in deploy/prometheus are valid, do what their tests say, and only
name metrics Cairn exports.

``promtool`` comes from Debian's prometheus package (``make test`` installs it, as it does
chromium); without it these tests fail rather than skip, because an alert file nobody checked
is an alert that may never fire.
"""

from __future__ import annotations

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
