"""A trust's safeguarding referral as a FHIR R4 message from MESH, and what goes back to it.

Pure: no I/O. The trust's system sends a Bundle of type ``message`` whose first entry is a
``MessageHeader`` with event ``safeguarding-referral`` (``MESSAGE_EVENT_SYSTEM``), followed by
the resources of a Cairn referral bundle (``adapters.nhs.inbound``, the same mapping ``cairn nhs
import`` uses). ``read_referral`` checks the envelope, sets the referral id (a name-based UUID
of the MESH message id, so the same MESH message is always the same referral), maps it, and
holds a trust's referral to what a trust must send: the trust as sender and the victim's NHS
number. Every refusal is a ``SchemaError`` whose problems name the FHIRPath at fault.

``receipt_message`` and ``refusal_message`` are the response messages sent back to the
sender's mailbox: a Bundle of type ``message``, its MessageHeader's ``response`` naming the
request's MessageHeader id (or, for a message that was not FHIR, its MESH message id) with code
``ok`` or ``fatal-error``, and an ``OperationOutcome``: informational for a receipt (the
referral id and each recipient's status), errors for a refusal (one issue per problem, its
``expression`` the FHIRPath, its ``details`` the problem type). No value of the bundle is ever
repeated in a response; both are validated with ``fhir.resources`` before they are returned.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Final

from fhir.resources.R4B.bundle import Bundle

from adapters.importing import JsonRefused, decode_utf8, load_json, segment
from adapters.nhs.codes import CAIRN, NHS_NUMBER_SYSTEM, URI_SYSTEM
from adapters.nhs.inbound import bundle_to_referral
from adapters.nhs.message import MESSAGE_EVENT_SYSTEM, mesh_endpoint
from schemas.errors import FieldProblem, SchemaError
from schemas.receipt import Receipt
from schemas.referral import Referral

__all__ = [
    "NAMESPACE",
    "PROBLEM_TYPE_SYSTEM",
    "REFERRAL_DEFINITION",
    "REFERRAL_EVENT",
    "NotAMessage",
    "Problem",
    "read_referral",
    "receipt_message",
    "referral_id_of",
    "refusal_message",
    "request_header_id",
]

REFERRAL_EVENT: Final = "safeguarding-referral"
REFERRAL_DEFINITION: Final = f"{CAIRN}/MessageDefinition/{REFERRAL_EVENT}"
#: The code system of ``OperationOutcome.issue.details``: an RFC 9457 problem type URI as code.
PROBLEM_TYPE_SYSTEM: Final = f"{CAIRN}/CodeSystem/problem-type"
#: Problem types of the bridge's own refusals (the broker's come from its problem details).
NOT_A_MESSAGE: Final = f"{CAIRN}/problems/not-a-referral-message"
NOT_A_REFERRAL: Final = f"{CAIRN}/problems/invalid-referral-bundle"
GAVE_UP: Final = f"{CAIRN}/problems/not-submitted-in-time"
#: The namespace of referral ids made from MESH message ids (fixed: changing it would turn a
#: resubmission after a restart into a new referral).
NAMESPACE: Final = uuid.UUID("5b7e3f0e-1a4c-5d2b-9f6e-4c8a2d1b0e17")
ROOT: Final = "Bundle"

#: A problem to report: (FHIRPath or "(message)", what is wrong).
Problem = tuple[str, str]


def referral_id_of(mailbox: str, message_id: str) -> uuid.UUID:
    """The referral id of the MESH message ``message_id`` read from ``mailbox``."""
    return uuid.uuid5(NAMESPACE, f"mesh:{mailbox}:{message_id}")


class NotAMessage(SchemaError):
    """The body is not a FHIR safeguarding-referral message at all (JSON, Bundle, header)."""


def _refuse(path: str, problem: str, summary: str) -> SchemaError:
    return NotAMessage(summary, (FieldProblem(path, problem),))


def _invalid(path: str, problem: str, summary: str) -> SchemaError:
    return SchemaError(summary, (FieldProblem(path, problem),))


def _load(body: bytes) -> dict[str, Any]:
    try:
        raw = load_json(decode_utf8(body, strip_bom=True))
    except JsonRefused as exc:
        at = f" at line {exc.at.line}, column {exc.at.column}" if exc.at is not None else ""
        problems = tuple(
            FieldProblem(
                ROOT + "".join(f"[{p}]" if isinstance(p, int) else f".{segment(p)}" for p in path),
                f"{reason}{at}",
            )
            for path, reason in exc.problems
        )
        raise NotAMessage(f"not FHIR JSON: {problems[0].problem}", problems) from None
    if not isinstance(raw, dict):
        raise _refuse(ROOT, "not a JSON object", "not a FHIR resource")
    return raw


def _entries(raw: Mapping[str, Any]) -> list[dict[str, Any]]:
    entries = raw.get("entry")
    if not isinstance(entries, list):
        return []
    return [e.get("resource") if isinstance(e, dict) else None for e in entries]  # type: ignore[misc]


def read_referral(body: bytes, *, message_id: str, mailbox: str, agency: str) -> Referral:
    """The referral a trust's FHIR message carries; SchemaError (FHIRPaths) if it is refused."""
    raw = _load(body)
    if raw.get("resourceType") != "Bundle":
        raise _refuse(f"{ROOT}.resourceType", "must be 'Bundle'", "not a FHIR Bundle")
    if raw.get("type") != "message":
        raise _refuse(f"{ROOT}.type", "must be 'message' (a FHIR message)", "not a FHIR message")
    resources = _entries(raw)
    header = resources[0] if resources else None
    if not isinstance(header, dict) or header.get("resourceType") != "MessageHeader":
        raise _refuse(
            f"{ROOT}.entry[0].resource.resourceType",
            "a FHIR message starts with its MessageHeader",
            "the message has no MessageHeader",
        )
    event = header.get("eventCoding")
    if not (
        isinstance(event, dict)
        and event.get("system") == MESSAGE_EVENT_SYSTEM
        and event.get("code") == REFERRAL_EVENT
    ):
        raise _refuse(
            f"{ROOT}.entry[0].resource.eventCoding",
            f"must be {MESSAGE_EVENT_SYSTEM}#{REFERRAL_EVENT}",
            "not a safeguarding referral message",
        )
    rid = referral_id_of(mailbox, message_id)
    _set_referral_id(resources, rid)
    referral = bundle_to_referral(raw)
    request_at = _index(resources, "ServiceRequest")
    if referral.header.sender_agency != agency:
        raise _invalid(
            f"{ROOT}.entry[{request_at}].resource.requester",
            f"a referral through this mailbox is sent by {agency}",
            "the referral names another sender",
        )
    if referral.victim.nhs_number is None:
        raise _invalid(
            f"{ROOT}.entry[{_index(resources, 'Patient')}].resource.identifier",
            f"needs the victim's NHS number ({NHS_NUMBER_SYSTEM})",
            "a trust's referral needs the NHS number",
        )
    return referral


