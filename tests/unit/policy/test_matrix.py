"""The need-to-know matrix of docs/domain.md, row by row, at the engine and redaction level.

Each row sends a referral with every field filled to one recipient for one purpose and checks
that what the recipient would decrypt holds exactly the groups and fields of its row: the
expected table below is written from the design, not read from the agreement files, so a
change to an agreement that breaks the matrix fails here.
"""

from __future__ import annotations

from typing import Any

import pytest

from schemas.disclosure import DisclosedReferral
from schemas.referral import FIELD_GROUPS, FieldGroup, Referral
from tests.unit.policy.cases import UNSAFE_LANDLINE, decisions, disclosed, one, referral

G = FieldGroup
F = "full"

CHILDREN_BASIC = {
    "given_name",
    "family_name",
    "date_of_birth",
    "school_agency",
    "home_educated",
    "present_at_incident",
}
ACCESS_NEEDS = {"disability", "first_language", "interpreter_needed"}
HOUSEHOLD = {"given_name", "family_name", "date_of_birth"}
PERPETRATOR_ID_ORDERS = {
    "given_name",
    "family_name",
    "aliases",
    "date_of_birth",
    "relationship",
    "bail_and_orders",
}
ENCOMPASS_CHILD = {
    "given_name",
    "family_name",
    "date_of_birth",
    "present_at_incident",
    "where",
    "voice_of_child",
}
ROUTING = {
    "referral_id",
    "schema_version",
    "sender_agency",
    "sender_officer",
    "purpose",
    "priority",
    "classification",
    "police_reference",
    "created_at",
}
BASIS = {"art6_basis", "art9_condition", "dpa_condition", "statutory_gateway"}
OWN_AGENCY = {"involved", "actions"}  # scoped to the recipient's own entries

ALL_FULL: dict[FieldGroup, Any] = dict.fromkeys(G, F)
IDVA_ROW = {**ALL_FULL, G.G4: CHILDREN_BASIC, G.G7: ACCESS_NEEDS}
POLICE_ROW = {**ALL_FULL, G.G7: ACCESS_NEEDS}
NHS_ROW = {
    G.G0: F,
    G.G1: F,
    G.G2: F,
    G.G3: PERPETRATOR_ID_ORDERS,
    G.G4: CHILDREN_BASIC,
    G.G5: {"occurred_at", "location", "injuries", "reported_to_police", "police_attended"},
    G.G6: {"level"},
    G.G8: F,
    G.G9: OWN_AGENCY,
    G.G10: {"victim_wishes", "support_requested"},
}
CSC_ROW = {**ALL_FULL, G.G6: {"level", "dash"}, G.G7: ACCESS_NEEDS}
SCHOOL_ROW = {G.G0: ROUTING, G.G4: ENCOMPASS_CHILD, G.G5: {"occurred_at", "location", "summary"}}
SCHOOL_ROW[G.G8] = BASIS
HOUSING_ROW = {
    G.G0: F,
    G.G1: F,
    G.G2: F,
    G.G3: PERPETRATOR_ID_ORDERS | {"address"},
    G.G4: HOUSEHOLD,
    G.G5: {"occurred_at", "location", "reported_to_police", "police_attended"},
    G.G6: {"level"},
    G.G8: F,
    G.G9: OWN_AGENCY,
    G.G10: {"victim_wishes", "support_requested"},
}
PROBATION_ROW = {
    G.G0: F,
    G.G1: {"given_name", "family_name", "aliases", "date_of_birth"},
    G.G3: F,
    G.G4: HOUSEHOLD,
    G.G5: F,
    G.G6: {"level"},
    G.G8: F,
    G.G9: OWN_AGENCY,
    G.G10: {"victim_wishes"},
}

# (recipient, purpose, sender, expected row, children the recipient may see)
MATRIX = [
    ("kelder-marac", "MARAC", "kelder-police", ALL_FULL, {"Pip", "Robin", "Wren"}),
    ("kelder-idva", "IDVA", "kelder-police", IDVA_ROW, {"Pip", "Robin", "Wren"}),
    ("kelder-idva", "MARAC", "kelder-police", IDVA_ROW, {"Pip", "Robin", "Wren"}),
    ("kelder-police", "MARAC", "kelder-nhs", POLICE_ROW, {"Pip", "Robin", "Wren"}),
    ("kelder-police", "CHILD_SAFEGUARDING", "kelder-nhs", POLICE_ROW, {"Pip", "Robin", "Wren"}),
    (
        "kelder-police",
        "PERPETRATOR_MANAGEMENT",
        "kelder-idva",
        POLICE_ROW,
        {"Pip", "Robin", "Wren"},
    ),
    ("kelder-nhs", "HEALTH_SAFEGUARDING", "kelder-police", NHS_ROW, {"Pip", "Robin", "Wren"}),
    ("kelder-csc", "CHILD_SAFEGUARDING", "kelder-police", CSC_ROW, {"Pip", "Robin", "Wren"}),
    ("kelder-brook-primary", "ENCOMPASS", "kelder-police", SCHOOL_ROW, {"Pip"}),
    ("kelder-csc", "ENCOMPASS", "kelder-police", SCHOOL_ROW, {"Robin"}),
    ("kelder-housing", "HOUSING", "kelder-police", HOUSING_ROW, {"Pip", "Robin", "Wren"}),
    (
        "kelder-probation",
        "PERPETRATOR_MANAGEMENT",
        "kelder-police",
        PROBATION_ROW,
        {"Pip", "Robin", "Wren"},
    ),
]


