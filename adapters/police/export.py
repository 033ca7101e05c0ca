"""The police force's export of domestic-abuse incidents: one JSON object per line.

This is the shape a force's records system (its occurrence, nominal and risk-assessment tables)
is asked to produce; ``README.md`` beside this file documents it for the force's integrators.
Each line is one occurrence with its linked persons (victim, suspect, children), their
addresses, the DASH answers the officer recorded, the officer's judgement per child of whether
the child may be a victim of the abuse (Operation Encompass), and the victim's consent to adult
referrals. Unknown fields are refused, so a mistyped column is reported rather than silently
dropped, and types are strict: a boolean is ``true`` or ``false`` (never ``"yes"`` or ``1``), a
count is a JSON integer (never ``"3"``), and dates are ISO 8601 text in the years the referral
accepts (``schemas.fields``: ``Flag``, ``Integer``, ``Day``, ``Moment``, never a Unix time): a lax
reading (``"y"`` or ``1`` taken for true, a number for a date) guesses at a safeguarding fact the
force did not record, and a date in 9999 is refused before any arithmetic on it.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, model_validator

from schemas.consent import ConsentState, OverrideReason, StaffId
from schemas.dash import DEFAULT_QUESTION_SET, DashAnswer, QuestionId
from schemas.fields import (
    AgencyId,
    Day,
    Flag,
    Frozen,
    Integer,
    LongText,
    Moment,
    NhsNumber,
    Postcode,
    ShortText,
    inconsistent,
)
from schemas.referral import HousingTenure, Relationship, RestrictionKind, RiskLevel

__all__ = [
    "EXPORT_VERSION",
    "ContactType",
    "ExportAddress",
    "ExportContact",
    "ExportDash",
    "ExportOrder",
    "ExportOverride",
    "ExportPerson",
    "ExportSharing",
    "IncidentRecord",
    "PersonRole",
]

EXPORT_VERSION = "1"

Code = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class PersonRole(StrEnum):
    VICTIM = "victim"
    SUSPECT = "suspect"
    CHILD = "child"


class ContactType(StrEnum):
    MOBILE = "mobile"
    LANDLINE = "landline"
    TEXT = "text"
    EMAIL = "email"
    POSTAL = "postal"
    THIRD_PARTY = "third_party"


class ExportAddress(Frozen):
    address_id: Code
    lines: tuple[ShortText, ...] = Field(min_length=1, max_length=6)
    postcode: Postcode


class ExportContact(Frozen):
    type: ContactType
    value: ShortText
    safe_to_contact: Flag
    safe_to_leave_message: Flag = False
    best_times: ShortText | None = None


class ExportOrder(Frozen):
    type: RestrictionKind
    conditions: LongText | None = None
    expires_on: Day | None = None


class ExportPerson(Frozen):
    """A nominal linked to the occurrence. Fields that do not apply to a role stay empty."""

    person_id: Code
    role: PersonRole
    given_name: ShortText
    family_name: ShortText
    aliases: tuple[ShortText, ...] = ()
    date_of_birth: Day | None = None
    nhs_number: NhsNumber | None = None
    address_id: Code | None = None
    # victim
    contacts: tuple[ExportContact, ...] = ()
    housing_tenure: HousingTenure | None = None
    pregnant: Flag | None = None
    expected_due_date: Day | None = None
    # suspect
    relationship_to_victim: Relationship | None = None
    bail_and_orders: tuple[ExportOrder, ...] = ()
    criminal_history: LongText | None = None
    # child
    school_agency: AgencyId | None = Field(
        default=None,
        description="The federation id of the school the child is a registered pupil at "
        "(nursery classes included)",
    )
    home_educated: Flag = Field(
        default=False,
        description="The child is on no school roll (home-educated or off roll): children's "
        "social care is notified instead of a school",
    )
    may_be_victim: Flag | None = Field(
        default=None,
        description="The officer's judgement: there are reasonable grounds to believe the "
        "child may be a victim of the domestic abuse (DAA 2021 s3: sees or hears it, or "
        "experiences its effects), whether or not officers attended. null (not recorded): "
        "treated as true, so the child's school is still told",
    )
    present_at_incident: Flag | None = None
    whereabouts: ShortText | None = None
    voice_of_child: LongText | None = None

    @model_validator(mode="after")
    def _role_fields(self) -> ExportPerson:
        if self.role is not PersonRole.SUSPECT and self.date_of_birth is None:
            raise inconsistent("date_of_birth", f"a {self.role.value} needs a date of birth")
        if self.role is not PersonRole.CHILD and self.may_be_victim is not None:
            raise inconsistent("may_be_victim", "recorded for a child only")
        if self.role is PersonRole.SUSPECT and self.relationship_to_victim is None:
            raise inconsistent("relationship_to_victim", "give the suspect's relationship")
        return self


class ExportDash(Frozen):
    question_set: str = DEFAULT_QUESTION_SET
    answers: dict[QuestionId, DashAnswer]


class ExportOverride(Frozen):
    decision_maker: StaffId = Field(description="The authorising officer's collar number")
    decision_maker_role: ShortText = Field(
        description="Their rank or role title; Cairn records it as a role code (role_code)"
    )
    reason: OverrideReason
    justification: LongText
    subject_told: Flag
    subject_not_told_reason: LongText | None = None


class ExportSharing(Frozen):
    """The victim's consent to referral, and the override when it is absent."""

    victim_consent: ConsentState
    victim_informed: Flag
    not_informed_reason: LongText | None = None
    override: ExportOverride | None = None


