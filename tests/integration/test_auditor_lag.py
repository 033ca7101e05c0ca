"""The auditor's lag is the auditor's own figure (issue 18, "Figures that agree").

A real auditor follows a real audit topic and serves ``GET /v1/audit/status`` over real TLS; a
real broker, whose state folder is NOT the auditor's (no file of the auditor's is there to
read), shows ``cairn_auditor_lag`` on its ``/metrics`` from that route. Behind (events committed
before the auditor starts): the lag it measures is Kafka's own figure, the audit partition's
last stable offset (KIP-98) less the auditor's position. Caught up: 0 on both, commit markers
and all. Stopped: the broker's gauges are gone, not left at the last numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer
from aiokafka import AIOKafkaConsumer, TopicPartition

from broker.audit.service import Auditor, auditor_app, tls_context
from broker.audit.store import CheckpointPolicy
from broker.config import Settings
from keys import AUDITOR_ID
from schemas.federation import Federation
from tests.conftest import FederationKeys
from tests.integration.conftest import client, running_broker
from tests.integration.test_ops import parse, scrape
from tests.samples import sample


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _stable_end(settings: Settings) -> int:
    """Kafka's last stable offset of the audit partition (read_committed end offset)."""
    tp = TopicPartition(f"{settings.topic_prefix}.audit", 0)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers, isolation_level="read_committed"
    )
    await consumer.start()
    try:
        end: int = (await consumer.end_offsets([tp]))[tp]
        return end
    finally:
        await consumer.stop()


@contextlib.asynccontextmanager
async def serving_auditor(
    settings: Settings, keys: FederationKeys, port: int
) -> AsyncIterator[tuple[Auditor, str]]:
    """A real auditor following the audit topic, its API over TLS on ``port``."""
    auditor = Auditor(
        settings, keys.trust(AUDITOR_ID), policy=CheckpointPolicy(every_entries=1, every_s=1.0)
    )
    await auditor.open()
    server = TestServer(auditor_app(auditor), host="127.0.0.1", port=port)
    await server.start_server(ssl=tls_context(keys.store, keys.passphrase))
    stop = asyncio.Event()
    task = asyncio.create_task(auditor.run(stop))
    try:
        yield auditor, f"https://127.0.0.1:{port}"
    finally:
        stop.set()
        await asyncio.wait_for(task, settings.shutdown_timeout_s + 15)
        await server.close()
        await auditor.close()


async def _status(keys: FederationKeys, url: str) -> dict[str, Any]:
    """The public status route, with no client certificate (it is public)."""
    context = ssl.create_default_context(cafile=str(keys.store.path("tls/ca.crt")))
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session,
        session.get(f"{url}/v1/audit/status") as response,
    ):
        assert response.status == 200, await response.text()
        assert response.headers["Cache-Control"] == "no-cache"
        document: dict[str, Any] = await response.json()
        return document


async def test_the_auditor_measures_its_own_lag_and_the_broker_shows_it(
    kafka_settings: Settings,
    federation: Federation,
    federation_keys: FederationKeys,
    tmp_path: Path,
) -> None:
    port = _free_port()
    broker_settings = kafka_settings.model_copy(
        update={"state_dir": tmp_path / "broker", "auditor_http_port": port}
    )
    auditor_settings = kafka_settings.model_copy(update={"state_dir": tmp_path / "auditor"})
    async with running_broker(broker_settings, federation, federation_keys) as broker_url:
        # Behind: events committed while no auditor runs.
        async with client(federation_keys, broker_url) as c:
            for _ in range(3):
                await c.submit(json.dumps(sample()).encode())
        end = await _stable_end(kafka_settings)
        assert end > 0
        # Nothing answers the auditor's port: no lag, no age, and up 0 on the broker.
        got = parse(await scrape(federation_keys, broker_url))
        assert got["cairn_auditor_up"] == [({}, 0.0)]
        assert "cairn_auditor_lag" not in got
        assert "cairn_auditor_checkpoint_age_seconds" not in got

        async with serving_auditor(auditor_settings, federation_keys, port) as (auditor, url):
            # Its first measure is at the start: Kafka's last stable offset less its position
            # (the log is empty, so position 0): exactly what Kafka says, nothing guessed.
            deadline = time.monotonic() + 20
            first = await _status(federation_keys, url)
            while first["lag"] is None:
                assert time.monotonic() < deadline, "the auditor never measured its lag"
                await asyncio.sleep(0.05)
                first = await _status(federation_keys, url)
            assert first["lag"] == end > 0
            # Caught up: its position is past the last commit marker, so the lag is 0.
            deadline = time.monotonic() + 30
            status = await _status(federation_keys, url)
            while status["lag"] != 0 or status["checkpoint"]["size"] != auditor.log.size:
                assert time.monotonic() < deadline, f"never caught up: {status}"
                await asyncio.sleep(0.2)
                status = await _status(federation_keys, url)
            assert status["next_offset"] == auditor.log.next_offset
            assert status["size"] == auditor.log.size > 0
            assert status["checkpoint"]["age_s"] is not None
            assert status["forks"] == 0
            # Its own /metrics says the same, for a Prometheus scraping the auditor directly.
            context = ssl.create_default_context(
                cafile=str(federation_keys.store.path("tls/ca.crt"))
            )
            async with (
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session,
                session.get(f"{url}/metrics") as response,
            ):
                assert response.status == 200
                assert "cairn_auditor_lag 0.0" in (await response.text()).splitlines()
            # Kafka agrees: the auditor's position is the partition's last stable offset.
            assert await _stable_end(kafka_settings) == end
            # The broker shows the same 0, from the route: its own state folder has no audit
            # files at all to read.
            assert not (tmp_path / "broker" / "audit").exists()
            deadline = time.monotonic() + 20
            got = parse(await scrape(federation_keys, broker_url))
            while got.get("cairn_auditor_lag") != [({}, 0.0)]:
                assert time.monotonic() < deadline, f"broker: {got.get('cairn_auditor_lag')}"
                await asyncio.sleep(0.5)
                got = parse(await scrape(federation_keys, broker_url))
            assert got["cairn_auditor_up"] == [({}, 1.0)]
            assert got["cairn_audit_witness_forks"] == [({}, 0.0)]
            ((_labels, age),) = got["cairn_auditor_checkpoint_age_seconds"]
            assert 0 <= age < 60

        # Stopped: the broker's gauges go (within the probe's cache), not stale numbers.
        deadline = time.monotonic() + 20
        got = parse(await scrape(federation_keys, broker_url))
        while "cairn_auditor_lag" in got:
            assert time.monotonic() < deadline, "the broker kept the stopped auditor's lag"
            await asyncio.sleep(0.5)
            got = parse(await scrape(federation_keys, broker_url))
        assert got["cairn_auditor_up"] == [({}, 0.0)]
        assert "cairn_auditor_checkpoint_age_seconds" not in got
        assert "cairn_audit_witness_forks" not in got
