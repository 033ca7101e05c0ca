"""Generated hostile input through the real broker: whatever arrives, never a 5xx.

Hypothesis draws JWS protected headers and referral JSON from ``strategies`` and each example
goes over mutual TLS to the broker on loopback. The property: the answer is 2xx (the input was
still acceptable) or a typed 4xx problem with no traceback that published nothing. The runs are
derandomized (the same examples every time, in CI too) and bounded in count.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.web.middleware import REQUEST_ID_FORM
from schemas.audit import RequestId
from schemas.decode import json_depth
from tests.samples import sample
from tests.unit.conftest import Broker
from tests.unit.hostile.strategies import (
    json_values,
    protected_headers,
    raw_json,
    referral_mutants,
)
from tests.unit.hostile.support import Answer, assert_problem, exchange, signed

POLICE = "kelder-police"
SAMPLES = (
    "referral-high-risk.json",
    "referral-consent-refused.json",
    "encompass-notification.json",
)

# One broker serves every example of a test (it is the thing under test, not state to reset).
HOSTILE = settings(
    max_examples=75,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
PURE = settings(max_examples=300, deadline=None, derandomize=True, database=None)


def acceptable(answer: Answer, *, published_before: int, published_now: int) -> None:
    """A 2xx, or a typed 4xx problem that published nothing; never a 5xx."""
    if 200 <= answer.status < 300:
        return
    assert_problem(answer, published_before=published_before, published_now=published_now)


@HOSTILE
@given(data=st.data())
async def test_any_protected_header_gets_a_2xx_or_a_typed_4xx(
    broker: Broker, data: st.DataObject
) -> None:
    key = broker.keys.trust(POLICE).signing_key()
    header = data.draw(protected_headers(key.kid, int(broker.clock().timestamp())))
    token = signed(header, json.dumps(sample()).encode(), key)
    if data.draw(st.booleans()):
        token = token.rsplit(b".", 1)[0] + b"." + data.draw(st.sampled_from([b"", b"AA", b"!"]))
    before = broker.transport.published
    answer = await exchange(broker.url, broker.keys.client_ssl(POLICE), body=token)
    acceptable(answer, published_before=before, published_now=broker.transport.published)


@HOSTILE
@given(data=st.data())
async def test_any_referral_json_gets_a_2xx_or_a_typed_4xx(
    broker: Broker, data: st.DataObject
) -> None:
    name = data.draw(st.sampled_from(SAMPLES))
    base = sample(name)
    body = data.draw(referral_mutants(base))
    before = broker.transport.published
    answer = await exchange(
        broker.url, broker.keys.client_ssl(POLICE), body=broker.sign(POLICE, body)
    )
    acceptable(answer, published_before=before, published_now=broker.transport.published)


# What RFC 9110 §5.5 lets a field value hold: visible ASCII, obs-text, space and tab. (Control
# characters are refused by aiohttp's parser before any Cairn code runs.)
_FIELD_VALUE_BYTES = [b for b in range(256) if b == 0x09 or 0x20 <= b != 0x7F]


@HOSTILE
@given(request_id=st.lists(st.sampled_from(_FIELD_VALUE_BYTES), max_size=80).map(bytes))
async def test_any_request_id_on_a_valid_referral_is_kept_or_replaced_never_a_5xx(
    broker: Broker, request_id: bytes
) -> None:
    answer = await exchange(
        broker.url,
        broker.keys.client_ssl(POLICE),
        body=broker.sign(POLICE, sample()),
        headers=((b"X-Request-Id", request_id),),
    )
    assert answer.status == 202, answer.body[:300]
    assert REQUEST_ID_FORM.fullmatch(answer.headers["x-request-id"])


# --- The pieces the properties above rely on -------------------------------------------------


@PURE
@given(st.from_regex(REQUEST_ID_FORM, fullmatch=True))
def test_every_request_id_the_middleware_keeps_fits_an_audit_event(request_id: str) -> None:
    from pydantic import TypeAdapter

    assert TypeAdapter(RequestId).validate_python(request_id) == request_id
    assert request_id.encode("ascii")  # a Kafka header carries it as it is


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


@PURE
@given(json_values)
def test_the_depth_scan_agrees_with_the_parsed_depth(value: Any) -> None:
    assert json_depth(json.dumps(value).encode()) == _depth(value)


@PURE
@given(raw_json())
def test_the_depth_scan_never_recurses(text: str) -> None:
    """Raw text of any nesting is measured (and never raises), a thousand levels included."""
    assert json_depth(text.encode("utf-8", "surrogatepass")) >= 0