class IncidentRecord(Frozen):
    """One occurrence: one line of the export."""

    export_version: Literal["1"]
    force: AgencyId
    occurrence_reference: Code
    officer: Code = Field(description="Attending officer's collar number")
    occurred_at: Moment
    recorded_at: Moment | None = Field(
        default=None,
        description="When the force's system recorded the occurrence as exported (its last "
        "change): the referrals' and notices' created-at. Not given: occurred_at. Never the "
        "time of the import, so importing the same export again makes the same messages",
    )
    location: ShortText
    attended: Flag = Field(
        description="Police attended; recorded in the referral's G5. Operation Encompass does "
        "not depend on it"
    )
    summary: LongText
    injuries: LongText | None = None
    circumstances_for_school: Annotated[str, StringConstraints(min_length=1, max_length=1000)] | (
        None
    ) = None
    incidents_last_12_months: Integer | None = Field(default=None, ge=0, le=1000)
    risk_level: RiskLevel
    professional_judgement: LongText | None = None
    dash: ExportDash | None = None
    addresses: tuple[ExportAddress, ...] = ()
    persons: tuple[ExportPerson, ...] = Field(min_length=1)
    sharing: ExportSharing | None = Field(
        default=None,
        description="The victim's consent and any override: the basis of the adult referrals "
        "(MARAC, IDVA). Without a valid one they are not made and the line reports it; "
        "Operation Encompass notices never depend on it",
    )
    actions_taken: tuple[LongText, ...] = ()
    victim_wishes: LongText | None = None
    safety_plan: LongText | None = None

    @model_validator(mode="after")
    def _linked(self) -> IncidentRecord:
        victims = [p for p in self.persons if p.role is PersonRole.VICTIM]
        if len(victims) != 1:
            raise inconsistent("persons", f"exactly one victim is needed, found {len(victims)}")
        suspects = [p for p in self.persons if p.role is PersonRole.SUSPECT]
        if len(suspects) > 1:
            raise inconsistent(
                "persons", "one suspect per line: export each suspect's occurrence separately"
            )
        ids = [p.person_id for p in self.persons]
        if len(set(ids)) != len(ids):
            raise inconsistent("persons", "person_id values must be unique within a line")
        if self.recorded_at is not None and self.recorded_at < self.occurred_at:
            raise inconsistent("recorded_at", "is before occurred_at: check the export's times")
        known = {a.address_id for a in self.addresses}
        for i, person in enumerate(self.persons):
            if person.address_id is not None and person.address_id not in known:
                raise inconsistent(f"persons.{i}.address_id", "no address with this id")
        return self

    @property
    def created_at(self) -> datetime:
        """The time the messages made from this line say they were created: from the line
        itself (``recorded_at``, else ``occurred_at``), never from a clock."""
        return self.recorded_at if self.recorded_at is not None else self.occurred_at

    @property
    def victim(self) -> ExportPerson:
        return next(p for p in self.persons if p.role is PersonRole.VICTIM)

    @property
    def suspect(self) -> ExportPerson | None:
        return next((p for p in self.persons if p.role is PersonRole.SUSPECT), None)

    def index_of(self, person: ExportPerson) -> int:
        return self.persons.index(person)

    def address(self, address_id: str | None) -> ExportAddress | None:
        return next((a for a in self.addresses if a.address_id == address_id), None)
