"""Fixtures for fast unit tests: no Kafka; real TLS and real keys, on loopback only."""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs
from structlog.typing import EventDict

from adapters.client import ReferralClient
from broker.config import Settings
from broker.federation import load_federation
from broker.kafka.transport import MemoryTransport
from broker.state import SqliteStore
from broker.trust import TrustStore
from broker.web.app import create_app
from keys import BROKER_ID, FileStore, Lifetimes, SigningKey, init_federation
from schemas.federation import Federation
from tests.conftest import PASSPHRASE, FederationKeys
from tests.samples import FEDERATION_DIR, personal_values


@pytest.fixture(autouse=True)
def _process_logging_restored() -> Iterator[None]:
    """Undo what an in-process ``cairn`` command (``CliRunner``) does to the whole process.

    The ``cli`` group calls ``configure_logging``: structlog gets a new processor list with
    ``cache_logger_on_first_use``, the root logger a handler on the runner's stderr. A logger
    first used after one command caches that list, and a second command installs another,
    so ``capture_logs`` (which edits the configured list) no longer sees that logger's lines.
    """
    config = structlog.get_config()
    processors = config["processors"]
    saved = list(processors)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    processors[:] = saved  # the same list object: loggers cached before the test still see it
    structlog.configure(**{**config, "processors": processors})
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def settings(federation_keys: FederationKeys) -> Settings:
    return Settings(
        max_body_bytes=64_000,
        topic_prefix="unit",
        federation_dir=FEDERATION_DIR,
        key_dir=federation_keys.root,
    )


@pytest.fixture
def transport() -> MemoryTransport:
    return MemoryTransport()


@pytest.fixture
async def broker_url(
    settings: Settings,
    federation: Federation,
    transport: MemoryTransport,
    federation_keys: FederationKeys,
) -> AsyncIterator[str]:
    """The broker app over real mutual TLS on a loopback port, with the memory transport."""
    app = create_app(
        settings, federation, transport, federation_keys.trust(), store=SqliteStore(None)
    )
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(ssl=federation_keys.server_ssl())
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


AgencyClient = Callable[[str], ReferralClient]


