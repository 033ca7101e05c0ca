"""The classification of fields as data: special category (Art 9) and criminal-offence (Art 10).

The marks sit on the fields in the models, and the exported JSON Schemas carry them so adapters
in other languages can see them; DASH questions carry theirs in the question-set data.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from schemas import disclosure as d
from schemas.classes import DATA_CLASS_KEY, DataClass, model_classes
from schemas.consent import Consent
from schemas.dash import dash_question_classes, question_set
from schemas.export import json_schemas
from schemas.referral import GROUP_MODELS, FieldGroup, SpecialCategory, field_classes
from tests.unit.policy.cases import consent, full_referral_data

G = FieldGroup
SC = DataClass.SPECIAL_CATEGORY
CO = DataClass.CRIMINAL_OFFENCE


def test_fields_are_classified_wherever_they_sit() -> None:
    """Pregnancy (G1) and injuries (G5) are health data (UK GDPR Art 4(15), Art 9(1)); bail and
    orders and criminal history (G3) are criminal-offence data (Art 10, DPA 2018 s11(2)); every
    field of G7 is special category; no other field is classified."""
    got = {g: dict(field_classes(g)) for g in FieldGroup if field_classes(g)}
    assert got == {
        G.G1: {"pregnancy": SC},
        G.G3: {"bail_and_orders": CO, "criminal_history": CO},
        G.G5: {"injuries": SC},
        G.G7: dict.fromkeys(SpecialCategory.model_fields, SC),
    }


def test_dash_questions_are_classified_in_the_question_set_data() -> None:
    """The DASH answers on injury, depression, pregnancy and the abuser's substance use, mental
    health and suicide threats are health data (Art 4(15)); those on breached bail or orders and
    criminal history are criminal-offence data (Art 10)."""
    topics = {q.id: q.topic for q in question_set("safelives-2009").questions}
    got = {topics[q]: c for q, c in dash_question_classes("safelives-2009").items()}
    assert got == {
        "injury": SC,
        "depression": SC,
        "pregnancy": SC,
        "perpetrator_substance_mental_health": SC,
        "perpetrator_suicide": SC,
        "breached_bail_or_orders": CO,
        "criminal_history": CO,
    }


DISCLOSED: dict[FieldGroup, type[BaseModel]] = {
    G.G1: d.DisclosedVictim,
    G.G3: d.DisclosedPerpetrator,
    G.G4: d.DisclosedChild,
    G.G5: d.DisclosedIncident,
    G.G6: d.DisclosedRisk,
    G.G7: SpecialCategory,
}


@pytest.mark.parametrize("group", list(DISCLOSED), ids=[g.value for g in DISCLOSED])
def test_disclosed_models_carry_the_same_marks(group: FieldGroup) -> None:
    """A disclosed group marks exactly the fields its referral group marks."""
    assert dict(model_classes(DISCLOSED[group])) == dict(field_classes(group))


def _properties(schema: dict[str, Any], model: str) -> dict[str, Any]:
    props: dict[str, Any] = schema["$defs"][model]["properties"]
    return props


def test_the_exported_json_schemas_carry_the_marks() -> None:
    """referral, disclosure and question-set schemas name each field's class for other languages."""
    schemas = json_schemas()
    for group, model in GROUP_MODELS.items():
        if model.__name__ not in schemas["referral"]["$defs"]:
            continue
        props = _properties(schemas["referral"], model.__name__)
        marked = {k: v[DATA_CLASS_KEY] for k, v in props.items() if DATA_CLASS_KEY in v}
        assert marked == {k: c.value for k, c in field_classes(group).items()}, group
    victim = _properties(schemas["disclosure"], "DisclosedVictim")
    assert victim["pregnancy"][DATA_CLASS_KEY] == "special_category"
    question = _properties(schemas["dash-question-set"], "DashQuestion")
    assert "data_class" in question


def test_an_art10_basis_needs_its_schedule_1_paragraph() -> None:
    """Art 10 through DPA 2018 s10(5) rests on a Schedule 1 paragraph, never on Schedule 8
    (Part 3 processing is outside Art 10), and a Schedule 1 paragraph needs Art 9 or Art 10."""
    ok = consent(art9_condition=None, art10_condition="dpa2018_s10_5")
    ok["dpa_condition"] = "dpa2018_sch1_para10"
    assert Consent.model_validate(ok).carries(CO)
    assert not Consent.model_validate(ok).carries(SC)
    for bad in (
        {**ok, "dpa_condition": None},
        {
            **ok,
            "art6_basis": None,
            "statutory_gateway": None,
            "dpa_condition": "dpa2018_sch8_para4",
        },
        {**ok, "art10_condition": None},
    ):
        with pytest.raises(ValidationError):
            Consent.model_validate(bad)


