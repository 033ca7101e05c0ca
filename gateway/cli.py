"""``cairn gateway --as AGENCY``: run the agency's gateway (its store, its consumer, its API and
its web inbox).

``build`` wires a ``Gateway`` from the settings (the CLI and the tests use it); ``server_context``
makes the API's mutual-TLS context, ``web_context`` the web inbox's (server TLS only: people log
in with a password and a TOTP code, not a client certificate); ``serve`` runs them all until
SIGINT or SIGTERM, each on its own listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from ssl import SSLContext

import click
from aiohttp import web
from cryptography import x509

from adapters.agency import agency_trust
from adapters.nhs.mesh.settings import MeshSettings
from broker.cli.common import echo_kafka, load_settings, settings_or_exit
from broker.config import Settings, read_secret_file
from broker.trust import TrustStore
from gateway.api import Callers, create_api
from gateway.service import Gateway
from gateway.settings import GatewaySettings
from gateway.sqlite import SqliteGatewayStore
from gateway.store import GatewayStore
from gateway.users import open_users
from gateway.web.app import USERS, create_web
from gateway.web.security import WebSettings
from gateway.webhooks import Dispatcher
from keys.store import AGENCY_CAS, CA_CERT
from schemas.errors import CairnError
from schemas.federation import AgencyRole

__all__ = ["Built", "build", "gateway", "open_store", "server_context", "web_context"]


def open_store(settings: Settings, gw: GatewaySettings, agency: str) -> GatewayStore:
    """PostgreSQL if a URL is configured, else SQLite under the state folder."""
    url = gw.database()
    if url is not None:
        from gateway.postgres import PostgresGatewayStore

        return PostgresGatewayStore(url)
    path = gw.sqlite_path or settings.state_dir / "gateway" / f"{agency}.sqlite"
    return SqliteGatewayStore(path)


def _issuers(trust: TrustStore, agency: str) -> tuple[x509.Certificate, ...]:
    found = [x509.load_pem_x509_certificate(trust.store.read(CA_CERT))]
    own = trust.store.path(f"{AGENCY_CAS}/{agency}.crt")
    if own.is_file():
        found.append(x509.load_pem_x509_certificate(own.read_bytes()))
    return tuple(found)


def server_context(gw: GatewaySettings, issuers: tuple[x509.Certificate, ...]) -> ssl.SSLContext:
    """The API's TLS context: its certificate, client certificates required, verified against
    the federation CA (and the agency's own CA) and ``client_ca_file``."""
    if gw.tls_cert_file is None or gw.tls_key_file is None:
        raise click.ClickException(
            "the gateway's API needs a server certificate: set CAIRN_GATEWAY_TLS_CERT_FILE and "
            "CAIRN_GATEWAY_TLS_KEY_FILE"
        )
    from cryptography.hazmat.primitives.serialization import Encoding

    context = _serving(gw.tls_cert_file, gw.tls_key_file, gw.tls_key_password(), "the gateway's")
    context.verify_mode = ssl.CERT_REQUIRED
    for issuer in issuers:
        context.load_verify_locations(cadata=issuer.public_bytes(Encoding.PEM).decode("ascii"))
    if gw.client_ca_file is not None:
        context.load_verify_locations(cafile=str(gw.client_ca_file))
    return context


def _serving(cert: Path, key: Path, password: str | None, whose: str) -> ssl.SSLContext:
    """A server context (TLS 1.2 at least) holding ``cert`` and ``key``; a one-line error
    naming the files if they cannot be loaded."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert), str(key), password=password)
    except (OSError, ssl.SSLError) as exc:
        raise click.ClickException(
            f"cannot load {whose} certificate {cert} or its key: {exc}"
        ) from None
    return context


def web_context(gw: GatewaySettings, web_settings: WebSettings) -> ssl.SSLContext:
    """The web inbox's TLS context: its own certificate if configured, else the API's; no
    client certificate asked for."""
    cert, key = web_settings.tls_cert_file, web_settings.tls_key_file
    password = (
        read_secret_file("web_tls_key_password_file", web_settings.tls_key_password_file)
        if web_settings.tls_key_password_file is not None
        else None
    )
    if cert is None or key is None:
        cert, key, password = gw.tls_cert_file, gw.tls_key_file, gw.tls_key_password()
    if cert is None or key is None:
        raise click.ClickException(
            "the web inbox needs a server certificate: set CAIRN_GATEWAY_WEB_TLS_CERT_FILE and "
            "CAIRN_GATEWAY_WEB_TLS_KEY_FILE (or the API's), or CAIRN_GATEWAY_WEB_ENABLED=false"
        )
    context = _serving(cert, key, password, "the web inbox's")
    context.verify_mode = ssl.CERT_NONE
    return context


@dataclass
class Built:
    gateway: Gateway
    api: web.Application
    ssl: ssl.SSLContext | None
    web: web.Application | None = None  # the web inbox; None when CAIRN_GATEWAY_WEB_ENABLED=false
    web_ssl: SSLContext | None = None


def build(
    settings: Settings,
    gw: GatewaySettings,
    agency: str,
    *,
    passphrase: bytes | None = None,
    store: GatewayStore | None = None,
    webhook_ssl: ssl.SSLContext | None = None,
    with_tls: bool = True,
    web_settings: WebSettings | None = None,
    mesh: MeshSettings | None = None,
) -> Built:
    """The gateway of ``agency`` with its API and (unless disabled) its web inbox; with
    ``mesh`` naming a trust mailbox (CAIRN_MESH_URL, CAIRN_MESH_TRUST_MAILBOX), each referral
    it stores is also delivered into that MESH mailbox (``adapters.nhs.mesh.disclosures``)."""
    from broker.federation import load_federation

    federation = load_federation(settings.federation_dir)
    member = federation.get(agency)
    if member is None:
        raise click.ClickException(f"'{agency}' is not an agency of {federation.name}")
    trust = agency_trust(settings, agency, passphrase=passphrase)
    trust.decryption_keys()  # fail now if the keys cannot be loaded
    store = store if store is not None else open_store(settings, gw, agency)
    dispatcher = None
    secret = gw.webhook_secret()
    if gw.webhook_url is not None and secret is not None:
        ca = webhook_ssl
        if ca is None and gw.webhook_ca_file is not None:
            ca = ssl.create_default_context(cafile=str(gw.webhook_ca_file))
        dispatcher = Dispatcher(
            store,
            str(gw.webhook_url),
            secret,
            timeout_s=gw.webhook_timeout_s,
            retry_initial_s=gw.webhook_retry_initial_s,
            retry_max_s=gw.webhook_retry_max_s,
            give_up_s=gw.webhook_give_up_s,
            ssl_context=ca,
        )
    service = Gateway(
        settings,
        agency,
        trust,
        store,
        dispatcher=dispatcher,
        retention_every_s=gw.retention_every_s,
        poll_every_s=gw.poll_every_s,
    )
    if mesh is not None and mesh.configured and mesh.trust_mailbox is not None:
        from adapters.nhs.mesh.disclosures import attach

        attach(service, mesh)
    issuers = _issuers(trust, agency)
    api = create_api(
        service,
        Callers(agency, issuers, dict(gw.case_systems)),
        health=member.role is AgencyRole.NHS_SAFEGUARDING,
        limit_max=gw.page_limit_max,
    )
    web_settings = web_settings if web_settings is not None else WebSettings()
    inbox = None
    if web_settings.enabled:
        inbox = create_web(
            service, open_users(settings.state_dir, agency, web_settings), web_settings
        )
    return Built(
        service,
        api,
        server_context(gw, issuers) if with_tls else None,
        inbox,
        web_context(gw, web_settings) if with_tls and inbox is not None else None,
    )


async def _listen(
    app: web.Application, host: str, port: int, context: ssl.SSLContext | None
) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)  # no access log: a URL is never logged
    await runner.setup()
    await web.TCPSite(runner, host, port, ssl_context=context).start()
    return runner, (runner.addresses[0][1] if runner.addresses else port)


async def serve(built: Built, gw: GatewaySettings, web_settings: WebSettings | None = None) -> None:
    """Run the gateway, its API and its web inbox until SIGINT or SIGTERM."""
    web_settings = web_settings if web_settings is not None else WebSettings()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await built.gateway.store.open()
    runners: list[web.AppRunner] = []
    # CAIRN_HEALTH_PORT: GET /livez and GET /readyz (Kafka, registry, decryption keys), plain
    # HTTP through the broker's bounded server; the API and the web inbox are unchanged.
    from broker.web.health import service_readiness, start_health

    settings = built.gateway.settings
    ready = service_readiness(settings, built.gateway.trust, key="decryption")
    health = None
    try:
        health = await start_health(settings, ready)
        runner, port = await _listen(built.api, gw.host, gw.port, built.ssl)
        runners.append(runner)
        started = datetime.now(UTC).isoformat(timespec="seconds")
        click.echo(
            f"gateway for {built.gateway.agency}: API (mutual TLS) listening on "
            f"https://{gw.host}:{port} "
            f"(started {started})",
            err=True,
        )
        if built.web is not None:
            runner, port = await _listen(
                built.web, web_settings.host, web_settings.port, built.web_ssl
            )
            runners.append(runner)
            click.echo(
                f"gateway for {built.gateway.agency}: web inbox listening on "
                f"https://{web_settings.host}:{port}/",
                err=True,
            )
        await built.gateway.run(stop)
    finally:
        if health is not None:
            await health.close()
        for runner in runners:
            with contextlib.suppress(Exception):
                await runner.cleanup()
        if built.web is not None:
            built.web[USERS].close()
        await built.gateway.store.close()


@click.group(invoke_without_command=True)
@click.option("--as", "agency", required=True, help="The agency whose gateway this is.")
@click.pass_context
def gateway(ctx: click.Context, agency: str) -> None:
    """Run AGENCY's gateway: its store, its delivery consumer, its HTTPS API for case systems
    (mutual TLS) and its web inbox for staff (README "Gateway", "Web inbox").

    Settings: CAIRN_GATEWAY_* (the API's address and certificate, the store, webhooks) and
    CAIRN_GATEWAY_WEB_* (the inbox's address, certificate, sessions) beside the usual Kafka and
    key settings; an NHS trust's CAIRN_MESH_* deliver its referrals into its MESH mailbox.
    With CAIRN_HEALTH_PORT set it also answers GET /livez and GET /readyz over plain HTTP.
    Staff accounts: cairn gateway --as AGENCY user --help.
    """
    ctx.ensure_object(dict)
    ctx.obj["gateway_agency"] = agency
    if ctx.invoked_subcommand is not None:
        return
    from broker.logs import configure_logging

    settings = settings_or_exit()
    configure_logging(settings.log_format, settings.log_level)
    echo_kafka(settings, who=f"gateway for {agency}")  # the Kafka its deliveries come from
    gw = load_settings(GatewaySettings)
    web_settings = load_settings(WebSettings)
    mesh = load_settings(MeshSettings)
    try:
        built = build(settings, gw, agency, web_settings=web_settings, mesh=mesh)
        asyncio.run(serve(built, gw, web_settings))
    except (CairnError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


from gateway.users import user  # noqa: E402  (cairn gateway --as AGENCY user ...: G2)

gateway.add_command(user)
