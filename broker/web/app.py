"""The broker's HTTP interface: submissions in, receipts and problem details out.

POST /v1/referrals   submit a referral; 202 + receipt once Kafka has committed every record
GET  /healthz        the process is alive
GET  /readyz         200 only while Kafka is reachable, else 503
GET  /metrics        Prometheus metrics (codes and counts only), for any federation certificate
GET  /openapi.json   this API's OpenAPI 3.1 document (broker/web/openapi.json)
"""

from __future__ import annotations

import asyncio
import signal
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import structlog
from aiohttp import web

from broker.config import Settings
from broker.ingest import Pipeline
from broker.kafka.transport import KafkaTransport, Transport
from broker.ops.credentials import CredentialWatch, ServerCertificate
from broker.ops.health import auditor_probe
from broker.ops.metrics import (
    CONTENT_TYPE,
    CalendarWatch,
    CountingTransport,
    KafkaProbe,
    Metrics,
)
from broker.ops.overdue import OverdueSweep
from broker.policy.agreements import AGREEMENTS_DIR, Agreement, load_agreements
from broker.policy.calendar import CALENDAR_FILE, SchoolCalendar, load_calendar
from broker.receipts import ReceiptsLoop
from broker.state import StateStore, store_for
from broker.trust import TrustStore
from broker.web.middleware import (
    METRICS,
    REQUEST_ID,
    problems_middleware,
    read_body,
    tls_agency,
)
from broker.web.openapi import openapi_route
from broker.web.server import start_server
from schemas.errors import (
    CairnError,
    UnsupportedMediaType,
)
from schemas.federation import Federation

__all__ = ["METRICS", "STORE", "create_app", "read_body", "readiness", "serve"]

log = structlog.get_logger(__name__)

PIPELINE = web.AppKey("pipeline", Pipeline)
SETTINGS = web.AppKey("settings", Settings)
TRANSPORT = web.AppKey("transport", Transport)
STORE = web.AppKey("store", StateStore)
JOSE = "application/jose"


