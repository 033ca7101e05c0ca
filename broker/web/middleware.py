"""What every request to a Cairn HTTP service goes through: its id, problem mapping, identity.

``problems_middleware`` gives each request an id and turns every error into RFC 9457
problem+json (``broker.web.problems`` holds the mapping), so nothing leaves as a traceback; an
error that reaches its 500 branch is a bug to reproduce in tests/unit/hostile, never the
client's fault. ``tls_agency`` names the federation member of the verified client certificate;
``read_body`` enforces the body limit while streaming. The broker's app and the auditor's app
both use them.

A client may name its request with ``X-Request-Id``. The id is kept only in the form
``REQUEST_ID_FORM``: a letter or digit, then up to 63 letters, digits, ``.``, ``_``, ``:`` or
``-``, which the audit events' ``request_id`` accepts and a Kafka header carries byte for byte.
Any other value (a space, ``=``, a lone ``-``, non-ASCII, too long, empty) is replaced by a
fresh UUID4, which the response's ``X-Request-Id`` returns; the request is handled as usual.
The value sent is never logged, only the id used and the event ``request.id_replaced``:
whatever a client puts there (a name) must not reach the log.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from broker.ops.metrics import Metrics
from broker.web.problems import http_problem, problem_for, problem_response
from keys import peer_agency
from keys.errors import VerificationError as KeyVerificationError
from schemas.errors import AuthenticationError, CairnError, InputError, PayloadTooLarge

__all__ = [
    "METRICS",
    "REQUEST_ID",
    "REQUEST_ID_FORM",
    "TLS_AGENCY",
    "Handler",
    "problems_middleware",
    "read_body",
    "tls_agency",
]

log = structlog.get_logger("broker.web.app")  # the logger name operators already filter on

METRICS = web.AppKey("metrics", Metrics)
REQUEST_ID = web.RequestKey("request_id", str)
TLS_AGENCY = web.RequestKey("tls_agency", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: The X-Request-Id values kept as sent (a subset of schemas.audit's RequestId).
REQUEST_ID_FORM = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")


async def read_body(request: web.Request, limit: int) -> bytes:
    """Read the body while counting; refuse as soon as it passes ``limit`` bytes.

    A body too slow raises ``RequestTimeout`` from the stream (``broker.web.server`` sets it
    there, for every handler); a client gone half-way, or a body that does not decode (a broken
    chunked framing or compression), is an input error too, not a 500 with a traceback.
    """
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.content.iter_chunked(65_536):
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(limit)
            chunks.append(chunk)
    except ConnectionResetError:
        raise InputError("the connection closed before the request body was complete") from None
    except (HttpProcessingError, RequestPayloadError):  # aiohttp's parser: framing, encoding
        raise InputError("the request body's transfer or content encoding is malformed") from None
    return b"".join(chunks)


@web.middleware
async def problems_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as problem+json; nothing leaves as a traceback."""
    sent = request.headers.get("X-Request-Id")
    if sent is not None and REQUEST_ID_FORM.fullmatch(sent):
        request_id, replaced = sent, False
    else:
        request_id, replaced = str(uuid.uuid4()), sent is not None
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    request[REQUEST_ID] = request_id
    if replaced:
        log.info("request.id_replaced")  # the fresh id is bound; the value sent is never logged
    try:
        response = await handler(request)
    except CairnError as exc:
        status, body = problem_for(exc)
        if request.path == "/v1/referrals":
            request.app[METRICS].refused.labels(reason=str(body["type"]).rsplit(":", 1)[-1]).inc()
        log.info(
            "request.refused",
            status=status,
            problem=body["type"],
            reason=body.get("reason"),
            path=request.path,
            tls_agency=request.get(TLS_AGENCY),
        )
        response = problem_response(status, body, request_id=request_id)
        if isinstance(exc, PayloadTooLarge):
            # The rest of the body was never read; the connection cannot be reused.
            response.force_close()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        slug = {404: "not-found", 405: "method-not-allowed"}.get(exc.status, "http-error")
        body = http_problem(exc.status, slug, exc.reason, exc.text or exc.reason)
        response = problem_response(exc.status, body, request_id=request_id)
        if "Allow" in exc.headers:  # RFC 9110 §15.5.6: a 405 lists the methods it takes
            response.headers["Allow"] = exc.headers["Allow"]
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("request.failed", path=request.path)
        body = http_problem(
            500, "internal", "Internal error", "an internal error occurred; nothing was sent"
        )
        response = problem_response(500, body, request_id=request_id)
    response.headers["X-Request-Id"] = request_id
    return response


def tls_agency(request: web.Request) -> str:
    """The agency named by the verified client certificate of this request's connection."""
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    if ssl_object is None:
        raise AuthenticationError("the broker only accepts submissions over mutual TLS")
    try:
        agency = peer_agency(ssl_object)
    except KeyVerificationError as exc:
        raise AuthenticationError(
            f"the client certificate does not identify an agency: {exc}"
        ) from None
    request[TLS_AGENCY] = agency
    return agency
