"""The people of an NHS referral bundle: the victim (G1), safe contact (G2) and children (G4).

The victim and the contact routes come from the Patient, the children from RelatedPerson
resources. Every telecom of the Patient is a safe route; an unsafe one travels only as an
``unsafe-contact-route`` extension, never in ``telecom``, so that a system that ignores
extensions can never dial it (``README.md`` beside this file).
"""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.relatedperson import RelatedPerson

from adapters.nhs.codes import (
    AGENCY_SYSTEM,
    CHILD_ROLE,
    CONTACT_SYSTEM,
    EXT,
    NHS_NUMBER_SYSTEM,
    ROLE_CODE_SYSTEM,
)
from adapters.nhs.walker import BundleWalker, refuse

__all__ = ["map_child", "map_victim"]


def map_victim(
    w: BundleWalker, i: int, patient: Patient
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    path = w.path(i)
    allowed = {
        EXT.housing_tenure,
        EXT.pregnancy,
        EXT.unsafe_contact_route,
        EXT.safe_contact_notes,
    }
    w.check_extensions(patient, allowed, path)
    w.origins["victim"] = path
    victim: dict[str, Any] = {"aliases": []}
    official = None
    for j, name in enumerate(patient.name or []):
        if name.use == "official" and official is None:
            official = j
            victim["given_name"] = " ".join(g for g in name.given or [] if g) or None
            victim["family_name"] = name.family
            w.origins["victim.given_name"] = f"{path}.name[{j}].given"
            w.origins["victim.family_name"] = f"{path}.name[{j}].family"
        elif name.use == "nickname" and name.text:
            victim["aliases"].append(name.text)
        else:
            refuse(f"{path}.name[{j}]", "use 'official' (once) or 'nickname' with text")
    if official is None:
        refuse(f"{path}.name", "needs an official name")
    victim["date_of_birth"] = w.full_date(patient.birthDate, f"{path}.birthDate")
    w.origins["victim.date_of_birth"] = f"{path}.birthDate"
    for j, ident in enumerate(patient.identifier or []):
        if ident.system == NHS_NUMBER_SYSTEM:
            victim["nhs_number"] = ident.value
            w.origins["victim.nhs_number"] = f"{path}.identifier[{j}].value"
    addresses = patient.address or []
    if len(addresses) > 1:
        refuse(f"{path}.address[1]", "send the current home address only")
    if addresses:
        victim["address"] = {
            "lines": addresses[0].line or [],
            "postcode": addresses[0].postalCode,
        }
        w.origins["victim.address"] = f"{path}.address[0]"
    tenure = w.extension(patient, EXT.housing_tenure, path)
    if tenure is not None:
        victim["housing_tenure"] = tenure[1].valueCode
        w.origins["victim.housing_tenure"] = f"{path}.extension[{tenure[0]}]"
    pregnancy = w.extension(patient, EXT.pregnancy, path)
    if pregnancy is not None:
        where = f"{path}.extension[{pregnancy[0]}]"
        parts = w.parts(pregnancy[1], where, {"pregnant", "expectedDueDate", "birthInLast18Months"})
        victim["pregnancy"] = {
            "pregnant": parts.get("pregnant"),
            "expected_due_date": w.full_date(parts.get("expectedDueDate"), where),
            "birth_in_last_18_months": parts.get("birthInLast18Months", False),
        }
        w.origins["victim.pregnancy"] = where
    return victim, _safe_contact(w, patient, path)


def _safe_contact(w: BundleWalker, patient: Patient, path: str) -> dict[str, Any] | None:
    routes: list[dict[str, Any]] = []
    systems = {v for v in CONTACT_SYSTEM.values()}
    for j, point in enumerate(patient.telecom or []):
        where = f"{path}.telecom[{j}]"
        if point.system not in systems or not point.value:
            refuse(where, f"system must be one of {sorted(systems)}, with a value")
        found = w.extension(point, EXT.contact_route, where)
        parts = (
            w.parts(
                found[1],
                f"{where}.extension[{found[0]}]",
                {"kind", "safeToLeaveMessage", "bestTimes"},
            )
            if found
            else {}
        )
        default_kind = {"phone": "phone", "sms": "sms", "email": "email"}.get(point.system)
        kind = parts.get("kind", default_kind)
        if kind is None:
            refuse(f"{where}.extension", "a telecom of system 'other' needs a contact-route kind")
        w.origins[f"safe_contact.routes.{len(routes)}"] = where
        routes.append(
            {
                "kind": kind,
                "detail": point.value,
                "safe": True,
                "safe_to_leave_message": parts.get("safeToLeaveMessage", False),
                "best_times": parts.get("bestTimes"),
            }
        )
    for j, ext in w.extensions(patient, EXT.unsafe_contact_route):
        where = f"{path}.extension[{j}]"
        parts = w.parts(ext, where, {"kind", "detail", "bestTimes"})
        w.origins[f"safe_contact.routes.{len(routes)}"] = where
        routes.append(
            {
                "kind": parts.get("kind"),
                "detail": parts.get("detail"),
                "safe": False,
                "best_times": parts.get("bestTimes"),
            }
        )
    notes = w.extension(patient, EXT.safe_contact_notes, path)
    if not routes:
        if notes is not None:
            refuse(f"{path}.extension[{notes[0]}]", "safe-contact notes need a contact route")
        return None
    w.origins["safe_contact"] = path
    return {"routes": routes, "notes": notes[1].valueString if notes else None}


def map_child(w: BundleWalker, i: int, person: RelatedPerson, patient_index: int) -> dict[str, Any]:
    path = w.path(i)
    number = len([k for k in w.origins if k.startswith("children.") and k.count(".") == 1])
    w.origins[f"children.{number}"] = path
    w.check_extensions(person, {EXT.child_details}, path)
    w.points_at(person.patient, patient_index, f"{path}.patient")
    codes = [
        c.code
        for concept in person.relationship or []
        for c in concept.coding or []
        if c.system == ROLE_CODE_SYSTEM
    ]
    if codes != [CHILD_ROLE]:
        refuse(f"{path}.relationship", f"must be {ROLE_CODE_SYSTEM}|{CHILD_ROLE}")
    names = person.name or []
    if len(names) != 1 or names[0].use != "official":
        refuse(f"{path}.name", "needs exactly one official name")
    details = w.extension(person, EXT.child_details, path)
    parts = (
        w.parts(
            details[1],
            f"{path}.extension[{details[0]}]",
            {
                "schoolAgency",
                "homeEducated",
                "presentAtIncident",
                "whereDuringIncident",
                "voiceOfChild",
            },
        )
        if details
        else {}
    )
    school = parts.get("schoolAgency")
    if school is not None and school.system != AGENCY_SYSTEM:
        refuse(f"{path}.extension", f"schoolAgency must use system {AGENCY_SYSTEM}")
    return {
        "given_name": " ".join(g for g in names[0].given or [] if g) or None,
        "family_name": names[0].family,
        "date_of_birth": w.full_date(person.birthDate, f"{path}.birthDate"),
        "school_agency": school.value if school is not None else None,
        "home_educated": parts.get("homeEducated", False),
        "present_at_incident": parts.get("presentAtIncident"),
        "where": parts.get("whereDuringIncident"),
        "voice_of_child": parts.get("voiceOfChild"),
    }
