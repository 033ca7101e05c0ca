"""What one recipient receives: the part of a submission it may see, and on what basis it got it.

A disclosure carries either a redacted referral or an Operation Encompass notification, never
both. For a notification, ``referral_id`` holds the notification's id: it is the message's
idempotency key either way.

The redacted referral (``DisclosedReferral``) mirrors ``Referral`` group by group, but every
group, and every field inside a group, is optional: a recipient's sharing agreement may allow a
group whole, a named subset of its fields, or nothing. ``groups`` says exactly which groups and
subsets were disclosed, so a recipient can tell "withheld" from "not known". The ``Disclosed*``
models check field types only: the values came from a referral that was validated whole, and
the cross-field checks of ``Referral`` (score agrees with answers, and so on) cannot hold once
fields are withheld.

Special-category and criminal-offence fields (``schemas.classes``) leave only with a matching
condition in the basis relied on. A granted group whose classified fields lack one is sent
without them: its ``GroupShare.withheld`` names them (DASH answers by question topic), always
the same for the same grant and basis, never depending on whether the referral held a value,
so a recipient can tell withheld from not known without learning that there was anything to
withhold. A ``Disclosure`` that carries a classified field without its condition, or a field
its share says was withheld, does not validate.

Every disclosure names the agreement it was made under, the lawful basis (UK GDPR Art 6 / Art 9
with the DPA 2018 paragraph, or a statutory gateway) and the consent basis (the consent state,
and the override reason and paragraph when consent was not obtained), and how long the
recipient may keep it. These are codes, never free text, so audit and IG queries can match them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from typing import Annotated, Literal
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, Field, StringConstraints, model_validator

from schemas.classes import DataClass, classified
from schemas.consent import (
    SCHEDULE_1_PARAGRAPHS,
    Art6Basis,
    Art9Condition,
    Art10Condition,
    CaldicottPrinciple,
    ConsentOverride,
    ConsentState,
    DpaCondition,
    OverrideReason,
    StatutoryGateway,
    carries_condition,
)
from schemas.dash import (
    DashAnswer,
    QuestionId,
    RiskLevel,
    dash_question_classes,
    known_question_sets,
    question_set,
)
from schemas.encompass import EncompassNotification
from schemas.fields import NhsNumber, inconsistent
from schemas.referral import (
    FIELD_GROUPS,
    GROUP_MODELS,
    Address,
    AgenciesActions,
    AgencyId,
    Classification,
    ContactRoute,
    FieldGroup,
    Frozen,
    HousingTenure,
    LongText,
    Pregnancy,
    Priority,
    Purpose,
    Reference,
    Referral,
    Relationship,
    Restriction,
    ShortText,
    SpecialCategory,
    Wishes,
    field_classes,
)

__all__ = [
    "AgreementId",
    "ConsentBasis",
    "Disclosed",
    "DisclosedChild",
    "DisclosedConsent",
    "DisclosedDash",
    "DisclosedHeader",
    "DisclosedIncident",
    "DisclosedPerpetrator",
    "DisclosedReferral",
    "DisclosedRisk",
    "DisclosedSafeContact",
    "DisclosedVictim",
    "Disclosure",
    "Disposal",
    "GroupShare",
    "LawfulBasis",
    "Retention",
    "RetentionStart",
    "ShareScope",
    "SubsetName",
    "Withholding",
]

#: A sharing agreement's id: also its file name under ``deploy/federation/agreements``.
AgreementId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{1,39}$")]
#: A named subset of one field group's fields ("full" is reserved for the whole group).
SubsetName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,39}$")]


# --- the basis of a disclosure -----------------------------------------------------------------


class LawfulBasis(Frozen):
    """A lawful basis a disclosure relies on: the codes of docs/domain.md#legal-codes, as a set.

    In an agreement it is a template: a referral relies on it when its G8 names every code the
    template names. Art 9(2)(g) needs a DPA 2018 Schedule 1 Part 2 paragraph (10 or 18), Art
    9(2)(h) needs Schedule 1 paragraph 2, Art 10 on its own (``art10``, DPA 2018 s10(5)) needs
    a Schedule 1 paragraph, and Schedule 8 paragraph 4 (police Part 3 processing) stands
    without Art 6, 9 or 10, the same pairing rules as ``schemas.consent.Consent``.
    """

    art6: Art6Basis | None = None
    art9: Art9Condition | None = None
    art10: Art10Condition | None = None
    dpa: DpaCondition | None = None
    gateway: StatutoryGateway | None = None

    @model_validator(mode="after")
    def _well_formed(self) -> LawfulBasis:
        if not self.codes:
            raise ValueError("name at least one of art6, art9, art10, dpa or gateway")
        part3 = self.dpa is DpaCondition.SCH8_PARA4_SAFEGUARDING
        if part3 and (self.art6 is not None or self.art9 is not None or self.art10 is not None):
            raise inconsistent("dpa", "Schedule 8 para 4 stands without Art 6, Art 9 or Art 10")
        if self.art10 is not None and self.dpa not in SCHEDULE_1_PARAGRAPHS:
            raise inconsistent(
                "dpa", f"{self.art10.value} needs the DPA 2018 Schedule 1 paragraph relied on"
            )
        if self.art9 is Art9Condition.SUBSTANTIAL_PUBLIC_INTEREST and self.dpa not in (
            DpaCondition.SCH1_PARA10_UNLAWFUL_ACTS,
            DpaCondition.SCH1_PARA18_SAFEGUARDING,
        ):
            raise inconsistent("dpa", "art9_2_g needs dpa2018_sch1_para10 or dpa2018_sch1_para18")
        if (
            self.art9 is Art9Condition.HEALTH_OR_SOCIAL_CARE
            and self.dpa is not DpaCondition.SCH1_PARA2_HEALTH_SOCIAL_CARE
        ):
            raise inconsistent("dpa", "art9_2_h needs dpa2018_sch1_para2")
        if self.art9 is None and self.art10 is None and self.dpa is not None and not part3:
            raise inconsistent(
                "art9", f"{self.dpa.value} is a condition for an Art 9 (or Art 10) basis"
            )
        return self

    @property
    def codes(self) -> tuple[str, ...]:
        """The legal codes, in the order Art 6, Art 9, Art 10, DPA paragraph, gateway."""
        named = (self.art6, self.art9, self.art10, self.dpa, self.gateway)
        return tuple(c.value for c in named if c)

    @property
    def label(self) -> str:
        """The codes joined with '+', e.g. 'art6_1_e+art9_2_g+dpa2018_sch1_para18'."""
        return "+".join(self.codes)

    @property
    def special_category(self) -> bool:
        """Whether it carries a condition for special category data (Art 9, or Schedule 8)."""
        return self.carries(DataClass.SPECIAL_CATEGORY)

    @property
    def criminal_offence(self) -> bool:
        """Whether it carries a condition for criminal-offence data: a Schedule 1 paragraph
        (with Art 9 or Art 10, DPA 2018 s10(5)), or police Part 3 processing (Schedule 8)."""
        return self.carries(DataClass.CRIMINAL_OFFENCE)

    def carries(self, data_class: DataClass) -> bool:
        """Whether data of ``data_class`` may leave on this basis."""
        return carries_condition(data_class, art9=self.art9, art10=self.art10, dpa=self.dpa)


class ConsentBasis(Frozen):
    """The consent state a disclosure rests on, and the override when consent was not obtained."""

    state: ConsentState
    override_reason: OverrideReason | None = None
    override_paragraph: DpaCondition | StatutoryGateway | None = None

    @model_validator(mode="after")
    def _override_only_without_consent(self) -> ConsentBasis:
        if self.state is ConsentState.OBTAINED and self.override_reason is not None:
            raise inconsistent("override_reason", "consent was obtained: nothing was overridden")
        if (self.override_reason is None) != (self.override_paragraph is None):
            raise inconsistent(
                "override_paragraph", "an override names both its reason and its paragraph"
            )
        return self

    @property
    def label(self) -> str:
        """e.g. 'obtained', or 'refused+override:risk_to_children'."""
        if self.override_reason is None:
            return self.state.value
        return f"{self.state.value}+override:{self.override_reason.value}"


class RetentionStart(StrEnum):
    RECEIPT = "receipt"
    CASE_CLOSURE = "case_closure"


class Disposal(StrEnum):
    DESTROY = "destroy"
    REVIEW = "review"


class Retention(Frozen):
    """How long a recipient may keep what it received under an agreement, and what then."""

    years: int = Field(default=0, ge=0, le=100)
    months: int = Field(default=0, ge=0, le=1200)
    days: int = Field(default=0, ge=0, le=36500)
    starts: RetentionStart
    then: Disposal
    note: LongText | None = None

    @model_validator(mode="after")
    def _some_period(self) -> Retention:
        if not (self.years or self.months or self.days):
            raise inconsistent("years", "give a retention period in years, months or days")
        return self

    @property
    def label(self) -> str:
        parts = [
            f"{n} {unit}{'s' if n != 1 else ''}"
            for n, unit in ((self.years, "year"), (self.months, "month"), (self.days, "day"))
            if n
        ]
        starts = self.starts.value.replace("_", " ")
        return f"{' '.join(parts)} from {starts}, then {self.then.value}"


class ShareScope(StrEnum):
    """Which entries of a repeating group a subset keeps, relative to the recipient."""

    OWN_PUPIL = "own_pupil"  # G4: the children (under 18) whose school is the recipient
    HOME_EDUCATED = "home_educated"  # G4: children (under 18) on no school roll
    OWN_AGENCY = "own_agency"  # G9: involvement and actions that name the recipient


class GroupShare(Frozen):
    """One field group as disclosed: the whole group, or a named subset of its fields."""

    group: FieldGroup
    subset: SubsetName | None = Field(default=None, description="null: the whole group")
    fields: tuple[str, ...] = Field(
        default=(), description="For a subset: the group's fields kept (of each entry for G4)"
    )
    dash_topics: tuple[str, ...] = Field(
        default=(), description="For a G6 subset: the DASH question topics whose answers are kept"
    )
    scope: ShareScope | None = None
    withheld: tuple[str, ...] = Field(
        default=(),
        description="Classified fields of the grant kept out for want of a matching condition "
        "in the basis (the same for every referral under this grant and basis); "
        "'dash.<topic>' for the DASH answers of a question topic",
    )

    @model_validator(mode="after")
    def _whole_or_subset(self) -> GroupShare:
        if self.subset is None and (self.fields or self.dash_topics or self.scope is not None):
            raise inconsistent("subset", "name the subset whose fields are listed")
        if self.subset is not None and not self.fields:
            raise inconsistent("fields", "a subset keeps at least one field")
        granted = set(self.fields) if self.subset is not None else set(self.group_fields)
        for entry in self.withheld:
            topic = entry.removeprefix("dash.") if entry.startswith("dash.") else None
            if topic is None and entry not in granted:
                raise inconsistent("withheld", f"{entry} is not a field the share grants")
            if topic is not None and (
                "dash" not in granted or (self.dash_topics and topic not in self.dash_topics)
            ):
                raise inconsistent("withheld", f"{entry}: the share grants no such DASH answers")
        return self

    @property
    def group_fields(self) -> tuple[str, ...]:
        """Every field of the group's model (of each child for G4)."""
        return tuple(GROUP_MODELS[self.group].model_fields)

    @property
    def label(self) -> str:
        """'G4' for the whole group, 'G4.children_basic' for a subset."""
        return self.group.value if self.subset is None else f"{self.group.value}.{self.subset}"

    @property
    def withheld_fields(self) -> frozenset[str]:
        """The group's fields withheld (not the DASH topics)."""
        return frozenset(e for e in self.withheld if not e.startswith("dash."))

    @property
    def withheld_topics(self) -> frozenset[str]:
        """The DASH question topics whose answers are withheld."""
        return frozenset(e.removeprefix("dash.") for e in self.withheld if e.startswith("dash."))

    @property
    def keeps_nothing(self) -> bool:
        """Every field the share grants is withheld: nothing of the group can be sent."""
        granted = self.fields if self.subset is not None else self.group_fields
        return set(granted) <= self.withheld_fields

    def classified(self, version: str | None = None) -> tuple[tuple[str, DataClass], ...]:
        """The classified entries the share grants, with their class: fields, then
        ``dash.<topic>`` for the DASH answers it keeps (of question set ``version``, or of
        every known set)."""
        granted = set(self.fields) if self.subset is not None else None
        out = [
            (name, data_class)
            for name, data_class in field_classes(self.group).items()
            if granted is None or name in granted
        ]
        if self.group is FieldGroup.G6 and (granted is None or "dash" in granted):
            for v in (version,) if version is not None else known_question_sets():
                classes = dash_question_classes(v)
                for q in question_set(v).questions:
                    kept = not self.dash_topics or q.topic in self.dash_topics
                    if q.id in classes and kept:
                        out.append((f"dash.{q.topic}", classes[q.id]))
        return tuple(dict.fromkeys(out))

    def withholding(self, lacking: frozenset[DataClass], version: str) -> Withholding:
        """This share with its entries of the ``lacking`` classes withheld, and what they were.

        Withholding a DASH answer withholds the score too, when the share keeps both: the score
        counts the "yes" answers, so with the others it would give the withheld ones away. When
        every DASH topic a share keeps is withheld, the ``dash`` field goes as well.

        A function of the share's values, ``lacking`` and ``version`` alone (the field classes
        and question sets are package data), so it is worked out once per such triple.
        """
        return _withholding(self, lacking, version)

    def _withholding(self, lacking: frozenset[DataClass], version: str) -> Withholding:
        entries = [(e, c) for e, c in self.classified(version) if c in lacking]
        granted = set(self.fields) if self.subset is not None else set(self.group_fields)
        topics = [e for e, _ in entries if e.startswith("dash.")]
        if topics:
            first = next(c for e, c in entries if e.startswith("dash."))
            if "dash_score" in granted:
                entries.append(("dash_score", first))
            kept = self.dash_topics or tuple(q.topic for q in question_set(version).questions)
            if {f"dash.{t}" for t in kept} <= set(topics):
                entries.append(("dash", first))
        entries = list(dict.fromkeys(entries))
        share = self
        if entries:
            withheld = tuple(dict.fromkeys((*self.withheld, *(e for e, _ in entries))))
            share = GroupShare.model_validate({**self.model_dump(), "withheld": withheld})
        return Withholding(share, tuple(entries))


