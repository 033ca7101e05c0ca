"""Lawful basis and consent: every consent state, every override reason, incomplete overrides,
the referral-wide refusals and a recorded objection to health-care sharing."""

from __future__ import annotations

import json
from typing import Any

import pytest

from broker.policy.admission import OVERRIDE_ITEMS, PolicyRefusal
from broker.policy.agreements import Agreement
from schemas.consent import Consent, ConsentOverride, ConsentState, OverrideReason
from schemas.errors import InputError, SchemaError
from schemas.submission import decode_submission
from tests.unit.policy.cases import (
    agreement,
    consent,
    decisions,
    edited,
    full_referral_data,
    one,
    referral,
)

NON_OBTAINED = [s for s in ConsentState if s is not ConsentState.OBTAINED]


def refusal(message: Any, **kw: Any) -> PolicyRefusal:
    with pytest.raises(PolicyRefusal) as caught:
        decisions(message, **kw)
    return caught.value


def test_consent_obtained_shares_per_agreement() -> None:
    """Consent obtained: allowed, with 'obtained' as the consent basis and no override."""
    decision = one(referral("MARAC", ["kelder-marac"], consent=consent("obtained")))
    assert decision.allowed
    assert decision.consent_basis is not None
    assert decision.consent_basis.label == "obtained"
    assert "consent.obtained" in decision.rules
    assert decision.reasons == ("agreement.kelder-marac-isa", "consent.obtained")


@pytest.mark.parametrize("state", NON_OBTAINED, ids=str)
def test_every_other_state_shares_only_with_an_accepted_override(state: ConsentState) -> None:
    """Any state but obtained is shared on its override, named in the consent basis."""
    decision = one(referral("MARAC", ["kelder-marac"], consent=consent(state.value)))
    assert decision.allowed, decision.rules
    assert decision.consent_basis is not None
    assert decision.consent_basis.state is state
    assert decision.consent_basis.override_reason is OverrideReason.RISK_TO_VICTIM
    assert decision.consent_basis.override_paragraph == "dpa2018_sch1_para18"
    assert f"consent.{state.value}" in decision.rules
    assert "override.risk_to_victim.accepted" in decision.rules
    assert "override.risk_to_victim" in decision.reasons


@pytest.mark.parametrize(
    ("state", "allowed"),
    [
        ("obtained", True),
        ("refused", False),
        ("withdrawn", False),
        ("not_sought_unsafe", True),
        ("cannot_be_given", True),
        ("not_required_statutory", False),
    ],
)
def test_each_state_against_an_agreement_that_accepts_only_some(state: str, allowed: bool) -> None:
    """Housing accepts obtained, not sought (unsafe) and cannot be given; the others are refused."""
    decision = one(referral("HOUSING", ["kelder-housing"], consent=consent(state)))
    assert decision.allowed is allowed
    if not allowed:
        assert decision.reasons == ("consent.state_not_accepted",)
        assert f"consent.{state}.not_accepted" in decision.rules
        assert decision.groups == ()
        assert decision.lawful_basis is None


@pytest.mark.parametrize("reason", list(OverrideReason), ids=str)
def test_every_override_reason_is_accepted_for_marac(reason: OverrideReason) -> None:
    """The MARAC agreement accepts each of the five override reasons."""
    decision = one(referral("MARAC", ["kelder-marac"], consent=consent("refused", reason.value)))
    assert decision.allowed
    assert decision.consent_basis is not None
    assert decision.consent_basis.override_reason is reason
    assert f"override.{reason.value}.accepted" in decision.rules


@pytest.mark.parametrize("reason", list(OverrideReason), ids=str)
def test_idva_refuses_the_crime_override_and_accepts_the_rest(reason: OverrideReason) -> None:
    """Prevention or detection of crime is no reason to refer to a support service."""
    decision = one(referral("IDVA", ["kelder-idva"], consent=consent("refused", reason.value)))
    crime = reason is OverrideReason.PREVENTION_DETECTION_OF_CRIME
    assert decision.allowed is not crime
    if crime:
        assert decision.reasons == ("override.reason_not_accepted",)
        assert "override.prevention_detection_of_crime.not_accepted" in decision.rules


