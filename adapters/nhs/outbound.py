"""Referral or disclosure to a FHIR R4 Bundle an NHS trust's systems can file.

The bundle is a ``collection`` of Patient (the victim, with safe contact routes), RelatedPerson
(each child), ServiceRequest (the referral and incident), Consent (lawful basis and any
override), QuestionnaireResponse (DASH answers) and RiskAssessment (level, judgement). Field
groups without a natural FHIR home (G3 perpetrator, G7 special category, G9 agencies and actions,
G10 wishes) travel as JSON attachments in a ``field-group`` extension on the ServiceRequest, so
nothing the disclosure carries is dropped. Unsafe contact routes are never put in
``Patient.telecom``, where a system ignoring extensions might use them, but only in an
``unsafe-contact-route`` extension. Full URLs are name-based UUIDs of the referral id, so the
same disclosure always yields the same bundle.

A disclosure carries a redacted referral (``DisclosedReferral``): only the groups and fields the
trust's sharing agreement allows. The mapping maps what is present and leaves out what is not;
a whole referral is mapped through the same code (``DisclosedReferral.whole``).

Every bundle is validated with the ``fhir.resources`` models before it is returned.
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from pydantic import BaseModel, ValidationError

from adapters.nhs.codes import (
    AGENCY_SYSTEM,
    CHILD_ROLE,
    CONSENT_CATEGORY,
    CONSENT_SCOPE,
    CONSENT_STATUS,
    CONTACT_SYSTEM,
    DASH_ANSWER_SYSTEM,
    DASH_QUESTIONNAIRE,
    EXT,
    MARAC_REFERENCE_SYSTEM,
    NHS_NUMBER_SYSTEM,
    POLICE_REFERENCE_SYSTEM,
    PRIORITY,
    PURPOSE_SYSTEM,
    RISK_PROBABILITY,
    RISK_PROBABILITY_SYSTEM,
    ROLE_CODE_SYSTEM,
    SECURITY_SYSTEM,
    STAFF_NUMBER_SYSTEM,
    URI_SYSTEM,
    legal_uri,
)
from schemas.consent import ConsentState
from schemas.dash import question_set
from schemas.disclosure import DisclosedChild, DisclosedConsent, DisclosedReferral, Disclosure
from schemas.referral import (
    FIELD_GROUPS,
    Classification,
    ContactRoute,
    FieldGroup,
    Purpose,
    Referral,
)

__all__ = ["ATTACHED_GROUPS", "disclosure_to_bundle", "full_url", "referral_to_bundle"]

#: Field groups carried as JSON attachments rather than mapped to FHIR elements.
ATTACHED_GROUPS = (FieldGroup.G3, FieldGroup.G7, FieldGroup.G9, FieldGroup.G10)


def full_url(referral_id: uuid.UUID, name: str) -> str:
    """The entry fullUrl of resource ``name`` (e.g. 'Patient', 'RelatedPerson/1')."""
    return f"urn:uuid:{uuid.uuid5(referral_id, name)}"


def disclosure_to_bundle(disclosure: Disclosure) -> dict[str, Any]:
    """The FHIR R4 Bundle (JSON-ready dict) of what the NHS trust received, and only that."""
    if disclosure.referral is None:
        # Encompass notices go to schools and children's social care, never to a trust.
        raise ValueError("only referrals map to a FHIR Bundle; this disclosure is a notification")
    return _bundle(
        disclosure.referral,
        referral_id=disclosure.referral_id,
        purpose=disclosure.purpose,
        consent_state=disclosure.consent_basis.state,
    )


def referral_to_bundle(referral: Referral) -> dict[str, Any]:
    """The FHIR R4 Bundle (JSON-ready dict) of a whole referral, validated with fhir.resources."""
    return _bundle(
        DisclosedReferral.whole(referral),
        referral_id=referral.header.referral_id,
        purpose=referral.header.purpose,
        consent_state=None,
    )


def _bundle(
    referral: DisclosedReferral,
    *,
    referral_id: uuid.UUID,
    purpose: Purpose,
    consent_state: ConsentState | None,
) -> dict[str, Any]:
    rid = referral_id
    header = referral.header
    patient_url = full_url(rid, "Patient")
    entries: list[dict[str, Any]] = [{"fullUrl": patient_url, "resource": _patient(referral)}]
    for i, child in enumerate(referral.children):
        entries.append(
            {"fullUrl": full_url(rid, f"RelatedPerson/{i}"), "resource": _child(child, patient_url)}
        )
    entries.append(
        {
            "fullUrl": full_url(rid, "ServiceRequest"),
            "resource": _service_request(referral, rid, purpose),
        }
    )
    consent = referral.consent
    # A disclosure with only the legal-basis codes of G8 still has a consent state: the basis
    # the broker recorded for it.
    state = consent.state if consent is not None and consent.state else consent_state
    if consent is not None and state is not None:
        entries.append(
            {
                "fullUrl": full_url(rid, "Consent"),
                "resource": _consent(consent, state, referral, patient_url),
            }
        )
    risk = referral.risk
    qr_url = None
    if risk is not None and risk.dash is not None:
        qr_url = full_url(rid, "QuestionnaireResponse")
        entries.append({"fullUrl": qr_url, "resource": _dash(referral, patient_url)})
    if risk is not None:
        entries.append(
            {
                "fullUrl": full_url(rid, "RiskAssessment"),
                "resource": _risk(referral, patient_url, qr_url),
            }
        )
    classification = header.classification or Classification.OFFICIAL_SENSITIVE
    raw: dict[str, Any] = {
        "resourceType": "Bundle",
        "meta": {"security": [{"system": SECURITY_SYSTEM, "code": classification.value}]},
        "identifier": {"system": URI_SYSTEM, "value": f"urn:uuid:{rid}"},
        "type": "collection",
        "entry": entries,
    }
    if header.created_at is not None:
        raw["timestamp"] = header.created_at.isoformat()
    try:
        bundle = Bundle.model_validate(raw)
    except ValidationError as exc:  # a bug here, not bad input: the referral was valid
        raise RuntimeError(f"the FHIR bundle built for a referral is not valid: {exc}") from exc
    return bundle.model_dump(mode="json")


def _ref(url: str) -> dict[str, str]:
    return {"reference": url}


def _ext(url: str, **value: Any) -> dict[str, Any]:
    return {"url": url, **value}


def _complex(url: str, parts: list[dict[str, Any] | None]) -> dict[str, Any]:
    return {"url": url, "extension": [p for p in parts if p is not None]}


def _opt(name: str, key: str, value: Any) -> dict[str, Any] | None:
    return None if value is None else {"url": name, key: value}


def _name(given: str | None, family: str | None) -> dict[str, Any]:
    name: dict[str, Any] = {"use": "official"}
    if family is not None:
        name["family"] = family
    if given is not None:
        name["given"] = [given]
    return name


def _address(lines: tuple[str, ...], postcode: str) -> dict[str, Any]:
    return {"use": "home", "line": list(lines), "postalCode": postcode}


def _patient(referral: DisclosedReferral) -> dict[str, Any]:
    patient: dict[str, Any] = {"resourceType": "Patient"}
    extensions: list[dict[str, Any]] = []
    victim = referral.victim
    if victim is not None:
        names = [{"use": "nickname", "text": alias} for alias in victim.aliases]
        if victim.given_name is not None or victim.family_name is not None:
            names.insert(0, _name(victim.given_name, victim.family_name))
        if names:
            patient["name"] = names
        if victim.date_of_birth is not None:
            patient["birthDate"] = victim.date_of_birth.isoformat()
        if victim.nhs_number is not None:
            patient["identifier"] = [{"system": NHS_NUMBER_SYSTEM, "value": victim.nhs_number}]
        if victim.address is not None:
            patient["address"] = [_address(victim.address.lines, victim.address.postcode)]
        if victim.housing_tenure is not None:
            extensions.append(_ext(EXT.housing_tenure, valueCode=victim.housing_tenure.value))
    if victim is not None and victim.pregnancy is not None:
        p = victim.pregnancy
        extensions.append(
            _complex(
                EXT.pregnancy,
                [
                    _opt("pregnant", "valueBoolean", p.pregnant),
                    _opt(
                        "expectedDueDate",
                        "valueDate",
                        p.expected_due_date.isoformat() if p.expected_due_date else None,
                    ),
                    _opt("birthInLast18Months", "valueBoolean", p.birth_in_last_18_months),
                ],
            )
        )
    contact = referral.safe_contact
    if contact is not None:
        telecom = [_telecom(r) for r in contact.routes if r.safe]
        if telecom:
            patient["telecom"] = telecom
        extensions.extend(_unsafe_route(r) for r in contact.routes if not r.safe)
        if contact.notes is not None:
            extensions.append(_ext(EXT.safe_contact_notes, valueString=contact.notes))
    if extensions:
        patient["extension"] = extensions
    return patient


def _telecom(route: ContactRoute) -> dict[str, Any]:
    return {
        "system": CONTACT_SYSTEM[route.kind],
        "value": route.detail,
        "extension": [
            _complex(
                EXT.contact_route,
                [
                    _opt("kind", "valueCode", route.kind.value),
                    _opt("safeToLeaveMessage", "valueBoolean", route.safe_to_leave_message),
                    _opt("bestTimes", "valueString", route.best_times),
                ],
            )
        ],
    }


def _unsafe_route(route: ContactRoute) -> dict[str, Any]:
    return _complex(
        EXT.unsafe_contact_route,
        [
            _opt("kind", "valueCode", route.kind.value),
            _opt("detail", "valueString", route.detail),
            _opt("bestTimes", "valueString", route.best_times),
        ],
    )


def _child(child: DisclosedChild, patient_url: str) -> dict[str, Any]:
    related: dict[str, Any] = {
        "resourceType": "RelatedPerson",
        "extension": [
            _complex(
                EXT.child_details,
                [
                    _opt(
                        "schoolAgency",
                        "valueIdentifier",
                        {"system": AGENCY_SYSTEM, "value": child.school_agency}
                        if child.school_agency
                        else None,
                    ),
                    _opt("homeEducated", "valueBoolean", child.home_educated),
                    _opt("presentAtIncident", "valueBoolean", child.present_at_incident),
                    _opt("whereDuringIncident", "valueString", child.where),
                    _opt("voiceOfChild", "valueString", child.voice_of_child),
                ],
            )
        ],
        "patient": _ref(patient_url),
        "relationship": [{"coding": [{"system": ROLE_CODE_SYSTEM, "code": CHILD_ROLE}]}],
    }
    if child.given_name is not None or child.family_name is not None:
        related["name"] = [_name(child.given_name, child.family_name)]
    if child.date_of_birth is not None:
        related["birthDate"] = child.date_of_birth.isoformat()
    details = related["extension"][0]
    if not details["extension"]:  # nothing of the child's details was disclosed
        del related["extension"]
    return related


def _service_request(
    referral: DisclosedReferral, rid: uuid.UUID, purpose: Purpose
) -> dict[str, Any]:
    header, incident = referral.header, referral.incident
    identifiers = [{"system": URI_SYSTEM, "value": f"urn:uuid:{rid}"}]
    if header.police_reference is not None:
        identifiers.append({"system": POLICE_REFERENCE_SYSTEM, "value": header.police_reference})
    if header.marac_reference is not None:
        identifiers.append({"system": MARAC_REFERENCE_SYSTEM, "value": header.marac_reference})
    extensions: list[dict[str, Any]] = []
    if header.sender_officer is not None:
        extensions.append(
            _ext(
                EXT.sender_officer,
                valueIdentifier={"system": STAFF_NUMBER_SYSTEM, "value": header.sender_officer},
            )
        )
    if incident is not None:
        parts = [
            _opt(
                "occurredAt",
                "valueDateTime",
                incident.occurred_at.isoformat() if incident.occurred_at else None,
            ),
            _opt("location", "valueString", incident.location),
            _opt("injuries", "valueString", incident.injuries),
            _opt("reportedToPolice", "valueBoolean", incident.reported_to_police),
            _opt("policeAttended", "valueBoolean", incident.police_attended),
        ]
        if any(parts):
            extensions.append(_complex(EXT.incident, parts))
    for group in ATTACHED_GROUPS:
        field = FIELD_GROUPS[group]
        value = referral.group(group)
        if value is None:
            continue
        assert isinstance(value, BaseModel)  # G3, G7, G9 and G10 are models
        content = value.model_dump_json(exclude_none=True).encode()
        extensions.append(
            _complex(
                EXT.field_group,
                [
                    _opt("group", "valueCode", group.value),
                    _opt(
                        "content",
                        "valueAttachment",
                        {
                            "contentType": "application/json",
                            "title": field,
                            "data": base64.b64encode(content).decode("ascii"),
                        },
                    ),
                ],
            )
        )
    request: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "identifier": identifiers,
        "status": "active",
        "intent": "order",
        "category": [
            {"coding": [{"system": PURPOSE_SYSTEM, "code": (header.purpose or purpose).value}]}
        ],
        "subject": _ref(full_url(rid, "Patient")),
    }
    if extensions:
        request["extension"] = extensions
    if header.priority is not None:
        request["priority"] = PRIORITY[header.priority]
    if header.created_at is not None:
        request["authoredOn"] = header.created_at.isoformat()
    if header.sender_agency is not None:
        request["requester"] = {
            "type": "Organization",
            "identifier": {"system": AGENCY_SYSTEM, "value": header.sender_agency},
        }
    if header.recipients:
        request["performer"] = [
            {"type": "Organization", "identifier": {"system": AGENCY_SYSTEM, "value": r}}
            for r in header.recipients
        ]
    if incident is not None and incident.summary is not None:
        request["reasonCode"] = [{"text": incident.summary}]
    return request


def _consent(
    consent: DisclosedConsent,
    state: ConsentState,
    referral: DisclosedReferral,
    patient_url: str,
) -> dict[str, Any]:
    codes = [
        c.value
        for c in (
            consent.art6_basis,
            consent.art9_condition,
            consent.art10_condition,
            consent.dpa_condition,
            consent.statutory_gateway,
        )
        if c is not None
    ] + [p.value for p in consent.caldicott_principles]
    extensions: list[dict[str, Any]] = [_ext(EXT.consent_state, valueCode=state.value)]
    if consent.subject_informed is not None:
        extensions.append(
            _complex(
                EXT.subject_informed,
                [
                    _opt("informed", "valueBoolean", consent.subject_informed),
                    _opt("reason", "valueString", consent.not_informed_reason),
                ],
            )
        )
    if consent.override is not None:
        o = consent.override
        extensions.append(
            _complex(
                EXT.consent_override,
                [
                    _opt("decisionMaker", "valueString", o.decision_maker_id),
                    _opt("decisionMakerRole", "valueString", o.decision_maker_role),
                    _opt("reason", "valueCode", o.reason.value),
                    _opt("justification", "valueString", o.justification),
                    _opt("subjectTold", "valueBoolean", o.subject_told),
                    _opt("subjectNotToldReason", "valueString", o.subject_not_told_reason),
                    _opt("legalParagraph", "valueUri", legal_uri(o.legal_paragraph.value)),
                ],
            )
        )
    resource: dict[str, Any] = {
        "resourceType": "Consent",
        "extension": extensions,
        "status": CONSENT_STATUS[state],
        "scope": {"coding": [CONSENT_SCOPE]},
        "category": [{"coding": [CONSENT_CATEGORY]}],
        "patient": _ref(patient_url),
    }
    if referral.header.created_at is not None:
        resource["dateTime"] = referral.header.created_at.isoformat()
    if codes:
        resource["policy"] = [{"uri": legal_uri(code)} for code in codes]
    return resource


def _dash(referral: DisclosedReferral, patient_url: str) -> dict[str, Any]:
    dash = referral.risk.dash if referral.risk is not None else None
    assert dash is not None  # the caller checked
    qset = question_set(dash.question_set)
    response: dict[str, Any] = {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": f"{DASH_QUESTIONNAIRE}|{qset.version}",
        "status": "completed",
        "subject": _ref(patient_url),
        # A disclosure may carry only some answers (a subset of G6): map those.
        "item": [
            {
                "linkId": q.id,
                "text": q.text,
                "answer": [
                    {
                        "valueCoding": {
                            "system": DASH_ANSWER_SYSTEM,
                            "code": dash.answers[q.id].value,
                        }
                    }
                ],
            }
            for q in qset.questions
            if q.id in dash.answers
        ],
    }
    if referral.header.created_at is not None:
        response["authored"] = referral.header.created_at.isoformat()
    return response


def _risk(referral: DisclosedReferral, patient_url: str, qr_url: str | None) -> dict[str, Any]:
    risk = referral.risk
    assert risk is not None  # the caller checked
    extensions = []
    if risk.dash_score is not None:
        extensions.append(_ext(EXT.dash_score, valueInteger=risk.dash_score))
    if risk.incidents_last_12_months is not None:
        extensions.append(
            _ext(EXT.incidents_last_12_months, valueInteger=risk.incidents_last_12_months)
        )
    prediction: dict[str, Any] = {}
    if risk.level is not None:
        prediction["qualitativeRisk"] = {
            "coding": [{"system": RISK_PROBABILITY_SYSTEM, "code": RISK_PROBABILITY[risk.level]}]
        }
    if risk.professional_judgement is not None:
        prediction["rationale"] = risk.professional_judgement
    resource: dict[str, Any] = {
        "resourceType": "RiskAssessment",
        "status": "final",
        "subject": _ref(patient_url),
    }
    if prediction:
        resource["prediction"] = [prediction]
    if extensions:
        resource["extension"] = extensions
    if qr_url is not None:
        resource["basis"] = [_ref(qr_url)]
    return resource
