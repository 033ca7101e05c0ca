"""The decision stage: membership, fan-out, agreements in force, parties, the MARAC gate, keys."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from broker.policy.admission import PolicyRefusal
from broker.policy.decide import decide
from schemas.errors import SchemaError, UnknownAgency
from tests.samples import personal_values
from tests.unit.policy.cases import (
    AGREEMENTS,
    CALENDAR,
    FEDERATION,
    NOW,
    decisions,
    edited,
    full_referral_data,
    one,
    referral,
)


def test_each_named_recipient_gets_a_decision_in_order() -> None:
    """Every intended recipient gets one decision, in the order the sender named them."""
    got = decisions(referral("MARAC", ["kelder-idva", "kelder-marac", "kelder-housing"]))
    assert [d.recipient for d in got] == ["kelder-idva", "kelder-marac", "kelder-housing"]
    assert [d.allowed for d in got] == [True, True, False]


def test_unknown_sender_is_refused() -> None:
    """A sender outside the federation is refused with the field named."""
    with pytest.raises(UnknownAgency) as info:
        decisions(referral("MARAC", ["kelder-marac"], "rogue-force"))
    assert info.value.problems[0].field == "header.sender_agency"


def test_unknown_recipient_and_self_referral_are_refused() -> None:
    """An unknown recipient and the sender itself are named by their position."""
    with pytest.raises(UnknownAgency) as info:
        decisions(referral("MARAC", ["kelder-marac", "nobody-here", "kelder-police"]))
    assert [(p.field, p.problem) for p in info.value.problems] == [
        ("header.recipients.1", "not a member of this federation"),
        ("header.recipients.2", "a sender cannot refer to itself"),
    ]


def test_fan_out_limit_comes_first() -> None:
    """More recipients than max_recipients is refused before anything else is looked at."""
    source = referral("MARAC", ["kelder-marac", "kelder-idva"]).model_copy(update={"consent": None})
    with pytest.raises(SchemaError) as info:
        decide(source, FEDERATION, agreements=AGREEMENTS, now=NOW, max_recipients=1)
    assert not isinstance(info.value, PolicyRefusal)


def test_encompass_only_from_police_to_schools_or_csc() -> None:
    """An Encompass referral to the IDVA service is refused as a membership problem."""
    with pytest.raises(UnknownAgency):
        decisions(referral("ENCOMPASS", ["kelder-idva"]))


def test_naive_clock_is_a_programming_error() -> None:
    """The engine needs an aware time: a naive one is a TypeError, not a refusal."""
    with pytest.raises(TypeError):
        decisions(referral(), now=datetime(2026, 11, 26, 9, 0))  # naive, on purpose


def test_recipient_not_party_to_any_covering_agreement_gets_nothing() -> None:
    """Probation signed no IDVA agreement: refused, and nothing would be disclosed."""
    got = one(referral("IDVA", ["kelder-probation"]))
    assert not got.allowed
    assert got.reasons == ("recipient.not_party",)
    assert got.rules == ("agreement.none_covers_recipient",)
    assert got.groups == ()


def test_party_whose_role_has_no_grant_gets_nothing() -> None:
    """Housing signed the MARAC agreement but its role receives nothing for MARAC."""
    got = one(referral("MARAC", ["kelder-housing"]))
    assert not got.allowed
    assert got.reasons == ("role.not_granted",)
    assert "agreement.kelder-marac-isa.role.housing.not_granted" in got.rules


def test_a_party_listed_in_the_wrong_role_is_no_party() -> None:
    """An agreement naming an agency in another role than the federation's does not cover it."""

    def misrole(data: dict[str, Any]) -> None:
        for party in data["parties"]:
            if party["agency"] == "kelder-idva":
                party["role"] = "police"

    got = one(referral("IDVA", ["kelder-idva"]), agreements=edited("kelder-idva-isa", misrole))
    assert got.reasons == ("recipient.not_party",)


def test_an_agreement_not_yet_in_force_covers_nothing() -> None:
    """Before its in_force_from date an agreement is not used: no basis for the purpose."""
    with pytest.raises(PolicyRefusal) as info:
        decisions(referral("IDVA", ["kelder-idva"]), now=datetime(2025, 3, 31, 12, tzinfo=UTC))
    assert info.value.reasons == ("agreement.none_for_purpose",)


def test_an_expired_agreement_covers_nothing() -> None:
    """After in_force_until the agreement is not used."""

    def expire(data: dict[str, Any]) -> None:
        data["in_force_until"] = "2026-06-30"

    with pytest.raises(PolicyRefusal):
        decisions(referral("IDVA", ["kelder-idva"]), agreements=edited("kelder-idva-isa", expire))


