"""Audit events: what the broker records about each referral, canonical JSON, no personal data.

Each event is one leaf of the auditor's RFC 9162 Merkle tree (DESIGN §6), so its bytes must be
the same wherever they are produced: ``AuditEvent.canonical()`` is the RFC 8785 (JCS) form of
the model, with absent values left out, and ``AuditEvent.from_canonical`` accepts only bytes that
are already canonical. Events hold ids, agency ids, times and codes only. The people a referral
is about appear only as keyed pseudonyms, ``HMAC-SHA256(secret, normalised identifier)`` under
the federation's pseudonym secret, so an IG officer who holds a person's identifiers (and the
secret) can find every disclosure about them while the log itself never says who they are.

Normalisation (``nhs_identifier``, ``name_identifier``), so that the identifiers an IG officer
types map to the same pseudonyms as the referral that was sent:

- NHS number: the 10 digits, spaces and other separators removed; the check digit must hold.
- Name and date of birth: the *first* given name and the *whole* family name, each decomposed
  (Unicode NFKD), stripped of accents, case-folded and reduced to letters and digits, so
  "Zoë-Ann" and "zoeann", "O'Brien" and "OBRIEN" agree; then the ISO date of birth. An alias
  ("Tess Fictional") is split into its first word (given) and the rest (family) and paired with
  the same date of birth. A person without a date of birth gets no name pseudonym: a name alone
  would match strangers.

``subject_pseudonyms`` takes every such identifier a referral carries for the victim, each child
and the perpetrator (an Operation Encompass notification: the child), because each of them is a
data subject who may ask what was disclosed about them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import unicodedata
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Annotated, Any, Final, Literal, Protocol
from uuid import UUID

import rfc8785
from pydantic import (
    AfterValidator,
    AwareDatetime,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from schemas.consent import (
    Art6Basis,
    Art9Condition,
    Art10Condition,
    ConsentState,
    DpaCondition,
    OverrideReason,
    StatutoryGateway,
)
from schemas.encompass import EncompassNotification
from schemas.errors import FieldProblem, SchemaError
from schemas.fields import AgencyId, Frozen
from schemas.receipt import Acknowledgement, AcknowledgementStatus
from schemas.referral import FIELD_GROUPS, FieldGroup, Purpose, Referral

__all__ = [
    "AUDIT_FORMAT",
    "LAWFUL_BASIS_CODES",
    "MAX_EVENT_BYTES",
    "MIN_SECRET_BYTES",
    "AuditEvent",
    "AuditEventType",
    "DecisionView",
    "LawfulBasis",
    "LawfulBasisCode",
    "acknowledged",
    "agreement_changed",
    "decided",
    "delivered",
    "disclosed",
    "groups_carried",
    "key_rotated",
    "lawful_basis_of",
    "name_identifier",
    "nhs_identifier",
    "overdue",
    "person_pseudonyms",
    "pseudonym",
    "received",
    "refused",
    "subject_pseudonyms",
    "submission_events",
]

AUDIT_FORMAT: Final = "cairn-audit/1"
MAX_EVENT_BYTES: Final = 65_536  # bytes of one canonical event; real events are under 2 KB
MIN_SECRET_BYTES: Final = 32  # bytes of pseudonym secret: HMAC-SHA256's block-level strength
# Domain separation: the HMAC input names its purpose and version, so the same secret could
# never produce a pseudonym that collides with another use of it.
_PSEUDONYM_CONTEXT: Final = b"cairn-pseudonym/1\x00"

Pseudonym = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9_-]{43}$"),
    Field(description="base64url HMAC-SHA256 of a normalised identifier; see schemas.audit"),
]
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
LawfulBasis = Art6Basis | Art9Condition | Art10Condition | DpaCondition | StatutoryGateway
#: Every legal code an event may name (UK GDPR Art 6, 9 and 10, DPA 2018 paragraphs, gateways).
LAWFUL_BASIS_CODES: Final = frozenset(
    c.value
    for e in (Art6Basis, Art9Condition, Art10Condition, DpaCondition, StatutoryGateway)
    for c in e
)


def _known_basis(code: str) -> str:
    # A plain string checked against the codes, not a union of four enums: pydantic would try
    # each enum in turn for every code of every event, which dominated verification time.
    if code not in LAWFUL_BASIS_CODES:
        raise ValueError(f"not a lawful basis code: {', '.join(sorted(LAWFUL_BASIS_CODES))}")
    return code


LawfulBasisCode = Annotated[str, AfterValidator(_known_basis)]

_NON_ALNUM = re.compile(r"[^0-9a-z]")
_NON_DIGIT = re.compile(r"[^0-9]")
_NHS_CHARS = re.compile(r"[0-9][0-9 -]*")
_GROUP_ORDER: Final = {g.value: i for i, g in enumerate(FieldGroup)}
# What a school (or children's social care) receives in an Encompass notice: the header, the
# child (G4) and the incident (G5), per the need-to-know matrix of DESIGN §4.
_ENCOMPASS_GROUPS: Final = (FieldGroup.G0, FieldGroup.G4, FieldGroup.G5)


class AuditEventType(StrEnum):
    """What happened. One event per fact; per-recipient facts name the recipient."""

    RECEIVED = "received"  # a signed referral or notice was accepted for processing
    DECIDED = "decided"  # the policy decided, for every intended recipient at once
    DISCLOSED = "disclosed"  # one recipient is sent the field groups its agreement allows
    REFUSED = "refused"  # one recipient is sent nothing; ``reasons`` say why
    DELIVERED = "delivered"  # the disclosure is committed to the recipient's topic
    ACKNOWLEDGED = "acknowledged"  # the recipient filed (or rejected) the disclosure
    KEY_ROTATED = "key_rotated"  # a member's keys were replaced
    AGREEMENT_CHANGED = "agreement_changed"  # a sharing agreement came into force or changed
    OVERDUE = "overdue"  # a disclosure was not acknowledged by when it was due


_MESSAGE_FIELDS: Final = frozenset({"message_id", "sender", "purpose"})
# Per type: the fields that must be present, and the fields that may be. Anything else must be
# absent, so an event holds only what its type is about (data minimisation by construction).
_REQUIRED: Final[Mapping[AuditEventType, frozenset[str]]] = {
    AuditEventType.RECEIVED: _MESSAGE_FIELDS | {"recipients", "subjects"},
    AuditEventType.DECIDED: _MESSAGE_FIELDS | {"recipients"},
    AuditEventType.DISCLOSED: _MESSAGE_FIELDS
    | {"recipient", "lawful_basis", "consent_state", "field_groups", "subjects"},
    AuditEventType.REFUSED: _MESSAGE_FIELDS | {"recipient", "reasons", "subjects"},
    AuditEventType.DELIVERED: frozenset({"message_id", "recipient"}),
    AuditEventType.ACKNOWLEDGED: frozenset({"message_id", "recipient", "status"}),
    AuditEventType.KEY_ROTATED: frozenset({"agency", "kids"}),
    AuditEventType.AGREEMENT_CHANGED: frozenset({"agreement", "agreement_digest"}),
    AuditEventType.OVERDUE: frozenset({"message_id", "recipient", "due_at"}),
}
_OPTIONAL: Final[Mapping[AuditEventType, frozenset[str]]] = {
    AuditEventType.RECEIVED: frozenset({"request_id"}),
    AuditEventType.DECIDED: frozenset({"request_id", "reasons", "rules", "subjects"}),
    AuditEventType.DISCLOSED: frozenset(
        {"request_id", "override_reason", "reasons", "rules", "agreement", "due_at"}
    ),
    AuditEventType.REFUSED: frozenset(
        {"request_id", "lawful_basis", "consent_state", "override_reason", "rules", "agreement"}
    ),
    AuditEventType.DELIVERED: frozenset({"sender", "purpose", "request_id"}),
    AuditEventType.ACKNOWLEDGED: frozenset({"sender", "purpose", "reasons"}),
    AuditEventType.KEY_ROTATED: frozenset({"reasons"}),
    AuditEventType.AGREEMENT_CHANGED: frozenset({"purpose", "reasons"}),
    AuditEventType.OVERDUE: frozenset({"sender", "purpose", "reasons"}),
}
_ALWAYS: Final = frozenset({"format", "event_id", "type", "at"})


class AuditEvent(Frozen):
    """One audit event: ids, agencies, times and codes; subjects by pseudonym only.

    Which fields an event has depends on its ``type`` (see ``_REQUIRED`` / ``_OPTIONAL``); the
    model refuses a missing required field and any field the type does not use. Tuples are
    put in one canonical order (groups G0..G10, codes and pseudonyms sorted) so the same facts
    always give the same bytes.
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
    due_at: AwareDatetime | None = None

    @field_validator("at", "due_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        # One zone for every event, so equal instants give equal bytes.
        return None if value is None else value.astimezone(UTC)

    @field_validator("lawful_basis")
    @classmethod
    def _sorted_bases(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(sorted(set(value)))

    @field_validator("field_groups")
    @classmethod
    def _ordered_groups(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(
            sorted(set(value), key=lambda label: (_GROUP_ORDER[label.split(".")[0]], label))
        )

    @field_validator("subjects", "kids")
    @classmethod
    def _sorted_unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(sorted(set(value)))

    @model_validator(mode="after")
    def _fields_fit_type(self) -> AuditEvent:
        present = {k for k, v in self.__dict__.items() if v is not None and v != ()}
        required = _REQUIRED[self.type]
        missing = sorted(required - present)
        if missing:
            raise ValueError(f"a '{self.type.value}' event needs {', '.join(missing)}")
        extra = sorted(present - required - _OPTIONAL[self.type] - _ALWAYS)
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
        return self

    def jsonable(self) -> dict[str, Any]:
        """The event as JSON values, absent and empty fields left out."""
        dumped = self.model_dump(mode="json", exclude_none=True)
        return {k: v for k, v in dumped.items() if v != []}

    def canonical(self) -> bytes:
        """The RFC 8785 canonical JSON bytes: the Merkle leaf the auditor appends."""
        return rfc8785.dumps(self.jsonable())

    def _canonical_fast(self) -> bytes:
        """The same bytes as ``canonical``, five times faster, for the append and verify paths.

        Equal because of what an event is: an object whose keys are ASCII field names and whose
        values are ASCII strings matching their patterns (ids, codes, times, pseudonyms), or
        lists of them, with no numbers. For such a document RFC 8785 is sorted keys (UTF-16
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


def _present(value: object) -> bool:
    return value is not None and value != ()


# --- pseudonyms -------------------------------------------------------------------------------


def _name_token(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return _NON_ALNUM.sub("", bare.casefold())


def nhs_identifier(nhs_number: str) -> str:
    """The normalised identifier of an NHS number: ``nhs:`` and its 10 digits.

    Raises ``ValueError`` unless the digits are a valid NHS number (modulus 11).
    """
    if _NHS_CHARS.fullmatch(nhs_number) is None:
        raise ValueError("an NHS number is 10 digits, optionally spaced")
    digits = _NON_DIGIT.sub("", nhs_number)
    if len(digits) != 10:
        raise ValueError("an NHS number is 10 digits, optionally spaced")
    total = sum(int(d) * w for d, w in zip(digits[:9], range(10, 1, -1), strict=True))
    check = (11 - total % 11) % 11
    if check == 10 or check != int(digits[9]):
        raise ValueError("the NHS number's check digit is wrong")
    return f"nhs:{digits}"


def name_identifier(given_name: str, family_name: str, date_of_birth: date) -> str:
    """The normalised identifier of a person by first given name, family name and birth date.

    Raises ``ValueError`` if either name has no letters or digits left after normalisation.
    """
    words = given_name.split()
    given = _name_token(words[0]) if words else ""
    family = _name_token(family_name)
    if not given or not family:
        raise ValueError("a name pseudonym needs a given name and a family name")
    return f"name:{family}|{given}|{date_of_birth.isoformat()}"


def pseudonym(secret: bytes, identifier: str) -> str:
    """The pseudonym of one normalised identifier: base64url HMAC-SHA256 under ``secret``."""
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"the pseudonym secret must be at least {MIN_SECRET_BYTES} bytes")
    mac = hmac.new(secret, _PSEUDONYM_CONTEXT + identifier.encode("utf-8"), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode("ascii")


def _alias_identifier(alias: str, date_of_birth: date) -> str | None:
    words = alias.split()
    if len(words) < 2:
        return None
    try:
        return name_identifier(words[0], " ".join(words[1:]), date_of_birth)
    except ValueError:
        return None


def person_pseudonyms(
    secret: bytes,
    *,
    nhs_number: str | None = None,
    given_name: str | None = None,
    family_name: str | None = None,
    date_of_birth: date | None = None,
    aliases: Sequence[str] = (),
) -> tuple[str, ...]:
    """Every pseudonym one person's identifiers give, sorted: what the subject query looks for.

    Raises ``ValueError`` when the identifiers give none (a name without a date of birth).
    """
    identifiers: set[str] = set()
    if nhs_number:
        identifiers.add(nhs_identifier(nhs_number))
    if date_of_birth is not None:
        if given_name and family_name:
            identifiers.add(name_identifier(given_name, family_name, date_of_birth))
        for alias in aliases:
            found = _alias_identifier(alias, date_of_birth)
            if found is not None:
                identifiers.add(found)
    if not identifiers:
        raise ValueError(
            "give an NHS number, or a given name, family name and date of birth, to find a person"
        )
    return tuple(sorted(pseudonym(secret, i) for i in identifiers))


def subject_pseudonyms(message: Referral | EncompassNotification, secret: bytes) -> tuple[str, ...]:
    """The pseudonyms of everyone ``message`` is about: victim, children, perpetrator.

    Only identifiers the message carries are used; a perpetrator without a date of birth adds
    none (see the module docstring).
    """
    found: set[str] = set()
    if isinstance(message, EncompassNotification):
        c = message.content
        found.update(
            person_pseudonyms(
                secret,
                given_name=c.child_given_name,
                family_name=c.child_family_name,
                date_of_birth=c.child_date_of_birth,
            )
        )
        return tuple(sorted(found))
    v = message.victim
    found.update(
        person_pseudonyms(
            secret,
            nhs_number=v.nhs_number,
            given_name=v.given_name,
            family_name=v.family_name,
            date_of_birth=v.date_of_birth,
            aliases=v.aliases,
        )
    )
    for child in message.children:
        found.update(
            person_pseudonyms(
                secret,
                given_name=child.given_name,
                family_name=child.family_name,
                date_of_birth=child.date_of_birth,
            )
        )
    p = message.perpetrator
    if p is not None and p.date_of_birth is not None:
        found.update(
            person_pseudonyms(
                secret,
                given_name=p.given_name,
                family_name=p.family_name,
                date_of_birth=p.date_of_birth,
                aliases=p.aliases,
            )
        )
    return tuple(sorted(found))


# --- building events --------------------------------------------------------------------------


class DecisionView(Protocol):
    """What the event builders read from a policy decision (``broker.policy.decide.Decision``)."""

    @property
    def recipient(self) -> str: ...

    @property
    def allowed(self) -> bool: ...

    @property
    def reasons(self) -> tuple[str, ...]: ...


def _route(message: Referral | EncompassNotification) -> tuple[UUID, str, Purpose, tuple[str, ...]]:
    if isinstance(message, EncompassNotification):
        h = message.header
        return h.notification_id, h.sender_agency, h.purpose, (h.recipient,)
    r = message.header
    return r.referral_id, r.sender_agency, r.purpose, r.recipients


def lawful_basis_of(
    message: Referral | EncompassNotification,
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
    bases: list[LawfulBasis] = [
        b
        for b in (
            consent.art6_basis,
            consent.art9_condition,
            consent.dpa_condition,
            consent.statutory_gateway,
        )
        if b is not None
    ]
    if consent.override is not None and isinstance(
        consent.override.legal_paragraph, DpaCondition | StatutoryGateway
    ):
        bases.append(consent.override.legal_paragraph)
    reason = consent.override.reason if consent.override is not None else None
    return tuple(bases), consent.state, reason


def groups_carried(message: Referral | EncompassNotification) -> tuple[FieldGroup, ...]:
    """The field groups a message actually fills in: what 'the whole message' discloses."""
    if isinstance(message, EncompassNotification):
        return _ENCOMPASS_GROUPS
    return tuple(g for g in FIELD_GROUPS if _present(message.group(g)))


def _event_id(event_id: UUID | None) -> UUID:
    return event_id if event_id is not None else uuid.uuid4()


def _build(**fields: Any) -> AuditEvent:
    """An event from trusted fields; a ValidationError here is a programming mistake."""
    try:
        return AuditEvent(**fields)
    except ValidationError as exc:
        raise RuntimeError(f"built an invalid audit event: {exc}") from None


def received(
    message: Referral | EncompassNotification,
    *,
    secret: bytes,
    at: datetime,
    request_id: str | None = None,
    event_id: UUID | None = None,
) -> AuditEvent:
    """A signed referral or notice was accepted for processing."""
    message_id, sender, purpose, recipients = _route(message)
    return _build(
        event_id=_event_id(event_id),
        type=AuditEventType.RECEIVED,
        at=at,
        request_id=request_id,
        message_id=message_id,
        sender=sender,
        purpose=purpose,
        recipients=recipients,
        subjects=subject_pseudonyms(message, secret),
    )


def decided(
    message: Referral | EncompassNotification,
    decisions: Iterable[DecisionView],
    *,
    at: datetime,
    request_id: str | None = None,
    event_id: UUID | None = None,
) -> AuditEvent:
    """The policy decided for every intended recipient (the per-recipient events follow)."""
    message_id, sender, purpose, _ = _route(message)
    return _build(
        event_id=_event_id(event_id),
        type=AuditEventType.DECIDED,
        at=at,
        request_id=request_id,
        message_id=message_id,
        sender=sender,
        purpose=purpose,
        recipients=tuple(d.recipient for d in decisions),
    )


def _label(group: FieldGroup | str) -> str:
    return group.value if isinstance(group, FieldGroup) else group


def disclosed(
    message: Referral | EncompassNotification,
    *,
    recipient: str,
    field_groups: Sequence[FieldGroup | str],
    secret: bytes,
    at: datetime,
    lawful_basis: Sequence[LawfulBasis | str] | None = None,
    consent_state: ConsentState | None = None,
    override_reason: OverrideReason | None = None,
    reasons: Sequence[str] = (),
    rules: Sequence[str] = (),
    agreement: str | None = None,
    due_at: datetime | None = None,
    request_id: str | None = None,
    event_id: UUID | None = None,
) -> AuditEvent:
    """``recipient`` is sent ``field_groups`` of ``message`` (labels such as 'G4.basic' too).

    The lawful basis and consent are the ones the policy relied on when given, else the ones
    the message names. Raises ``SchemaError`` (naming ``consent``) when there are none: such a
    referral must be refused, never disclosed.
    """
    message_id, sender, purpose, _ = _route(message)
    named_bases, named_state, named_override = lawful_basis_of(message)
    bases = tuple(lawful_basis) if lawful_basis is not None else named_bases
    state = consent_state if consent_state is not None else named_state
    override = override_reason if consent_state is not None else named_override
    if not bases or state is None:
        raise SchemaError(
            "a disclosure needs its lawful basis and consent basis; the referral names none",
            (FieldProblem("consent", "name the consent state and the lawful basis"),),
        )
    return _build(
        event_id=_event_id(event_id),
        type=AuditEventType.DISCLOSED,
        at=at,
        request_id=request_id,
        message_id=message_id,
        sender=sender,
        recipient=recipient,
        purpose=purpose,
        lawful_basis=tuple(str(b) for b in bases),
        consent_state=state,
        override_reason=override,
        field_groups=tuple(_label(g) for g in field_groups),
        reasons=tuple(reasons),
        rules=tuple(rules),
        agreement=agreement,
        due_at=due_at,
        subjects=subject_pseudonyms(message, secret),
    )


def refused(
    message: Referral | EncompassNotification,
    *,
    recipient: str,
    reasons: Sequence[str],
    secret: bytes,
    at: datetime,
    rules: Sequence[str] = (),
    agreement: str | None = None,
    request_id: str | None = None,
    event_id: UUID | None = None,
) -> AuditEvent:
    """``recipient`` is sent nothing; ``reasons`` and ``rules`` say why."""
    message_id, sender, purpose, _ = _route(message)
    bases, state, override = lawful_basis_of(message)
    return _build(
        event_id=_event_id(event_id),
        type=AuditEventType.REFUSED,
        at=at,
        request_id=request_id,
        message_id=message_id,
        sender=sender,
        recipient=recipient,
        purpose=purpose,
        lawful_basis=tuple(str(b) for b in bases),
        consent_state=state,
        override_reason=override,
        reasons=tuple(reasons) or ("refused",),
        rules=tuple(rules),
        agreement=agreement,
        subjects=subject_pseudonyms(message, secret),
    )


def submission_events(
    message: Referral | EncompassNotification,
    decisions: Sequence[DecisionView],
    *,
    secret: bytes,
    at: datetime,
    request_id: str | None = None,
    field_groups: Mapping[str, Sequence[FieldGroup | str]] | None = None,
) -> tuple[AuditEvent, ...]:
    """Every event of one submission, in order: received, decided, then one per recipient.

    These go into the same Kafka transaction as the disclosures. From each decision the events
    take what ``broker.policy.decide.Decision`` carries: ``groups`` (labels, subsets included),
    ``lawful_basis`` (``.codes``), ``consent_basis`` (``.state``, ``.override_reason``),
    ``rules``, ``agreement`` and ``deadline``; a decision without them (the policy before
    sharing agreements) discloses every group the message carries, on the basis it names.
    ``field_groups`` overrides the groups per recipient.
    """
    events = [
        received(message, secret=secret, at=at, request_id=request_id),
        decided(message, decisions, at=at, request_id=request_id),
    ]
    for d in decisions:
        rules = tuple(getattr(d, "rules", ()) or ())
        agreement = getattr(d, "agreement", None)
        if not d.allowed:
            events.append(
                refused(
                    message,
                    recipient=d.recipient,
                    reasons=d.reasons,
                    rules=rules,
                    agreement=agreement,
                    secret=secret,
                    at=at,
                    request_id=request_id,
                )
            )
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
                recipient=d.recipient,
                field_groups=groups,
                lawful_basis=tuple(basis.codes) if basis is not None else None,
                consent_state=consent.state if consent is not None else None,
                override_reason=consent.override_reason if consent is not None else None,
                reasons=d.reasons,
                rules=rules,
                agreement=agreement,
                due_at=getattr(d, "deadline", None),
                secret=secret,
                at=at,
                request_id=request_id,
            )
        )
    return tuple(events)


def delivered(
    message_id: UUID,
    *,
    recipient: str,
    at: datetime,
    sender: str | None = None,
    purpose: Purpose | None = None,
    request_id: str | None = None,
    event_id: UUID | None = None,
) -> AuditEvent:
    """The disclosure to ``recipient`` is committed to its delivery topic."""
    return _build(
        event_id=_event_id(event_id),
        type=AuditEventType.DELIVERED,
        at=at,
        message_id=message_id,
        recipient=recipient,
        sender=sender,
        purpose=purpose,
        request_id=request_id,
    )


def acknowledged(
    ack: Acknowledgement, *, at: datetime | None = None, event_id: UUID | None = None
) -> AuditEvent:
    """The recipient's acknowledgement of one disclosure (filed, or rejected with reasons)."""
    return _build(
        event_id=_event_id(event_id),
        type=AuditEventType.ACKNOWLEDGED,
        at=at if at is not None else ack.acknowledged_at,
        message_id=ack.referral_id,
        recipient=ack.agency,
        status=ack.status,
        reasons=ack.reasons,
    )


def key_rotated(
    agency: str,
    kids: Sequence[str],
    *,
    at: datetime,
    reasons: Sequence[str] = (),
    event_id: UUID | None = None,
) -> AuditEvent:
    """``agency`` (or a federation service) has new keys ``kids``."""
    return _build(
        event_id=_event_id(event_id),
        type=AuditEventType.KEY_ROTATED,
        at=at,
        agency=agency,
        kids=tuple(kids),
        reasons=tuple(reasons),
    )


def agreement_changed(
    agreement: str,
    document: bytes,
    *,
    at: datetime,
    purpose: Purpose | None = None,
    reasons: Sequence[str] = (),
    event_id: UUID | None = None,
) -> AuditEvent:
    """The sharing agreement ``agreement`` is now ``document`` (recorded by its SHA-256)."""
    return _build(
        event_id=_event_id(event_id),
        type=AuditEventType.AGREEMENT_CHANGED,
        at=at,
        agreement=agreement,
        agreement_digest=hashlib.sha256(document).hexdigest(),
        purpose=purpose,
        reasons=tuple(reasons),
    )


def overdue(
    message_id: UUID,
    *,
    recipient: str,
    due_at: datetime,
    at: datetime,
    sender: str | None = None,
    purpose: Purpose | None = None,
    reasons: Sequence[str] = (),
    event_id: UUID | None = None,
) -> AuditEvent:
    """``recipient`` had not acknowledged ``message_id`` by ``due_at``."""
    return _build(
        event_id=_event_id(event_id),
        type=AuditEventType.OVERDUE,
        at=at,
        message_id=message_id,
        recipient=recipient,
        due_at=due_at,
        sender=sender,
        purpose=purpose,
        reasons=tuple(reasons),
    )
