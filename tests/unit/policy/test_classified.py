"""Special-category and criminal-offence fields wherever they sit: withheld without a condition.

Each test names the provision it rests on: data concerning health (UK GDPR Art 4(15)) is special
category (Art 9(1)) and needs an Art 9(2) condition with its DPA 2018 Schedule 1 paragraph (or
Schedule 8 for police Part 3 processing); criminal-offence data (Art 10, DPA 2018 s11(2)) needs
a Schedule 1 Part 1-3 condition (s10(5)), such as para 10 (unlawful acts) or para 18
(safeguarding), or Part 3 processing under Schedule 8.
"""

from __future__ import annotations

from typing import Any

import pytest

from broker.policy.agreements import Agreement
from broker.policy.decision import Withheld
from broker.policy.lint import check
from schemas.classes import DataClass
from schemas.disclosure import Disclosure, GroupShare
from schemas.referral import FieldGroup
from tests.unit.policy.cases import (
    AGREEMENTS,
    FEDERATION,
    agreement,
    disclosed,
    disclosure,
    edited,
    full_referral_data,
    one,
    referral,
)

G = FieldGroup
SC = DataClass.SPECIAL_CATEGORY
CO = DataClass.CRIMINAL_OFFENCE

ART6_ONLY = {"state": "obtained", "art6_basis": "art6_1_e", "subject_informed": True}
#: Criminal-offence data alone: Art 6(1)(e), Art 10 through DPA 2018 s10(5), Sch 1 para 10.
ART10_ONLY = {
    **ART6_ONLY,
    "art10_condition": "dpa2018_s10_5",
    "dpa_condition": "dpa2018_sch1_para10",
}
SPECIAL_HEALTH_DASH = {"injury", "depression", "pregnancy", "perpetrator_substance_mental_health"}
SPECIAL_HEALTH_DASH |= {"perpetrator_suicide"}
CRIMINAL_DASH = {"breached_bail_or_orders", "criminal_history"}


def pregnant_data() -> dict[str, Any]:
    data = full_referral_data()
    data["victim"]["pregnancy"] = {"pregnant": True, "expected_due_date": "2027-03-01"}
    return data


def housing(
    consent: dict[str, Any], bases: list[dict[str, str]] | None = None, **grant: str
) -> Any:
    """The housing agreement, with other lawful bases or more groups granted."""

    def edit(data: dict[str, Any]) -> None:
        if bases is not None:
            data["purposes"][0]["lawful_bases"] = bases
        data["purposes"][0]["recipients"]["housing"].update(grant)

    source = referral("HOUSING", ["kelder-housing"], consent=consent, data=pregnant_data())
    decision = one(source, agreements=edited("kelder-housing-isa", edit))
    return source, decision


def test_pregnancy_in_g1_is_withheld_without_an_art9_condition() -> None:
    """Pregnancy is data concerning health (UK GDPR Art 4(15), Art 9(1)) though it sits in G1:
    on an Art 6-only basis the victim's identity goes, her pregnancy does not."""
    source, decision = housing(ART6_ONLY)
    assert decision.allowed
    assert decision.lawful_basis is not None
    assert decision.lawful_basis.label == "art6_1_e"
    g1 = next(s for s in decision.groups if s.group is G.G1)
    assert g1.label == "G1"
    assert g1.withheld == ("pregnancy",)
    assert Withheld(G.G1, "pregnancy", SC) in decision.withheld
    assert "special_category.withheld.no_condition" in decision.rules
    assert "special_category.withheld.G1.pregnancy" in decision.rules
    out = disclosed(source, decision)
    assert out.victim is not None
    assert out.victim.given_name == source.victim.given_name
    assert out.victim.pregnancy is None


def test_bail_and_orders_are_withheld_without_an_art10_condition() -> None:
    """Bail conditions and orders are criminal-offence data (UK GDPR Art 10; DPA 2018 s11(2)):
    with no Schedule 1 condition (s10(5)) they are withheld from the G3 subset."""
    source, decision = housing(ART6_ONLY)
    g3 = next(s for s in decision.groups if s.group is G.G3)
    assert g3.withheld == ("bail_and_orders",)
    assert "criminal_offence.withheld.no_condition" in decision.rules
    assert "criminal_offence.withheld.G3.bail_and_orders" in decision.rules
    out = disclosed(source, decision)
    assert out.perpetrator is not None
    assert out.perpetrator.address is not None  # the rest of the subset still goes
    assert out.perpetrator.bail_and_orders == ()


