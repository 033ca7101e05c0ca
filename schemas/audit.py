"""Audit events: what the broker records about each referral, canonical JSON, no personal data.

Each event is one leaf of the auditor's RFC 9162 Merkle tree (docs/architecture.md#audit), so its
bytes must be the same wherever they are produced: ``AuditEvent.canonical()`` is the RFC 8785 (JCS)
form of the model, with absent values left out, and ``AuditEvent.from_canonical`` accepts only bytes
that are already canonical. Events hold ids, agency ids, times and codes only; the people a referral
is about appear only as keyed pseudonyms (``schemas.pseudonyms``, whose names this module re-exports
for the auditor's subject query).

One table, ``_FIELDS``, says which fields each event type must and may carry, and the model
refuses any other. The builders (``received`` to ``overdue``) are thin: each names its type and
the facts it records and hands them to ``_event``, so a new event type is one row and one
function of a few lines.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Final, Literal, Protocol, Required, TypedDict, Unpack, get_args
from uuid import UUID

from pydantic import (
    AfterValidator,
    AwareDatetime,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from schemas.consent import ConsentState, OverrideReason, RoleCode, StaffId
from schemas.encompass import EncompassHeader
from schemas.errors import FieldProblem, SchemaError
from schemas.fields import AgencyId, Frozen
from schemas.pseudonyms import Pseudonym, subject_pseudonyms
from schemas.receipt import (
    Acknowledgement,
    AcknowledgementStatus,
    Deletion,
    Delivery,
    View,
    ViewerId,
)
from schemas.referral import FieldGroup, Purpose, Referral
from schemas.submission import LawfulBasis, Message, groups_carried, lawful_basis_of, recipients_of

__all__ = [
    "AUDIT_FORMAT",
    "DELIVERED_NAMESPACE",
    "IG_OFFICER_PREFIX",
    "IG_REASON_MAX_CHARS",
    "IG_REASON_MIN_CHARS",
    "LAWFUL_BASIS_CODES",
    "MAX_EVENT_BYTES",
    "OVERDUE_ACKNOWLEDGED_LATE",
    "OVERDUE_NOT_ACKNOWLEDGED",
    "AuditEvent",
    "AuditEventType",
    "DecisionView",
    "IdentifierKind",
    "IgReason",
    "LawfulBasisCode",
    "OfficerId",
    "acknowledged",
    "agreement_changed",
    "decided",
    "deleted",
    "delivered",
    "delivery_receipted",
    "disclosed",
    "ig_searched",
    "key_rotated",
    "overdue",
    "received",
    "refused",
    "submission_events",
    "viewed",
]

AUDIT_FORMAT: Final = "cairn-audit/1"
MAX_EVENT_BYTES: Final = 65_536  # bytes of one canonical event; real events are under 2 KB

Code = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:/+-]{0,199}$"),
    Field(description="A rule id or reason code: never free text"),
]
GroupLabel = Annotated[
    str,
    StringConstraints(pattern=r"^G(?:10|[0-9])(?:\.[a-z0-9_]{1,64})?$"),
    Field(description="A field group ('G4'), or a named subset of one ('G4.children_basic')"),
]
RequestId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")]
Kid = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{43}$")]
Digest = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
#: Every legal code an event may name (UK GDPR Art 6, 9 and 10, DPA 2018 paragraphs, gateways).
LAWFUL_BASIS_CODES: Final = frozenset(c.value for e in get_args(LawfulBasis) for c in e)


def _known_basis(code: str) -> str:
    # A plain string checked against the codes, not a union of four enums: pydantic would try
    # each enum in turn for every code of every event, which dominated verification time.
    if code not in LAWFUL_BASIS_CODES:
        raise ValueError(f"not a lawful basis code: {', '.join(sorted(LAWFUL_BASIS_CODES))}")
    return code


LawfulBasisCode = Annotated[str, AfterValidator(_known_basis)]

#: The subject CN of an IG officer's client certificate: this prefix and the officer's id. A dot
#: is never in an agency id (``schemas.fields.AgencyId``), so an officer is never taken for one.
IG_OFFICER_PREFIX: Final = "ig-officer."
OfficerId = Annotated[
    str,
    StringConstraints(pattern=r"^(?:cairn-auditor|ig-officer\.[a-z0-9][a-z0-9-]{1,47})$"),
    Field(
        description=(
            "Who searched: the subject CN of the client certificate presented, an IG officer's "
            "('ig-officer.<id>') or the auditor's own ('cairn-auditor')"
        )
    ),
]
IG_REASON_MIN_CHARS: Final = 10
IG_REASON_MAX_CHARS: Final = 500
# Shapes of identifiers a reason must not carry: an NHS (or phone) number's run of 10 or more
# digits (spaces and hyphens allowed between), a date, a UK postcode, an e-mail address.
_IDENTIFIER_SHAPES: Final = (
    ("a 10-digit number (an NHS or phone number)", re.compile(r"\d(?:[ -]?\d){9}")),
    ("a date", re.compile(r"\b\d{1,4}[/.-]\d{1,2}[/.-]\d{1,4}\b")),
    (
        "a postcode",
        re.compile(r"\b[A-Z]{1,2}\d[A-Z\d]?\s*\d[A-Z]{2}\b", re.IGNORECASE),
    ),
    ("an e-mail address", re.compile(r"[^\s@]+@[^\s@]+\.[^\s@]+")),
)


def _no_identifier_shapes(text: str) -> str:
    # The reason is the one free text in the log: it must say why (a case or request
    # reference), never whom. The typed identifiers themselves are checked by the caller too.
    if any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        raise ValueError("the reason is not valid Unicode text")
    for what, shape in _IDENTIFIER_SHAPES:
        if shape.search(text):
            raise ValueError(
                f"the reason holds what looks like {what}; say why you search (a case or "
                "request reference), never who the person is"
            )
    return text


IgReason = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True,
        min_length=IG_REASON_MIN_CHARS,
        max_length=IG_REASON_MAX_CHARS,
        # Printable text only: no control, line or paragraph separator characters (surrogates:
        # ``_no_identifier_shapes``; the regex engine cannot name them).
        pattern=r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029]+$",
    ),
    AfterValidator(_no_identifier_shapes),
    Field(
        description=(
            f"Why the IG officer searched, as they typed it ({IG_REASON_MIN_CHARS} to "
            f"{IG_REASON_MAX_CHARS} characters): a case or request reference, never an identifier"
        )
    ),
]


class IdentifierKind(StrEnum):
    """Which kind of identifier an IG search was given (never the identifier itself)."""

    NHS_NUMBER = "nhs_number"
    NAME_AND_DATE_OF_BIRTH = "name_and_date_of_birth"
    ALIAS_AND_DATE_OF_BIRTH = "alias_and_date_of_birth"


_GROUP_ORDER: Final = {g.value: i for i, g in enumerate(FieldGroup)}


class AuditEventType(StrEnum):
    """What happened. One event per fact; per-recipient facts name the recipient."""

    RECEIVED = "received"  # a signed referral or notice was accepted for processing
    DECIDED = "decided"  # the policy decided, for every intended recipient at once
    DISCLOSED = "disclosed"  # one recipient is sent the field groups its agreement allows
    REFUSED = "refused"  # one recipient is sent nothing; ``reasons`` say why
    DELIVERED = "delivered"  # the recipient's gateway (or inbox) durably stored the disclosure
    ACKNOWLEDGED = "acknowledged"  # the recipient filed (or rejected) the disclosure
    KEY_ROTATED = "key_rotated"  # a member's keys were replaced
    AGREEMENT_CHANGED = "agreement_changed"  # a sharing agreement came into force or changed
    OVERDUE = "overdue"  # a disclosure was not acknowledged by when it was due
    VIEWED = "viewed"  # a person or case system of the recipient opened the disclosure
    DELETED = "deleted"  # the recipient deleted its copy (``reasons``: why, as a code)
    IG_SEARCH = "ig_search"  # an IG officer searched the log for a person (by pseudonym)
    IG_EXPORT = "ig_export"  # an IG officer exported a person's disclosure report


# Per type: the fields that must be present, and the fields that may be. Anything else must be
# absent, so an event holds only what its type is about (data minimisation by construction).
_MESSAGE: Final = "message_id sender purpose"  # which message: its id, sender and purpose
# An override: why, who decided (role and staff id), and on what legal paragraph.
_OVERRIDE: Final = "override_reason override_by_role override_by_id override_paragraph"
_FIELDS: Final[Mapping[AuditEventType, tuple[frozenset[str], frozenset[str]]]] = {
    AuditEventType(kind): (frozenset(required.split()), frozenset(optional.split()))
    for kind, required, optional in (
        ("received", f"{_MESSAGE} recipients subjects", "request_id"),
        ("decided", f"{_MESSAGE} recipients", "request_id reasons rules subjects"),
        (
            "disclosed",
            f"{_MESSAGE} recipient lawful_basis consent_state field_groups subjects",
            f"request_id {_OVERRIDE} reasons rules agreement due_at disclosure_digest",
        ),
        (
            "refused",
            f"{_MESSAGE} recipient reasons subjects",
            f"request_id lawful_basis consent_state {_OVERRIDE} rules agreement",
        ),
        ("delivered", "message_id recipient", "sender purpose request_id"),
        ("acknowledged", "message_id recipient status", "sender purpose reasons viewer"),
        ("key_rotated", "agency kids", "reasons"),
        ("agreement_changed", "agreement agreement_digest", "purpose reasons"),
        ("overdue", "message_id recipient due_at", "sender purpose reasons acknowledged_at"),
        ("viewed", "message_id recipient viewer", ""),
        ("deleted", "message_id recipient reasons", ""),
        ("ig_search", "officer ig_reason subjects identifiers", "request_id"),
        ("ig_export", "officer ig_reason subjects identifiers", "request_id reasons"),
    )
}
_ALWAYS: Final = frozenset({"format", "event_id", "type", "at"})


class AuditEvent(Frozen):
    """One audit event: ids, agencies, times and codes; subjects by pseudonym only.

    Which fields an event has depends on its ``type`` (see ``_FIELDS``); the model refuses a
    missing required field and any field the type does not use. Tuples are put in one
    canonical order (groups G0..G10, codes and pseudonyms sorted) so the same facts always give
    the same bytes.
    """

    format: Literal["cairn-audit/1"] = AUDIT_FORMAT
    event_id: UUID
    type: AuditEventType
    at: AwareDatetime = Field(description="When it happened, UTC")
    request_id: RequestId | None = None
    message_id: UUID | None = Field(default=None, description="Referral or notification id")
    sender: AgencyId | None = None
    recipient: AgencyId | None = None
    recipients: tuple[AgencyId, ...] = ()
    purpose: Purpose | None = None
    lawful_basis: tuple[LawfulBasisCode, ...] = ()
    consent_state: ConsentState | None = None
    override_reason: OverrideReason | None = None
    # Who overrode consent: staff personal data, kept here for accountability and shown to the
    # IG officer; never in logs or Kafka headers.
    override_by_role: RoleCode | None = None
    override_by_id: StaffId | None = None
    override_paragraph: LawfulBasisCode | None = Field(
        default=None, description="The legal paragraph the override relied on"
    )
    field_groups: tuple[GroupLabel, ...] = Field(
        default=(), description="What was disclosed: whole groups, or named subsets of them"
    )
    reasons: tuple[Code, ...] = Field(
        default=(), description="Short reason codes: the receipt's, or an acknowledgement's"
    )
    rules: tuple[Code, ...] = Field(default=(), description="Every policy rule id that fired")
    subjects: tuple[Pseudonym, ...] = ()
    status: AcknowledgementStatus | None = None
    agency: AgencyId | None = Field(default=None, description="key_rotated: whose keys")
    kids: tuple[Kid, ...] = ()
    agreement: Code | None = None
    agreement_digest: Digest | None = Field(default=None, description="SHA-256 of the agreement")
    disclosure_digest: Digest | None = Field(
        default=None,
        description=(
            "disclosed: SHA-256 of the compact JWE exactly as delivered (the record value "
            "on the recipient's deliver topic), lower-case hex; absent in older events"
        ),
    )
    due_at: AwareDatetime | None = None
    acknowledged_at: AwareDatetime | None = Field(
        default=None,
        description=(
            "overdue: when the recipient acknowledged the disclosure after its deadline (reason "
            "acknowledged-late); absent: not acknowledged when the event was written (reason "
            "not-acknowledged), and in older events"
        ),
    )
    viewer: ViewerId | None = Field(
        default=None, description="viewed: staff:<staff id> or client:<API client id>"
    )
    officer: OfficerId | None = None
    ig_reason: IgReason | None = None
    identifiers: tuple[IdentifierKind, ...] = Field(
        default=(), description="ig_search, ig_export: the kinds of identifier searched by"
    )

    @field_validator("at", "due_at", "acknowledged_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        # One zone for every event, so equal instants give equal bytes.
        return None if value is None else value.astimezone(UTC)

    @field_validator("field_groups")
    @classmethod
    def _ordered_groups(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(
            sorted(set(value), key=lambda label: (_GROUP_ORDER[label.split(".")[0]], label))
        )

    @field_validator("lawful_basis", "subjects", "kids", "identifiers")
    @classmethod
    def _sorted_unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(sorted(set(value)))

    @model_validator(mode="after")
    def _fields_fit_type(self) -> AuditEvent:
        present = {k for k, v in self.__dict__.items() if v is not None and v != ()}
        required, optional = _FIELDS[self.type]
        missing = sorted(required - present)
        if missing:
            raise ValueError(f"a '{self.type.value}' event needs {', '.join(missing)}")
        extra = sorted(present - required - optional - _ALWAYS)
        if extra:
            raise ValueError(f"a '{self.type.value}' event has no {', '.join(extra)}")
        if self.consent_state is not None:
            needs_override = self.consent_state not in (
                ConsentState.OBTAINED,
                ConsentState.NOT_REQUIRED_STATUTORY,
            )
            if self.consent_state is ConsentState.OBTAINED and self.override_reason is not None:
                raise ValueError("consent was obtained: there is no override reason")
            if needs_override and self.override_reason is None:
                raise ValueError(
                    f"consent is '{self.consent_state.value}': name the override reason"
                )
        by = (self.override_by_role, self.override_by_id, self.override_paragraph)
        if self.override_reason is None and by != (None, None, None):
            raise ValueError("an override's decision-maker and paragraph go with its reason")
        return self

    def jsonable(self) -> dict[str, Any]:
        """The event as JSON values, absent and empty fields left out."""
        dumped = self.model_dump(mode="json", exclude_none=True)
        return {k: v for k, v in dumped.items() if v != []}

    def canonical(self) -> bytes:
        """The RFC 8785 canonical JSON bytes: the Merkle leaf the auditor appends.

        Made by ``_canonical_fast``, the same bytes as ``rfc8785.dumps(self.jsonable())`` for
        every event (see there why; the tests check it), and the form ``from_canonical``
        holds events to: the broker writes each event in the form the auditor checks."""
        return self._canonical_fast()

    def _canonical_fast(self) -> bytes:
        """The same bytes as ``canonical``, five times faster, for the append and verify paths.

        Equal because of what an event is: an object whose keys are ASCII field names and whose
        values are ASCII strings matching their patterns (ids, codes, times, pseudonyms), or
        lists of them, with no numbers; the one free text, an IG search's ``ig_reason``, may be
        any Unicode but control characters and surrogates, which both forms write as UTF-8.
        For such a document RFC 8785 is sorted keys (UTF-16
        and code-point order agree on ASCII), no whitespace, and ECMAScript string escaping,
        which is what ``json.dumps`` does with ``ensure_ascii=False`` (both escape only ``"``,
        ``\\`` and control characters, the latter as lower-case ``\\u00xx``). The tests check
        the two agree on every sample event.
        """
        text = json.dumps(
            self.jsonable(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        return text.encode("utf-8")

    @classmethod
    def from_canonical(cls, data: bytes) -> AuditEvent:
        """The event in ``data``, which must be a valid event in canonical form.

        Raises ``SchemaError`` for anything else, including a valid event whose bytes are not
        the canonical ones (different key order, spacing, number or string encoding).
        """
        if len(data) > MAX_EVENT_BYTES:
            raise SchemaError(f"an audit event is at most {MAX_EVENT_BYTES} bytes")
        try:
            event = cls.model_validate_json(data)
        except ValidationError as exc:
            problems = tuple(
                FieldProblem(".".join(str(p) for p in e["loc"]) or "(event)", e["msg"])
                for e in exc.errors(include_url=False, include_input=False)
            )
            raise SchemaError("not a valid audit event", problems) from None
        if event._canonical_fast() != data:
            raise SchemaError("the audit event is valid but not in RFC 8785 canonical form")
        return event


# --- building events --------------------------------------------------------------------------


class DecisionView(Protocol):
    """What the event builders read from a policy decision (``broker.policy.decide.Decision``)."""

    @property
    def recipient(self) -> str: ...

    @property
    def allowed(self) -> bool: ...

    @property
    def reasons(self) -> tuple[str, ...]: ...


# What an event records of the legal footing: basis codes, consent state, override reason,
# and the paragraph the override relied on when the policy named it.
_Footing = tuple[
    tuple[LawfulBasis | str, ...], ConsentState | None, OverrideReason | None, str | None
]


def _which(message: Message) -> dict[str, Any]:
    """The fields that say which message an event is about (``_MESSAGE``)."""
    h = message.header
    message_id = h.notification_id if isinstance(h, EncompassHeader) else h.referral_id
    return {"message_id": message_id, "sender": h.sender_agency, "purpose": h.purpose}


def _label(group: FieldGroup | str) -> str:
    return group.value if isinstance(group, FieldGroup) else group


class At(TypedDict, total=False):
    """When an event happened, and its id: a fresh UUID unless given (tests fix it)."""

    at: Required[datetime]
    event_id: UUID | None


class Asked(At, total=False):
    """``At``, and the id of the HTTP request that caused the event, when it had one."""

    request_id: str | None


def _event(kind: AuditEventType, when: At, **fields: Any) -> AuditEvent:
    """An event of ``kind`` from trusted fields; a ValidationError here is a programming mistake."""
    event_id = when.get("event_id") or uuid.uuid4()
    try:
        return AuditEvent(type=kind, **{**fields, **when, "event_id": event_id})
    except ValidationError as exc:
        raise RuntimeError(f"built an invalid audit event: {exc}") from None


def _outcome(
    kind: AuditEventType,
    message: Message,
    footing: _Footing,
    secret: bytes,
    when: At,
    subjects: tuple[str, ...] | None = None,
    **fields: Any,
) -> AuditEvent:
    """A disclosed or refused event: one recipient's outcome, on the legal footing given."""
    bases, state, override, paragraph = footing
    return _event(
        kind,
        when,
        lawful_basis=tuple(str(b) for b in bases),
        consent_state=state,
        subjects=subjects if subjects is not None else subject_pseudonyms(message, secret),
        **_overrider(message, override, paragraph),
        **_which(message),
        **fields,
    )


