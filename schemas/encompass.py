"""Operation Encompass: the police notification to a child's school after a domestic-abuse incident.

Under s49A of the Domestic Abuse Act 2021, when police have reasonable grounds to believe that a
child (a person under 18) who is a registered pupil at a school, nursery classes included, may be
a victim of domestic abuse (s3: the child sees, hears or experiences the effects of the abuse),
they notify the school's designated safeguarding lead before the start of the next school day,
whether or not officers attended. A child on no school roll (home-educated or off roll) is not
covered by s49A, which names schools: police notify children's social care instead, on the
safeguarding basis (the agreement names the basis per recipient role). ``CHILD_AGE_UNDER`` is
the statutory age, the default of the Encompass agreement's terms.

The content is fixed by statute, so the notification is its own message rather than a redacted
referral: ``EncompassContent`` has exactly the statutory fields and the model forbids any other,
which makes "statutory content only" a property of the type that a test can compare
(``STATUTORY_CONTENT``) instead of a promise about later redaction. The header
carries routing metadata only: ids, agencies, times, no personal data.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Annotated, Final, Literal
from zoneinfo import ZoneInfo

from pydantic import Field, StringConstraints

from schemas.fields import (
    AgencyId,
    Day,
    Flag,
    Frozen,
    LongText,
    MessageId,
    Moment,
    ShortText,
    Yes,
)
from schemas.referral import SCHEMA_VERSION, Child, Classification, Incident, Purpose

__all__ = [
    "CHILD_AGE_UNDER",
    "SCHOOL_DAY_START",
    "STATUTORY_CONTENT",
    "EncompassContent",
    "EncompassHeader",
    "EncompassNotification",
    "age_on",
    "encompass_content",
    "is_child",
    "next_school_day_start",
]

#: A child is a person under this age (DAA 2021 s3, which s49A relies on): the statutory default
#: of the Encompass agreement's ``child_age_under``, which may never exceed it.
CHILD_AGE_UNDER: Final = 18
#: When the school day is taken to start, local time; notifications are due before it.
SCHOOL_DAY_START: Final = time(8, 30)
_LONDON = ZoneInfo("Europe/London")

#: The statutory content of a notification, and nothing more: the test of the guarantee.
STATUTORY_CONTENT: Final = frozenset(
    {
        "child_given_name",
        "child_family_name",
        "child_date_of_birth",
        "police_reference",
        "occurred_at",
        "location",
        "child_present",
        "child_whereabouts",
        "voice_of_child",
        "circumstances",
        "do_not_approach_parents",
    }
)

BriefText = Annotated[str, StringConstraints(min_length=1, max_length=1000)]


class EncompassHeader(Frozen):
    """Routing metadata: who notifies whom, when it was made and when it is due."""

    notification_id: MessageId
    schema_version: Literal["1.0"] = SCHEMA_VERSION
    purpose: Literal[Purpose.ENCOMPASS] = Purpose.ENCOMPASS
    sender_agency: AgencyId
    sender_officer: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    recipient: AgencyId = Field(
        description="The school (its designated safeguarding lead), or children's social care "
        "for a child on no school roll (home-educated or off roll)"
    )
    classification: Classification = Classification.OFFICIAL_SENSITIVE
    created_at: Moment
    notify_by: Moment = Field(description="The start of the next school day")


class EncompassContent(Frozen):
    """Exactly the statutory content of an Operation Encompass notification."""

    child_given_name: ShortText
    child_family_name: ShortText
    child_date_of_birth: Day
    police_reference: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    occurred_at: Moment = Field(description="Date and time of the incident")
    location: ShortText
    child_present: Flag | None = Field(description="Whether the child was present; null: not known")
    child_whereabouts: ShortText | None = Field(
        default=None, description="Where the child was during the incident"
    )
    voice_of_child: LongText | None = None
    circumstances: BriefText = Field(
        description="Brief circumstances, written by the police for the school"
    )
    do_not_approach_parents: Yes = Field(
        default=True,
        description="The school must not approach the parents about the notification",
    )


class EncompassNotification(Frozen):
    """One notification about one child to one school or children's social care."""

    header: EncompassHeader
    content: EncompassContent


def age_on(date_of_birth: date, day: date) -> int:
    """Age in whole years on ``day`` (a 29 February birthday counts from 1 March)."""
    years = day.year - date_of_birth.year
    return years - ((day.month, day.day) < (date_of_birth.month, date_of_birth.day))


def is_child(date_of_birth: date, day: date, *, under: int = CHILD_AGE_UNDER) -> bool:
    """Whether someone born on ``date_of_birth`` was a child on ``day``: born, and under ``under``.

    ``day`` is the incident date: the duty concerns who was a child when the abuse happened.
    """
    return date_of_birth <= day and age_on(date_of_birth, day) < under


def next_school_day_start(after: datetime) -> datetime:
    """The first weekday 08:30 (Europe/London) after ``after``.

    Term dates and bank holidays are not known here, so the deadline is conservative: it can be
    earlier than the real next school day, never later.
    """
    local = after.astimezone(_LONDON)
    day = local.date()
    while True:
        candidate = datetime.combine(day, SCHOOL_DAY_START, tzinfo=_LONDON)
        if candidate.weekday() < 5 and candidate > local:
            return candidate
        day += timedelta(days=1)


def encompass_content(
    child: Child, incident: Incident, *, police_reference: str, circumstances: str
) -> EncompassContent:
    """The statutory content for ``child``, taken from the child and incident records."""
    return EncompassContent(
        child_given_name=child.given_name,
        child_family_name=child.family_name,
        child_date_of_birth=child.date_of_birth,
        police_reference=police_reference,
        occurred_at=incident.occurred_at,
        location=incident.location,
        child_present=child.present_at_incident,
        child_whereabouts=child.where,
        voice_of_child=child.voice_of_child,
        circumstances=circumstances,
    )