def test_an_art10_basis_alone_lets_orders_go_but_not_health_data() -> None:
    """Art 10 is met through DPA 2018 s10(5) by Sch 1 para 10 (unlawful acts) without any Art
    9 condition: bail and orders go, pregnancy (Art 9(1)) is still withheld."""
    basis = {"art6": "art6_1_e", "art10": "dpa2018_s10_5", "dpa": "dpa2018_sch1_para10"}
    source, decision = housing(ART10_ONLY, bases=[basis])
    assert decision.lawful_basis is not None
    assert decision.lawful_basis.label == "art6_1_e+dpa2018_s10_5+dpa2018_sch1_para10"
    assert decision.lawful_basis.criminal_offence
    assert not decision.lawful_basis.special_category
    assert [w.label for w in decision.withheld] == ["G1.pregnancy"]
    out = disclosed(source, decision)
    assert out.perpetrator is not None
    assert out.perpetrator.bail_and_orders
    assert out.victim is not None
    assert out.victim.pregnancy is None


def test_a_safeguarding_schedule_1_paragraph_carries_both_classes() -> None:
    """Art 9(2)(g) with DPA 2018 Sch 1 para 18 (safeguarding) meets Art 9, and the same Sch 1
    Part 2 paragraph meets Art 10 through s10(5): nothing is withheld."""
    source, decision = housing(
        {**ART6_ONLY, "art9_condition": "art9_2_g", "dpa_condition": "dpa2018_sch1_para18"}
    )
    assert decision.withheld == ()
    assert not any(".withheld." in r for r in decision.rules)
    out = disclosed(source, decision)
    assert out.victim is not None
    assert out.victim.pregnancy is not None
    assert out.perpetrator is not None
    assert out.perpetrator.bail_and_orders


def test_the_referral_basis_must_carry_the_condition_too() -> None:
    """The agreement's basis and the referral's own must both carry it (UK GDPR Art 9(2), Art
    10): a referral naming Art 9(2)(g) and Sch 1 para 18 under an agreement that accepts only
    Art 6(1)(e) gets the classified fields withheld."""
    g8 = {**ART6_ONLY, "art9_condition": "art9_2_g", "dpa_condition": "dpa2018_sch1_para18"}
    _, decision = housing(g8, bases=[{"art6": "art6_1_e"}])
    assert decision.lawful_basis is not None
    assert decision.lawful_basis.label == "art6_1_e"
    assert {w.label for w in decision.withheld} == {"G1.pregnancy", "G3.bail_and_orders"}


def test_injuries_in_g5_are_health_data() -> None:
    """Injuries are data concerning health (UK GDPR Art 4(15), Art 9(1)) though they sit in G5:
    without an Art 9 condition the incident goes without them."""
    source, decision = housing(ART6_ONLY, G5="full")
    g5 = next(s for s in decision.groups if s.group is G.G5)
    assert g5.withheld == ("injuries",)
    out = disclosed(source, decision)
    assert out.incident is not None
    assert out.incident.summary == source.incident.summary
    assert out.incident.injuries is None


def test_dash_answers_are_withheld_one_question_at_a_time() -> None:
    """DASH answers on injury, depression, pregnancy and the abuser's substance use, mental
    health and suicide threats are health data (Art 4(15), Art 9(1)); those on breached bail and
    criminal history are criminal-offence data (Art 10): each is removed on its own, with the
    score that would give them away; the other answers and the level still go."""
    source, decision = housing(ART6_ONLY, G6="full")
    g6 = next(s for s in decision.groups if s.group is G.G6)
    topics = {e.removeprefix("dash.") for e in g6.withheld if e.startswith("dash.")}
    assert topics == SPECIAL_HEALTH_DASH | CRIMINAL_DASH
    assert "dash_score" in g6.withheld
    assert "special_category.withheld.G6.dash.depression" in decision.rules
    assert "criminal_offence.withheld.G6.dash.criminal_history" in decision.rules
    out = disclosed(source, decision)
    assert out.risk is not None
    assert out.risk.dash is not None
    assert out.risk.level is source.risk.level
    assert out.risk.dash_score is None
    assert sorted(out.risk.dash.answers, key=lambda q: int(q[1:])) == [
        f"q{n}" for n in range(1, 25) if n not in (1, 5, 9, 21, 22, 23, 24)
    ]