def _overrider(
    message: Message, reason: OverrideReason | None, paragraph: str | None
) -> dict[str, Any]:
    """The override's reason, and who made it on what paragraph (the referral's G8 record)."""
    consent = message.consent if isinstance(message, Referral) else None
    record = consent.override if consent is not None else None
    if reason is None or record is None:
        return {"override_reason": reason}
    return {
        "override_reason": reason,
        "override_by_role": record.decision_maker_role,
        "override_by_id": record.decision_maker_id,
        "override_paragraph": str(paragraph or record.legal_paragraph),
    }


def received(
    message: Message,
    *,
    secret: bytes,
    subjects: tuple[str, ...] | None = None,
    **when: Unpack[Asked],
) -> AuditEvent:
    """A signed referral or notice was accepted for processing.

    ``subjects``: ``subject_pseudonyms(message, secret)`` when the caller has it already (the
    events of one submission share it; ``disclosed`` and ``refused`` take it too)."""
    if subjects is None:
        subjects = subject_pseudonyms(message, secret)
    return _event(
        AuditEventType.RECEIVED,
        when,
        recipients=recipients_of(message),
        subjects=subjects,
        **_which(message),
    )


def decided(
    message: Message, decisions: Iterable[DecisionView], **when: Unpack[Asked]
) -> AuditEvent:
    """The policy decided for every intended recipient (the per-recipient events follow)."""
    recipients = tuple(d.recipient for d in decisions)
    return _event(AuditEventType.DECIDED, when, recipients=recipients, **_which(message))


