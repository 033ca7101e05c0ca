"""Where the broker spends its time: py-spy's raw samples folded into functions by own time.

``py-spy record --format raw`` writes one line per distinct stack, ``frame;frame;...;leaf
COUNT``, each frame ``function (file:line)``, and with ``--subprocesses`` a first frame
``process PID:"command"``. A function's own time is the samples in which it is the leaf frame
(the innermost Python function running, natively or not); its total time is the samples in which
it appears anywhere in the stack, counted once per sample.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Hotspot", "fold", "render"]

_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>.*?)(?::\d+)?\)$")
_SITE = re.compile(r"^.*?/(site-packages|lib/python3\.\d+)/")


@dataclass(frozen=True)
class Hotspot:
    function: str  # "name (file)"
    own: int  # samples with it as the leaf
    total: int  # samples with it anywhere on the stack
    caller: str  # the function that called it in most of its own samples


def _function(frame: str) -> str:
    match = _FRAME.match(frame)
    if match is None:
        return frame
    where = _SITE.sub("", match.group("file"))
    return f"{match.group('function')} ({where})"


def fold(text: str) -> tuple[list[Hotspot], int]:
    """Every function by own time, most first, and the number of samples in all."""
    own: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    callers: dict[str, Counter[str]] = {}
    samples = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f and not f.startswith("process ")]
        if not frames:
            continue
        samples += count
        functions = [_function(f) for f in frames]
        own[functions[-1]] += count
        if len(functions) > 1:
            callers.setdefault(functions[-1], Counter())[functions[-2]] += count
        for function in set(functions):
            anywhere[function] += count
    spots = [
        Hotspot(f, n, anywhere[f], next(iter(callers.get(f, Counter()).most_common(1)), ("",))[0])
        for f, n in own.most_common()
    ]
    return spots, samples


def render(path: Path, top: int, *, gil: bool) -> list[str]:
    """The ``top`` functions by own time as a Markdown table."""
    spots, samples = fold(path.read_text(encoding="utf-8", errors="replace"))
    if not samples:
        return ["(py-spy recorded no samples)"]
    which = (
        "threads holding the GIL only"
        if gil
        else "every thread not idle, so a thread blocked in C (SQLite, fsync) counts"
    )
    lines = [
        f"Broker profile: top {top} functions by own time, of {samples} py-spy samples of all "
        f"broker processes ({which})",
        "",
        "| # | function (file) | own % | total % | mostly called from |",
        "| ---: | --- | ---: | ---: | --- |",
    ]
    for i, spot in enumerate(spots[:top], 1):
        name = spot.function.replace("|", "\\|")
        caller = spot.caller.replace("|", "\\|")
        lines.append(
            f"| {i} | `{name}` | {100 * spot.own / samples:.1f} | "
            f"{100 * spot.total / samples:.1f} | {f'`{caller}`' if caller else ''} |"
        )
    return lines
