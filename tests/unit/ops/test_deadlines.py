"""Delivery deadlines and the overdue sweep, on fixed clocks and the in-memory transport."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from broker.config import Settings
from broker.kafka.transport import MemoryTransport
from broker.ops.metrics import Metrics
from broker.ops.overdue import NOT_ACKNOWLEDGED, OverdueSweep, due_overdue
from broker.policy.deadlines import deadline_for
from broker.state import OVERDUE_LATE, Delivery, SqliteStore
from schemas.audit import OVERDUE_ACKNOWLEDGED_LATE
from schemas.errors import TransportError
from tests.unit.conftest import Clock
from tests.unit.policy.cases import notification, one, referral

ACCEPTED = datetime(2026, 11, 26, 6, 0, tzinfo=UTC)  # Thursday, a school day
SCHOOL_START = datetime(2026, 11, 26, 8, 30, tzinfo=UTC)  # that day's start of school
SCHOOL = "kelder-brook-primary"
LEASE = timedelta(seconds=30)


def encompass_delivery(settings: Settings) -> Delivery:
    """The sample Encompass notice, decided and recorded as the pipeline does at ACCEPTED."""
    note = notification()
    decision = one(note, now=ACCEPTED)
    return Delivery(
        referral_id=str(note.header.notification_id),
        agency=decision.recipient,
        purpose="ENCOMPASS",
        sender="kelder-police",
        delivered_at=ACCEPTED,
        due_at=deadline_for(note, decision, settings, ACCEPTED),
    )


async def sweep_for(settings: Settings, clock: Clock) -> tuple[OverdueSweep, SqliteStore, Metrics]:
    store = SqliteStore(None)
    metrics = Metrics()
    await store.record_deliveries([encompass_delivery(settings)])
    transport = MemoryTransport()
    return OverdueSweep(settings, store, transport, metrics, clock), store, metrics


def test_encompass_deadline_is_the_start_of_the_next_school_day(settings: Settings) -> None:
    """An Encompass notice accepted before school is due at that morning's start of school."""
    assert encompass_delivery(settings).due_at == SCHOOL_START


def test_marac_and_high_risk_idva_deadlines_are_configurable(settings: Settings) -> None:
    """MARAC and high-risk IDVA disclosures are due the configured seconds after acceptance;
    a medium-risk IDVA referral has no deadline."""
    custom = settings.model_copy(update={"deadline_marac_s": 3600, "deadline_idva_high_s": 7200})
    marac = referral("MARAC", ("kelder-marac",))
    assert deadline_for(marac, one(marac, now=ACCEPTED), custom, ACCEPTED) == ACCEPTED + timedelta(
        hours=1
    )
    idva = referral("IDVA", ("kelder-idva",))
    assert idva.risk.level.value == "high"
    assert deadline_for(idva, one(idva, now=ACCEPTED), custom, ACCEPTED) == ACCEPTED + timedelta(
        hours=2
    )
    medium = idva.model_copy(update={"risk": idva.risk.model_copy(update={"level": "medium"})})
    assert deadline_for(medium, one(idva, now=ACCEPTED), custom, ACCEPTED) is None


def test_due_overdue_is_pure_and_exact_at_the_deadline(settings: Settings) -> None:
    """Not overdue a microsecond before the deadline; overdue from the deadline itself."""
    d = encompass_delivery(settings)
    assert due_overdue([d], {}, SCHOOL_START - timedelta(microseconds=1)) == []
    assert due_overdue([d], {}, SCHOOL_START) == [d]


def test_acknowledged_by_the_deadline_is_never_overdue(settings: Settings) -> None:
    """An acknowledgement at or before the deadline keeps the delivery off the list for good."""
    d = encompass_delivery(settings)
    acks = {(d.referral_id, d.agency): SCHOOL_START}
    assert due_overdue([d], acks, SCHOOL_START + timedelta(days=30)) == []


def test_acknowledged_after_the_deadline_is_still_overdue(settings: Settings) -> None:
    """A late acknowledgement does not undo the lateness: it was not acknowledged in time."""
    d = encompass_delivery(settings)
    acks = {(d.referral_id, d.agency): SCHOOL_START + timedelta(minutes=1)}
    assert due_overdue([d], acks, SCHOOL_START + timedelta(minutes=5)) == [d]


async def test_unacknowledged_encompass_becomes_overdue_at_school_start_once(
    settings: Settings,
) -> None:
    """At the start of the next school day one overdue event, one metric and one log line;
    later sweeps report nothing more."""
    clock = Clock(SCHOOL_START - timedelta(seconds=1))
    sweep, store, metrics = await sweep_for(settings, clock)
    transport = sweep._transport
    assert isinstance(transport, MemoryTransport)
    assert await sweep.sweep() == []
    clock.now = SCHOOL_START
    with capture_logs() as logs:
        reported = await sweep.sweep()
    assert [(d.agency, d.purpose) for d in reported] == [(SCHOOL, "ENCOMPASS")]
    clock.advance(timedelta(hours=3))
    assert await sweep.sweep() == []
    events = [json.loads(r.value) for r in transport.read_committed("unit.audit")]
    assert [(e["type"], e["recipient"], e["due_at"]) for e in events] == [
        ("overdue", SCHOOL, "2026-11-26T08:30:00Z")
    ]
    assert events[0]["reasons"] == [NOT_ACKNOWLEDGED]
    (record,) = transport.read_committed("unit.audit")
    assert record.headers[0] == ("cairn-event-type", b"overdue")
    overdue_logs = [entry for entry in logs if entry["event"] == "delivery.overdue"]
    assert overdue_logs == [
        {
            "event": "delivery.overdue",
            "log_level": "warning",
            "referral_id": reported[0].referral_id,
            "recipient": SCHOOL,
            "purpose": "ENCOMPASS",
            "due_at": "2026-11-26T08:30:00+00:00",
            "acknowledged": "never",
        }
    ]
    labels = {"purpose": "ENCOMPASS", "recipient": SCHOOL}
    assert metrics.registry.get_sample_value("cairn_overdue_disclosures_total", labels) == 1.0
    assert [d.referral_id for d in await store.overdue()] == [reported[0].referral_id]