@functools.lru_cache(maxsize=4096)
def _withholding(share: GroupShare, lacking: frozenset[DataClass], version: str) -> Withholding:
    """``GroupShare.withholding``, remembered by value: equal shares (a frozen model compares
    its fields) under equal bases withhold the same; the result is frozen, safe to share."""
    return share._withholding(lacking, version)


@dataclass(frozen=True)
class Withholding:
    """A share after withholding, and each entry withheld with its class (``GroupShare``)."""

    share: GroupShare
    entries: tuple[tuple[str, DataClass], ...] = ()


# --- the redacted referral ---------------------------------------------------------------------


class Disclosed(Frozen):
    """Base of the redacted group models: no cross-field checks, every field optional."""


class DisclosedHeader(Disclosed):
    referral_id: UUID | None = None
    schema_version: Literal["1.0"] | None = None
    sender_agency: AgencyId | None = None
    sender_officer: Reference | None = None
    recipients: tuple[AgencyId, ...] = ()
    purpose: Purpose | None = None
    priority: Priority | None = None
    classification: Classification | None = None
    police_reference: Reference | None = None
    marac_reference: Reference | None = None
    created_at: AwareDatetime | None = None


class DisclosedVictim(Disclosed):
    given_name: ShortText | None = None
    family_name: ShortText | None = None
    aliases: tuple[ShortText, ...] = ()
    date_of_birth: date | None = None
    nhs_number: NhsNumber | None = None
    address: Address | None = None
    housing_tenure: HousingTenure | None = None
    pregnancy: Pregnancy | None = Field(
        default=None, json_schema_extra=classified(DataClass.SPECIAL_CATEGORY)
    )