async def submit_referral(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    metrics.received.inc()
    start = time.perf_counter()
    outcome = "refused"
    try:
        response = await _submit_referral(request)
        outcome = "replayed" if response.status == 200 else "accepted"
        return response
    finally:
        metrics.submission_seconds.labels(outcome=outcome).observe(time.perf_counter() - start)


async def _submit_referral(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    sender = tls_agency(request)
    if request.content_type != JOSE:
        raise UnsupportedMediaType(
            "send the referral signed, as a compact JWS with Content-Type application/jose; "
            "an unsigned referral is never accepted"
        )
    body = await read_body(request, settings.max_body_bytes)
    outcome = await request.app[PIPELINE].submit(
        body, sender=sender, request_id=request[REQUEST_ID]
    )
    receipt = outcome.receipt
    return web.json_response(
        receipt.model_dump(mode="json"),
        status=200 if outcome.replayed else 202,
        headers={"Location": f"/v1/referrals/{receipt.referral_id}"},
    )


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready only while Kafka takes our transactions, the registry is trusted and our signing
    key is usable. ``kafka`` is ``reachable``, ``unreachable``, or ``failing``: Kafka answers
    but the last publish failed and no probe transaction has succeeded since."""
    ready, body = await readiness(request.app)
    return web.json_response(body, status=200 if ready else 503)


async def readiness(app: web.Application) -> tuple[bool, dict[str, str]]:
    """The broker's readiness, as /readyz and the plain-HTTP health port (broker.web.health)
    report it: whether it is ready, and the codes of its checks."""
    health = await app[TRANSPORT].health()
    kafka = health == "ok"
    trust = app[PIPELINE].trust
    registry = signing = False
    try:
        trust.registry()
        registry = True
        trust.signing_key()
        signing = True
    except CairnError:
        pass
    ready = kafka and registry and signing
    body = {
        "status": "ready" if ready else "not ready",
        "kafka": "reachable" if kafka else health,
        "registry": "trusted" if registry else "untrusted",
        "signing_key": "usable" if signing else "unusable",
    }
    return ready, body


async def metrics_page(request: web.Request) -> web.Response:
    """Prometheus text exposition; any certificate of the federation (agency or auditor)."""
    tls_agency(request)
    metrics = request.app[METRICS]
    await metrics.read_state(request.app[STORE])  # overdue: the store's figure, every broker's
    await metrics.read_auditor()  # the auditor's own figures, from its status route (cached)
    body = metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def create_app(
    settings: Settings,
    federation: Federation,
    transport: Transport,
    trust: TrustStore,
    *,
    store: StateStore | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    consume_receipts: bool = False,
    dashboard: bool = False,
    agreements: tuple[Agreement, ...] | None = None,
    calendar: SchoolCalendar | None = None,
    metrics: Metrics | None = None,
    sweep_overdue: bool = True,
    server_certificate: ServerCertificate | None = None,
) -> web.Application:
    """The broker application; the transport is started and stopped with the app.

    With ``consume_receipts`` the app also runs the loop that audits recipients'
    acknowledgements (``broker.receipts``) and, unless ``sweep_overdue`` is False, the overdue
    sweep (``broker.ops.overdue``), started after the transport and stopped before it. Of
    ``cairn serve --workers``' workers only the first tries to sweep; of every broker sharing
    the state store, only the holder of its sweep lease sweeps: sweeps at the same moment
    would each publish the same ``overdue`` events.
    With ``dashboard`` it serves the ops view at /ui/ (broker.web.dashboard). Sharing agreements
    and the school calendar are read from the federation folder unless given. The state store
    is the one the settings name (``broker.state.store_for``) unless given; it is opened before
    the transport starts, and closed after it stops if the app made it.
    The credentials of the trust store's key store are watched (``broker.ops.credentials``):
    the expiry gauge, the ``credentials.expiring`` line, and, given ``server_certificate``,
    the TLS server certificate reloaded when it is renewed.
    """
    if agreements is None:
        agreements = load_agreements(settings.federation_dir / AGREEMENTS_DIR)
    if calendar is None:
        calendar = load_calendar(settings.federation_dir / CALENDAR_FILE)
    app = web.Application(
        middlewares=[problems_middleware], client_max_size=settings.max_body_bytes
    )
    if metrics is None:
        metrics = Metrics()
    # The auditor's own figures, from its public status route: never from its files.
    auditor = auditor_probe(settings, trust)
    metrics.auditor = auditor
    calendar_watch = CalendarWatch(calendar, clock, settings.calendar_warn_days)
    metrics.calendar_watch = calendar_watch
    credential_watch = CredentialWatch.for_settings(
        trust.store, clock, settings, server=server_certificate
    )
    metrics.credential_watch = credential_watch
    if isinstance(transport, KafkaTransport):  # lag figures only where there is a Kafka
        metrics.probe = KafkaProbe(settings, federation.ids)
    owns_store = store is None  # close only what we opened
    if store is None:
        store = store_for(settings)
    if dashboard:
        from broker.web.dashboard import TappedTransport

        # The ops view counts what the brokers committed (ids, agencies, purposes, times).
        transport = TappedTransport(transport, store)
    transport = CountingTransport(transport, metrics)
    app[SETTINGS] = settings
    app[TRANSPORT] = transport
    app[METRICS] = metrics
    app[STORE] = store
    app[PIPELINE] = Pipeline(
        settings, federation, transport, trust, store, clock, agreements, calendar, metrics
    )
    app.router.add_post("/v1/referrals", submit_referral)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_page)
    app.router.add_get("/openapi.json", openapi_route("broker.web"))  # broker/web/openapi.json
    if dashboard:
        from broker.ops.health import ops_horizons
        from broker.web.dashboard import StoreOpsSource, add_ops_routes, dlq_counter

        source = StoreOpsSource(
            store,
            probes={"kafka": transport.ready, "auditor": auditor},
            dlq_count=dlq_counter(settings),
            clock=clock,
            credentials=credential_watch.summary,
            horizons=ops_horizons(
                lambda: [(c.kind.value, c.subject, s) for c, s in credential_watch.seconds_left()],
                lambda: (calendar_watch.today(), calendar_watch.days_left()),
                auditor,
                clock,
            ),
        )
        add_ops_routes(app, source)

    async def transport_lifecycle(_app: web.Application):  # type: ignore[no-untyped-def]
        calendar_watch.check()  # at start-up, before Kafka can fail, then hourly (daily lines)
        credential_watch.check()  # the same for the registry and certificates, then each minute
        await store.open()  # StateUnavailable: the broker does not start without its state
        await transport.start()
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(calendar_watch.run(stop)),
            asyncio.create_task(credential_watch.run(stop)),
        ]
        if consume_receipts:
            loop = ReceiptsLoop(settings, trust, store, transport, clock, metrics=metrics)
            tasks.append(asyncio.create_task(loop.run(stop)))
            if sweep_overdue:
                sweep = OverdueSweep(settings, store, transport, metrics, clock)
                tasks.append(asyncio.create_task(sweep.run(stop)))
        yield
        # Runs after in-flight requests have drained: stop the receipts loop, the overdue
        # sweep and the calendar watch, then flush and close the producer.
        stop.set()
        for task in tasks:
            await asyncio.wait_for(task, 15)
        if metrics.probe is not None:
            await metrics.probe.close()
        await transport.stop()
        if owns_store:
            await store.close()
        log.info("broker.stopped")

    app.cleanup_ctx.append(transport_lifecycle)
    return app


async def serve(
    app: web.Application,
    settings: Settings,
    ssl_context: ssl.SSLContext | None,
    *,
    started: asyncio.Event | None = None,
    sockets: Sequence[socket.socket] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run until SIGTERM or SIGINT, then drain in-flight requests and flush the producer.

    Connections are bounded in time and number as ``broker.web.server`` describes. A worker
    of ``cairn serve --workers`` passes the ``sockets`` its supervisor bound and its own
    ``stop`` (then no signal handler is installed here, and the supervisor logs the port).
    """
    server = await start_server(
        app, settings, ssl_context, metrics=app.get(METRICS), sockets=sockets
    )
    if sockets is None:
        log.info("broker.listening", host=settings.http_host, port=server.port)
    signals = (signal.SIGTERM, signal.SIGINT) if stop is None else ()
    stop = asyncio.Event() if stop is None else stop
    loop = asyncio.get_running_loop()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    if started is not None:
        started.set()
    try:
        await stop.wait()
        log.info("broker.draining", timeout_s=settings.shutdown_timeout_s)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        await server.close()
