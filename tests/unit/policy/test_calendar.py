"""The school calendar: bank holidays from the maintained source, the conservative rule beyond
the term dates, how soon the term dates run out, and the Encompass deadline explained in words.

The deadline is "before the start of the next school day" (Domestic Abuse Act 2021 s49A); bank
holidays are those of England and Wales under the Banking and Financial Dealings Act 1971 and
its proclamations, taken from the ``holidays`` package rather than typed by hand.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from holidays.countries.united_kingdom import UnitedKingdom

from broker.cli.policy import policy
from broker.policy.calendar import (
    CONSERVATIVE_RULE,
    WEEKDAYS,
    SchoolCalendar,
    SkippedDays,
    Term,
    bank_holiday,
    explain_deadline,
    load_calendar,
    next_school_day_start,
)
from tests.samples import FEDERATION_DIR
from tests.unit.policy.cases import CALENDAR

LAST_DAY = date(2027, 7, 21)  # the shipped calendar's last term ends here


TO = "\N{EN DASH}"  # ranges in the explanation text


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def uk(subdiv: str, year: int) -> dict[date, str]:
    """The package's own list for one UK subdivision and year."""
    table = UnitedKingdom(subdiv=subdiv, years=year, language="en_GB")  # type: ignore[no-untyped-call]  # its __init__ takes bare **kwargs
    return dict(table)


# --- bank holidays -------------------------------------------------------------------------


@pytest.mark.parametrize("year", range(2024, 2036))
def test_england_and_wales_share_one_bank_holiday_list(year: int) -> None:
    """Banking and Financial Dealings Act 1971 Sch 1 para 1: England and Wales have the same bank
    holidays, so the package's ENG list serves both (checked year by year, not assumed)."""
    england, wales = uk("ENG", year), uk("WLS", year)
    assert england == wales
    assert {d: bank_holiday(d) for d in england} == england


def test_bank_holidays_are_named_and_include_substitute_days() -> None:
    """The 1971 Act's days and their substitutes: Christmas 2027 falls at a weekend, so the
    Monday and Tuesday after are bank holidays; an ordinary day is none."""
    assert bank_holiday(date(2026, 12, 25)) == "Christmas Day"
    assert bank_holiday(date(2027, 3, 29)) == "Easter Monday"
    assert bank_holiday(date(2027, 12, 27)) == "Christmas Day (observed)"
    assert bank_holiday(date(2027, 12, 28)) == "Boxing Day (observed)"
    assert bank_holiday(date(2026, 11, 24)) is None


def test_a_bank_holiday_inside_a_term_is_not_a_school_day() -> None:
    """s49A "next school day": the early May bank holiday 2027 lies inside the summer term and
    the shipped calendar no longer lists it, yet Monday 3 May is skipped (1971 Act)."""
    assert CALENDAR.terms[-1].first_day < date(2027, 5, 3) < CALENDAR.terms[-1].last_day
    assert not any(c.first_day <= date(2027, 5, 3) <= c.last_day for c in CALENDAR.closures)
    assert not CALENDAR.is_school_day(date(2027, 5, 3))
    assert next_school_day_start(at("2027-04-30T18:00:00+01:00"), CALENDAR) == at(
        "2027-05-04T08:30:00+01:00"
    )


def test_a_bank_holiday_missing_from_the_yaml_is_still_skipped(tmp_path: Path) -> None:
    """A calendar whose term spans the late summer bank holiday (31 Aug 2026) with no closure
    for it still skips that Monday: bank holidays are never school days (1971 Act)."""
    path = tmp_path / "school-calendar.yaml"
    path.write_text(
        "authority: Testshire\n"
        "terms:\n  - {name: Late summer, first_day: 2026-08-24, last_day: 2026-09-30}\n",
        encoding="utf-8",
    )
    calendar = load_calendar(path)
    assert calendar.authority == "Testshire"
    assert not calendar.is_school_day(date(2026, 8, 31))
    assert next_school_day_start(at("2026-08-28T18:00:00+01:00"), calendar) == at(
        "2026-09-01T08:30:00+01:00"
    )


def test_the_shipped_calendar_types_no_bank_holidays() -> None:
    """The YAML lists only the authority's own closures (half terms, INSET days): none is made
    of bank holidays alone, which come from the package."""
    for closure in CALENDAR.closures:
        assert "bank holiday" not in closure.name.lower()
        days = [
            closure.first_day + timedelta(days=n)
            for n in range((closure.last_day - closure.first_day).days + 1)
        ]
        assert any(d.weekday() < 5 and bank_holiday(d) is None for d in days), closure.name


# --- beyond the term dates: the conservative rule ----------------------------------------------


