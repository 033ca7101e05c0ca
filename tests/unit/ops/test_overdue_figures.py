"""One overdue figure (issue 18): ``/metrics``, the ops view (``/ui/api/ops``), ``cairn status``
and the audit log agree at every step of a scripted flow on a fixed clock; the ops flows and
``cairn status``'s flows are the same after the broker restarts on the same state store.

The broker is the real app over TLS, in process, on a real SQLite store file; the memory
transport stands in for Kafka, and its committed audit records are appended to a real audit
log (``broker.audit.store.AuditLog``) as the auditor appends what it reads from Kafka. The
acknowledgements are signed by the recipients' keys and handled by the real receipts loop; the
sweep is the real ``OverdueSweep``, run at each step as its loop would.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiokafka import TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from adapters.client import ReferralClient
from broker.audit.store import AuditLog
from broker.cli.status import Status, overdue_figures, read_store
from broker.config import Settings
from broker.kafka.transport import MemoryTransport
from broker.ops.overdue import OverdueSweep
from broker.receipts import ReceiptsLoop
from broker.state import SqliteStore
from broker.web.app import METRICS, STORE, TRANSPORT, create_app
from keys import sign_ack
from schemas.audit import OVERDUE_ACKNOWLEDGED_LATE, AuditEventType
from schemas.federation import Federation
from schemas.receipt import Acknowledgement, AcknowledgementStatus
from tests.conftest import FederationKeys
from tests.samples import REPO, sample
from tests.unit.conftest import Clock

DUE_S = 3600  # seconds to acknowledge a MARAC disclosure, in this test
RECIPIENTS = ("kelder-idva", "kelder-marac")  # the sample MARAC referral's
TP = TopicPartition("unit.receipts", 0)
Figures = tuple[int, int]  # (overdue, of which acknowledged late)


@dataclass
class Message:
    """A record as aiokafka's consumer hands it to the receipts loop."""

    value: bytes
    offset: int
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    key: bytes = b""
    topic: str = TP.topic
    partition: int = TP.partition


@dataclass
class Broker:
    """One running broker app, its URL, and the audit log its audit records reach."""

    app: web.Application
    url: str
    transport: MemoryTransport
    audit: AuditLog
    appended: int = 0  # audit records appended to the log so far

    def to_audit_log(self, prefix: str) -> None:
        """Append the audit records Kafka (the memory transport) committed since last time."""
        records = self.transport.read_committed(f"{prefix}.audit")
        new = [(n, r.value) for n, r in enumerate(records) if n >= self.appended]
        self.audit.append(new)
        self.appended = len(records)


@contextlib.asynccontextmanager
async def running(
    settings: Settings,
    federation: Federation,
    keys: FederationKeys,
    path: Path,
    clock: Clock,
    audit_dir: Path,
) -> AsyncIterator[Broker]:
    """The broker with the ops view on the SQLite store at ``path``, over TLS."""
    transport = MemoryTransport()
    app = create_app(
        settings,
        federation,
        transport,
        keys.trust(),
        store=SqliteStore(path),
        clock=clock,
        dashboard=True,
    )
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(ssl=keys.server_ssl())
    try:
        with AuditLog.open(audit_dir) as audit:
            yield Broker(app, str(server.make_url("")).rstrip("/"), transport, audit)
    finally:
        await server.close()
        await app[STORE].close()


async def get(keys: FederationKeys, url: str) -> aiohttp.ClientResponse:
    connector = aiohttp.TCPConnector(ssl=keys.client_ssl("kelder-police"))
    async with aiohttp.ClientSession(connector=connector) as session:
        response = await session.get(url)
        assert response.status == 200, url
        await response.read()
        return response


async def from_metrics(keys: FederationKeys, broker: Broker) -> Figures:
    text = await (await get(keys, f"{broker.url}/metrics")).text()
    total = late = 0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "cairn_disclosures_overdue":
                total += int(s.value)
                late += int(s.value) if s.labels["acknowledged"] == "late" else 0
    return total, late


async def ops_view(keys: FederationKeys, broker: Broker) -> dict[str, Any]:
    body: dict[str, Any] = await (await get(keys, f"{broker.url}/ui/api/ops?window_s=3600")).json()
    return body


