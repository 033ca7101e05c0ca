"""The README's `cairn policy explain` example is what the command prints today."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tests.samples import FEDERATION_DIR

README = Path(__file__).resolve().parents[3] / "README.md"
_EXAMPLE = re.compile(
    r"\(`cairn policy explain (?P<sample>deploy/federation/samples/\S+) --now (?P<now>\S+)`\):"
    r"\n\n```\n(?P<output>.*?)\n```",
    re.DOTALL,
)


def test_the_readme_shows_the_current_explain_output(run: Any) -> None:
    """The output pasted in the README matches a run of the same command, line for line."""
    found = _EXAMPLE.search(README.read_text(encoding="utf-8"))
    assert found is not None, "the README has no `cairn policy explain` example"
    sample = FEDERATION_DIR.parent.parent / found["sample"]
    result = run("explain", str(sample), "--now", found["now"])
    assert result.exit_code == 0, result.output
    assert result.output.rstrip("\n") == found["output"]
