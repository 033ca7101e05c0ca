"""Operation Encompass: only the child's own school (or CSC), statutory content, and the deadline
at the start of the next school day on the area's calendar (fixed clocks throughout); and each
rule of DAA 2021 s49A as the law states it, through the engine and ``cairn policy explain``."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from broker.cli.policy import policy
from broker.envelope import open_record, seal
from broker.policy.agreements import Agreement
from broker.policy.calendar import WEEKDAYS, SchoolCalendar, load_calendar, next_school_day_start
from broker.policy.lint import check
from broker.policy.redaction import redact
from schemas.encompass import EncompassNotification
from schemas.errors import SchemaError, UnknownAgency
from schemas.federation import Agency, AgencyRole
from schemas.referral import Purpose, Referral
from tests.conftest import FederationKeys
from tests.samples import FEDERATION_DIR
from tests.unit.policy.cases import (
    AGREEMENTS,
    CALENDAR,
    ENCOMPASS_CONSENT,
    FEDERATION,
    NOW,
    decisions,
    full_referral_data,
    notification,
    one,
    referral,
    sample_dict,
)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


# --- the deadline ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("incident", "due"),
    [
        # Friday evening: the weekend is skipped, Monday morning.
        ("2026-11-20T19:30:00+00:00", "2026-11-23T08:30:00+00:00"),
        # Friday before half term (BST): half term skipped, and the clocks went back meanwhile.
        ("2026-10-23T18:00:00+01:00", "2026-11-02T08:30:00+00:00"),
        # A school-day morning before school starts: the same morning.
        ("2026-11-24T07:10:00+00:00", "2026-11-24T08:30:00+00:00"),
        # During the school day: the next morning.
        ("2026-11-24T10:00:00+00:00", "2026-11-25T08:30:00+00:00"),
        # Exactly at the start: that start has passed, so the next one.
        ("2026-11-24T08:30:00+00:00", "2026-11-25T08:30:00+00:00"),
        # Thursday night before an INSET day: Monday.
        ("2026-11-26T21:00:00+00:00", "2026-11-30T08:30:00+00:00"),
        # Last day of the autumn term: the first day of spring term.
        ("2026-12-18T17:00:00+00:00", "2027-01-05T08:30:00+00:00"),
        # A bank holiday Monday in term: Tuesday.
        ("2027-05-02T12:00:00+01:00", "2027-05-04T08:30:00+01:00"),
        # Summer time: 08:30 local is 07:30 UTC.
        ("2026-06-09T22:00:00+01:00", "2026-06-10T07:30:00+00:00"),
    ],
)
def test_deadline_is_the_start_of_the_next_school_day(incident: str, due: str) -> None:
    """Weekends, half terms, INSET days, holidays and clock changes are respected."""
    assert next_school_day_start(at(incident), CALENDAR) == at(due)


def test_beyond_the_term_dates_every_weekday_counts() -> None:
    """After the last configured term: the next weekday that is not a bank holiday."""
    assert next_school_day_start(at("2027-08-06T20:00:00+01:00"), CALENDAR) == at(
        "2027-08-09T08:30:00+01:00"
    )
    assert not CALENDAR.covers(at("2027-08-09T08:30:00+01:00").date())


def test_without_term_dates_the_rule_is_weekdays() -> None:
    """The default calendar is every weekday but bank holidays, 08:30 Europe/London."""
    assert next_school_day_start(at("2026-10-23T18:00:00+01:00"), WEEKDAYS) == at(
        "2026-10-26T08:30:00+00:00"
    )


def test_a_school_may_start_at_another_time() -> None:
    """A school with its own start time gets its own deadline; others keep the area's."""
    calendar = CALENDAR.model_copy(
        update={"school_day_starts": {"kelder-brook-primary": time(8, 50)}}
    )
    incident = at("2026-11-24T07:10:00+00:00")
    assert next_school_day_start(incident, calendar, school="kelder-brook-primary") == at(
        "2026-11-24T08:50:00+00:00"
    )
    assert next_school_day_start(incident, calendar) == at("2026-11-24T08:30:00+00:00")


def test_naive_time_is_a_programming_error() -> None:
    """The deadline needs an aware time."""
    with pytest.raises(TypeError):
        next_school_day_start(datetime(2026, 11, 24, 7, 0), CALENDAR)  # naive, on purpose


