"""Configuration precedence: CAIRN_* environment over the TOML file over defaults."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from broker.config import Settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from no CAIRN_* variables, whatever the shell running pytest set."""
    for name in [n for n in os.environ if n.startswith("CAIRN_")]:
        monkeypatch.delenv(name)


def test_defaults_suit_local_development(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """With no file and no environment the broker talks to local Kafka on loopback."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CAIRN_CONFIG", raising=False)
    s = Settings()
    assert s.kafka_bootstrap_servers == "127.0.0.1:9092"
    assert s.http_host == "127.0.0.1"
    assert s.max_body_bytes == 1_048_576


def test_environment_beats_file_beats_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A value in the TOML file overrides the default; the environment overrides both."""
    toml = tmp_path / "cairn.toml"
    toml.write_text('kafka_bootstrap_servers = "kafka-a:9092,kafka-b:9092"\nmax_recipients = 4\n')
    monkeypatch.setenv("CAIRN_CONFIG", str(toml))
    monkeypatch.setenv("CAIRN_MAX_RECIPIENTS", "7")
    s = Settings()
    assert s.kafka_bootstrap_servers == "kafka-a:9092,kafka-b:9092"
    assert s.max_recipients == 7


def test_secrets_are_masked_in_show(monkeypatch: pytest.MonkeyPatch) -> None:
    """'cairn config show' never prints a password."""
    monkeypatch.setenv("CAIRN_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("CAIRN_KAFKA_SASL_MECHANISM", "SCRAM-SHA-256")
    monkeypatch.setenv("CAIRN_KAFKA_SASL_USERNAME", "cairn-broker")
    monkeypatch.setenv("CAIRN_KAFKA_SASL_PASSWORD", "hunter2")
    shown = Settings().shown()
    assert shown["kafka_sasl_password"] == "********"
    assert "hunter2" not in repr(shown)


def test_unknown_setting_in_file_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A typo in the TOML file is an error, not silently ignored."""
    toml = tmp_path / "cairn.toml"
    toml.write_text("max_recipeints = 4\n")
    monkeypatch.setenv("CAIRN_CONFIG", str(toml))
    with pytest.raises(ValidationError):
        Settings()


@pytest.mark.parametrize(
    ("setting", "value", "words"),
    [
        ("CAIRN_CLAIM_LEASE_S", "20", "claim_lease_s (20) must be at least twice"),
        ("CAIRN_REPLAY_WINDOW_S", "360", "replay_window_s (360) must be more than"),
    ],
)
def test_windows_shorter_than_what_they_guard_are_refused(
    monkeypatch: pytest.MonkeyPatch, setting: str, value: str, words: str
) -> None:
    """A claim lease shorter than two publishes, or a replay window (after which the shared
    state forgets referral ids) within a signature's usable age, is refused with its name."""
    monkeypatch.setenv(setting, value)
    with pytest.raises(ValidationError, match=re.escape(words)):
        Settings()
