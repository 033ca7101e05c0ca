"""An NHS safeguarding referral as a FHIR R4 Bundle, turned into a Cairn referral.

The bundle is first validated with the ``fhir.resources`` models, then mapped element by element
(``README.md`` beside this file has the table; ``outbound.py`` is the inverse). Every problem is
reported as a ``SchemaError`` whose ``FieldProblem.field`` is the FHIRPath of the offending
element (``Bundle.entry[0].resource.identifier[0].value``), so the sending trust can find it in
its own message. Resource types outside the mapping are refused rather than silently dropped:
in a safeguarding referral, data that is lost unnoticed is the dangerous failure.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any, NoReturn

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.consent import Consent as FhirConsent
from fhir.resources.R4B.extension import Extension
from fhir.resources.R4B.identifier import Identifier
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.questionnaireresponse import QuestionnaireResponse
from fhir.resources.R4B.relatedperson import RelatedPerson
from fhir.resources.R4B.riskassessment import RiskAssessment
from fhir.resources.R4B.servicerequest import ServiceRequest
from pydantic import ValidationError

from adapters.nhs.codes import (
    AGENCY_SYSTEM,
    CAIRN,
    CHILD_ROLE,
    CONTACT_SYSTEM,
    DASH_ANSWER_SYSTEM,
    DASH_QUESTIONNAIRE,
    EXT,
    LEGAL_CODES,
    MARAC_REFERENCE_SYSTEM,
    NHS_NUMBER_SYSTEM,
    POLICE_REFERENCE_SYSTEM,
    PRIORITY,
    PURPOSE_SYSTEM,
    RISK_PROBABILITY,
    RISK_PROBABILITY_SYSTEM,
    ROLE_CODE_SYSTEM,
    STAFF_NUMBER_SYSTEM,
    URI_SYSTEM,
    legal_uri,
)
from adapters.nhs.outbound import ATTACHED_GROUPS
from schemas.consent import (
    Art6Basis,
    Art9Condition,
    Art10Condition,
    CaldicottPrinciple,
    DpaCondition,
    StatutoryGateway,
)
from schemas.decode import field_problems
from schemas.errors import FieldProblem, SchemaError
from schemas.referral import FIELD_GROUPS, Referral

__all__ = ["MAPPED_RESOURCES", "bundle_to_referral", "parse_bundle"]

#: The resource types a Cairn referral bundle may hold.
MAPPED_RESOURCES = frozenset(
    {
        "Patient",
        "RelatedPerson",
        "ServiceRequest",
        "Consent",
        "QuestionnaireResponse",
        "RiskAssessment",
    }
)
_ROOT = "Bundle"
_LEGAL_SLOTS: tuple[tuple[str, type[Any]], ...] = (
    ("art6_basis", Art6Basis),
    ("art9_condition", Art9Condition),
    ("art10_condition", Art10Condition),
    ("dpa_condition", DpaCondition),
    ("statutory_gateway", StatutoryGateway),
)


class _Refused(Exception):
    def __init__(self, path: str, problem: str) -> None:
        super().__init__(path, problem)
        self.problem = FieldProblem(path, problem)


def _refuse(path: str, problem: str) -> NoReturn:
    raise _Refused(path, problem)


def parse_bundle(data: bytes) -> Referral:
    """Parse JSON bytes holding a FHIR Bundle and map it; raise SchemaError with FHIR paths."""
    try:
        raw = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SchemaError(
            "the bundle is not JSON", (FieldProblem(_ROOT, f"not valid JSON: {exc}"),)
        ) from None
    if not isinstance(raw, dict):
        raise SchemaError(
            "the bundle is not a JSON object", (FieldProblem(_ROOT, "not an object"),)
        )
    return bundle_to_referral(raw)


def bundle_to_referral(bundle: Mapping[str, Any]) -> Referral:
    """The Cairn referral an NHS safeguarding-referral Bundle carries.

    Raises SchemaError naming the FHIRPath of every problem found at the first stage that failed
    (FHIR validity, then the mapping, then the Cairn referral's own rules).
    """
    _precheck(bundle)
    try:
        model = Bundle.model_validate(dict(bundle))
    except ValidationError as exc:
        problems = tuple(FieldProblem(_fhir_path(p.field), p.problem) for p in field_problems(exc))
        raise SchemaError(
            f"the bundle is not valid FHIR R4: {len(problems)} problem(s), first at "
            f"'{problems[0].field}'",
            problems,
        ) from None
    origins: dict[str, str] = {}
    try:
        data = _Mapper(model, origins).referral()
    except _Refused as exc:
        raise SchemaError(
            f"the bundle cannot be mapped to a referral: {exc.problem.problem} at "
            f"'{exc.problem.field}'",
            (exc.problem,),
        ) from None
    try:
        return Referral.model_validate(data)
    except ValidationError as exc:
        problems = tuple(
            FieldProblem(_origin(origins, p.field), p.problem) for p in field_problems(exc)
        )
        raise SchemaError(
            f"the bundle is not a valid referral: {len(problems)} problem(s), first at "
            f"'{problems[0].field}'",
            problems,
        ) from None


def _precheck(bundle: Mapping[str, Any]) -> None:
    """Catch what fhir.resources reports badly (an unknown resourceType is a KeyError there)."""
    if bundle.get("resourceType") != "Bundle":
        raise SchemaError(
            "not a FHIR Bundle", (FieldProblem(f"{_ROOT}.resourceType", "must be 'Bundle'"),)
        )
    entries = bundle.get("entry")
    if not isinstance(entries, list) or not entries:
        raise SchemaError(
            "the bundle has no entries",
            (FieldProblem(f"{_ROOT}.entry", "a referral bundle needs entries"),),
        )
    problems = []
    for i, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        kind = resource.get("resourceType") if isinstance(resource, dict) else None
        if kind not in MAPPED_RESOURCES:
            problems.append(
                FieldProblem(
                    f"{_ROOT}.entry[{i}].resource.resourceType",
                    f"'{kind}' is not part of a Cairn referral bundle; allowed: "
                    f"{', '.join(sorted(MAPPED_RESOURCES))}",
                )
            )
    if problems:
        raise SchemaError("the bundle holds resources Cairn does not map", tuple(problems))


def _fhir_path(dotted: str) -> str:
    """pydantic location 'entry.0.resource.birthDate' -> FHIRPath 'Bundle.entry[0].resource...'."""
    out = _ROOT
    for part in dotted.split("."):
        out += f"[{part}]" if part.isdigit() else f".{part}"
    return out


def _origin(origins: Mapping[str, str], path: str) -> str:
    """The FHIR element a referral field came from: the longest recorded prefix of ``path``."""
    parts = path.split(".")
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in origins:
            return origins[key]
    return _ROOT


def _ext_value(ext: Extension) -> Any:
    for name in (
        "valueBoolean",
        "valueCode",
        "valueString",
        "valueInteger",
        "valueDate",
        "valueDateTime",
        "valueUri",
        "valueIdentifier",
        "valueAttachment",
    ):
        value = getattr(ext, name, None)
        if value is not None:
            return value
    return None


class _Mapper:
    """Walks one validated Bundle, recording where each referral field came from."""

    def __init__(self, bundle: Bundle, origins: dict[str, str]) -> None:
        self.bundle = bundle
        self.origins = origins
        self.entries = list(bundle.entry or [])
        self.urls = {e.fullUrl: i for i, e in enumerate(self.entries) if e.fullUrl}

    # --- locating resources ---

    def _all(self, kind: type[Any]) -> list[tuple[int, Any]]:
        return [(i, e.resource) for i, e in enumerate(self.entries) if isinstance(e.resource, kind)]

    def _optional(self, kind: type[Any]) -> tuple[int, Any] | None:
        found = self._all(kind)
        if len(found) > 1:
            name = kind.__name__.removeprefix("Fhir")
            _refuse(f"{_ROOT}.entry[{found[1][0]}]", f"a referral bundle has one {name}")
        return found[0] if found else None

    def _required(self, kind: type[Any]) -> tuple[int, Any]:
        found = self._optional(kind)
        if found is None:
            name = kind.__name__.removeprefix("Fhir")
            _refuse(f"{_ROOT}.entry", f"a referral bundle needs a {name} resource")
        return found

    def _path(self, index: int, rest: str = "") -> str:
        return f"{_ROOT}.entry[{index}].resource{'.' + rest if rest else ''}"

    def _points_at(self, reference: Any, target: int, path: str) -> None:
        ref = getattr(reference, "reference", None)
        if ref is None or self.urls.get(ref) != target:
            _refuse(path, "must reference the bundle's Patient entry by its fullUrl")

    def _extensions(self, holder: Any, url: str) -> list[tuple[int, Extension]]:
        return [(j, e) for j, e in enumerate(holder.extension or []) if e.url == url]

    def _extension(self, holder: Any, url: str, path: str) -> tuple[int, Extension] | None:
        found = self._extensions(holder, url)
        if len(found) > 1:
            _refuse(f"{path}.extension[{found[1][0]}]", f"only one {url} extension is allowed")
        return found[0] if found else None

    def _check_extensions(self, holder: Any, allowed: set[str], path: str) -> None:
        for j, e in enumerate(holder.extension or []):
            if e.url.startswith(CAIRN) and e.url not in allowed:
                _refuse(f"{path}.extension[{j}]", "this extension does not belong here")

    def _parts(self, ext: Extension, path: str, names: set[str]) -> dict[str, Any]:
        parts: dict[str, Any] = {}
        for k, sub in enumerate(ext.extension or []):
            if sub.url not in names:
                _refuse(
                    f"{path}.extension[{k}].url", f"unknown part; expected one of {sorted(names)}"
                )
            parts[sub.url] = _ext_value(sub)
        return parts

    # --- the referral ---

    def referral(self) -> dict[str, Any]:
        patient_at = self._required(Patient)
        request_at = self._required(ServiceRequest)
        risk_at = self._required(RiskAssessment)
        data: dict[str, Any] = {}
        data["header"], groups = self._header(*request_at, patient_at[0])
        data["victim"], safe_contact = self._victim(*patient_at)
        if safe_contact is not None:
            data["safe_contact"] = safe_contact
        data["children"] = [self._child(i, r, patient_at[0]) for i, r in self._all(RelatedPerson)]
        self.origins["children"] = f"{_ROOT}.entry"
        data["incident"] = self._incident(*request_at)
        data["risk"] = self._risk(risk_at, patient_at[0])
        consent_at = self._required(FhirConsent)
        data["consent"] = self._consent(*consent_at, patient_at[0])
        data.update(groups)
        return data

    def _header(
        self, i: int, request: ServiceRequest, patient_index: int
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        path = self._path(i)
        self._check_extensions(request, {EXT.sender_officer, EXT.incident, EXT.field_group}, path)
        self._points_at(request.subject, patient_index, f"{path}.subject")
        header: dict[str, Any] = {}
        for j, ident in enumerate(request.identifier or []):
            where = f"{path}.identifier[{j}]"
            if ident.system == URI_SYSTEM:
                value = ident.value or ""
                if not value.startswith("urn:uuid:"):
                    _refuse(f"{where}.value", "the referral id must be a urn:uuid: URI")
                header["referral_id"] = value.removeprefix("urn:uuid:")
                self.origins["header.referral_id"] = f"{where}.value"
            elif ident.system == POLICE_REFERENCE_SYSTEM:
                header["police_reference"] = ident.value
                self.origins["header.police_reference"] = f"{where}.value"
            elif ident.system == MARAC_REFERENCE_SYSTEM:
                header["marac_reference"] = ident.value
                self.origins["header.marac_reference"] = f"{where}.value"
        if "referral_id" not in header:
            _refuse(f"{path}.identifier", f"needs the referral id ({URI_SYSTEM}, urn:uuid:...)")
        officer = self._extension(request, EXT.sender_officer, path)
        if officer is None:
            _refuse(f"{path}.extension", f"needs the {EXT.sender_officer} extension")
        staff = officer[1].valueIdentifier
        if staff is None or staff.system != STAFF_NUMBER_SYSTEM:
            _refuse(f"{path}.extension[{officer[0]}]", "needs a staff-number valueIdentifier")
        header["sender_officer"] = staff.value
        self.origins["header.sender_officer"] = f"{path}.extension[{officer[0]}]"
        requester = request.requester
        header["sender_agency"] = self._agency(
            requester.identifier if requester else None, f"{path}.requester.identifier"
        )
        self.origins["header.sender_agency"] = f"{path}.requester.identifier.value"
        header["recipients"] = [
            self._agency(p.identifier, f"{path}.performer[{k}].identifier")
            for k, p in enumerate(request.performer or [])
        ]
        self.origins["header.recipients"] = f"{path}.performer"
        header["purpose"] = self._code(
            request.category, PURPOSE_SYSTEM, f"{path}.category", "the referral purpose"
        )
        self.origins["header.purpose"] = f"{path}.category"
        priorities = {v: k.value for k, v in PRIORITY.items()}
        if request.priority not in priorities:
            _refuse(f"{path}.priority", f"must be one of {', '.join(sorted(priorities))}")
        header["priority"] = priorities[request.priority]
        header["created_at"] = self._instant(request.authoredOn, f"{path}.authoredOn")
        self.origins["header.created_at"] = f"{path}.authoredOn"
        groups: dict[str, Any] = {}
        for j, ext in self._extensions(request, EXT.field_group):
            where = f"{path}.extension[{j}]"
            parts = self._parts(ext, where, {"group", "content"})
            code = parts.get("group")
            allowed = {g.value: g for g in ATTACHED_GROUPS}
            if code not in allowed:
                _refuse(f"{where}.extension", f"group must be one of {', '.join(allowed)}")
            attachment = parts.get("content")
            field = FIELD_GROUPS[allowed[code]]
            if attachment is None or attachment.contentType != "application/json":
                _refuse(f"{where}.extension", "content must be an application/json attachment")
            try:
                # fhir.resources has already decoded the base64 of Attachment.data to bytes.
                groups[field] = json.loads(attachment.data or b"")
            except (ValueError, TypeError):
                _refuse(f"{where}.extension", "content is not base64-encoded JSON")
            self.origins[field] = where
        return header, groups

    def _agency(self, identifier: Identifier | None, path: str) -> str:
        if identifier is None or identifier.system != AGENCY_SYSTEM or not identifier.value:
            _refuse(path, f"must be a Cairn agency identifier (system {AGENCY_SYSTEM})")
        return str(identifier.value)

    def _code(self, concepts: Any, system: str, path: str, what: str) -> str:
        for k, concept in enumerate(concepts or []):
            for m, coding in enumerate(concept.coding or []):
                if coding.system == system and coding.code:
                    self.origins.setdefault(path, f"{path}[{k}].coding[{m}].code")
                    return str(coding.code)
        _refuse(path, f"needs a coding of {what} from {system}")

    def _instant(self, value: Any, path: str) -> datetime:
        if not isinstance(value, datetime) or value.tzinfo is None:
            _refuse(path, "must be a full date and time with a time zone")
        return value

    def _victim(self, i: int, patient: Patient) -> tuple[dict[str, Any], dict[str, Any] | None]:
        path = self._path(i)
        allowed = {
            EXT.housing_tenure,
            EXT.pregnancy,
            EXT.unsafe_contact_route,
            EXT.safe_contact_notes,
        }
        self._check_extensions(patient, allowed, path)
        self.origins["victim"] = path
        victim: dict[str, Any] = {"aliases": []}
        official = None
        for j, name in enumerate(patient.name or []):
            if name.use == "official" and official is None:
                official = j
                victim["given_name"] = " ".join(g for g in name.given or [] if g) or None
                victim["family_name"] = name.family
                self.origins["victim.given_name"] = f"{path}.name[{j}].given"
                self.origins["victim.family_name"] = f"{path}.name[{j}].family"
            elif name.use == "nickname" and name.text:
                victim["aliases"].append(name.text)
            else:
                _refuse(f"{path}.name[{j}]", "use 'official' (once) or 'nickname' with text")
        if official is None:
            _refuse(f"{path}.name", "needs an official name")
        victim["date_of_birth"] = patient.birthDate
        self.origins["victim.date_of_birth"] = f"{path}.birthDate"
        for j, ident in enumerate(patient.identifier or []):
            if ident.system == NHS_NUMBER_SYSTEM:
                victim["nhs_number"] = ident.value
                self.origins["victim.nhs_number"] = f"{path}.identifier[{j}].value"
        addresses = patient.address or []
        if len(addresses) > 1:
            _refuse(f"{path}.address[1]", "send the current home address only")
        if addresses:
            victim["address"] = {
                "lines": addresses[0].line or [],
                "postcode": addresses[0].postalCode,
            }
            self.origins["victim.address"] = f"{path}.address[0]"
        tenure = self._extension(patient, EXT.housing_tenure, path)
        if tenure is not None:
            victim["housing_tenure"] = tenure[1].valueCode
            self.origins["victim.housing_tenure"] = f"{path}.extension[{tenure[0]}]"
        pregnancy = self._extension(patient, EXT.pregnancy, path)
        if pregnancy is not None:
            where = f"{path}.extension[{pregnancy[0]}]"
            parts = self._parts(
                pregnancy[1], where, {"pregnant", "expectedDueDate", "birthInLast18Months"}
            )
            victim["pregnancy"] = {
                "pregnant": parts.get("pregnant"),
                "expected_due_date": parts.get("expectedDueDate"),
                "birth_in_last_18_months": parts.get("birthInLast18Months", False),
            }
            self.origins["victim.pregnancy"] = where
        return victim, self._safe_contact(patient, path)

    def _safe_contact(self, patient: Patient, path: str) -> dict[str, Any] | None:
        routes: list[dict[str, Any]] = []
        systems = {v for v in CONTACT_SYSTEM.values()}
        for j, point in enumerate(patient.telecom or []):
            where = f"{path}.telecom[{j}]"
            if point.system not in systems or not point.value:
                _refuse(where, f"system must be one of {sorted(systems)}, with a value")
            found = self._extension(point, EXT.contact_route, where)
            parts = (
                self._parts(
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
                _refuse(
                    f"{where}.extension", "a telecom of system 'other' needs a contact-route kind"
                )
            self.origins[f"safe_contact.routes.{len(routes)}"] = where
            routes.append(
                {
                    "kind": kind,
                    "detail": point.value,
                    "safe": True,
                    "safe_to_leave_message": parts.get("safeToLeaveMessage", False),
                    "best_times": parts.get("bestTimes"),
                }
            )
        for j, ext in self._extensions(patient, EXT.unsafe_contact_route):
            where = f"{path}.extension[{j}]"
            parts = self._parts(ext, where, {"kind", "detail", "bestTimes"})
            self.origins[f"safe_contact.routes.{len(routes)}"] = where
            routes.append(
                {
                    "kind": parts.get("kind"),
                    "detail": parts.get("detail"),
                    "safe": False,
                    "best_times": parts.get("bestTimes"),
                }
            )
        notes = self._extension(patient, EXT.safe_contact_notes, path)
        if not routes:
            if notes is not None:
                _refuse(f"{path}.extension[{notes[0]}]", "safe-contact notes need a contact route")
            return None
        self.origins["safe_contact"] = path
        return {"routes": routes, "notes": notes[1].valueString if notes else None}

    def _child(self, i: int, person: RelatedPerson, patient_index: int) -> dict[str, Any]:
        path = self._path(i)
        number = len([k for k in self.origins if k.startswith("children.") and k.count(".") == 1])
        self.origins[f"children.{number}"] = path
        self._check_extensions(person, {EXT.child_details}, path)
        self._points_at(person.patient, patient_index, f"{path}.patient")
        codes = [
            c.code
            for concept in person.relationship or []
            for c in concept.coding or []
            if c.system == ROLE_CODE_SYSTEM
        ]
        if codes != [CHILD_ROLE]:
            _refuse(f"{path}.relationship", f"must be {ROLE_CODE_SYSTEM}|{CHILD_ROLE}")
        names = person.name or []
        if len(names) != 1 or names[0].use != "official":
            _refuse(f"{path}.name", "needs exactly one official name")
        details = self._extension(person, EXT.child_details, path)
        parts = (
            self._parts(
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
            _refuse(f"{path}.extension", f"schoolAgency must use system {AGENCY_SYSTEM}")
        return {
            "given_name": " ".join(g for g in names[0].given or [] if g) or None,
            "family_name": names[0].family,
            "date_of_birth": person.birthDate,
            "school_agency": school.value if school is not None else None,
            "home_educated": parts.get("homeEducated", False),
            "present_at_incident": parts.get("presentAtIncident"),
            "where": parts.get("whereDuringIncident"),
            "voice_of_child": parts.get("voiceOfChild"),
        }

    def _incident(self, i: int, request: ServiceRequest) -> dict[str, Any]:
        path = self._path(i)
        found = self._extension(request, EXT.incident, path)
        if found is None:
            _refuse(f"{path}.extension", f"needs the {EXT.incident} extension")
        where = f"{path}.extension[{found[0]}]"
        parts = self._parts(
            found[1],
            where,
            {"occurredAt", "location", "injuries", "reportedToPolice", "policeAttended"},
        )
        reasons = request.reasonCode or []
        if len(reasons) != 1 or not reasons[0].text:
            _refuse(f"{path}.reasonCode", "needs one reasonCode whose text is the incident summary")
        self.origins["incident"] = where
        self.origins["incident.summary"] = f"{path}.reasonCode[0].text"
        occurred = parts.get("occurredAt")
        return {
            "occurred_at": self._instant(occurred, where) if occurred is not None else None,
            "location": parts.get("location"),
            "summary": reasons[0].text,
            "injuries": parts.get("injuries"),
            "reported_to_police": parts.get("reportedToPolice"),
            "police_attended": parts.get("policeAttended"),
        }

    def _risk(self, at: tuple[int, RiskAssessment], patient_index: int) -> dict[str, Any]:
        i, assessment = at
        path = self._path(i)
        self.origins["risk"] = path
        self._check_extensions(assessment, {EXT.dash_score, EXT.incidents_last_12_months}, path)
        self._points_at(assessment.subject, patient_index, f"{path}.subject")
        predictions = assessment.prediction or []
        if len(predictions) != 1:
            _refuse(f"{path}.prediction", "needs exactly one prediction with the risk level")
        levels = {v: k.value for k, v in RISK_PROBABILITY.items()}
        code = self._code(
            [predictions[0].qualitativeRisk] if predictions[0].qualitativeRisk else [],
            RISK_PROBABILITY_SYSTEM,
            f"{path}.prediction[0].qualitativeRisk",
            "the risk level",
        )
        if code not in levels:
            _refuse(
                f"{path}.prediction[0].qualitativeRisk",
                f"the risk level must be one of {', '.join(levels)}",
            )
        self.origins["risk.level"] = f"{path}.prediction[0].qualitativeRisk"
        risk: dict[str, Any] = {
            "level": levels[code],
            "professional_judgement": predictions[0].rationale,
        }
        self.origins["risk.professional_judgement"] = f"{path}.prediction[0].rationale"
        score = self._extension(assessment, EXT.dash_score, path)
        if score is not None:
            risk["dash_score"] = score[1].valueInteger
            self.origins["risk.dash_score"] = f"{path}.extension[{score[0]}]"
        count = self._extension(assessment, EXT.incidents_last_12_months, path)
        if count is not None:
            risk["incidents_last_12_months"] = count[1].valueInteger
            self.origins["risk.incidents_last_12_months"] = f"{path}.extension[{count[0]}]"
        basis = assessment.basis or []
        dash_at = self._optional(QuestionnaireResponse)
        if dash_at is not None:
            if len(basis) != 1 or self.urls.get(basis[0].reference or "") != dash_at[0]:
                _refuse(f"{path}.basis", "must reference the bundle's DASH QuestionnaireResponse")
            risk["dash"] = self._dash(*dash_at, patient_index)
        elif basis:
            _refuse(f"{path}.basis", "references a resource the bundle does not hold")
        return risk

    def _dash(self, i: int, response: QuestionnaireResponse, patient_index: int) -> dict[str, Any]:
        path = self._path(i)
        self._points_at(response.subject, patient_index, f"{path}.subject")
        canonical, _, version = (response.questionnaire or "").partition("|")
        if canonical != DASH_QUESTIONNAIRE or not version:
            _refuse(f"{path}.questionnaire", f"must be {DASH_QUESTIONNAIRE}|<question set version>")
        if response.status != "completed":
            _refuse(f"{path}.status", "a DASH checklist is sent once completed")
        self.origins["risk.dash"] = path
        self.origins["risk.dash.question_set"] = f"{path}.questionnaire"
        answers: dict[str, Any] = {}
        for j, item in enumerate(response.item or []):
            where = f"{path}.item[{j}]"
            answer = item.answer or []
            coding = answer[0].valueCoding if len(answer) == 1 else None
            if coding is None or coding.system != DASH_ANSWER_SYSTEM:
                _refuse(f"{where}.answer", f"needs one valueCoding from {DASH_ANSWER_SYSTEM}")
            answers[str(item.linkId)] = coding.code
            self.origins[f"risk.dash.answers.{item.linkId}"] = f"{where}.answer[0].valueCoding.code"
        self.origins["risk.dash.answers"] = f"{path}.item"
        return {"question_set": version, "answers": answers}

    def _consent(self, i: int, consent: FhirConsent, patient_index: int) -> dict[str, Any]:
        path = self._path(i)
        self.origins["consent"] = path
        self._check_extensions(
            consent, {EXT.consent_state, EXT.subject_informed, EXT.consent_override}, path
        )
        self._points_at(consent.patient, patient_index, f"{path}.patient")
        state = self._extension(consent, EXT.consent_state, path)
        if state is None:
            _refuse(f"{path}.extension", f"needs the {EXT.consent_state} extension")
        self.origins["consent.state"] = f"{path}.extension[{state[0]}]"
        out: dict[str, Any] = {"state": state[1].valueCode, "caldicott_principles": []}
        by_uri = {legal_uri(code): code for code in LEGAL_CODES}
        for j, policy in enumerate(consent.policy or []):
            code = by_uri.get(policy.uri or "")
            if code is None:
                _refuse(f"{path}.policy[{j}].uri", "not a legal basis Cairn knows")
            if code in {c.value for c in CaldicottPrinciple}:
                out["caldicott_principles"].append(code)
                continue
            slot = next(s for s, enum in _LEGAL_SLOTS if code in {c.value for c in enum})
            if slot in out:
                _refuse(f"{path}.policy[{j}]", f"a second {slot.replace('_', ' ')}")
            out[slot] = code
            self.origins[f"consent.{slot}"] = f"{path}.policy[{j}]"
        informed = self._extension(consent, EXT.subject_informed, path)
        if informed is None:
            _refuse(f"{path}.extension", f"needs the {EXT.subject_informed} extension")
        where = f"{path}.extension[{informed[0]}]"
        parts = self._parts(informed[1], where, {"informed", "reason"})
        out["subject_informed"] = parts.get("informed")
        out["not_informed_reason"] = parts.get("reason")
        self.origins["consent.subject_informed"] = where
        self.origins["consent.not_informed_reason"] = where
        override = self._extension(consent, EXT.consent_override, path)
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
            parts = self._parts(override[1], where, names)
            paragraph = by_uri.get(parts.get("legalParagraph") or "")
            out["override"] = {
                "decision_maker": parts.get("decisionMaker"),
                "decision_maker_role": parts.get("decisionMakerRole"),
                "reason": parts.get("reason"),
                "justification": parts.get("justification"),
                "subject_told": parts.get("subjectTold"),
                "subject_not_told_reason": parts.get("subjectNotToldReason"),
                "legal_paragraph": paragraph,
            }
            self.origins["consent.override"] = where
        return out
