"""The plain-HTTP health port: ``GET /livez`` and ``GET /readyz`` for an orchestrator's probes.

A kubelet (or any supervisor) probing a Cairn process should not need a federation client
certificate, and the mutual-TLS ports should not be opened to it. So each service (``cairn
serve``, ``cairn auditor``, ``cairn gateway``, ``cairn witness serve``) can open a second,
plain-HTTP listener on ``CAIRN_HEALTH_HOST``:``CAIRN_HEALTH_PORT`` (unset: none) that serves
exactly two paths:

==============  ===============================================================================
``GET /livez``  200 ``{"status": "alive"}`` while the event loop answers: the process is alive
``GET /readyz`` 200 ``{"status": "ready", ...}`` or 503 ``{"status": "not ready", ...}``: the
                service's own readiness (``Readiness``), one code per check (``"kafka":
                "reachable"``), never an id, a key, a name or anything a client sent
==============  ===============================================================================

Anything else is a 404 problem (RFC 9457), whatever the method. The listener is
``broker.web.server.start_server`` without TLS: the same header, keep-alive and body-rate
timeouts and the same total connection limit (``CAIRN_HTTP_*``) as the service ports; the
per-agency limit needs a client certificate and so does not apply. A readiness check that
raises or takes longer than three times ``readiness_timeout_s`` makes the answer 503 ``"checks":
"failed"`` (logged as ``health.check_failed`` with the exception's type only).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Literal

import structlog
from aiohttp import web
from aiokafka.admin import AIOKafkaAdminClient

from broker.config import Settings
from broker.kafka.transport import kafka_options
from broker.trust import TrustStore
from broker.web.problems import http_problem, problem_response
from broker.web.server import Listening, start_server
from schemas.errors import CairnError, InfrastructureError

__all__ = [
    "HEALTH_PATHS",
    "KafkaReachability",
    "KeyKind",
    "Readiness",
    "health_app",
    "health_port",
    "service_readiness",
    "start_health",
    "trust_checks",
]

log = structlog.get_logger(__name__)

#: The only paths the health port serves (the manifests' probes use them: tests/unit/deploy).
HEALTH_PATHS = ("/livez", "/readyz")

#: A service's readiness: whether it is ready, and one short code per check it made.
Readiness = Callable[[], Awaitable[tuple[bool, Mapping[str, str]]]]

_READINESS: web.AppKey[Readiness] = web.AppKey("readiness")
_TIMEOUT_S = web.AppKey("timeout_s", float)

#: The key a service must be able to use to be ready: it signs (the broker, the auditor) or it
#: opens disclosures (a gateway).
KeyKind = Literal["signing", "decryption"]


async def _livez(_request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def _readyz(request: web.Request) -> web.Response:
    check = request.app[_READINESS]
    try:
        async with asyncio.timeout(request.app[_TIMEOUT_S]):
            ready, codes = await check()
    except Exception as exc:  # a failing check means "not ready", never a 500
        log.warning("health.check_failed", error=type(exc).__name__)
        ready, codes = False, {"checks": "failed"}
    # The status is this module's word, whatever a check's codes say.
    body = {"status": "ready" if ready else "not ready"}
    body.update((name, code) for name, code in codes.items() if name != "status")
    return web.json_response(body, status=200 if ready else 503)


async def _not_found(_request: web.Request) -> web.Response:
    body = http_problem(
        404, "not-found", "Not found", "the health port serves only GET /livez and GET /readyz"
    )
    return problem_response(404, body)


def health_app(readiness: Readiness, *, timeout_s: float) -> web.Application:
    """The health port's application: GET /livez, GET /readyz (``readiness``, bounded by
    ``timeout_s`` seconds), and a 404 problem for every other path and method."""
    app = web.Application(client_max_size=1024)  # no route reads a body
    app[_READINESS] = readiness
    app[_TIMEOUT_S] = timeout_s
    app.router.add_get("/livez", _livez, allow_head=False)
    app.router.add_get("/readyz", _readyz, allow_head=False)
    # Resolved after the two above: a POST /livez falls through to it, so it is a 404 too.
    app.router.add_route("*", "/{tail:.*}", _not_found)
    return app


async def start_health(settings: Settings, readiness: Readiness) -> Listening | None:
    """Open the health port the settings name (``health_host``, ``health_port``), or None if
    ``health_port`` is unset; ``InfrastructureError`` naming the setting if it cannot be bound."""
    if settings.health_port is None:
        return None
    bounded = settings.model_copy(
        update={"http_host": settings.health_host, "http_port": settings.health_port}
    )
    # A check may connect and then ask (each within readiness_timeout_s): room for both.
    app = health_app(readiness, timeout_s=3 * settings.readiness_timeout_s)
    try:
        listening = await start_server(app, bounded, None)
    except OSError as exc:
        raise InfrastructureError(
            f"cannot listen on the health port {settings.health_host}:{settings.health_port} "
            f"({exc.strerror or type(exc).__name__}); set CAIRN_HEALTH_PORT to a free port, "
            "or unset it for no health port"
        ) from None
    log.info("health.listening", host=settings.health_host, port=listening.port)
    return listening


@contextlib.asynccontextmanager
async def health_port(settings: Settings, readiness: Readiness) -> AsyncIterator[Listening | None]:
    """The health port (``start_health``) open for the block, closed after it."""
    listening = await start_health(settings, readiness)
    try:
        yield listening
    finally:
        if listening is not None:
            await listening.close()


def trust_checks(trust: TrustStore, *, key: KeyKind = "signing") -> tuple[bool, dict[str, str]]:
    """Whether the registry is trusted and the service's own ``key`` (``signing``: it signs,
    as the broker and the auditor do; ``decryption``: it opens disclosures, as a gateway does)
    is usable: the same checks, and codes, as the broker's /readyz."""
    registry = usable = False
    try:
        trust.registry()
        registry = True
        if key == "decryption":
            trust.decryption_keys()
        else:
            trust.signing_key()
        usable = True
    except CairnError:
        pass
    codes = {
        "registry": "trusted" if registry else "untrusted",
        f"{key}_key": "usable" if usable else "unusable",
    }
    return registry and usable, codes


