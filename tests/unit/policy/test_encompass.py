"""Operation Encompass: only the child's own school (or CSC), statutory content, and the deadline
at the start of the next school day on the area's calendar (fixed clocks throughout)."""

from __future__ import annotations

from datetime import datetime, time
from pathlib import Path
from typing import Any

import pytest

from broker.policy.calendar import WEEKDAYS, SchoolCalendar, load_calendar, next_school_day_start
from broker.policy.redaction import redact
from schemas.errors import SchemaError, UnknownAgency
from schemas.federation import Agency, AgencyRole
from tests.unit.policy.cases import (
    CALENDAR,
    FEDERATION,
    decisions,
    full_referral_data,
    notification,
    one,
    referral,
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


def test_notification_about_a_child_not_of_school_age_is_refused() -> None:
    """A notice about a two-year-old is not Operation Encompass: refused."""
    note = notification()
    young = note.model_copy(
        update={
            "content": note.content.model_copy(
                update={"child_date_of_birth": at("2024-05-01T00:00:00+00:00").date()}
            )
        }
    )
    got = one(young)
    assert not got.allowed
    assert got.reasons == ("encompass.not_school_age",)


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