def disclosed(
    message: Message,
    *,
    recipient: str,
    field_groups: Sequence[FieldGroup | str],
    secret: bytes,
    subjects: tuple[str, ...] | None = None,
    lawful_basis: Sequence[LawfulBasis | str] | None = None,
    consent_state: ConsentState | None = None,
    override_reason: OverrideReason | None = None,
    override_paragraph: str | None = None,
    reasons: Sequence[str] = (),
    rules: Sequence[str] = (),
    agreement: str | None = None,
    due_at: datetime | None = None,
    disclosure_digest: str | None = None,
    **when: Unpack[Asked],
) -> AuditEvent:
    """``recipient`` is sent ``field_groups`` of ``message`` (labels such as 'G4.basic' too).

    ``disclosure_digest``: SHA-256 (lower-case hex) of the compact JWE bytes exactly as
    delivered, binding this event to the one ciphertext the recipient received.

    The lawful basis and consent are the ones the policy relied on when given, else the ones
    the message names. Raises ``SchemaError`` (naming ``consent``) when there are none: such a
    referral must be refused, never disclosed. Under an override the event also names who
    decided (role and staff id, from the referral's record) and the paragraph relied on.
    """
    named_bases, named_state, named_override = lawful_basis_of(message)
    bases = tuple(lawful_basis) if lawful_basis is not None else named_bases
    if consent_state is None:
        consent_state, override_reason = named_state, named_override
    if not bases or consent_state is None:
        raise SchemaError(
            "a disclosure needs its lawful basis and consent basis; the referral names none",
            (FieldProblem("consent", "name the consent state and the lawful basis"),),
        )
    return _outcome(
        AuditEventType.DISCLOSED,
        message,
        (bases, consent_state, override_reason, override_paragraph),
        secret,
        when,
        subjects,
        recipient=recipient,
        field_groups=tuple(_label(g) for g in field_groups),
        reasons=tuple(reasons),
        rules=tuple(rules),
        agreement=agreement,
        due_at=due_at,
        disclosure_digest=disclosure_digest,
    )