async def test_acknowledged_before_school_start_is_never_reported(settings: Settings) -> None:
    """A notice acknowledged before the deadline raises no event, metric or overdue entry."""
    clock = Clock(SCHOOL_START)
    sweep, store, metrics = await sweep_for(settings, clock)
    d = (await store.open_deliveries())[0]
    await store.remember_ack(d.referral_id, d.agency, SCHOOL_START - timedelta(minutes=10))
    clock.advance(timedelta(days=2))
    assert await sweep.sweep() == []
    assert sweep._transport.published == 0  # type: ignore[attr-defined]
    assert await store.overdue() == []
    assert metrics.registry.get_sample_value("cairn_overdue_disclosures_total") is None


async def test_acknowledged_late_before_the_sweep_is_reported_as_late(settings: Settings) -> None:
    """A notice acknowledged after its deadline but before the sweep came round is reported
    once, as acknowledged late (reason acknowledged-late, acknowledged_at), and counted late."""
    clock = Clock(SCHOOL_START)
    sweep, store, _metrics = await sweep_for(settings, clock)
    d = (await store.open_deliveries())[0]
    acked = SCHOOL_START + timedelta(minutes=10)
    await store.remember_ack(d.referral_id, d.agency, acked)
    clock.advance(timedelta(hours=1))
    assert [r.referral_id for r in await sweep.sweep()] == [d.referral_id]
    assert await sweep.sweep() == []
    transport = sweep._transport
    assert isinstance(transport, MemoryTransport)
    (event,) = [json.loads(r.value) for r in transport.read_committed("unit.audit")]
    assert (event["reasons"], event["acknowledged_at"]) == (
        [OVERDUE_ACKNOWLEDGED_LATE],
        "2026-11-26T08:40:00Z",
    )
    assert await store.overdue_counts() == {("ENCOMPASS", SCHOOL, OVERDUE_LATE): 1}


async def test_kafka_down_defers_the_report_without_losing_it(settings: Settings) -> None:
    """With Kafka unavailable the sweep fails and the delivery stays open for the next one."""
    clock = Clock(SCHOOL_START + timedelta(minutes=1))
    sweep, store, _metrics = await sweep_for(settings, clock)
    transport = sweep._transport
    assert isinstance(transport, MemoryTransport)
    transport.available = False
    with pytest.raises(TransportError):
        await sweep.sweep()
    assert len(await store.open_deliveries()) == 1
    transport.available = True
    assert len(await sweep.sweep()) == 1
    assert (await store.open_deliveries()) == []


async def test_of_brokers_sharing_a_store_only_the_lease_holder_sweeps(
    settings: Settings, tmp_path: Path
) -> None:
    """Two brokers (on two machines) over one store: one overdue event, from the holder of the
    sweep lease; once the holder stops renewing it, the other takes over and prunes at once."""
    clock = Clock(SCHOOL_START + timedelta(minutes=1))
    path = tmp_path / "state.sqlite"
    first, second = SqliteStore(path), SqliteStore(path)
    transport = MemoryTransport()
    sweeps = [
        OverdueSweep(
            settings.model_copy(update={"transactional_id": f"cairn-broker.host-{n}.0"}),
            store,
            transport,
            Metrics(),
            clock,
        )
        for n, store in enumerate((first, second))
    ]
    try:
        await first.record_deliveries([encompass_delivery(settings)])
        assert await sweeps[0].holds_lease()  # the first broker's earlier round took it

        async def one_round(sweep: OverdueSweep) -> None:
            stop = asyncio.Event()
            task = asyncio.create_task(sweep.run(stop))
            await asyncio.sleep(0.2)
            stop.set()
            await asyncio.wait_for(task, 5)

        await one_round(sweeps[1])  # not the holder: sends nothing, the delivery stays open
        assert transport.read_committed("unit.audit") == []
        assert len(await second.open_deliveries()) == 1
        await one_round(sweeps[0])
        events = transport.read_committed("unit.audit")
        assert [json.loads(r.value)["type"] for r in events] == ["overdue"]
        assert not await sweeps[1].holds_lease()
        clock.advance(timedelta(seconds=3 * settings.overdue_sweep_every_s))
        assert await sweeps[1].holds_lease()
        await second.claim("00000000-0000-4000-8000-000000000001", "d", "x", clock.now, LEASE)
        clock.advance(timedelta(seconds=settings.replay_window_s + 1))
        assert await sweeps[1].prune() == 1
        assert await sweeps[1].prune() == 0  # not due again for state_prune_every_s
    finally:
        await first.close()
        await second.close()