def test_past_the_end_the_rule_is_the_next_weekday_that_is_not_a_bank_holiday() -> None:
    """After the last term (conservative rule): Friday 27 Aug 2027 evening is due Tuesday 31 Aug,
    the late summer bank holiday Monday skipped; Christmas 2027 is due Wednesday 29 Dec."""
    assert next_school_day_start(at("2027-08-27T18:00:00+01:00"), CALENDAR) == at(
        "2027-08-31T08:30:00+01:00"
    )
    assert next_school_day_start(at("2027-12-24T18:00:00+00:00"), CALENDAR) == at(
        "2027-12-29T08:30:00+00:00"
    )


@pytest.mark.parametrize(
    ("first", "days"),
    [(LAST_DAY + timedelta(days=1), 3 * 366), (date(2024, 9, 1), 367)],
    ids=["after-the-end", "before-the-start"],
)
def test_beyond_the_term_dates_the_deadline_is_never_a_bank_holiday_or_weekend(
    first: date, days: int
) -> None:
    """For an incident at 18:00 on every day beyond the term dates, the deadline is the first
    later weekday that is not a bank holiday: never a weekend, never a bank holiday."""
    for n in range(days):
        day = first + timedelta(days=n)
        due = next_school_day_start(datetime.combine(day, time(18), CALENDAR.zone), CALENDAR)
        if CALENDAR.covers(due.date()):
            continue  # the search ran into the term dates: their rules apply there
        assert due.weekday() < 5
        assert bank_holiday(due.date()) is None
        between = day + timedelta(days=1)
        while between < due.date():
            assert between.weekday() >= 5 or bank_holiday(between) is not None
            between += timedelta(days=1)


def test_the_default_calendar_skips_bank_holidays_too() -> None:
    """WEEKDAYS (no term dates) is the conservative rule everywhere: Christmas Eve 2026 evening
    is due Tuesday 29 Dec, past Christmas, the weekend and Boxing Day's substitute Monday."""
    assert next_school_day_start(at("2026-12-24T18:00:00+00:00"), WEEKDAYS) == at(
        "2026-12-29T08:30:00+00:00"
    )


# --- how soon the term dates run out -----------------------------------------------------------


@pytest.mark.parametrize(
    ("today", "left", "soon", "ended"),
    [
        (LAST_DAY - timedelta(days=61), 61, False, False),
        (LAST_DAY - timedelta(days=60), 60, True, False),
        (LAST_DAY, 0, True, False),
        (LAST_DAY + timedelta(days=1), -1, False, True),
    ],
)
def test_days_left_and_the_sixty_day_window(
    today: date, left: int, soon: bool, ended: bool
) -> None:
    """The warning window is inclusive: 60 days before the last day warns, 61 does not; the day
    after the last is "ended"."""
    assert CALENDAR.days_left(today) == left
    assert CALENDAR.runs_out_soon(today, 60) is soon
    assert CALENDAR.has_ended(today) is ended
    assert (CALENDAR.horizon_warning(today, 60) is not None) is (soon or ended)


def test_a_calendar_without_terms_has_no_horizon_but_is_warned_about() -> None:
    """No term dates: nothing runs out, and the operator is told every deadline is conservative."""
    assert WEEKDAYS.days_left(date(2026, 12, 1)) is None
    assert not WEEKDAYS.runs_out_soon(date(2026, 12, 1))
    warning = WEEKDAYS.horizon_warning(date(2026, 12, 1))
    assert warning is not None
    assert CONSERVATIVE_RULE in warning


@pytest.fixture
def check(monkeypatch: pytest.MonkeyPatch) -> Any:
    """``cairn policy check --today DAY`` over the development federation."""
    monkeypatch.delenv("CAIRN_CONFIG", raising=False)
    monkeypatch.chdir(FEDERATION_DIR)  # no cairn.toml here
    monkeypatch.setenv("CAIRN_FEDERATION_DIR", str(FEDERATION_DIR))

    def invoke(day: date) -> Any:
        return CliRunner().invoke(policy, ["check", "--today", day.isoformat()])

    return invoke


def test_policy_check_warns_at_sixty_days_and_not_at_sixty_one(check: Any) -> None:
    """`cairn policy check` reports term dates ending within 60 days as a warning (exit 0)."""
    quiet = check(LAST_DAY - timedelta(days=61))
    assert "warning" not in quiet.output
    warned = check(LAST_DAY - timedelta(days=60))
    assert warned.exit_code == 0, warned.output
    assert "warning: school-calendar.yaml: the term dates end on 21 Jul 2027, in 60 day(s)" in (
        warned.output
    )
    assert "no problems (1 warning(s))" in warned.output


def test_policy_check_reports_an_ended_calendar(check: Any) -> None:
    """Past the last term `cairn policy check` says so and names the conservative rule (exit 0:
    the deadlines are early, never late)."""
    result = check(LAST_DAY + timedelta(days=10))
    assert result.exit_code == 0, result.output
    assert "the term dates ended on 21 Jul 2027 (10 day(s) ago)" in result.output
    assert CONSERVATIVE_RULE in result.output


