"""The 'cairn keys' commands: help for each, clear one-line errors, and the full lifecycle."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from keys.cli import keys
from tests.samples import FEDERATION_DIR
from tests.unit.keys.conftest import PASSPHRASE


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.chdir(tmp_path)  # no stray cairn.toml
    return {
        "CAIRN_STATE_DIR": str(tmp_path / "state"),
        "CAIRN_FEDERATION_DIR": str(FEDERATION_DIR),
        "CAIRN_KEY_PASSPHRASE": PASSPHRASE.decode(),
    }


def _run(args: list[str], env: dict[str, str]) -> Result:
    return CliRunner().invoke(keys, args, env=env, catch_exceptions=False)


@pytest.mark.parametrize("command", [[], ["init"], ["list"], ["rotate"], ["revoke"], ["refresh"]])
def test_every_command_has_help(command: list[str]) -> None:
    """Each command answers --help with a usage text and exit status 0."""
    result = CliRunner().invoke(keys, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.output


def test_init_list_rotate_revoke(env: dict[str, str], tmp_path: Path) -> None:
    """init creates the federation, list shows it, rotate and revoke re-sign it."""
    created = _run(["init"], env)
    assert created.exit_code == 0, created.output
    assert "10 members" in created.output
    assert (tmp_path / "state" / "keys" / "registry.jws").is_file()

    listed = _run(["list"], env)
    assert listed.exit_code == 0, listed.output
    assert "kelder-police (police)" in listed.output
    assert "cairn-broker (broker)" in listed.output

    rotated = _run(["rotate", "--agency", "kelder-police"], env)
    assert rotated.exit_code == 0, rotated.output
    new_kid = rotated.output.split("new sig key ")[1].split()[0]
    assert "serial 2" in rotated.output

    revoked = _run(["revoke", "--agency", "kelder-police", "--kid", new_kid], env)
    assert revoked.exit_code == 0, revoked.output
    assert "serial 3" in revoked.output
    assert "revoked" in _run(["list"], env).output

    refreshed = _run(["refresh"], env)
    assert "serial 4" in refreshed.output


def test_init_twice_is_refused_cleanly(env: dict[str, str]) -> None:
    """A second init exits 1 with one line saying the federation is never overwritten."""
    assert _run(["init"], env).exit_code == 0
    again = _run(["init"], env)
    assert again.exit_code == 1
    assert "never overwritten" in again.output
    assert "Traceback" not in again.output


def test_a_missing_passphrase_is_a_clear_error(env: dict[str, str]) -> None:
    """Without CAIRN_KEY_PASSPHRASE(_FILE) init says how to supply one, and writes nothing."""
    del env["CAIRN_KEY_PASSPHRASE"]
    result = _run(["init"], env)
    assert result.exit_code == 1
    assert "CAIRN_KEY_PASSPHRASE" in result.output
    assert not Path(env["CAIRN_STATE_DIR"]).exists()


def test_errors_for_unknown_members_and_missing_stores(env: dict[str, str]) -> None:
    """Listing before init, or rotating an unknown agency, is one clear line, not a traceback."""
    before = _run(["list"], env)
    assert before.exit_code == 1
    assert "cairn keys init" in before.output
    assert _run(["init"], env).exit_code == 0
    unknown = _run(["rotate", "--agency", "nobody"], env)
    assert unknown.exit_code == 1
    assert "'nobody' is not a member" in unknown.output
