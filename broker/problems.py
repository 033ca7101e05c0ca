"""RFC 9457 problem details: the one place where errors become HTTP responses.

Each error class has a stable ``type`` URI an integrator can switch on, a status and a title. The
``detail`` is the error's own message, which names fields and limits but never values sent.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from schemas.errors import (
    CairnError,
    InfrastructureError,
    InputError,
    PayloadTooLarge,
    SchemaError,
    TransportError,
    UnknownAgency,
    UnsupportedMediaType,
    VerificationError,
)

__all__ = ["PROBLEM_TYPES", "http_problem", "problem_for", "problem_response"]

MEDIA_TYPE = "application/problem+json"

# Most specific class first: the first isinstance match wins.
PROBLEM_TYPES: tuple[tuple[type[CairnError], int, str, str], ...] = (
    (PayloadTooLarge, 413, "payload-too-large", "Request body too large"),
    (UnsupportedMediaType, 415, "unsupported-media-type", "Unsupported media type"),
    (UnknownAgency, 422, "unknown-agency", "Agency not in the federation"),
    (SchemaError, 422, "invalid-referral", "The referral is not valid"),
    (VerificationError, 422, "verification-failed", "Verification failed"),
    (InputError, 400, "bad-request", "Bad request"),
    (TransportError, 503, "kafka-unavailable", "Delivery is unavailable; nothing was sent"),
    (InfrastructureError, 503, "unavailable", "Service unavailable; nothing was sent"),
)


def _type_uri(slug: str) -> str:
    return f"urn:cairn:problem:{slug}"


def problem_for(exc: CairnError) -> tuple[int, dict[str, Any]]:
    for cls, status, slug, title in PROBLEM_TYPES:
        if isinstance(exc, cls):
            body: dict[str, Any] = {
                "type": _type_uri(slug),
                "title": title,
                "status": status,
                "detail": str(exc),
            }
            problems = getattr(exc, "problems", ())
            if problems:
                body["errors"] = [{"field": p.field, "problem": p.problem} for p in problems]
            return status, body
    raise RuntimeError(f"no problem type is mapped for {type(exc).__name__}")


def problem_response(
    status: int, body: dict[str, Any], *, request_id: str | None = None
) -> web.Response:
    if request_id is not None:
        body = {**body, "request_id": request_id}
    headers = {"Retry-After": "5"} if status == 503 else None
    return web.Response(
        status=status, text=json.dumps(body), content_type=MEDIA_TYPE, headers=headers
    )


def http_problem(status: int, slug: str, title: str, detail: str) -> dict[str, Any]:
    """Problem body for errors raised by the HTTP layer itself (404, 405, 500)."""
    return {"type": _type_uri(slug), "title": title, "status": status, "detail": detail}