def refused(
    message: Message,
    *,
    recipient: str,
    reasons: Sequence[str],
    secret: bytes,
    subjects: tuple[str, ...] | None = None,
    rules: Sequence[str] = (),
    agreement: str | None = None,
    **when: Unpack[Asked],
) -> AuditEvent:
    """``recipient`` is sent nothing; ``reasons`` and ``rules`` say why."""
    return _outcome(
        AuditEventType.REFUSED,
        message,
        (*lawful_basis_of(message), None),
        secret,
        when,
        subjects,
        recipient=recipient,
        reasons=tuple(reasons) or ("refused",),
        rules=tuple(rules),
        agreement=agreement,
    )


def submission_events(
    message: Message,
    decisions: Sequence[DecisionView],
    *,
    secret: bytes,
    at: datetime,
    request_id: str | None = None,
    field_groups: Mapping[str, Sequence[FieldGroup | str]] | None = None,
    disclosure_digests: Mapping[str, str] | None = None,
) -> tuple[AuditEvent, ...]:
    """Every event of one submission, in order: received, decided, then one per recipient.

    These go into the same Kafka transaction as the disclosures. From each decision the events
    take what ``broker.policy.decide.Decision`` carries: ``groups`` (labels, subsets included),
    ``lawful_basis`` (``.codes``), ``consent_basis`` (``.state``, ``.override_reason``,
    ``.override_paragraph``),
    ``rules``, ``agreement`` and ``deadline``; a decision without them (the policy before
    sharing agreements) discloses every group the message carries, on the basis it names.
    ``field_groups`` overrides the groups per recipient. ``disclosure_digests``: per
    recipient, SHA-256 (hex) of the compact JWE as delivered (``disclosure_digest_of``).
    """
    subjects = subject_pseudonyms(message, secret)  # once: every event of it names them
    events = [
        received(message, secret=secret, subjects=subjects, at=at, request_id=request_id),
        decided(message, decisions, at=at, request_id=request_id),
    ]
    for d in decisions:
        # What either outcome records of the decision and of the submission.
        common: dict[str, Any] = {
            "recipient": d.recipient,
            "rules": tuple(getattr(d, "rules", ()) or ()),
            "agreement": getattr(d, "agreement", None),
            "secret": secret,
            "subjects": subjects,
            "at": at,
            "request_id": request_id,
        }
        if not d.allowed:
            events.append(refused(message, reasons=d.reasons, **common))
            continue
        shares = getattr(d, "groups", ()) or ()
        groups: Sequence[FieldGroup | str] = (
            (field_groups or {}).get(d.recipient)
            or tuple(str(g.label) for g in shares)
            or groups_carried(message)
        )
        basis = getattr(d, "lawful_basis", None)
        consent = getattr(d, "consent_basis", None)
        events.append(
            disclosed(
                message,
                field_groups=groups,
                lawful_basis=tuple(basis.codes) if basis is not None else None,
                consent_state=consent.state if consent is not None else None,
                override_reason=consent.override_reason if consent is not None else None,
                override_paragraph=getattr(consent, "override_paragraph", None),
                reasons=d.reasons,
                due_at=getattr(d, "deadline", None),
                disclosure_digest=(disclosure_digests or {}).get(d.recipient),
                **common,
            )
        )
    return tuple(events)


