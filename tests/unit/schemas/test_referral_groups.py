"""The referral's field groups G0-G10, cross-field checks and the errors integrators read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from schemas.consent import Consent, ConsentState, role_code
from schemas.decode import decode
from schemas.errors import SchemaError
from schemas.federation import Federation
from schemas.referral import FIELD_GROUPS, FieldGroup, Referral
from schemas.submission import decode_submission

SAMPLES = Path(__file__).resolve().parents[3] / "deploy" / "federation" / "samples"
REFERRAL_SAMPLES = sorted(SAMPLES.glob("referral-*.json"))


def sample(name: str = "referral-high-risk.json") -> dict[str, Any]:
    return dict(json.loads((SAMPLES / name).read_text(encoding="utf-8")))


def problems(data: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(SchemaError) as caught:
        decode(Referral, json.dumps(data).encode())
    return {p.field: p.problem for p in caught.value.problems}


@pytest.mark.parametrize("path", REFERRAL_SAMPLES, ids=lambda p: p.name)
def test_referral_samples_are_valid(path: Path) -> None:
    """Every referral sample decodes as a Referral."""
    referral = decode(Referral, path.read_bytes())
    assert referral.header.schema_version == "1.0"


def test_samples_cover_the_four_cases() -> None:
    """The samples hold a high-risk case with two children, medium, judgement and refusal."""
    high = Referral.model_validate(sample())
    assert high.risk.level == "high"
    assert len(high.children) == 2
    assert Referral.model_validate(sample("referral-medium-risk.json")).risk.level == "medium"
    pj = Referral.model_validate(sample("referral-professional-judgement.json")).risk
    assert pj.professional_judgement is not None
    assert pj.dash_score is not None
    assert pj.dash_score < 14
    refused = Referral.model_validate(sample("referral-consent-refused.json")).consent
    assert refused is not None
    assert refused.state is ConsentState.REFUSED


def test_field_groups_map_every_referral_field() -> None:
    """G0-G10 map one-to-one onto the Referral's top-level fields, none left out."""
    assert list(FIELD_GROUPS) == list(FieldGroup)
    assert set(FIELD_GROUPS.values()) == set(Referral.model_fields)
    referral = Referral.model_validate(sample())
    assert referral.group(FieldGroup.G6) is referral.risk


def test_minimal_referral_of_the_first_version_still_parses() -> None:
    """A referral with only header, victim, incident and risk (the 1.0 shape) is valid."""
    data = sample()
    minimal = {k: data[k] for k in ("header", "victim", "incident")}
    minimal["risk"] = {"level": "high", "dash_score": 16}
    referral = Referral.model_validate(minimal)
    assert referral.children == ()
    assert referral.consent is None


def test_unsafe_contact_route_is_kept_and_filterable() -> None:
    """An unsafe route is representable, and safe_routes() leaves it out."""
    contact = Referral.model_validate(sample()).safe_contact
    assert contact is not None
    assert [r.safe for r in contact.routes] == [True, False]
    assert all(r.safe for r in contact.safe_routes())


def test_unsafe_route_cannot_take_messages() -> None:
    """A route flagged unsafe but safe for messages is refused at that route's field."""
    data = sample()
    data["safe_contact"]["routes"][1]["safe_to_leave_message"] = True
    assert "safe_contact.routes.1.safe_to_leave_message" in problems(data)


def test_errors_name_the_field_path_without_prefixes() -> None:
    """Validation errors give dotted paths and plain sentences, never the submitted value."""
    data = sample()
    data["victim"]["nhs_number"] = "9990000019"
    data["risk"] = {"level": "high", "dash_score": 9}
    data["children"][0]["home_educated"] = True
    found = problems(data)
    assert found["victim.nhs_number"] == "the NHS number's check digit is wrong"
    assert "record the professional judgement" in found["risk.professional_judgement"]
    assert found["children.0.school_agency"] == "a home-educated child has no school agency"
    assert not any("9990000019" in p for p in found.values())


def test_incident_after_creation_is_refused() -> None:
    """An incident later than the referral's creation is refused at incident.occurred_at."""
    data = sample()
    data["incident"]["occurred_at"] = "2026-11-27T10:00:00+00:00"
    assert "incident.occurred_at" in problems(data)


def consent(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "state": "obtained",
        "art6_basis": "art6_1_e",
        "art9_condition": "art9_2_g",
        "dpa_condition": "dpa2018_sch1_para18",
        "subject_informed": True,
    }
    return {**base, **fields}


OVERRIDE = {
    "decision_maker_id": "KP-1102",
    "decision_maker_role": "detective_sergeant",
    "reason": "risk_to_victim",
    "justification": "High risk.",
    "subject_told": True,
    "legal_paragraph": "dpa2018_sch1_para18",
}


