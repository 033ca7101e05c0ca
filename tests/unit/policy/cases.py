"""Builders for the policy tests: the development federation, its agreements, and referrals.

Everything here is fictional (see deploy/federation/samples/README.md). ``full_referral`` fills
every field of every group, so a field missing from a disclosure was withheld, not left out.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from broker.federation import load_federation
from broker.policy.agreements import AGREEMENTS_DIR, Agreement, load_agreements
from broker.policy.calendar import CALENDAR_FILE, SchoolCalendar, load_calendar
from broker.policy.decide import Decision, decide
from broker.policy.redaction import redact
from schemas.disclosure import DisclosedReferral, Disclosure
from schemas.encompass import EncompassNotification
from schemas.federation import Federation
from schemas.referral import Referral
from tests.samples import FEDERATION_DIR, SAMPLES

FEDERATION: Federation = load_federation(FEDERATION_DIR)
AGREEMENTS: tuple[Agreement, ...] = load_agreements(FEDERATION_DIR / AGREEMENTS_DIR)
CALENDAR: SchoolCalendar = load_calendar(FEDERATION_DIR / CALENDAR_FILE)
#: A fixed clock: Thursday 26 November 2026, 09:00 UTC, after every sample was made.
NOW = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)

UNSAFE_LANDLINE = "01632 960001"


def sample_dict(name: str = "referral-high-risk.json") -> dict[str, Any]:
    data: dict[str, Any] = json.loads((SAMPLES / name).read_text(encoding="utf-8"))
    return data


def full_referral_data() -> dict[str, Any]:
    """The high-risk sample with every field of every group filled in (all fictional)."""
    data = sample_dict()
    data["header"]["referral_id"] = str(uuid.uuid4())
    data["header"]["marac_reference"] = "MARAC/2026/0117"
    data["victim"]["housing_tenure"] = "social_rented"
    data["victim"]["pregnancy"] = {"pregnant": False, "birth_in_last_18_months": True}
    data["perpetrator"]["aliases"] = ["Mock Fakeley"]
    data["perpetrator"]["address"] = {
        "lines": ["Flat 2, 40 Nowhere Street", "Kelderton"],
        "postcode": "ZZ99 3CZ",
    }
    data["children"][0]["home_educated"] = False
    data["children"].append(
        {
            "given_name": "Wren",
            "family_name": "Fictitia",
            "date_of_birth": "2024-05-01",
            "home_educated": False,
            "present_at_incident": False,
            "where": "Asleep in the front bedroom",
            "voice_of_child": "Too young to say.",
        }
    )
    data["risk"]["professional_judgement"] = "Escalating control since separation (fictional)."
    data["special_category"] = {
        "mental_health": "Anxiety; under the care of her GP.",
        "substance_use": "None disclosed.",
        "disability": "Partial hearing loss in the left ear.",
        "ethnicity": "White British",
        "religion_or_belief": "None",
        "sexual_orientation": "Heterosexual",
        "gender_identity": "Woman",
        "first_language": "English",
        "interpreter_needed": False,
    }
    data["consent"]["caldicott_principles"] = ["caldicott_7", "caldicott_8"]
    data["agencies_actions"] = {
        "involved": [
            {"service": "Police", "agency": "kelder-police"},
            {"service": "Emergency Department", "agency": "kelder-nhs"},
            {"service": "Housing officer", "agency": "kelder-housing"},
            {"service": "Offender manager", "agency": "kelder-probation"},
            {"service": "GP"},
        ],
        "actions": [
            {
                "status": "taken",
                "description": "Suspect arrested and bailed with conditions.",
                "by_agency": "kelder-police",
                "on": "2026-11-25",
            },
            {
                "status": "requested",
                "description": "IDVA contact within one working day.",
                "by_agency": "kelder-idva",
            },
            {
                "status": "requested",
                "description": "Flag the victim's hospital record.",
                "by_agency": "kelder-nhs",
            },
            {
                "status": "requested",
                "description": "Assess for a management transfer.",
                "by_agency": "kelder-housing",
            },
            {
                "status": "requested",
                "description": "Review licence conditions.",
                "by_agency": "kelder-probation",
            },
        ],
    }
    return data


ENCOMPASS_CONSENT: dict[str, Any] = {
    "state": "not_required_statutory",
    "art6_basis": "art6_1_c",
    "statutory_gateway": "daa2021_s49a",
    "subject_informed": False,
    "not_informed_reason": "Operation Encompass: the statute applies; parents are not approached.",
    "override": {
        "decision_maker_id": "KP-4471",
        "decision_maker_role": "police_constable",
        "reason": "risk_to_children",
        "justification": "Statutory Operation Encompass notification (s49A).",
        "subject_told": False,
        "subject_not_told_reason": "The school must not approach the parents about it.",
        "legal_paragraph": "daa2021_s49a",
    },
}
#: G8 of an Encompass referral to children's social care, for a child on no school roll: s49A
#: names schools, so it rests on the safeguarding basis and the Children Act 2004 s11 duty.
ENCOMPASS_CSC_CONSENT: dict[str, Any] = {
    **ENCOMPASS_CONSENT,
    "art6_basis": "art6_1_e",
    "art9_condition": "art9_2_g",
    "dpa_condition": "dpa2018_sch1_para18",
    "statutory_gateway": "ca2004_s11",
    "override": {
        **ENCOMPASS_CONSENT["override"],
        "justification": "A child on no school roll: children's social care is told instead.",
        "legal_paragraph": "dpa2018_sch1_para18",
    },
}


def referral(
    purpose: str = "MARAC",
    recipients: Sequence[str] = ("kelder-marac",),
    sender: str = "kelder-police",
    *,
    consent: Mapping[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    **changes: Any,
) -> Referral:
    """A full referral addressed as given; ``consent`` replaces G8, ``changes`` whole groups."""
    body = copy.deepcopy(data) if data is not None else full_referral_data()
    body["header"].update(
        {"purpose": purpose, "recipients": list(recipients), "sender_agency": sender}
    )
    if consent is not None:
        body["consent"] = dict(consent)
    if purpose == "ENCOMPASS" and consent is None:
        to_csc = list(recipients) == ["kelder-csc"]
        body["consent"] = copy.deepcopy(ENCOMPASS_CSC_CONSENT if to_csc else ENCOMPASS_CONSENT)
    body.update(changes)
    return Referral.model_validate(body)


def notification(**header: Any) -> EncompassNotification:
    data = sample_dict("encompass-notification.json")
    data["header"].update(header)
    return EncompassNotification.model_validate(data)


def decisions(
    message: Referral | EncompassNotification,
    *,
    agreements: Sequence[Agreement] = AGREEMENTS,
    now: datetime = NOW,
    calendar: SchoolCalendar = CALENDAR,
    federation: Federation = FEDERATION,
) -> list[Decision]:
    return decide(
        message,
        federation,
        agreements=agreements,
        now=now,
        max_recipients=16,
        calendar=calendar,
    )


def one(message: Referral | EncompassNotification, **kw: Any) -> Decision:
    (decision,) = decisions(message, **kw)
    return decision


def disclosed(message: Referral, decision: Decision) -> DisclosedReferral:
    """What the recipient of ``decision`` receives of ``message`` (a redacted referral)."""
    out = redact(message, decision)
    assert isinstance(out, DisclosedReferral)
    return out


def disclosure(message: Referral, decision: Decision) -> Disclosure:
    """The disclosure the broker would seal for ``decision``'s recipient (before sealing)."""
    assert decision.agreement is not None
    assert decision.lawful_basis is not None
    assert decision.consent_basis is not None
    assert decision.retention is not None
    return Disclosure(
        referral_id=message.header.referral_id,
        sender_agency=message.header.sender_agency,
        recipient_agency=decision.recipient,
        purpose=message.header.purpose,
        agreement=decision.agreement,
        lawful_basis=decision.lawful_basis,
        consent_basis=decision.consent_basis,
        groups=decision.groups,
        retention=decision.retention,
        referral=disclosed(message, decision),
    )


