"""No personal data in any audit event; yet every disclosure about a person is found by them.

The events are built from every sample in deploy/federation/samples, through the agencies' own
adapters (police export, NHS FHIR bundles, Cairn referrals, the Encompass notice). The scan
looks for every name, alias, date of birth, NHS number, address line, postcode and phone number
the samples hold (``tests.samples.all_personal_values``), case-insensitively, in the bytes of
every event of every type. The query side plays the IG officer: given a person's identifiers
as they might type them, it must return every disclosure about that person and nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from uuid import UUID

import pytest

from broker.audit.index import Query
from broker.audit.store import AuditLog
from schemas.audit import (
    AuditEvent,
    AuditEventType,
    acknowledged,
    agreement_changed,
    delivered,
    key_rotated,
    overdue,
)
from schemas.encompass import EncompassNotification
from schemas.pseudonyms import person_pseudonyms, subject_pseudonyms
from schemas.receipt import Acknowledgement, AcknowledgementStatus
from schemas.referral import Referral
from tests.samples import all_personal_values
from tests.unit.audit.conftest import NOW, SECRET, Message, events_for, recipients_of


def _message_uuid(message: Message) -> UUID:
    if isinstance(message, EncompassNotification):
        return message.header.notification_id
    return message.header.referral_id


def _message_id(message: Message) -> str:
    return str(_message_uuid(message))


def _every_event(messages: list[Message]) -> list[bytes]:
    out: list[bytes] = []
    for message in messages:
        out += events_for(message)
        message_id = _message_uuid(message)
        for recipient in recipients_of(message):
            out.append(delivered(message_id, recipient=recipient, at=NOW).canonical())
            out.append(
                acknowledged(
                    Acknowledgement(
                        referral_id=message_id,
                        agency=recipient,
                        status=AcknowledgementStatus.REJECTED,
                        reasons=("schema_version",),
                        acknowledged_at=NOW,
                    )
                ).canonical()
            )
            out.append(
                overdue(
                    message_id, recipient=recipient, due_at=NOW, at=NOW + timedelta(days=1)
                ).canonical()
            )
    out.append(key_rotated("kelder-idva", ["A" * 43], at=NOW).canonical())
    out.append(agreement_changed("kelder-marac-isa", b"agreement: v2", at=NOW).canonical())
    return out


def test_no_audit_event_holds_personal_data(messages: list[Message]) -> None:
    """No name, birth date, NHS number, address or phone number of any sample is in any event."""
    personal = {v.casefold() for v in all_personal_values()}
    assert len(personal) > 40  # the scan has something to look for
    events = _every_event(messages)
    assert len(events) > 100
    leaks = [
        (value, event[:80])
        for event in events
        for value in personal
        if value in event.decode("utf-8").casefold()
    ]
    assert leaks == []


def test_every_event_is_made_of_codes_ids_times_and_pseudonyms(messages: list[Message]) -> None:
    """Every event parses as an AuditEvent: no field can carry free text."""
    for data in _every_event(messages):
        event = AuditEvent.from_canonical(data)
        assert event.canonical() == data


def _people(message: Message) -> list[dict[str, object]]:
    """Each person a message is about, with identifiers as an IG officer might type them."""
    if isinstance(message, EncompassNotification):
        c = message.content
        return [
            {
                "given_name": c.child_given_name.upper(),
                "family_name": c.child_family_name,
                "date_of_birth": c.child_date_of_birth,
            }
        ]
    assert isinstance(message, Referral)
    v = message.victim
    people: list[dict[str, object]] = [
        {
            "given_name": f"  {v.given_name.lower()} ",
            "family_name": v.family_name.upper(),
            "date_of_birth": v.date_of_birth,
        }
    ]
    if v.nhs_number:
        n = v.nhs_number
        people.append({"nhs_number": f"{n[:3]} {n[3:6]} {n[6:]}"})
    for alias in v.aliases:
        given, _, family = alias.partition(" ")
        people.append(
            {"given_name": given, "family_name": family, "date_of_birth": v.date_of_birth}
        )
    people += [
        {"given_name": c.given_name, "family_name": c.family_name, "date_of_birth": c.date_of_birth}
        for c in message.children
    ]
    p = message.perpetrator
    if p is not None and p.date_of_birth is not None:
        people.append(
            {
                "given_name": p.given_name,
                "family_name": p.family_name,
                "date_of_birth": p.date_of_birth,
            }
        )
    return people


@pytest.fixture
def full_log(tmp_path: Path, messages: list[Message]) -> Iterator[AuditLog]:
    with AuditLog.open(tmp_path / "audit") as log:
        offset = 0
        for message in messages:
            batch = events_for(message)
            log.append([(offset + i, e) for i, e in enumerate(batch)])
            offset += len(batch) + 1
        yield log


def test_subject_query_finds_every_disclosure_about_a_person(
    full_log: AuditLog, messages: list[Message]
) -> None:
    """By each person's identifiers, the query returns exactly the disclosures about them."""
    disclosed = [e for e in full_log.entries() if e.event.type is AuditEventType.DISCLOSED]
    checked = 0
    for message in messages:
        for person in _people(message):
            lookup = set(person_pseudonyms(SECRET, **person))  # type: ignore[arg-type]
            about = {
                _message_id(m) for m in messages if lookup & set(subject_pseudonyms(m, SECRET))
            }
            assert _message_id(message) in about
            want = [e.index for e in disclosed if str(e.event.message_id) in about]
            query = Query(subjects=tuple(lookup), types=(AuditEventType.DISCLOSED,))
            assert [e.index for e in full_log.query(query)] == want
            assert want
            checked += 1
    assert checked >= 30


def test_a_stranger_with_the_same_name_but_another_birth_date_is_not_found(
    full_log: AuditLog,
) -> None:
    """The name alone does not match: another date of birth finds nothing."""
    lookup = person_pseudonyms(
        SECRET, given_name="Testina", family_name="Fictitia", date_of_birth=date(1991, 4, 18)
    )
    assert full_log.query(Query(subjects=lookup)) == []
