"""Sharing agreements as data: loading with errors that name file and field, and the linter."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.policy.agreements import (
    AGREEMENTS_DIR,
    Agreement,
    load_agreement,
    load_agreements,
)
from broker.policy.lint import check, lint_directory
from schemas.errors import SchemaError
from schemas.federation import AgencyRole
from tests.samples import FEDERATION_DIR
from tests.unit.policy.cases import AGREEMENTS, FEDERATION, agreement

SOURCE = FEDERATION_DIR / AGREEMENTS_DIR


def test_development_agreements_load_and_lint_clean() -> None:
    """The development federation's agreements load, and the linter finds nothing."""
    assert [a.id for a in AGREEMENTS] == sorted(p.stem for p in SOURCE.glob("*.yaml"))
    assert check(AGREEMENTS, FEDERATION) == []
    assert lint_directory(SOURCE, FEDERATION) == []


def test_every_matrix_role_is_granted_somewhere() -> None:
    """Each role of the need-to-know matrix (docs/domain.md) is granted by some agreement."""
    granted = {role for a in AGREEMENTS for t in a.purposes for role in t.recipients}
    assert granted == set(AgencyRole)
    assert all(a.retention.label for a in AGREEMENTS)


def test_every_subset_says_what_it_is_for() -> None:
    """Each subset names its fields and carries a note an IG officer can read."""
    for a in AGREEMENTS:
        for named in a.subsets.values():
            for subset in named.values():
                assert subset.fields
                assert len(subset.note.split()) >= 3


# --- loading -----------------------------------------------------------------------------------


def write(folder: Path, data: dict[str, Any], name: str | None = None) -> Path:
    path = folder / f"{name or data['id']}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def idva() -> dict[str, Any]:
    return agreement("kelder-idva-isa").model_dump(mode="json")


def grant(data: dict[str, Any]) -> dict[str, str]:
    recipients: dict[str, dict[str, str]] = data["purposes"][0]["recipients"]
    return recipients["idva"]


