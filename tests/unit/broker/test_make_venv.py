"""The first ``make demo`` (or ``make test``) says what its quiet pip install does and how long
it took (issue 18): the venv recipe run for real against a stand-in pip in a folder of its own."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from broker.config import REPO_ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def _make(tmp_path: Path, pip_exit: int) -> subprocess.CompletedProcess[str]:
    venv = tmp_path / "venv"
    venv.mkdir()
    pip = venv / "pip"
    pip.write_text(f'#!/bin/sh\necho pip "$@" >> {tmp_path / "pip.log"}\nexit {pip_exit}\n')
    pip.chmod(0o755)
    stamp = venv / ".installed"
    return subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-C",
            str(REPO_ROOT),
            str(stamp),
            f"STAMP={stamp}",
            f"VENV={venv}",
            f"BIN={venv}",
            "PYTHON=true",  # 'true -m venv DIR': the venv is the folder above
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_install_says_what_it_installs_and_how_long_it_took(tmp_path: Path) -> None:
    done = _make(tmp_path, 0)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    (intro,) = [line for line in lines if line.startswith("==> installing Cairn into")]
    count = len(re.findall(r"==", (REPO_ROOT / "constraints.txt").read_text()))
    assert f"its {count} pinned packages" in intro
    assert "the first time takes a few minutes" in intro
    assert any(re.fullmatch(r"==> installed in \d+ s", line) for line in lines)
    assert (tmp_path / "venv" / ".installed").exists()
    calls = (tmp_path / "pip.log").read_text().splitlines()
    assert calls[-1] == "pip install --quiet -c constraints.txt -e .[dev]"


def test_a_failed_install_fails_make_and_claims_no_time(tmp_path: Path) -> None:
    done = _make(tmp_path, 1)
    assert done.returncode != 0
    assert "==> installed in" not in done.stdout
    assert not (tmp_path / "venv" / ".installed").exists()
