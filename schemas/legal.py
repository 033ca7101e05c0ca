"""The words of the law: each legal code, field group, role, consent state and reason in words.

Pure data. The codes are those of ``schemas.consent`` (docs/domain.md#legal-codes); each legal
code carries its citation (statute and section, or schedule paragraph) and what it is in
words, which the rule sentences of ``broker.policy.rules`` are made of. Never personal data:
only codes and words.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from schemas.consent import ConsentState, OverrideReason
from schemas.disclosure import ShareScope
from schemas.federation import AgencyRole
from schemas.marac import MaracCriterion
from schemas.referral import FieldGroup, Purpose

__all__ = [
    "CRITERION_WORDS",
    "GROUP_NAMES",
    "LEGAL_CODES",
    "OVERRIDE_WORDS",
    "PURPOSE_WORDS",
    "ROLE_WORDS",
    "SCOPE_WORDS",
    "STATE_CITES",
    "STATE_WORDS",
]

#: Legal code -> (citation, what it is in words). The codes of schemas.consent.
LEGAL_CODES: Final[Mapping[str, tuple[str, str]]] = {
    "art6_1_c": ("UK GDPR Art 6(1)(c)", "a legal obligation"),
    "art6_1_d": ("UK GDPR Art 6(1)(d)", "the vital interests of a person"),
    "art6_1_e": ("UK GDPR Art 6(1)(e)", "a task carried out in the public interest"),
    "art9_2_g": ("UK GDPR Art 9(2)(g)", "substantial public interest for special category data"),
    "art9_2_h": ("UK GDPR Art 9(2)(h)", "health or social care for special category data"),
    "dpa2018_sch1_para2": ("DPA 2018 s10(2), Sch 1 para 2", "the health or social care condition"),
    "dpa2018_sch1_para10": (
        "DPA 2018 s10(3), Sch 1 para 10",
        "preventing or detecting unlawful acts",
    ),
    "dpa2018_sch1_para18": (
        "DPA 2018 s10(3), Sch 1 para 18",
        "safeguarding of children and of individuals at risk",
    ),
    "dpa2018_s10_5": (
        "DPA 2018 s10(5)",
        "a Schedule 1 condition authorising criminal-offence data (UK GDPR Art 10)",
    ),
    "dpa2018_sch8_para4": (
        "DPA 2018 s35(5), Sch 8 para 4",
        "safeguarding, for police law-enforcement processing under Part 3",
    ),
    "cda1998_s115": (
        "Crime and Disorder Act 1998 s115",
        "the power (not a duty) to share to prevent crime and disorder",
    ),
    "hsca2012_s251b": (
        "Health and Social Care Act 2012 s251B",
        "the duty to share for a person's care, which does not apply when the person objects",
    ),
    "ca1989_s47": (
        "Children Act 1989 s47",
        "enquiries into a child suspected to be suffering significant harm",
    ),
    "ca2004_s11": (
        "Children Act 2004 s11",
        "the duty to safeguard and promote the welfare of children",
    ),
    "daa2021_s49a": (
        "Domestic Abuse Act 2021 s49A",
        "the police duty to tell a child's school (Operation Encompass)",
    ),
}

#: Field group -> what it holds (docs/domain.md#field-groups).
GROUP_NAMES: Final[Mapping[FieldGroup, str]] = {
    FieldGroup.G0: "header",
    FieldGroup.G1: "victim identity",
    FieldGroup.G2: "safe contact",
    FieldGroup.G3: "perpetrator",
    FieldGroup.G4: "children and dependants",
    FieldGroup.G5: "incident",
    FieldGroup.G6: "risk",
    FieldGroup.G7: "special category",
    FieldGroup.G8: "consent and lawful basis",
    FieldGroup.G9: "agencies and actions",
    FieldGroup.G10: "wishes and safety plan",
}

PURPOSE_WORDS: Final[Mapping[Purpose, str]] = {
    Purpose.MARAC: "a MARAC (multi-agency risk assessment conference) referral",
    Purpose.IDVA: "a referral to an independent domestic violence adviser (IDVA)",
    Purpose.ENCOMPASS: "an Operation Encompass notification",
    Purpose.CHILD_SAFEGUARDING: "safeguarding children",
    Purpose.HEALTH_SAFEGUARDING: "health safeguarding",
    Purpose.HOUSING: "housing the victim safely",
    Purpose.PERPETRATOR_MANAGEMENT: "managing the perpetrator",
}

ROLE_WORDS: Final[Mapping[AgencyRole, str]] = {  # with the article, to read in a sentence
    AgencyRole.POLICE: "a police force",
    AgencyRole.NHS_SAFEGUARDING: "an NHS safeguarding lead",
    AgencyRole.IDVA: "an IDVA service",
    AgencyRole.CHILDRENS_SOCIAL_CARE: "a children's social care service",
    AgencyRole.SCHOOL: "a school (its designated safeguarding lead)",
    AgencyRole.HOUSING: "a housing service",
    AgencyRole.PROBATION: "a probation service",
    AgencyRole.MARAC_COORDINATOR: "a MARAC coordinator",
}

_CONFIDENCE = "common-law public-interest exception to confidence; Caldicott principle 7"
#: Consent state -> what rests on it when consent was not obtained.
STATE_CITES: Final[Mapping[ConsentState, str]] = {
    ConsentState.REFUSED: _CONFIDENCE,
    ConsentState.WITHDRAWN: _CONFIDENCE,
    ConsentState.NOT_SOUGHT_UNSAFE: f"{_CONFIDENCE}; DPA 2018 Sch 1 para 18(2)(c)",
    ConsentState.CANNOT_BE_GIVEN: f"{_CONFIDENCE}; DPA 2018 Sch 1 para 18(2)(a)",
    ConsentState.OBTAINED: "common-law duty of confidence; Caldicott principle 8",
    ConsentState.NOT_REQUIRED_STATUTORY: "UK GDPR Art 6(1)(c); the statutory gateway named",
}
STATE_WORDS: Final[Mapping[ConsentState, str]] = {
    ConsentState.OBTAINED: "obtained",
    ConsentState.REFUSED: "refused",
    ConsentState.WITHDRAWN: "withdrawn",
    ConsentState.NOT_SOUGHT_UNSAFE: "not sought, because asking would be unsafe",
    ConsentState.CANNOT_BE_GIVEN: "impossible to give (no capacity, or no contact in time)",
    ConsentState.NOT_REQUIRED_STATUTORY: "not required, because a statute requires the sharing",
}

#: Override reason -> (in words, what it rests on).
OVERRIDE_WORDS: Final[Mapping[OverrideReason, tuple[str, str]]] = {
    OverrideReason.RISK_TO_VICTIM: (
        "the victim is at risk of serious harm",
        "DPA 2018 Sch 1 para 18; common-law public-interest exception to confidence",
    ),
    OverrideReason.RISK_TO_CHILDREN: (
        "children are at risk of harm",
        "DPA 2018 Sch 1 para 18; Children Act 2004 s11",
    ),
    OverrideReason.PREJUDICE_PROTECTION: (
        "seeking consent would prejudice the victim's protection",
        "DPA 2018 Sch 1 para 18(2)(c)",
    ),
    OverrideReason.PREVENTION_DETECTION_OF_CRIME: (
        "sharing is needed to prevent or detect crime",
        "DPA 2018 Sch 1 para 10; Crime and Disorder Act 1998 s115 (a power, not a duty)",
    ),
    OverrideReason.VITAL_INTERESTS: (
        "a person's life is at risk",
        "UK GDPR Art 6(1)(d), Art 9(2)(c)",
    ),
}

CRITERION_WORDS: Final[Mapping[MaracCriterion, str]] = {
    MaracCriterion.VISIBLE_HIGH_RISK: "visible high risk (14 or more 'yes' answers on the DASH "
    "checklist)",
    MaracCriterion.PROFESSIONAL_JUDGEMENT: "professional judgement (a professional judged the "
    "case high risk and recorded why)",
    MaracCriterion.POTENTIAL_ESCALATION: "potential escalation (at least the area's number of "
    "police-reported incidents in 12 months: 3 or more unless the area sets otherwise)",
}

SCOPE_WORDS: Final[Mapping[ShareScope, str]] = {
    ShareScope.OWN_PUPIL: "only the children who are pupils of the receiving school",
    ShareScope.HOME_EDUCATED: "only the children with no school (home-educated or off roll)",
    ShareScope.OWN_AGENCY: "only the involvement and the actions that name the recipient",
}
