"""The identifiers, code systems and extensions of Cairn's FHIR R4 safeguarding-referral bundle.

UK Core and HL7 systems are used where one exists (the NHS number, v3 RoleCode, risk
probability, consent scope); Cairn's own concepts (purpose codes, legal-basis codes, DASH answer
codes, field-group extensions) live under ``https://fhir.cairn.example``, a reserved example
domain standing in for the partnership's canonical base until it registers one.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final

from schemas.consent import (
    Art6Basis,
    Art9Condition,
    Art10Condition,
    CaldicottPrinciple,
    ConsentState,
    DpaCondition,
    StatutoryGateway,
)
from schemas.referral import ContactKind, Priority, RiskLevel

__all__ = [
    "AGENCY_SYSTEM",
    "CAIRN",
    "CHILD_ROLE",
    "CONSENT_CATEGORY",
    "CONSENT_SCOPE",
    "CONSENT_STATUS",
    "CONTACT_SYSTEM",
    "DASH_ANSWER_SYSTEM",
    "DASH_QUESTIONNAIRE",
    "EXT",
    "FIELD_GROUP_EXTENSION",
    "LEGAL_CODES",
    "MARAC_REFERENCE_SYSTEM",
    "NHS_NUMBER_SYSTEM",
    "POLICE_REFERENCE_SYSTEM",
    "PRIORITY",
    "PURPOSE_SYSTEM",
    "RISK_PROBABILITY",
    "RISK_PROBABILITY_SYSTEM",
    "ROLE_CODE_SYSTEM",
    "SECURITY_SYSTEM",
    "STAFF_NUMBER_SYSTEM",
    "URI_SYSTEM",
    "legal_uri",
]

CAIRN: Final = "https://fhir.cairn.example"

# --- identifier systems ---
NHS_NUMBER_SYSTEM: Final = "https://fhir.nhs.uk/Id/nhs-number"  # UK Core
URI_SYSTEM: Final = "urn:ietf:rfc:3986"  # identifier value is a URI (urn:uuid:...)
AGENCY_SYSTEM: Final = f"{CAIRN}/Id/agency"
STAFF_NUMBER_SYSTEM: Final = f"{CAIRN}/Id/staff-number"
POLICE_REFERENCE_SYSTEM: Final = f"{CAIRN}/Id/police-reference"
MARAC_REFERENCE_SYSTEM: Final = f"{CAIRN}/Id/marac-reference"

# --- code systems ---
PURPOSE_SYSTEM: Final = f"{CAIRN}/CodeSystem/referral-purpose"
DASH_ANSWER_SYSTEM: Final = f"{CAIRN}/CodeSystem/dash-answer"
SECURITY_SYSTEM: Final = f"{CAIRN}/CodeSystem/classification"
ROLE_CODE_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
CHILD_ROLE: Final = "CHILD"
RISK_PROBABILITY_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/risk-probability"
CONSENT_SCOPE: Final = {
    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
    "code": "patient-privacy",
}
CONSENT_CATEGORY: Final = {"system": "http://loinc.org", "code": "59284-0"}
DASH_QUESTIONNAIRE: Final = f"{CAIRN}/Questionnaire/dash"  # |<question set version>


class _Extensions:
    """Extension URLs (StructureDefinitions under the Cairn base)."""

    base = f"{CAIRN}/StructureDefinition/"
    housing_tenure = base + "housing-tenure"
    pregnancy = base + "pregnancy"
    contact_route = base + "contact-route"  # on a safe Patient.telecom
    unsafe_contact_route = base + "unsafe-contact-route"  # on Patient, never in telecom
    safe_contact_notes = base + "safe-contact-notes"
    child_details = base + "child-details"
    incident = base + "incident"
    sender_officer = base + "sender-officer"
    consent_state = base + "consent-state"
    subject_informed = base + "subject-informed"
    consent_override = base + "consent-override"
    dash_score = base + "dash-score"
    incidents_last_12_months = base + "incidents-last-12-months"
    field_group = base + "field-group"


EXT: Final = _Extensions()
FIELD_GROUP_EXTENSION: Final = EXT.field_group

# --- value maps (Cairn -> FHIR; the inverse is taken where needed) ---
PRIORITY: Final = MappingProxyType(
    {Priority.ROUTINE: "routine", Priority.URGENT: "urgent", Priority.IMMEDIATE: "stat"}
)
RISK_PROBABILITY: Final = MappingProxyType(
    {RiskLevel.STANDARD: "low", RiskLevel.MEDIUM: "moderate", RiskLevel.HIGH: "high"}
)
# Consent.status can say only part of the state (there is no FHIR status for "shared without
# consent under an override"); the consent-state extension carries the exact state.
CONSENT_STATUS: Final = MappingProxyType(
    {
        ConsentState.OBTAINED: "active",
        ConsentState.REFUSED: "rejected",
        ConsentState.WITHDRAWN: "inactive",
        ConsentState.NOT_SOUGHT_UNSAFE: "proposed",
        ConsentState.CANNOT_BE_GIVEN: "proposed",
        ConsentState.NOT_REQUIRED_STATUTORY: "proposed",
    }
)
CONTACT_SYSTEM: Final = MappingProxyType(
    {
        ContactKind.PHONE: "phone",
        ContactKind.SMS: "sms",
        ContactKind.EMAIL: "email",
        ContactKind.POST: "other",
        ContactKind.VIA_THIRD_PARTY: "other",
    }
)

#: Every legal-reference code Cairn uses, each carried as one Consent.policy uri.
LEGAL_CODES: Final = frozenset(
    c.value
    for enum in (
        Art6Basis,
        Art9Condition,
        Art10Condition,
        DpaCondition,
        StatutoryGateway,
        CaldicottPrinciple,
    )
    for c in enum
)


def legal_uri(code: str) -> str:
    """The Consent.policy uri of a legal-reference code."""
    return f"{CAIRN}/legal-basis/{code}"
