"""Where the exported JSON Schema says boolean, integer, date, date-time or uuid, the model agrees.

The test walks ``schemas/json/referral.schema.json`` and the Encompass schema, finds every such
field, and for each one generates the lax forms pydantic would coerce by default ("yes" and
``1`` for a boolean, ``"16"`` and ``16.0`` for an integer, a timestamp or a datetime for a date,
a date or a number for a date-time, years at the calendar's edge, a UUID without its hyphens,
in braces or as a URN). Each is refused at that
field by the model, from JSON (how the broker decodes) and from a parsed dict (how adapters
build messages), and by the schema itself; the sample with the field as it was still passes
both. A field the walk finds in no sample fails the test: add it to a sample.

One difference is JSON Schema's, not ours: its data model has no integer distinct from a
number with a zero fraction, so ``16.0`` is an "integer" to a schema validator, while the
broker (strict) refuses it. The broker is the stricter of the two, never the laxer.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from pydantic import BaseModel, ValidationError

from schemas.decode import decode, field_problems
from schemas.encompass import EncompassNotification
from schemas.errors import SchemaError
from schemas.export import JSON_DIR
from schemas.fields import MAX_YEAR, MIN_YEAR
from schemas.receipt import Acknowledgement
from schemas.referral import Referral
from schemas.submission import decode_submission
from tests.samples import sample

LAX = settings(max_examples=30, deadline=None, derandomize=True, database=None)

Path = tuple[str | int, ...]

# The samples whose fields the walk sets: between them they hold every such field's parent.
SAMPLES: dict[str, tuple[str, ...]] = {
    "referral": (
        "referral-high-risk.json",
        "referral-professional-judgement.json",
        "referral-consent-refused.json",
    ),
    "encompass-notification": ("encompass-notification.json",),
}
MODELS: dict[str, type[BaseModel]] = {
    "referral": Referral,
    "encompass-notification": EncompassNotification,
}


@functools.cache
def schema(stem: str) -> dict[str, Any]:
    return dict(json.loads((JSON_DIR / f"{stem}.schema.json").read_text(encoding="utf-8")))


@functools.cache
def validator(stem: str) -> Draft202012Validator:
    return Draft202012Validator(schema(stem), format_checker=Draft202012Validator.FORMAT_CHECKER)


def _resolve(root: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = root["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def typed_fields(
    root: dict[str, Any], node: dict[str, Any], path: Path = ()
) -> Iterator[tuple[Path, str, dict[str, Any]]]:
    """(path, kind, schema) of every boolean, integer, date and date-time field under ``node``.

    Array items are reached through index 0; a nullable field yields its non-null arm.
    """
    node = _resolve(root, node)
    if "anyOf" in node:
        for arm in node["anyOf"]:
            if _resolve(root, arm).get("type") != "null":
                yield from typed_fields(root, arm, path)
        return
    kind = node.get("type")
    if kind == "object":
        for name, sub in node.get("properties", {}).items():
            yield from typed_fields(root, sub, (*path, name))
    elif kind == "array" and "items" in node:
        yield from typed_fields(root, node["items"], (*path, 0))
    elif kind in ("boolean", "integer"):
        yield path, kind, node
    elif kind == "string" and node.get("format") in ("date", "date-time", "uuid"):
        yield path, node["format"], node


def _parent(doc: Any, path: Path) -> Any | None:
    node = doc
    for part in path[:-1]:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return None
    return node if isinstance(node, dict) else None


def _default(root: dict[str, Any], stem: str, path: Path) -> Any:
    """The field's declared default (the property schema where its parent declares it)."""
    node = _resolve(root, root)
    for part in path:
        node = _resolve(root, node)
        if "anyOf" in node:
            node = next(_resolve(root, a) for a in node["anyOf"] if a.get("type") != "null")
        node = node["items"] if isinstance(part, int) else node["properties"][part]
    return node.get("default")


def cases() -> Iterator[tuple[str, str, Path, str]]:
    for stem, names in SAMPLES.items():
        for path, kind, _node in typed_fields(schema(stem), schema(stem)):
            name = next((n for n in names if _parent(sample(n), path) is not None), None)
            yield stem, name or "(no sample holds this field's parent)", path, kind


CASES = list(cases())


def _dotted(path: Path) -> str:
    return ".".join(str(p) for p in path)


