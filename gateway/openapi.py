"""The gateway's HTTP contract as an OpenAPI 3.1 document, generated from the code it describes.

``gateway_document()`` builds what ``gateway/openapi.json`` holds (``cairn schemas openapi``
writes it; unit tests fail when the checked-in file drifts, or when the API's routes and the
documented paths differ). The disclosure's schema is the pydantic model's (as the gateway
validated it on receipt); the problem types are those ``gateway.api`` answers with, each
referenced by the responses that can return it. ``gateway.api`` serves the file at
``GET /openapi.json`` to the callers it serves.
"""

from __future__ import annotations

from typing import Any, Final

from gateway.api import _MAX_ACK_BYTES, FHIR
from gateway.settings import GatewaySettings
from schemas.disclosure import Disclosure
from schemas.openapi import (
    ProblemType,
    model_components,
    problem_components,
    problem_responses,
    ref,
    service_document,
)
from schemas.receipt import PERSONAL_STATUSES, AcknowledgementStatus

__all__ = ["GATEWAY_PROBLEMS", "gateway_document"]

_BAD_REQUEST: Final = "Bad request"

#: Every problem type the API answers with (``gateway.api``: the identity and problems
#: middlewares and the handlers). ``internal`` (500) is not among them: a 500 is a bug.
GATEWAY_PROBLEMS: Final = {
    t.slug: t
    for t in (
        ProblemType(
            "forbidden-client",
            403,
            "This client may not use this agency's gateway",
            "The client certificate is neither this agency's nor a configured case system's.",
        ),
        ProblemType(
            "bad-referral-id", 400, _BAD_REQUEST, "The referral id in the path is not a UUID."
        ),
        ProblemType("bad-query", 400, _BAD_REQUEST, "A query parameter is out of its range."),
        ProblemType("bad-cursor", 400, _BAD_REQUEST, "The cursor is not one this gateway gave."),
        ProblemType(
            "bad-acknowledgement", 400, _BAD_REQUEST, "The acknowledgement body is not valid."
        ),
        ProblemType(
            "bad-request",
            400,
            None,
            "Another bad request (the title is the HTTP reason phrase, or 'Bad request').",
            detail=False,
        ),
        ProblemType(
            "not-found",
            404,
            ("Not Found", "No such disclosure at this gateway"),
            "No such resource, or no such disclosure stored here.",
            detail=False,
        ),
        ProblemType(
            "method-not-allowed",
            405,
            "Method Not Allowed",
            "The resource does not take this method; the Allow header lists those it takes.",
            detail=False,
        ),
        ProblemType(
            "not-acceptable",
            406,
            ("FHIR is served to health recipients only", "This disclosure has no FHIR form"),
            "The FHIR form was asked for and cannot be given.",
            detail=False,
        ),
        ProblemType(
            "too-large",
            413,
            ("Request Entity Too Large", "The acknowledgement body is too large"),
            f"The body is larger than {_MAX_ACK_BYTES} bytes.",
            detail=False,
        ),
        ProblemType(
            "unavailable",
            503,
            "The gateway's store is unavailable; try again",
            "The gateway's store (or its signing key) is unavailable; nothing was changed.",
            detail=False,
        ),
    )
}


def _problems(*slugs: str) -> dict[str, dict[str, Any]]:
    return problem_responses([GATEWAY_PROBLEMS[s] for s in (*slugs, "forbidden-client")])


def _acknowledgement_statuses() -> list[str]:
    return [s.value for s in AcknowledgementStatus]