@pytest.mark.parametrize(
    ("basis", "special", "criminal"),
    [
        ({"art6": "art6_1_e"}, False, False),
        ({"art6": "art6_1_e", "gateway": "cda1998_s115"}, False, False),
        ({"art6": "art6_1_e", "art9": "art9_2_g", "dpa": "dpa2018_sch1_para18"}, True, True),
        ({"art6": "art6_1_e", "art9": "art9_2_g", "dpa": "dpa2018_sch1_para10"}, True, True),
        ({"art6": "art6_1_e", "art9": "art9_2_h", "dpa": "dpa2018_sch1_para2"}, True, True),
        ({"art6": "art6_1_e", "art10": "dpa2018_s10_5", "dpa": "dpa2018_sch1_para10"}, False, True),
        ({"dpa": "dpa2018_sch8_para4"}, True, True),
    ],
)
def test_which_bases_carry_which_condition(
    basis: dict[str, str], special: bool, criminal: bool
) -> None:
    """Art 9(2) with its Sch 1 paragraph carries special category; any Sch 1 Part 1-3 paragraph
    (with Art 9, or Art 10 via DPA 2018 s10(5)) carries criminal-offence data; Sch 8 (police
    Part 3 processing) carries both; an Art 6 basis or a gateway alone carries neither."""
    got = d.LawfulBasis.model_validate(basis)
    assert (got.special_category, got.criminal_offence) == (special, criminal)


def test_a_share_withholds_only_fields_it_grants() -> None:
    """A share's withheld list names fields of its grant (or DASH topics it keeps), nothing else."""
    d.GroupShare(group=G.G1, withheld=("pregnancy",))
    d.GroupShare(group=G.G6, withheld=("dash.depression", "dash_score"))
    for bad in (
        {"group": "G1", "withheld": ["no_such_field"]},
        {"group": "G1", "subset": "ids", "fields": ["given_name"], "withheld": ["pregnancy"]},
        {"group": "G6", "subset": "level", "fields": ["level"], "withheld": ["dash.depression"]},
    ):
        with pytest.raises(ValidationError):
            d.GroupShare.model_validate(bad)


def _disclosure(basis: dict[str, str], groups: list[dict[str, Any]]) -> dict[str, Any]:
    data = full_referral_data()
    return {
        "referral_id": data["header"]["referral_id"],
        "sender_agency": "kelder-police",
        "recipient_agency": "kelder-housing",
        "purpose": "HOUSING",
        "agreement": "kelder-housing-isa",
        "lawful_basis": basis,
        "consent_basis": {"state": "obtained"},
        "groups": groups,
        "retention": {"years": 1, "starts": "receipt", "then": "destroy"},
        "referral": {"header": data["header"], "victim": data["victim"]},
    }


def test_a_disclosure_refuses_a_classified_field_without_its_condition() -> None:
    """A disclosure holding the victim's pregnancy on an Art 6-only basis does not validate
    (UK GDPR Art 9(1)); on Art 9(2)(g) with DPA 2018 Sch 1 para 18 it does."""
    groups = [{"group": "G0"}, {"group": "G1"}]
    with pytest.raises(ValidationError) as info:
        d.Disclosure.model_validate(_disclosure({"art6": "art6_1_e"}, groups))
    assert [e["ctx"]["field"] for e in info.value.errors()] == ["referral.victim.pregnancy"]
    lawful = {"art6": "art6_1_e", "art9": "art9_2_g", "dpa": "dpa2018_sch1_para18"}
    d.Disclosure.model_validate(_disclosure(lawful, groups))


def test_a_disclosure_refuses_a_field_its_share_says_was_withheld() -> None:
    """A share that names a withheld field and a referral that still carries it disagree."""
    lawful = {"art6": "art6_1_e", "art9": "art9_2_g", "dpa": "dpa2018_sch1_para18"}
    groups = [{"group": "G0"}, {"group": "G1", "withheld": ["pregnancy"]}]
    with pytest.raises(ValidationError):
        d.Disclosure.model_validate(_disclosure(lawful, groups))


def test_the_audit_log_knows_the_art10_code() -> None:
    """An audit event may name the Art 10 authority (DPA 2018 s10(5)) among its legal codes."""
    from schemas.audit import LAWFUL_BASIS_CODES

    assert "dpa2018_s10_5" in LAWFUL_BASIS_CODES
