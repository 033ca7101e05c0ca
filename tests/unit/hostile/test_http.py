"""Hostile input through the broker's HTTP API: a typed 4xx problem for each, never a 5xx.

Each class the outside measurement reported (integers at the edge in the JWS header, a header
nesting a thousand deep, referral dates at the calendar's edge, X-Request-Id values with a
space, ``=``, ``-`` alone or non-ASCII) and the neighbours of each go through real mutual TLS
to a broker on loopback with the memory transport. For every refusal: the status is 4xx, the
body is problem+json with a ``urn:cairn:problem`` type and no traceback, and nothing was
published. A request id in an unsafe form is replaced, never refused, and never logged.
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

import pytest

from tests.samples import sample
from tests.unit.conftest import Broker, captured_logs
from tests.unit.hostile.support import (
    Answer,
    assert_problem,
    exchange,
    header_text,
    post_signed,
    signed,
)

POLICE = "kelder-police"


def with_value(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """``data`` with the field at the dotted ``path`` (list indices as numbers) set to ``value``."""
    node: Any = data
    *parents, last = path.split(".")
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return data


async def refused(broker: Broker, body: bytes, *, agency: str = POLICE) -> dict[str, Any]:
    """Post ``body`` as it is; assert the typed 4xx problem and nothing published; its body."""
    before = broker.transport.published
    answer = await exchange(broker.url, broker.keys.client_ssl(agency), body=body)
    return assert_problem(answer, published_before=before, published_now=broker.transport.published)


def bad_fields(problem: dict[str, Any]) -> list[str]:
    return [e["field"] for e in problem.get("errors", [])]


# --- Integers at the edge in the protected header -------------------------------------------

# The iat values the measurement sent, and their neighbours: each signed with the sender's own
# key over a valid referral, so nothing but the header is wrong.
EDGE_IATS = {
    "1e12": ("1000000000000", "signature-time-invalid"),
    "2^63": (str(2**63), "malformed-signature"),
    "2^64": (str(2**64), "malformed-signature"),
    "-1e20": (str(-(10**20)), "malformed-signature"),
    "2000 digits": ("9" * 2000, "malformed-signature"),
    "negative": ("-1", "signature-time-invalid"),
    "year 2100": ("4102444800", "signature-time-invalid"),
    "float": ("1764000000.0", "signature-time-invalid"),
    "exponent": ("1e400", "malformed-signature"),
    "NaN": ("NaN", "malformed-signature"),
    "Infinity": ("-Infinity", "malformed-signature"),
    "bool": ("true", "signature-time-invalid"),
    "string": ('"1764000000"', "signature-time-invalid"),
    "null": ("null", "signature-time-invalid"),
    "object": ('{"n":1}', "signature-time-invalid"),
}


@pytest.mark.parametrize(("iat", "problem"), EDGE_IATS.values(), ids=EDGE_IATS.keys())
async def test_an_iat_at_the_edge_is_a_typed_problem(
    broker: Broker, iat: str, problem: str
) -> None:
    key = broker.keys.trust(POLICE).signing_key()
    token = signed(header_text(key, iat=iat), json.dumps(sample()).encode(), key)
    body = await refused(broker, token)
    assert body["type"] == f"urn:cairn:problem:{problem}"


@pytest.mark.parametrize(
    "extra",
    [
        f',"x":{2**64}',
        f',"x":[1,2,{-(2**53) - 1}]',
        ',"x":{"y":1e999}',
        ',"x":NaN',
        ',"zip":"DEF","x":9007199254740993',
    ],
    ids=["2^64", "-(2^53)-1 in a list", "1e999", "NaN", "2^53+1"],
)
async def test_an_integer_outside_the_json_safe_range_anywhere_in_the_header_is_refused(
    broker: Broker, extra: str
) -> None:
    key = broker.keys.trust(POLICE).signing_key()
    now = int(broker.clock().timestamp())
    token = signed(header_text(key, iat=str(now), extra=extra), json.dumps(sample()).encode(), key)
    body = await refused(broker, token)
    assert body["type"] == "urn:cairn:problem:malformed-signature"


# --- Nesting and odd types in the protected header ---------------------------------------------


@pytest.mark.parametrize("depth", [17, 100, 1000, 1300])
@pytest.mark.parametrize("signature", ["signed", "unsigned"])
async def test_a_deeply_nested_header_is_a_malformed_signature(
    broker: Broker, depth: int, signature: str
) -> None:
    key = broker.keys.trust(POLICE).signing_key()
    now = int(broker.clock().timestamp())
    header = header_text(key, iat=str(now), extra=',"x":' + "[" * depth + "]" * depth)
    token = signed(header, json.dumps(sample()).encode(), key)
    if signature == "unsigned":
        token = token.rsplit(b".", 1)[0] + b"."
    body = await refused(broker, token)
    assert body["type"] in {
        "urn:cairn:problem:malformed-signature",
        "urn:cairn:problem:payload-too-large",
    }


@pytest.mark.parametrize(
    "header",
    [
        '{"alg":["EdDSA"],"kid":"%s","typ":"cairn-referral+jws","iat":%d}',
        '{"alg":{"EdDSA":1},"kid":"%s","typ":"cairn-referral+jws","iat":%d}',
        '{"alg":"EdDSA","kid":"%s","typ":["cairn-referral+jws"],"iat":%d}',
        '{"alg":"EdDSA","kid":["%s"],"typ":"cairn-referral+jws","iat":%d}',
        '{"alg":"EdDSA","kid":"%s","typ":"cairn-referral+jws","iat":%d,"crit":{"a":1}}',
        '{"alg":"EdDSA","kid":"%s","typ":"cairn-referral+jws","iat":%d,"iat":1}',
        '["EdDSA","%s",%d]',
        '{"alg":"EdDSA","kid":"%s","typ":"cairn-referral+jws","iat":%d,"b64":false}',
    ],
    ids=["alg list", "alg object", "typ list", "kid list", "crit", "duplicate", "array", "b64"],
)
async def test_header_members_of_the_wrong_json_type_are_refused(
    broker: Broker, header: str
) -> None:
    key = broker.keys.trust(POLICE).signing_key()
    text = header % (key.kid, int(broker.clock().timestamp()))
    await refused(broker, signed(text, json.dumps(sample()).encode(), key))


@pytest.mark.parametrize(
    "token",
    [
        b"",
        b"..",
        b"a.b.c.d",
        b"\xff\xfe.\x00.\x80",
        b"eyJ9." * 3,
        b"e" * 5000 + b".e30.AA",
        b"\xe2\x80\x8b.e30.AA",
    ],
    ids=["empty", "dots", "four parts", "binary", "bad json", "huge header", "non-ascii"],
)
async def test_bytes_that_are_no_jws_at_all_are_refused(broker: Broker, token: bytes) -> None:
    await refused(broker, token)


# --- Referral dates at the calendar's edge ----------------------------------------------------

EDGE_MOMENTS = [
    "9999-12-31T23:59:59Z",
    "9999-12-31T23:59:59+14:00",
    "9999-12-31T23:59:59-14:00",
    "9999-12-31T23:59:59",
    "0001-01-01T00:00:00+14:00",
    "0001-01-01T00:00:00Z",
    "2100-01-01T00:00:00Z",
    "1899-12-31T23:59:59Z",
]
EDGE_DAYS = ["9999-12-31", "0001-01-01", "1899-12-31", "2100-01-01", "9999-12-31T00:00:00Z"]
MOMENT_FIELDS = ["header.created_at", "incident.occurred_at"]
DAY_FIELDS = [
    "victim.date_of_birth",
    "children.0.date_of_birth",
    "perpetrator.date_of_birth",
    "perpetrator.bail_and_orders.0.expires_on",
]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        *((f, v) for f in MOMENT_FIELDS for v in EDGE_MOMENTS),
        *((f, v) for f in DAY_FIELDS for v in EDGE_DAYS),
    ],
)
async def test_a_time_or_date_at_the_calendars_edge_is_a_422_naming_the_field(
    broker: Broker, field: str, value: str
) -> None:
    data = with_value(sample(), field, value)
    body = await refused(broker, broker.sign(POLICE, data))
    assert body["type"] == "urn:cairn:problem:invalid-referral"
    assert field in bad_fields(body)


async def test_an_encompass_notice_dated_9999_is_a_422(broker: Broker) -> None:
    data = sample("encompass-notification.json")
    data["header"]["created_at"] = "9999-12-31T23:59:59Z"
    data["content"]["child_date_of_birth"] = "9999-12-31"
    body = await refused(broker, broker.sign(POLICE, data))
    assert body["type"] == "urn:cairn:problem:invalid-referral"
    assert {"header.created_at", "content.child_date_of_birth"} <= set(bad_fields(body))


async def test_a_referral_from_the_future_is_a_422_naming_each_date(broker: Broker) -> None:
    """Inside the plausible years but after the broker's clock (plus the skew allowed)."""
    later = broker.clock() + timedelta(days=3)
    data = sample()
    data["header"]["created_at"] = later.isoformat()
    data["incident"]["occurred_at"] = later.isoformat()
    data["children"][0]["date_of_birth"] = later.date().isoformat()
    data["perpetrator"]["date_of_birth"] = later.date().isoformat()
    body = await refused(broker, broker.sign(POLICE, data))
    assert body["type"] == "urn:cairn:problem:invalid-referral"
    assert set(bad_fields(body)) >= {
        "header.created_at",
        "incident.occurred_at",
        "children.0.date_of_birth",
        "perpetrator.date_of_birth",
    }


