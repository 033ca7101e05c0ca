"""Fixtures for integration tests against the real local Apache Kafka.

The session makes sure local Kafka runs (deploy/kafka/kafka-local start is idempotent). If it
cannot, every Kafka-backed test errors: these tests fail, they never skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from adapters.client import ReferralClient
from broker.config import Settings
from broker.kafka.topics import federation_topics
from broker.kafka.transport import KafkaTransport, create_topics
from broker.state import SqliteStore, StateStore
from broker.web.app import create_app
from schemas.federation import Federation
from tests.conftest import FederationKeys
from tests.kafka_support import LocalKafka
from tests.samples import FEDERATION_DIR


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.kafka)


def make_settings(bootstrap: str, key_dir: object, **overrides: object) -> Settings:
    tag = uuid.uuid4().hex[:10]
    values: dict[str, object] = {
        "kafka_bootstrap_servers": bootstrap,
        "topic_prefix": f"t{tag}",
        "transactional_id": f"cairn-test-{tag}",
        "federation_dir": FEDERATION_DIR,
        "publish_timeout_s": 8.0,
        "kafka_connect_timeout_s": 5.0,
        "max_body_bytes": 64_000,
        "key_dir": key_dir,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
async def kafka_settings(
    kafka: LocalKafka, federation: Federation, federation_keys: FederationKeys
) -> Settings:
    """Settings with a topic prefix of this test's own, its topics created."""
    settings = make_settings(kafka.bootstrap, federation_keys.root)
    await create_topics(settings, federation_topics(federation, settings.topic_prefix))
    return settings


@pytest.fixture
async def broker_url(
    kafka_settings: Settings, federation: Federation, federation_keys: FederationKeys
) -> AsyncIterator[str]:
    """A real broker over mutual TLS on a loopback port, publishing to the real Kafka."""
    async with running_broker(kafka_settings, federation, federation_keys) as url:
        yield url


@contextlib.asynccontextmanager
async def running_broker(
    settings: Settings,
    federation: Federation,
    keys: FederationKeys,
    *,
    consume_receipts: bool = False,
    store: StateStore | None = None,
) -> AsyncIterator[str]:
    """A real broker on a loopback port; with ``consume_receipts`` it also follows the
    receipts topic (recipients' acknowledgements) as ``cairn serve`` does. Its state is in
    memory unless ``store`` is given (brokers sharing one)."""
    app = create_app(
        settings,
        federation,
        KafkaTransport(settings),
        keys.trust(),
        store=SqliteStore(None) if store is None else store,
        consume_receipts=consume_receipts,
    )
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(ssl=keys.server_ssl())
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await asyncio.wait_for(server.close(), 30)


def client(keys: FederationKeys, url: str, agency: str = "kelder-police") -> ReferralClient:
    """A signing client with ``agency``'s TLS certificate."""
    return ReferralClient(
        url,
        ssl_context=keys.client_ssl(agency),
        signing_key=keys.trust(agency).signing_key(),
    )


def cairn_env(
    settings: Settings, keys: FederationKeys, state: Path, **extra: str
) -> dict[str, str]:
    """The environment of a ``cairn`` process on this test's Kafka, topics, state folder and
    keys (no ``CAIRN_*`` of the caller's leaks in), with ``extra`` settings on top."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CAIRN_")}
    return {
        **environ,
        "CAIRN_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "CAIRN_TOPIC_PREFIX": settings.topic_prefix,
        "CAIRN_STATE_DIR": str(state),
        "CAIRN_KEY_DIR": str(keys.root),
        "CAIRN_KEY_PASSPHRASE": keys.passphrase.decode(),
        **extra,
    }
