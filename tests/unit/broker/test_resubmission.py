"""A resubmitted referral is recognised by its content, not by its signature or its JSON spelling.

The broker's idempotency compares ``schemas.submission.submission_digest``: the same referral
signed again later, or written with another key order, white space or its defaults spelled out,
gets the first receipt and sends nothing; the same id with any field changed is a 409 that says
what is not allowed and what to check, and never advises a new id.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
import rfc8785

from adapters.client import ReferralClient
from schemas.referral import Referral
from schemas.submission import _canonical, decode_submission, submission_digest
from tests.samples import SAMPLES, sample
from tests.unit.conftest import Broker, assert_refused, captured_logs


def respelled(data: dict[str, Any]) -> bytes:
    """The same referral as another system might write it: keys sorted, indented, defaults
    given explicitly."""
    again = json.loads(json.dumps(data))
    again["header"].setdefault("marac_reference", None)
    again["header"].setdefault("classification", "OFFICIAL-SENSITIVE")
    return json.dumps(again, sort_keys=True, indent=3).encode()


def test_digest_is_the_content_whatever_the_spelling() -> None:
    """Key order, white space and a default spelled out do not change the digest; a field does."""
    data = sample()
    plain = decode_submission(json.dumps(data).encode())
    assert submission_digest(decode_submission(respelled(data))) == submission_digest(plain)
    changed = json.loads(json.dumps(data))
    changed["incident"]["location"] = "elsewhere"
    assert submission_digest(decode_submission(json.dumps(changed).encode())) != (
        submission_digest(plain)
    )


MESSAGES = sorted(p.name for p in SAMPLES.glob("*.json") if not p.name.endswith(".fhir.json"))


@pytest.mark.parametrize("name", MESSAGES)
def test_the_fast_canonical_form_is_rfc_8785(name: str) -> None:
    """The digest's canonical bytes are rfc8785.dumps' for every sample message, and for text
    full of escapes, quotes, non-ASCII and astral characters."""
    message = decode_submission((SAMPLES / name).read_bytes())
    content = message.model_dump(mode="json")
    assert _canonical(content) == rfc8785.dumps(content)
    content["escapes"] = '\b\t\n\f\r\x00\x1f\x7f"\\/ é € \u2028 \U0001f600 <&>'
    assert _canonical(content) == rfc8785.dumps(content)


async def test_the_same_referral_signed_later_and_spelled_otherwise_is_a_resubmission(
    broker: Broker,
) -> None:
    """Signed a minute later (another iat) with its JSON respelled: 200, the first receipt, and
    nothing published."""
    data = sample()
    first = await broker.submit("kelder-police", data)
    assert first.status == 202
    published = broker.transport.published
    later = broker.clock() + timedelta(minutes=1)
    token = broker.sign("kelder-police", respelled(data), clock=lambda: later)
    again = await broker.post("kelder-police", token)
    assert again.status == 200
    assert again.body == first.body
    assert broker.transport.published == published


async def test_same_id_other_content_is_refused_without_advising_a_new_id(
    broker: Broker,
) -> None:
    """One field changed under a used id: 409 replay-conflict, logged as refused, nothing sent;
    the text says the id cannot carry other content and to check the source record, never to
    mint a new id, and repeats no value of the referral."""
    first = sample()
    assert (await broker.submit("kelder-police", first)).status == 202
    published = broker.transport.published
    second = sample()
    second["header"]["referral_id"] = first["header"]["referral_id"]
    second["incident"]["summary"] = "A summary edited in the source system after sending."
    with captured_logs() as logs:
        reply = await broker.submit("kelder-police", second)
    assert_refused(reply, logs, status=409, problem="replay-conflict", referral=second)
    assert broker.transport.published == published
    detail = reply.body["detail"]
    assert "different content" in detail
    assert "source record" in detail
    assert "new id" not in detail
    assert reply.body["title"] == "Referral id already used with other content"
    assert "edited in the source" not in json.dumps(reply.body)


async def test_the_client_tells_a_first_acceptance_from_an_earlier_one(broker: Broker) -> None:
    """ReferralClient.send: the broker's 202 is already_sent False, its 200 for the same
    referral again True with the very same receipt."""
    client = ReferralClient(
        broker.url,
        ssl_context=broker.keys.client_ssl("kelder-police"),
        signing_key=broker.keys.trust("kelder-police").signing_key(),
        clock=broker.clock,
    )
    referral = Referral.model_validate(sample())
    async with client:
        first = await client.send(referral)
        again = await client.send(referral)
    assert (first.already_sent, again.already_sent) == (False, True)
    assert again.receipt == first.receipt