@pytest.fixture
def agency_client(broker_url: str, federation_keys: FederationKeys) -> AgencyClient:
    """A signing, certificate-bearing client for any agency of the federation."""

    def make(
        agency: str, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> ReferralClient:
        return ReferralClient(
            broker_url,
            ssl_context=federation_keys.client_ssl(agency),
            signing_key=federation_keys.trust(agency).signing_key(),
            clock=clock,
        )

    return make  # type: ignore[return-value]


@pytest.fixture
async def police_session(
    federation_keys: FederationKeys,
) -> AsyncIterator[aiohttp.ClientSession]:
    """A raw HTTPS session with the police force's client certificate."""
    connector = aiohttp.TCPConnector(ssl=federation_keys.client_ssl("kelder-police"))
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


# --- A broker of a test's own, for tests that change the federation or the clock -------------


class Clock:
    """A settable clock shared by a broker and its clients; it starts at the real time.

    TLS still checks certificates against the real time, so a test may move this clock by days
    (keys, registry, signature times) without touching the certificates' validity.
    """

    def __init__(self, now: datetime | None = None) -> None:
        self.now = now if now is not None else datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> datetime:
        self.now += delta
        return self.now


def new_federation_keys(
    root: Path, *, now: datetime | None = None, lifetimes: Lifetimes | None = None
) -> FederationKeys:
    """A federation of its own in ``root``, for a test that revokes, rotates or tampers."""
    store = FileStore(root)
    init_federation(
        store,
        load_federation(FEDERATION_DIR),
        PASSPHRASE,
        now=now if now is not None else datetime.now(UTC),
        lifetimes=lifetimes,
    )
    return FederationKeys(root, store, PASSPHRASE)


@pytest.fixture
def own_keys(tmp_path: Path) -> FederationKeys:
    """A federation made for this test alone: it may be rotated, revoked or tampered with."""
    return new_federation_keys(tmp_path / "keys")


@dataclass(frozen=True)
class Reply:
    """A broker's answer: status, content type and the JSON body (receipt or problem)."""

    status: int
    content_type: str
    body: dict[str, Any]


@dataclass(frozen=True)
class Broker:
    """A running broker (real mutual TLS, memory transport) and the keys and clock it uses."""

    url: str
    settings: Settings
    transport: MemoryTransport
    keys: FederationKeys
    clock: Callable[[], datetime]

    def sign(
        self,
        agency: str,
        referral: dict[str, Any] | bytes,
        *,
        key: SigningKey | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> bytes:
        """The referral as ``agency``'s adapter signs it: its active key, at the broker's time."""
        if key is None:
            key = self.keys.trust(agency).signing_key()
        signer = ReferralClient(
            self.url, ssl_context=None, signing_key=key, clock=clock or self.clock
        )
        payload = referral if isinstance(referral, bytes) else json.dumps(referral).encode()
        return signer.sign(payload)

    async def request(
        self,
        method: str,
        path: str,
        tls: str | ssl.SSLContext,
        *,
        body: bytes | None = None,
        content_type: str = "application/jose",
    ) -> Reply:
        """One request over a new mutual-TLS connection as ``tls`` (an agency id or a context)."""
        context = self.keys.client_ssl(tls) if isinstance(tls, str) else tls
        headers = {"Content-Type": content_type} if body is not None else {}
        connector = aiohttp.TCPConnector(ssl=context)
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.request(method, f"{self.url}{path}", data=body, headers=headers) as response,
        ):
            return Reply(response.status, response.content_type, await response.json())

    async def post(
        self, tls: str | ssl.SSLContext, body: bytes, *, content_type: str = "application/jose"
    ) -> Reply:
        return await self.request(
            "POST", "/v1/referrals", tls, body=body, content_type=content_type
        )

    async def submit(self, agency: str, referral: dict[str, Any], **sign: Any) -> Reply:
        """Sign as ``agency`` and post over ``agency``'s own TLS identity."""
        return await self.post(agency, self.sign(agency, referral, **sign))

    async def ready(self) -> Reply:
        return await self.request("GET", "/readyz", "kelder-police")


StartBroker = Callable[..., Awaitable[Broker]]


@pytest.fixture
async def start_broker(federation: Federation) -> AsyncIterator[StartBroker]:
    """Start brokers over given keys and clock, built as ``broker_url`` builds its one."""
    servers: list[TestServer] = []

    async def start(keys: FederationKeys, *, clock: Callable[[], datetime] | None = None) -> Broker:
        clock = clock if clock is not None else Clock()
        settings = Settings(
            max_body_bytes=64_000,
            topic_prefix="unit",
            federation_dir=FEDERATION_DIR,
            key_dir=keys.root,
        )
        transport = MemoryTransport()
        trust = TrustStore(keys.store, keys.passphrase, member_id=BROKER_ID, clock=clock)
        app = create_app(
            settings, federation, transport, trust, store=SqliteStore(None), clock=clock
        )
        server = TestServer(app, host="127.0.0.1")
        await server.start_server(ssl=keys.server_ssl())
        servers.append(server)
        return Broker(str(server.make_url("")).rstrip("/"), settings, transport, keys, clock)

    try:
        yield start
    finally:
        for server in servers:
            await server.close()


@pytest.fixture
async def broker(start_broker: StartBroker, federation_keys: FederationKeys) -> Broker:
    """A broker over the session's federation, on a clock that stands still during the test."""
    return await start_broker(federation_keys, clock=Clock())


def captured_logs() -> AbstractContextManager[list[EventDict]]:
    """Capture log entries with the context each request binds (request id, referral id)."""
    return capture_logs(processors=[structlog.contextvars.merge_contextvars])


def assert_refused(
    reply: Reply,
    logs: list[EventDict],
    *,
    status: int,
    problem: str,
    referral: dict[str, Any],
) -> None:
    """``reply`` is the typed problem, logged once as ``request.refused``, with no personal data.

    ``logs`` are the entries captured around the request, with the request's bound context.
    """
    assert reply.status == status
    assert reply.content_type == "application/problem+json"
    assert reply.body["type"] == f"urn:cairn:problem:{problem}"
    refusals = [e for e in logs if e["event"] == "request.refused"]
    assert [(e["status"], e["problem"]) for e in refusals] == [(status, reply.body["type"])]
    said = [json.dumps(reply.body), *(repr(e) for e in logs)]
    assert [v for v in personal_values(referral) if any(v in text for text in said)] == []
