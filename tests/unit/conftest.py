"""Fixtures for fast unit tests: no Kafka, no network beyond loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from broker.app import create_app
from broker.config import Settings
from broker.federation import load_federation
from broker.transport import MemoryTransport
from schemas.federation import Federation
from tests.samples import FEDERATION_DIR


@pytest.fixture(scope="session")
def federation() -> Federation:
    return load_federation(FEDERATION_DIR)


@pytest.fixture
def settings() -> Settings:
    return Settings(max_body_bytes=64_000, topic_prefix="unit", federation_dir=FEDERATION_DIR)


@pytest.fixture
def transport() -> MemoryTransport:
    return MemoryTransport()


@pytest.fixture
async def client(
    settings: Settings, federation: Federation, transport: MemoryTransport
) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    app = create_app(settings, federation, transport)
    async with TestClient(TestServer(app)) as c:
        yield c
