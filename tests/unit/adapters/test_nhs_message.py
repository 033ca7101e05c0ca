"""A disclosure to the NHS trust as a FHIR message: MessageHeader first, the mapped resources,
a Provenance carrying the broker's JWS; valid under fhir.resources; the same for every send."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle

from adapters.nhs import disclosure_to_bundle
from adapters.nhs.message import (
    DISCLOSURE_EVENT,
    SIGNATURE_FORMAT,
    broker_signature,
    disclosure_message,
    mesh_endpoint,
)
from broker.federation import load_federation
from broker.policy.agreements import load_agreements
from broker.policy.decide import decide
from schemas.disclosure import DisclosedReferral, Disclosure
from tests.samples import FEDERATION_DIR
from tests.unit.policy.cases import referral

AT = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
JWS = "eyJhbGciOiJFZERTQSJ9.eyJ4IjoxfQ.c2lnbmF0dXJl"  # shape only: the real one is verified
# against the broker's key in tests/integration/test_mesh_inbound.py


def to_trust() -> Disclosure:
    source = referral("HEALTH_SAFEGUARDING", ["kelder-nhs"], "kelder-police")
    decision = next(
        d
        for d in decide(
            source,
            load_federation(FEDERATION_DIR),
            agreements=load_agreements(FEDERATION_DIR / "agreements"),
            now=source.header.created_at,
            max_recipients=16,
        )
        if d.allowed
    )
    assert decision.agreement
    assert decision.lawful_basis
    assert decision.consent_basis
    assert decision.retention
    return Disclosure(
        referral_id=source.header.referral_id,
        sender_agency="kelder-police",
        recipient_agency="kelder-nhs",
        purpose=source.header.purpose,
        agreement=decision.agreement,
        lawful_basis=decision.lawful_basis,
        consent_basis=decision.consent_basis,
        groups=decision.groups,
        retention=decision.retention,
        referral=DisclosedReferral.whole(source),
    )


def message(disclosure: Disclosure, signed: str | None = JWS) -> dict[str, Any]:
    return disclosure_message(
        disclosure,
        signed=signed,
        received_at=AT,
        source_mailbox="X26ABC1",
        destination_mailbox="X26ABC2",
    )


def test_the_message_is_a_valid_fhir_message_with_the_broker_signature() -> None:
    """Bundle type message, MessageHeader first (the event, the trust's mailbox, the focus on
    the ServiceRequest), then the collection's entries unchanged, then the Provenance."""
    disclosure = to_trust()
    built = message(disclosure)
    Bundle.model_validate(built)
    assert built["type"] == "message"
    kinds = [e["resource"]["resourceType"] for e in built["entry"]]
    assert kinds[0] == "MessageHeader"
    assert kinds[-1] == "Provenance"
    collection = disclosure_to_bundle(disclosure)
    assert built["entry"][1:-1] == collection["entry"]
    header = built["entry"][0]["resource"]
    assert header["eventCoding"]["code"] == DISCLOSURE_EVENT
    assert header["destination"][0]["endpoint"] == mesh_endpoint("X26ABC2")
    assert header["destination"][0]["receiver"]["identifier"]["value"] == "kelder-nhs"
    assert header["sender"]["identifier"]["value"] == "kelder-police"
    request = next(e for e in built["entry"] if e["resource"]["resourceType"] == "ServiceRequest")
    assert header["focus"] == [{"reference": request["fullUrl"]}]
    provenance = built["entry"][-1]["resource"]
    assert {t["reference"] for t in provenance["target"]} == {
        e["fullUrl"] for e in collection["entry"]
    }
    (signature,) = provenance["signature"]
    assert signature["sigFormat"] == SIGNATURE_FORMAT
    assert signature["who"]["identifier"]["value"] == "cairn-broker"
    assert base64.b64decode(signature["data"]).decode() == JWS
    assert broker_signature(built) == JWS
    assert json.dumps(built)


def test_the_same_disclosure_gives_the_same_message_and_no_jws_no_provenance() -> None:
    """Sent again, the message (its identifier included) is identical, so the trust can drop a
    repeat; without a JWS there is no Provenance and broker_signature says so."""
    disclosure = to_trust()
    assert message(disclosure) == message(disclosure)
    bare = message(disclosure, signed=None)
    assert "Provenance" not in [e["resource"]["resourceType"] for e in bare["entry"]]
    with pytest.raises(ValueError, match="no Provenance"):
        broker_signature(bare)
