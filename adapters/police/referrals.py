"""From a force's incident export to the referrals and notifications each incident calls for.

Pure: lines in, messages and row errors out; no network, no clock (``now`` is passed in). For each
good line:

1. the full referral is assembled (every field group the police hold);
2. MARAC referral to the MARAC coordinator when any MARAC criterion is met (``schemas.marac``,
   with the federation's escalation threshold);
3. IDVA referral to the IDVA service when the case is MARAC-eligible (high-risk victims are
   referred to an IDVA whatever their consent, under the recorded override) or the victim
   consented;
4. one Operation Encompass notification per linked child aged 4-17 on the incident date, to the
   child's school, or to children's social care when the child is home-educated, when police
   attended.

A bad line is reported with its line number, the field and the reason, and never stops the lines
after it. A problem that concerns one output only (a child's school is not a member) is reported
against that line while the line's other outputs still go.

Message ids are derived from the force, occurrence reference and purpose (and child), so
importing the same export twice yields the same ids and the broker's idempotency by id keeps
each referral single.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from adapters.police.export import ContactType, ExportPerson, IncidentRecord, PersonRole
from schemas.consent import (
    Art6Basis,
    Art9Condition,
    ConsentState,
    DpaCondition,
    StatutoryGateway,
)
from schemas.decode import field_problems
from schemas.encompass import (
    EncompassHeader,
    EncompassNotification,
    encompass_content,
    is_school_age,
    next_school_day_start,
)
from schemas.federation import AgencyRole, Federation
from schemas.marac import marac_eligibility
from schemas.referral import ContactKind, Priority, Purpose, Referral

__all__ = ["IMPORT_NAMESPACE", "Outgoing", "RowError", "import_export", "referral_from_record"]

#: Namespace of the uuid5 message ids this adapter derives (stable across releases).
IMPORT_NAMESPACE = uuid.UUID("0b6a2f1e-3d8c-5b7a-9c4e-2f1d0a6b8e53")

_CONTACT_KINDS = {
    ContactType.MOBILE: ContactKind.PHONE,
    ContactType.LANDLINE: ContactKind.PHONE,
    ContactType.TEXT: ContactKind.SMS,
    ContactType.EMAIL: ContactKind.EMAIL,
    ContactType.POSTAL: ContactKind.POST,
    ContactType.THIRD_PARTY: ContactKind.VIA_THIRD_PARTY,
}

# Police sharing with partners for safeguarding is processing for a non-law-enforcement purpose:
# UK GDPR public task, substantial public interest under DPA 2018 Sch 1 para 18, with the Crime
# and Disorder Act s115 power as the gateway. The override relies on the same paragraph, which
# permits processing without consent when consent cannot be given, cannot reasonably be sought,
# or seeking it would prejudice protection.
_POLICE_BASIS: dict[str, Any] = {
    "art6_basis": Art6Basis.PUBLIC_TASK,
    "art9_condition": Art9Condition.SUBSTANTIAL_PUBLIC_INTEREST,
    "dpa_condition": DpaCondition.SCH1_PARA18_SAFEGUARDING,
    "statutory_gateway": StatutoryGateway.CDA_1998_S115,
}


@dataclass(frozen=True)
class RowError:
    """One problem with one line of the export: 1-based line number, field path, reason."""

    row: int
    field: str
    reason: str


@dataclass(frozen=True)
class Outgoing:
    """A message the import produced, with the line it came from."""

    row: int
    message: Referral | EncompassNotification

    @property
    def message_id(self) -> uuid.UUID:
        if isinstance(self.message, Referral):
            return self.message.header.referral_id
        return self.message.header.notification_id

    @property
    def sender(self) -> str:
        """The sending force's agency id."""
        return self.message.header.sender_agency

    @property
    def purpose(self) -> Purpose:
        if isinstance(self.message, Referral):
            return self.message.header.purpose
        return self.message.header.purpose

    @property
    def recipients(self) -> tuple[str, ...]:
        if isinstance(self.message, Referral):
            return self.message.header.recipients
        return (self.message.header.recipient,)


class _RowProblems(Exception):
    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__(problems)
        self.problems = problems


def import_export(
    lines: Iterable[str], federation: Federation, now: datetime
) -> tuple[list[Outgoing], list[RowError]]:
    """Everything the export's incidents call for, and every problem, each with its line number.

    Blank lines are skipped (but counted, so line numbers match the file).
    """
    if now.tzinfo is None:
        raise TypeError("now must be timezone-aware")
    produced: list[Outgoing] = []
    errors: list[RowError] = []
    for row, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = _parse(line)
            outputs, problems = _messages(record, federation, now)
        except _RowProblems as exc:
            errors.extend(RowError(row, f, r) for f, r in exc.problems)
            continue
        produced.extend(Outgoing(row, m) for m in outputs)
        errors.extend(RowError(row, f, r) for f, r in problems)
    return produced, errors


