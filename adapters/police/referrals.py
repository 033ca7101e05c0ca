"""From a force's incident export to the referrals and notifications each incident calls for.

Pure: lines in, messages and row errors out; no network, no clock (``now`` is passed in). For each
good line:

1. the full referral is assembled (every field group the police hold);
2. MARAC referral to the MARAC coordinator when any MARAC criterion is met (``schemas.marac``,
   with the federation's escalation threshold);
3. IDVA referral to the IDVA service when the case is MARAC-eligible (high-risk victims are
   referred to an IDVA whatever their consent, under the recorded override) or the victim
   consented;
4. one Operation Encompass notification per linked child who was under 18 on the incident date
   (DAA 2021 s3) and may be a victim of the abuse in the officer's judgement (``may_be_victim``;
   not recorded counts as yes): to the school the child is a registered pupil at (s49A), or to
   children's social care when the child is on no school roll (home-educated or off roll; s49A
   names schools, so the safeguarding basis applies there). Whether officers attended does not
   matter, and neither does the adult victim's consent.

A bad line is reported with its line number, the field and the reason, and never stops the lines
after it. A problem that concerns some outputs only is reported against that line while the
line's other outputs still go: a child's school is not a member (that child's notice), or the
victim's consent record gives no basis for sharing, e.g. consent refused with no complete
override (the MARAC and IDVA referrals: the reason says so; the notices still go, since the
s49A duty does not depend on the adult's consent). Lines are read within the bounds of
``adapters.importing`` (UTF-8, at most ``MAX_LINE_BYTES``, nesting, integers, keys given once):
a line outside them is that line's problem like any other, and so is whatever a model raises
while the line's messages are built. No reason repeats a value of the line.

Importing the same export again makes the same messages, byte for byte, so that the broker
recognises each as one it has (``schemas.submission.submission_digest``), answers with its
original receipt and sends nothing again, and a line half-sent before (its MARAC and IDVA
referrals went, its Encompass notice did not) is completed by the next import. So every value
a message holds comes from the line: message ids are name-based UUIDs of the force, occurrence
reference and purpose (and child), and the created-at is the line's own ``recorded_at`` (else
``occurred_at``), never the time of the import. ``now`` only bounds the line's times: one
later than ``now`` (beyond the broker's default clock skew) is refused as that line's problem,
naming the field, since the broker would refuse its messages.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from pydantic import ValidationError

from adapters.importing import (
    MAX_LINE_BYTES,
    JsonRefused,
    decode_utf8,
    dotted,
    load_json,
    text_values,
    withhold,
)
from adapters.police.export import ContactType, ExportPerson, IncidentRecord, PersonRole
from schemas.consent import (
    Art6Basis,
    Art9Condition,
    ConsentState,
    DpaCondition,
    StatutoryGateway,
    role_code,
)
from schemas.decode import field_problems
from schemas.encompass import (
    EncompassHeader,
    EncompassNotification,
    age_on,
    encompass_content,
    is_child,
    next_school_day_start,
)
from schemas.federation import AgencyRole, Federation
from schemas.marac import marac_eligibility
from schemas.referral import Child, ContactKind, Incident, Priority, Purpose, Referral

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
# A child is of compulsory school age from about their fifth birthday (Education Act 1996 s8),
# so from then on a child with no school recorded and not marked as on no school roll is a gap
# in the export, reported rather than guessed. Younger, no school means no roll: a three-year-old
# at home is nobody's pupil, while one in a school's nursery class has that school recorded.
_COMPULSORY_SCHOOL_AGE = 5
# The broker's default max_clock_skew_s: a line's time this far past our clock is refused here,
# naming the export's field, rather than by the broker naming the referral's.
_CLOCK_SKEW: Final = timedelta(seconds=60)
# What a problem with the referral as a whole (the consent record above all) holds back.
_HELD_BACK = "MARAC and IDVA referrals not made"


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
    lines: Iterable[str | bytes], federation: Federation, now: datetime
) -> tuple[list[Outgoing], list[RowError]]:
    """Everything the export's incidents call for, and every problem, each with its line number.

    Lines are text, or bytes as read from the file (decoded here, so a line that is not UTF-8
    is that line's problem). A byte order mark before the first line is ignored. Blank lines are
    skipped (but counted, so line numbers match the file).
    """
    if now.tzinfo is None:
        raise TypeError("now must be timezone-aware")
    produced: list[Outgoing] = []
    errors: list[RowError] = []
    for row, line in enumerate(lines, start=1):
        values: frozenset[str] = frozenset()  # the line's text, which no reason may repeat
        try:
            text = _text(line, first=row == 1)
            if not text.strip():
                continue
            data = _load(text)
            values = text_values(data)
            record, held_back = _parse(data)
            outputs, problems = _messages(record, held_back, federation, now)
        except _RowProblems as exc:
            errors.extend(_row_errors(row, exc.problems, values))
            continue
        except ValidationError as exc:
            # A model that refused a message built from a valid record (a bound the export's own
            # models do not repeat): still this line's problem, with the message's own path.
            errors.extend(
                _row_errors(row, [(p.field, p.problem) for p in field_problems(exc)], values)
            )
            continue
        except (ArithmeticError, ValueError, RecursionError) as exc:
            # A bound this module does not know of (date arithmetic at the calendar's edge):
            # the line is refused rather than the whole import stopped by a traceback.
            errors.append(RowError(row, "(line)", f"cannot be read ({type(exc).__name__})"))
            continue
        produced.extend(Outgoing(row, m) for m in outputs)
        errors.extend(_row_errors(row, problems, values))
    return produced, errors


def _row_errors(
    row: int, problems: Iterable[tuple[str, str]], values: frozenset[str]
) -> list[RowError]:
    return [RowError(row, f, withhold(r, values)) for f, r in problems]


def _text(line: str | bytes, *, first: bool) -> str:
    """The line as text; ``_RowProblems`` when it is too long or not UTF-8."""
    body = line.rstrip("\r\n") if isinstance(line, str) else line.rstrip(b"\r\n")
    if len(body) > MAX_LINE_BYTES:
        raise _RowProblems([("(line)", f"longer than {MAX_LINE_BYTES} bytes")])
    if isinstance(body, str):
        return body.removeprefix("\ufeff") if first else body
    try:
        return decode_utf8(body, strip_bom=first)
    except JsonRefused as exc:
        at = f" at byte {exc.at.character}" if exc.at is not None else ""
        raise _RowProblems([("(line)", f"{r}{at}") for _, r in exc.problems]) from None


def _load(line: str) -> dict[str, Any]:
    """The line's JSON object, read within the import bounds."""
    try:
        data = load_json(line)
    except JsonRefused as exc:
        at = f" at character {exc.at.character}" if exc.at is not None else ""
        raise _RowProblems([(dotted(p) or "(line)", f"{r}{at}") for p, r in exc.problems]) from None
    if not isinstance(data, dict):
        raise _RowProblems([("(line)", "each line must be one JSON object")])
    return data


def _parse(data: dict[str, Any]) -> tuple[IncidentRecord, list[tuple[str, str]]]:
    """The line's record, and the problems of its consent record (which hold back adults only)."""
    try:
        return IncidentRecord.model_validate(data), []
    except ValidationError as exc:
        problems = [(p.field, p.problem) for p in field_problems(exc)]
    if data.get("sharing") is None or not all(_in_sharing(f) for f, _ in problems):
        raise _RowProblems(problems)
    # A broken consent record (an override missing an item, an unknown state) concerns the
    # adult referrals only: read the incident without it, so the children's notices still go.
    try:
        record = IncidentRecord.model_validate({**data, "sharing": None})
    except ValidationError as exc:
        raise _RowProblems(problems + [(p.field, p.problem) for p in field_problems(exc)]) from None
    return record, [(f, f"{_HELD_BACK}: {r}") for f, r in problems]


def _in_sharing(path: str) -> bool:
    return path == "sharing" or path.startswith("sharing.")


def _messages(
    record: IncidentRecord,
    held_back: list[tuple[str, str]],
    federation: Federation,
    now: datetime,
) -> tuple[list[Referral | EncompassNotification], list[tuple[str, str]]]:
    force = federation.get(record.force)
    if force is None or force.role is not AgencyRole.POLICE:
        raise _RowProblems([("force", "not a police force of this federation")])
    if record.created_at > now + _CLOCK_SKEW:
        field = "recorded_at" if record.recorded_at is not None else "occurred_at"
        raise _RowProblems(
            [(field, "is later than this machine's clock: check the export's times and clock")]
        )
    out: list[Referral | EncompassNotification] = []
    problems = list(held_back)
    try:
        base: Referral | None = referral_from_record(record)
    except _RowProblems as exc:
        # The adult referrals cannot be made; the children's notices do not depend on them.
        base = None
        problems.extend((f, f"{_HELD_BACK}: {r}") for f, r in exc.problems)
    if base is not None and base.consent is None:
        base = None
        if not held_back:
            problems.append(
                ("sharing", f"{_HELD_BACK}: required, the victim's consent and any override")
            )
    if base is not None:
        out.extend(_adult_referrals(base, record, federation, problems))
    for person in record.persons:
        if person.role is PersonRole.CHILD:
            note, problem = _notification(record, person, federation)
            if note is not None:
                out.append(note)
            if problem is not None:
                problems.append(problem)
    return out, problems


def _adult_referrals(
    base: Referral,
    record: IncidentRecord,
    federation: Federation,
    problems: list[tuple[str, str]],
) -> list[Referral | EncompassNotification]:
    """The MARAC and IDVA referrals the line calls for (``problems`` gets what stops one)."""
    out: list[Referral | EncompassNotification] = []
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
    return out


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
    federation: Federation,
) -> tuple[EncompassNotification | None, tuple[str, str] | None]:
    """The notice about one linked child, from the child's and the incident's facts alone.

    Built apart from the referral, so nothing about the adults (their consent, the risk
    assessment) can hold it back.
    """
    index = record.index_of(person)
    assert person.date_of_birth is not None  # a child's is required by the export model
    day = record.occurred_at.date()
    if person.may_be_victim is False:
        return None, None  # the officer found no grounds to believe the child may be a victim
    if not is_child(person.date_of_birth, day):
        return None, None  # 18 or over at the incident: not a child (DAA 2021 s3)
    try:
        child = Child.model_validate(_child_data(person))
    except ValidationError as exc:
        first = field_problems(exc)[0]
        return None, (
            _join(f"persons.{index}", _EXPORT_FIELDS.get(first.field, first.field)),
            first.problem,
        )
    if child.school_agency is not None:
        school = federation.get(child.school_agency)
        if school is None or school.role is not AgencyRole.SCHOOL:
            return None, (
                f"persons.{index}.school_agency",
                "not a school of this federation: give the federation id of their school "
                "(or home_educated true when the child is on no school roll)",
            )
        recipient = school.id
    elif child.home_educated:
        csc = _one_of(federation, AgencyRole.CHILDRENS_SOCIAL_CARE)
        if csc is None:
            return None, (
                f"persons.{index}.home_educated",
                "the federation has no children's social care to notify",
            )
        recipient = csc
    elif age_on(person.date_of_birth, day) >= _COMPULSORY_SCHOOL_AGE:
        return None, (
            f"persons.{index}.school_agency",
            "a child of school age needs the federation id of their school, or home_educated "
            "true when on no school roll (home-educated or off roll); no notice was made",
        )
    else:
        return None, None  # below school age and on no school roll: nobody's pupil
    if record.circumstances_for_school is None:
        return None, (
            "circumstances_for_school",
            "required when a child who may be a victim is linked (Operation Encompass)",
        )
    notification = EncompassNotification(
        header=EncompassHeader(
            notification_id=_message_id(record, Purpose.ENCOMPASS.value, person.person_id),
            sender_agency=record.force,
            sender_officer=record.officer,
            recipient=recipient,
            created_at=record.created_at,
            # The statutory deadline runs from the incident, not from when the export was
            # read: a notice made late is due at once and shows as overdue, never re-dated.
            notify_by=next_school_day_start(record.occurred_at),
        ),
        content=encompass_content(
            child,
            Incident.model_validate(_incident_data(record)),
            police_reference=record.occurrence_reference,
            circumstances=record.circumstances_for_school,
        ),
    )
    return notification, None


