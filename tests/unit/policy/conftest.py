"""Fixtures for the policy tests: every code decided has words, and the ``cairn policy`` runner.

``every_code_has_words`` wraps the engine's ``decide`` for the whole package, wherever a test
module or the CLI imported it: each decision made (and each refusal raised) by any policy test
must name only rule codes that ``broker.policy.rules`` explains, so a new code without its
sentence and citation fails the test that first produces it, naming the code.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from broker.cli.policy import policy
from broker.policy import decide as engine
from broker.policy.refusals import refusal
from broker.policy.rules import explain
from schemas.errors import InputError
from tests.samples import FEDERATION_DIR


def assert_explained(codes: Iterable[str]) -> None:
    """Each code has a sentence and a citation of its own in the rules table."""
    unknown = [c for c in codes if not explain(c).known]
    assert unknown == [], f"rule codes with no sentence in broker/policy/rules.py: {unknown}"


@pytest.fixture(scope="package", autouse=True)
def every_code_has_words() -> Iterator[None]:
    """Every decision a policy test makes names only rule codes that have words."""
    real = engine.decide

    def checked(*args: Any, **kwargs: Any) -> list[engine.Decision]:
        try:
            decisions = real(*args, **kwargs)
        except InputError as exc:
            assert_explained(refusal(exc).reasons)
            raise
        for d in decisions:
            assert_explained((*d.reasons, *d.rules))
        return decisions

    with pytest.MonkeyPatch.context() as patch:
        for module in list(sys.modules.values()):
            name = getattr(module, "__name__", "")
            if name.startswith(("tests.", "broker.")) and getattr(module, "decide", None) is real:
                patch.setattr(module, "decide", checked)
        yield


Run = Callable[..., Result]


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch) -> Run:
    """Invoke ``cairn policy ...`` over a given federation folder, from a clean environment."""
    monkeypatch.delenv("CAIRN_CONFIG", raising=False)
    monkeypatch.chdir(FEDERATION_DIR)  # no cairn.toml here

    def invoke(*args: str, folder: Path = FEDERATION_DIR) -> Result:
        monkeypatch.setenv("CAIRN_FEDERATION_DIR", str(folder))
        return CliRunner().invoke(policy, list(args))

    return invoke
