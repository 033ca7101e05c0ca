"""Consent and lawful basis (G8) of an NHS referral bundle, from its Consent resource.

Each legal code is one ``Consent.policy`` uri (``codes.legal_uri``); the consent state, whether
the subject was informed and the override record are Cairn extensions.
"""

from __future__ import annotations

from typing import Any, Final

from fhir.resources.R4B.consent import Consent as FhirConsent

from adapters.nhs.codes import EXT, LEGAL_CODES, legal_uri
from adapters.nhs.walker import BundleWalker, refuse
from schemas.consent import (
    Art6Basis,
    Art9Condition,
    Art10Condition,
    CaldicottPrinciple,
    DpaCondition,
    StatutoryGateway,
    role_code,
)

__all__ = ["map_consent"]


def _role(title: object) -> object:
    # NHS systems record a job title ("Named nurse for safeguarding adults"); Cairn keeps a code.
    return role_code(title) if isinstance(title, str) else title


#: The G8 field each kind of legal code fills; Caldicott principles are a list of their own.
_LEGAL_SLOTS: Final[tuple[tuple[str, type[Any]], ...]] = (
    ("art6_basis", Art6Basis),
    ("art9_condition", Art9Condition),
    ("art10_condition", Art10Condition),
    ("dpa_condition", DpaCondition),
    ("statutory_gateway", StatutoryGateway),
)


def map_consent(
    w: BundleWalker, i: int, consent: FhirConsent, patient_index: int
) -> dict[str, Any]:
    path = w.path(i)
    w.origins["consent"] = path
    w.check_extensions(
        consent, {EXT.consent_state, EXT.subject_informed, EXT.consent_override}, path
    )
    w.points_at(consent.patient, patient_index, f"{path}.patient")
    state = w.extension(consent, EXT.consent_state, path)
    if state is None:
        refuse(f"{path}.extension", f"needs the {EXT.consent_state} extension")
    w.origins["consent.state"] = f"{path}.extension[{state[0]}]"
    out: dict[str, Any] = {"state": state[1].valueCode, "caldicott_principles": []}
    by_uri = {legal_uri(code): code for code in LEGAL_CODES}
    for j, policy in enumerate(consent.policy or []):
        code = by_uri.get(policy.uri or "")
        if code is None:
            refuse(f"{path}.policy[{j}].uri", "not a legal basis Cairn knows")
        if code in {c.value for c in CaldicottPrinciple}:
            out["caldicott_principles"].append(code)
            continue
        slot = next(s for s, enum in _LEGAL_SLOTS if code in {c.value for c in enum})
        if slot in out:
            refuse(f"{path}.policy[{j}]", f"a second {slot.replace('_', ' ')}")
        out[slot] = code
        w.origins[f"consent.{slot}"] = f"{path}.policy[{j}]"
    informed = w.extension(consent, EXT.subject_informed, path)
    if informed is None:
        refuse(f"{path}.extension", f"needs the {EXT.subject_informed} extension")
    where = f"{path}.extension[{informed[0]}]"
    parts = w.parts(informed[1], where, {"informed", "reason"})
    out["subject_informed"] = parts.get("informed")
    out["not_informed_reason"] = parts.get("reason")
    w.origins["consent.subject_informed"] = where
    w.origins["consent.not_informed_reason"] = where
    override = w.extension(consent, EXT.consent_override, path)
    if override is not None:
        where = f"{path}.extension[{override[0]}]"
        names = {
            "decisionMaker",
            "decisionMakerRole",
            "reason",
            "justification",
            "subjectTold",
            "subjectNotToldReason",
            "legalParagraph",
        }
        parts = w.parts(override[1], where, names)
        paragraph = by_uri.get(parts.get("legalParagraph") or "")
        out["override"] = {
            "decision_maker_id": parts.get("decisionMaker"),
            "decision_maker_role": _role(parts.get("decisionMakerRole")),
            "reason": parts.get("reason"),
            "justification": parts.get("justification"),
            "subject_told": parts.get("subjectTold"),
            "subject_not_told_reason": parts.get("subjectNotToldReason"),
            "legal_paragraph": paragraph,
        }
        w.origins["consent.override"] = where
    return out