def present(value: Any) -> set[str]:
    """The fields of a dumped group (or of each entry of G4) that hold something."""
    entries = value if isinstance(value, list) else [value]
    return {k for e in entries for k, v in e.items() if v not in (None, [], (), {})}


def source_group(source: Referral, group: FieldGroup) -> Any:
    whole = DisclosedReferral.whole(source).model_dump(mode="json")
    return whole[FIELD_GROUPS[group]]


@pytest.mark.parametrize(
    ("recipient", "purpose", "sender", "row", "children"),
    MATRIX,
    ids=[f"{r}-{p}" for r, p, *_ in MATRIX],
)
def test_recipient_receives_exactly_its_row(
    recipient: str,
    purpose: str,
    sender: str,
    row: dict[FieldGroup, Any],
    children: set[str],
) -> None:
    """The disclosure holds exactly the groups and fields of the recipient's matrix row."""
    source = referral(purpose, [recipient], sender)
    decision = one(source)
    assert decision.allowed, decision.rules
    got = disclosed(source, decision).model_dump(mode="json")
    for group in G:
        value = got[FIELD_GROUPS[group]]
        expected = row.get(group)
        if expected is None:
            assert value in (None, []), f"{group} was disclosed"
            continue
        assert present(value), f"{group} is missing"
        if expected == F and group is not G.G2:
            assert value == source_group(source, group), f"{group} is not whole"
        elif expected != F and group is not G.G9:
            assert present(value) <= expected, f"{group} has more than its subset"
            assert present(value) >= expected & present(source_group(source, group))
    if row.get(G.G4):
        assert {c["given_name"] for c in got["children"]} == children
    assert [g.label.split(".")[0] for g in decision.groups] == [g.value for g in G if g in row]


@pytest.mark.parametrize(
    ("recipient", "purpose", "sender", "row", "children"),
    MATRIX,
    ids=[f"{r}-{p}" for r, p, *_ in MATRIX],
)
def test_no_row_receives_the_unsafe_landline(
    recipient: str,
    purpose: str,
    sender: str,
    row: dict[FieldGroup, Any],
    children: set[str],
) -> None:
    """Whatever the row, the unsafe landline is in no disclosure, and safe routes are kept."""
    source = referral(purpose, [recipient], sender)
    got = disclosed(source, one(source)).model_dump(mode="json")
    assert UNSAFE_LANDLINE not in repr(got)
    if row.get(G.G2):
        assert [r["detail"] for r in got["safe_contact"]["routes"]] == ["07700 900001"]


def test_own_agency_subset_keeps_only_the_recipients_entries() -> None:
    """The NHS, housing and probation rows see only the G9 entries that name them."""
    for recipient, purpose in (
        ("kelder-nhs", "HEALTH_SAFEGUARDING"),
        ("kelder-housing", "HOUSING"),
        ("kelder-probation", "PERPETRATOR_MANAGEMENT"),
    ):
        source = referral(purpose, [recipient])
        g9 = disclosed(source, one(source)).agencies_actions
        assert g9 is not None
        assert [i.agency for i in g9.involved] == [recipient]
        assert [a.by_agency for a in g9.actions] == [recipient]


def test_children_social_care_gets_level_and_child_items_of_the_dash() -> None:
    """CSC sees the risk level and only the DASH answers about the children."""
    source = referral("CHILD_SAFEGUARDING", ["kelder-csc"])
    risk = disclosed(source, one(source)).risk
    assert risk is not None
    assert risk.dash is not None
    assert set(risk.dash.answers) == {"q3", "q7", "q9", "q18", "q23"}
    assert risk.level is not None
    assert risk.dash_score is None
    assert risk.professional_judgement is None


def test_probation_never_learns_where_the_victim_is() -> None:
    """Probation gets no address, contact route, NHS number, pregnancy or safety plan."""
    source = referral("PERPETRATOR_MANAGEMENT", ["kelder-probation"])
    got = disclosed(source, one(source))
    assert got.victim is not None
    assert got.victim.address is None
    assert got.victim.nhs_number is None
    assert got.victim.pregnancy is None
    assert got.safe_contact is None
    assert got.wishes is not None
    assert got.wishes.safety_plan is None
    assert "Imaginary Row" not in got.victim.model_dump_json()


def test_school_header_does_not_name_the_other_recipients() -> None:
    """A school's G0 is routing only: no list of the other recipients, no MARAC reference."""
    source = referral("ENCOMPASS", ["kelder-brook-primary", "kelder-csc"])
    school = decisions(source)[0]
    header = disclosed(source, school).header
    assert header.recipients == ()
    assert header.marac_reference is None
    assert header.police_reference == "KP/2026/118842"