class DisclosedSafeContact(Disclosed):
    """G2 as disclosed: only safe routes ever reach a recipient (``broker.policy.redaction``)."""

    routes: tuple[ContactRoute, ...] = ()
    notes: LongText | None = None


class DisclosedPerpetrator(Disclosed):
    given_name: ShortText | None = None
    family_name: ShortText | None = None
    aliases: tuple[ShortText, ...] = ()
    date_of_birth: date | None = None
    relationship: Relationship | None = None
    address: Address | None = None
    bail_and_orders: tuple[Restriction, ...] = Field(
        default=(), json_schema_extra=classified(DataClass.CRIMINAL_OFFENCE)
    )
    criminal_history: LongText | None = Field(
        default=None, json_schema_extra=classified(DataClass.CRIMINAL_OFFENCE)
    )


class DisclosedChild(Disclosed):
    given_name: ShortText | None = None
    family_name: ShortText | None = None
    date_of_birth: date | None = None
    school_agency: AgencyId | None = None
    home_educated: bool | None = None
    present_at_incident: bool | None = None
    where: ShortText | None = None
    voice_of_child: LongText | None = None


class DisclosedIncident(Disclosed):
    occurred_at: AwareDatetime | None = None
    location: ShortText | None = None
    summary: LongText | None = None
    injuries: LongText | None = Field(
        default=None, json_schema_extra=classified(DataClass.SPECIAL_CATEGORY)
    )
    reported_to_police: bool | None = None
    police_attended: bool | None = None


