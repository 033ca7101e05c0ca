"""RFC 9457 problem details: the one place where errors become HTTP responses.

Each error has a stable ``type`` URI an integrator can switch on, a status and a title. The
``detail`` is the error's own message, which names fields, limits and codes but never values
sent. Verification failures from ``keys`` carry a reason code, and each reason has its own type.

The keys of a problem body:

==================  ========================================================================
``type``            ``urn:cairn:problem:<slug>``, stable per error class (always)
``title``           the class's title (always)
``status``          the HTTP status (always)
``detail``          the error's own message (always)
``errors``          ``[{"field", "problem"}]``, one per bad field, when the error names fields
``reason``          a ``keys`` verification failure's reason code (403 signature problems)
``reasons``         the rule codes (always on a 422; otherwise when the error carries codes)
``explanation``     a 422 only: ``[{"code", "text", "citation"}]``, each rule code in words
``missing``         a 422 only: the field paths of the items to add (``[]`` when none)
``request_id``      the request's id, added by the middleware
==================  ========================================================================

A 422 (``invalid-referral``, ``unknown-agency``, ``policy-refusal``) is a decision refusing the
message as a whole, so its body carries what ``cairn policy explain --json`` prints as
``refused`` (``broker.policy.refusals``): the same rule codes (``fan_out.exceeded``,
``recipient.unknown``, ``recipient.self``, ``sender.unknown``, ``consent.override.missing``,
``consent.override.incomplete``, ``lawful_basis.missing``, ``schema.invalid``...), their
sentences and citations, and the missing items.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from broker.policy.admission import PolicyRefusal
from broker.policy.refusals import refusal
from keys.errors import Reason
from keys.errors import VerificationError as KeyVerificationError
from schemas.errors import (
    AuthenticationError,
    CairnError,
    DisclosureTooLarge,
    InfrastructureError,
    InputError,
    PayloadTooLarge,
    RegistryUntrusted,
    ReplayError,
    RequestTimeout,
    SchemaError,
    SenderMismatch,
    SigningUnavailable,
    StateUnavailable,
    TransportError,
    UnknownAgency,
    UnknownSender,
    UnsupportedMediaType,
    VerificationError,
)

__all__ = ["PROBLEM_TYPES", "REASON_TYPES", "http_problem", "problem_for", "problem_response"]

MEDIA_TYPE = "application/problem+json"

# Most specific class first: the first isinstance match wins.
PROBLEM_TYPES: tuple[tuple[type[CairnError], int, str, str], ...] = (
    (PayloadTooLarge, 413, "payload-too-large", "Request body too large"),
    (DisclosureTooLarge, 413, "disclosure-too-large", "A disclosure is larger than Kafka accepts"),
    (RequestTimeout, 408, "request-timeout", "Request body too slow"),
    (UnsupportedMediaType, 415, "unsupported-media-type", "Unsupported media type"),
    (UnknownSender, 403, "unknown-sender", "The sending agency is not in the registry"),
    (SenderMismatch, 403, "sender-mismatch", "Sender does not match the TLS identity"),
    (AuthenticationError, 403, "unauthenticated", "The sender is not authenticated"),
    (ReplayError, 409, "replay-conflict", "Referral id already used with other content"),
    (UnknownAgency, 422, "unknown-agency", "Agency not in the federation"),
    (PolicyRefusal, 422, "policy-refusal", "No lawful basis to share this referral"),
    (SchemaError, 422, "invalid-referral", "The referral is not valid"),
    (VerificationError, 403, "verification-failed", "Verification failed"),
    (InputError, 400, "bad-request", "Bad request"),
    (TransportError, 503, "kafka-unavailable", "Delivery is unavailable; nothing was sent"),
    (RegistryUntrusted, 503, "registry-untrusted", "The federation registry is not trusted"),
    (SigningUnavailable, 503, "broker-cannot-sign", "The broker cannot sign; nothing was sent"),
    (StateUnavailable, 503, "state-unavailable", "The broker's state store is unavailable"),
    (InfrastructureError, 503, "unavailable", "Service unavailable; nothing was sent"),
)

# A keys.VerificationError's reason picks its own problem type: (status, slug, title).
REASON_TYPES: dict[Reason, tuple[int, str, str]] = {
    Reason.UNSIGNED: (403, "unsigned-referral", "The referral is not signed"),
    Reason.MALFORMED: (400, "malformed-signature", "The signed referral is not a valid JWS"),
    Reason.TOO_LARGE: (413, "payload-too-large", "Request body too large"),
    Reason.ALGORITHM: (403, "algorithm-not-allowed", "Signature algorithm not allowed"),
    Reason.WRONG_TYPE: (403, "wrong-token-type", "The token is not a signed referral"),
    Reason.BAD_SIGNATURE: (403, "bad-signature", "The signature does not verify"),
    Reason.UNKNOWN_KEY: (403, "unknown-key", "The signing key is not in the registry"),
    Reason.WRONG_SIGNER: (403, "wrong-signer", "Signed by another agency's key"),
    Reason.WRONG_USE: (403, "wrong-key-use", "The key is not a signing key"),
    Reason.KEY_REVOKED: (403, "key-revoked", "The signing key is revoked"),
    Reason.KEY_EXPIRED: (403, "key-expired", "The signing key has expired"),
    Reason.KEY_RETIRED: (403, "key-expired", "The signing key has expired"),
    Reason.KEY_NOT_YET_VALID: (403, "key-not-yet-valid", "The signing key is not yet valid"),
    Reason.NO_IAT: (403, "signature-time-invalid", "The signature time is missing or invalid"),
    Reason.IAT_TOO_OLD: (403, "signature-time-invalid", "The signature time is missing or invalid"),
    Reason.IAT_IN_FUTURE: (
        403,
        "signature-time-invalid",
        "The signature time is missing or invalid",
    ),
    Reason.IAT_INVALID: (
        403,
        "signature-time-invalid",
        "The signature time is missing or invalid",
    ),
}


def _type_uri(slug: str) -> str:
    return f"urn:cairn:problem:{slug}"


def problem_for(exc: CairnError) -> tuple[int, dict[str, Any]]:
    """Status and problem body for ``exc``."""
    if isinstance(exc, KeyVerificationError) and exc.reason in REASON_TYPES:
        status, slug, title = REASON_TYPES[exc.reason]
        body = _body(status, slug, title, exc)
        body["reason"] = exc.reason.value
        return status, body
    for cls, status, slug, title in PROBLEM_TYPES:
        if isinstance(exc, cls):
            return status, _body(status, slug, title, exc)
    raise RuntimeError(f"no problem type is mapped for {type(exc).__name__}")


def _body(status: int, slug: str, title: str, exc: CairnError) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": _type_uri(slug),
        "title": title,
        "status": status,
        "detail": str(exc),
    }
    problems = getattr(exc, "problems", ())
    if problems:
        body["errors"] = [{"field": p.field, "problem": p.problem} for p in problems]
    if status == 422 and isinstance(exc, InputError):
        # A refusal of the message as a whole: the codes, in words, and what to add.
        refused = refusal(exc)
        body["reasons"] = list(refused.reasons)
        body["explanation"] = [r.as_record() for r in refused.explanation]
        body["missing"] = list(refused.missing)
        return body
    reasons = getattr(exc, "reasons", ())
    if reasons:
        body["reasons"] = list(reasons)  # rule codes, never personal data
    return body


def problem_response(
    status: int, body: dict[str, Any], *, request_id: str | None = None
) -> web.Response:
    if request_id is not None:
        body = {**body, "request_id": request_id}
    headers = {"Retry-After": "5"} if status == 503 else None
    response = web.Response(
        status=status, text=json.dumps(body), content_type=MEDIA_TYPE, headers=headers
    )
    if status == 408:
        # RFC 9110 15.5.9: a 408 means the server stopped waiting, so it closes the connection.
        response.force_close()
    return response


def http_problem(status: int, slug: str, title: str, detail: str) -> dict[str, Any]:
    """Problem body for errors raised by the HTTP layer itself (404, 405, 500)."""
    return {"type": _type_uri(slug), "title": title, "status": status, "detail": detail}
