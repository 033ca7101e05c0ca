"""Overdue through the real Kafka and the real auditor (issue 18): the broker's own sweep (as
``cairn serve`` runs it) reports the unacknowledged disclosures, a late acknowledgement on the
receipts topic gets its ``acknowledged-late`` event from the broker's receipts loop, and
``/metrics``, ``/ui/``, ``cairn status`` and the auditor's log agree once the log has caught up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import aiohttp
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from broker.audit.service import Auditor
from broker.audit.store import CheckpointPolicy
from broker.cli.status import Status, overdue_figures, read_store
from broker.config import Settings
from broker.kafka.transport import KafkaTransport, Record
from broker.state import SqliteStore
from broker.web.app import create_app
from keys import AUDITOR_ID, sign_ack
from schemas.audit import OVERDUE_ACKNOWLEDGED_LATE, AuditEventType
from schemas.federation import Federation
from schemas.receipt import Acknowledgement, AcknowledgementStatus
from tests.conftest import FederationKeys
from tests.integration.conftest import client
from tests.samples import sample

RECIPIENTS = ("kelder-idva", "kelder-marac")
Figures = tuple[int, int]


@contextlib.asynccontextmanager
async def broker_and_auditor(
    settings: Settings, federation: Federation, keys: FederationKeys, path: Path
) -> AsyncIterator[tuple[str, Auditor]]:
    """The broker as cairn serve runs it (receipts loop, overdue sweep, ops view) on the real
    Kafka and a SQLite store, and the auditor following the audit topic."""
    app = create_app(
        settings,
        federation,
        KafkaTransport(settings),
        keys.trust(),
        store=SqliteStore(path),
        consume_receipts=True,
        dashboard=True,
    )
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(ssl=keys.server_ssl())
    auditor = Auditor(
        settings, keys.trust(AUDITOR_ID), policy=CheckpointPolicy(every_entries=1, every_s=1.0)
    )
    await auditor.open()
    stop = asyncio.Event()
    task = asyncio.create_task(auditor.run(stop))
    try:
        yield str(server.make_url("")).rstrip("/"), auditor
    finally:
        stop.set()
        await asyncio.wait_for(task, settings.shutdown_timeout_s + 15)
        await auditor.close()
        await asyncio.wait_for(server.close(), 30)


async def get(keys: FederationKeys, url: str) -> str:
    connector = aiohttp.TCPConnector(ssl=keys.client_ssl("kelder-police"))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(url) as response,
    ):
        assert response.status == 200, url
        return await response.text()


async def figures(
    keys: FederationKeys, url: str, auditor: Auditor, path: Path
) -> dict[str, Figures]:
    total = late = 0
    for family in text_string_to_metric_families(await get(keys, f"{url}/metrics")):
        for s in family.samples:
            if s.name == "cairn_disclosures_overdue":
                total += int(s.value)
                late += int(s.value) if s.labels["acknowledged"] == "late" else 0
    ops: dict[str, Any] = json.loads(await get(keys, f"{url}/ui/api/ops"))
    status = overdue_figures(await read_store(SqliteStore(path, read_only=True), Status()))

    def logged() -> Figures:
        pairs, late_pairs = set(), set()
        for entry in auditor.log.entries():
            event = entry.event
            if event.type is AuditEventType.OVERDUE:
                pairs.add((event.message_id, event.recipient))
                if OVERDUE_ACKNOWLEDGED_LATE in event.reasons:
                    late_pairs.add((event.message_id, event.recipient))
        return len(pairs), len(late_pairs)

    return {
        "metrics": (total, late),
        "ops view": (ops["overdue_total"], ops["overdue_late"]),
        "cairn status": status,
        "audit log": await auditor.call(logged),
    }


async def settle(
    keys: FederationKeys, url: str, auditor: Auditor, path: Path, expected: Figures
) -> dict[str, Figures]:
    """The four figures once they all show ``expected`` (the sweep and the auditor run in
    the background), or as they stand after 45 s."""
    deadline = time.monotonic() + 45
    while True:
        got = await figures(keys, url, auditor, path)
        if set(got.values()) == {expected} or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.3)


async def acknowledge(settings: Settings, keys: FederationKeys, rid: UUID, agency: str) -> None:
    """The recipient's signed acknowledgement on the receipts topic, as its gateway sends it."""
    now = datetime.now(UTC)
    ack = Acknowledgement(
        referral_id=rid, agency=agency, status=AcknowledgementStatus.FILED, acknowledged_at=now
    )
    token = sign_ack(
        ack.model_dump_json().encode(), keys.trust(agency).signing_key(), issued_at=now
    )
    sender = KafkaTransport(
        settings.model_copy(update={"transactional_id": f"{settings.transactional_id}-{agency}"})
    )
    await sender.start()
    try:
        headers = (("cairn-referral-id", str(rid).encode()), ("cairn-agency", agency.encode()))
        record = Record(f"{settings.topic_prefix}.receipts", str(rid).encode(), token, headers)
        await sender.publish([record])
    finally:
        await sender.stop()


async def test_overdue_figures_agree_through_kafka_and_the_auditor(
    kafka_settings: Settings,
    federation: Federation,
    federation_keys: FederationKeys,
    tmp_path: Path,
) -> None:
    """Two MARAC referrals due in 2 s, never acknowledged: the sweep reports four overdue;
    one recipient then acknowledges one late: (4, 1) everywhere, the auditor's log included."""
    settings = kafka_settings.model_copy(
        update={"deadline_marac_s": 2, "overdue_sweep_every_s": 0.5, "state_dir": tmp_path}
    )
    path = tmp_path / "state.sqlite"
    keys = federation_keys
    async with broker_and_auditor(settings, federation, keys, path) as (url, auditor):
        async with client(keys, url) as police:
            ids = [(await police.submit(json.dumps(sample()).encode())).referral_id for _ in "ab"]
        got = await settle(keys, url, auditor, path, (4, 0))
        assert set(got.values()) == {(4, 0)}, got
        await acknowledge(settings, keys, ids[0], "kelder-idva")
        got = await settle(keys, url, auditor, path, (4, 1))
        assert set(got.values()) == {(4, 1)}, got