async def from_ops_view(keys: FederationKeys, broker: Broker) -> Figures:
    view = await ops_view(keys, broker)
    listed = view["overdue"]
    assert len(listed) == view["overdue_total"]  # fewer than OVERDUE_SHOWN: all are listed
    assert sum(o["acknowledged_at"] is not None for o in listed) == view["overdue_late"]
    return view["overdue_total"], view["overdue_late"]


async def from_status(path: Path) -> Figures:
    """What ``cairn status`` shows: its own read of the store, read-only, as the CLI does."""
    view = await read_store(SqliteStore(path, read_only=True), Status())
    assert view.health["state store read"] == "read"
    total, late = overdue_figures(view)
    assert len(view.overdue) == total
    assert sum(row[5].startswith("late") for row in view.overdue) == late
    return total, late


def cairn_status_offline(settings: Settings, keys: FederationKeys, state_dir: Path) -> str:
    """``cairn status --offline`` run as a process on the store under ``state_dir``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAIRN_")}
    env.update(
        PYTHONPATH=str(REPO),
        COLUMNS="200",
        CAIRN_STATE_DIR=str(state_dir),
        CAIRN_KEY_DIR=str(keys.root),
        CAIRN_FEDERATION_DIR=str(settings.federation_dir),
    )
    done = subprocess.run(
        [sys.executable, "-m", "broker", "status", "--offline"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def from_audit_log(broker: Broker) -> Figures:
    """The (referral, recipient) pairs with an ``overdue`` event, and those of them with one
    saying it was acknowledged late."""
    overdue: set[tuple[str, str]] = set()
    late: set[tuple[str, str]] = set()
    for entry in broker.audit.entries():
        event = entry.event
        if event.type is not AuditEventType.OVERDUE:
            continue
        pair = (str(event.message_id), str(event.recipient))
        overdue.add(pair)
        if OVERDUE_ACKNOWLEDGED_LATE in event.reasons:
            assert event.acknowledged_at is not None
            late.add(pair)
    return len(overdue), len(late)


async def four_figures(
    keys: FederationKeys, broker: Broker, path: Path, prefix: str
) -> list[Figures]:
    broker.to_audit_log(prefix)
    return [
        await from_metrics(keys, broker),
        await from_ops_view(keys, broker),
        await from_status(path),
        from_audit_log(broker),
    ]


async def submit(keys: FederationKeys, broker: Broker, clock: Clock) -> UUID:
    data = sample()  # MARAC, high risk, to kelder-idva and kelder-marac
    async with ReferralClient(
        broker.url,
        ssl_context=keys.client_ssl("kelder-police"),
        signing_key=keys.trust("kelder-police").signing_key(),
        clock=clock,
    ) as client:
        receipt = await client.submit(json.dumps(data).encode())
    assert sorted(r.agency for r in receipt.recipients if r.status.value == "queued") == list(
        RECIPIENTS
    )
    return receipt.referral_id


class Acks:
    """Recipients' signed acknowledgements, handled by the real receipts loop at the clock."""

    def __init__(
        self, settings: Settings, keys: FederationKeys, broker: Broker, clock: Clock
    ) -> None:
        self.keys = keys
        self.clock = clock
        self.offset = 0
        self.loop = ReceiptsLoop(
            settings,
            keys.trust(),
            broker.app[STORE],
            broker.app[TRANSPORT],
            clock,
            metrics=broker.app[METRICS],
        )

    async def __call__(self, referral_id: UUID, agency: str) -> None:
        now = self.clock()
        ack = Acknowledgement(
            referral_id=referral_id,
            agency=agency,
            status=AcknowledgementStatus.FILED,
            acknowledged_at=now,
        )
        token = sign_ack(
            ack.model_dump_json().encode(), self.keys.trust(agency).signing_key(), issued_at=now
        )
        headers = [
            ("cairn-referral-id", str(referral_id).encode()),
            ("cairn-agency", agency.encode()),
        ]
        await self.loop.handle_batch(TP, [Message(token, self.offset, headers)])
        self.offset += 1


