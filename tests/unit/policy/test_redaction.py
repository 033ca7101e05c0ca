"""Redaction before sealing: unsafe contacts never leave, and the disclosure models hold."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from pydantic import BaseModel, ValidationError

from adapters.nhs import disclosure_to_bundle
from broker.policy.redaction import MASK, redact
from schemas import disclosure as d
from schemas.consent import Consent
from schemas.referral import (
    Child,
    Header,
    Incident,
    Perpetrator,
    Referral,
    Risk,
    SafeContact,
    Victim,
)
from tests.unit.policy.cases import (
    UNSAFE_LANDLINE,
    disclosed,
    disclosure,
    full_referral_data,
    one,
    referral,
    strings,
)


def with_text(**texts: str) -> dict[str, Any]:
    """The full referral with free texts that mention contact details."""
    data = full_referral_data()
    data["safe_contact"]["notes"] = texts.get("notes", "Never ring 01632960001 (the landline).")
    data["incident"]["summary"] = texts.get("summary", "She said to call (01632) 960-001 only.")
    data["wishes"]["victim_wishes"] = texts.get("wishes", "Do not write to FAKE@EXAMPLE.INVALID.")
    data["safe_contact"]["routes"].append(
        {"kind": "email", "detail": "fake@example.invalid", "safe": False}
    )
    return data


def test_unsafe_details_are_masked_in_free_text_however_written() -> None:
    """An unsafe number or address quoted in notes, summary or wishes is masked, any spacing."""
    source = referral("MARAC", ["kelder-marac"], data=with_text())
    got = disclosed(source, one(source))
    assert got.safe_contact is not None
    assert got.safe_contact.notes == f"Never ring {MASK} (the landline)."
    assert got.incident is not None
    assert got.incident.summary == f"She said to call {MASK} only."
    assert got.wishes is not None
    assert got.wishes.victim_wishes == f"Do not write to {MASK}."
    text = " ".join(strings(got.model_dump(mode="json")))
    for leaked in ("01632", "960001", "960-001", "fake@example.invalid", "FAKE@"):
        assert leaked not in text


def test_masking_never_makes_a_text_longer_than_its_limit() -> None:
    """A masked text is never longer than the original, so it still fits its field."""
    data = full_referral_data()
    data["safe_contact"]["routes"].append({"kind": "phone", "detail": "4477", "safe": False})
    data["safe_contact"]["notes"] = "x" * 3996 + "4477"
    source = referral("MARAC", ["kelder-marac"], data=data)
    got = disclosed(source, one(source))
    assert got.safe_contact is not None
    assert got.safe_contact.notes == "x" * 3996 + MASK[:4]


def test_identifiers_are_not_masked() -> None:
    """Agency ids and references are codes, not text: masking leaves them as they are."""
    data = full_referral_data()
    data["safe_contact"]["routes"].append(
        {"kind": "via_third_party", "detail": "kelder-police", "safe": False}
    )
    source = referral("MARAC", ["kelder-marac"], data=data)
    got = disclosed(source, one(source))
    assert got.header.sender_agency == "kelder-police"


def test_only_unsafe_routes_leaves_an_empty_safe_contact() -> None:
    """With every route unsafe, G2 carries the notes and no route at all."""
    data = full_referral_data()
    data["safe_contact"]["routes"] = [{"kind": "phone", "detail": UNSAFE_LANDLINE, "safe": False}]
    source = referral("MARAC", ["kelder-marac"], data=data)
    got = disclosed(source, one(source))
    assert got.safe_contact is not None
    assert got.safe_contact.routes == ()
    assert UNSAFE_LANDLINE not in got.model_dump_json()


def test_refused_decision_cannot_be_redacted() -> None:
    """Redacting for a refused recipient is a programming error."""
    source = referral("MARAC", ["kelder-housing"])
    with pytest.raises(RuntimeError):
        redact(source, one(source))


def test_decision_without_a_header_cannot_be_redacted() -> None:
    """Every disclosure of a referral carries G0; a decision without it is a bug."""
    source = referral("MARAC", ["kelder-marac"])
    decision = one(source)
    with pytest.raises(RuntimeError):
        redact(source, replace(decision, groups=decision.groups[1:]))


@pytest.mark.parametrize(
    ("original", "redacted"),
    [
        (Header, d.DisclosedHeader),
        (Victim, d.DisclosedVictim),
        (SafeContact, d.DisclosedSafeContact),
        (Perpetrator, d.DisclosedPerpetrator),
        (Child, d.DisclosedChild),
        (Incident, d.DisclosedIncident),
        (Risk, d.DisclosedRisk),
        (Consent, d.DisclosedConsent),
        (Referral, d.DisclosedReferral),
    ],
    ids=lambda m: m.__name__,
)
def test_disclosed_models_mirror_the_referral_models(
    original: type[BaseModel], redacted: type[BaseModel]
) -> None:
    """Each redacted model has exactly the fields of its group, in the same order."""
    assert list(redacted.model_fields) == list(original.model_fields)


def test_whole_referral_round_trips_through_the_disclosed_form() -> None:
    """A whole referral in its disclosed form dumps to the same JSON as the referral."""
    source = referral("MARAC", ["kelder-marac"])
    whole = d.DisclosedReferral.whole(source)
    assert whole.model_dump(mode="json") == source.model_dump(mode="json")


def test_a_disclosure_must_name_its_basis_and_groups() -> None:
    """A disclosure without agreement, bases, groups or retention does not validate."""
    source = referral("MARAC", ["kelder-marac"])
    with pytest.raises(ValidationError) as info:
        d.Disclosure.model_validate(
            {
                "referral_id": str(source.header.referral_id),
                "sender_agency": "kelder-police",
                "recipient_agency": "kelder-marac",
                "purpose": "MARAC",
                "referral": d.DisclosedReferral.whole(source).model_dump(mode="json"),
            }
        )
    missing = {e["loc"][0] for e in info.value.errors()}
    assert missing == {"agreement", "lawful_basis", "consent_basis", "groups", "retention"}


@pytest.mark.parametrize(
    "basis",
    [
        {},
        {"art6": "art6_1_e", "art9": "art9_2_g"},
        {"art6": "art6_1_e", "art9": "art9_2_h", "dpa": "dpa2018_sch1_para18"},
        {"art6": "art6_1_e", "dpa": "dpa2018_sch8_para4"},
        {"dpa": "dpa2018_sch1_para18"},
    ],
)
def test_a_lawful_basis_pairs_its_codes_as_the_law_does(basis: dict[str, str]) -> None:
    """Art 9 needs its DPA paragraph, Schedule 8 stands alone, and a basis names something."""
    with pytest.raises(ValidationError):
        d.LawfulBasis.model_validate(basis)


def test_consent_basis_names_an_override_only_without_consent() -> None:
    """'obtained' with an override reason, or a reason without its paragraph, is refused."""
    with pytest.raises(ValidationError):
        d.ConsentBasis.model_validate({"state": "obtained", "override_reason": "risk_to_victim"})
    with pytest.raises(ValidationError):
        d.ConsentBasis.model_validate({"state": "refused", "override_reason": "risk_to_victim"})


def attachments(node: Any) -> list[str]:
    """The decoded JSON attachments (the field-group extensions) of a FHIR bundle."""
    if isinstance(node, dict):
        if node.get("contentType") == "application/json" and "data" in node:
            return [base64.b64decode(node["data"]).decode()]
        return [a for v in node.values() for a in attachments(v)]
    if isinstance(node, list):
        return [a for v in node for a in attachments(v)]
    return []


def test_nhs_trust_files_only_what_it_received() -> None:
    """The trust's redacted disclosure maps to a valid bundle without withheld data."""
    source = referral("HEALTH_SAFEGUARDING", ["kelder-nhs"])
    decision = one(source)
    assert decision.recipient == "kelder-nhs"
    made = disclosure(source, decision)
    bundle = disclosure_to_bundle(made)
    Bundle.model_validate(bundle)
    text = json.dumps(bundle)
    everything = text + " ".join(attachments(bundle))
    assert "Two previous domestic-abuse-related convictions" not in everything  # G3 subset
    assert "unsafe-contact-route" not in text
    assert UNSAFE_LANDLINE not in everything
    assert "Locks changed" not in everything  # no safety plan
    assert "Review licence conditions" not in everything  # G9: only the trust's own entries
    assert "Flag the victim's hospital record" in everything
    risk = next(e for e in bundle["entry"] if e["resource"]["resourceType"] == "RiskAssessment")
    assert "basis" not in risk["resource"]  # no DASH answers went to the trust


def test_partial_dash_answers_map_to_fhir() -> None:
    """Children's social care's DASH subset maps to a QuestionnaireResponse of those items."""
    source = referral("CHILD_SAFEGUARDING", ["kelder-csc"])
    decision = one(source)
    got = disclosed(source, decision)
    assert decision.agreement is not None
    assert decision.lawful_basis is not None
    assert decision.consent_basis is not None
    assert decision.retention is not None
    bundle = disclosure_to_bundle(
        d.Disclosure(
            referral_id=source.header.referral_id,
            sender_agency="kelder-police",
            recipient_agency="kelder-csc",
            purpose=source.header.purpose,
            agreement=decision.agreement,
            lawful_basis=decision.lawful_basis,
            consent_basis=decision.consent_basis,
            groups=decision.groups,
            retention=decision.retention,
            referral=got,
        )
    )
    qr = next(
        e["resource"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "QuestionnaireResponse"
    )
    assert [i["linkId"] for i in qr["item"]] == ["q3", "q7", "q9", "q18", "q23"]