def test_recipient_without_a_usable_key_is_refused_after_policy() -> None:
    """An allowed recipient the registry has no key for is refused, the policy trail kept."""
    got = decide(
        referral("MARAC", ["kelder-idva", "kelder-marac"]),
        FEDERATION,
        agreements=AGREEMENTS,
        now=NOW,
        max_recipients=16,
        can_receive=lambda agency: agency != "kelder-idva",
        calendar=CALENDAR,
    )
    assert [d.allowed for d in got] == [False, True]
    assert got[0].reasons == ("no-usable-encryption-key",)
    assert got[0].rules[-1] == "recipient.no_usable_encryption_key"
    assert "agreement.kelder-marac-isa.purpose.MARAC" in got[0].rules
    assert got[0].groups == ()


# --- the MARAC criterion gate ------------------------------------------------------------------


def risk(**fields: Any) -> dict[str, Any]:
    data = full_referral_data()
    base = {"level": "standard", "dash_score": 3, "incidents_last_12_months": 1}
    data["risk"] = {**base, **fields}
    return data


@pytest.mark.parametrize(
    ("fields", "criterion"),
    [
        ({"level": "high", "dash_score": 16}, "visible_high_risk"),
        (
            {"level": "high", "professional_judgement": "Judged high (fictional)."},
            "professional_judgement",
        ),
        ({"incidents_last_12_months": 3}, "potential_escalation"),
    ],
)
def test_marac_purpose_is_allowed_by_each_criterion(fields: dict[str, Any], criterion: str) -> None:
    """Each of the three MARAC criteria on its own opens the MARAC purpose, and is named."""
    got = one(referral("MARAC", ["kelder-marac"], data=risk(**fields)))
    assert got.allowed
    assert [r for r in got.rules if r.startswith("marac.")] == [f"marac.criterion.{criterion}"]


def test_marac_purpose_without_a_criterion_is_refused() -> None:
    """Standard risk, no judgement, one incident: no MARAC criterion, nothing sent."""
    got = decisions(referral("MARAC", ["kelder-marac", "kelder-idva"], data=risk()))
    assert [d.reasons for d in got] == [("marac.no_criterion",)] * 2
    assert all("marac.criterion.none" in d.rules for d in got)


def test_the_escalation_threshold_is_the_areas() -> None:
    """Two incidents meet the criterion where the area set its threshold at two."""
    area = FEDERATION.model_copy(update={"marac_escalation_threshold": 2})
    source = referral("MARAC", ["kelder-marac"], data=risk(incidents_last_12_months=2))
    assert not one(source).allowed
    assert one(source, federation=area).allowed


def test_other_purposes_do_not_need_a_marac_criterion() -> None:
    """A standard-risk IDVA referral is shared: the criterion gates the MARAC purpose only."""
    got = one(referral("IDVA", ["kelder-idva"], data=risk()))
    assert got.allowed
    assert not any(r.startswith("marac.") for r in got.rules)


def test_special_category_withheld_without_an_art9_condition() -> None:
    """Housing's Art 6-only basis carries no Art 9 condition, so G7 would be withheld."""

    def grant_g7(data: dict[str, Any]) -> None:
        data["purposes"][0]["recipients"]["housing"]["G7"] = "full"

    g8 = {"state": "obtained", "art6_basis": "art6_1_e", "subject_informed": True}
    got = one(
        referral("HOUSING", ["kelder-housing"], consent=g8),
        agreements=edited("kelder-housing-isa", grant_g7),
    )
    assert got.allowed
    assert got.lawful_basis is not None
    assert got.lawful_basis.label == "art6_1_e"
    assert "G7" not in [g.label for g in got.groups]
    assert "special_category.withheld.no_condition" in got.rules


def test_groups_the_sender_left_out_are_not_listed() -> None:
    """A granted group the referral does not hold is not disclosed, and the rule says so."""
    data = full_referral_data()
    del data["perpetrator"]
    got = one(referral("MARAC", ["kelder-marac"], data=data))
    assert "G3" not in [g.label for g in got.groups]
    assert "group.G3.not_in_referral" in got.rules


def test_rules_and_reasons_hold_no_personal_data() -> None:
    """Every rule id and reason is a code: none holds a name, date of birth or phone number."""
    data = full_referral_data()
    words = [*personal_values(data), "07700 900001", "01632 960001", "Fictitia"]
    got = decisions(referral("MARAC", ["kelder-marac", "kelder-idva", "kelder-housing"], data=data))
    said = " ".join(s for d in got for s in (*d.rules, *d.reasons))
    assert [w for w in words if w in said] == []