@pytest.mark.parametrize(
    ("yaml_text", "field"),
    [
        ("timezone: Mars/Olympus\n", "timezone"),
        (
            "terms:\n  - {name: A, first_day: 2026-09-02, last_day: 2026-12-18}\n"
            "  - {name: B, first_day: 2026-12-01, last_day: 2027-03-25}\n",
            "terms.1.first_day",
        ),
        (
            "terms:\n  - {name: A, first_day: 2026-09-02, last_day: 2026-09-01}\n",
            "terms.0.last_day",
        ),
        ("school_day_start: '25:00'\n", "school_day_start"),
        ("holidays: []\n", "holidays"),
    ],
)
def test_a_bad_calendar_is_refused_naming_the_file_and_field(
    tmp_path: Path, yaml_text: str, field: str
) -> None:
    """Calendar errors say which file and which field to fix."""
    path = tmp_path / "school-calendar.yaml"
    path.write_text(yaml_text, encoding="utf-8")
    with pytest.raises(SchemaError) as info:
        load_calendar(path)
    assert str(path) in str(info.value)
    assert field in [p.field for p in info.value.problems]


def test_a_missing_calendar_says_what_it_is_for(tmp_path: Path) -> None:
    """No calendar file: the error names the path and why it is needed."""
    with pytest.raises(SchemaError, match="Encompass deadline"):
        load_calendar(tmp_path / "school-calendar.yaml")


# --- notifications through the engine -------------------------------------------------------


def test_notification_to_the_childs_school_is_allowed_with_its_deadline() -> None:
    """The sample notice goes to the school on the statutory basis, due at 08:30 next day."""
    now = at("2026-11-26T06:00:00+00:00")
    got = one(notification(), now=now)
    assert got.allowed
    assert got.agreement == "kelder-encompass"
    assert got.deadline == at("2026-11-26T08:30:00+00:00")
    assert got.lawful_basis is not None
    assert got.lawful_basis.label == "art6_1_c+daa2021_s49a"
    assert got.consent_basis is not None
    assert got.consent_basis.label == "not_required_statutory"
    assert [g.label for g in got.groups] == [
        "G0.routing",
        "G4.own_pupil",
        "G5.encompass",
        "G8.basis_only",
    ]
    assert "encompass.deadline.passed" not in got.rules


def test_notification_is_disclosed_unchanged() -> None:
    """A notification is statutory content by type: what the school gets is the notice itself."""
    note = notification()
    assert redact(note, one(note)) is note


def test_a_late_decision_is_still_sent_and_marked_overdue() -> None:
    """Past the deadline the notice still goes, with the overdue rule for the audit trail."""
    got = one(notification(), now=at("2026-11-26T10:00:00+00:00"))
    assert got.allowed
    assert "encompass.deadline.passed" in got.rules


def test_a_sender_deadline_later_than_the_law_is_flagged() -> None:
    """notify_by later than the statutory deadline is named, the statutory one is kept."""
    got = one(notification(notify_by="2026-11-27T08:30:00+00:00"))
    assert got.deadline == at("2026-11-26T08:30:00+00:00")
    assert "encompass.notify_by.after_deadline" in got.rules


def test_notification_to_a_school_outside_the_agreement_is_refused() -> None:
    """A school that has not signed the Encompass agreement receives nothing."""
    oak = Agency(
        id="kelder-oak-secondary", name="Oak Secondary (fictional)", role=AgencyRole.SCHOOL
    )
    federation = FEDERATION.model_copy(update={"agencies": (*FEDERATION.agencies, oak)})
    got = one(notification(recipient="kelder-oak-secondary"), federation=federation)
    assert not got.allowed
    assert got.reasons == ("recipient.not_party",)


def test_notification_from_anyone_but_police_is_refused() -> None:
    """Only a police force sends Encompass notices."""
    with pytest.raises(UnknownAgency):
        decisions(notification(sender_agency="kelder-nhs"))


# --- Encompass referrals: the child's own school only ---------------------------------------


