"""What a sender may submit: a referral or an Operation Encompass notification.

The two travel to the same broker, so an ingest endpoint that takes both decodes the body as a
``Submission``. The kind is told by the body's shape (a notification has ``content``, a referral
has ``victim``), so neither message needs a field that exists only to say what it is.

What makes two submissions *the same* message is their content, ``submission_digest``: the
validated message in RFC 8785 canonical form, so a sender that signs the same referral again (a
new JWS ``iat``, a new signature, its JSON written in another key order) is recognised as
resubmitting it, and one that changes any field under the same id is not.

What every submission names, whatever its kind, is read here too: its recipients, the legal
footing it claims (``lawful_basis_of``) and the field groups it fills in (``groups_carried``).

The models bound every date to plausible years; whether a date lies in the future depends on
the receiver's clock, so ``future_dates`` is given that clock. A day is in the future while it
has begun nowhere on Earth, not even at UTC+14, so a child born today in any time zone is never
refused.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Final

from pydantic import Discriminator, Tag, TypeAdapter, ValidationError

from schemas.consent import (
    Art6Basis,
    Art9Condition,
    Art10Condition,
    ConsentState,
    DpaCondition,
    OverrideReason,
    StatutoryGateway,
)
from schemas.decode import MAX_JSON_DEPTH, depth_problem, field_problems
from schemas.encompass import EncompassNotification
from schemas.errors import FieldProblem, SchemaError
from schemas.referral import FIELD_GROUPS, FieldGroup, Referral

__all__ = [
    "LawfulBasis",
    "Message",
    "Submission",
    "check_not_future",
    "decode_submission",
    "future_dates",
    "groups_carried",
    "lawful_basis_of",
    "recipients_of",
    "submission_digest",
]

Message = Referral | EncompassNotification
LawfulBasis = Art6Basis | Art9Condition | Art10Condition | DpaCondition | StatutoryGateway
# What a school (or children's social care) receives in an Encompass notice: the header, the
# child (G4) and the incident (G5), per the need-to-know matrix (docs/domain.md#need-to-know).
_ENCOMPASS_GROUPS: Final = (FieldGroup.G0, FieldGroup.G4, FieldGroup.G5)


def _kind(value: Any) -> str:
    if isinstance(value, EncompassNotification):
        return "encompass"
    if isinstance(value, dict) and "content" in value and "victim" not in value:
        return "encompass"
    return "referral"


Submission = Annotated[
    Annotated[Referral, Tag("referral")] | Annotated[EncompassNotification, Tag("encompass")],
    Discriminator(_kind),
]

_ADAPTER: TypeAdapter[Referral | EncompassNotification] = TypeAdapter(Submission)


def _untagged(problem: FieldProblem) -> FieldProblem:
    """Drop the union tag pydantic puts first in a location, so paths read as in the model."""
    tag, _, rest = problem.field.partition(".")
    if tag in {"referral", "encompass"} and rest:
        return FieldProblem(field=rest, problem=problem.problem)
    return problem


def decode_submission(
    data: bytes, *, max_depth: int = MAX_JSON_DEPTH
) -> Referral | EncompassNotification:
    """Parse JSON ``data`` as a referral or a notification; raise SchemaError naming each field.

    Arrays and objects nesting deeper than ``max_depth`` are refused before parsing.
    """
    too_deep = depth_problem(data, max_depth)
    if too_deep is not None:
        raise SchemaError(f"the submission is not valid: {too_deep.problem}", (too_deep,))
    try:
        return _ADAPTER.validate_json(data)
    except ValidationError as exc:
        problems = tuple(_untagged(p) for p in field_problems(exc))
        first = problems[0].field if problems else "(body)"
        raise SchemaError(
            f"the submission is not valid: {len(problems)} problem(s), first at '{first}'; "
            "fix the named fields and submit again",
            problems,
        ) from None


def submission_digest(message: Message) -> str:
    """SHA-256 (hex) of ``message``'s content: what the broker's idempotency by id compares.

    The content is the validated model as JSON (``model_dump(mode="json")``: every field, an
    optional one left out the same as given as its default) in RFC 8785 canonical form (sorted
    keys, no white space, one spelling per string), so it is what the message says and not how
    its JSON was written. The signature and its protected header (``iat``, ``kid``) are not part
    of it: signing the same referral again later is the same referral. Times are compared as
    written with their offset (``09:00Z`` and ``10:00+01:00`` are different content, since the
    recipient would be shown different text).
    """
    return hashlib.sha256(_canonical(message.model_dump(mode="json"))).hexdigest()


def _canonical(content: dict[str, Any]) -> bytes:
    """``rfc8785.dumps(content)``, six times faster, for a referral's or a notice's content.

    Equal because of what the two models hold: objects whose keys are ASCII field names or
    codes, strings, booleans, nulls and integers within 2^53 (``schemas.fields.Integer`` fields
    are bounded), never a float. For such a document RFC 8785 is sorted keys (UTF-16 and code
    point order agree on ASCII), no white space, integers as written, and ECMAScript string
    escaping, which is what ``json.dumps`` does with ``ensure_ascii=False`` (both escape ``"``,
    ``\\`` and control characters only: ``\\b \\t \\n \\f \\r`` by name, the rest as lower-case
    ``\\u00xx``). ``tests/unit/broker/test_resubmission.py`` checks the two agree on every
    sample message and on text full of escapes.
    """
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8")


# The furthest-ahead time zone: a date has begun somewhere once UTC+14 has reached it.
_EARLIEST_ZONE: Final = timedelta(hours=14)


def future_dates(message: Message, latest: datetime) -> tuple[FieldProblem, ...]:
    """The dates of ``message`` that lie after ``latest`` (the receiver's clock plus skew).

    Only dates that record the past are checked: a creation time, an incident, a birth. A due
    date, an order's expiry or a planned action may lie in the future.
    """
    moments: list[tuple[str, datetime]] = []
    days: list[tuple[str, date | None]] = []
    if isinstance(message, EncompassNotification):
        moments += [
            ("header.created_at", message.header.created_at),
            ("content.occurred_at", message.content.occurred_at),
        ]
        days.append(("content.child_date_of_birth", message.content.child_date_of_birth))
    else:
        moments += [
            ("header.created_at", message.header.created_at),
            ("incident.occurred_at", message.incident.occurred_at),
        ]
        days.append(("victim.date_of_birth", message.victim.date_of_birth))
        if message.perpetrator is not None:
            days.append(("perpetrator.date_of_birth", message.perpetrator.date_of_birth))
        days += [
            (f"children.{i}.date_of_birth", c.date_of_birth) for i, c in enumerate(message.children)
        ]
    last_day = (latest.astimezone(UTC) + _EARLIEST_ZONE).date()
    problems = [
        FieldProblem(field, "the time is in the future of the receiver's clock")
        for field, moment in moments
        if moment > latest
    ]
    problems += [
        FieldProblem(field, "the date is in the future")
        for field, day in days
        if day is not None and day > last_day
    ]
    return tuple(problems)


def check_not_future(message: Message, latest: datetime) -> None:
    """Raise SchemaError naming every date of ``message`` after ``latest`` (see future_dates)."""
    problems = future_dates(message, latest)
    if problems:
        raise SchemaError(
            f"the submission is not valid: {len(problems)} date(s) in the future, first at "
            f"'{problems[0].field}'; check the date, and the sending system's clock",
            problems,
        )


def recipients_of(message: Message) -> tuple[str, ...]:
    """The agencies ``message`` is addressed to."""
    if isinstance(message, EncompassNotification):
        return (message.header.recipient,)
    return message.header.recipients


def lawful_basis_of(
    message: Message,
) -> tuple[tuple[LawfulBasis, ...], ConsentState | None, OverrideReason | None]:
    """The lawful basis codes, consent state and override reason a message names.

    An Operation Encompass notice is made under the statutory duty of s49A Domestic Abuse Act
    2021, which needs no consent; a referral names its own in G8 (or nothing, and is refused).
    """
    if isinstance(message, EncompassNotification):
        return (StatutoryGateway.DAA_2021_S49A,), ConsentState.NOT_REQUIRED_STATUTORY, None
    consent = message.consent
    if consent is None:
        return (), None, None
    named = (consent.art6_basis, consent.art9_condition, consent.dpa_condition)
    bases: list[LawfulBasis] = [b for b in (*named, consent.statutory_gateway) if b is not None]
    if consent.override is not None and isinstance(
        consent.override.legal_paragraph, DpaCondition | StatutoryGateway
    ):
        bases.append(consent.override.legal_paragraph)
    reason = consent.override.reason if consent.override is not None else None
    return tuple(bases), consent.state, reason


def groups_carried(message: Message) -> tuple[FieldGroup, ...]:
    """The field groups a message actually fills in: what 'the whole message' discloses."""
    if isinstance(message, EncompassNotification):
        return _ENCOMPASS_GROUPS
    return tuple(g for g in FIELD_GROUPS if message.group(g) not in (None, ()))