def _index(resources: list[Any], kind: str) -> int:
    kinds = [r.get("resourceType") if isinstance(r, dict) else None for r in resources]
    return kinds.index(kind) if kind in kinds else 0


def _set_referral_id(resources: list[Any], rid: uuid.UUID) -> None:
    """Put the referral id into every ServiceRequest's Cairn identifier (appended if none)."""
    for resource in resources:
        if not isinstance(resource, dict) or resource.get("resourceType") != "ServiceRequest":
            continue
        idents = resource.get("identifier")
        if idents is None:
            idents = resource["identifier"] = []
        if not isinstance(idents, list):
            continue  # the mapping reports it
        found = False
        for ident in idents:
            if isinstance(ident, dict) and ident.get("system") == URI_SYSTEM:
                ident["value"] = f"urn:uuid:{rid}"
                found = True
        if not found:
            idents.append({"system": URI_SYSTEM, "value": f"urn:uuid:{rid}"})


def request_header_id(body: bytes) -> str | None:
    """The request's MessageHeader id, if the body is a FHIR message that has one."""
    try:
        raw = _load(body)
    except SchemaError:
        return None
    resources = _entries(raw)
    header = resources[0] if resources else None
    if isinstance(header, dict) and header.get("resourceType") == "MessageHeader":
        value = header.get("id")
        if isinstance(value, str) and 0 < len(value) <= 64:
            return value
    return None


