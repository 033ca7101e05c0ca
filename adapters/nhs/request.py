"""The ServiceRequest of an NHS referral bundle: the header (G0), attached groups, incident (G5).

The request carries the ids, the sender and recipients, the purpose and priority, the incident
as an extension with its summary as the reason, and the groups FHIR has no resource for (G3,
G7, G9, G10) as base64 JSON attachments (``outbound.ATTACHED_GROUPS``).
"""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B.servicerequest import ServiceRequest

from adapters.importing import JsonRefused, decode_utf8, load_json
from adapters.nhs.codes import (
    EXT,
    MARAC_REFERENCE_SYSTEM,
    POLICE_REFERENCE_SYSTEM,
    PRIORITY,
    PURPOSE_SYSTEM,
    STAFF_NUMBER_SYSTEM,
    URI_SYSTEM,
)
from adapters.nhs.outbound import ATTACHED_GROUPS
from adapters.nhs.walker import BundleWalker, refuse
from schemas.referral import FIELD_GROUPS

__all__ = ["map_header", "map_incident"]


def map_header(
    w: BundleWalker, i: int, request: ServiceRequest, patient_index: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    path = w.path(i)
    w.check_extensions(request, {EXT.sender_officer, EXT.incident, EXT.field_group}, path)
    w.points_at(request.subject, patient_index, f"{path}.subject")
    header: dict[str, Any] = {}
    for j, ident in enumerate(request.identifier or []):
        where = f"{path}.identifier[{j}]"
        if ident.system == URI_SYSTEM:
            value = ident.value or ""
            if not value.startswith("urn:uuid:"):
                refuse(f"{where}.value", "the referral id must be a urn:uuid: URI")
            header["referral_id"] = value.removeprefix("urn:uuid:")
            w.origins["header.referral_id"] = f"{where}.value"
        elif ident.system == POLICE_REFERENCE_SYSTEM:
            header["police_reference"] = ident.value
            w.origins["header.police_reference"] = f"{where}.value"
        elif ident.system == MARAC_REFERENCE_SYSTEM:
            header["marac_reference"] = ident.value
            w.origins["header.marac_reference"] = f"{where}.value"
    if "referral_id" not in header:
        refuse(f"{path}.identifier", f"needs the referral id ({URI_SYSTEM}, urn:uuid:...)")
    officer = w.extension(request, EXT.sender_officer, path)
    if officer is None:
        refuse(f"{path}.extension", f"needs the {EXT.sender_officer} extension")
    staff = officer[1].valueIdentifier
    if staff is None or staff.system != STAFF_NUMBER_SYSTEM:
        refuse(f"{path}.extension[{officer[0]}]", "needs a staff-number valueIdentifier")
    header["sender_officer"] = staff.value
    w.origins["header.sender_officer"] = f"{path}.extension[{officer[0]}]"
    requester = request.requester
    header["sender_agency"] = w.agency(
        requester.identifier if requester else None, f"{path}.requester.identifier"
    )
    w.origins["header.sender_agency"] = f"{path}.requester.identifier.value"
    header["recipients"] = [
        w.agency(p.identifier, f"{path}.performer[{k}].identifier")
        for k, p in enumerate(request.performer or [])
    ]
    w.origins["header.recipients"] = f"{path}.performer"
    header["purpose"] = w.code(
        request.category, PURPOSE_SYSTEM, f"{path}.category", "the referral purpose"
    )
    w.origins["header.purpose"] = f"{path}.category"
    priorities = {v: k.value for k, v in PRIORITY.items()}
    if request.priority not in priorities:
        refuse(f"{path}.priority", f"must be one of {', '.join(sorted(priorities))}")
    header["priority"] = priorities[request.priority]
    header["created_at"] = w.instant(request.authoredOn, f"{path}.authoredOn")
    w.origins["header.created_at"] = f"{path}.authoredOn"
    groups: dict[str, Any] = {}
    for j, ext in w.extensions(request, EXT.field_group):
        where = f"{path}.extension[{j}]"
        parts = w.parts(ext, where, {"group", "content"})
        code = parts.get("group")
        allowed = {g.value: g for g in ATTACHED_GROUPS}
        if code not in allowed:
            refuse(f"{where}.extension", f"group must be one of {', '.join(allowed)}")
        attachment = parts.get("content")
        field = FIELD_GROUPS[allowed[code]]
        if attachment is None or attachment.contentType != "application/json":
            refuse(f"{where}.extension", "content must be an application/json attachment")
        try:
            # fhir.resources has already decoded the base64 of Attachment.data to bytes; the
            # JSON inside is read within the same bounds as the bundle.
            groups[field] = load_json(decode_utf8(attachment.data or b"", strip_bom=False))
        except JsonRefused as exc:
            refuse(
                f"{where}.extension",
                f"content is not base64-encoded JSON Cairn reads: {exc.problems[0][1]}",
            )
        w.origins[field] = where
    return header, groups


def map_incident(w: BundleWalker, i: int, request: ServiceRequest) -> dict[str, Any]:
    path = w.path(i)
    found = w.extension(request, EXT.incident, path)
    if found is None:
        refuse(f"{path}.extension", f"needs the {EXT.incident} extension")
    where = f"{path}.extension[{found[0]}]"
    parts = w.parts(
        found[1],
        where,
        {"occurredAt", "location", "injuries", "reportedToPolice", "policeAttended"},
    )
    reasons = request.reasonCode or []
    if len(reasons) != 1 or not reasons[0].text:
        refuse(f"{path}.reasonCode", "needs one reasonCode whose text is the incident summary")
    w.origins["incident"] = where
    w.origins["incident.summary"] = f"{path}.reasonCode[0].text"
    occurred = parts.get("occurredAt")
    return {
        "occurred_at": w.instant(occurred, where) if occurred is not None else None,
        "location": parts.get("location"),
        "summary": reasons[0].text,
        "injuries": parts.get("injuries"),
        "reported_to_police": parts.get("reportedToPolice"),
        "police_attended": parts.get("policeAttended"),
    }