def disclosure_digest_of(jwe: bytes) -> str:
    """SHA-256 of the compact JWE bytes exactly as delivered, as lower-case hex (``Digest``)."""
    return hashlib.sha256(jwe).hexdigest()


def delivered(
    message_id: UUID,
    *,
    recipient: str,
    sender: str | None = None,
    purpose: Purpose | None = None,
    **when: Unpack[Asked],
) -> AuditEvent:
    """The disclosure ``message_id`` is durably stored by ``recipient`` (see
    ``delivery_receipted``, which the broker uses for the recipient's signed ``Delivery``)."""
    return _event(
        AuditEventType.DELIVERED,
        when,
        message_id=message_id,
        recipient=recipient,
        sender=sender,
        purpose=purpose,
    )


#: The namespace of a ``delivered`` event's id (RFC 9562 section 5.5, UUIDv5 over
#: ``<referral id>:<agency>``): the same delivery receipt sent twice gives the same event id.
DELIVERED_NAMESPACE: Final = uuid.UUID("6f1d3c1e-5a0b-4c5e-9d1e-2b7a4c8e0d51")


def delivery_receipted(receipt: Delivery, *, at: datetime | None = None) -> AuditEvent:
    """The recipient's signed word that it durably stored one disclosure. The event's id is
    derived from (referral, agency), so a receipt its gateway sent again is one fact, one id."""
    return delivered(
        receipt.referral_id,
        recipient=receipt.agency,
        at=at if at is not None else receipt.delivered_at,
        event_id=uuid.uuid5(DELIVERED_NAMESPACE, f"{receipt.referral_id}:{receipt.agency}"),
    )


