"""The school calendar the Operation Encompass deadline runs on: terms, closures, start times.

Police must notify a school before the start of the next school day (s49A Domestic Abuse Act
2021), so the deadline depends on the area's term dates, its half terms, INSET days and bank
holidays, and on when each school's day starts. These are configuration, kept in
``<federation_dir>/school-calendar.yaml`` and validated here; ``next_school_day_start`` is pure.

A day is a school day when it is a weekday inside a term and not inside a closure. Outside the
span the calendar covers (before its first term, after its last) nothing is known, so every
weekday counts: the deadline is then conservative, earlier than the real one, never later.
``WEEKDAYS``, the calendar with no terms at all, is that conservative rule everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from schemas.decode import field_problems
from schemas.errors import SchemaError
from schemas.fields import AgencyId, Frozen, ShortText, inconsistent

__all__ = [
    "CALENDAR_FILE",
    "WEEKDAYS",
    "Closure",
    "SchoolCalendar",
    "Term",
    "load_calendar",
    "next_school_day_start",
]

#: The calendar's file name inside the federation folder.
CALENDAR_FILE: Final = "school-calendar.yaml"

# A school year has no gap between school days longer than the summer holiday; a search that
# runs a year finds one, or the calendar is broken.
_SEARCH_LIMIT = timedelta(days=366)


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
    """Days inside a term when schools are shut: half term, INSET days, bank holidays."""

    name: ShortText
    first_day: date
    last_day: date

    @model_validator(mode="after")
    def _ordered(self) -> Closure:
        if self.last_day < self.first_day:
            raise inconsistent("last_day", "a closure ends on or after its first day")
        return self


class SchoolCalendar(Frozen):
    """The area's school calendar, in its local time zone."""

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

    def covers(self, day: date) -> bool:
        """Whether the term dates say anything about ``day``."""
        return bool(self.terms) and self.terms[0].first_day <= day <= self.terms[-1].last_day

    def is_school_day(self, day: date) -> bool:
        """A weekday in a term and not closed; any weekday where the calendar says nothing."""
        if day.weekday() >= 5:
            return False
        if not self.covers(day):
            return True
        in_term = any(t.first_day <= day <= t.last_day for t in self.terms)
        closed = any(c.first_day <= day <= c.last_day for c in self.closures)
        return in_term and not closed

    def start_time(self, school: str | None = None) -> time:
        """When ``school``'s day starts (the area's time unless the school has its own)."""
        if school is not None and school in self.school_day_starts:
            return self.school_day_starts[school]
        return self.school_day_start


#: No term dates: every weekday is a school day starting 08:30 Europe/London (conservative).
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
        day += timedelta(days=1)
    raise RuntimeError("the school calendar has no school day within a year")


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
