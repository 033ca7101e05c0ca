"""An NHS safeguarding referral as a FHIR R4 Bundle, turned into a Cairn referral.

The bundle is first validated with the ``fhir.resources`` models, then mapped element by element
(``README.md`` beside this file has the table; ``outbound.py`` is the inverse). Every problem is
reported as a ``SchemaError`` whose ``FieldProblem.field`` is the FHIRPath of the offending
element (``Bundle.entry[0].resource.identifier[0].value``), so the sending trust can find it in
its own message. Resource types outside the mapping are refused rather than silently dropped:
in a safeguarding referral, data that is lost unnoticed is the dangerous failure.

This module is the entry and the order of the stages; the mapping is split by resource:
``request`` (ServiceRequest: G0, the attached groups, G5), ``people`` (Patient and
RelatedPerson: G1, G2, G4), ``risk`` (RiskAssessment and the DASH QuestionnaireResponse: G6)
and ``consent`` (Consent: G8), each reading the bundle through ``walker.BundleWalker``.

The bytes are read within ``adapters.importing``'s bounds (UTF-8, a byte order mark ignored,
nesting counted before parsing, integers, keys given once) and the FHIR JSON types are held
strictly with every date in a window (``primitives``), so a hostile bundle is a ``SchemaError``
naming the element, never another exception. No problem repeats a value of the bundle.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.consent import Consent as FhirConsent
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.relatedperson import RelatedPerson
from fhir.resources.R4B.riskassessment import RiskAssessment
from fhir.resources.R4B.servicerequest import ServiceRequest
from pydantic import ValidationError

from adapters.importing import JsonRefused, decode_utf8, load_json, segment, text_values, withhold
from adapters.nhs.consent import map_consent
from adapters.nhs.people import map_child, map_victim
from adapters.nhs.primitives import wrong_types
from adapters.nhs.request import map_header, map_incident
from adapters.nhs.risk import map_risk
from adapters.nhs.walker import ROOT, BundleWalker, Refused
from schemas.decode import field_problems
from schemas.errors import FieldProblem, SchemaError
from schemas.referral import Referral

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


def parse_bundle(data: bytes) -> Referral:
    """Parse JSON bytes holding a FHIR Bundle and map it; raise SchemaError with FHIR paths."""
    try:
        raw = load_json(decode_utf8(data, strip_bom=True))
    except JsonRefused as exc:
        at = f" at line {exc.at.line}, column {exc.at.column}" if exc.at is not None else ""
        problems = tuple(FieldProblem(_json_path(p), f"{r}{at}") for p, r in exc.problems)
        raise SchemaError(
            f"the bundle is not JSON Cairn reads: {problems[0].problem}", problems
        ) from None
    if not isinstance(raw, dict):
        raise SchemaError("the bundle is not a JSON object", (FieldProblem(ROOT, "not an object"),))
    return bundle_to_referral(raw)


def bundle_to_referral(bundle: Mapping[str, Any]) -> Referral:
    """The Cairn referral an NHS safeguarding-referral Bundle carries.

    Raises SchemaError naming the FHIRPath of every problem found at the first stage that failed
    (FHIR validity and JSON types, then the mapping, then the Cairn referral's own rules); no
    problem repeats a text value of the bundle.
    """
    try:
        return _to_referral(bundle)
    except SchemaError as exc:
        values = text_values(bundle, skip_keys=frozenset({"resourceType"}))
        problems = tuple(FieldProblem(p.field, withhold(p.problem, values)) for p in exc.problems)
        raise SchemaError(withhold(str(exc), values), problems) from None
    except (ArithmeticError, ValueError, RecursionError) as exc:
        # A bound none of the stages knows of: the bundle is refused, not a traceback shown.
        problem = FieldProblem(ROOT, f"cannot be mapped ({type(exc).__name__})")
        raise SchemaError("the bundle cannot be mapped to a referral", (problem,)) from None


def _to_referral(bundle: Mapping[str, Any]) -> Referral:
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
    wrong = wrong_types(model, bundle, ROOT)
    if wrong:
        raise SchemaError(
            f"the bundle is not valid FHIR R4 JSON: {len(wrong)} problem(s), first at "
            f"'{wrong[0].field}'",
            tuple(wrong),
        )
    origins: dict[str, str] = {}
    try:
        data = _referral(BundleWalker(model, origins))
    except Refused as exc:
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
            "not a FHIR Bundle", (FieldProblem(f"{ROOT}.resourceType", "must be 'Bundle'"),)
        )
    entries = bundle.get("entry")
    if not isinstance(entries, list) or not entries:
        raise SchemaError(
            "the bundle has no entries",
            (FieldProblem(f"{ROOT}.entry", "a referral bundle needs entries"),),
        )
    problems = []
    # A FHIR message (Bundle.type 'message', as MESH carries it) starts with its MessageHeader;
    # the header is the envelope's, not the referral's, and is checked by whoever reads the
    # message (adapters.nhs.mesh.referrals). Anywhere else a MessageHeader is refused.
    message = bundle.get("type") == "message"
    for i, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        kind = resource.get("resourceType") if isinstance(resource, dict) else None
        if message and i == 0 and kind == "MessageHeader":
            continue
        if not isinstance(kind, str) or kind not in MAPPED_RESOURCES:
            problems.append(
                FieldProblem(
                    f"{ROOT}.entry[{i}].resource.resourceType",
                    "not a resource of a Cairn referral bundle; allowed: "
                    f"{', '.join(sorted(MAPPED_RESOURCES))}",
                )
            )
    if problems:
        raise SchemaError("the bundle holds resources Cairn does not map", tuple(problems))


def _fhir_path(dotted: str) -> str:
    """pydantic location 'entry.0.resource.birthDate' -> FHIRPath 'Bundle.entry[0].resource...'."""
    out = ROOT
    for part in dotted.split("."):
        out += f"[{part}]" if part.isdigit() else f".{part}"
    return out


def _json_path(path: tuple[str | int, ...]) -> str:
    """A path from the JSON reader (keys and indexes) as a FHIRPath from ``Bundle``."""
    return ROOT + "".join(f"[{p}]" if isinstance(p, int) else f".{segment(p)}" for p in path)


def _origin(origins: Mapping[str, str], path: str) -> str:
    """The FHIR element a referral field came from: the longest recorded prefix of ``path``."""
    parts = path.split(".")
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in origins:
            return origins[key]
    return ROOT


def _referral(w: BundleWalker) -> dict[str, Any]:
    """The referral's fields, for ``Referral.model_validate``, read resource by resource."""
    patient_at = w.required(Patient)
    request_at = w.required(ServiceRequest)
    risk_at = w.required(RiskAssessment)
    data: dict[str, Any] = {}
    data["header"], groups = map_header(w, *request_at, patient_at[0])
    data["victim"], safe_contact = map_victim(w, *patient_at)
    if safe_contact is not None:
        data["safe_contact"] = safe_contact
    data["children"] = [map_child(w, i, r, patient_at[0]) for i, r in w.resources(RelatedPerson)]
    w.origins["children"] = f"{ROOT}.entry"
    data["incident"] = map_incident(w, *request_at)
    data["risk"] = map_risk(w, risk_at, patient_at[0])
    consent_at = w.required(FhirConsent)
    data["consent"] = map_consent(w, *consent_at, patient_at[0])
    data.update(groups)
    return data
