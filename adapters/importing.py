"""What both import commands share: reading an agency's file within bounds, one line per bad record.

``cairn police import`` and ``cairn nhs import`` read files that another organisation's system
wrote, so every dimension of the file is bounded before anything is parsed: the file must be a
regular file, a police export line and an NHS bundle have a size limit, JSON nesting is counted
before the parser recurses (1,000 levels would exhaust Python's stack), integers beyond what every
JSON reader agrees on (2^53 - 1, RFC 7493) and the non-JSON constants ``NaN`` and ``Infinity``
are refused, as are keys given twice in one object (two readers could see two different
values). Each refusal names where in the JSON it is, never the value.

A bad record (one line of the police export, or the NHS bundle) is reported as exactly one line,
``WHERE: FIELD: REASON[; FIELD: REASON]...``, where ``WHERE`` is the file and its line
(``export.jsonl:7``) and ``FIELD`` a dotted path or a FHIRPath. ``record_line`` builds it. As a
last guard, ``withhold`` drops any reason that repeats a text value of the record, so that a
validator written to quote what it refused still cannot put a name on an operator's terminal or
in a log.

Dates are held to the years of ``schemas.fields`` (``MIN_YEAR`` to ``MAX_YEAR``), the window
the referral model enforces on the referral it is given. The adapters check it where they read
a date too, so that the problem names the field of the agency's file (the export line's
``Day`` and ``Moment`` fields, the NHS bundle's FHIR elements) rather than of the referral built
from it, and before any arithmetic on the date.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import IO, Any, Final

from schemas.fields import MAX_YEAR, MIN_YEAR

__all__ = [
    "DATE_WINDOW",
    "EARLIEST_DATE",
    "LATEST_DATE",
    "MAX_BUNDLE_BYTES",
    "MAX_EXPORT_LINES",
    "MAX_JSON_DEPTH",
    "MAX_LINE_BYTES",
    "MAX_SAFE_INTEGER",
    "FileRefused",
    "JsonPath",
    "JsonRefused",
    "bounded_lines",
    "decode_utf8",
    "dotted",
    "in_window",
    "load_json",
    "open_for_import",
    "read_bounded",
    "record_line",
    "segment",
    "text_values",
    "withhold",
]

#: JSON nesting allowed in a police export line or an NHS bundle (the samples need 5 and 9).
MAX_JSON_DEPTH: Final = 32
#: Bytes in one line of a police export (one incident); the broker takes 1 MiB per submission.
MAX_LINE_BYTES: Final = 1_048_576
#: Lines in one police export file; a bigger export is split (a force's daily export is far less).
MAX_EXPORT_LINES: Final = 50_000
#: Bytes in one NHS bundle file (FHIR JSON is several times the size of the referral it carries).
MAX_BUNDLE_BYTES: Final = 4 * 1_048_576
#: The largest integer every JSON reader represents exactly (RFC 7493 section 2.2).
MAX_SAFE_INTEGER: Final = 2**53 - 1
#: Dates in an agency's file outside this window are data errors (a birth in 9999, an incident in
#: year 1), refused before any arithmetic on them (9999-12-31T23:59-01:00 has no UTC in Python).
EARLIEST_DATE: Final = date(MIN_YEAR, 1, 1)
LATEST_DATE: Final = date(MAX_YEAR, 12, 31)
DATE_WINDOW: Final = f"{EARLIEST_DATE.isoformat()} to {LATEST_DATE.isoformat()}"

#: A path into a JSON document: object keys and array indexes, from the top.
JsonPath = tuple[str | int, ...]

# At most this many problems are spelled out on a record's line; the rest are counted.
_SHOWN_PROBLEMS = 10
_STRUCTURAL = re.compile(r'[\[\]{}"\\]')
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
# A segment of a reported path: a field name (with FHIR indexes), an index, or a marker.
_SEGMENT = re.compile(
    r"^(?:[A-Za-z_][A-Za-z0-9_-]{0,63}(?:\[[0-9]+\])*|[0-9]+|\[key\]|\([a-z]+\))$"
)
_WITHHELD = "refused (the reason is withheld: it would repeat a value from the file)"
# Integer literals longer than this are refused unread (Python refuses over 4,300 digits itself).
_MAX_INT_DIGITS = 16


class FileRefused(Exception):
    """The file as a whole cannot be read: ``reason`` in a few words, no content."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class _Position:
    line: int
    column: int
    character: int


