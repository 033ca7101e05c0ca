"""The overdue sweep: disclosures not acknowledged by their deadline, reported once each.

``due_overdue`` is the pure core: which deliveries were not acknowledged by their deadline
(``broker.policy.deadlines`` sets it). ``OverdueSweep`` runs inside ``cairn serve`` beside the
receipts loop: every ``overdue_sweep_every_s`` seconds it publishes one ``overdue`` audit event
per (referral, recipient) past its deadline, marks the delivery so it is reported once, logs
``delivery.overdue`` (the line an alerting system matches) and counts it in
``cairn_overdue_disclosures_total`` (found by this process: an alert's ``increase()``).

Each event says whether the disclosure was acknowledged late or not at all (``schemas.audit
.overdue``): reason ``not-acknowledged`` when none had come when the sweep found it, reason
``acknowledged-late`` with ``acknowledged_at`` when one had come after the deadline. An
acknowledgement that comes after a disclosure was reported ``not-acknowledged`` gets its own
``acknowledged-late`` event from the receipts loop, in the same Kafka transaction as the
``acknowledged`` event (``broker.receipts``).

How many disclosures are overdue is one figure, the state store's (``StateStore.overdue_counts``:
the deliveries marked overdue, late where the store holds an acknowledgement): ``/metrics``
(``cairn_disclosures_overdue``), the ops view and ``cairn status`` all read it, and the audit
log agrees (one (referral, recipient) per overdue event, late where an ``acknowledged-late``
event exists).

One broker of the deployment sweeps at a time, whichever holds the store's ``overdue-sweep``
lease (``StateStore.lease``, renewed each round, free again ``3 x overdue_sweep_every_s`` after
its holder stops): brokers on several machines sweeping at once would each publish the same
``overdue`` events. The holder also prunes the shared state every ``state_prune_every_s``: the
claims on referral ids, flow facts and heartbeats older than ``replay_window_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta

import structlog

from broker.config import Settings
from broker.kafka.transport import Transport
from broker.ops.metrics import Metrics
from broker.receipts import audit_record
from broker.state import Delivery, StateStore
from schemas.audit import OVERDUE_NOT_ACKNOWLEDGED, AuditEvent, overdue
from schemas.errors import CairnError
from schemas.referral import Purpose

__all__ = ["NOT_ACKNOWLEDGED", "OverdueSweep", "due_overdue", "overdue_event"]

log = structlog.get_logger(__name__)

NOT_ACKNOWLEDGED = OVERDUE_NOT_ACKNOWLEDGED  # the overdue event's reason code, when never acked
SWEEP_LEASE = "overdue-sweep"  # the store lease whose holder sweeps and prunes


def due_overdue(
    deliveries: Iterable[Delivery],
    acks: Mapping[tuple[str, str], datetime],
    now: datetime,
) -> list[Delivery]:
    """Deliveries past their deadline at ``now`` and not acknowledged by it, not yet reported.

    A delivery is overdue from the instant of its deadline. One acknowledged at or before its
    deadline never is; one acknowledged late still is (it was not acknowledged by its deadline).
    """
    out = []
    for d in deliveries:
        if d.due_at is None or d.overdue_at is not None or now < d.due_at:
            continue
        acked = acks.get((d.referral_id, d.agency))
        if acked is not None and acked <= d.due_at:
            continue
        out.append(d)
    return out


def overdue_event(
    delivery: Delivery, now: datetime, acknowledged_at: datetime | None = None
) -> AuditEvent:
    """The ``overdue`` event of ``delivery`` at ``now``: acknowledged late at
    ``acknowledged_at``, or (None) not acknowledged."""
    return overdue(
        uuid.UUID(delivery.referral_id),
        recipient=delivery.agency,
        due_at=delivery.due_at or now,
        at=now,
        sender=delivery.sender,
        purpose=Purpose(delivery.purpose),
        acknowledged_at=acknowledged_at,
    )


class OverdueSweep:
    """Finds overdue deliveries and reports each once; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        store: StateStore,
        transport: Transport,
        metrics: Metrics,
        clock: Callable[[], datetime],
    ) -> None:
        self._settings = settings
        self._store = store
        self._transport = transport
        self._metrics = metrics
        self._clock = clock
        self._pruned_at: float | None = None  # loop time of the last prune by this broker

    async def sweep(self) -> list[Delivery]:
        """Report every delivery overdue now; return them (empty if none or Kafka failed)."""
        now = self._clock()
        candidates = await self._store.open_deliveries()
        acks = await self._store.acks([d.referral_id for d in candidates])
        found = due_overdue(candidates, acks, now)
        if not found:
            return []
        records = [
            audit_record(
                self._settings.topic_prefix,
                overdue_event(d, now, acks.get((d.referral_id, d.agency))),
            )
            for d in found
        ]
        # The events are durable before the deliveries are marked: a crash in between reports
        # them again on restart rather than never.
        await self._transport.publish(records)
        reported = []
        for d in found:
            if not await self._store.mark_overdue(d.referral_id, d.agency, now):
                continue
            reported.append(d)
            self._metrics.overdue.labels(purpose=d.purpose, recipient=d.agency).inc()
            log.warning(
                "delivery.overdue",
                referral_id=d.referral_id,
                recipient=d.agency,
                purpose=d.purpose,
                due_at=d.due_at.isoformat() if d.due_at else None,
                acknowledged="late" if (d.referral_id, d.agency) in acks else "never",
            )
        return reported

    async def holds_lease(self) -> bool:
        """Whether this broker is the one that sweeps now (taking or renewing the lease)."""
        ttl = timedelta(seconds=3 * self._settings.overdue_sweep_every_s)
        holder = self._settings.transactional_id  # this broker process's own id
        return await self._store.lease(SWEEP_LEASE, holder, self._clock(), ttl)

    async def prune(self) -> int:
        """Forget the shared state past the replay window, at most every
        ``state_prune_every_s``; how many claims went (0 when not due)."""
        loop = asyncio.get_running_loop()
        every = self._settings.state_prune_every_s
        if self._pruned_at is not None and loop.time() - self._pruned_at < every:
            return 0
        window = timedelta(seconds=self._settings.replay_window_s)
        gone = await self._store.prune(self._clock(), window)
        self._pruned_at = loop.time()
        log.info("state.pruned", claims=gone, older_than_s=self._settings.replay_window_s)
        return gone

    async def run(self, stop: asyncio.Event) -> None:
        """Every ``overdue_sweep_every_s`` seconds until ``stop`` is set: while this broker
        holds the sweep lease, sweep, and prune when due."""
        while not stop.is_set():
            try:
                if await self.holds_lease():
                    await self.sweep()
                    await self.prune()
                else:
                    self._pruned_at = None  # another broker prunes; prune at once if we take over
            except CairnError as exc:  # Kafka or the state store is down; try again next time
                log.warning("overdue.sweep_failed", error=type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._settings.overdue_sweep_every_s)