async def test_a_referral_created_within_the_clock_skew_is_accepted(broker: Broker) -> None:
    data = sample()
    skew = timedelta(seconds=broker.settings.max_clock_skew_s)
    data["header"]["created_at"] = (broker.clock() + skew - timedelta(seconds=1)).isoformat()
    answer = await post_signed(broker, data)
    assert answer.status == 202, answer.body[:300]


# --- Lax forms where the schema wants a boolean, an integer or a date --------------------------

LAX = [
    ("incident.reported_to_police", "yes"),
    ("incident.reported_to_police", 1),
    ("incident.reported_to_police", "true"),
    ("safe_contact.routes.0.safe", "yes"),
    ("safe_contact.routes.1.safe", 0),
    ("children.0.present_at_incident", "no"),
    ("risk.dash_score", "16"),
    ("risk.dash_score", 16.0),
    ("risk.incidents_last_12_months", "2"),
    ("risk.incidents_last_12_months", 2.0),
    ("risk.incidents_last_12_months", True),
    ("victim.date_of_birth", "1991-04-17T00:00:00Z"),
    ("victim.date_of_birth", 671846400),
    ("victim.date_of_birth", "19910417"),
    ("header.created_at", 1764148500),
    ("header.created_at", "1764148500"),
    ("header.created_at", "2026-11-26"),
    ("header.created_at", "2026-11-26 09:15:00Z"),
    ("header.created_at", "2026-11-26T09:15Z"),
]


