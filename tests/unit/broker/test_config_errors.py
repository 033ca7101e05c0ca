"""A configuration fault is one line naming the setting as the operator sets it (issue 18).

The environment variable (and the TOML key and file, when a file is in force), never the
pydantic field path alone, never the value given (it may be a password), never a link to a
library's documentation, never a traceback; a CAIRN_CONFIG naming no file is an error.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from broker.cli.status import Status, down
from tests.samples import REPO

CAIRN = [sys.executable, "-m", "broker"]


def run(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in __import__("os").environ.items() if not k.startswith("CAIRN_")}
    clean["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [*CAIRN, *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )


def one_clean_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    assert "errors.pydantic.dev" not in result.stderr
    # One error line (a command may have said which Kafka it uses before it read the rest).
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: configuration is not valid: ")
    assert result.stderr.rstrip().endswith(lines[0])
    return lines[0]


# status --offline reads its settings through settings_or_exit; serve reads them itself (the
# cairn entry point's safety net): both must say the same thing.
@pytest.mark.parametrize("command", [("status", "--offline"), ("serve",)])
def test_a_named_config_file_that_does_not_exist_is_an_error(
    command: tuple[str, ...], tmp_path: Path
) -> None:
    missing = tmp_path / "cairn.toml"
    line = one_clean_line(run({"CAIRN_CONFIG": str(missing)}, *command, cwd=tmp_path))
    assert f"CAIRN_CONFIG names {missing}, which does not exist" in line


def test_a_config_folder_is_not_a_config_file(tmp_path: Path) -> None:
    line = one_clean_line(run({"CAIRN_CONFIG": str(tmp_path)}, "status", "--offline", cwd=tmp_path))
    assert "which is a folder" in line


@pytest.mark.parametrize("command", [("status", "--offline"), ("serve",)])
def test_a_bad_variable_is_named_as_a_variable_and_its_value_not_echoed(
    command: tuple[str, ...], tmp_path: Path
) -> None:
    line = one_clean_line(run({"CAIRN_HTTP_PORT": "s3cret-value"}, *command, cwd=tmp_path))
    assert "CAIRN_HTTP_PORT: Input should be a valid integer" in line
    assert "s3cret-value" not in line
    assert "http_port\n" not in line


def test_a_bad_key_in_the_file_names_the_variable_the_key_and_the_file(tmp_path: Path) -> None:
    config = tmp_path / "cairn.toml"
    config.write_text('http_port = "eighty"\nhttp_prot = 1\n')
    line = one_clean_line(run({"CAIRN_CONFIG": str(config)}, "status", "--offline", cwd=tmp_path))
    assert f"CAIRN_HTTP_PORT (or http_port in {config})" in line
    assert f"http_prot (in {config}) is not a setting" in line
    assert "eighty" not in line


def test_the_local_cairn_toml_is_found_and_checked_too(tmp_path: Path) -> None:
    (tmp_path / "cairn.toml").write_text("http_port = 70000\n")
    line = one_clean_line(run({}, "status", "--offline", cwd=tmp_path))
    assert "CAIRN_HTTP_PORT (or http_port in cairn.toml): Input should be less than" in line


def test_a_file_that_is_not_toml_says_where(tmp_path: Path) -> None:
    config = tmp_path / "cairn.toml"
    config.write_text("http_port = \n")
    line = one_clean_line(run({"CAIRN_CONFIG": str(config)}, "serve", cwd=tmp_path))
    assert f"{config} is not valid TOML" in line


def test_the_gateway_settings_are_named_with_their_own_prefix(tmp_path: Path) -> None:
    env = {"CAIRN_STATE_DIR": str(tmp_path), "CAIRN_GATEWAY_PAGE_LIMIT_MAX": "many"}
    line = one_clean_line(run(env, "gateway", "--as", "kelder-idva", cwd=tmp_path))
    assert "CAIRN_GATEWAY_PAGE_LIMIT_MAX: Input should be a valid integer" in line


def test_status_is_healthy_only_when_broker_kafka_auditor_and_store_answer() -> None:
    healthy = {
        "broker": "ready",
        "kafka": "reachable",
        "auditor": "answering (checkpoint of 3 entries)",
        "state store read": "read",
    }
    assert down(Status(health=dict(healthy)), offline=False) == []
    for check, bad in [
        ("broker", "not ready"),
        ("kafka", "unreachable"),
        ("auditor", "unreachable (ClientConnectorError)"),
        ("state store read", "unreadable: gone"),
    ]:
        view = Status(health={**healthy, check: bad})
        expected = "state store" if check == "state store read" else check
        assert down(view, offline=False) == [expected]
    # Offline, only the store is asked.
    assert down(Status(health={"state store read": "read"}), offline=True) == []


def test_status_exits_non_zero_and_says_how_to_fix_a_missing_passphrase(tmp_path: Path) -> None:
    env = {
        "CAIRN_STATE_DIR": str(tmp_path / "state"),
        "CAIRN_KEY_DIR": str(tmp_path / "keys"),
        "CAIRN_HTTP_PORT": "1",
        "CAIRN_AUDITOR_HTTP_PORT": "1",
    }
    result = run(env, "status", cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    assert "status: not healthy: broker, kafka, auditor, state store" in result.stderr
    flat = " ".join(result.stdout.split())
    assert "CAIRN_KEY_PASSPHRASE" in flat  # the fix, not an empty table or a class name