def strings(node: Any) -> list[str]:
    """Every string in a JSON-ready value, keys included."""
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in (k, *strings(v))]
    if isinstance(node, list):
        return [s for v in node for s in strings(v)]
    return [node] if isinstance(node, str) else []


def consent(
    state: str = "obtained", reason: str = "risk_to_victim", **changes: Any
) -> dict[str, Any]:
    """A G8 in ``state`` (with an override for ``reason`` when not obtained), as JSON data."""
    data: dict[str, Any] = {
        "state": state,
        "art6_basis": "art6_1_e",
        "art9_condition": "art9_2_g",
        "dpa_condition": "dpa2018_sch1_para18",
        "statutory_gateway": "cda1998_s115",
        "subject_informed": True,
    }
    if state != "obtained":
        data["override"] = {
            "decision_maker_id": "KP-1102",
            "decision_maker_role": "detective_sergeant",
            "reason": reason,
            "justification": "High risk; sharing is necessary and proportionate (fictional).",
            "subject_told": True,
            "legal_paragraph": "dpa2018_sch1_para18",
        }
    data.update(changes)
    return data


def agreement(agreement_id: str) -> Agreement:
    return next(a for a in AGREEMENTS if a.id == agreement_id)


def edited(agreement_id: str, edit: Any) -> tuple[Agreement, ...]:
    """The development agreements with one changed: ``edit`` changes its dumped data in place."""
    data = agreement(agreement_id).model_dump(mode="json")
    edit(data)
    changed = Agreement.model_validate(data)
    return tuple(changed if a.id == agreement_id else a for a in AGREEMENTS)