def incomplete(state: str, **override: Any) -> Any:
    """A referral whose override record lacks items: built past validation, as no decode can."""
    source = referral("MARAC", ["kelder-marac", "kelder-idva"], consent=consent(state))
    assert source.consent is not None
    record = None if override.pop("none", False) else ConsentOverride.model_construct(**override)
    g8 = Consent.model_construct(**{**dict(source.consent), "override": record})
    return source.model_copy(update={"consent": g8})


def test_incomplete_override_refuses_the_referral_naming_the_missing_items() -> None:
    """An override without a justification and a legal paragraph: refused, both named."""
    source = incomplete(
        "refused",
        decision_maker_id="KP-1102",
        decision_maker_role="detective_sergeant",
        reason=OverrideReason.RISK_TO_VICTIM,
        subject_told=True,
    )
    caught = refusal(source)
    assert caught.reasons == ("consent.override.incomplete",)
    assert [p.field for p in caught.problems] == [
        "consent.override.justification",
        "consent.override.legal_paragraph",
    ]
    assert "missing justification, legal_paragraph" in str(caught)
    assert isinstance(caught, InputError)


def test_blank_items_and_a_missing_why_not_told_count_as_missing() -> None:
    """A blank decision-maker, and 'not told' without saying why, are incomplete too."""
    source = incomplete(
        "withdrawn",
        decision_maker_id="   ",
        decision_maker_role="named_nurse",
        reason=OverrideReason.RISK_TO_CHILDREN,
        justification="Necessary and proportionate.",
        subject_told=False,
        legal_paragraph="dpa2018_sch1_para18",
    )
    fields = [p.field for p in refusal(source).problems]
    assert fields == [
        "consent.override.decision_maker_id",
        "consent.override.subject_not_told_reason",
    ]


def test_no_override_record_at_all_names_every_item() -> None:
    """Consent not obtained and no override record: every item of the record is named."""
    fields = [p.field for p in refusal(incomplete("cannot_be_given", none=True)).problems]
    assert fields == [f"consent.override.{item}" for item in OVERRIDE_ITEMS]


def test_an_incomplete_override_never_decodes() -> None:
    """At the door, a referral whose override lacks an item is refused naming that field."""
    data = full_referral_data()
    data["consent"] = consent("refused")
    del data["consent"]["override"]["justification"]
    with pytest.raises(SchemaError) as caught:
        decode_submission(json.dumps(data).encode())
    assert "consent.override.justification" in [p.field for p in caught.value.problems]


def test_a_referral_without_lawful_basis_is_refused_as_a_whole() -> None:
    """No G8: PolicyRefusal before any recipient is decided, naming the consent field."""
    source = referral("MARAC", ["kelder-marac", "kelder-idva"]).model_copy(update={"consent": None})
    caught = refusal(source)
    assert caught.reasons == ("lawful_basis.missing",)
    assert [p.field for p in caught.problems] == ["consent"]


def test_a_basis_no_agreement_accepts_for_the_purpose_is_refused_as_a_whole() -> None:
    """Art 6(1)(c) alone is not a basis the MARAC agreement relies on: refused, 422."""
    g8 = {"state": "obtained", "art6_basis": "art6_1_c", "subject_informed": True}
    caught = refusal(referral("MARAC", ["kelder-marac"], consent=g8))
    assert caught.reasons == ("lawful_basis.not_accepted",)
    assert "art6_1_c" in str(caught)


def test_a_sender_under_no_agreement_for_the_purpose_is_refused_as_a_whole() -> None:
    """Probation is party to no IDVA agreement: it has no basis to share for IDVA."""
    caught = refusal(referral("IDVA", ["kelder-idva"], "kelder-probation"))
    assert caught.reasons == ("agreement.none_for_purpose",)
    assert [p.field for p in caught.problems] == ["header.purpose"]