def service_readiness(
    settings: Settings, trust: TrustStore, *, key: KeyKind = "signing"
) -> Readiness:
    """The readiness of a service that reads Kafka without a producer of its own to ask (the
    auditor; a gateway with ``key="decryption"``): Kafka reachable (``KafkaReachability``),
    the registry trusted and its key usable (``trust_checks``)."""
    kafka = KafkaReachability(settings)

    async def ready() -> tuple[bool, Mapping[str, str]]:
        reached = await kafka.check()
        trusted, codes = trust_checks(trust, key=key)
        return reached == "reachable" and trusted, {"kafka": reached, **codes}

    return ready


class KafkaReachability:
    """Whether Kafka answers a metadata request, for a service with no producer of its own to
    ask (the auditor, a gateway): ``reachable`` or ``unreachable``, asked at most every
    ``readiness_probe_every_s`` and within ``readiness_timeout_s`` (the last answer is kept
    in between, so a probe every second costs Kafka one connection per interval)."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._clock = clock
        self._code = "unreachable"
        self._at = float("-inf")
        self._lock = asyncio.Lock()

    async def check(self) -> str:
        async with self._lock:  # concurrent probes share one look
            if self._clock() - self._at >= self._settings.readiness_probe_every_s:
                self._code = await self._look()
                self._at = self._clock()
            return self._code

    async def _look(self) -> str:
        admin = AIOKafkaAdminClient(**kafka_options(self._settings))
        try:
            async with asyncio.timeout(self._settings.readiness_timeout_s):
                await admin.start()  # bootstraps: one metadata request to any server
        except Exception as exc:  # any failure only means "not reachable now"
            log.info("health.kafka_unreachable", error=type(exc).__name__)
            return "unreachable"
        finally:
            try:
                await admin.close()
            except Exception as exc:  # closing a client that never started
                log.debug("health.kafka_close_failed", error=type(exc).__name__)
        return "reachable"
