"""Hostile files through ``cairn police import`` and ``cairn nhs import``: one line per bad record.

Each class of bad input (not UTF-8, a byte order mark, empty, truncated, nested 1,000 deep,
integers of 2,000 digits, lax booleans and numbers, dates at the calendar's edge with and
without offsets, a missing file, a directory, a very long line) is driven through the real
``cairn`` command with click's runner. Every refusal must exit 1 with exactly one line on stderr
per bad record, naming the file and line (or FHIR element) and the field, with no traceback and
no value from the file anywhere in the output.
"""

from __future__ import annotations

import copy
import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.importing import MAX_BUNDLE_BYTES, MAX_LINE_BYTES
from broker.cli.main import cli
from tests.samples import FEDERATION_DIR, all_personal_values

SAMPLES = FEDERATION_DIR / "samples"
EXPORT = "export.jsonl"
BUNDLE = "bundle.json"
# ZZ99 3WZ, the fictional "no fixed abode" postcode of a sample, is the schema's own example.
PERSONAL = sorted(all_personal_values() - {"ZZ99 3WZ"})

# HOSTILE_EXAMPLES=2000 runs the properties harder, locally; the default keeps the suite fast.
PROPERTY = settings(
    max_examples=int(os.environ.get("HOSTILE_EXAMPLES", "40")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def good_lines() -> list[dict[str, Any]]:
    text = (SAMPLES / "police-export.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def good_bundle() -> dict[str, Any]:
    return dict(json.loads((SAMPLES / "nhs-referral-medium-risk.fhir.json").read_text("utf-8")))


def jsonl(*records: dict[str, Any] | bytes) -> bytes:
    return b"".join(
        (r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in records
    )


@contextmanager
def folder() -> Iterator[Path]:
    """A fresh working folder (hypothesis runs many examples in one test)."""
    here = Path.cwd()
    with tempfile.TemporaryDirectory() as name:
        os.chdir(name)
        try:
            yield Path(name)
        finally:
            os.chdir(here)


def police(content: bytes | None, *, name: str = EXPORT) -> Result:
    """``cairn police import --dry-run NAME`` with NAME holding ``content`` (None: no file)."""
    if content is not None:
        Path(name).write_bytes(content)
    args = ["police", "import", "--dry-run", "--federation-dir", str(FEDERATION_DIR), name]
    return CliRunner().invoke(cli, args)


def nhs(content: bytes | None, *, name: str = BUNDLE) -> Result:
    if content is not None:
        Path(name).write_bytes(content)
    return CliRunner().invoke(cli, ["nhs", "import", "--dry-run", name])


def refused(result: Result, *expected: tuple[str, str], hostile: tuple[str, ...] = ()) -> None:
    """Exit 1; exactly one stderr line per expected (where, field); no traceback, no values.

    ``where`` is ``FILE`` or ``FILE:LINE``; ``hostile`` are the values the test put in the file,
    which must not be echoed either.
    """
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == len(expected), lines
    for line, (where, field) in zip(lines, expected, strict=True):
        assert line.startswith(f"{where}: "), (line, where)
        # the field is one of the line's "FIELD: REASON" parts (the first, or after a "; ")
        problems = line.removeprefix(f"{where}: ")
        assert problems.startswith(f"{field}: ") or f"; {field}: " in problems, (line, field)
        assert len(line) < 2_000
    assert_no_values(result, hostile)


# Words a reason may say itself ("must be a JSON boolean, true or false").
_VOCABULARY = frozenset({"true", "false", "yes", "no"})


def hostile_text(value: Any) -> tuple[str, ...]:
    """The value a test put in the file, if it is text distinctive enough to look for."""
    text = str(value)
    return (text,) if len(text) >= 4 and text not in _VOCABULARY else ()


def assert_no_values(result: Result, hostile: tuple[str, ...] = ()) -> None:
    shown = result.output
    leaked = [v for v in (*PERSONAL, *hostile) if v in shown]
    assert not leaked, (leaked, shown)


# --- police import: the file --------------------------------------------------------------------


def test_a_good_export_is_imported_with_nothing_on_stderr(tmp_path: Path) -> None:
    """The baseline: the sample export imports cleanly, so every refusal below is the input's."""
    with folder():
        result = police((SAMPLES / "police-export.jsonl").read_bytes())
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert "10 of 10 message(s) ok, 0 problem(s)" in result.stdout


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty"),
        (b"\n\n  \n", "empty"),
        (b"\xef\xbb\xbf\n", "empty"),
    ],
)
def test_an_empty_export_is_one_line_naming_the_file(content: bytes, reason: str) -> None:
    """An export with no incident is refused: a failed export must not look like a quiet day."""
    with folder():
        result = police(content)
    refused(result, (EXPORT, "(file)"))
    assert reason in result.stderr


def test_a_missing_file_and_a_directory_are_one_line_each() -> None:
    """Not a file at all: one line naming it, exit 1, not click's three-line usage error."""
    with folder():
        missing = police(None, name="missing.jsonl")
        Path("adir").mkdir()
        directory = police(None, name="adir")
    refused(missing, ("missing.jsonl", "(file)"))
    assert "no such file" in missing.stderr
    refused(directory, ("adir", "(file)"))
    assert "directory" in directory.stderr


def test_an_export_over_the_line_limit_submits_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_EXPORT_LINES the file is refused as a whole: no message of it is made."""
    monkeypatch.setattr("adapters.police.cli.MAX_EXPORT_LINES", 3)
    with folder():
        result = police(jsonl(*good_lines()))
    refused(result, (EXPORT, "(file)"))
    assert "split the export" in result.stderr
    assert "MARAC" not in result.stdout


# --- police import: one bad line among good ones ------------------------------------------------


def test_invalid_utf8_is_that_lines_problem_and_the_others_still_go() -> None:
    """A line that is not UTF-8 is reported by its line number; the good lines around it go."""
    first, second, *_ = good_lines()
    bad = json.dumps(second).encode().replace(b'"given_name": "', b'"given_name": "\xff\xfe', 1)
    with folder():
        result = police(jsonl(first, bad, second))
    refused(result, (f"{EXPORT}:2", "(line)"))
    assert "not valid UTF-8" in result.stderr
    table = result.stdout.splitlines()
    assert any(line.split()[0] == "1" for line in table[1:-1])
    assert any(line.split()[0] == "3" for line in table[1:-1])
    assert "a partial import" in table[-1]


def test_a_byte_order_mark_before_the_first_line_is_ignored() -> None:
    """RFC 8259 lets a reader ignore a BOM, and Windows tools write one: the export imports."""
    with folder():
        result = police(b"\xef\xbb\xbf" + jsonl(*good_lines()))
    assert result.exit_code == 0, result.output
    assert result.stderr == ""


def test_a_byte_order_mark_inside_the_file_is_that_lines_problem() -> None:
    """A BOM anywhere else (two files pasted together) is not JSON: that line is refused."""
    first, second, *_ = good_lines()
    with folder():
        result = police(jsonl(first) + b"\xef\xbb\xbf" + jsonl(second))
    refused(result, (f"{EXPORT}:2", "(line)"))


@pytest.mark.parametrize(
    "line",
    [
        b'{"export_version": "1", "force": "kelder-pol',
        b'{"export_version": "1",',
        b"[1, 2",
        b'{"a": "\\x"}',
        b"not json at all",
        b"[]",
        b"null",
    ],
)
def test_truncated_or_malformed_json_is_one_line(line: bytes) -> None:
    """A line cut short (or not a JSON object) is refused at (line), with no part of it echoed."""
    with folder():
        result = police(jsonl(good_lines()[1], line))
    refused(result, (f"{EXPORT}:2", "(line)"), hostile=("kelder-pol", "not json"))


@pytest.mark.parametrize("depth", [33, 1_000, 100_000])
def test_deep_nesting_is_refused_before_parsing(depth: int) -> None:
    """JSON nested 1,000+ deep (a RecursionError in Python's parser) is one line, at any depth."""
    nested = b"[" * depth + b"]" * depth
    inside = json.dumps(good_lines()[1]).encode().replace(b'"summary": ', b'"summary": ' + nested)
    with folder():
        result = police(jsonl(nested, inside))
    refused(result, (f"{EXPORT}:1", "(line)"), (f"{EXPORT}:2", "(line)"))
    assert result.stderr.count("nested deeper than") == 2


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    """The depth is counted on the JSON's structure, not on its text."""
    record = good_lines()[1]
    record["summary"] = "[" * 3_000 + '\\"{' * 100  # within the 4,000 characters of a summary
    with folder():
        result = police(jsonl(record))
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("field", "literal"),
    [
        ("incidents_last_12_months", "9" * 2_000),
        ("incidents_last_12_months", "-" + "9" * 2_000),
        ("incidents_last_12_months", "9" * 5_000),  # over Python's own 4,300-digit limit
        ("incidents_last_12_months", "1" + "0" * 400 + ".5"),
        ("incidents_last_12_months", "1e400"),
        ("incidents_last_12_months", "NaN"),
        ("incidents_last_12_months", "-Infinity"),
        ("incidents_last_12_months", "1001"),
        ("officer", "9" * 2_000),
    ],
)
def test_huge_and_non_json_numbers_are_refused_at_their_field(field: str, literal: str) -> None:
    """A 2,000-digit integer, a float that overflows, NaN: one line naming the field."""
    record = good_lines()[1]
    record[field] = "@@"
    line = json.dumps(record).encode().replace(b'"@@"', literal.encode())
    with folder():
        result = police(jsonl(line))
    digits = "".join(c for c in literal if c.isdigit())
    refused(result, (f"{EXPORT}:1", field), hostile=(digits[:12],) if len(digits) >= 4 else ())


BOOLEAN_FIELDS = [
    ("attended",),
    ("persons", 0, "contacts", 0, "safe_to_contact"),
    ("persons", 0, "contacts", 0, "safe_to_leave_message"),
    ("sharing", "victim_informed"),
    ("persons", 2, "home_educated"),
]
INTEGER_FIELDS = [("incidents_last_12_months",)]
DATE_FIELDS = [("persons", 0, "date_of_birth"), ("persons", 2, "date_of_birth")]
DATE_TIME_FIELDS = [("occurred_at",)]

LAX_BOOLEANS = st.sampled_from(["yes", "no", "true", "false", "1", "0", "y", "on", 1, 0, 1.0])
LAX_INTEGERS = st.one_of(
    st.sampled_from(["16", "3", "0", "1e1", "three", True, False, 3.0, 16.5]),
    st.integers(min_value=2**53, max_value=10**2000),
    st.integers(min_value=-(10**2000), max_value=-1),
)
OUT_OF_WINDOW_DAYS = st.one_of(
    st.dates(max_value=date(1899, 12, 31)),
    st.dates(min_value=date(2100, 1, 1)),
    st.sampled_from([date(1, 1, 1), date(9999, 12, 31)]),
)
OFFSETS = st.integers(min_value=-14 * 60, max_value=14 * 60).map(
    lambda m: timezone(timedelta(minutes=m))
)
LAX_DAYS = st.one_of(
    OUT_OF_WINDOW_DAYS.map(date.isoformat),
    st.sampled_from([1_700_000_000, "1700000000", "2026-11-19T21:00:00Z", "19/11/2026", 0]),
)
LAX_DATE_TIMES = st.one_of(
    st.builds(
        lambda d, tz: datetime(d.year, d.month, d.day, 23, 59, 59, tzinfo=tz).isoformat(),
        OUT_OF_WINDOW_DAYS,
        OFFSETS,
    ),
    st.sampled_from(
        [
            "9999-12-31T23:59:59-01:00",
            "9999-12-31T23:59:59+14:00",
            "0001-01-01T00:00:00+01:00",
            "0001-01-01T00:00:00-12:00",
            "9999-12-31",
            "2026-11-19T21:00:00",  # no offset
            1_700_000_000,
            "1700000000",
        ]
    ),
)


def put(record: dict[str, Any], path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(record)
    node: Any = out
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return out


def dotted(path: tuple[str | int, ...]) -> str:
    return ".".join(str(p) for p in path)


def has_parent(record: dict[str, Any], path: tuple[str | int, ...]) -> bool:
    node: Any = record
    for part in path[:-1]:
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                return False
        elif not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def police_case(row: int) -> st.SearchStrategy[tuple[tuple[str | int, ...], Any]]:
    """A field of sample line ``row`` and a lax or out-of-window value for its type."""
    record = good_lines()[row - 1]

    def fields(paths: list[tuple[str | int, ...]]) -> st.SearchStrategy[tuple[str | int, ...]]:
        return st.sampled_from([p for p in paths if has_parent(record, p)])

    return st.one_of(
        st.tuples(fields(BOOLEAN_FIELDS), LAX_BOOLEANS),
        st.tuples(fields(INTEGER_FIELDS), LAX_INTEGERS),
        st.tuples(fields(DATE_FIELDS), LAX_DAYS),
        st.tuples(fields(DATE_TIME_FIELDS), LAX_DATE_TIMES),
    )


@PROPERTY
@given(
    case=st.integers(min_value=1, max_value=3).flatmap(
        lambda row: st.tuples(st.just(row), police_case(row))
    )
)
def test_lax_types_and_edge_dates_are_one_line_naming_the_field(
    case: tuple[int, tuple[tuple[str | int, ...], Any]],
) -> None:
    """'yes' or 1 for a boolean, '16' for a count, 9999 or year 1 (with any offset) for a date:
    each is exactly one line naming the line and the field, while the other lines still go."""
    row, (path, value) = case
    records = good_lines()[:3]
    records[row - 1] = put(records[row - 1], path, value)
    with folder():
        result = police(jsonl(*records))
    refused(result, (f"{EXPORT}:{row}", dotted(path)), hostile=hostile_text(value))
    made = {line.split()[0] for line in result.stdout.splitlines()[1:-1]}
    assert {"1", "2", "3"} - {str(row)} <= made


def test_each_bad_line_is_exactly_one_line_whatever_it_holds() -> None:
    """Several problems of one line are one stderr line; several bad lines, one line each."""
    first, second, third, fourth = good_lines()
    many = put(put(put(second, ("attended",), "yes"), ("occurred_at",), 0), ("location",), 7)
    with folder():
        result = police(jsonl(first, many, b"{", third, put(fourth, ("attended",), 1)))
    refused(
        result,
        (f"{EXPORT}:2", "attended"),
        (f"{EXPORT}:3", "(line)"),
        (f"{EXPORT}:5", "attended"),
    )
    line_two = result.stderr.splitlines()[0]
    assert "occurred_at: " in line_two
    assert "location: " in line_two


def test_a_key_given_twice_is_refused() -> None:
    """Two values for one field: two readers could see two different facts."""
    line = (
        json.dumps(good_lines()[1])
        .encode()
        .replace(b'"attended": true', b'"attended": true, "attended": false')
    )
    with folder():
        result = police(jsonl(line))
    refused(result, (f"{EXPORT}:1", "attended"))


def test_a_hostile_key_is_masked_in_the_path() -> None:
    """An unknown key that is not a field name (a name, a sentence) is not echoed as the path."""
    record = good_lines()[1]
    record["Testina Hostile-Key"] = 1
    with folder():
        result = police(jsonl(record))
    refused(result, (f"{EXPORT}:1", "(key)"), hostile=("Testina",))


def test_a_very_long_line_is_refused_unread_and_the_next_line_keeps_its_number() -> None:
    """A line over MAX_LINE_BYTES is refused without being held whole; numbering stays right."""
    record = good_lines()[1]
    long_line = b'{"summary": "' + b"x" * (MAX_LINE_BYTES + 10) + b'"}'
    with folder():
        result = police(jsonl(long_line, record))
    refused(result, (f"{EXPORT}:1", "(line)"))
    assert f"longer than {MAX_LINE_BYTES} bytes" in result.stderr
    assert result.stdout.splitlines()[1].split()[0] == "2"


def test_good_lines_of_a_partial_import_are_submitted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a dry run: the good lines' messages are submitted, the bad line is reported, exit 1."""
    from collections.abc import AsyncIterator
    from contextlib import asynccontextmanager
    from uuid import UUID

    from adapters.client import Submitted
    from adapters.police.cli import police as police_group
    from schemas.receipt import Receipt

    sent: list[object] = []

    class Client:
        async def submit(self, message: object) -> Receipt:
            sent.append(message)
            return Receipt(
                referral_id=UUID(int=len(sent)),
                accepted_at=datetime(2026, 11, 26, 9, 0, tzinfo=UTC),
                recipients=(),
            )

        async def send(self, message: object) -> Submitted:
            return Submitted(await self.submit(message), already_sent=False)

    @asynccontextmanager
    async def factory(agency: str, url: str) -> AsyncIterator[Client]:
        yield Client()

    first, second, *_ = good_lines()
    with folder():
        Path(EXPORT).write_bytes(jsonl(first, put(second, ("attended",), "yes")))
        args = ["import", "--federation-dir", str(FEDERATION_DIR), EXPORT]
        result = CliRunner().invoke(police_group, args, obj={"client_factory": factory})
    refused(result, (f"{EXPORT}:2", "attended"))
    assert len(sent) == 4  # line 1: MARAC, IDVA and two Encompass notices
    assert "the other lines' messages were submitted" in result.stdout


# --- nhs import ---------------------------------------------------------------------------------


def test_a_good_bundle_is_imported_with_nothing_on_stderr() -> None:
    with folder():
        result = nhs(json.dumps(good_bundle()).encode())
    assert result.exit_code == 0, result.output
    assert result.stderr == ""


@pytest.mark.parametrize(
    ("content", "field", "reason"),
    [
        (b"", "Bundle", "not valid JSON"),
        (b'{"resourceType": "Bundle", "entry": [', "Bundle", "not valid JSON"),
        (b'{"resourceType": "Bun\xffdle"}', "Bundle", "not valid UTF-8"),
        ("[" * 1_000 + "]" * 1_000, "Bundle", "nested deeper than"),
        ("[" * 100_000, "Bundle", "nested deeper than"),
        (b"\xff\xfe{\x00}\x00", "Bundle", "not valid UTF-8"),  # UTF-16 is not UTF-8
        (b"[]", "Bundle", "not an object"),
        (b'{"resourceType": NaN}', "Bundle.resourceType", "NaN"),
    ],
)
def test_a_bundle_that_is_not_json_is_one_line(
    content: bytes | str, field: str, reason: str
) -> None:
    """Not UTF-8, not JSON, truncated, 1,000+ deep: one line naming the bundle, exit 1."""
    data = content.encode() if isinstance(content, str) else content
    with folder():
        result = nhs(data)
    refused(result, (BUNDLE, field))
    assert reason in result.stderr


def test_a_bundle_with_a_byte_order_mark_is_read() -> None:
    with folder():
        result = nhs(b"\xef\xbb\xbf" + json.dumps(good_bundle()).encode())
    assert result.exit_code == 0, result.output


def test_a_pretty_printed_bundle_cut_short_names_its_line() -> None:
    """A syntax error in a pretty-printed bundle says at which line of the file it is."""
    text = json.dumps(good_bundle(), indent=2)
    with folder():
        result = nhs(text[: len(text) // 2].encode())
    refused(result, (BUNDLE, "Bundle"))
    assert re.search(r"at line [0-9]+, column [0-9]+", result.stderr)


def test_missing_directory_and_oversized_bundles_are_one_line() -> None:
    with folder():
        missing = nhs(None, name="missing.json")
        Path("adir").mkdir()
        directory = nhs(None, name="adir")
        big = nhs(b" " * (MAX_BUNDLE_BYTES + 1))
    refused(missing, ("missing.json", "(file)"))
    refused(directory, ("adir", "(file)"))
    refused(big, (BUNDLE, "(file)"))
    assert "larger than" in big.stderr


def leaves(
    node: Any, path: tuple[str | int, ...] = ()
) -> Iterator[tuple[tuple[str | int, ...], Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from leaves(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from leaves(value, (*path, index))
    else:
        yield path, node


def fhir_path(path: tuple[str | int, ...]) -> str:
    return "Bundle" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
_DATE_TIME = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T")
SAMPLE_BUNDLE = good_bundle()
# The sample's elements of each FHIR JSON type, found from the bundle itself.
FHIR_BOOLEANS = [p for p, v in leaves(SAMPLE_BUNDLE) if isinstance(v, bool)]
FHIR_INTEGERS = [p for p, v in leaves(SAMPLE_BUNDLE) if type(v) is int]
FHIR_DATES = [p for p, v in leaves(SAMPLE_BUNDLE) if isinstance(v, str) and _DATE.match(v)]
FHIR_DATE_TIMES = [
    p for p, v in leaves(SAMPLE_BUNDLE) if isinstance(v, str) and _DATE_TIME.match(v)
]


def test_the_sample_bundle_has_elements_of_every_type_the_property_needs() -> None:
    assert FHIR_BOOLEANS
    assert FHIR_INTEGERS
    assert FHIR_DATES
    assert len(FHIR_DATE_TIMES) >= 4
    assert ("entry", 0, "resource", "birthDate") in FHIR_DATES
    assert ("entry", 1, "resource", "authoredOn") in FHIR_DATE_TIMES


FHIR_LAX_INTEGERS = st.one_of(
    st.sampled_from(["16", "10", "1e1", True, 16.5]),
    st.integers(min_value=2**31, max_value=10**2000),
)
FHIR_LAX_DATES = OUT_OF_WINDOW_DAYS.map(date.isoformat)
FHIR_LAX_DATE_TIMES = st.one_of(
    st.builds(
        lambda d, tz: datetime(d.year, d.month, d.day, 23, 59, 59, tzinfo=tz).isoformat(),
        OUT_OF_WINDOW_DAYS,
        OFFSETS,
    ),
    st.sampled_from(["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00", 1_700_000_000]),
)


@PROPERTY
@given(
    case=st.one_of(
        st.tuples(st.sampled_from(FHIR_BOOLEANS), LAX_BOOLEANS),
        st.tuples(st.sampled_from(FHIR_INTEGERS), FHIR_LAX_INTEGERS),
        st.tuples(st.sampled_from(FHIR_DATES), FHIR_LAX_DATES),
        st.tuples(st.sampled_from(FHIR_DATE_TIMES), FHIR_LAX_DATE_TIMES),
    )
)
def test_fhir_lax_types_and_edge_dates_are_one_line_naming_the_element(
    case: tuple[tuple[str | int, ...], Any],
) -> None:
    """Every boolean, integer, date and date-time element of the sample bundle, given a lax or
    out-of-window value (9999, year 1, any offset): one line naming its FHIRPath, exit 1."""
    path, value = case
    with folder():
        result = nhs(json.dumps(put(SAMPLE_BUNDLE, path, value)).encode())
    refused(result, (BUNDLE, fhir_path(path)), hostile=hostile_text(value))


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("entry", 0, "resource", "birthDate"), "9999-12-31"),
        (("entry", 0, "resource", "birthDate"), "0001-01-01"),
        (("entry", 0, "resource", "birthDate"), "9999"),
        (("entry", 1, "resource", "authoredOn"), "9999-12-31T23:59:59-01:00"),
        (("entry", 1, "resource", "authoredOn"), "9999-12-31T23:59:59+14:00"),
        (("entry", 1, "resource", "authoredOn"), "9999-12-31T23:59:59Z"),
        (
            ("entry", 1, "resource", "extension", 1, "extension", 0, "valueDateTime"),
            "9999-12-31T00:00:00+01:00",
        ),
        (("entry", 4, "resource", "extension", 0, "valueInteger"), "16"),
        (
            ("entry", 0, "resource", "telecom", 0, "extension", 0, "extension", 1, "valueBoolean"),
            "yes",
        ),
        (("entry", 0, "resource", "telecom", 0, "extension", 0, "extension", 1, "valueBoolean"), 1),
    ],
)
def test_the_reported_bundles_are_refused(path: tuple[str | int, ...], value: Any) -> None:
    """The cases reported: a bundle dated 9999 was accepted; '16' or 'yes' were coerced."""
    with folder():
        result = nhs(json.dumps(put(SAMPLE_BUNDLE, path, value)).encode())
    refused(result, (BUNDLE, fhir_path(path)), hostile=hostile_text(value))


def test_a_bundle_with_several_problems_is_still_one_line() -> None:
    """The bundle is one record: its problems share one line, each with its element."""
    bundle = put(SAMPLE_BUNDLE, ("entry", 0, "resource", "birthDate"), "9999-12-31")
    bundle = put(bundle, ("entry", 1, "resource", "authoredOn"), "0001-01-01T00:00:00+01:00")
    with folder():
        result = nhs(json.dumps(bundle).encode())
    refused(result, (BUNDLE, "Bundle.entry[0].resource.birthDate"), hostile=("9999-12-31",))
    assert "Bundle.entry[1].resource.authoredOn: " in result.stderr


def test_a_very_long_value_in_a_bundle_is_one_line() -> None:
    """A name of a megabyte is refused at its element, not echoed."""
    bundle = put(SAMPLE_BUNDLE, ("entry", 0, "resource", "name", 0, "family"), "Q" * 1_000_000)
    with folder():
        result = nhs(json.dumps(bundle).encode())
    refused(result, (BUNDLE, "Bundle.entry[0].resource.name[0].family"), hostile=("QQQQ",))


def test_a_deeply_nested_attachment_is_refused_at_its_extension() -> None:
    """The groups attached as base64 JSON are read within the same bounds as the bundle."""
    import base64

    bundle = copy.deepcopy(SAMPLE_BUNDLE)
    request = bundle["entry"][1]["resource"]
    groups = [
        (j, e) for j, e in enumerate(request["extension"]) if e["url"].endswith("/field-group")
    ]
    if not groups:
        pytest.fail("the sample bundle attaches no field group")
    j, ext = groups[0]
    content = next(p for p in ext["extension"] if p["url"] == "content")
    content["valueAttachment"]["data"] = base64.b64encode(b"[" * 5_000 + b"]" * 5_000).decode()
    with folder():
        result = nhs(json.dumps(bundle).encode())
    refused(result, (BUNDLE, f"Bundle.entry[1].resource.extension[{j}].extension"))
    assert "nested deeper than" in result.stderr


def test_a_resource_type_that_is_not_text_is_one_line() -> None:
    """Found by the property below: a list as a resourceType was a TypeError in the precheck."""
    with folder():
        result = nhs(
            json.dumps(put(SAMPLE_BUNDLE, ("entry", 1, "resource", "resourceType"), [])).encode()
        )
    refused(result, (BUNDLE, "Bundle.entry[1].resource.resourceType"))


# --- any value anywhere -------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def nodes(node: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    """Every path in a JSON document, containers included."""
    if path:
        yield path
    if isinstance(node, dict):
        for key, value in node.items():
            yield from nodes(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from nodes(value, (*path, index))


def one_line_or_none(result: Result) -> None:
    """Accepted (exit 0, nothing on stderr) or refused as one line per record; never a crash."""
    assert result.exit_code in (0, 1), result.output
    assert isinstance(result.exception, SystemExit | None), result.exception
    assert "Traceback" not in result.output
    if result.exit_code == 1:
        assert len(result.stderr.splitlines()) == 1, result.stderr
    else:
        assert result.stderr == ""
    assert_no_values(result)


@PROPERTY
@given(path=st.sampled_from(list(nodes(SAMPLE_BUNDLE))), value=JSON_VALUES)
def test_any_value_anywhere_in_a_bundle_is_accepted_or_one_line(
    path: tuple[str | int, ...], value: Any
) -> None:
    """Whatever JSON stands at whatever element (a list for a resourceType, a number for a
    reference), the command maps the bundle or refuses it in one line; it never crashes."""
    with folder():
        result = nhs(json.dumps(put(SAMPLE_BUNDLE, path, value)).encode())
    one_line_or_none(result)


SAMPLE_LINE = good_lines()[0]


@PROPERTY
@given(path=st.sampled_from(list(nodes(SAMPLE_LINE))), value=JSON_VALUES)
def test_any_value_anywhere_in_an_export_line_is_accepted_or_one_line(
    path: tuple[str | int, ...], value: Any
) -> None:
    with folder():
        result = police(jsonl(put(SAMPLE_LINE, path, value)))
    one_line_or_none(result)


@PROPERTY
@given(data=st.binary(max_size=400) | st.text(max_size=200).map(str.encode))
def test_any_bytes_are_a_bundle_or_one_line(data: bytes) -> None:
    with folder():
        result = nhs(data)
    one_line_or_none(result)


@PROPERTY
@given(data=st.binary(max_size=400) | st.text(max_size=200).map(str.encode))
def test_any_bytes_are_an_export_or_one_line_per_bad_line(data: bytes) -> None:
    """Random bytes: each stderr line names the file (and a line of it, at most once)."""
    with folder():
        result = police(data)
    assert result.exit_code in (0, 1), result.output
    assert isinstance(result.exception, SystemExit | None), result.exception
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    wheres = [line.split(": ", 1)[0] for line in lines]
    assert len(set(wheres)) == len(wheres), lines
    assert all(re.fullmatch(rf"{re.escape(EXPORT)}(:[0-9]+)?", w) for w in wheres), lines


def test_a_bundle_the_broker_refuses_is_one_line_naming_its_fields() -> None:
    """The broker's 422 names fields of the referral: still one line, exit 1."""
    from collections.abc import AsyncIterator
    from contextlib import asynccontextmanager

    from adapters.client import SubmissionRefused
    from adapters.nhs.cli import nhs as nhs_group

    class Client:
        async def submit(self, referral: object) -> None:
            raise SubmissionRefused(
                422,
                {
                    "title": "Schema error",
                    "detail": "the referral is not valid",
                    "errors": [
                        {"field": "victim.date_of_birth", "problem": "out of range"},
                        {"field": "header.created_at", "problem": "in the future"},
                    ],
                },
            )

        send = submit

    @asynccontextmanager
    async def factory(agency: str, url: str) -> AsyncIterator[Client]:
        yield Client()

    with folder():
        Path(BUNDLE).write_bytes(json.dumps(SAMPLE_BUNDLE).encode())
        result = CliRunner().invoke(nhs_group, ["import", BUNDLE], obj={"client_factory": factory})
    refused(result, (BUNDLE, "victim.date_of_birth"))
    assert "; header.created_at: in the future" in result.stderr