@pytest.mark.parametrize("state", [s for s in ConsentState if s is not ConsentState.OBTAINED])
def test_consent_other_than_obtained_needs_override(state: ConsentState) -> None:
    """Every consent state but 'obtained' is refused without an override record."""
    with pytest.raises(ValidationError, match="record who decided to share without it"):
        Consent.model_validate(consent(state=state.value))
    gateway = {"statutory_gateway": "ca1989_s47"} if state.value == "not_required_statutory" else {}
    assert Consent.model_validate(consent(state=state.value, override=OVERRIDE, **gateway))


def test_the_decision_maker_is_a_staff_id_and_a_role_code_never_a_name() -> None:
    """A name as staff id, or a job title as role, is refused naming the field and the form."""
    for field, value, says in (
        ("decision_maker_id", "Jane Doe", "staff or collar number"),
        ("decision_maker_id", "JaneDoe", "staff or collar number"),
        ("decision_maker_id", "KP-" + "1" * 40, "up to 32"),
        ("decision_maker_role", "Detective Sergeant", "role as a code"),
    ):
        data = sample()
        data["consent"] = consent(state="refused", override={**OVERRIDE, field: value})
        found = problems(data)
        assert list(found) == [f"consent.override.{field}"], (field, value)
        assert says in found[f"consent.override.{field}"]
        assert value not in str(found)


def test_a_referral_naming_its_decision_maker_the_old_way_is_told_the_new_field() -> None:
    """'decision_maker' is refused at that field, with a problem naming decision_maker_id."""
    old = {k: v for k, v in OVERRIDE.items() if k != "decision_maker_id"}
    data = sample()
    data["consent"] = consent(state="refused", override={**old, "decision_maker": "KP-1102"})
    with pytest.raises(SchemaError) as exc:
        decode(Referral, json.dumps(data).encode())
    [problem] = exc.value.problems
    assert problem.field == "consent.override.decision_maker"
    assert "decision_maker_id" in problem.problem
    assert "KP-1102" not in problem.problem


def test_role_code_turns_a_job_title_into_a_code() -> None:
    """Case, accents and punctuation fold into one code; a code stays as it is."""
    assert role_code("Detective Sergeant, Public Protection Unit") == (
        "detective_sergeant_public_protection_unit"
    )
    assert role_code("Infirmière référente") == "infirmiere_referente"
    assert role_code("detective_sergeant") == "detective_sergeant"
    assert len(role_code("Senior " * 20)) <= 64


def test_override_reason_comes_from_the_fixed_list() -> None:
    """An override reason outside the five listed is refused."""
    with pytest.raises(ValidationError, match="risk_to_victim"):
        Consent.model_validate(consent(state="refused", override={**OVERRIDE, "reason": "hunch"}))


def test_override_subject_not_told_needs_reason() -> None:
    """An override that did not tell the subject must say why."""
    with pytest.raises(ValidationError, match="say why the subject was not told"):
        Consent.model_validate(
            consent(state="refused", override={**OVERRIDE, "subject_told": False})
        )


def test_lawful_basis_pairs_are_checked() -> None:
    """Art 9(2)(h) needs Sch 1 para 2; Sch 8 (police Part 3) takes no Art 6/9; Art 6 is needed."""
    with pytest.raises(ValidationError, match="art9_2_h needs one of dpa2018_sch1_para2"):
        Consent.model_validate(consent(art9_condition="art9_2_h"))
    with pytest.raises(ValidationError, match="Schedule 8 is for police Part 3"):
        Consent.model_validate(consent(dpa_condition="dpa2018_sch8_para4"))
    part3 = Consent.model_validate(
        consent(art6_basis=None, art9_condition=None, dpa_condition="dpa2018_sch8_para4")
    )
    assert part3.art6_basis is None
    with pytest.raises(ValidationError, match="name the UK GDPR Art 6 basis"):
        Consent.model_validate(consent(art6_basis=None))


def test_subject_not_informed_needs_reason() -> None:
    """A subject not informed of the referral needs a recorded reason."""
    with pytest.raises(ValidationError, match="say why the subject was not informed"):
        Consent.model_validate(consent(state="refused", subject_informed=False, override=OVERRIDE))


def test_submission_tells_referral_from_notification() -> None:
    """decode_submission returns a Referral or an EncompassNotification by the body's shape."""
    referral = decode_submission((SAMPLES / "referral-high-risk.json").read_bytes())
    assert isinstance(referral, Referral)
    note = decode_submission((SAMPLES / "encompass-notification.json").read_bytes())
    assert type(note).__name__ == "EncompassNotification"
    bad = sample("encompass-notification.json")
    bad["content"]["victim_name"] = "x"
    with pytest.raises(SchemaError) as caught:
        decode_submission(json.dumps(bad).encode())
    assert caught.value.problems[0].field == "content.victim_name"


def test_federation_escalation_threshold_defaults_to_three() -> None:
    """A federation file without the setting uses the SafeLives default of 3."""
    fed = Federation.model_validate(
        {"name": "x", "agencies": [{"id": "kp", "name": "K", "role": "police"}]}
    )
    assert fed.marac_escalation_threshold == 3
