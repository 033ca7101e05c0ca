"""Hypothesis strategies for hostile input: JSON values, JWS protected headers, referral JSON.

Headers and values are drawn as JSON *text*, not only as Python values, because what breaks a
parser is text no serializer writes: ``NaN``, ``1e999``, an integer of two thousand digits, a
member named twice, arrays nested a thousand deep.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from typing import Any

from hypothesis import strategies as st

from keys.envelope import REFERRAL_TYP

__all__ = [
    "EDGE_VALUES",
    "json_values",
    "paths_of",
    "protected_headers",
    "raw_json",
    "referral_mutants",
]

# Values at the edge of every type a referral holds: calendar ends, lax forms, big integers.
EDGE_VALUES: tuple[Any, ...] = (
    "9999-12-31T23:59:59Z",
    "9999-12-31T23:59:59+14:00",
    "9999-12-31T23:59:59",
    "0001-01-01T00:00:00+14:00",
    "9999-12-31",
    "0001-01-01",
    "2100-01-01",
    "1899-12-31T23:59:59-14:00",
    "yes",
    "no",
    "true",
    "16",
    1,
    0,
    1.0,
    -1,
    2**53 + 1,
    2**63,
    2**64,
    -(10**20),
    1e308,
    "",
    " ",
    "\u0000",
    "\u202e",
    "x" * 5000,
    [],
    {},
    None,
)

# Raw JSON text no encoder produces.
_NASTY_TEXT = (
    "NaN",
    "Infinity",
    "-Infinity",
    "1e999",
    "-1e999",
    "9" * 2000,
    "-" + "9" * 4400,
    "1" + "0" * 30,
    "0.0000000000000000000001",
    '"\\ud800"',
    '"\\u0000"',
)

json_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(EDGE_VALUES),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)


# Depths either side of the bounds: the default (16), pydantic's (200), Python's stack (~1000).
_DEPTHS = st.one_of(
    st.sampled_from([15, 16, 17, 199, 200, 201, 999, 1000, 1001, 1500]),
    st.integers(min_value=1, max_value=1500),
)


@st.composite
def raw_json(draw: st.DrawFn) -> str:
    """JSON text for one value: encoded, nested deep, or text no encoder writes."""
    kind = draw(st.sampled_from(["value", "nasty", "deep", "deep object"]))
    if kind == "nasty":
        return draw(st.sampled_from(_NASTY_TEXT))
    if kind == "deep":
        depth = draw(_DEPTHS)
        return "[" * depth + "]" * depth
    if kind == "deep object":
        depth = draw(_DEPTHS.map(lambda d: min(d, 400)))
        return '{"a":' * depth + "1" + "}" * depth
    return json.dumps(draw(json_values))


# Seconds since the epoch around every edge a datetime has: 0, 2^31, year 2100, year 9999,
# the 64-bit range, and far beyond it.
_IATS = st.one_of(
    st.sampled_from(
        [0, -1, 2**31, 4_102_444_800, 253_402_300_800, 10**12, 2**53, 2**63, 2**64, -(10**20)]
    ),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=0, max_value=4_102_444_799),
).map(str) | st.sampled_from(["1764000000.0", "1e12", "9" * 2000, "true", '"1764000000"'])


_HEADER_NAMES = ("alg", "kid", "typ", "iat", "crit", "zip", "cty", "enc", "b64", "jku", "x")


@st.composite
def protected_headers(draw: st.DrawFn, kid: str, iat: int) -> str:
    """A referral's protected header as text: valid, then up to three members changed."""
    members: dict[str, str] = {
        "alg": '"EdDSA"',
        "kid": json.dumps(kid),
        "typ": json.dumps(REFERRAL_TYP),
        "iat": str(iat),
    }
    names = draw(st.lists(st.sampled_from(_HEADER_NAMES), max_size=3, unique=True))
    for name in names:
        if name in members and draw(st.booleans()):
            del members[name]
        elif name == "iat" and draw(st.booleans()):
            members[name] = draw(_IATS)
        else:
            members[name] = draw(raw_json())
    pairs = [f"{json.dumps(n)}:{v}" for n, v in members.items()]
    if pairs and draw(st.booleans()):
        pairs.append(pairs[draw(st.integers(0, len(pairs) - 1))])  # a member named twice
    return "{" + ",".join(pairs) + "}"


def paths_of(node: Any, prefix: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    """Every path into a JSON document: each member and each item, containers included."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*prefix, key)
            yield from paths_of(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield (*prefix, index)
            yield from paths_of(value, (*prefix, index))


_MOMENT_SHAPE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_EDGE_MOMENTS = st.sampled_from(
    [v for v in EDGE_VALUES if isinstance(v, str) and _MOMENT_SHAPE.match(v)]
    + ["2099-12-31T23:59:59-14:00", "1900-01-01T00:00:00+14:00", "2099-12-31", "1900-01-01"]
)
_LAX = st.sampled_from(["yes", "no", "true", "1", "16", 1, 0, 1.0, 16.0, True, False, None])


def _like(value: Any) -> st.SearchStrategy[Any]:
    """Hostile values for a member that holds ``value``: edge dates for a date, lax forms..."""
    if isinstance(value, str) and _MOMENT_SHAPE.match(value):
        return _EDGE_MOMENTS | _LAX
    if isinstance(value, bool | int):
        return _LAX | st.integers(min_value=-(2**70), max_value=2**70)
    return json_values


def _typed(doc: Any, path: tuple[str | int, ...]) -> bool:
    """Whether the member at ``path`` holds a date, a time, a boolean or a number."""
    node = doc
    for part in path:
        node = node[part]
    return isinstance(node, bool | int) or (
        isinstance(node, str) and _MOMENT_SHAPE.match(node) is not None
    )


@st.composite
def referral_mutants(draw: st.DrawFn, base: dict[str, Any]) -> bytes:
    """``base`` as JSON with one to three members replaced by hostile values, or raw text.

    Half the changes are drawn for the member's own type (edge dates where a date was, lax
    forms where a boolean or a number was), which is where a model's coercion hides.
    """
    doc = copy.deepcopy(base)
    paths = list(paths_of(doc))
    typed = [path for path in paths if _typed(doc, path)]
    chosen = st.sampled_from(typed) | st.sampled_from(paths)
    raw: dict[str, str] = {}
    for path in draw(st.lists(chosen, min_size=1, max_size=3, unique=True)):
        node: Any = doc
        try:
            for part in path[:-1]:
                node = node[part]
            node[path[-1]]
        except (KeyError, IndexError, TypeError):
            continue
        how = draw(st.sampled_from(["typed", "typed", "value", "raw"]))
        if how == "typed":
            node[path[-1]] = draw(_like(node[path[-1]]))
        elif how == "value":
            node[path[-1]] = draw(json_values)
        else:
            # A placeholder that json.dumps writes as a string, swapped for raw text after.
            marker = f"@@raw{len(raw)}@@"
            raw[marker] = draw(raw_json())
            node[path[-1]] = marker
    text = json.dumps(doc)
    for marker, value in raw.items():
        text = text.replace(json.dumps(marker), value)
    return text.encode("utf-8", "surrogatepass")
