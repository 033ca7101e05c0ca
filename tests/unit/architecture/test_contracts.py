"""The architecture's rules are executable: the import contracts hold, and breaking one fails."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parents[3]
PACKAGES = ("broker", "schemas", "adapters", "keys", "gateway")
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
    """A copy of the five packages and the contracts, to break without touching the repo."""
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
        ("broker/policy/redaction.py", "import broker.audit.store", "the sharing policy knows"),
        ("schemas/fields.py", "import keys", "messages are the bottom layer"),
        ("broker/cli/common.py", "import keys", "what every command shares"),
        ("gateway/service.py", "import broker.ingest", "the gateway is agency-side"),
        ("gateway/api.py", "import broker.web.problems", "the gateway is agency-side"),
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
    broken = [s for s in result.stdout.splitlines() if " BROKEN" in s]  # maybe "(n ignored)"
    assert any(s.startswith(contract) for s in broken), result.stdout


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each an import circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = []
            while True:
                top = stack.pop()
                group.append(top)
                if top == module:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_module_imports_itself_through_others() -> None:
    """No import circles anywhere in the five packages, lazy imports inside functions included."""
    graph = grimp.build_graph(*PACKAGES)
    assert _cycles(graph) == []


def test_the_cycle_finder_sees_a_circle() -> None:
    """The circle finder is not vacuous: a circle of three modules is found, a chain is not."""
    graph = grimp.ImportGraph()
    for name in ("a", "b", "c", "d"):
        graph.add_module(name)
    graph.add_import(importer="a", imported="b")
    graph.add_import(importer="b", imported="c")
    graph.add_import(importer="c", imported="d")
    assert _cycles(graph) == []
    graph.add_import(importer="c", imported="a")
    assert _cycles(graph) == [["a", "b", "c"]]