@pytest.mark.parametrize(("field", "value"), LAX, ids=[f"{f}={v!r}" for f, v in LAX])
async def test_a_lax_form_is_a_422_naming_the_field(broker: Broker, field: str, value: Any) -> None:
    data = with_value(sample(), field, value)
    body = await refused(broker, broker.sign(POLICE, data))
    assert body["type"] == "urn:cairn:problem:invalid-referral"
    assert field in bad_fields(body)


# --- Bodies that are not a referral -----------------------------------------------------------

BODIES = {
    "nested 100": b'{"header":' + b"[" * 100 + b"]" * 100 + b"}",
    "nested 5000": b"[" * 5000 + b"]" * 5000,
    "nested in a string is fine, in an object not": b'{"a":"[[[[","b":' + b"{" * 40,
    "2^64": json.dumps(sample()).replace('"dash_score": 16', f'"dash_score": {2**64}').encode(),
    "5000 digits": json.dumps(sample()).replace('"dash_score": 16', '"dash_score": ' + "9" * 5000),
    "invalid utf-8": b'{"header": "\xff\xfe"}',
    "lone surrogate": b'{"header": "\\ud800"}',
    "not json": b"{not json",
    "null": b"null",
    "array": b"[]",
    "empty": b"",
    "NaN": b'{"risk": NaN}',
}


