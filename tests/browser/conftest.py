"""Fixtures for browser tests: Debian's Chromium driven by Playwright, against real Kafka.

Chromium and Playwright must be installed (``make setup`` installs them): when either is
missing these tests fail, they never skip. Playwright never downloads a browser here; it
launches ``/usr/bin/chromium``. The pages are served over mutual TLS, so each browser context
presents an agency's client certificate (Playwright's ``client_certificates``, with the key
file's passphrase: no decrypted key is ever written).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from broker.audit.service import Auditor, add_ig_routes, auditor_app
from broker.audit.store import CheckpointPolicy
from broker.config import Settings
from broker.kafka.topics import federation_topics
from broker.kafka.transport import KafkaTransport, create_topics
from broker.ops.metrics import Metrics
from broker.ops.overdue import OverdueSweep
from broker.state import SqliteStore
from broker.web.app import create_app
from broker.web.dashboard import (
    StoreOpsSource,
    TappedTransport,
    add_ops_routes,
    dlq_counter,
)
from keys import AUDITOR_ID
from keys.store import client_cert, client_key
from schemas.federation import Federation
from tests.conftest import FederationKeys
from tests.integration.conftest import make_settings
from tests.kafka_support import LocalKafka
from tests.samples import REPO

CHROMIUM = Path(os.environ.get("CAIRN_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
ARTIFACTS = REPO / "test-artifacts"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/browser/" in str(item.fspath):
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.kafka)


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium; its absence fails the test (CI must install it)."""
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (make setup does)")
    return CHROMIUM


@pytest.fixture
async def browser(chromium: Path) -> AsyncIterator[Any]:
    """A headless Chromium, closed after the test.

    ``launch`` gives Chromium a new, empty profile of Playwright's own making (it refuses a
    ``--user-data-dir`` argument), removed when the browser closes.
    """
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.fail("the playwright package is missing: pip install -e '.[dev]' (make setup)")
    async with async_playwright() as p:
        launched = await p.chromium.launch(
            executable_path=str(chromium),
            args=list(CHROMIUM_ARGS),
        )
        try:
            yield launched
        finally:
            await launched.close()


class OpsClock:
    """The ops view's clock: real time plus a shift a test sets to make deadlines pass."""

    def __init__(self) -> None:
        self.shift = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.shift


@dataclass
class Stack:
    """A broker with the ops view and an auditor with the IG view, both over mutual TLS."""

    settings: Settings
    keys: FederationKeys
    broker_url: str
    auditor_url: str
    auditor: Auditor
    ops_clock: OpsClock
    sweep: OverdueSweep  # the overdue sweep on the ops clock, run by a test when it needs it
    contexts: list[Any] = field(default_factory=list)

    async def context(self, browser: Any, member: str, origin: str) -> Any:
        """A browser context presenting ``member``'s client certificate to ``origin``."""
        store = self.keys.store
        ctx = await browser.new_context(
            # The development CA is not in Chromium's trust store; the server is ours, on
            # loopback, and the client certificate is what this test is about.
            ignore_https_errors=True,
            client_certificates=[
                {
                    "origin": origin,
                    "certPath": str(store.path(client_cert(member))),
                    "keyPath": str(store.path(client_key(member))),
                    "passphrase": self.keys.passphrase.decode(),
                }
            ],
        )
        self.contexts.append(ctx)
        return ctx

    async def wait_audited(self, events: int, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.auditor.log.size < events:
            assert time.monotonic() < deadline, "the auditor did not catch up"
            await asyncio.sleep(0.2)


@pytest.fixture
def broker_receipts() -> bool:
    """Whether ``stack``'s broker follows the receipts topic (acknowledgements, views) as
    ``cairn serve`` does; a module that needs it overrides this fixture."""
    return False


@pytest.fixture
async def stack(
    kafka: LocalKafka,
    federation: Federation,
    federation_keys: FederationKeys,
    tmp_path: Path,
    broker_receipts: bool,
) -> AsyncIterator[Stack]:
    """The broker (ops view, real Kafka) and the auditor (IG view), wired as in production."""
    settings = make_settings(kafka.bootstrap, federation_keys.root, state_dir=tmp_path / "state")
    await create_topics(settings, federation_topics(federation, settings.topic_prefix))
    store = SqliteStore(tmp_path / "state.sqlite")
    transport = TappedTransport(KafkaTransport(settings), store)
    clock = OpsClock()

    auditor = Auditor(
        settings,
        federation_keys.trust(AUDITOR_ID),
        policy=CheckpointPolicy(every_entries=1, every_s=1.0),
    )
    await auditor.open()
    stop = asyncio.Event()
    task = asyncio.create_task(auditor.run(stop))

    async def auditor_alive() -> bool:
        return not task.done()

    app = create_app(
        settings,
        federation,
        transport,
        federation_keys.trust(),
        store=store,
        consume_receipts=broker_receipts,
    )
    add_ops_routes(
        app,
        StoreOpsSource(
            store,
            probes={"kafka": transport.ready, "auditor": auditor_alive},
            dlq_count=dlq_counter(settings),
            clock=clock,
        ),
    )
    audit_app = auditor_app(auditor)
    add_ig_routes(audit_app, auditor)
    broker_server = TestServer(app, host="127.0.0.1")
    audit_server = TestServer(audit_app, host="127.0.0.1")
    await broker_server.start_server(ssl=federation_keys.server_ssl())
    await audit_server.start_server(ssl=federation_keys.server_ssl())
    url: Callable[[TestServer], str] = lambda s: str(s.make_url("")).rstrip("/")  # noqa: E731
    sweep = OverdueSweep(settings, store, transport, Metrics(), clock)
    running = Stack(
        settings, federation_keys, url(broker_server), url(audit_server), auditor, clock, sweep
    )
    try:
        yield running
    finally:
        for ctx in running.contexts:
            with contextlib.suppress(Exception):
                await ctx.close()
        await asyncio.wait_for(broker_server.close(), 30)
        await asyncio.wait_for(audit_server.close(), 30)
        stop.set()
        await asyncio.wait_for(task, settings.shutdown_timeout_s + 15)
        await auditor.close()
        await store.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """test-artifacts/ (git-ignored): screenshots kept for CI to upload."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