def _response(
    *,
    name: str,
    code: str,
    request_id: str,
    outcome: dict[str, Any],
    source_mailbox: str,
    destination_mailbox: str,
    now: datetime,
) -> dict[str, Any]:
    seed = uuid.uuid5(NAMESPACE, f"response:{name}:{request_id}")
    header_url = f"urn:uuid:{uuid.uuid5(seed, 'MessageHeader')}"
    outcome_url = f"urn:uuid:{uuid.uuid5(seed, 'OperationOutcome')}"
    message: dict[str, Any] = {
        "resourceType": "Bundle",
        "identifier": {"system": URI_SYSTEM, "value": f"urn:uuid:{seed}"},
        "type": "message",
        "timestamp": now.isoformat(),
        "entry": [
            {
                "fullUrl": header_url,
                "resource": {
                    "resourceType": "MessageHeader",
                    "id": str(uuid.uuid5(seed, "MessageHeader")),
                    "eventCoding": {"system": MESSAGE_EVENT_SYSTEM, "code": REFERRAL_EVENT},
                    "destination": [{"endpoint": mesh_endpoint(destination_mailbox)}],
                    "source": {"name": "Cairn", "endpoint": mesh_endpoint(source_mailbox)},
                    "response": {"identifier": request_id, "code": code},
                    "focus": [{"reference": outcome_url}],
                    "definition": REFERRAL_DEFINITION,
                },
            },
            {"fullUrl": outcome_url, "resource": outcome},
        ],
    }
    Bundle.model_validate(message)
    return message


def receipt_message(
    receipt: Receipt,
    *,
    request_id: str,
    source_mailbox: str,
    destination_mailbox: str,
    now: datetime,
) -> dict[str, Any]:
    """The response to a referral the broker accepted: its receipt, as information."""
    issues: list[dict[str, Any]] = [
        {
            "severity": "information",
            "code": "informational",
            "details": {
                "coding": [{"system": URI_SYSTEM, "code": f"urn:uuid:{receipt.referral_id}"}],
                "text": f"referral {receipt.referral_id} accepted by Cairn at "
                f"{receipt.accepted_at.isoformat()}",
            },
        }
    ]
    for r in receipt.recipients:
        reasons = f" ({', '.join(r.reasons)})" if r.reasons else ""
        issues.append(
            {
                "severity": "information",
                "code": "informational",
                "details": {"text": f"{r.agency}: {r.status.value}{reasons}"},
            }
        )
    outcome = {"resourceType": "OperationOutcome", "issue": issues}
    return _response(
        name="receipt",
        code="ok",
        request_id=request_id,
        outcome=outcome,
        source_mailbox=source_mailbox,
        destination_mailbox=destination_mailbox,
        now=now,
    )


def refusal_message(
    problems: Iterable[Problem],
    *,
    problem_type: str,
    title: str,
    request_id: str,
    source_mailbox: str,
    destination_mailbox: str,
    now: datetime,
) -> dict[str, Any]:
    """The response to a message that sent nothing onward: one error issue per problem."""
    issues = []
    for path, problem in problems:
        issue: dict[str, Any] = {
            "severity": "error",
            "code": "invalid" if path.startswith(ROOT) else "processing",
            "details": {
                "coding": [{"system": PROBLEM_TYPE_SYSTEM, "code": problem_type}],
                "text": title,
            },
            "diagnostics": problem,
        }
        if path.startswith(ROOT):
            issue["expression"] = [path]
        issues.append(issue)
    if not issues:
        issues.append(
            {
                "severity": "error",
                "code": "processing",
                "details": {
                    "coding": [{"system": PROBLEM_TYPE_SYSTEM, "code": problem_type}],
                    "text": title,
                },
            }
        )
    outcome = {"resourceType": "OperationOutcome", "issue": issues}
    return _response(
        name="refusal",
        code="fatal-error",
        request_id=request_id,
        outcome=outcome,
        source_mailbox=source_mailbox,
        destination_mailbox=destination_mailbox,
        now=now,
    )