def test_school_receives_only_its_own_pupil() -> None:
    """Of three children the school gets only the one at that school, statutory fields only."""
    source = referral("ENCOMPASS", ["kelder-brook-primary"])
    got = redact(source, one(source))
    assert [c.given_name for c in got.children] == ["Pip"]  # type: ignore[union-attr]
    dumped = got.model_dump(exclude_none=True, exclude_defaults=True)
    assert set(dumped) == {"header", "children", "incident", "consent"}
    assert set(dumped["consent"]) == {"art6_basis", "statutory_gateway"}


def test_school_with_no_pupil_in_the_referral_gets_nothing() -> None:
    """No child of the referral attends the named school: refused, not own pupil."""
    data = full_referral_data()
    data["children"][0]["school_agency"] = None
    got = one(referral("ENCOMPASS", ["kelder-brook-primary"], data=data))
    assert not got.allowed
    assert got.reasons == ("encompass.not_own_pupil",)


def test_csc_receives_only_the_home_educated_child() -> None:
    """Children's social care is notified for the home-educated child alone."""
    source = referral("ENCOMPASS", ["kelder-csc"])
    got = redact(source, one(source))
    assert [c.given_name for c in got.children] == ["Robin"]  # type: ignore[union-attr]


def test_csc_without_a_home_educated_child_gets_nothing() -> None:
    """No home-educated child of school age: children's social care is refused."""
    data: dict[str, Any] = full_referral_data()
    data["children"] = [c for c in data["children"] if not c.get("home_educated")]
    got = one(referral("ENCOMPASS", ["kelder-csc"], data=data))
    assert got.reasons == ("encompass.no_home_educated_child",)


def test_encompass_referral_deadline_runs_from_the_incident() -> None:
    """A Wednesday 22:40 incident is due at Thursday's school start, on the area calendar."""
    got = one(referral("ENCOMPASS", ["kelder-brook-primary"]), calendar=CALENDAR)
    assert got.deadline == at("2026-11-26T08:30:00+00:00")
    other = SchoolCalendar(school_day_start=time(9, 0))
    assert one(referral("ENCOMPASS", ["kelder-brook-primary"]), calendar=other).deadline == at(
        "2026-11-26T09:00:00+00:00"
    )


def test_non_encompass_decisions_have_no_deadline() -> None:
    """Only Operation Encompass carries a statutory deadline."""
    assert one(referral("MARAC", ["kelder-marac"])).deadline is None


# --- the law, rule by rule: DAA 2021 s49A, through the engine and `cairn policy explain` ------

Explain = Callable[..., dict[str, Any]]
SCHOOL = "kelder-brook-primary"
SAFEGUARDING_BASIS = "art6_1_e+art9_2_g+dpa2018_sch1_para18+ca2004_s11"


