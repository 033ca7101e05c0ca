"""Operation Encompass: statutory content only, who is a child, and the notification deadline."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from schemas.encompass import (
    CHILD_AGE_UNDER,
    STATUTORY_CONTENT,
    EncompassContent,
    EncompassHeader,
    EncompassNotification,
    age_on,
    is_child,
    next_school_day_start,
)

SAMPLE = (
    Path(__file__).resolve().parents[3] / "deploy/federation/samples/encompass-notification.json"
)


def test_content_fields_are_exactly_the_statutory_set() -> None:
    """The notification content has exactly the statutory fields, no more and no fewer."""
    assert set(EncompassContent.model_fields) == STATUTORY_CONTENT
    assert {
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
    } == STATUTORY_CONTENT


def test_header_holds_routing_metadata_only() -> None:
    """The header names ids, agencies and times only: no subject's personal data."""
    assert set(EncompassHeader.model_fields) == {
        "notification_id",
        "schema_version",
        "purpose",
        "sender_agency",
        "sender_officer",
        "recipient",
        "classification",
        "created_at",
        "notify_by",
    }
    assert set(EncompassNotification.model_fields) == {"header", "content"}


def test_extra_content_is_refused() -> None:
    """Anything beyond the statutory content, e.g. the victim's name, is refused."""
    data = json.loads(SAMPLE.read_text(encoding="utf-8"))
    EncompassNotification.model_validate(data)
    data["content"]["victim_name"] = "Testina Fictitia"
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        EncompassNotification.model_validate(data)


def test_do_not_approach_parents_cannot_be_false() -> None:
    """The do-not-approach-parents flag is always true."""
    data = json.loads(SAMPLE.read_text(encoding="utf-8"))
    data["content"]["do_not_approach_parents"] = False
    with pytest.raises(ValidationError):
        EncompassNotification.model_validate(data)


@pytest.mark.parametrize(
    ("dob", "expected"),
    [
        (date(2026, 11, 27), False),  # not yet born on the day
        (date(2026, 11, 26), True),  # born that day
        (date(2023, 11, 26), True),  # 3: a nursery-class age is no bar
        (date(2008, 11, 27), True),  # 17: turns 18 tomorrow
        (date(2008, 11, 26), False),  # 18 today
    ],
)
def test_a_child_is_a_person_under_18_on_the_day(dob: date, expected: bool) -> None:
    """DAA 2021 s3: a child is a person under 18; there is no lower age, only birth."""
    assert CHILD_AGE_UNDER == 18
    assert is_child(dob, date(2026, 11, 26)) is expected


def test_a_narrower_band_is_honoured() -> None:
    """is_child applies the band it is given (an agreement's child_age_under)."""
    assert is_child(date(2010, 1, 1), date(2026, 11, 26))
    assert not is_child(date(2010, 1, 1), date(2026, 11, 26), under=16)


def test_age_counts_whole_years() -> None:
    """Age is whole years; a 29 February birthday is reached on 1 March in other years."""
    assert age_on(date(2016, 2, 29), date(2026, 2, 28)) == 9
    assert age_on(date(2016, 2, 29), date(2026, 3, 1)) == 10


def test_deadline_is_next_weekday_school_start() -> None:
    """A Friday-night incident is due before Monday 08:30; a 02:00 Tuesday one by 08:30 Tuesday."""
    friday_night = datetime(2026, 11, 27, 22, 0, tzinfo=UTC)
    assert next_school_day_start(friday_night) == datetime(2026, 11, 30, 8, 30, tzinfo=UTC)
    early_tuesday = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)
    assert next_school_day_start(early_tuesday) == datetime(2026, 11, 24, 8, 30, tzinfo=UTC)
    summer = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)  # London is UTC+1 in June
    assert next_school_day_start(summer) == datetime(2026, 6, 2, 7, 30, tzinfo=UTC)