def test_g7_is_a_case_of_the_general_rule() -> None:
    """Every field of G7 is special category (UK GDPR Art 9(1)): on an Art 6-only basis the
    whole group is withheld, field by field, and the rule says the group went without."""
    _, decision = housing(ART6_ONLY, G7="full")
    assert G.G7 not in {s.group for s in decision.groups}
    assert "group.G7.all_withheld" in decision.rules
    assert "special_category.withheld.G7.mental_health" in decision.rules
    assert "special_category.withheld.no_condition" in decision.rules


def test_police_part3_processing_carries_both_classes() -> None:
    """Police law-enforcement processing under DPA 2018 Part 3 relies on Schedule 8 para 4 for
    sensitive processing, and Art 10 does not apply to it (s31, s35): nothing is withheld."""
    g8 = {"state": "obtained", "dpa_condition": "dpa2018_sch8_para4", "subject_informed": True}
    decision = one(referral("MARAC", ["kelder-marac"], consent=g8))
    assert decision.allowed
    assert decision.lawful_basis is not None
    assert decision.lawful_basis.label == "dpa2018_sch8_para4"
    assert decision.withheld == ()


def test_what_is_withheld_never_depends_on_what_the_referral_holds() -> None:
    """Withholding follows the grant and the bases only, so neither the disclosure nor the
    audit trail reveals that there was a pregnancy or an injury to withhold (UK GDPR Art 5(1)(c),
    Art 9(1))."""
    empty = full_referral_data()
    empty["victim"].pop("pregnancy", None)
    empty["incident"].pop("injuries", None)
    grant = {"G5": "full"}

    def edit(data: dict[str, Any]) -> None:
        data["purposes"][0]["recipients"]["housing"].update(grant)

    agreements = edited("kelder-housing-isa", edit)
    with_values = one(
        referral("HOUSING", ["kelder-housing"], consent=ART6_ONLY, data=pregnant_data()),
        agreements=agreements,
    )
    without = one(
        referral("HOUSING", ["kelder-housing"], consent=ART6_ONLY, data=empty),
        agreements=agreements,
    )
    assert with_values.groups == without.groups
    assert with_values.withheld == without.withheld
    assert with_values.rules == without.rules


def test_the_decision_record_lists_what_was_withheld() -> None:
    """``cairn policy explain --json`` prints each withheld field with its class."""
    _, decision = housing(ART6_ONLY)
    assert decision.as_record()["withheld"] == [
        {"field": "G1.pregnancy", "data_class": "special_category"},
        {"field": "G3.bail_and_orders", "data_class": "criminal_offence"},
    ]


def test_the_disclosure_describes_what_was_sent() -> None:
    """The disclosure's shares name the withheld fields, and it validates with them absent."""
    source, decision = housing(ART6_ONLY)
    assert decision.recipient == "kelder-housing"
    made = disclosure(source, decision)
    again = Disclosure.model_validate_json(made.model_dump_json())
    assert [s.withheld for s in again.groups if s.withheld] == [
        ("pregnancy",),
        ("bail_and_orders",),
    ]


# --- cairn policy check ------------------------------------------------------------------------


def linted(agreement_id: str, edit: Any) -> list[tuple[str, str]]:
    data = agreement(agreement_id).model_dump(mode="json")
    edit(data)
    others = [a for a in AGREEMENTS if a.id != agreement_id]
    found = check([*others, Agreement.model_validate(data)], FEDERATION)
    return [(p.field, p.code) for p in found]


