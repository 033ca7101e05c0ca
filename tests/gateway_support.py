"""Helpers for tests of the agency gateway: its server certificate, case-system certificates,
and a running gateway (its API on a loopback port over mutual TLS, its background work)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from broker.config import Settings
from gateway.cli import Built, build
from gateway.settings import GatewaySettings
from gateway.store import GatewayStore
from gateway.web.app import USERS
from gateway.web.security import WebSettings
from keys.enrolment import load_ca
from keys.pki import issue_client_certificate, issue_server_certificate
from tests.conftest import FederationKeys

YEAR = timedelta(days=365)


def _write_pair(folder: Path, name: str, cert: bytes, key: Any) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert)
    key_path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def server_certificate(keys: FederationKeys, folder: Path, agency: str) -> tuple[Path, Path]:
    """A TLS server certificate for ``agency``'s gateway on 127.0.0.1, from the federation CA
    (an agency may use any CA its case systems trust; the tests use the federation's)."""
    ca = load_ca(keys.store, keys.passphrase)
    issued = issue_server_certificate(
        ca, "kelder", now=datetime.now(UTC), validity=YEAR, common_name=f"{agency}-gateway"
    )
    return _write_pair(folder, f"{agency}-gateway", issued.certificate_pem(), issued.key)


def case_system(keys: FederationKeys, folder: Path, name: str) -> tuple[ssl.SSLContext, str]:
    """A case system's client TLS context (its certificate from the federation CA) and the
    SHA-256 of its certificate, for ``CAIRN_GATEWAY_CASE_SYSTEMS``."""
    ca = load_ca(keys.store, keys.passphrase)
    issued = issue_client_certificate(
        ca, name, "case_system", "kelder", now=datetime.now(UTC), validity=YEAR
    )
    cert, key = _write_pair(folder, name, issued.certificate_pem(), issued.key)
    context = ssl.create_default_context(cafile=str(keys.store.path("tls/ca.crt")))
    context.load_cert_chain(str(cert), str(key))
    return context, hashlib.sha256(issued.certificate.public_bytes(Encoding.DER)).hexdigest()


@dataclass
class Running:
    built: Built
    url: str
    stop: asyncio.Event

    @property
    def service(self) -> Any:
        return self.built.gateway


@contextlib.asynccontextmanager
async def running_gateway(
    settings: Settings,
    gw: GatewaySettings,
    agency: str,
    keys: FederationKeys,
    *,
    store: GatewayStore | None = None,
    background: bool = True,
    prepare: Any = None,
    web_settings: WebSettings | None = None,
) -> AsyncIterator[Running]:
    """``agency``'s gateway: its API on a free loopback port over mutual TLS and, with
    ``background``, its consumer, receipts, webhooks and retention running; ``prepare`` is
    called with the ``Gateway`` before anything starts (a test sets hooks there). Its web
    inbox (``web_settings``) is built, not served: ``serving_web`` serves it."""
    built = build(
        settings, gw, agency, passphrase=keys.passphrase, store=store, web_settings=web_settings
    )
    if prepare is not None:
        prepare(built.gateway)
    await built.gateway.store.open()
    runner = web.AppRunner(built.api, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=built.ssl)
    await site.start()
    port = runner.addresses[0][1]
    stop = asyncio.Event()
    task = asyncio.create_task(built.gateway.run(stop)) if background else None
    try:
        yield Running(built, f"https://127.0.0.1:{port}", stop)
    finally:
        stop.set()
        if task is not None:
            await asyncio.wait_for(task, 60)
        await runner.cleanup()
        await built.gateway.store.close()


@contextlib.asynccontextmanager
async def serving_web(built: Built) -> AsyncIterator[str]:
    """The gateway's web inbox on a free loopback port over its own TLS context (no client
    certificate), as ``cairn gateway`` serves it; yields its URL, closes its accounts after."""
    if built.web is None or built.web_ssl is None:
        raise RuntimeError("the web inbox is disabled or has no TLS context")
    runner = web.AppRunner(built.web, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=built.web_ssl).start()
        yield f"https://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
        built.web[USERS].close()


def session(context: ssl.SSLContext) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))


def browser_context(keys: FederationKeys) -> ssl.SSLContext:
    """A browser's TLS: it trusts the federation CA (which issued the test servers'
    certificates) and holds no client certificate."""
    from keys.store import CA_CERT

    return ssl.create_default_context(cadata=keys.store.read(CA_CERT).decode())


async def web_login(context: ssl.SSLContext, url: str, enrolment: Any) -> dict[str, str]:
    """Log in to the web inbox at ``url`` as a browser would (the login form's token and
    cookie, the password and a TOTP code); the session cookie header."""
    import re
    import time

    from gateway.users import totp
    from gateway.web.app import LOGIN_COOKIE
    from gateway.web.security import COOKIE

    jar = aiohttp.DummyCookieJar()
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=context), cookie_jar=jar
    ) as http:
        async with http.get(f"{url}/login") as page:
            token = re.search(r'name="csrf" value="([^"]+)"', await page.text())
            assert token is not None
            login_cookie = page.cookies[LOGIN_COOKIE].value
        form = {
            "login": enrolment.staff.login,
            "password": enrolment.password,
            "code": totp(enrolment.totp_secret, time.time()),
            "csrf": token.group(1),
        }
        async with http.post(
            f"{url}/login",
            data=form,
            headers={"Cookie": f"{LOGIN_COOKIE}={login_cookie}"},
            allow_redirects=False,
        ) as answer:
            assert answer.status == 303, await answer.text()
            return {"Cookie": f"{COOKIE}={answer.cookies[COOKIE].value}"}
