"""The school calendar the Operation Encompass deadline runs on: terms, closures, bank holidays.

Police must notify a school before the start of the next school day (s49A Domestic Abuse Act
2021), so the deadline depends on the local authority's term dates, its half terms and INSET
days, the bank holidays, and when each school's day starts. Terms and closures are local
configuration, kept per authority in ``<federation_dir>/school-calendar.yaml`` and validated
here. Bank holidays are not configured: they come from the maintained ``holidays`` package
(England and Wales, Banking and Financial Dealings Act 1971 and the proclamations under it),
so a bank holiday the YAML forgot is still no school day. Everything here is pure.

A day is a school day when it is a weekday, not a bank holiday in England and Wales, inside a
term and not inside a closure. Outside the span the term dates cover (before the first term,
after the last) nothing local is known, so the documented conservative rule applies: the next
weekday that is not a bank holiday. The deadline is then earlier than the real one, never
later, and is never silently taken for a known school day: ``covers`` says whether the term
dates reach a day, ``days_left`` how long until they run out (the broker warns before then),
and ``explain_deadline`` says in words which days were skipped and why. ``WEEKDAYS``, the
calendar with no terms at all, is the conservative rule everywhere.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import date, datetime, time, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from holidays.countries.united_kingdom import UnitedKingdom
from pydantic import Field, ValidationError, field_validator, model_validator

from schemas.decode import field_problems
from schemas.errors import SchemaError
from schemas.fields import AgencyId, Frozen, ShortText, inconsistent

__all__ = [
    "BANK_HOLIDAYS_SOURCE",
    "CALENDAR_FILE",
    "CONSERVATIVE_RULE",
    "WEEKDAYS",
    "Closure",
    "DeadlineExplanation",
    "SchoolCalendar",
    "SkippedDays",
    "Term",
    "bank_holiday",
    "explain_deadline",
    "load_calendar",
    "next_school_day_start",
]

#: The calendar's file name inside the federation folder.
CALENDAR_FILE: Final = "school-calendar.yaml"

#: Where bank holidays come from, for headers, docs and ``cairn policy check``.
BANK_HOLIDAYS_SOURCE: Final = (
    "England and Wales bank holidays from the 'holidays' package "
    "(Banking and Financial Dealings Act 1971)"
)

#: The rule beyond the configured term dates, in words.
CONSERVATIVE_RULE: Final = "next weekday that is not a bank holiday"

# A school year has no gap between school days longer than the summer holiday; a search that
# runs a year finds one, or the calendar is broken.
_SEARCH_LIMIT = timedelta(days=366)
_ONE_DAY = timedelta(days=1)

# The package's England subdivision; Wales has the same list (both add only Easter Monday and
# the late summer bank holiday to the common ones), which a unit test checks year by year.
_SUBDIVISION: Final = "ENG"

_WEEKDAY_NAMES: Final = (
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
)
_MONTH_NAMES: Final = (
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"
)  # fmt: skip

_TO: Final = "\N{EN DASH}"  # the typographic range sign, spelt out for the linter

SkipKind = Literal["school_day_started", "school_holidays", "closure", "weekend", "bank_holiday"]


@functools.lru_cache(maxsize=64)
def _bank_holidays_in(year: int) -> Mapping[date, str]:
    # language is explicit: otherwise the package reads the process locale for the names.
    table = UnitedKingdom(  # type: ignore[no-untyped-call]  # its __init__ takes bare **kwargs
        subdiv=_SUBDIVISION, years=year, language="en_GB"
    )
    return MappingProxyType(dict(table))


def bank_holiday(day: date) -> str | None:
    """The name of the England and Wales bank holiday on ``day``, or None if it is not one.

    Substitute days carry the package's "(observed)" suffix, e.g. "Boxing Day (observed)".
    """
    return _bank_holidays_in(day.year).get(day)


class Term(Frozen):
    """A term: the school days lie between its first and last day, both included."""

    name: ShortText
    first_day: date
    last_day: date

    @model_validator(mode="after")
    def _ordered(self) -> Term:
        if self.last_day < self.first_day:
            raise inconsistent("last_day", "a term ends on or after its first day")
        return self


class Closure(Frozen):
    """Days inside a term when the authority's schools are shut: half terms, INSET days.

    Bank holidays need no closure: they are never school days (``bank_holiday``).
    """

    name: ShortText
    first_day: date
    last_day: date

    @model_validator(mode="after")
    def _ordered(self) -> Closure:
        if self.last_day < self.first_day:
            raise inconsistent("last_day", "a closure ends on or after its first day")
        return self


class SchoolCalendar(Frozen):
    """One local authority's school calendar, in its local time zone."""

    authority: ShortText | None = Field(
        default=None, description="The local authority whose term dates these are"
    )
    timezone: ShortText = "Europe/London"
    school_day_start: time = Field(
        default=time(8, 30), description="When the school day starts, local time"
    )
    school_day_starts: Mapping[AgencyId, time] = Field(
        default_factory=dict, description="Schools whose day starts at another time"
    )
    terms: tuple[Term, ...] = ()
    closures: tuple[Closure, ...] = ()

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("not an IANA time zone name, e.g. 'Europe/London'") from None
        return value

    @model_validator(mode="after")
    def _terms_in_order(self) -> SchoolCalendar:
        for i, (a, b) in enumerate(zip(self.terms, self.terms[1:], strict=False)):
            if b.first_day <= a.last_day:
                raise inconsistent(
                    f"terms.{i + 1}.first_day", "terms are listed in order and do not overlap"
                )
        return self

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def first_day(self) -> date | None:
        """The first day the term dates cover (None without terms)."""
        return self.terms[0].first_day if self.terms else None

    @property
    def last_day(self) -> date | None:
        """The last day the term dates cover: after it the conservative rule applies."""
        return self.terms[-1].last_day if self.terms else None

    def covers(self, day: date) -> bool:
        """Whether the term dates say anything about ``day``."""
        return bool(self.terms) and self.terms[0].first_day <= day <= self.terms[-1].last_day

    def days_left(self, today: date) -> int | None:
        """Days from ``today`` to the last covered day: 0 on it, negative after, None if no terms.

        The broker warns when this is at most ``calendar_warn_days`` (``cairn_school_calendar_
        days_left``), and ``cairn policy check`` reports it.
        """
        last = self.last_day
        return None if last is None else (last - today).days

    def runs_out_soon(self, today: date, warn_days: int = 60) -> bool:
        """Whether the term dates end within ``warn_days`` days of ``today`` (not yet ended)."""
        left = self.days_left(today)
        return left is not None and 0 <= left <= warn_days

    def has_ended(self, today: date) -> bool:
        """Whether ``today`` is past the last covered day (the conservative rule is in force)."""
        left = self.days_left(today)
        return left is not None and left < 0

    def horizon_warning(self, today: date, warn_days: int = 60) -> str | None:
        """A sentence for the operator when the term dates end within ``warn_days`` days of
        ``today``, have ended, or are missing; None while they reach further."""
        left, last = self.days_left(today), self.last_day
        rule = f"deadlines follow the conservative rule ({CONSERVATIVE_RULE})"
        if left is None or last is None:
            return f"no term dates: {rule} every day"
        if left < 0:
            return (
                f"the term dates ended on {_short(last, True)} ({-left} day(s) ago): {rule} "
                "until the next school year's terms are added"
            )
        if left <= warn_days:
            return (
                f"the term dates end on {_short(last, True)}, in {left} day(s): add the next "
                f"school year's terms before then, or after it {rule}"
            )
        return None

    def is_school_day(self, day: date) -> bool:
        """A weekday, not a bank holiday, in a term and not closed; beyond the term dates, any
        weekday that is not a bank holiday (the conservative rule)."""
        return self._closed_because(day) is None

    def start_time(self, school: str | None = None) -> time:
        """When ``school``'s day starts (the area's time unless the school has its own)."""
        if school is not None and school in self.school_day_starts:
            return self.school_day_starts[school]
        return self.school_day_start

    def _closed_because(self, day: date) -> tuple[SkipKind, str] | None:
        """Why ``day`` is not a school day (kind, words), or None if it is one.

        Holidays between terms and closures name the whole run, weekends included, so the
        explanation reads "Autumn half term 2026 (26-30 Oct)" rather than day by day.
        """
        if self.covers(day):
            term = next((t for t in self.terms if t.first_day <= day <= t.last_day), None)
            if term is None:
                before = max((t for t in self.terms if t.last_day < day), key=lambda t: t.last_day)
                return "school_holidays", f"school holidays after {before.name}"
            closure = next((c for c in self.closures if c.first_day <= day <= c.last_day), None)
            if closure is not None:
                return "closure", closure.name
        if day.weekday() >= 5:
            return "weekend", "weekend"
        name = bank_holiday(day)
        if name is not None:
            return "bank_holiday", f"bank holiday {name}"
        return None