@pytest.mark.parametrize("payload", BODIES.values(), ids=BODIES.keys())
async def test_a_signed_body_that_is_no_referral_is_a_422(
    broker: Broker, payload: bytes | str
) -> None:
    raw = payload.encode() if isinstance(payload, str) else payload
    body = await refused(broker, broker.sign(POLICE, raw))
    assert body["type"] == "urn:cairn:problem:invalid-referral"


# --- X-Request-Id -----------------------------------------------------------------------------

UNSAFE_IDS = {
    "space": b"req 123",
    "equals": b"a=b",
    "hyphen alone": b"-",
    "non-ascii": "r\u00e9f-\u00fc".encode(),
    "latin-1 byte": b"ref-\xe9",
    "invalid utf-8": b"\xff\xfe",
    "65 characters": b"a" * 65,
    "slash": b"a/b",
    "markup": b"<script>",
    "leading dot": b".hidden",
    "empty": b"",
    "a name": b"Testina Fictitia",
}


def fresh_id(value: str) -> bool:
    try:
        return uuid.UUID(value).version == 4
    except ValueError:
        return False


@pytest.mark.parametrize("sent", UNSAFE_IDS.values(), ids=UNSAFE_IDS.keys())
async def test_an_unsafe_request_id_is_replaced_and_never_logged(
    broker: Broker, sent: bytes
) -> None:
    """A valid referral is accepted; the response names the fresh id that replaced it."""
    data = sample()
    with captured_logs() as logs:
        answer = await post_signed(broker, data, headers=((b"X-Request-Id", sent),))
    assert answer.status == 202, answer.body[:300]
    replaced = answer.headers["x-request-id"]
    assert fresh_id(replaced)
    assert {e["request_id"] for e in logs if "request_id" in e} == {replaced}
    assert any(e["event"] == "request.id_replaced" for e in logs)
    if len(sent.strip()) >= 3:
        assert sent.strip().decode("utf-8", "replace") not in repr(logs)
    audited = [json.loads(r.value) for r in broker.transport.topics["unit.audit"]]
    assert {e["request_id"] for e in audited} == {replaced}


async def test_an_unsafe_request_id_on_a_refusal_is_replaced_in_the_problem(
    broker: Broker,
) -> None:
    before = broker.transport.published
    answer = await exchange(
        broker.url,
        broker.keys.client_ssl(POLICE),
        body=b"not a jws",
        headers=((b"X-Request-Id", b"a b=c"),),
    )
    body = assert_problem(answer, published_before=before, published_now=broker.transport.published)
    assert fresh_id(body["request_id"])
    assert answer.headers["x-request-id"] == body["request_id"]


@pytest.mark.parametrize("sent", ["req-123", "A", "2f1c.x:9_b-Z", "a" * 64])
async def test_a_request_id_in_the_safe_form_is_kept(broker: Broker, sent: str) -> None:
    with captured_logs() as logs:
        answer = await post_signed(broker, sample(), headers=((b"X-Request-Id", sent.encode()),))
    assert answer.status == 202
    assert answer.headers["x-request-id"] == sent
    assert not any(e["event"] == "request.id_replaced" for e in logs)
    audited = [json.loads(r.value) for r in broker.transport.topics["unit.audit"]]
    assert {e["request_id"] for e in audited} == {sent}


async def test_a_second_request_id_header_does_not_smuggle_a_value(broker: Broker) -> None:
    answer: Answer = await post_signed(
        broker, sample(), headers=((b"X-Request-Id", b"ok-1"), (b"X-Request-Id", b"bad id"))
    )
    assert answer.status == 202
    assert answer.headers["x-request-id"] in {"ok-1"} or fresh_id(answer.headers["x-request-id"])
