"""The gateway's HTTP API for case systems, over mutual TLS (``gateway/openapi.json``).

Who may call: a client whose verified certificate names this agency (issued by the federation
CA, or by the agency's own CA that the federation trusts for it), or a case system whose
certificate's SHA-256 is configured (``CAIRN_GATEWAY_CASE_SYSTEMS``). Any other certificate that
passed the handshake (another agency's, say) gets a 403; no certificate, no connection.

Routes (``/v1``):

- ``GET /v1/disclosures?after=CURSOR&limit=N&status=new|all``: a page, in the order the
  gateway stored them, with the cursor for the next page;
- ``GET /v1/disclosures/{referral_id}``: the disclosure's JSON as received (``Accept:
  application/fhir+json`` or ``?format=fhir``: an HL7 FHIR R4 Bundle, for a health recipient);
  each fetch is a view on the record (``client:<id>``);
- ``POST /v1/disclosures/{referral_id}/acknowledgement``: acknowledge it (signed with the
  agency's key and sent to the broker); a repeat answers with the first;
- ``GET /openapi.json``: the API's OpenAPI 3.1 document (``gateway/openapi.json``, generated
  by ``gateway.openapi``).

Every error is an RFC 9457 problem (``application/problem+json``) with a ``urn:cairn:problem:``
type; no personal data in a URL, a log line or an error.
"""

from __future__ import annotations

import hashlib
import json
import re
import ssl
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any, Final
from uuid import UUID

import structlog
from aiohttp import web
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from gateway.service import Gateway
from gateway.store import Stored, deadline_of
from keys.pki import agency_of_certificate
from schemas.errors import InfrastructureError, InputError
from schemas.receipt import PERSONAL_STATUSES, AcknowledgementStatus

__all__ = ["PROBLEM", "Callers", "create_api", "summary"]

log = structlog.get_logger(__name__)

PROBLEM: Final = "urn:cairn:problem:"
GATEWAY: Final = web.AppKey("gateway", Gateway)
_CLIENT_ID: Final = web.RequestKey("client", str)  # the caller's client id
FHIR: Final = "application/fhir+json"
_MAX_ACK_BYTES: Final = 4096

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def problem(
    status: int, kind: str, title: str, detail: str | None = None, **extra: Any
) -> web.Response:
    body: dict[str, Any] = {"type": PROBLEM + kind, "title": title, "status": status}
    if detail:
        body["detail"] = detail
    body.update(extra)
    return web.Response(
        status=status, text=json.dumps(body), content_type="application/problem+json"
    )


class Callers:
    """Who a verified client certificate is, for this agency's gateway."""

    def __init__(
        self, agency: str, issuers: tuple[x509.Certificate, ...], case_systems: dict[str, str]
    ) -> None:
        self.agency = agency
        self._issuers = issuers  # the federation CA, and the agency's own CA if it has one
        self._by_fingerprint = {fp: client for client, fp in case_systems.items()}

    def client_of(self, der: bytes) -> str | None:
        """The client id of a caller this gateway serves, or None."""
        found = self._by_fingerprint.get(hashlib.sha256(der).hexdigest())
        if found is not None:
            return found
        try:
            leaf = x509.load_der_x509_certificate(der)
            named = agency_of_certificate(leaf)
        except ValueError:
            return None
        if named != self.agency:
            return None
        for issuer in self._issuers:
            try:
                leaf.verify_directly_issued_by(issuer)
            except (ValueError, TypeError, InvalidSignature):
                continue
            return named
        return None


def _identity(callers: Callers) -> Any:
    @web.middleware
    async def identity(request: web.Request, handler: Handler) -> web.StreamResponse:
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        der = (
            ssl_object.getpeercert(binary_form=True)
            if isinstance(ssl_object, ssl.SSLObject)
            else None
        )
        client = callers.client_of(der) if der else None
        if client is None:
            log.warning("gateway.client_refused", presented=bool(der))
            return problem(
                403,
                "forbidden-client",
                "This client may not use this agency's gateway",
                f"only {callers.agency}'s own certificates and its configured case systems",
            )
        request[_CLIENT_ID] = client
        return await handler(request)

    return identity


@web.middleware
async def problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kinds = {404: "not-found", 405: "method-not-allowed", 413: "too-large"}
        answer = problem(exc.status, kinds.get(exc.status, "bad-request"), exc.reason)
        if "Allow" in exc.headers:  # RFC 9110 §15.5.6: a 405 lists the methods it takes
            answer.headers["Allow"] = exc.headers["Allow"]
        return answer
    except InputError as exc:
        return problem(
            400, (exc.reasons or ("bad-request",))[0].replace("_", "-"), "Bad request", str(exc)
        )
    except InfrastructureError:
        log.warning("gateway.unavailable", path=request.path)
        return problem(503, "unavailable", "The gateway's store is unavailable; try again")
    except Exception as exc:  # a bug: a problem, never a traceback; the type alone is logged
        log.error("gateway.error", error=type(exc).__name__)
        return problem(500, "internal", "The gateway failed; nothing was changed")


def summary(stored: Stored) -> dict[str, Any]:
    """A disclosure's listing entry: ids, codes and times only."""
    due = deadline_of(stored.disclosure())
    return {
        "referral_id": str(stored.referral_id),
        "sender": stored.sender,
        "purpose": stored.purpose,
        "kind": stored.kind,
        "received_at": stored.received_at.isoformat(),
        "delete_after": None if stored.delete_after is None else stored.delete_after.isoformat(),
        "acknowledge_by": None if due is None else due.isoformat(),
        "acknowledged": None
        if stored.acknowledged_at is None
        else {"status": stored.ack_status, "at": stored.acknowledged_at.isoformat()},
    }


