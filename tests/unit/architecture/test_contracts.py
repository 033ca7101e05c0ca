"""The architecture's rules are executable: the import contracts hold, and breaking one fails."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
PACKAGES = ("broker", "schemas", "adapters", "keys")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the four packages and the contracts, to break without touching the repo."""
    root = tmp_path_factory.mktemp("tree")
    for package in PACKAGES:
        shutil.copytree(
            REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


def _break(tree: Path, module: str, line: str) -> None:
    path = tree / module
    path.write_text(path.read_text(encoding="utf-8") + f"\n{line}\n", encoding="utf-8")


def test_the_contracts_hold_for_the_tree() -> None:
    """Every import contract in pyproject.toml is kept by the code as it stands."""
    result = _lint(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("broker/policy/calendar.py", "import aiohttp", "the pure core imports no web"),
        ("schemas/referral.py", "import aiokafka", "the pure core imports no web"),
        ("broker/policy/agreements.py", "import sqlite3", "the pure core imports no web"),
        ("broker/kafka/topics.py", "import broker.web.app", "the broker's rooms are layered"),
        ("broker/policy/redaction.py", "import broker.audit.log", "the sharing policy knows"),
        ("schemas/fields.py", "import keys", "messages are the bottom layer"),
    ],
)
def test_breaking_a_contract_fails_the_lint(
    tree: Path, module: str, line: str, contract: str
) -> None:
    """An import the architecture forbids makes lint-imports fail and names the contract."""
    original = (tree / module).read_text(encoding="utf-8")
    _break(tree, module, line)
    try:
        result = _lint(tree)
    finally:
        (tree / module).write_text(original, encoding="utf-8")
    assert result.returncode != 0
    broken = [s for s in result.stdout.splitlines() if s.endswith("BROKEN")]
    assert any(s.startswith(contract) for s in broken), result.stdout