# --- the full referral -----------------------------------------------------------------------


def referral_from_record(record: IncidentRecord) -> Referral:
    """The whole referral the record supports, addressed (provisionally) to nobody but MARAC.

    Made from the record alone (no clock): the same record always makes the same referral.

    Raises ``_RowProblems`` with paths into the export line when the record's facts do not make
    a valid referral (e.g. the risk level disagrees with the DASH answers).
    """
    data = _referral_data(record)
    try:
        return Referral.model_validate(data)
    except ValidationError as exc:
        raise _RowProblems(
            [(_export_path(record, p.field), p.problem) for p in field_problems(exc)]
        ) from None


def _referral_data(record: IncidentRecord) -> dict[str, Any]:
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
            "created_at": record.created_at,
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
        "children": [_child_data(c) for c in children],
        "incident": _incident_data(record),
        "risk": {
            "level": record.risk_level,
            "dash": None
            if record.dash is None
            else {"question_set": record.dash.question_set, "answers": record.dash.answers},
            "professional_judgement": record.professional_judgement,
            "incidents_last_12_months": record.incidents_last_12_months,
        },
        "consent": None
        if sharing is None
        else {
            "state": sharing.victim_consent,
            **_POLICE_BASIS,
            "subject_informed": sharing.victim_informed,
            "not_informed_reason": sharing.not_informed_reason,
            "override": None
            if sharing.override is None
            else {
                **sharing.override.model_dump(exclude={"decision_maker", "decision_maker_role"}),
                "decision_maker_id": sharing.override.decision_maker,
                "decision_maker_role": role_code(sharing.override.decision_maker_role),
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


def _child_data(child: ExportPerson) -> dict[str, Any]:
    return {
        "given_name": child.given_name,
        "family_name": child.family_name,
        "date_of_birth": child.date_of_birth,
        "school_agency": child.school_agency,
        "home_educated": child.home_educated,
        "present_at_incident": child.present_at_incident,
        "where": child.whereabouts,
        "voice_of_child": child.voice_of_child,
    }


def _incident_data(record: IncidentRecord) -> dict[str, Any]:
    return {
        "occurred_at": record.occurred_at,
        "location": record.location,
        "summary": record.summary,
        "injuries": record.injuries,
        "reported_to_police": True,
        "police_attended": record.attended,
    }


#: A field of ``Child`` -> the export field it comes from, where the names differ.
_EXPORT_FIELDS = {"where": "whereabouts"}


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
    if path == "header.created_at":
        return "recorded_at" if record.recorded_at is not None else "occurred_at"
    return path


def _join(prefix: str, rest: str) -> str:
    return f"{prefix}.{rest}" if rest else prefix