def _referral_id(request: web.Request) -> UUID:
    try:
        return UUID(request.match_info["referral_id"])
    except ValueError:
        raise InputError("the referral id is not a UUID", reasons=("bad_referral_id",)) from None


def _int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or len(raw) > 6 or not low <= int(raw) <= high:
        raise InputError(
            f"{name} must be a whole number from {low} to {high}", reasons=("bad_query",)
        )
    return int(raw)


async def list_disclosures(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    limit_max = request.app[_LIMIT]
    limit = _int(request, "limit", min(50, limit_max), 1, limit_max)
    status = request.query.get("status", "new")
    if status not in ("new", "all"):
        raise InputError("status is new or all", reasons=("bad_query",))
    listing = await gateway.page(request.query.get("after"), limit, unacknowledged=status == "new")
    return web.json_response(
        {
            "items": [summary(s) for s in listing.items],
            "cursor": listing.cursor,
            "more": listing.more,
        }
    )


async def get_disclosure(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    rid = _referral_id(request)
    want_fhir = request.query.get("format") == "fhir" or FHIR in request.headers.get("Accept", "")
    if request.query.get("format") not in (None, "fhir", "json"):
        raise InputError("format is json or fhir", reasons=("bad_query",))
    if want_fhir and not request.app[_HEALTH]:
        return problem(406, "not-acceptable", "FHIR is served to health recipients only")
    stored = await gateway.view(rid, f"client:{request[_CLIENT_ID]}")
    if stored is None:
        return problem(404, "not-found", "No such disclosure at this gateway")
    if want_fhir:
        from adapters.nhs import disclosure_to_bundle

        try:
            bundle = disclosure_to_bundle(stored.disclosure())
        except ValueError:
            return problem(406, "not-acceptable", "This disclosure has no FHIR form")
        return web.Response(text=json.dumps(bundle), content_type=FHIR)
    return web.Response(text=stored.body, content_type="application/json")


async def acknowledge(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    rid = _referral_id(request)
    status = AcknowledgementStatus.FILED
    reasons: tuple[str, ...] = ()
    if request.can_read_body:
        raw = await request.content.read(_MAX_ACK_BYTES + 1)
        if len(raw) > _MAX_ACK_BYTES:
            return problem(413, "too-large", "The acknowledgement body is too large")
        if raw.strip():
            status, reasons = _ack_body(raw)
    done = await gateway.acknowledge(
        rid, status=status, reasons=reasons, by=f"client:{request[_CLIENT_ID]}"
    )
    if done is None:
        return problem(404, "not-found", "No such disclosure at this gateway")
    stored, first = done
    assert stored.acknowledged_at is not None
    return web.json_response(
        {
            "referral_id": str(stored.referral_id),
            "status": stored.ack_status,
            "acknowledged_at": stored.acknowledged_at.isoformat(),
            "first": first,
        },
        status=201 if first else 200,
    )


def _ack_body(raw: bytes) -> tuple[AcknowledgementStatus, tuple[str, ...]]:
    bad = InputError(
        'the body is {"status": "filed"} or {"status": "rejected", "reasons": [codes]}',
        reasons=("bad_acknowledgement",),
    )
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise bad from None
    if not isinstance(body, dict) or set(body) - {"status", "reasons"}:
        raise bad
    try:
        status = AcknowledgementStatus(body.get("status", "filed"))
    except ValueError:
        raise bad from None
    if status in PERSONAL_STATUSES:
        raise bad  # a person acknowledges in the web inbox, under their own staff id
    reasons = body.get("reasons", [])
    if (
        not isinstance(reasons, list)
        or not all(isinstance(r, str) for r in reasons)
        or len(reasons) > 16
    ):
        raise bad
    if (status is AcknowledgementStatus.REJECTED) != bool(reasons):
        raise bad
    if not all(re.fullmatch(r"[a-z0-9][a-z0-9_.:-]{0,63}", r) for r in reasons):
        raise bad
    return status, tuple(reasons)


_LIMIT: Final = web.AppKey("limit_max", int)
_HEALTH: Final = web.AppKey("health", bool)
_DOCUMENT: Final = web.AppKey("openapi", bytes)


async def openapi(request: web.Request) -> web.Response:
    """This API's OpenAPI 3.1 document (``gateway/openapi.json``), to the callers it serves."""
    return web.Response(body=request.app[_DOCUMENT], content_type="application/json")


def create_api(
    gateway: Gateway, callers: Callers, *, health: bool, limit_max: int = 100
) -> web.Application:
    """The API's aiohttp application (serve it with an ``SSLContext`` that requires client
    certificates; ``gateway.cli.server_context``)."""
    app = web.Application(
        middlewares=[problems, _identity(callers)], client_max_size=_MAX_ACK_BYTES
    )
    app[GATEWAY] = gateway
    app[_LIMIT] = limit_max
    app[_HEALTH] = health
    app.router.add_get("/v1/disclosures", list_disclosures)
    app.router.add_get("/v1/disclosures/{referral_id}", get_disclosure)
    app.router.add_post("/v1/disclosures/{referral_id}/acknowledgement", acknowledge)
    app[_DOCUMENT] = resources.files("gateway").joinpath("openapi.json").read_bytes()
    app.router.add_get("/openapi.json", openapi)
    return app