# --- the deadline explained --------------------------------------------------------------------


def test_explained_half_term() -> None:
    """Friday before half term: the text names the half term and the weekends either side."""
    got = explain_deadline(at("2026-10-23T18:00:00+01:00"), CALENDAR)
    assert got.deadline == at("2026-11-02T08:30:00+00:00")
    assert got.text == (
        "next school day is Monday 2 Nov 2026 at 08:30: after the school day had started on "
        f"Friday 23 Oct, weekend (24{TO}25 Oct), Autumn half term 2026 (26{TO}30 Oct), "
        f"weekend (31 Oct{TO}1 Nov)"
    )
    assert (
        SkippedDays(
            kind="closure",
            name="Autumn half term 2026",
            first_day=date(2026, 10, 26),
            last_day=date(2026, 10, 30),
        )
        in got.skipped
    )
    assert not got.conservative


def test_explained_weekend() -> None:
    """A Saturday incident is due Monday, the weekend skipped (the incident day included)."""
    got = explain_deadline(at("2026-11-21T12:00:00+00:00"), CALENDAR)
    assert got.text == f"next school day is Monday 23 Nov 2026 at 08:30: weekend (21{TO}22 Nov)"
    assert [s.kind for s in got.skipped] == ["weekend"]


def test_explained_bank_holiday() -> None:
    """A bank holiday the YAML does not list is named from the maintained source (1971 Act)."""
    got = explain_deadline(at("2027-05-02T12:00:00+01:00"), CALENDAR)
    assert got.text == (
        "next school day is Tuesday 4 May 2027 at 08:30: weekend (2 May), "
        "bank holiday May Day (3 May)"
    )
    christmas = explain_deadline(at("2026-12-24T18:00:00+00:00"), WEEKDAYS)
    assert "bank holiday Christmas Day (25 Dec)" in christmas.text


def test_explained_same_morning() -> None:
    """s49A "before the start of the next school day": an early-morning incident on a school day
    is due at that morning's start."""
    got = explain_deadline(at("2026-11-24T07:10:00+00:00"), CALENDAR)
    assert got.text == (
        "next school day is Tuesday 24 Nov 2026 at 08:30: the same day, before the school day "
        "starts"
    )
    assert got.skipped == ()


def test_explained_after_the_school_day_had_started() -> None:
    """An incident during the school day is due the next morning, and the text says why."""
    got = explain_deadline(at("2026-11-24T10:00:00+00:00"), CALENDAR)
    assert got.text == (
        "next school day is Wednesday 25 Nov 2026 at 08:30: after the school day had started on "
        "Tuesday 24 Nov"
    )


def test_explained_school_holidays_and_a_school_of_its_own_time() -> None:
    """The Christmas holidays are one run named after the term they follow; a school with its
    own start time gets that time in the text."""
    calendar = CALENDAR.model_copy(
        update={"school_day_starts": {"kelder-brook-primary": time(8, 50)}}
    )
    got = explain_deadline(at("2026-12-18T17:00:00+00:00"), calendar, school="kelder-brook-primary")
    assert got.text == (
        "next school day is Tuesday 5 Jan 2027 at 08:50: after the school day had started on "
        f"Friday 18 Dec, school holidays after Autumn 2026 (19 Dec 2026{TO}4 Jan 2027)"
    )


def test_explained_beyond_the_calendar() -> None:
    """Beyond the term dates the text says the conservative rule set the deadline, and names the
    bank holiday it skipped."""
    got = explain_deadline(at("2027-08-27T18:00:00+01:00"), CALENDAR)
    assert got.conservative
    assert got.text == (
        "next school day is Tuesday 31 Aug 2027 at 08:30: after the school day had started on "
        f"Friday 27 Aug, weekend (28{TO}29 Aug), bank holiday Late Summer Bank Holiday (30 Aug); "
        "beyond the configured term dates (the last term ends 21 Jul 2027); "
        "conservative rule: next weekday that is not a bank holiday"
    )
    early = explain_deadline(at("2025-08-29T10:00:00+01:00"), CALENDAR)
    assert "before the configured term dates (the first term starts 3 Sep 2025)" in early.text
    bare = explain_deadline(at("2026-11-24T10:00:00+00:00"), WEEKDAYS)
    assert bare.text.endswith(
        "no term dates are configured; conservative rule: next weekday that is not a bank holiday"
    )


def test_explained_deadline_agrees_with_next_school_day_start() -> None:
    """explain_deadline's deadline is next_school_day_start's, for a year of evening incidents."""
    calendar = SchoolCalendar(
        terms=(Term(name="Autumn", first_day=date(2026, 9, 2), last_day=date(2026, 12, 18)),)
    )
    day = date(2026, 8, 1)
    for _ in range(366):
        after = datetime.combine(day, time(19), calendar.zone)
        assert explain_deadline(after, calendar).deadline == next_school_day_start(after, calendar)
        day += timedelta(days=1)