class JsonRefused(Exception):
    """The text is not JSON Cairn reads: each problem is a path into it and a reason.

    ``at`` is set for a syntax error (the path is then empty): where the parser stopped.
    """

    def __init__(
        self, problems: Sequence[tuple[JsonPath, str]], at: _Position | None = None
    ) -> None:
        super().__init__(problems)
        self.problems = tuple(problems)
        self.at = at


# --- the file ----------------------------------------------------------------------------------


def open_for_import(path: Path) -> IO[bytes]:
    """``path`` opened for reading bytes, or FileRefused saying why not (a directory, missing)."""
    try:
        if path.is_dir():
            raise FileRefused("is a directory, not a file")
        if path.exists() and not path.is_file():
            raise FileRefused("is not a regular file")
        return path.open("rb")
    except FileNotFoundError:
        raise FileRefused("no such file") from None
    except PermissionError:
        raise FileRefused("not readable (permission denied)") from None
    except OSError as exc:
        raise FileRefused(f"cannot be read ({exc.strerror or type(exc).__name__})") from None


def read_bounded(fh: IO[bytes], limit: int) -> bytes:
    """All of ``fh``, or FileRefused when it holds more than ``limit`` bytes (never read whole)."""
    data = fh.read(limit + 1)
    if len(data) > limit:
        raise FileRefused(f"larger than {limit} bytes")
    return data


def bounded_lines(fh: IO[bytes], limit: int = MAX_LINE_BYTES) -> Iterator[bytes]:
    """The lines of ``fh``, each cut after ``limit + 1`` bytes (the rest of it is skipped).

    So a file of one 10 GB line costs ``limit`` bytes of memory, and the reader of a cut line
    sees it is longer than ``limit`` and reports it.
    """
    while True:
        line = fh.readline(limit + 1)
        if not line:
            return
        if len(line) > limit and not line.endswith(b"\n"):
            rest = fh.readline(65_536)
            while rest and not rest.endswith(b"\n"):  # bounded by the file's size
                rest = fh.readline(65_536)
        yield line


def decode_utf8(data: bytes, *, strip_bom: bool) -> str:
    """``data`` as UTF-8; a leading byte order mark is dropped when ``strip_bom``.

    RFC 8259 lets a JSON reader ignore a BOM, and Windows tools write one. Raises JsonRefused
    at the first byte that is not UTF-8 (its ``character`` is then a byte offset, from 1).
    """
    if strip_bom and data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[: exc.start]
        line = before.count(b"\n") + 1
        column = exc.start - (before.rfind(b"\n") + 1) + 1
        raise JsonRefused(
            [((), "not valid UTF-8")], _Position(line, column, exc.start + 1)
        ) from None


# --- JSON within bounds ------------------------------------------------------------------------