def acknowledged(
    ack: Acknowledgement, *, at: datetime | None = None, event_id: UUID | None = None
) -> AuditEvent:
    """The recipient's acknowledgement of one disclosure (filed, rejected with reasons, or read
    or actioned by a person, named in ``viewer`` by staff id)."""
    return _event(
        AuditEventType.ACKNOWLEDGED,
        {"at": at if at is not None else ack.acknowledged_at, "event_id": event_id},
        message_id=ack.referral_id,
        recipient=ack.agency,
        status=ack.status,
        reasons=ack.reasons,
        viewer=ack.by,
    )


def viewed(view: View, *, at: datetime | None = None) -> AuditEvent:
    """A person or case system of the recipient opened one disclosure. The event's id is the
    view's own, so the same view sent twice is one fact under one id."""
    return _event(
        AuditEventType.VIEWED,
        {"at": at if at is not None else view.viewed_at, "event_id": view.view_id},
        message_id=view.referral_id,
        recipient=view.agency,
        viewer=view.viewer,
    )


def deleted(deletion: Deletion, *, at: datetime | None = None) -> AuditEvent:
    """The recipient deleted its copy of one disclosure (e.g. ``retention-expired``)."""
    return _event(
        AuditEventType.DELETED,
        {"at": at if at is not None else deletion.deleted_at, "event_id": None},
        message_id=deletion.referral_id,
        recipient=deletion.agency,
        reasons=(deletion.reason,),
    )