#: No term dates: every weekday that is not a bank holiday, from 08:30 Europe/London.
WEEKDAYS: Final = SchoolCalendar()


def next_school_day_start(
    after: datetime, calendar: SchoolCalendar = WEEKDAYS, *, school: str | None = None
) -> datetime:
    """The start of the first school day that begins after ``after``, in the calendar's zone.

    An incident before the school day starts on a school day is due that same morning; one
    during or after it is due the next school day. ``school`` picks that school's start time.
    """
    if after.tzinfo is None:
        raise TypeError("after must be timezone-aware")
    zone = calendar.zone
    local = after.astimezone(zone)
    start = calendar.start_time(school)
    day = local.date()
    while day - local.date() <= _SEARCH_LIMIT:
        if calendar.is_school_day(day):
            # combine() with a ZoneInfo gives the right offset on either side of a clock change.
            candidate = datetime.combine(day, start, tzinfo=zone)
            if candidate > local:
                return candidate
        day += _ONE_DAY
    raise RuntimeError("the school calendar has no school day within a year")


class SkippedDays(Frozen):
    """A run of days between the incident and the deadline that were not school days, and why."""

    kind: SkipKind
    name: str  # e.g. "weekend", "Autumn half term 2026", "bank holiday Christmas Day"
    first_day: date
    last_day: date