class DisclosedDash(Disclosed):
    """DASH answers as disclosed: all of them, or those of the topics a subset keeps."""

    question_set: str
    answers: dict[QuestionId, DashAnswer] = Field(json_schema_extra={"additionalProperties": False})


class DisclosedRisk(Disclosed):
    level: RiskLevel | None = None
    dash_score: int | None = Field(default=None, ge=0, le=24)
    dash: DisclosedDash | None = None
    professional_judgement: LongText | None = None
    incidents_last_12_months: int | None = Field(default=None, ge=0)


class DisclosedConsent(Disclosed):
    state: ConsentState | None = None
    art6_basis: Art6Basis | None = None
    art9_condition: Art9Condition | None = None
    art10_condition: Art10Condition | None = None
    dpa_condition: DpaCondition | None = None
    statutory_gateway: StatutoryGateway | None = None
    caldicott_principles: tuple[CaldicottPrinciple, ...] = ()
    subject_informed: bool | None = None
    not_informed_reason: LongText | None = None
    override: ConsentOverride | None = None
    objection_to_health_sharing: bool | None = None


class DisclosedReferral(Disclosed):
    """A referral as one recipient receives it: only the groups and fields it may see.

    The header is always present (every agreement grants G0, whole or as a subset); any other
    group is absent (None, or () for children) when it was withheld or the sender left it out.
    """

    header: DisclosedHeader
    victim: DisclosedVictim | None = None
    safe_contact: DisclosedSafeContact | None = None
    perpetrator: DisclosedPerpetrator | None = None
    children: tuple[DisclosedChild, ...] = ()
    incident: DisclosedIncident | None = None
    risk: DisclosedRisk | None = None
    special_category: SpecialCategory | None = None
    consent: DisclosedConsent | None = None
    agencies_actions: AgenciesActions | None = None
    wishes: Wishes | None = None

    @classmethod
    def whole(cls, referral: Referral) -> DisclosedReferral:
        """Every group of ``referral``, unsafe routes included: the sender's own view of it.

        Never what a recipient gets (``broker.policy.redaction.redact`` makes that); adapters use it
        to map a whole referral with the same code that maps a disclosure.
        """
        return cls.model_validate(referral.model_dump())

    def group(self, group: FieldGroup) -> object:
        """The value of one field group (None or () when it was not disclosed)."""
        value: object = getattr(self, FIELD_GROUPS[group])
        return value