def _parse(line: str) -> IncidentRecord:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        problem = f"not valid JSON: {exc.msg} at character {exc.pos + 1}"
        raise _RowProblems([("(line)", problem)]) from None
    if not isinstance(data, dict):
        raise _RowProblems([("(line)", "each line must be one JSON object")])
    try:
        return IncidentRecord.model_validate(data)
    except ValidationError as exc:
        raise _RowProblems([(p.field, p.problem) for p in field_problems(exc)]) from None


def _messages(
    record: IncidentRecord, federation: Federation, now: datetime
) -> tuple[list[Referral | EncompassNotification], list[tuple[str, str]]]:
    force = federation.get(record.force)
    if force is None or force.role is not AgencyRole.POLICE:
        raise _RowProblems([("force", "not a police force of this federation")])
    base = referral_from_record(record, now)
    out: list[Referral | EncompassNotification] = []
    problems: list[tuple[str, str]] = []

    eligibility = marac_eligibility(
        base.risk, escalation_threshold=federation.marac_escalation_threshold
    )
    if eligibility.eligible:
        marac = _one_of(federation, AgencyRole.MARAC_COORDINATOR)
        if marac is None:
            problems.append(("force", "the federation has no MARAC coordinator to refer to"))
        else:
            out.append(_addressed(base, record, Purpose.MARAC, marac, Priority.URGENT))
    consented = base.consent is not None and base.consent.state is ConsentState.OBTAINED
    if eligibility.eligible or consented:
        idva = _one_of(federation, AgencyRole.IDVA)
        if idva is None:
            problems.append(("force", "the federation has no IDVA service to refer to"))
        else:
            priority = Priority.URGENT if eligibility.eligible else Priority.ROUTINE
            out.append(_addressed(base, record, Purpose.IDVA, idva, priority))
    if record.attended:
        for person in record.persons:
            if person.role is PersonRole.CHILD:
                note, problem = _notification(record, person, base, federation, now)
                if note is not None:
                    out.append(note)
                if problem is not None:
                    problems.append(problem)
    return out, problems


def _one_of(federation: Federation, role: AgencyRole) -> str | None:
    agencies = federation.with_role(role)
    return agencies[0].id if agencies else None


def _message_id(record: IncidentRecord, *parts: str) -> uuid.UUID:
    name = "/".join((record.force, record.occurrence_reference, *parts))
    return uuid.uuid5(IMPORT_NAMESPACE, name)


def _addressed(
    base: Referral, record: IncidentRecord, purpose: Purpose, recipient: str, priority: Priority
) -> Referral:
    header = base.header.model_copy(
        update={
            "referral_id": _message_id(record, purpose.value),
            "recipients": (recipient,),
            "purpose": purpose,
            "priority": priority,
        }
    )
    # model_copy does not validate; the header fields replaced are all of the right type here.
    return base.model_copy(update={"header": header})


def _notification(
    record: IncidentRecord,
    person: ExportPerson,
    base: Referral,
    federation: Federation,
    now: datetime,
) -> tuple[EncompassNotification | None, tuple[str, str] | None]:
    index = record.index_of(person)
    child = base.children[[p for p in record.persons if p.role is PersonRole.CHILD].index(person)]
    if not is_school_age(child.date_of_birth, record.occurred_at.date()):
        return None, None
    if child.home_educated:
        recipient = _one_of(federation, AgencyRole.CHILDRENS_SOCIAL_CARE)
        if recipient is None:
            return None, (
                f"persons.{index}.home_educated",
                "the federation has no children's social care to notify",
            )
    else:
        school = federation.get(child.school_agency) if child.school_agency else None
        if school is None or school.role is not AgencyRole.SCHOOL:
            return None, (
                f"persons.{index}.school_agency",
                "a child of school age needs the federation id of their school "
                "(or home_educated true)",
            )
        recipient = school.id
    if record.circumstances_for_school is None:
        return None, (
            "circumstances_for_school",
            "required when a child of school age is linked (Operation Encompass)",
        )
    notification = EncompassNotification(
        header=EncompassHeader(
            notification_id=_message_id(record, Purpose.ENCOMPASS.value, person.person_id),
            sender_agency=record.force,
            sender_officer=record.officer,
            recipient=recipient,
            created_at=now,
            # The statutory deadline runs from the incident, not from when the export was
            # read: a notice made late is due at once and shows as overdue, never re-dated.
            notify_by=next_school_day_start(record.occurred_at),
        ),
        content=encompass_content(
            child,
            base.incident,
            police_reference=record.occurrence_reference,
            circumstances=record.circumstances_for_school,
        ),
    )
    return notification, None


# --- the full referral -----------------------------------------------------------------------


def referral_from_record(record: IncidentRecord, now: datetime) -> Referral:
    """The whole referral the record supports, addressed (provisionally) to nobody but MARAC.

    Raises ``_RowProblems`` with paths into the export line when the record's facts do not make
    a valid referral (e.g. the risk level disagrees with the DASH answers).
    """
    data = _referral_data(record, now)
    try:
        return Referral.model_validate(data)
    except ValidationError as exc:
        raise _RowProblems(
            [(_export_path(record, p.field), p.problem) for p in field_problems(exc)]
        ) from None