def gateway_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the API of ``cairn gateway --as AGENCY``."""
    fields = GatewaySettings.model_fields
    port = fields["port"].default
    limit_max = fields["page_limit_max"].metadata  # ge/le of the setting
    most = max(m.le for m in limit_max if hasattr(m, "le"))
    by_case_system = sorted(s.value for s in AcknowledgementStatus if s not in PERSONAL_STATUSES)
    statuses = _acknowledgement_statuses()
    referral_id = {
        "name": "referral_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "format": "uuid"},
    }
    paths: dict[str, Any] = {
        "/v1/disclosures": {
            "get": {
                "operationId": "listDisclosures",
                "summary": "The disclosures stored after a cursor, in the order the gateway "
                "stored them.",
                "parameters": [
                    {
                        "name": "after",
                        "in": "query",
                        "description": "The cursor of the previous page (opaque); absent for "
                        "the first page.",
                        "schema": {"type": "string", "maxLength": 32},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "description": "The most items to return (at most "
                        "CAIRN_GATEWAY_PAGE_LIMIT_MAX).",
                        "schema": {"type": "integer", "minimum": 1, "maximum": most, "default": 50},
                    },
                    {
                        "name": "status",
                        "in": "query",
                        "description": "new: not yet acknowledged; all: everything stored.",
                        "schema": {"type": "string", "enum": ["new", "all"], "default": "new"},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "One page and the cursor after it.",
                        "content": {"application/json": {"schema": ref("Page")}},
                    },
                    **_problems("bad-query", "bad-cursor", "unavailable"),
                },
            }
        },
        "/v1/disclosures/{referral_id}": {
            "get": {
                "operationId": "getDisclosure",
                "summary": "One disclosure as received (JSON), or as an HL7 FHIR R4 Bundle for "
                "a health recipient. Each fetch is a view on the record: the gateway sends a "
                "signed `viewed` receipt naming the client, and the broker audits it.",
                "parameters": [
                    referral_id,
                    {
                        "name": "format",
                        "in": "query",
                        "description": f"json (default) or fhir (same as Accept: {FHIR}).",
                        "schema": {"type": "string", "enum": ["json", "fhir"]},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "The disclosure, exactly the JSON the broker signed and "
                        "the gateway verified (schemas/json/disclosure.schema.json), or its "
                        "FHIR Bundle.",
                        "content": {
                            "application/json": {"schema": ref("Disclosure")},
                            FHIR: {"schema": ref("FhirBundle")},
                        },
                    },
                    **_problems(
                        "bad-referral-id", "bad-query", "not-found", "not-acceptable", "unavailable"
                    ),
                },
            }
        },
        "/v1/disclosures/{referral_id}/acknowledgement": {
            "post": {
                "operationId": "acknowledgeDisclosure",
                "summary": "Acknowledge a disclosure; the gateway signs it with the agency's "
                "key and sends it to the broker. A repeat answers with the first.",
                "parameters": [referral_id],
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": ref("AcknowledgementRequest")}},
                },
                "responses": {
                    "201": {
                        "description": "Acknowledged now.",
                        "content": {"application/json": {"schema": ref("Acknowledgement")}},
                    },
                    "200": {
                        "description": "Acknowledged before; the first acknowledgement, unchanged.",
                        "content": {"application/json": {"schema": ref("Acknowledgement")}},
                    },
                    **_problems(
                        "bad-referral-id",
                        "bad-acknowledgement",
                        "not-found",
                        "too-large",
                        "unavailable",
                    ),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document.",
                "responses": {
                    "200": {
                        "description": "The OpenAPI 3.1 document.",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    **_problems(),
                },
            }
        },
    }
    acknowledged_at = {"type": "string", "format": "date-time"}
    schemas: dict[str, Any] = {
        "Page": {
            "type": "object",
            "required": ["items", "cursor", "more"],
            "additionalProperties": False,
            "properties": {
                "items": {"type": "array", "items": ref("Summary")},
                "cursor": {
                    "type": "string",
                    "description": "Pass as `after` for the next page (also when `more` is "
                    "false, to poll).",
                },
                "more": {"type": "boolean", "description": "Whether more items follow now."},
            },
        },
        "Summary": {
            "type": "object",
            "description": "Ids, codes and times only; fetch the disclosure for its content.",
            "required": [
                "referral_id",
                "sender",
                "purpose",
                "kind",
                "received_at",
                "delete_after",
                "acknowledge_by",
                "acknowledged",
            ],
            "additionalProperties": False,
            "properties": {
                "referral_id": {"type": "string", "format": "uuid"},
                "sender": {"type": "string", "description": "The sending agency's id."},
                "purpose": {
                    "type": "string",
                    "description": "The purpose code (MARAC, ENCOMPASS, ...).",
                },
                "kind": {"type": "string", "enum": ["referral", "notification"]},
                "received_at": {"type": "string", "format": "date-time"},
                "delete_after": {
                    "type": ["string", "null"],
                    "format": "date-time",
                    "description": "When retention deletes it from the gateway; null if not "
                    "known here.",
                },
                "acknowledge_by": {
                    "type": ["string", "null"],
                    "format": "date-time",
                    "description": "When the broker expects the acknowledgement (an Encompass "
                    "notice: the start of the school day); past it, unacknowledged, the broker "
                    "audits it as overdue. Null: none.",
                },
                "acknowledged": {
                    "oneOf": [
                        {"type": "null"},
                        {
                            "type": "object",
                            "required": ["status", "at"],
                            "additionalProperties": False,
                            "properties": {
                                "status": {
                                    "type": "string",
                                    "enum": statuses,
                                    "description": "read and actioned are a person's, in the "
                                    "web inbox.",
                                },
                                "at": acknowledged_at,
                            },
                        },
                    ]
                },
            },
        },
        "FhirBundle": {
            "type": "object",
            "required": ["resourceType", "type", "entry"],
            "properties": {
                "resourceType": {"const": "Bundle"},
                "type": {"type": "string"},
                "entry": {"type": "array"},
            },
        },
        "AcknowledgementRequest": {
            "type": "object",
            "additionalProperties": False,
            "description": "Empty body: filed. A person's statuses (read, actioned) are given "
            "in the web inbox, under their own staff id.",
            "properties": {
                "status": {"type": "string", "enum": by_case_system, "default": "filed"},
                "reasons": {
                    "type": "array",
                    "maxItems": 16,
                    "description": "Reason codes; required (at least one) for rejected, "
                    "absent or empty for filed.",
                    "items": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_.:-]{0,63}$"},
                },
            },
        },
        "Acknowledgement": {
            "type": "object",
            "required": ["referral_id", "status", "acknowledged_at", "first"],
            "additionalProperties": False,
            "properties": {
                "referral_id": {"type": "string", "format": "uuid"},
                "status": {
                    "type": "string",
                    "enum": statuses,
                    "description": "The first acknowledgement's (read or actioned if a person "
                    "gave it first).",
                },
                "acknowledged_at": acknowledged_at,
                "first": {
                    "type": "boolean",
                    "description": "Whether this request made the acknowledgement.",
                },
            },
        },
        **model_components([Disclosure], mode="validation"),
        **problem_components(GATEWAY_PROBLEMS.values()),
    }
    return service_document(
        title="Cairn agency gateway",
        summary="What one agency received through Cairn, for its case systems.",
        description=(
            "Served by `cairn gateway --as AGENCY` on the agency's own machine, over mutual "
            "TLS only: a client certificate naming this agency (from the federation CA or "
            "the agency's own CA), or a case system's certificate configured by its SHA-256 "
            "(CAIRN_GATEWAY_CASE_SYSTEMS). Any other certificate is refused 403. Every "
            "error is an RFC 9457 problem (application/problem+json) whose `type` is one of "
            "the `urn:cairn:problem:` types under components.schemas (`problem.<slug>`). "
            "Generated from the code by `cairn schemas openapi`."
        ),
        port=port,
        client_certificate="A client certificate of this agency or of one of its "
        "configured case systems.",
        paths=paths,
        schemas=schemas,
    )