@pytest.fixture
def explain(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Explain:
    """``cairn policy explain --json`` on a message, over a federation folder, at ``NOW``."""
    monkeypatch.delenv("CAIRN_CONFIG", raising=False)
    monkeypatch.chdir(FEDERATION_DIR)  # no cairn.toml here

    def run(message: Referral | EncompassNotification, folder: Path = FEDERATION_DIR) -> Any:
        monkeypatch.setenv("CAIRN_FEDERATION_DIR", str(folder))
        path = tmp_path / f"{uuid.uuid4()}.json"
        path.write_text(message.model_dump_json(), encoding="utf-8")
        args = ["explain", str(path), "--now", NOW.isoformat(), "--json"]
        result = CliRunner().invoke(policy, args)
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    return run


def notice_about(date_of_birth: str, **header: Any) -> EncompassNotification:
    """The sample notice (incident 25 Nov 2026) about a child born on ``date_of_birth``."""
    data = sample_dict("encompass-notification.json")
    data["header"].update(header)
    data["content"]["child_date_of_birth"] = date_of_birth
    return EncompassNotification.model_validate(data)


def shown(explained: dict[str, Any]) -> list[tuple[bool, list[str]]]:
    return [(d["allowed"], d["reasons"]) for d in explained["decisions"]]


def with_children(*children: dict[str, Any], **incident: Any) -> dict[str, Any]:
    """The full referral's data with exactly these children (and incident fields changed)."""
    data = full_referral_data()
    data["children"] = list(children)
    data["incident"].update(incident)
    return data


def kid(name: str, dob: str, **extra: Any) -> dict[str, Any]:
    return {"given_name": name, "family_name": "Fictitia", "date_of_birth": dob, **extra}


def test_scope_is_every_child_under_18_on_a_school_roll_nursery_included(explain: Explain) -> None:
    """DAA 2021 s49A, s3: a registered pupil under 18 at the incident, nursery class included, is
    in scope (a 3-year-old on a school roll is notified); a 3-year-old at home is nobody's pupil."""
    nursery = notice_about("2023-09-01")  # 3 on the incident date
    assert one(nursery).allowed
    assert shown(explain(nursery))[0][0] is True
    pupil = with_children(kid("Wren", "2023-09-01", school_agency=SCHOOL))
    source = referral("ENCOMPASS", [SCHOOL], data=pupil)
    assert [c.given_name for c in redact(source, one(source)).children] == ["Wren"]  # type: ignore[union-attr]
    not_off_roll = referral("ENCOMPASS", ["kelder-csc"], data=pupil)
    assert one(not_off_roll).reasons == ("encompass.no_home_educated_child",)
    at_home = with_children(kid("Wren", "2023-09-01"))
    for recipient, code in (
        (SCHOOL, "encompass.not_own_pupil"),
        ("kelder-csc", "encompass.no_home_educated_child"),
    ):
        nobody = referral("ENCOMPASS", [recipient], data=at_home)
        assert one(nobody).reasons == (code,)
        assert shown(explain(nobody)) == [(False, [code])]


@pytest.mark.parametrize(
    ("date_of_birth", "allowed"),
    [("2008-11-26", True), ("2008-11-25", False), ("2026-11-26", False)],
    ids=["17-turning-18-next-day", "18-on-the-day", "born-after-the-incident"],
)
def test_a_person_of_18_at_the_incident_is_not_a_child(
    explain: Explain, date_of_birth: str, allowed: bool
) -> None:
    """DAA 2021 s3 ('child' means a person under 18), s49A: the age is taken on the incident
    date; 18 that day (or born after it) is refused as encompass.not_a_child."""
    note = notice_about(date_of_birth)
    got = one(note)
    assert got.allowed is allowed
    expected = [] if allowed else ["encompass.not_a_child"]
    if not allowed:
        assert got.reasons == ("encompass.not_a_child",)
    assert shown(explain(note))[0][0] is allowed
    assert [r for r in shown(explain(note))[0][1] if r.startswith("encompass")] == expected


def test_the_age_band_is_data_in_the_agreement(explain: Explain, tmp_path: Path) -> None:
    """DAA 2021 s3 (a child is under 18): the engine reads child_age_under from the Encompass
    agreement, the statutory 18 by default; an agreement can never widen it past 18."""
    sixteen = notice_about("2010-09-01")
    assert one(sixteen).allowed  # 16 at the incident: a child under the statutory default
    encompass = next(a for a in AGREEMENTS if a.id == "kelder-encompass")
    assert encompass.terms(Purpose.ENCOMPASS).child_age_under == 18  # type: ignore[union-attr]
    data = encompass.model_dump(mode="json")
    data["purposes"][0]["child_age_under"] = 16
    narrowed = Agreement.model_validate(data)
    others = [a for a in AGREEMENTS if a.id != "kelder-encompass"]
    got = one(sixteen, agreements=[*others, narrowed])
    assert got.reasons == ("encompass.not_a_child",)
    assert "encompass.child_age_below_statute" in [p.code for p in check([narrowed], FEDERATION)]
    folder = tmp_path / "federation"
    shutil.copytree(FEDERATION_DIR, folder, ignore=shutil.ignore_patterns("samples"))
    path = folder / "agreements" / "kelder-encompass.yaml"
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("child_age_under: 18", "child_age_under: 16"), encoding="utf-8")
    assert shown(explain(sixteen, folder=folder)) == [(False, ["encompass.not_a_child"])]
    data["purposes"][0]["child_age_under"] = 19
    with pytest.raises(ValidationError, match="child_age_under"):
        Agreement.model_validate(data)