def _referral_data(record: IncidentRecord, now: datetime) -> dict[str, Any]:
    victim = record.victim
    suspect = record.suspect
    children = [p for p in record.persons if p.role is PersonRole.CHILD]
    address = record.address(victim.address_id)
    sharing = record.sharing
    data: dict[str, Any] = {
        "header": {
            "referral_id": _message_id(record, "base"),
            "sender_agency": record.force,
            "sender_officer": record.officer,
            "recipients": ("unaddressed",),
            "purpose": Purpose.MARAC,
            "police_reference": record.occurrence_reference,
            "created_at": now,
        },
        "victim": {
            "given_name": victim.given_name,
            "family_name": victim.family_name,
            "aliases": victim.aliases,
            "date_of_birth": victim.date_of_birth,
            "nhs_number": victim.nhs_number,
            "address": None
            if address is None
            else {"lines": address.lines, "postcode": address.postcode},
            "housing_tenure": victim.housing_tenure,
            "pregnancy": None
            if victim.pregnant is None
            else {"pregnant": victim.pregnant, "expected_due_date": victim.expected_due_date},
        },
        "children": [
            {
                "given_name": c.given_name,
                "family_name": c.family_name,
                "date_of_birth": c.date_of_birth,
                "school_agency": c.school_agency,
                "home_educated": c.home_educated,
                "present_at_incident": c.present_at_incident,
                "where": c.whereabouts,
                "voice_of_child": c.voice_of_child,
            }
            for c in children
        ],
        "incident": {
            "occurred_at": record.occurred_at,
            "location": record.location,
            "summary": record.summary,
            "injuries": record.injuries,
            "reported_to_police": True,
            "police_attended": record.attended,
        },
        "risk": {
            "level": record.risk_level,
            "dash": None
            if record.dash is None
            else {"question_set": record.dash.question_set, "answers": record.dash.answers},
            "professional_judgement": record.professional_judgement,
            "incidents_last_12_months": record.incidents_last_12_months,
        },
        "consent": {
            "state": sharing.victim_consent,
            **_POLICE_BASIS,
            "subject_informed": sharing.victim_informed,
            "not_informed_reason": sharing.not_informed_reason,
            "override": None
            if sharing.override is None
            else {
                **sharing.override.model_dump(),
                "legal_paragraph": DpaCondition.SCH1_PARA18_SAFEGUARDING,
            },
        },
    }
    if victim.contacts:
        data["safe_contact"] = {
            "routes": [
                {
                    "kind": _CONTACT_KINDS[c.type],
                    "detail": c.value,
                    "safe": c.safe_to_contact,
                    "safe_to_leave_message": c.safe_to_leave_message,
                    "best_times": c.best_times,
                }
                for c in victim.contacts
            ]
        }
    if suspect is not None:
        suspect_address = record.address(suspect.address_id)
        data["perpetrator"] = {
            "given_name": suspect.given_name,
            "family_name": suspect.family_name,
            "aliases": suspect.aliases,
            "date_of_birth": suspect.date_of_birth,
            "relationship": suspect.relationship_to_victim,
            "address": None
            if suspect_address is None
            else {"lines": suspect_address.lines, "postcode": suspect_address.postcode},
            "bail_and_orders": [
                {"kind": o.type, "conditions": o.conditions, "expires_on": o.expires_on}
                for o in suspect.bail_and_orders
            ],
            "criminal_history": suspect.criminal_history,
        }
    if record.actions_taken:
        data["agencies_actions"] = {
            "involved": [{"service": "Police", "agency": record.force}],
            "actions": [
                {"status": "taken", "description": a, "by_agency": record.force}
                for a in record.actions_taken
            ],
        }
    if record.victim_wishes is not None or record.safety_plan is not None:
        data["wishes"] = {"victim_wishes": record.victim_wishes, "safety_plan": record.safety_plan}
    return data


def _export_path(record: IncidentRecord, path: str) -> str:
    """Translate a path in the referral to the export field the value came from."""
    head, _, rest = path.partition(".")
    if head == "victim":
        return _join(f"persons.{record.index_of(record.victim)}", rest)
    if head == "perpetrator" and record.suspect is not None:
        return _join(f"persons.{record.index_of(record.suspect)}", rest)
    if head == "children":
        number, _, tail = rest.partition(".")
        children = [p for p in record.persons if p.role is PersonRole.CHILD]
        if number.isdigit() and int(number) < len(children):
            return _join(f"persons.{record.index_of(children[int(number)])}", tail)
    if head == "risk":
        field, _, tail = rest.partition(".")
        renamed = {"level": "risk_level", "dash_score": "dash"}.get(field, field)
        return _join(renamed, tail)
    if head == "incident":
        return rest or "occurred_at"
    if head == "consent":
        return _join("sharing", rest)
    return path


def _join(prefix: str, rest: str) -> str:
    return f"{prefix}.{rest}" if rest else prefix