class _Refused:
    """Stands in the parsed document for a value that is refused; the walk reports it."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


_INTEGER_RANGE = _Refused("an integer beyond 2^53 - 1 in size (RFC 7493)")
_NOT_FINITE = _Refused("a number too large to represent")
_CONSTANT = _Refused("NaN and Infinity are not JSON")


class _Duplicated(dict[str, Any]):
    """An object in which some key was given more than once."""

    duplicates: list[str]


def _int(text: str) -> int | _Refused:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        return _INTEGER_RANGE
    value = int(text)
    return value if abs(value) <= MAX_SAFE_INTEGER else _INTEGER_RANGE


def _float(text: str) -> float | _Refused:
    value = float(text)
    return value if math.isfinite(value) else _NOT_FINITE


def _constant(_text: str) -> _Refused:
    return _CONSTANT


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    duplicates = []
    for key, value in pairs:
        if key in out:
            duplicates.append(key)
        out[key] = value
    if not duplicates:
        return out
    flagged = _Duplicated(out)
    flagged.duplicates = duplicates
    return flagged


def _depth_exceeds(text: str, limit: int) -> bool:
    """Whether arrays and objects nest deeper than ``limit``, counted without parsing.

    Brackets inside strings do not count; the scan looks only at the structural characters.
    """
    depth = 0
    in_string = False
    escaped_at = -1
    for match in _STRUCTURAL.finditer(text):
        i = match.start()
        if i == escaped_at:
            continue
        char = text[i]
        if in_string:
            if char == "\\":
                escaped_at = i + 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}":
            depth -= 1
    return False


def _walk(value: Any, path: JsonPath, problems: list[tuple[JsonPath, str]]) -> None:
    # Recursion is bounded: the depth was checked before parsing.
    if isinstance(value, _Refused):
        problems.append((path, value.reason))
    elif isinstance(value, dict):
        for key in getattr(value, "duplicates", ()):
            problems.append(((*path, key), "given more than once in one object"))
        for key, item in value.items():
            _walk(item, (*path, key), problems)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _walk(item, (*path, index), problems)


def load_json(text: str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The JSON value ``text`` holds, within the bounds above; JsonRefused names what is not."""
    if _depth_exceeds(text, max_depth):
        raise JsonRefused([((), f"nested deeper than {max_depth} levels")])
    try:
        data = json.loads(
            text,
            parse_int=_int,
            parse_float=_float,
            parse_constant=_constant,
            object_pairs_hook=_object,
        )
    except json.JSONDecodeError as exc:
        # The module's messages are fixed phrases, but "Invalid \\escape: 'x'" quotes the file.
        phrase = exc.msg.split(": ", 1)[0] if exc.msg.startswith("Invalid \\escape") else exc.msg
        phrase = phrase.removesuffix(" at").removesuffix(" starting")
        raise JsonRefused(
            [((), f"not valid JSON: {phrase}")], _Position(exc.lineno, exc.colno, exc.pos + 1)
        ) from None
    problems: list[tuple[JsonPath, str]] = []
    _walk(data, (), problems)
    if problems:
        raise JsonRefused(problems)
    return data


# --- reporting ---------------------------------------------------------------------------------


def dotted(path: JsonPath) -> str:
    """``("persons", 0, "date_of_birth")`` -> ``persons.0.date_of_birth``.

    A key that does not look like a field name is shown as ``(key)``: keys are the file's
    structure, but a hostile file can put anything in one.
    """
    return ".".join(segment(p) for p in path)


def segment(part: str | int) -> str:
    """One path segment as shown: an index, a field-like key, or ``(key)``."""
    if isinstance(part, int):
        return str(part)
    return part if _KEY.match(part) else "(key)"


def in_window(value: date | datetime) -> bool:
    """Whether a date (or the calendar date of a date-time, as written) is within the window."""
    day = value.date() if isinstance(value, datetime) else value
    return EARLIEST_DATE <= day <= LATEST_DATE


def text_values(data: Any, *, skip_keys: frozenset[str] = frozenset()) -> frozenset[str]:
    """Every text value of ``data`` a reason must never repeat (4 characters or more).

    Lower-case codes (``child``, ``official``, urls) are left out: they are the file's
    vocabulary, not anyone's data, and reasons name them ("a child needs a date of birth").
    Values under ``skip_keys`` are left out too (``resourceType``: the resource names).
    """
    found: set[str] = set()
    stack: list[Any] = [data]
    while stack:  # bounded: each value of the document is visited once
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(v for k, v in item.items() if k not in skip_keys)
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            text = item.strip()
            if len(text) >= 4 and not _is_code(text):
                found.add(text)
    return frozenset(found)


def _is_code(text: str) -> bool:
    return text.isascii() and text[0].isalpha() and text == text.lower() and " " not in text


def _field(field: str) -> str:
    """A reported path with each segment that is not a field name, index or marker masked."""
    return ".".join(p if _SEGMENT.match(p) else "(key)" for p in field.split("."))


def _one_line(text: str) -> str:
    return " ".join(text.split())


def withhold(reason: str, values: frozenset[str]) -> str:
    """``reason``, unless it repeats one of ``values`` (``text_values`` of the record)."""
    return _WITHHELD if any(v in reason for v in values) else reason


def record_line(where: str, problems: Sequence[tuple[str, str]]) -> str:
    """The one line reporting a bad record: ``WHERE: FIELD: REASON[; FIELD: REASON]...``.

    Path segments that are not field names are masked and whitespace is collapsed, so the
    report is one line whatever a key or a message holds.
    """
    parts = [f"{_field(field)}: {reason}" for field, reason in problems[:_SHOWN_PROBLEMS]]
    if len(problems) > _SHOWN_PROBLEMS:
        parts.append(f"and {len(problems) - _SHOWN_PROBLEMS} more problem(s)")
    return _one_line(f"{where}: {'; '.join(parts)}")
