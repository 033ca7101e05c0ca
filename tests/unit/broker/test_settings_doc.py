"""The README documents every CAIRN_* setting, generated from the settings models (issue 18)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from broker.cli.main import cli
from broker.cli.settings_doc import (
    BEGIN,
    END,
    kafka_local_variables,
    reference,
    replaced,
    settings_models,
    settings_of,
)
from tests.samples import REPO

README = REPO / "README.md"
CODE = ("broker", "gateway", "adapters", "keys", "schemas")
SCRIPTS = (REPO / "deploy" / "kafka" / "kafka-local", REPO / "deploy" / "kafka" / "with-kafka")
VARIABLE = re.compile(r"CAIRN_[A-Z0-9_]*[A-Z0-9]")


def test_the_readme_section_is_what_the_models_generate() -> None:
    text = README.read_text(encoding="utf-8")
    assert replaced(text, reference()) == text, "run 'cairn schemas settings' and commit"


def test_every_setting_says_what_it_does() -> None:
    for cls in settings_models():
        for s in settings_of(cls):
            assert s.what, f"{s.variable}: give it a description (or a comment beside it)"
            assert s.group or cls.__name__ != "Settings", s.variable


def test_every_variable_the_code_reads_is_documented() -> None:
    section = reference()
    used: set[str] = set()
    for package in CODE:
        for path in (REPO / package).rglob("*.py"):
            used.update(VARIABLE.findall(path.read_text(encoding="utf-8")))
    for script in SCRIPTS:
        used.update(VARIABLE.findall(script.read_text(encoding="utf-8")))
    documented = set(re.findall(r"`(CAIRN_[A-Z0-9_]+)`", section))
    # Prefixes (CAIRN_GATEWAY_...) are not variables; CAIRN_TEST_* are test-only fault hooks.
    missing = {
        v
        for v in used - documented
        if not v.startswith("CAIRN_TEST_") and not any(d.startswith(v + "_") for d in documented)
    }
    assert not missing, f"documented nowhere in the settings reference: {sorted(missing)}"


class Sample(BaseSettings):
    """A model as the house writes them."""

    model_config = SettingsConfigDict(env_prefix="CAIRN_SAMPLE_")

    # Timing (issue 99): how long things take
    wait_s: float = Field(default=1.5, gt=0)  # seconds to wait
    tries: int = 3  # attempts; the last one
    # runs on below the field

    # Names
    label: str = Field(default="x", description="What it is called")
    secret: str | None = None  # never shown


def test_a_field_gets_its_description_or_its_comment_and_its_group() -> None:
    rows = {s.variable: s for s in settings_of(Sample)}
    assert rows["CAIRN_SAMPLE_WAIT_S"].what == "seconds to wait"
    assert rows["CAIRN_SAMPLE_WAIT_S"].group == "Timing"
    assert rows["CAIRN_SAMPLE_WAIT_S"].default == "1.5"
    assert rows["CAIRN_SAMPLE_TRIES"].what == "attempts; the last one runs on below the field"
    assert rows["CAIRN_SAMPLE_LABEL"].what == "What it is called"
    assert rows["CAIRN_SAMPLE_LABEL"].group == "Names"
    assert rows["CAIRN_SAMPLE_SECRET"].default == "unset"


def test_the_local_kafka_script_variables_come_with_their_defaults() -> None:
    found = {name: (default, what) for name, default, what in kafka_local_variables()}
    assert found["CAIRN_KAFKA_PORT"][0] == "9092"
    assert found["CAIRN_KAFKA_START_TIMEOUT"] == ("90", "seconds to wait for readiness")
    assert "JAVA_HOME" not in found


def test_check_fails_on_a_stale_section_and_writing_fixes_it(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\n{BEGIN}\n| `CAIRN_OLD` | 1 | gone |\n{END}\n\nAfter.\n")
    runner = CliRunner()
    stale = runner.invoke(cli, ["schemas", "settings", "--readme", str(readme), "--check"])
    assert stale.exit_code == 1
    assert "out of date" in stale.output
    assert runner.invoke(cli, ["schemas", "settings", "--readme", str(readme)]).exit_code == 0
    text = readme.read_text()
    assert "CAIRN_OLD" not in text
    assert "`CAIRN_HTTP_PORT`" in text
    assert text.startswith("# Title\n\n")
    assert text.endswith("\n\nAfter.\n")
    fresh = runner.invoke(cli, ["schemas", "settings", "--readme", str(readme), "--check"])
    assert fresh.exit_code == 0


def test_a_readme_without_the_markers_is_a_clear_error(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n")
    result = CliRunner().invoke(cli, ["schemas", "settings", "--readme", str(readme)])
    assert result.exit_code == 1
    assert "has no" in result.output
    with pytest.raises(ValueError, match="has no"):
        replaced("nothing", "x")
