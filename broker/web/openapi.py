"""The broker's HTTP contract as an OpenAPI 3.1 document, generated from the code it describes.

``broker_document()`` builds what ``broker/web/openapi.json`` holds (``cairn schemas openapi``
writes it; a unit test fails when the checked-in file drifts, when a route of the app is not in
it or when a documented path is not a route). The receipt's schema is the pydantic model's; the
problem types are ``broker.web.problems``' tables, each with the extension members
``problem_for`` gives it, referenced by the responses that can return it. The auditor's document
(``broker.audit.openapi``) shares ``service_problem_types``: both apps run
``problems_middleware``.

``openapi_route`` serves a package's checked-in ``openapi.json`` at ``GET /openapi.json``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from importlib import resources
from typing import Any, Final

from aiohttp import web

from broker.config import Settings
from broker.ops.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from broker.web.dashboard import _OPS_FILES, DEFAULT_WINDOW_S, MAX_WINDOW_S
from broker.web.middleware import REQUEST_ID_FORM
from broker.web.problems import PROBLEM_TYPES, REASON_TYPES
from schemas.errors import InputError
from schemas.openapi import (
    ProblemType,
    model_components,
    problem_components,
    problem_responses,
    ref,
    response,
    service_document,
)
from schemas.receipt import Receipt

__all__ = [
    "DOCUMENT_NAME",
    "REQUEST_ID_HEADER",
    "REQUEST_ID_MEMBER",
    "broker_document",
    "openapi_route",
    "problems_for",
    "service_problem_types",
]

DOCUMENT_NAME: Final = "openapi.json"
JOSE: Final = "application/jose"  # RFC 7515 §9.2.1: a JWS in compact serialisation

#: The ``X-Request-Id`` every answer of the middleware carries (``broker.web.middleware``).
REQUEST_ID_HEADER: Final = {
    "X-Request-Id": {
        "description": (
            "The request's id: the X-Request-Id sent, if it has the form below, else a fresh "
            "UUID4. The audit events of the request carry it."
        ),
        "required": True,
        "schema": {"type": "string", "pattern": f"^{REQUEST_ID_FORM.pattern}$"},
    }
}
REQUEST_ID_MEMBER: Final = {
    "request_id": {
        "type": "string",
        "pattern": f"^{REQUEST_ID_FORM.pattern}$",
        "description": "The request's id, as in the X-Request-Id header.",
    }
}

_ERRORS: Final = {
    "type": "array",
    "description": "One entry per bad field: its path and what is wrong, never its value.",
    "items": {
        "type": "object",
        "required": ["field", "problem"],
        "properties": {"field": {"type": "string"}, "problem": {"type": "string"}},
        "additionalProperties": False,
    },
}
_REASONS: Final = {
    "type": "array",
    "description": "Rule codes (broker.policy.rules), never personal data.",
    "items": {"type": "string"},
}
_EXPLANATION: Final = {
    "type": "array",
    "description": "Each rule code in words, with the law or guidance it rests on.",
    "items": {
        "type": "object",
        "required": ["code", "text", "citation"],
        "properties": {
            "code": {"type": "string"},
            "text": {"type": "string"},
            "citation": {"type": "string"},
        },
        "additionalProperties": False,
    },
}
_MISSING: Final = {
    "type": "array",
    "description": "The field paths of the items to add; empty when none.",
    "items": {"type": "string"},
}


def _summary(cls: type) -> str:
    doc = (cls.__doc__ or cls.__name__).strip()
    return doc.split("\n\n", 1)[0].replace("\n", " ")


def service_problem_types() -> dict[str, ProblemType]:
    """Every problem type ``problems_middleware`` can answer with, by slug, with its members.

    From ``PROBLEM_TYPES`` (an input error may name fields and rule codes; a 422 always
    explains its codes and lists what is missing), ``REASON_TYPES`` (a key verification failure
    also carries its reason code) and the HTTP layer's own (404, 405, any other 4xx aiohttp
    raises). ``internal`` (500) is not among them: a 500 is a bug, never part of the contract.
    """
    found: dict[str, ProblemType] = {}

    def add(t: ProblemType) -> None:
        found[t.slug] = found[t.slug].merged(t) if t.slug in found else t

    for cls, status, slug, title in PROBLEM_TYPES:
        members: dict[str, Any] = {}
        required: tuple[str, ...] = ()
        if issubclass(cls, InputError):
            members = {"errors": _ERRORS, "reasons": _REASONS}
            if status == 422:
                members |= {"explanation": _EXPLANATION, "missing": _MISSING}
                required = ("reasons", "explanation", "missing")
        add(ProblemType(slug, status, title, _summary(cls), members, required))
    codes: dict[str, list[str]] = {}
    for reason, (_status, slug, _title) in REASON_TYPES.items():
        codes.setdefault(slug, []).append(reason.value)
    for status, slug, title in REASON_TYPES.values():
        if slug in found and "reason" in found[slug].members:
            continue
        reason_member = {
            "type": "string",
            "enum": codes[slug],
            "description": "The verification failure's reason code (keys.errors.Reason).",
        }
        add(
            ProblemType(
                slug,
                status,
                title,
                f"The signed referral failed verification ({', '.join(codes[slug])}).",
                {"reason": reason_member, "errors": _ERRORS, "reasons": _REASONS},
                ("reason",),
            )
        )
    add(ProblemType("not-found", 404, "Not Found", "No such resource."))
    add(
        ProblemType(
            "method-not-allowed",
            405,
            "Method Not Allowed",
            "The resource does not take this method; the Allow header lists those it takes.",
        )
    )
    add(
        ProblemType(
            "http-error",
            None,
            None,
            "Another HTTP error raised by the HTTP layer (aiohttp), with its own status and "
            "reason phrase as the title.",
        )
    )
    return found


def problems_for(types: Mapping[str, ProblemType], slugs: Iterable[str]) -> list[ProblemType]:
    """The problem types named by ``slugs`` (a KeyError names one that does not exist)."""
    return [types[s] for s in slugs]


_AUTHENTICATED: Final = ("unauthenticated",)


def _json(schema: Mapping[str, Any], description: str) -> dict[str, Any]:
    return response(description, schema, headers=REQUEST_ID_HEADER)


def _ops_schema() -> dict[str, Any]:
    """The ops view's JSON (``broker.web.dashboard.StoreOpsSource.snapshot``)."""
    nullable_int = {"type": ["integer", "null"]}
    expiring = {
        "type": "object",
        "required": ["kind", "subject", "expires_at", "seconds_left"],
        "properties": {
            "kind": {"type": "string"},
            "subject": {"type": "string"},
            "expires_at": {"type": "string", "format": "date-time"},
            "seconds_left": {"type": "integer"},
        },
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "description": (
            "Flows, lag per recipient, overdue items, DLQ count, health and credentials "
            "expiring soon: ids, agencies, purposes, counts and times only."
        ),
        "required": [
            "generated_at",
            "window_s",
            "flows",
            "agencies",
            "overdue",
            "overdue_total",
            "overdue_late",
            "dlq",
            "quarantine",
            "health",
            "credentials",
        ],
        "properties": {
            "generated_at": {"type": "string", "format": "date-time"},
            "window_s": {"type": "integer"},
            "flows": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": [
                        "sender",
                        "recipient",
                        "purpose",
                        "disclosed",
                        "refused",
                        "per_hour",
                    ],
                    "properties": {
                        "sender": {"type": "string"},
                        "recipient": {"type": "string"},
                        "purpose": {"type": "string"},
                        "disclosed": {"type": "integer", "minimum": 0},
                        "refused": {"type": "integer", "minimum": 0},
                        "per_hour": {"type": "number", "minimum": 0},
                    },
                    "additionalProperties": False,
                },
            },
            "agencies": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["agency", "unacknowledged", "oldest_unacknowledged_s"],
                    "properties": {
                        "agency": {"type": "string"},
                        "unacknowledged": {"type": "integer", "minimum": 0},
                        "oldest_unacknowledged_s": nullable_int,
                    },
                    "additionalProperties": False,
                },
            },
            "overdue": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": [
                        "message_id",
                        "purpose",
                        "sender",
                        "recipient",
                        "due_at",
                        "overdue_s",
                        "acknowledged_at",
                    ],
                    "properties": {
                        "message_id": {"type": "string"},
                        "purpose": {"type": ["string", "null"]},
                        "sender": {"type": ["string", "null"]},
                        "recipient": {"type": "string"},
                        "due_at": {"type": "string", "format": "date-time"},
                        "overdue_s": {"type": "integer"},
                        "acknowledged_at": {
                            "type": ["string", "null"],
                            "format": "date-time",
                            "description": "When it was acknowledged after its deadline; "
                            "null: not acknowledged yet.",
                        },
                    },
                    "additionalProperties": False,
                },
            },
            "overdue_total": {
                "type": "integer",
                "minimum": 0,
                "description": "Disclosures not acknowledged by their deadline (the overdue "
                "sweep's, in the state store), late ones included; the same count as /metrics' "
                "cairn_disclosures_overdue.",
            },
            "overdue_late": {
                "type": "integer",
                "minimum": 0,
                "description": "Of overdue_total, those acknowledged after their deadline.",
            },
            "dlq": {
                "type": ["integer", "null"],
                "description": "Records on the DLQ topic; null if Kafka did not say in time.",
            },
            "quarantine": {"type": "null"},
            "health": {
                "type": "object",
                "additionalProperties": {"enum": ["up", "down"]},
            },
            "credentials": {"type": "array", "items": expiring},
            "horizons": {
                "type": "object",
                "description": (
                    "broker.ops.health.horizons: the auditor, the registry and the certificate "
                    "that expire first (null: none found), the school calendar's last day."
                ),
                "required": ["auditor", "registry", "certificate", "calendar"],
                "properties": {
                    "auditor": {
                        "type": "object",
                        "required": ["answering", "size", "checkpoint_age_s"],
                        "properties": {
                            "answering": {"type": ["boolean", "null"]},
                            "size": nullable_int,
                            "checkpoint_age_s": nullable_int,
                        },
                        "additionalProperties": False,
                    },
                    "registry": {"oneOf": [expiring, {"type": "null"}]},
                    "certificate": {"oneOf": [expiring, {"type": "null"}]},
                    "calendar": {
                        "type": "object",
                        "required": ["last_day", "days_left"],
                        "properties": {
                            "last_day": {"type": ["string", "null"], "format": "date"},
                            "days_left": nullable_int,
                        },
                        "additionalProperties": False,
                    },
                },
                "additionalProperties": False,
            },
        },
        "additionalProperties": False,
    }