def test_basis_not_accepted_for_one_recipient_refuses_only_that_one() -> None:
    """When police's own agreement accepts only Schedule 8, police alone is refused."""

    def without_police(data: dict[str, Any]) -> None:
        data["purposes"][0]["recipients"].pop("police")

    police = agreement("kelder-marac-isa").model_dump(mode="json")
    police["id"] = "kelder-marac-police"
    terms = police["purposes"][0]
    terms["lawful_bases"] = [{"dpa": "dpa2018_sch8_para4"}]
    terms["recipients"] = {"police": terms["recipients"]["police"]}
    agreements = (*edited("kelder-marac-isa", without_police), Agreement.model_validate(police))
    source = referral("MARAC", ["kelder-marac", "kelder-police"], "kelder-idva")
    coordinator, refused = decisions(source, agreements=agreements)
    assert coordinator.allowed
    assert not refused.allowed
    # Both agreements naming police were tried, in id order, and each says why not.
    assert refused.reasons == ("role.not_granted", "lawful_basis.not_accepted")
    assert "agreement.kelder-marac-isa.role.police.not_granted" in refused.rules
    assert "agreement.kelder-marac-police.lawful_basis.not_accepted" in refused.rules


# --- an objection to health-care sharing ------------------------------------------------------


def test_objection_blocks_health_safeguarding_even_with_consent() -> None:
    """An NHS objection recorded in G8 stops sharing for the health-care purpose."""
    g8 = consent("obtained", objection_to_health_sharing=True)
    decision = one(referral("HEALTH_SAFEGUARDING", ["kelder-nhs"], consent=g8))
    assert not decision.allowed
    assert decision.reasons == ("objection.health_sharing",)
    assert "objection.health_sharing.blocks" in decision.rules


def test_objection_gives_way_to_a_safeguarding_override() -> None:
    """A safeguarding override (risk to the victim) lets health sharing go despite it."""
    g8 = consent("refused", "risk_to_victim", objection_to_health_sharing=True)
    decision = one(referral("HEALTH_SAFEGUARDING", ["kelder-nhs"], consent=g8))
    assert decision.allowed
    assert "objection.health_sharing.overridden.risk_to_victim" in decision.rules


def test_objection_is_not_lifted_by_a_crime_override() -> None:
    """Prevention of crime is not a safeguarding reason: the objection still blocks."""

    def accept_crime(data: dict[str, Any]) -> None:
        data["purposes"][0]["consent"]["override_reasons"].append("prevention_detection_of_crime")

    agreements = edited("kelder-health-safeguarding-isa", accept_crime)
    g8 = consent("refused", "prevention_detection_of_crime", objection_to_health_sharing=True)
    decision = one(
        referral("HEALTH_SAFEGUARDING", ["kelder-nhs"], consent=g8), agreements=agreements
    )
    assert not decision.allowed
    assert decision.reasons == ("objection.health_sharing",)


def test_objection_blocks_sharing_that_relies_on_the_health_care_condition() -> None:
    """An IDVA referral resting on Art 9(2)(h) health care is blocked by an objection."""
    health = consent(
        "obtained",
        art9_condition="art9_2_h",
        dpa_condition="dpa2018_sch1_para2",
        statutory_gateway=None,
        objection_to_health_sharing=True,
    )
    assert not one(referral("IDVA", ["kelder-idva"], consent=health)).allowed
    safeguarding = consent("obtained", objection_to_health_sharing=True)
    assert one(referral("IDVA", ["kelder-idva"], consent=safeguarding)).allowed


def test_objection_does_not_touch_marac() -> None:
    """MARAC sharing rests on safeguarding, not health care: an objection does not stop it."""
    g8 = consent("obtained", objection_to_health_sharing=True)
    decision = one(referral("MARAC", ["kelder-marac"], consent=g8))
    assert decision.allowed
    assert not any(r.startswith("objection") for r in decision.rules)
