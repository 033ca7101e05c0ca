"""G8, consent and lawful basis: why this sharing is lawful, and who decided when consent is absent.

Legal references are codes, not free text, so policy and audit can match on them:

- UK GDPR Art 6(1)(c) legal obligation, (d) vital interests, (e) public task.
- UK GDPR Art 9(2)(g) substantial public interest, which needs a DPA 2018 Schedule 1 Part 2
  condition (para 10 unlawful acts, para 18 safeguarding of children and individuals at risk),
  and 9(2)(h) health or social care, which needs Schedule 1 para 2.
- UK GDPR Art 10, criminal-offence data, authorised by DPA 2018 s10(5): a condition in Schedule 1
  Part 1, 2 or 3. A Schedule 1 paragraph named for an Art 9 condition meets it as well; to rely
  on a paragraph for criminal-offence data alone, name ``art10_condition`` (``dpa2018_s10_5``).
- DPA 2018 Schedule 8 para 4 (safeguarding) for police law-enforcement processing under Part 3,
  where neither Art 6, Art 9 nor Art 10 applies.
- Statutory gateways: Crime and Disorder Act 1998 s115 (a power to share, not a duty), Health and
  Social Care Act 2012 s251B (duty to share for care; disapplied when the person objects),
  Children Act 1989 s47 and 2004 s11, Domestic Abuse Act 2021 s49A (Operation Encompass).
- Caldicott principles 7 (the duty to share can be as important as the duty to protect
  confidentiality) and 8 (inform patients and service users about how their information is used).

Consent states other than ``obtained`` need an override record
(docs/domain.md#consent-and-overrides).
"""

from __future__ import annotations

import re
import unicodedata
from enum import StrEnum
from typing import Annotated, Any, Final

from pydantic import AfterValidator, Field, model_validator

from schemas.classes import DataClass
from schemas.fields import Flag, Frozen, LongText, inconsistent

__all__ = [
    "SCHEDULE_1_PARAGRAPHS",
    "Art6Basis",
    "Art9Condition",
    "Art10Condition",
    "CaldicottPrinciple",
    "Consent",
    "ConsentOverride",
    "ConsentState",
    "DpaCondition",
    "OverrideReason",
    "RoleCode",
    "StaffId",
    "StatutoryGateway",
    "carries_condition",
    "role_code",
]


class ConsentState(StrEnum):
    OBTAINED = "obtained"
    REFUSED = "refused"
    WITHDRAWN = "withdrawn"
    NOT_SOUGHT_UNSAFE = "not_sought_unsafe"  # asking would put the victim at risk
    CANNOT_BE_GIVEN = "cannot_be_given"  # e.g. lacks capacity, or cannot be contacted in time
    NOT_REQUIRED_STATUTORY = "not_required_statutory"  # a statutory duty applies


class Art6Basis(StrEnum):
    LEGAL_OBLIGATION = "art6_1_c"
    VITAL_INTERESTS = "art6_1_d"
    PUBLIC_TASK = "art6_1_e"


class Art9Condition(StrEnum):
    SUBSTANTIAL_PUBLIC_INTEREST = "art9_2_g"
    HEALTH_OR_SOCIAL_CARE = "art9_2_h"


class Art10Condition(StrEnum):
    """The authority for criminal-offence data (UK GDPR Art 10) when no Art 9 condition is named.

    DPA 2018 s10(5): Art 10 is met by a condition in Schedule 1 Part 1, 2 or 3, named as the
    ``dpa_condition`` beside it.
    """

    DPA2018_S10_5 = "dpa2018_s10_5"


class DpaCondition(StrEnum):
    """The DPA 2018 paragraph relied on for special category or criminal-offence data."""

    SCH1_PARA2_HEALTH_SOCIAL_CARE = "dpa2018_sch1_para2"  # Schedule 1 Part 1
    SCH1_PARA10_UNLAWFUL_ACTS = "dpa2018_sch1_para10"  # Part 2
    SCH1_PARA18_SAFEGUARDING = "dpa2018_sch1_para18"  # Part 2
    SCH8_PARA4_SAFEGUARDING = "dpa2018_sch8_para4"  # police, Part 3 processing


#: The Schedule 1 paragraphs (Parts 1 to 3): each meets Art 10 through s10(5), and Art 9 with
#: the Art 9(2) condition it belongs to.
SCHEDULE_1_PARAGRAPHS: Final[frozenset[DpaCondition]] = frozenset(
    {
        DpaCondition.SCH1_PARA2_HEALTH_SOCIAL_CARE,
        DpaCondition.SCH1_PARA10_UNLAWFUL_ACTS,
        DpaCondition.SCH1_PARA18_SAFEGUARDING,
    }
)