def _set(doc: dict[str, Any], path: Path, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    parent = _parent(doc, path)
    assert parent is not None
    parent[path[-1]] = value
    return doc


def _fresh(name: str) -> dict[str, Any]:
    return sample(name)


def _refusals(stem: str, data: dict[str, Any]) -> tuple[list[str], list[str], bool]:
    """Fields the model names from JSON, from a dict, and whether the schema refuses."""
    try:
        decode_submission(json.dumps(data).encode())
        from_json: list[str] = []
    except SchemaError as exc:
        from_json = [p.field for p in exc.problems]
    try:
        MODELS[stem].model_validate(data)
        from_dict: list[str] = []
    except ValidationError as exc:
        from_dict = [p.field for p in field_problems(exc)]
    return from_json, from_dict, not validator(stem).is_valid(data)


# --- The lax forms, per kind ------------------------------------------------------------------

_OUTSIDE = st.one_of(
    st.dates(max_value=date(MIN_YEAR - 1, 12, 31)),
    st.dates(min_value=date(MAX_YEAR + 1, 1, 1)),
)
_ZONES = st.sampled_from([UTC, timezone(timedelta(hours=14)), timezone(timedelta(hours=-14))])


def lax_forms(kind: str, valid: Any) -> st.SearchStrategy[Any]:
    if kind == "uuid":
        hexes = st.uuids().map(lambda u: u.hex)
        return st.one_of(
            hexes,
            st.uuids().map(lambda u: f"{{{u}}}"),
            st.uuids().map(lambda u: u.urn),
            st.uuids().map(lambda u: u.int),
            st.uuids().map(lambda u: f" {u}"),
            st.just(str(valid)[:-1]),
        )
    if kind == "boolean":
        return st.one_of(
            st.sampled_from(["yes", "no", "true", "false", "True", "1", "0", "", "on", "null"]),
            st.sampled_from([1, 0, 1.0, 0.0, -1, 2]),
            st.integers(),
            st.just([]),
            st.just({}),
        )
    if kind == "integer":
        n = valid if isinstance(valid, int) and not isinstance(valid, bool) else 1
        return st.one_of(
            st.just(str(n)),
            st.just(float(n)),
            st.booleans(),
            st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer()),
            st.sampled_from(["0x10", "1e1", " 1", "", "[]"]),
        )
    day = date.fromisoformat(valid[:10]) if isinstance(valid, str) else date(2020, 5, 17)
    if kind == "date":
        return st.one_of(
            st.sampled_from(
                [
                    f"{day}T00:00:00Z",
                    f"{day}T00:00:00",
                    day.isoformat().replace("-", ""),
                    day.strftime("%d/%m/%Y"),
                    f" {day}",
                    f"{day} ",
                    "9999-12-31",
                    "0001-01-01",
                ]
            ),
            st.integers(min_value=-(2**40), max_value=2**40),
            st.floats(allow_nan=False, allow_infinity=False),
            _OUTSIDE.map(date.isoformat),
        )
    moment = f"{day}T09:15:00"
    return st.one_of(
        st.sampled_from(
            [
                day.isoformat(),
                moment,
                f"{day} 09:15:00Z",
                f"{day}T09:15Z",
                f"{day}t09:15:00z",
                f"{moment}+0100",
                f"{moment}+14:60",
                "9999-12-31T23:59:59Z",
                "9999-12-31T23:59:59+14:00",
                "0001-01-01T00:00:00-14:00",
                "1764148500",
            ]
        ),
        st.integers(min_value=-(2**40), max_value=2**40),
        st.floats(allow_nan=False, allow_infinity=False),
        st.builds(
            lambda d, z: datetime.combine(d, datetime.min.time(), z).isoformat(), _OUTSIDE, _ZONES
        ),
    )


# --- The property -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stem", "name", "path", "kind"), CASES, ids=[f"{c[0]}:{_dotted(c[2])}" for c in CASES]
)
def test_every_typed_field_refuses_its_lax_forms(
    stem: str, name: str, path: Path, kind: str
) -> None:
    assert name in SAMPLES[stem], f"no sample holds {_dotted(path)}: add one that does"
    base = _fresh(name)
    parent = _parent(base, path)
    assert parent is not None
    valid = parent.get(path[-1], _default(schema(stem), stem, path))
    field = _dotted(path)

    # The sample with the field as it is (or its default) passes the model and the schema.
    as_it_is = _set(base, path, valid)
    assert _refusals(stem, as_it_is) == ([], [], False)

    @LAX
    @given(lax_forms(kind, valid))
    def refused(value: Any) -> None:
        from_json, from_dict, by_schema = _refusals(stem, _set(base, path, value))
        assert field in from_json, (value, from_json)
        assert field in from_dict, (value, from_dict)
        whole_float = kind == "integer" and isinstance(value, float) and value.is_integer()
        assert by_schema or whole_float, f"the schema accepts {value!r} at {field}"

    refused()


_ACK = {
    "referral_id": "6f1c2a8e-3b5d-4c7a-9e21-5d8f0b7a4c11",
    "agency": "kelder-idva",
    "status": "filed",
    "acknowledged_at": "2026-11-26T09:20:00Z",
}


@LAX
@given(lax_forms("date-time", _ACK["acknowledged_at"]))
def test_an_acknowledgement_time_refuses_its_lax_forms(value: Any) -> None:
    """A recipient's acknowledgement (read off Kafka, then audited at that time) as well."""
    assert not validator("acknowledgement").is_valid({**_ACK, "acknowledged_at": value})
    with pytest.raises(SchemaError) as info:
        decode(Acknowledgement, json.dumps({**_ACK, "acknowledged_at": value}).encode())
    assert [p.field for p in info.value.problems] == ["acknowledged_at"]
    assert decode(Acknowledgement, json.dumps(_ACK).encode()).status == "filed"


def test_the_walk_finds_the_fields_the_issue_names() -> None:
    """A guard on the walk itself: the reported fields are among those it checks."""
    found = {(stem, _dotted(path)) for stem, _, path, _ in CASES}
    assert {
        ("referral", "safe_contact.routes.0.safe"),
        ("referral", "risk.dash_score"),
        ("referral", "header.created_at"),
        ("referral", "incident.occurred_at"),
        ("referral", "children.0.date_of_birth"),
        ("encompass-notification", "content.do_not_approach_parents"),
    } <= found