async def test_metrics_ops_view_status_and_audit_log_agree_on_overdue_at_every_step(
    settings: Settings, federation: Federation, federation_keys: FederationKeys, tmp_path: Path
) -> None:
    """Four MARAC referrals (two recipients each): one acknowledged in time, one acknowledged
    late after the sweep reported it, one never, one acknowledged late before the sweep came
    round (for one recipient; never for the other). After every step the four sources give
    the same (overdue, acknowledged late), and it is the expected one."""
    settings = settings.model_copy(update={"deadline_marac_s": DUE_S})
    keys, prefix = federation_keys, settings.topic_prefix
    path = tmp_path / "state" / "broker" / "state.sqlite"  # where cairn status looks
    path.parent.mkdir(parents=True)
    clock = Clock()
    async with running(settings, federation, keys, path, clock, tmp_path / "audit") as broker:
        sweep = OverdueSweep(
            settings, broker.app[STORE], broker.app[TRANSPORT], broker.app[METRICS], clock
        )
        ack = Acks(settings, keys, broker, clock)

        async def agree(expected: Figures) -> None:
            assert await four_figures(keys, broker, path, prefix) == [expected] * 4

        in_time, late, never = [await submit(keys, broker, clock) for _ in range(3)]
        await agree((0, 0))
        clock.advance(timedelta(minutes=10))
        for agency in RECIPIENTS:
            await ack(in_time, agency)
        await agree((0, 0))
        clock.advance(timedelta(seconds=DUE_S))  # past the deadline, before any sweep
        await agree((0, 0))  # overdue is what the sweep found, not each view's own reckoning
        assert len(await sweep.sweep()) == 4  # late's and never's, to both recipients
        await agree((4, 0))
        clock.advance(timedelta(minutes=30))
        await ack(late, "kelder-idva")  # after the sweep: its own acknowledged-late event
        await agree((4, 1))
        assert await sweep.sweep() == []
        await agree((4, 1))

        quick = await submit(keys, broker, clock)
        clock.advance(timedelta(seconds=DUE_S + 60))
        await ack(quick, "kelder-marac")  # late, the sweep has not come round yet
        await agree((5, 2))
        assert [d.agency for d in await sweep.sweep()] == ["kelder-idva"]
        await agree((6, 2))
        clock.advance(timedelta(days=1))
        assert await sweep.sweep() == []
        await agree((6, 2))

        # The command itself, as a process, on the same store: the same figure in its title.
        shown = cairn_status_offline(settings, keys, tmp_path / "state")
        assert "Overdue disclosures: 6 (2 acknowledged late)" in shown
        # The alert's counter (what this process found newly overdue) found the same six.
        counter = broker.app[METRICS].registry.get_sample_value
        assert (
            sum(
                counter("cairn_overdue_disclosures_total", {"purpose": "MARAC", "recipient": r})
                or 0
                for r in RECIPIENTS
            )
            == 6
        )
        events = [e.event for e in broker.audit.entries()]
        overdue = [e for e in events if e.type is AuditEventType.OVERDUE]
        assert len(overdue) == 7  # six found, one of them acknowledged late after
        never_ids = {str(never)}
        assert {str(e.message_id) for e in overdue if e.acknowledged_at is None} >= never_ids
        assert {(str(e.message_id), e.recipient) for e in overdue if e.acknowledged_at} == {
            (str(late), "kelder-idva"),
            (str(quick), "kelder-marac"),
        }


async def test_ops_flows_and_status_flows_survive_a_restart_on_the_same_store(
    settings: Settings, federation: Federation, federation_keys: FederationKeys, tmp_path: Path
) -> None:
    """Flows shown by /ui/ and cairn status before a restart are shown the same after it, by a
    broker that has committed nothing since it started (its own counters are empty)."""
    keys = federation_keys
    path = tmp_path / "state.sqlite"
    clock = Clock()
    async with running(settings, federation, keys, path, clock, tmp_path / "a") as broker:
        for _ in range(2):
            await submit(keys, broker, clock)
        before = (await ops_view(keys, broker))["flows"]
        status_before = (await read_store(SqliteStore(path, read_only=True), Status())).flows
    assert [(f["recipient"], f["disclosed"]) for f in before] == [(r, 2) for r in RECIPIENTS]
    assert status_before == {("kelder-police", r, "MARAC"): 2 for r in RECIPIENTS}
    async with running(settings, federation, keys, path, clock, tmp_path / "b") as restarted:
        metrics = await (await get(keys, f"{restarted.url}/metrics")).text()
        assert "cairn_disclosures_total{" not in metrics  # this process counted none
        assert (await ops_view(keys, restarted))["flows"] == before
        after = await read_store(SqliteStore(path, read_only=True), Status())
        assert after.flows == status_before