def carries_condition(
    data_class: DataClass,
    *,
    art9: Art9Condition | None,
    art10: Art10Condition | None,
    dpa: DpaCondition | None,
) -> bool:
    """Whether legal codes (already paired as the law requires) let ``data_class`` data leave.

    Special category (Art 9(1)): an Art 9(2) condition (whose Schedule 1 paragraph the pairing
    rules demand), or Schedule 8 for police Part 3 processing. Criminal-offence data (Art 10):
    a Schedule 1 Part 1-3 paragraph, whether named for Art 9 or with ``art10`` (s10(5)), or
    Part 3 processing, to which Art 10 does not apply (DPA 2018 s31, s35).
    """
    if dpa is DpaCondition.SCH8_PARA4_SAFEGUARDING:
        return True
    if data_class is DataClass.SPECIAL_CATEGORY:
        return art9 is not None
    return dpa in SCHEDULE_1_PARAGRAPHS and (art9 is not None or art10 is not None)


class StatutoryGateway(StrEnum):
    CDA_1998_S115 = "cda1998_s115"
    HSCA_2012_S251B = "hsca2012_s251b"
    CA_1989_S47 = "ca1989_s47"
    CA_2004_S11 = "ca2004_s11"
    DAA_2021_S49A = "daa2021_s49a"


class CaldicottPrinciple(StrEnum):
    P7_DUTY_TO_SHARE = "caldicott_7"
    P8_INFORM_EXPECTATIONS = "caldicott_8"


class OverrideReason(StrEnum):
    """The fixed reasons for sharing without consent (docs/domain.md#consent-and-overrides)."""

    RISK_TO_VICTIM = "risk_to_victim"
    RISK_TO_CHILDREN = "risk_to_children"
    PREJUDICE_PROTECTION = "prejudice_protection"  # seeking consent would prejudice protection
    PREVENTION_DETECTION_OF_CRIME = "prevention_detection_of_crime"
    VITAL_INTERESTS = "vital_interests"


# Art 9(2)(g) rests on a Schedule 1 Part 2 condition, 9(2)(h) on Schedule 1 para 2.
_ART9_PARAGRAPHS = {
    Art9Condition.SUBSTANTIAL_PUBLIC_INTEREST: {
        DpaCondition.SCH1_PARA10_UNLAWFUL_ACTS,
        DpaCondition.SCH1_PARA18_SAFEGUARDING,
    },
    Art9Condition.HEALTH_OR_SOCIAL_CARE: {DpaCondition.SCH1_PARA2_HEALTH_SOCIAL_CARE},
}