def broken(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    data = idva()
    change(data)
    return data


LOAD_ERRORS = [
    ("unknown group", lambda d: grant(d).update(G11="full"), "purposes.0.recipients.idva.G11"),
    (
        "unknown role",
        lambda d: d["purposes"][0]["recipients"].update(teacher={"G0": "full"}),
        "purposes.0.recipients.teacher",
    ),
    ("unknown subset", lambda d: grant(d).update(G4="most"), "purposes.0.recipients.idva.G4"),
    (
        "unknown field",
        lambda d: d["subsets"]["G4"]["children_basic"]["fields"].append("shoe_size"),
        "subsets.G4.children_basic.fields",
    ),
    (
        "scope on the wrong group",
        lambda d: d["subsets"]["G7"]["access_needs"].update(scope="own_pupil"),
        "subsets.G7.access_needs.scope",
    ),
    ("grant without a header", lambda d: grant(d).pop("G0"), "purposes.0.recipients.idva"),
    ("unknown key", lambda d: d.update(signed_by="nobody"), "signed_by"),
    (
        "bad lawful basis",
        lambda d: d["purposes"][0]["lawful_bases"].append({"art9": "art9_2_h"}),
        "purposes.0.lawful_bases.3.dpa",
    ),
    ("one party", lambda d: d.update(parties=d["parties"][:1]), "parties"),
    ("purpose twice", lambda d: d["purposes"].append(d["purposes"][0]), "purposes"),
    ("no retention period", lambda d: d["retention"].update(years=0), "retention.years"),
]


@pytest.mark.parametrize(("case", "change", "field"), LOAD_ERRORS, ids=[c[0] for c in LOAD_ERRORS])
def test_a_bad_agreement_is_refused_naming_file_and_field(
    tmp_path: Path, case: str, change: Callable[[dict[str, Any]], None], field: str
) -> None:
    """Unknown groups, roles, subsets and fields are load errors naming the file and field."""
    path = write(tmp_path, broken(change))
    with pytest.raises(SchemaError) as info:
        load_agreement(path)
    assert str(path) in str(info.value)
    assert any(p.field.startswith(field) for p in info.value.problems), info.value.problems


def test_the_file_is_named_after_the_agreement(tmp_path: Path) -> None:
    """An agreement in a file of another name is refused at its id."""
    with pytest.raises(SchemaError) as info:
        load_agreement(write(tmp_path, idva(), name="idva"))
    assert [p.field for p in info.value.problems] == ["id"]


def test_not_yaml_is_refused_naming_the_file(tmp_path: Path) -> None:
    """A file that is not YAML says so, naming the file."""
    path = tmp_path / "kelder-idva-isa.yaml"
    path.write_text("id: [unclosed\n", encoding="utf-8")
    with pytest.raises(SchemaError, match="not valid YAML"):
        load_agreement(path)


def test_loading_a_folder_reports_every_file(tmp_path: Path) -> None:
    """All files' problems come back together, each prefixed with its file name."""
    write(tmp_path, broken(lambda d: grant(d).update(G11="full")))
    other = agreement("kelder-housing-isa").model_dump(mode="json")
    other["purposes"][0]["recipients"]["housing"]["G3"] = "everything"
    write(tmp_path, other)
    with pytest.raises(SchemaError) as info:
        load_agreements(tmp_path)
    files = {p.field.split(":")[0] for p in info.value.problems}
    assert files == {"kelder-idva-isa.yaml", "kelder-housing-isa.yaml"}


def test_a_missing_folder_is_an_error_not_an_empty_policy(tmp_path: Path) -> None:
    """Without an agreements folder the broker would share nothing: that is an error."""
    with pytest.raises(SchemaError, match="no agreements folder"):
        load_agreements(tmp_path / "agreements")
    assert [p.code for p in lint_directory(tmp_path / "agreements", FEDERATION)] == [
        "agreements.missing"
    ]


# --- linting -----------------------------------------------------------------------------------


def linted(agreement_id: str, change: Callable[[dict[str, Any]], None]) -> list[str]:
    data = agreement(agreement_id).model_dump(mode="json")
    change(data)
    changed = Agreement.model_validate(data)
    others = [a for a in AGREEMENTS if a.id != agreement_id]
    return [p.code for p in check([*others, changed], FEDERATION)]


def terms(data: dict[str, Any]) -> dict[str, Any]:
    first: dict[str, Any] = data["purposes"][0]
    return first


LINT = [
    (
        "kelder-idva-isa",
        lambda d: d["parties"].append({"agency": "kelder-ghost", "role": "idva"}),
        "party.unknown_agency",
    ),
    ("kelder-idva-isa", lambda d: d["parties"][0].update(role="housing"), "party.role_mismatch"),
    (
        "kelder-idva-isa",
        lambda d: terms(d)["recipients"].update(school={"G0": "full"}),
        "grant.role_not_party",
    ),
    ("kelder-idva-isa", lambda d: terms(d).update(lawful_bases=[]), "purpose.no_lawful_basis"),
    ("kelder-idva-isa", lambda d: terms(d).update(recipients={}), "purpose.no_recipients"),
    (
        "kelder-idva-isa",
        lambda d: terms(d).update(notification_basis={"idva": {"art6": "art6_1_c"}}),
        "purpose.notification_basis_misplaced",
    ),
    (
        "kelder-encompass",
        lambda d: terms(d).update(notification_basis={}),
        "encompass.no_notification_basis",
    ),
    (
        "kelder-encompass",
        lambda d: terms(d)["notification_basis"].pop("childrens_social_care"),
        "encompass.no_notification_basis",
    ),
    (
        "kelder-encompass",
        lambda d: terms(d)["notification_basis"].update(
            childrens_social_care={"art6": "art6_1_c", "gateway": "daa2021_s49a"}
        ),
        "encompass.notification_basis_wrong",
    ),
    (
        "kelder-encompass",
        lambda d: terms(d).update(lawful_bases=[{"art6": "art6_1_c", "gateway": "daa2021_s49a"}]),
        "encompass.lawful_bases_ignored",
    ),
    (
        "kelder-encompass",
        lambda d: terms(d).update(child_age_under=17),
        "encompass.child_age_below_statute",
    ),
    (
        "kelder-idva-isa",
        lambda d: terms(d)["consent"].update(states=["obtained"]),
        "consent.overrides_unreachable",
    ),
    (
        "kelder-idva-isa",
        lambda d: terms(d)["consent"].update(override_reasons=[]),
        "consent.states_need_override",
    ),
    (
        "kelder-marac-isa",
        lambda d: terms(d).update(marac_criterion_required=False),
        "marac.criterion_not_required",
    ),
    (
        "kelder-housing-isa",
        lambda d: (
            terms(d).update(lawful_bases=[{"art6": "art6_1_e"}]),
            terms(d)["recipients"]["housing"].update(G7="full"),
        ),
        "special_category.no_condition",
    ),
    (
        "kelder-encompass",
        lambda d: terms(d)["recipients"]["school"].update(G1="full"),
        "encompass.beyond_statutory",
    ),
    (
        "kelder-encompass",
        lambda d: terms(d)["recipients"]["school"].update(G5="full"),
        "encompass.beyond_statutory",
    ),
    (
        "kelder-encompass",
        lambda d: terms(d)["recipients"]["school"].update(G4="home_educated"),
        "encompass.scope",
    ),
    (
        "kelder-encompass",
        lambda d: (
            d["parties"].append({"agency": "kelder-idva", "role": "idva"}),
            terms(d)["recipients"].update(idva={"G0": "routing"}),
        ),
        "encompass.recipient_role",
    ),
]


@pytest.mark.parametrize(("agreement_id", "change", "code"), LINT, ids=[c[2] for c in LINT])
def test_lint_names_each_problem(
    agreement_id: str, change: Callable[[dict[str, Any]], None], code: str
) -> None:
    """Each kind of problem the linter knows is reported with its code."""
    assert code in linted(agreement_id, change)


def test_two_agreements_granting_one_role_differently_contradict() -> None:
    """Two agreements in force for IDVA that grant the IDVA different groups: contradictory."""
    other = agreement("kelder-idva-isa").model_dump(mode="json")
    other["id"] = "kelder-idva-isa-2"
    other["purposes"][0]["recipients"]["idva"]["G7"] = "full"
    problems = check([*AGREEMENTS, Agreement.model_validate(other)], FEDERATION)
    assert [(p.agreement, p.code) for p in problems] == [("kelder-idva-isa", "grant.contradictory")]
    assert "kelder-idva-isa-2" in problems[0].message


def test_agreements_that_never_overlap_do_not_contradict() -> None:
    """A successor agreement that starts after the first ends is no contradiction."""
    first = agreement("kelder-idva-isa").model_dump(mode="json")
    first["in_force_until"] = "2026-12-31"
    second = agreement("kelder-idva-isa").model_dump(mode="json")
    second.update(id="kelder-idva-isa-2027", in_force_from="2027-01-01")
    second["purposes"][0]["recipients"]["idva"]["G7"] = "full"
    others = [a for a in AGREEMENTS if a.id != "kelder-idva-isa"]
    pair = [Agreement.model_validate(first), Agreement.model_validate(second)]
    assert check([*others, *pair], FEDERATION) == []


def test_duplicate_ids_are_reported() -> None:
    """Two agreements with one id cannot be told apart in an audit trail."""
    assert "agreement.duplicate_id" in [
        p.code for p in check([*AGREEMENTS, AGREEMENTS[0]], FEDERATION)
    ]


def test_lint_directory_turns_load_errors_into_problems(tmp_path: Path) -> None:
    """'cairn policy check' reports a file that does not load, with its field, among the rest."""
    write(tmp_path, broken(lambda d: grant(d).update(G11="full")))
    problems = lint_directory(tmp_path, FEDERATION)
    assert [(p.agreement, p.code) for p in problems] == [
        ("kelder-idva-isa.yaml", "agreement.invalid")
    ]
    assert "G11" in str(problems[0])