def broker_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``cairn serve`` (``broker.web.app``, with the ops view)."""
    types = service_problem_types()
    every = sorted(types)
    refusals = [s for s in every if s not in ("not-found", "method-not-allowed", "http-error")]

    def problems(*slugs: str) -> dict[str, dict[str, Any]]:
        return problem_responses(problems_for(types, slugs), headers=REQUEST_ID_HEADER)

    receipt = {
        "description": "",
        "headers": {
            **REQUEST_ID_HEADER,
            "Location": {
                "description": "The referral's path: /v1/referrals/{referral_id}.",
                "required": True,
                "schema": {"type": "string"},
            },
        },
        "content": {"application/json": {"schema": ref("Receipt")}},
    }
    settings = Settings.model_fields
    port = settings["http_port"].default
    limit = settings["max_body_bytes"].default
    paths: dict[str, Any] = {
        "/v1/referrals": {
            "post": {
                "operationId": "submitReferral",
                "summary": "Submit a signed referral or Encompass notification.",
                "description": (
                    "The body is the sender's JWS in compact serialisation (RFC 7515 §7.1), "
                    "signed with its registered Ed25519 key, over a referral "
                    "(schemas/json/referral.schema.json) or an Operation Encompass "
                    "notification (schemas/json/encompass-notification.schema.json). The TLS "
                    "identity, the signer and the named sender must be one agency. 202 once "
                    "Kafka has committed every disclosure and audit event; 200 with the first "
                    "receipt for the same submission again (nothing is sent twice). The body "
                    f"limit is CAIRN_MAX_BODY_BYTES ({limit} bytes unless configured)."
                ),
                "requestBody": {
                    "required": True,
                    "content": {
                        JOSE: {
                            "schema": {
                                "type": "string",
                                "description": "header.payload.signature, each base64url.",
                                "pattern": r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$",
                            }
                        }
                    },
                },
                "responses": {
                    "202": {**receipt, "description": "Accepted: every record is in Kafka."},
                    "200": {**receipt, "description": "Seen before: the first receipt."},
                    **problem_responses(problems_for(types, refusals), headers=REQUEST_ID_HEADER),
                },
            }
        },
        "/healthz": {
            "get": {
                "operationId": "health",
                "summary": "The process is alive.",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["status"],
                            "properties": {"status": {"const": "ok"}},
                            "additionalProperties": False,
                        },
                        "Alive.",
                    )
                },
            }
        },
        "/readyz": {
            "get": {
                "operationId": "ready",
                "summary": "Ready only while Kafka takes transactions, the registry is trusted "
                "and the broker's signing key is usable.",
                "responses": {
                    "200": _json(ref("Readiness"), "Ready."),
                    "503": _json(ref("Readiness"), "Not ready: the body says what is missing."),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics (codes and counts only), for any federation "
                "certificate (an agency's or the auditor's).",
                "responses": {
                    "200": {
                        "description": "The Prometheus text exposition format 0.0.4.",
                        "headers": dict(REQUEST_ID_HEADER),
                        "content": {
                            METRICS_CONTENT_TYPE.split(";")[0]: {"schema": {"type": "string"}}
                        },
                    },
                    **problems(*_AUTHENTICATED),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document.",
                "responses": {"200": _json({"type": "object"}, "The OpenAPI 3.1 document.")},
            }
        },
        "/ui": {
            "get": {
                "operationId": "opsViewRedirect",
                "summary": "Redirects to /ui/.",
                "responses": {
                    "302": {
                        "description": "Found: the ops view is at /ui/.",
                        "headers": {"Location": {"required": True, "schema": {"const": "/ui/"}}},
                    }
                },
            }
        },
        "/ui/": {
            "get": {
                "operationId": "opsView",
                "summary": "The ops view (a static page; it reads /ui/api/ops).",
                "responses": {
                    "200": {
                        "description": "The page.",
                        "headers": dict(REQUEST_ID_HEADER),
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    },
                    **problems(*_AUTHENTICATED),
                },
            }
        },
        "/ui/api/ops": {
            "get": {
                "operationId": "opsData",
                "summary": "The ops view's figures over a window.",
                "parameters": [
                    {
                        "name": "window_s",
                        "in": "query",
                        "description": "The window, in seconds.",
                        "schema": {
                            "type": "integer",
                            "minimum": 60,
                            "maximum": MAX_WINDOW_S,
                            "default": DEFAULT_WINDOW_S,
                        },
                    }
                ],
                "responses": {
                    "200": _json(ref("OpsSnapshot"), "The figures."),
                    **problems("unauthenticated", "invalid-referral"),
                },
            }
        },
        "/ui/static/{name}": {
            "get": {
                "operationId": "opsViewFile",
                "summary": "The ops view's script and style sheet.",
                "parameters": [
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "enum": sorted(_OPS_FILES)},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "The file.",
                        "headers": dict(REQUEST_ID_HEADER),
                        "content": {
                            media: {"schema": {"type": "string"}}
                            for media in sorted(set(_OPS_FILES.values()))
                        },
                    },
                    **problems("unauthenticated", "not-found"),
                },
            }
        },
    }
    readiness = {
        "type": "object",
        "required": ["status", "kafka", "registry", "signing_key"],
        "properties": {
            "status": {"enum": ["ready", "not ready"]},
            "kafka": {"enum": ["reachable", "unreachable", "failing"]},
            "registry": {"enum": ["trusted", "untrusted"]},
            "signing_key": {"enum": ["usable", "unusable"]},
        },
        "additionalProperties": False,
    }
    return service_document(
        title="Cairn broker",
        summary="Signed safeguarding referrals in; receipts and RFC 9457 problems out.",
        description=(
            "Served by `cairn serve` over mutual TLS only: a client certificate issued by "
            "the federation CA, naming an agency of the registry (or the auditor, for "
            "/metrics and the ops view). Every error is an RFC 9457 problem "
            "(application/problem+json) whose `type` is one of the `urn:cairn:problem:` "
            "types under components.schemas (`problem.<slug>`); each response lists the "
            "types it can carry. Generated from the code by `cairn schemas openapi`."
        ),
        port=port,
        client_certificate="A client certificate issued by the federation CA.",
        paths=paths,
        schemas={
            **model_components([Receipt]),
            "Readiness": readiness,
            "OpsSnapshot": _ops_schema(),
            **problem_components(types.values(), always=REQUEST_ID_MEMBER),
        },
    )


def openapi_route(package: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A handler serving ``package``'s checked-in ``openapi.json`` (read once, now: a missing
    document fails the app's creation, not a request)."""
    body = resources.files(package).joinpath(DOCUMENT_NAME).read_bytes()

    async def openapi(_request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    return openapi