# A staff or collar number has a digit: that keeps a bare name ("JSmith") out of the field.
_STAFF_ID = re.compile(r"^(?=[A-Za-z_-]*[0-9])[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
_ROLE_CODE = re.compile(r"^[a-z][a-z0-9_]{1,63}$")


def _matching(pattern: re.Pattern[str], problem: str) -> AfterValidator:
    """Refuse what ``pattern`` does not match, saying ``problem`` (never echoing the value)."""

    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise ValueError(problem)
        return value

    return AfterValidator(check)


_STAFF_ID_PROBLEM = (
    "the decision-maker's staff or collar number (up to 32 letters, digits, - or _, with at "
    "least one digit), never their name"
)
_STAFF_ID_DOC = (
    "The agency's staff or collar number of the decision-maker (e.g. KP-1102): up to 32 "
    "letters, digits, - or _, with a digit; never a person's name"
)
_ROLE_PROBLEM = (
    "the decision-maker's role as a code: lower-case letters, digits and _ (for example "
    "detective_sergeant), never their name"
)
_ROLE_DOC = (
    "The decision-maker's role as a code, e.g. detective_sergeant or named_safeguarding_midwife"
)

#: Who decided, as the audit log and the IG view name them: the agency's staff or collar number.
StaffId = Annotated[
    str,
    _matching(_STAFF_ID, _STAFF_ID_PROBLEM),
    Field(description=_STAFF_ID_DOC, json_schema_extra={"pattern": _STAFF_ID.pattern}),
]
#: Their role, as a code the IG view can group by (``role_code`` turns a job title into one).
RoleCode = Annotated[
    str,
    _matching(_ROLE_CODE, _ROLE_PROBLEM),
    Field(description=_ROLE_DOC, json_schema_extra={"pattern": _ROLE_CODE.pattern}),
]


def role_code(title: str) -> str:
    """The role code of a job title, for adapters whose systems record titles.

    "Detective Sergeant, Public Protection Unit" gives
    ``detective_sergeant_public_protection_unit``; a code is returned unchanged. Accents are
    dropped, anything else not a letter or digit becomes one ``_``, and the code is cut to 64
    characters.
    """
    bare = "".join(c for c in unicodedata.normalize("NFKD", title) if not unicodedata.combining(c))
    return re.sub(r"[^a-z0-9]+", "_", bare.casefold()).strip("_")[:64].rstrip("_")


class ConsentOverride(Frozen):
    """The record of a decision to share without the subject's consent.

    The decision-maker is named by staff or collar number and role, never by name: the audit log
    records both (accountability), and the IG view lists who overrode consent.
    """

    decision_maker_id: StaffId
    decision_maker_role: RoleCode
    reason: OverrideReason
    justification: LongText
    subject_told: Flag
    subject_not_told_reason: LongText | None = None
    legal_paragraph: DpaCondition | StatutoryGateway

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        # Earlier referrals named the decision-maker in free text: say what replaced the field
        # rather than refusing it only as an unknown one.
        if isinstance(data, dict) and "decision_maker" in data:
            raise inconsistent(
                "decision_maker",
                "decision_maker is replaced by decision_maker_id: the decision-maker's staff or "
                "collar number, never their name (and decision_maker_role is a role code)",
            )
        return data

    @model_validator(mode="after")
    def _told_or_why_not(self) -> ConsentOverride:
        if not self.subject_told and self.subject_not_told_reason is None:
            raise inconsistent(
                "subject_not_told_reason",
                "say why the subject was not told of the decision to share without consent",
            )
        if self.subject_told and self.subject_not_told_reason is not None:
            raise inconsistent(
                "subject_not_told_reason", "give no reason for not telling when subject_told"
            )
        return self


class Consent(Frozen):
    """G8: the consent state, the lawful basis, and the override record when consent is absent."""

    state: ConsentState
    art6_basis: Art6Basis | None = None
    art9_condition: Art9Condition | None = None
    art10_condition: Art10Condition | None = Field(
        default=None,
        description="Criminal-offence data relied on under DPA 2018 s10(5) with the Schedule 1 "
        "paragraph in dpa_condition; needed only when no art9_condition names that paragraph",
    )
    dpa_condition: DpaCondition | None = None
    statutory_gateway: StatutoryGateway | None = None
    caldicott_principles: tuple[CaldicottPrinciple, ...] = ()
    subject_informed: Flag
    not_informed_reason: LongText | None = None
    override: ConsentOverride | None = None
    objection_to_health_sharing: Flag = Field(
        default=False,
        description="The person has objected to their information being shared for their "
        "health care: the s251B duty to share is then disapplied, and only a safeguarding "
        "override lets it go to a health-care purpose",
    )

    @model_validator(mode="after")
    def _lawful(self) -> Consent:
        part3 = self.dpa_condition is DpaCondition.SCH8_PARA4_SAFEGUARDING
        if part3 and (
            self.art6_basis is not None
            or self.art9_condition is not None
            or self.art10_condition is not None
        ):
            raise inconsistent(
                "dpa_condition",
                "Schedule 8 is for police Part 3 processing, which relies on neither Art 6, Art "
                "9 nor Art 10: leave art6_basis, art9_condition and art10_condition empty, or "
                "use a Schedule 1 paragraph",
            )
        if not part3 and self.art6_basis is None:
            raise inconsistent(
                "art6_basis", "name the UK GDPR Art 6 basis (art6_1_c, art6_1_d or art6_1_e)"
            )
        if self.art10_condition is not None and self.dpa_condition not in SCHEDULE_1_PARAGRAPHS:
            raise inconsistent(
                "dpa_condition",
                f"{self.art10_condition.value} needs the Schedule 1 paragraph relied on: one of "
                f"{', '.join(sorted(p.value for p in SCHEDULE_1_PARAGRAPHS))}",
            )
        if self.art9_condition is not None:
            allowed = _ART9_PARAGRAPHS[self.art9_condition]
            if self.dpa_condition not in allowed:
                raise inconsistent(
                    "dpa_condition",
                    f"{self.art9_condition.value} needs one of "
                    f"{', '.join(sorted(p.value for p in allowed))}",
                )
        elif self.dpa_condition is not None and not part3 and self.art10_condition is None:
            raise inconsistent(
                "art9_condition",
                f"{self.dpa_condition.value} is a condition for an Art 9 basis: name it (or "
                f"art10_condition {Art10Condition.DPA2018_S10_5.value} to rely on it for "
                "criminal-offence data alone)",
            )
        return self

    def carries(self, data_class: DataClass) -> bool:
        """Whether the referral's own basis lets data of ``data_class`` leave (see module doc)."""
        return carries_condition(
            data_class,
            art9=self.art9_condition,
            art10=self.art10_condition,
            dpa=self.dpa_condition,
        )

    @model_validator(mode="after")
    def _override_when_no_consent(self) -> Consent:
        if self.subject_informed and self.not_informed_reason is not None:
            raise inconsistent(
                "not_informed_reason", "give no reason for not informing when subject_informed"
            )
        if not self.subject_informed and self.not_informed_reason is None:
            raise inconsistent(
                "not_informed_reason", "say why the subject was not informed of the referral"
            )
        if self.state is ConsentState.OBTAINED:
            if not self.subject_informed:
                raise inconsistent(
                    "subject_informed", "consent cannot be obtained without informing the subject"
                )
            if self.override is not None:
                raise inconsistent("override", "consent was obtained: there is nothing to override")
        elif self.override is None:
            raise inconsistent(
                "override",
                f"consent is '{self.state.value}': record who decided to share without it, "
                "their role, the reason, the justification and the legal paragraph",
            )
        if self.state is ConsentState.NOT_REQUIRED_STATUTORY and self.statutory_gateway is None:
            raise inconsistent(
                "statutory_gateway", "name the statutory gateway that makes consent unnecessary"
            )
        return self