class DeadlineExplanation(Frozen):
    """The Encompass deadline and, in words, why it falls when it does."""

    deadline: datetime  # in the calendar's zone
    skipped: tuple[SkippedDays, ...]  # in date order
    conservative: bool  # the deadline lies beyond the term dates: the conservative rule gave it
    text: str


def explain_deadline(
    after: datetime, calendar: SchoolCalendar = WEEKDAYS, *, school: str | None = None
) -> DeadlineExplanation:
    """``next_school_day_start`` with its reason: which days were skipped, and why.

    The text reads, for example (ranges take an en dash)::

        next school day is Monday 2 Nov 2026 at 08:30: after the school day had started on
        Friday 23 Oct, weekend (24-25 Oct), Autumn half term 2026 (26-30 Oct), weekend (31 Oct-1
        Nov)

    and ends with the conservative rule when the deadline lies beyond the configured term
    dates. It holds dates and the calendar's names only, never anything about the incident.
    ``school`` picks that school's start time, as in ``next_school_day_start``.
    """
    deadline = next_school_day_start(after, calendar, school=school)
    local = after.astimezone(calendar.zone)
    runs: list[SkippedDays] = []
    day = local.date()
    if day < deadline.date() and calendar.is_school_day(day):
        # A school day whose start had passed when the incident happened.
        runs.append(
            SkippedDays(
                kind="school_day_started", name="school day started", first_day=day, last_day=day
            )
        )
        day += _ONE_DAY
    while day < deadline.date():
        why = calendar._closed_because(day)
        if why is None:  # next_school_day_start would have stopped here
            raise RuntimeError(f"{day} is a school day before the deadline")
        kind, name = why
        last = runs[-1] if runs else None
        if last is not None and (last.kind, last.name) == why and last.last_day == day - _ONE_DAY:
            runs[-1] = last.model_copy(update={"last_day": day})
        else:
            runs.append(SkippedDays(kind=kind, name=name, first_day=day, last_day=day))
        day += _ONE_DAY
    conservative = not calendar.covers(deadline.date())
    return DeadlineExplanation(
        deadline=deadline,
        skipped=tuple(runs),
        conservative=conservative,
        text=_deadline_text(deadline, tuple(runs), calendar, conservative),
    )


def _deadline_text(
    deadline: datetime,
    runs: tuple[SkippedDays, ...],
    calendar: SchoolCalendar,
    conservative: bool,
) -> str:
    head = f"next school day is {_long_date(deadline.date())} at {deadline:%H:%M}"
    items = []
    for run in runs:
        if run.kind == "school_day_started":
            items.append(
                f"after the school day had started on {_long_date(run.first_day, year=False)}"
            )
        else:
            items.append(f"{run.name} ({_span(run.first_day, run.last_day)})")
    if not runs:
        items.append("the same day, before the school day starts")
    parts = [", ".join(items)]
    if conservative:
        first, last = calendar.first_day, calendar.last_day
        if first is None or last is None:
            where = "no term dates are configured"
        elif deadline.date() > last:
            where = f"beyond the configured term dates (the last term ends {_short(last, True)})"
        else:
            where = (
                f"before the configured term dates (the first term starts {_short(first, True)})"
            )
        parts.append(f"{where}; conservative rule: {CONSERVATIVE_RULE}")
    return f"{head}: {'; '.join(parts)}"


def _short(day: date, year: bool = False) -> str:
    text = f"{day.day} {_MONTH_NAMES[day.month - 1]}"
    return f"{text} {day.year}" if year else text


def _long_date(day: date, *, year: bool = True) -> str:
    return f"{_WEEKDAY_NAMES[day.weekday()]} {_short(day, year)}"


def _span(first: date, last: date) -> str:
    """'25 Dec', '26-30 Oct', '31 Oct-1 Nov', '19 Dec 2026-4 Jan 2027', with an en dash."""
    if first == last:
        return _short(first)
    if first.year != last.year:
        return f"{_short(first, True)}{_TO}{_short(last, True)}"
    if first.month == last.month:
        return f"{first.day}{_TO}{_short(last)}"
    return f"{_short(first)}{_TO}{_short(last)}"


def load_calendar(path: Path) -> SchoolCalendar:
    """Read and validate a school calendar; SchemaError names the file and each bad field."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SchemaError(
            f"no school calendar at {path}; the Operation Encompass deadline needs the term dates"
        ) from None
    except yaml.YAMLError as exc:
        raise SchemaError(f"{path} is not valid YAML: {exc}") from None
    try:
        return SchoolCalendar.model_validate(raw)
    except ValidationError as exc:
        raise SchemaError(f"{path} is not a valid school calendar", field_problems(exc)) from None
