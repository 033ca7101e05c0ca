"""The safeguarding referral: field groups a sender fills in and the broker shares per recipient.

Need-to-know works on field groups (docs/domain.md#field-groups), so a referral is a set of named
groups, G0 to G10, each one top-level field (``FIELD_GROUPS`` maps group ids to field names for
redaction and policy). Header, victim, incident and risk are always present; the other groups are
optional or may be empty, because not every sender knows everything. Consent (G8) is optional in the
schema so that a partial referral can still be parsed and explained, but the policy refuses to
disclose a referral that does not name its lawful basis.

Fields holding special-category or criminal-offence data are marked where they are declared
(``schemas.classes.classified``), wherever they sit: the victim's pregnancy (G1), bail and
orders and criminal history (G3), injuries (G5), every field of G7; the DASH answers of G6 are
classified per question in the question-set data. ``field_classes`` reads the marks per group,
and the exported JSON Schema carries them (``"data_class"``).

Cross-field checks that are cheap are made here (the DASH score agrees with the answers; the
level agrees with the score unless professional judgement raised it; dates are not in the
future of the referral); each names the field to change.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from schemas.classes import DataClass, classified, model_classes
from schemas.consent import Consent
from schemas.dash import DEFAULT_QUESTION_SET, DashAnswers, RiskLevel, level_for_score
from schemas.fields import (
    AgencyId,
    Day,
    Flag,
    Frozen,
    Integer,
    LongText,
    MessageId,
    Moment,
    NhsNumber,
    Postcode,
    ShortText,
    inconsistent,
)

__all__ = [
    "FIELD_GROUPS",
    "GROUP_MODELS",
    "SCHEMA_VERSION",
    "Action",
    "ActionStatus",
    "Address",
    "AgenciesActions",
    "AgencyId",
    "AgencyInvolvement",
    "Child",
    "Classification",
    "ContactKind",
    "ContactRoute",
    "FieldGroup",
    "Frozen",
    "Header",
    "HousingTenure",
    "Incident",
    "LongText",
    "Perpetrator",
    "Pregnancy",
    "Priority",
    "Purpose",
    "Referral",
    "Relationship",
    "Restriction",
    "RestrictionKind",
    "Risk",
    "RiskLevel",
    "SafeContact",
    "ShortText",
    "SpecialCategory",
    "Victim",
    "Wishes",
    "field_classes",
]

SCHEMA_VERSION: Final = "1.0"

# Clock skew allowed between an incident's recorded time and the referral's creation.
_CLOCK_SKEW = timedelta(minutes=5)
#: Incidents a risk assessment may count in twelve months: more than daily is not a count.
MAX_INCIDENTS: Final = 1000

Reference = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class Purpose(StrEnum):
    """Why a referral is made; sharing agreements are written per purpose."""

    MARAC = "MARAC"
    IDVA = "IDVA"
    ENCOMPASS = "ENCOMPASS"
    CHILD_SAFEGUARDING = "CHILD_SAFEGUARDING"
    HEALTH_SAFEGUARDING = "HEALTH_SAFEGUARDING"
    HOUSING = "HOUSING"
    PERPETRATOR_MANAGEMENT = "PERPETRATOR_MANAGEMENT"


class Priority(StrEnum):
    ROUTINE = "routine"
    URGENT = "urgent"
    IMMEDIATE = "immediate"


class Classification(StrEnum):
    OFFICIAL_SENSITIVE = "OFFICIAL-SENSITIVE"


class FieldGroup(StrEnum):
    """The field groups (docs/domain.md#field-groups); need-to-know decisions are per group."""

    G0 = "G0"
    G1 = "G1"
    G2 = "G2"
    G3 = "G3"
    G4 = "G4"
    G5 = "G5"
    G6 = "G6"
    G7 = "G7"
    G8 = "G8"
    G9 = "G9"
    G10 = "G10"


#: Group id -> the Referral field that holds the group.
FIELD_GROUPS: Final[Mapping[FieldGroup, str]] = MappingProxyType(
    {
        FieldGroup.G0: "header",
        FieldGroup.G1: "victim",
        FieldGroup.G2: "safe_contact",
        FieldGroup.G3: "perpetrator",
        FieldGroup.G4: "children",
        FieldGroup.G5: "incident",
        FieldGroup.G6: "risk",
        FieldGroup.G7: "special_category",
        FieldGroup.G8: "consent",
        FieldGroup.G9: "agencies_actions",
        FieldGroup.G10: "wishes",
    }
)


# --- G0 ---------------------------------------------------------------------------------------


class Header(Frozen):
    """G0: who sends, to whom, why and how urgently. Holds no personal data of the subjects."""

    referral_id: MessageId
    schema_version: Literal["1.0"] = SCHEMA_VERSION
    sender_agency: AgencyId
    sender_officer: Reference = Field(
        description="The sending professional's staff or collar number, not their name"
    )
    recipients: tuple[AgencyId, ...] = Field(min_length=1)
    purpose: Purpose
    priority: Priority = Priority.ROUTINE
    classification: Classification = Classification.OFFICIAL_SENSITIVE
    police_reference: Reference | None = None
    marac_reference: Reference | None = None
    created_at: Moment

    @field_validator("recipients")
    @classmethod
    def _distinct_recipients(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("each recipient may be named only once")
        return value


# --- G1 ---------------------------------------------------------------------------------------


class Address(Frozen):
    lines: tuple[ShortText, ...] = Field(min_length=1, max_length=6)
    postcode: Postcode


class HousingTenure(StrEnum):
    OWNER_OCCUPIER = "owner_occupier"
    PRIVATE_RENTED = "private_rented"
    SOCIAL_RENTED = "social_rented"
    TEMPORARY = "temporary"
    REFUGE = "refuge"
    NO_FIXED_ABODE = "no_fixed_abode"
    OTHER = "other"


class Pregnancy(Frozen):
    """The victim's pregnancy or recent birth: a DASH risk factor and an unborn dependant."""

    pregnant: Flag
    expected_due_date: Day | None = None
    birth_in_last_18_months: Flag = False

    @model_validator(mode="after")
    def _due_date_only_if_pregnant(self) -> Pregnancy:
        if self.expected_due_date is not None and not self.pregnant:
            raise inconsistent("expected_due_date", "give a due date only when pregnant is true")
        return self


class Victim(Frozen):
    """G1: the person at risk.

    Pregnancy is kept here, with the person it is about; policies that send only a limited G1
    subset (probation) leave it out.
    """

    given_name: ShortText
    family_name: ShortText
    aliases: tuple[ShortText, ...] = ()
    date_of_birth: Day
    nhs_number: NhsNumber | None = None
    address: Address | None = None
    housing_tenure: HousingTenure | None = None
    pregnancy: Pregnancy | None = Field(
        default=None,
        description="Data concerning health (UK GDPR Art 4(15), Art 9(1))",
        json_schema_extra=classified(DataClass.SPECIAL_CATEGORY),
    )


# --- G2 ---------------------------------------------------------------------------------------


class ContactKind(StrEnum):
    PHONE = "phone"
    SMS = "sms"
    EMAIL = "email"
    POST = "post"
    VIA_THIRD_PARTY = "via_third_party"


class ContactRoute(Frozen):
    """One way of reaching the victim, and whether it is safe to use.

    Unsafe routes are recorded on purpose (a shared phone the abuser reads, the home address):
    knowing a route is unsafe protects the victim. Nothing may be sent to an unsafe route.
    """

    kind: ContactKind
    detail: ShortText = Field(description="The number, address, or the third party to go via")
    safe: Flag
    safe_to_leave_message: Flag = False
    best_times: ShortText | None = None

    @model_validator(mode="after")
    def _messages_only_on_safe_routes(self) -> ContactRoute:
        if self.safe_to_leave_message and not self.safe:
            raise inconsistent(
                "safe_to_leave_message", "a route that is not safe cannot be safe for messages"
            )
        return self


class SafeContact(Frozen):
    """G2: how, and how not, to contact the victim."""

    routes: tuple[ContactRoute, ...] = Field(min_length=1)
    notes: LongText | None = None

    def safe_routes(self) -> tuple[ContactRoute, ...]:
        """Only the routes flagged safe: the only ones a notification may use."""
        return tuple(r for r in self.routes if r.safe)


# --- G3 ---------------------------------------------------------------------------------------


class Relationship(StrEnum):
    PARTNER = "partner"
    EX_PARTNER = "ex_partner"
    FAMILY_MEMBER = "family_member"
    OTHER = "other"


class RestrictionKind(StrEnum):
    BAIL_CONDITIONS = "bail_conditions"
    NON_MOLESTATION_ORDER = "non_molestation_order"
    OCCUPATION_ORDER = "occupation_order"
    RESTRAINING_ORDER = "restraining_order"
    DOMESTIC_VIOLENCE_PROTECTION_ORDER = "domestic_violence_protection_order"
    DOMESTIC_ABUSE_PROTECTION_ORDER = "domestic_abuse_protection_order"
    STALKING_PROTECTION_ORDER = "stalking_protection_order"
    OTHER = "other"


class Restriction(Frozen):
    """Bail conditions or a court order that restricts the perpetrator."""

    kind: RestrictionKind
    conditions: LongText | None = None
    expires_on: Day | None = None


class Perpetrator(Frozen):
    """G3: the person causing harm.

    Bail conditions, orders and criminal history are criminal-offence data (UK GDPR Art 10, DPA
    2018 s11(2): offences alleged or proven, proceedings, and related security measures).
    """

    given_name: ShortText
    family_name: ShortText
    aliases: tuple[ShortText, ...] = ()
    date_of_birth: Day | None = None
    relationship: Relationship
    address: Address | None = None
    bail_and_orders: tuple[Restriction, ...] = Field(
        default=(),
        description="Criminal-offence data: security measures related to offences (Art 10)",
        json_schema_extra=classified(DataClass.CRIMINAL_OFFENCE),
    )
    criminal_history: LongText | None = Field(
        default=None,
        description="Criminal-offence data: convictions and offences (Art 10)",
        json_schema_extra=classified(DataClass.CRIMINAL_OFFENCE),
    )


# --- G4 ---------------------------------------------------------------------------------------


class Child(Frozen):
    """G4: one child or dependant linked to the incident."""

    given_name: ShortText
    family_name: ShortText
    date_of_birth: Day
    school_agency: AgencyId | None = Field(
        default=None, description="The federation id of the child's school, if it is a member"
    )
    home_educated: Flag = False
    present_at_incident: Flag | None = Field(default=None, description="null: not known")
    where: ShortText | None = Field(
        default=None, description="Where the child was during the incident"
    )
    voice_of_child: LongText | None = Field(
        default=None, description="What the child said, or how they appeared, in their own words"
    )

    @model_validator(mode="after")
    def _school_or_home(self) -> Child:
        if self.home_educated and self.school_agency is not None:
            raise inconsistent("school_agency", "a home-educated child has no school agency")
        return self


# --- G5 ---------------------------------------------------------------------------------------


class Incident(Frozen):
    """G5: what happened, when and where."""

    occurred_at: Moment
    location: ShortText
    summary: LongText
    injuries: LongText | None = Field(
        default=None,
        description="Data concerning health (UK GDPR Art 4(15), Art 9(1))",
        json_schema_extra=classified(DataClass.SPECIAL_CATEGORY),
    )
    reported_to_police: Flag
    police_attended: Flag | None = None


# --- G6 ---------------------------------------------------------------------------------------


class Risk(Frozen):
    """G6: the assessed risk.

    ``level`` must be at least the level the DASH score reaches; it may be higher only with a
    recorded ``professional_judgement``. With no DASH score, any level above standard needs a
    professional judgement. When ``dash`` answers are given, ``dash_score`` may be left out and
    is computed; if given it must equal the number of "yes" answers.
    """

    level: RiskLevel
    dash_score: Integer | None = Field(default=None, ge=0, le=24)
    dash: DashAnswers | None = None
    professional_judgement: LongText | None = Field(
        default=None, description="Why the professional judges the risk higher than the score"
    )
    incidents_last_12_months: Integer | None = Field(
        default=None,
        ge=0,
        le=MAX_INCIDENTS,
        description="Domestic-abuse incidents in the last 12 months, this one included",
    )

    @model_validator(mode="before")
    @classmethod
    def _score_from_answers(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("dash_score") is not None:
            return data
        dash = data.get("dash")
        if isinstance(dash, DashAnswers):
            return {**data, "dash_score": dash.score}
        if isinstance(dash, dict) and isinstance(dash.get("answers"), dict):
            return {**data, "dash_score": sum(1 for a in dash["answers"].values() if a == "yes")}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Risk:
        version = self.dash.question_set if self.dash is not None else None
        if self.dash is not None and self.dash_score != self.dash.score:
            raise inconsistent(
                "dash_score",
                f"dash_score is {self.dash_score} but {self.dash.score} answers are 'yes'",
            )
        if self.dash_score is None:
            implied = RiskLevel.STANDARD
            basis = "no DASH score"
        else:
            implied = level_for_score(self.dash_score, version=version or DEFAULT_QUESTION_SET)
            basis = f"a DASH score of {self.dash_score}"
        if self.level.rank < implied.rank:
            raise inconsistent(
                "level",
                f"level '{self.level.value}' is below the '{implied.value}' that {basis} gives; "
                "professional judgement may raise a level, never lower it",
            )
        if self.level.rank > implied.rank and self.professional_judgement is None:
            raise inconsistent(
                "professional_judgement",
                f"level '{self.level.value}' is above the '{implied.value}' that {basis} gives: "
                "record the professional judgement that raised it",
            )
        return self

    @property
    def implied_level(self) -> RiskLevel:
        """The level the DASH score alone reaches (standard when there is no score)."""
        if self.dash_score is None:
            return RiskLevel.STANDARD
        if self.dash is not None:
            return self.dash.level
        return level_for_score(self.dash_score)


# --- G7 ---------------------------------------------------------------------------------------


_SPECIAL = classified(DataClass.SPECIAL_CATEGORY)


class SpecialCategory(Frozen):
    """G7: special category data about the victim (UK GDPR Art 9(1)), every field classified.

    Health (mental health, substance use, disability: Art 4(15)), racial or ethnic origin,
    religious or philosophical beliefs, sexual orientation. Gender identity, first language and
    interpreter need are classified too: each can reveal health (gender-affirming care; a first
    language of British Sign Language, an interpreter for deafness) or ethnic origin, and here
    they sit with the rest of the victim's equality data.
    """

    mental_health: LongText | None = Field(default=None, json_schema_extra=_SPECIAL)
    substance_use: LongText | None = Field(default=None, json_schema_extra=_SPECIAL)
    disability: LongText | None = Field(default=None, json_schema_extra=_SPECIAL)
    ethnicity: ShortText | None = Field(default=None, json_schema_extra=_SPECIAL)
    religion_or_belief: ShortText | None = Field(default=None, json_schema_extra=_SPECIAL)
    sexual_orientation: ShortText | None = Field(default=None, json_schema_extra=_SPECIAL)
    gender_identity: ShortText | None = Field(default=None, json_schema_extra=_SPECIAL)
    first_language: ShortText | None = Field(default=None, json_schema_extra=_SPECIAL)
    interpreter_needed: Flag | None = Field(default=None, json_schema_extra=_SPECIAL)


# --- G9 ---------------------------------------------------------------------------------------


class AgencyInvolvement(Frozen):
    """An agency or service already involved; ``agency`` when it is a federation member."""

    service: ShortText = Field(description="What the service is, e.g. 'GP', 'health visitor'")
    agency: AgencyId | None = None


class ActionStatus(StrEnum):
    TAKEN = "taken"
    REQUESTED = "requested"


class Action(Frozen):
    status: ActionStatus
    description: LongText
    by_agency: AgencyId | None = None
    on: Day | None = None


class AgenciesActions(Frozen):
    """G9: who is involved, what has been done, what is asked for."""

    involved: tuple[AgencyInvolvement, ...] = ()
    actions: tuple[Action, ...] = ()


# --- G10 --------------------------------------------------------------------------------------


class Wishes(Frozen):
    """G10: what the victim wants, and the safety plan agreed with them."""

    victim_wishes: LongText | None = None
    safety_plan: LongText | None = None
    support_requested: tuple[ShortText, ...] = ()


# --- the referral -----------------------------------------------------------------------------


class Referral(Frozen):
    """A safeguarding referral as submitted by an agency adapter: field groups G0-G10."""

    header: Header
    victim: Victim
    safe_contact: SafeContact | None = None
    perpetrator: Perpetrator | None = None
    children: tuple[Child, ...] = ()
    incident: Incident
    risk: Risk
    special_category: SpecialCategory | None = None
    consent: Consent | None = None
    agencies_actions: AgenciesActions | None = None
    wishes: Wishes | None = None

    @model_validator(mode="after")
    def _chronology(self) -> Referral:
        created = self.header.created_at
        if self.incident.occurred_at > created + _CLOCK_SKEW:
            raise inconsistent(
                "incident.occurred_at", "the incident is after the referral's header.created_at"
            )
        day = self.incident.occurred_at.date()
        if self.victim.date_of_birth > day:
            raise inconsistent("victim.date_of_birth", "the date of birth is after the incident")
        for i, child in enumerate(self.children):
            if child.date_of_birth > created.date():
                raise inconsistent(
                    f"children.{i}.date_of_birth", "the date of birth is in the future"
                )
        return self

    def group(self, group: FieldGroup) -> object:
        """The value of one field group (None or () when the sender left it out)."""
        return getattr(self, FIELD_GROUPS[group])


#: Group -> the model whose fields the group holds (G4: each child; G8: the consent record).
GROUP_MODELS: Final[Mapping[FieldGroup, type[BaseModel]]] = MappingProxyType(
    {
        FieldGroup.G0: Header,
        FieldGroup.G1: Victim,
        FieldGroup.G2: SafeContact,
        FieldGroup.G3: Perpetrator,
        FieldGroup.G4: Child,
        FieldGroup.G5: Incident,
        FieldGroup.G6: Risk,
        FieldGroup.G7: SpecialCategory,
        FieldGroup.G8: Consent,
        FieldGroup.G9: AgenciesActions,
        FieldGroup.G10: Wishes,
    }
)


def field_classes(group: FieldGroup) -> Mapping[str, DataClass]:
    """Field name -> class, for the classified fields of ``group`` (G6's DASH answers apart:
    ``schemas.dash.dash_question_classes`` classifies them per question)."""
    return model_classes(GROUP_MODELS[group])