def key_rotated(
    agency: str, kids: Sequence[str], *, reasons: Sequence[str] = (), **when: Unpack[At]
) -> AuditEvent:
    """``agency`` (or a federation service) has new keys ``kids``."""
    return _event(
        AuditEventType.KEY_ROTATED, when, agency=agency, kids=tuple(kids), reasons=tuple(reasons)
    )


def agreement_changed(
    agreement: str,
    document: bytes,
    *,
    purpose: Purpose | None = None,
    reasons: Sequence[str] = (),
    **when: Unpack[At],
) -> AuditEvent:
    """The sharing agreement ``agreement`` is now ``document`` (recorded by its SHA-256)."""
    digest = hashlib.sha256(document).hexdigest()
    return _event(
        AuditEventType.AGREEMENT_CHANGED,
        when,
        agreement=agreement,
        agreement_digest=digest,
        purpose=purpose,
        reasons=tuple(reasons),
    )


#: An ``overdue`` event's reason: not acknowledged when the event was written.
OVERDUE_NOT_ACKNOWLEDGED: Final = "not-acknowledged"
#: An ``overdue`` event's reason: acknowledged after the deadline (``acknowledged_at`` says when).
OVERDUE_ACKNOWLEDGED_LATE: Final = "acknowledged-late"


def overdue(
    message_id: UUID,
    *,
    recipient: str,
    due_at: datetime,
    sender: str | None = None,
    purpose: Purpose | None = None,
    reasons: Sequence[str] | None = None,
    acknowledged_at: datetime | None = None,
    **when: Unpack[At],
) -> AuditEvent:
    """``recipient`` had not acknowledged ``message_id`` by ``due_at``: not at all when the event
    is written (reason ``OVERDUE_NOT_ACKNOWLEDGED``), or, with ``acknowledged_at``, late, at that
    time (reason ``OVERDUE_ACKNOWLEDGED_LATE``), unless ``reasons`` are given."""
    if reasons is None:
        late = acknowledged_at is not None
        reasons = (OVERDUE_ACKNOWLEDGED_LATE if late else OVERDUE_NOT_ACKNOWLEDGED,)
    return _event(
        AuditEventType.OVERDUE,
        when,
        message_id=message_id,
        recipient=recipient,
        due_at=due_at,
        sender=sender,
        purpose=purpose,
        reasons=tuple(reasons),
        acknowledged_at=acknowledged_at,
    )


