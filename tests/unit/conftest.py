"""Fixtures for fast unit tests: no Kafka; real TLS and real keys, on loopback only."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from adapters.client import ReferralClient
from broker.app import create_app
from broker.config import Settings
from broker.federation import load_federation
from broker.replay import ReplayStore
from broker.transport import MemoryTransport
from schemas.federation import Federation
from tests.conftest import FederationKeys
from tests.samples import FEDERATION_DIR


@pytest.fixture(scope="session")
def federation() -> Federation:
    return load_federation(FEDERATION_DIR)


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
        settings, federation, transport, federation_keys.trust(), replay=ReplayStore(None)
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
