"""The ``overdue`` audit event says whether the disclosure was acknowledged late or not at
all; the field is optional, so events written before it keep their canonical bytes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from schemas.audit import (
    OVERDUE_ACKNOWLEDGED_LATE,
    OVERDUE_NOT_ACKNOWLEDGED,
    AuditEvent,
    overdue,
)
from schemas.referral import Purpose

DUE = datetime(2026, 11, 26, 8, 30, tzinfo=UTC)
MESSAGE = uuid.UUID("00000000-0000-4000-8000-000000000042")


def test_never_and_late_are_told_apart_by_reason_and_acknowledged_at() -> None:
    never = overdue(MESSAGE, recipient="kelder-marac", due_at=DUE, at=DUE)
    late = overdue(
        MESSAGE,
        recipient="kelder-marac",
        due_at=DUE,
        at=DUE + timedelta(hours=2),
        purpose=Purpose.MARAC,
        acknowledged_at=DUE + timedelta(hours=2),
    )
    assert (never.reasons, never.acknowledged_at) == ((OVERDUE_NOT_ACKNOWLEDGED,), None)
    assert late.reasons == (OVERDUE_ACKNOWLEDGED_LATE,)
    assert late.jsonable()["acknowledged_at"] == "2026-11-26T10:30:00Z"
    assert "acknowledged_at" not in never.jsonable()
    assert AuditEvent.from_canonical(late.canonical()) == late


def test_an_overdue_event_written_before_the_field_keeps_its_bytes() -> None:
    """The form every overdue event had before acknowledged_at: still valid, same bytes."""
    old = (
        '{"at":"2026-11-26T08:30:00Z","due_at":"2026-11-26T08:30:00Z",'
        '"event_id":"00000000-0000-4000-8000-000000000001","format":"cairn-audit/1",'
        f'"message_id":"{MESSAGE}","reasons":["not-acknowledged"],'
        '"recipient":"kelder-marac","type":"overdue"}'
    ).encode()
    event = AuditEvent.from_canonical(old)
    assert event.acknowledged_at is None
    assert event.canonical() == old


def test_acknowledged_at_belongs_to_overdue_events_only() -> None:
    data = {
        "event_id": str(MESSAGE),
        "type": "key_rotated",
        "at": "2026-11-26T08:30:00Z",
        "agency": "kelder-marac",
        "kids": ["A" * 43],
        "acknowledged_at": "2026-11-26T08:30:00Z",
    }
    with pytest.raises(ValidationError, match="has no acknowledged_at"):
        AuditEvent.model_validate(data)