# --- the disclosure ----------------------------------------------------------------------------


class Disclosure(Frozen):
    """One message to one recipient: what it may see, and the agreement and basis behind it."""

    referral_id: UUID
    sender_agency: AgencyId
    recipient_agency: AgencyId
    purpose: Purpose
    agreement: AgreementId = Field(description="The sharing agreement the disclosure is made under")
    lawful_basis: LawfulBasis
    consent_basis: ConsentBasis
    groups: tuple[GroupShare, ...] = Field(
        min_length=1, description="Exactly the field groups and subsets disclosed"
    )
    retention: Retention
    referral: DisclosedReferral | None = None
    notification: EncompassNotification | None = None
    acknowledge_by: AwareDatetime | None = Field(
        default=None,
        description=(
            "When the broker expects this recipient's acknowledgement (the start of the school "
            "day for an Encompass notice, the MARAC or high-risk IDVA deadline); none: no "
            "deadline. Past it, unacknowledged, the broker audits it as overdue."
        ),
    )

    @model_validator(mode="after")
    def _exactly_one_message(self) -> Disclosure:
        if (self.referral is None) == (self.notification is None):
            raise ValueError("a disclosure carries exactly one of referral or notification")
        return self

    @model_validator(mode="after")
    def _classified_only_with_condition(self) -> Disclosure:
        """No classified field without its condition, nor any field its share withheld."""
        if self.referral is None:
            return self
        withheld = {s.group: s for s in self.groups if s.withheld}
        for group, name in FIELD_GROUPS.items():
            share = withheld.get(group)
            classes = field_classes(group)
            gone = share.withheld_fields if share is not None else frozenset()
            if not classes and not gone:
                continue  # no field of this group can be classified or withheld
            for model in _models(self.referral.group(group)):
                # Only a classified or withheld field can fail; in field order, as ever.
                for field in (f for f in type(model).model_fields if f in classes or f in gone):
                    value = getattr(model, field)
                    if value in (None, ()):
                        continue
                    data_class = classes.get(field)
                    if data_class is not None and not self.lawful_basis.carries(data_class):
                        raise inconsistent(
                            f"referral.{name}.{field}",
                            f"{data_class.value} data, but the lawful basis lacks its "
                            f"condition: {data_class.condition}",
                        )
                    if field in gone:
                        raise inconsistent(
                            f"referral.{name}.{field}", "the share says this field was withheld"
                        )
        risk = self.referral.risk
        if risk is not None and risk.dash is not None:
            version = risk.dash.question_set
            classes = dash_question_classes(version)
            topics = {q.id: q.topic for q in question_set(version).questions}
            share = withheld.get(FieldGroup.G6)
            for qid in risk.dash.answers:
                data_class = classes.get(qid)
                if data_class is not None and not self.lawful_basis.carries(data_class):
                    raise inconsistent(
                        f"referral.risk.dash.answers.{qid}",
                        f"{data_class.value} data, but the lawful basis lacks its "
                        f"condition: {data_class.condition}",
                    )
                if share is not None and topics.get(qid) in share.withheld_topics:
                    raise inconsistent(
                        f"referral.risk.dash.answers.{qid}",
                        "the share says this DASH answer was withheld",
                    )
        return self


def _models(value: object) -> tuple[BaseModel, ...]:
    """A disclosed group's entries: one model, or one per child."""
    models = value if isinstance(value, tuple) else (value,) if value is not None else ()
    return tuple(m for m in models if isinstance(m, BaseModel))