def ig_searched(
    *,
    officer: str,
    reason: str,
    subjects: Sequence[str],
    identifiers: Sequence[IdentifierKind],
    export: str | None = None,
    **when: Unpack[Asked],
) -> AuditEvent:
    """An IG officer searched the log for one person: who (their certificate's CN), why (the
    reason they typed), for which pseudonyms and by which kinds of identifier; never the
    identifiers typed. With ``export`` (the format code, e.g. ``csv``) it is an ``ig_export``.

    Raises ``SchemaError`` naming ``reason`` for a reason that is too short or long, or looks
    like an identifier: the officer's input, not a programming mistake."""
    kind = AuditEventType.IG_SEARCH if export is None else AuditEventType.IG_EXPORT
    event_id = when.get("event_id") or uuid.uuid4()
    try:
        return AuditEvent(
            type=kind,
            officer=officer,
            ig_reason=reason,
            subjects=tuple(subjects),
            identifiers=tuple(identifiers),
            reasons=() if export is None else (export,),
            **{**when, "event_id": event_id},
        )
    except ValidationError as exc:
        problems = tuple(
            FieldProblem(
                "reason" if e["loc"] and e["loc"][0] == "ig_reason" else str(e["loc"][0]),
                e["msg"].removeprefix("Value error, "),
            )
            for e in exc.errors(include_url=False, include_input=False)
            if e["loc"]
        )
        raise SchemaError("the search cannot be recorded as given", problems) from None