def test_the_duty_does_not_depend_on_attendance(explain: Explain) -> None:
    """DAA 2021 s49A: reasonable grounds to believe a child may be a victim trigger the notice,
    whether or not officers attended: an Encompass referral with police_attended false goes."""
    source = referral(
        "ENCOMPASS",
        [SCHOOL],
        data=with_children(kid("Pip", "2018-09-03", school_agency=SCHOOL), police_attended=False),
    )
    got = one(source)
    assert got.allowed, got.rules
    assert not any("attend" in rule for rule in got.rules)
    assert shown(explain(source))[0][0] is True


def test_the_duty_does_not_depend_on_the_adult_victims_consent(explain: Explain) -> None:
    """DAA 2021 s49A: the notice rests on the statute, not on anyone's consent: a notice
    carries no G8 and is decided 'consent not required, statutory', never asking the adult."""
    got = one(notification())
    assert got.allowed
    assert got.consent_basis is not None
    assert got.consent_basis.label == "not_required_statutory"
    assert got.lawful_basis is not None
    assert got.lawful_basis.label == "art6_1_c+daa2021_s49a"
    record = explain(notification())["decisions"][0]
    assert (record["lawful_basis"], record["consent_basis"]) == (
        "art6_1_c+daa2021_s49a",
        "not_required_statutory",
    )


def test_a_school_never_receives_an_adult_as_its_pupil(explain: Explain) -> None:
    """DAA 2021 s3, s49A: an ENCOMPASS-purpose referral obeys the notice's test: a pupil 18 or
    over at the incident is never disclosed to the school, nor an 18-year-old to CSC."""
    adult = kid("Sam", "2008-11-25", school_agency=SCHOOL)  # 18 on the incident date
    mixed = referral(
        "ENCOMPASS",
        [SCHOOL],
        data=with_children(adult, kid("Pip", "2018-09-03", school_agency=SCHOOL)),
    )
    got = one(mixed)
    assert got.allowed
    assert [c.given_name for c in redact(mixed, got).children] == ["Pip"]  # type: ignore[union-attr]
    only_adult = referral("ENCOMPASS", [SCHOOL], data=with_children(adult))
    assert one(only_adult).reasons == ("encompass.not_a_child",)
    assert shown(explain(only_adult)) == [(False, ["encompass.not_a_child"])]
    off_roll_adult = referral(
        "ENCOMPASS",
        ["kelder-csc"],
        data=with_children(kid("Robin", "2008-11-25", home_educated=True)),
    )
    assert one(off_roll_adult).reasons == ("encompass.not_a_child",)


def test_a_child_on_no_school_roll_is_notified_to_csc_on_the_safeguarding_basis(
    explain: Explain, federation_keys: FederationKeys
) -> None:
    """s49A names schools: a home-educated or off-roll child's notice to children's social care
    rests on UK GDPR Art 6(1)(e), Art 9(2)(g), DPA 2018 Sch 1 para 18 and Children Act 2004 s11,
    never on Art 6(1)(c) with s49A; the sealed disclosure carries that basis."""
    note = notification(recipient="kelder-csc")
    got = one(note)
    assert got.allowed
    assert got.lawful_basis is not None
    assert got.lawful_basis.label == SAFEGUARDING_BASIS
    assert f"lawful_basis.statutory.{SAFEGUARDING_BASIS}" in got.rules
    assert explain(note)["decisions"][0]["lawful_basis"] == SAFEGUARDING_BASIS
    broker = federation_keys.trust()
    now = datetime.now(UTC)  # the development keys are valid from when the fixture made them
    sealed = seal(
        note,
        got,
        topic_prefix="t",
        request_id="r",
        broker_key=broker.signing_key(),
        registry=broker.registry(),
        now=now,
    )
    csc = federation_keys.trust("kelder-csc")
    disclosure = open_record(
        sealed.value,
        recipient="kelder-csc",
        keys=csc.decryption_keys(),
        registry=csc.registry(),
        now=now,
    )
    assert disclosure.lawful_basis.label == SAFEGUARDING_BASIS
    # An Encompass referral to CSC that names s49A names the wrong basis for that role.
    wrong = referral("ENCOMPASS", ["kelder-csc"], consent=ENCOMPASS_CONSENT)
    assert one(wrong).reasons == ("lawful_basis.not_accepted",)
    assert one(referral("ENCOMPASS", ["kelder-csc"])).lawful_basis.label == SAFEGUARDING_BASIS  # type: ignore[union-attr]