def test_check_flags_a_health_field_granted_without_an_art9_condition() -> None:
    """A grant of G1 whole (pregnancy: Art 4(15), Art 9(1)) for a purpose whose bases carry no
    Art 9 condition is flagged: it would always be withheld."""

    def edit(data: dict[str, Any]) -> None:
        data["purposes"][0]["lawful_bases"] = [{"art6": "art6_1_e"}]

    found = linted("kelder-housing-isa", edit)
    assert ("purposes.0.recipients.housing.G1", "special_category.no_condition") in found
    assert ("purposes.0.recipients.housing.G3", "criminal_offence.no_condition") in found


def test_check_flags_criminal_offence_data_without_a_schedule_1_condition() -> None:
    """Probation's G3 (criminal history, bail and orders: Art 10, DPA 2018 s11(2)) with bases
    naming no Schedule 1 paragraph (s10(5)) nor Schedule 8 is flagged."""

    def edit(data: dict[str, Any]) -> None:
        data["purposes"][0]["lawful_bases"] = [
            {"art6": "art6_1_e", "gateway": "cda1998_s115"},
            {"art6": "art6_1_e"},
        ]

    found = linted("kelder-perpetrator-isa", edit)
    assert ("purposes.0.recipients.probation.G3", "criminal_offence.no_condition") in found
    assert ("purposes.0.recipients.probation.G5", "special_category.no_condition") in found


def test_check_flags_classified_dash_topics_in_a_subset() -> None:
    """A G6 subset keeping the DASH pregnancy and breached-orders answers needs both conditions
    (Art 9(1), Art 10); children's social care on an Art 6-only basis is flagged for each."""

    def edit(data: dict[str, Any]) -> None:
        data["purposes"][0]["lawful_bases"] = [{"art6": "art6_1_e"}]

    found = linted("kelder-child-safeguarding-isa", edit)
    where = "purposes.0.recipients.childrens_social_care.G6"
    assert (where, "special_category.no_condition") in found
    assert (where, "criminal_offence.no_condition") in found


def test_an_art10_basis_satisfies_the_check_for_criminal_offence_data() -> None:
    """Art 6(1)(e) with Art 10 through DPA 2018 s10(5) and Sch 1 para 10 is a condition for
    criminal-offence data: G3 is not flagged, G1's pregnancy (Art 9(1)) still is."""

    def edit(data: dict[str, Any]) -> None:
        data["purposes"][0]["lawful_bases"] = [
            {"art6": "art6_1_e", "art10": "dpa2018_s10_5", "dpa": "dpa2018_sch1_para10"}
        ]

    found = linted("kelder-housing-isa", edit)
    assert ("purposes.0.recipients.housing.G3", "criminal_offence.no_condition") not in found
    assert ("purposes.0.recipients.housing.G1", "special_category.no_condition") in found


def test_the_shipped_agreements_carry_a_condition_for_every_classified_grant() -> None:
    """Every development agreement names a basis with the matching condition for each
    classified field it grants (UK GDPR Art 9, Art 10; DPA 2018 s10)."""
    found = check(AGREEMENTS, FEDERATION)
    assert [p for p in found if p.code.endswith(".no_condition")] == []


@pytest.mark.parametrize(
    ("share", "version", "want"),
    [
        (GroupShare(group=G.G1), None, [("pregnancy", SC)]),
        (GroupShare(group=G.G3), None, [("bail_and_orders", CO), ("criminal_history", CO)]),
        (
            GroupShare(group=G.G6, subset="level_only", fields=("level",)),
            "safelives-2009",
            [],
        ),
        (
            GroupShare(
                group=G.G6,
                subset="child_items",
                fields=("level", "dash"),
                dash_topics=("child_contact", "pregnancy", "breached_bail_or_orders"),
            ),
            "safelives-2009",
            [("dash.pregnancy", SC), ("dash.breached_bail_or_orders", CO)],
        ),
    ],
)
def test_a_share_names_the_classified_entries_it_grants(
    share: GroupShare, version: str | None, want: list[tuple[str, DataClass]]
) -> None:
    """A share's classified entries are its classified fields and the DASH topics it keeps."""
    assert list(share.classified(version)) == want
