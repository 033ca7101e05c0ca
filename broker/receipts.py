"""Recipients' receipts: verified, then written to the audit log (``delivered``,
``acknowledged``, ``viewed``, ``deleted``).

A recipient's inbox signs an acknowledgement (``cairn-ack+jws``) once it has filed a disclosure
and sends it on ``<prefix>.receipts``. This loop, run inside ``cairn serve``, reads that topic in
a consumer group (read_committed), and for each acknowledgement:

1. verifies the signature against the registry, as the agency named in the record header;
2. checks the signed acknowledgement names that same agency, and that the broker did queue
   that referral for it (from the state store's receipts): nobody acknowledges for another;
3. ignores a repeat (same referral, same agency), in the same batch or remembered from an
   earlier one;
4. publishes the ``acknowledged`` audit event together with the consumer offsets in one Kafka
   transaction, so an acknowledgement is audited exactly once even across crashes; one taken
   after the disclosure's deadline also gets an ``overdue`` event saying it came late
   (``acknowledged_at``), in that same transaction, and the delivery is marked overdue
   (``broker.ops.overdue`` reports the ones never acknowledged).

The same topic carries the agency gateway's other signed receipts (``schemas.receipt``, told
apart by their ``kind``), verified by steps 1-2 alike: a ``Delivery`` (the recipient's gateway
durably stored the disclosure, or ``cairn inbox``'s handler returned) becomes a ``delivered``
event, under an id derived from (referral, agency) (``schemas.audit.delivery_receipted``), once
per (referral, agency) in a batch; a ``View`` (one of the agency's people or
case systems opened the disclosure) becomes a ``viewed`` event under the view's own id (each
view is its own fact; the same view twice in a batch is audited once), a ``Deletion`` (its copy
deleted, e.g. ``retention-expired``) a ``deleted`` event, once per (referral, agency) in the
audit log (``broker.audit.store.ONCE_PER_RECIPIENT``).

A record that fails 1-2 in any way (any exception while decoding or verifying it is the
record's fault, a ``RecursionError`` from a deeply nested header included) is dead-lettered in
that same transaction (``broker.kafka.consumer``: its bytes, ids, source and a reason code),
counted, and committed past: never audited, never re-read, never in the way of the next one.
Kafka or our own registry failing is not the record's fault: nothing is committed, and the loop
reconnects after a bounded pause and reads the batch again.

The state store's memory of acknowledgements is shared by every broker (``broker.state``);
the auditor, the audit log's single writer, still keeps one ``acknowledged`` per (referral,
agency) whatever several brokers or Kafka redeliver (``broker.audit.store``).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition

from broker.config import Settings
from broker.envelope import header_map
from broker.kafka.consumer import (
    Backoff,
    Retry,
    Watchdog,
    close,
    dead_letter,
    dlq_topic,
    follow_until_stopped,
    is_infrastructure,
    reason_code,
)
from broker.kafka.transport import Consumed, Record, Transport, kafka_options
from broker.ops.metrics import Metrics, code
from broker.state import Delivery as StateDelivery
from broker.state import StateStore
from broker.trust import TrustStore
from keys import verify_ack
from schemas.audit import AuditEvent, acknowledged, deleted, delivery_receipted, overdue, viewed
from schemas.decode import decode
from schemas.errors import InputError
from schemas.receipt import (
    Acknowledgement,
    AgencyReceipt,
    Deletion,
    Delivery,
    Receipt,
    RecipientStatus,
    View,
    receipt_of,
)
from schemas.referral import Purpose

__all__ = ["CONSUMER", "GROUP_ID", "ReceiptsLoop", "audit_record"]

log = structlog.get_logger(__name__)

GROUP_ID: Final = "cairn-broker-receipts"
CONSUMER: Final = "receipts"  # the consumer's name on its dead letters and in the metric


def audit_record(prefix: str, event: AuditEvent) -> Record:
    """The Kafka record of one audit event: canonical JSON, ids and codes in the headers."""
    key = str(event.message_id or event.event_id).encode()
    headers = [("cairn-event-type", event.type.value.encode()), ("cairn-referral-id", key)]
    if event.request_id:
        headers.append(("cairn-request-id", event.request_id.encode()))
    return Record(topic=f"{prefix}.audit", key=key, value=event.canonical(), headers=tuple(headers))


class ReceiptsLoop:
    """Consumes ``<prefix>.receipts`` until stopped; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        trust: TrustStore,
        store: StateStore,
        transport: Transport,
        clock: Callable[[], datetime],
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._trust = trust
        self._store = store
        self._transport = transport
        self._clock = clock
        self._retry = Retry.from_settings(settings)
        self.audited = 0
        self.repeats = 0
        self.dead_letters = 0
        self.reconnections = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; after any failure reconnect, with a bounded pause."""
        await follow_until_stopped(
            stop,
            lambda backoff: self._consume(stop, backoff),
            self._retry,
            event="receipts.reconnecting",
            reconnected=self._reconnected,
        )

    def _reconnected(self) -> None:
        self.reconnections += 1

    async def _consume(self, stop: asyncio.Event, backoff: Backoff) -> None:
        consumer = AIOKafkaConsumer(
            **kafka_options(self._settings),
            group_id=GROUP_ID,
            isolation_level="read_committed",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        try:
            await asyncio.wait_for(consumer.start(), self._retry.connect_s)
            # After start(): joining the group happens in the fetches, never cut short by a
            # timeout that would leave a stale member (broker.kafka.consumer).
            consumer.subscribe([f"{self._settings.topic_prefix}.receipts"])
            watchdog = Watchdog(self._retry)
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=500, max_records=100)
                if not batches:
                    await watchdog.check(consumer, consumer.assignment())
                    continue
                for tp, messages in batches.items():
                    await self.handle_batch(tp, messages)
                watchdog.progressed()
                backoff.reset()
        finally:
            await close(consumer)

    async def handle_batch(self, tp: TopicPartition, messages: list[Any]) -> None:
        """Audit (or dead-letter) one partition's batch and commit its offsets, atomically."""
        records: list[Record] = []
        acks: list[tuple[str, str]] = []
        others: set[tuple[str, str, str]] = set()  # (kind, referral or view id, agency) here
        dead: list[str] = []
        late: list[StateDelivery] = []  # acknowledged after their deadline (see _late)
        now = self._clock()  # when the broker takes these acknowledgements
        registry = self._trust.registry()  # our own registry failing is not the record's fault
        for msg in messages:
            try:
                ack = self._verify(msg, registry)
            except Exception as exc:
                if is_infrastructure(exc):
                    raise
                reason = reason_code(exc)
                records.append(self._dead_letter(msg, reason))
                dead.append(reason)
                continue
            key = (str(ack.referral_id), ack.agency)
            if not await self._was_queued(*key):
                records.append(self._dead_letter(msg, "not_queued", {"cairn-referral-id": key[0]}))
                dead.append("not_queued")
                continue
            if not isinstance(ack, Acknowledgement):
                event = self._other(ack, others)
                if event is not None:
                    records.append(audit_record(self._settings.topic_prefix, event))
                continue
            # 3 a repeat, in this batch or audited before, is committed past, not audited again
            if key in acks or await self._store.acknowledged(*key):
                self.repeats += 1
                log.info("receipt.repeated", referral_id=key[0], agency=key[1])
                continue
            log.info("receipt.acknowledged", referral_id=key[0], agency=key[1])
            records.append(audit_record(self._settings.topic_prefix, acknowledged(ack)))
            acks.append(key)
            overdue_now = await self._late(*key, now)
            if overdue_now is not None:
                records.append(audit_record(self._settings.topic_prefix, overdue_now[1]))
                late.append(overdue_now[0])
        consumed = Consumed(GROUP_ID, {tp: messages[-1].offset + 1})
        await self._transport.publish(records, consumed)
        for referral_id, agency in acks:
            await self._store.remember_ack(referral_id, agency, now)
            if self._metrics is not None:
                self._metrics.acknowledged.labels(recipient=code(agency)).inc()
        for d in late:  # overdue now if the sweep had not found it yet (it reports it no more)
            found = await self._store.mark_overdue(d.referral_id, d.agency, now)
            if found and self._metrics is not None:  # newly overdue: the alert's counter too
                self._metrics.overdue.labels(purpose=d.purpose, recipient=d.agency).inc()
            log.warning("delivery.acknowledged_late", referral_id=d.referral_id, recipient=d.agency)
        for reason in dead:
            if self._metrics is not None:
                self._metrics.dead_letter(CONSUMER, reason)
        self.audited += len(acks) + len(others)
        self.dead_letters += len(dead)

    async def _late(
        self, referral_id: str, agency: str, now: datetime
    ) -> tuple[StateDelivery, AuditEvent] | None:
        """An acknowledgement taken at ``now`` after the delivery's deadline: the delivery and
        its ``overdue`` event saying it was acknowledged late (``schemas.audit.overdue``), audited
        with the ``acknowledged`` event, whether or not the sweep has reported it overdue yet
        (``broker.ops.overdue``). None when it is in time or has no deadline."""
        d = await self._store.delivery(referral_id, agency)
        if d is None or d.due_at is None or now <= d.due_at:
            return None
        event = overdue(
            uuid.UUID(referral_id),
            recipient=agency,
            due_at=d.due_at,
            at=now,
            sender=d.sender,
            purpose=Purpose(d.purpose),
            acknowledged_at=now,
        )
        return d, event

    def _other(
        self, receipt: Delivery | View | Deletion, seen: set[tuple[str, str, str]]
    ) -> AuditEvent | None:
        """The audit event of a delivery, a view or a deletion; None for a repeat within this
        batch."""
        if isinstance(receipt, View):
            fact = ("viewed", str(receipt.view_id), receipt.agency)
            event = viewed(receipt)
        elif isinstance(receipt, Delivery):
            fact = ("delivered", str(receipt.referral_id), receipt.agency)
            event = delivery_receipted(receipt)
        else:
            fact = ("deleted", str(receipt.referral_id), receipt.agency)
            event = deleted(receipt)
        if fact in seen:
            self.repeats += 1
            return None
        seen.add(fact)
        log.info(f"receipt.{fact[0]}", referral_id=str(receipt.referral_id), agency=fact[2])
        return event

    def _verify(self, msg: Any, registry: Any) -> AgencyReceipt:
        """Steps 1-2 for one record; raises whatever the record makes them raise."""
        agency = header_map(msg.headers or ()).get("cairn-agency", "")
        # 1 the signature, by the agency the record says sent it
        payload = verify_ack(msg.value, registry, signer=agency, now=self._clock())
        ack: AgencyReceipt = decode(receipt_of(payload), payload)
        # 2 for itself (queued for it: checked by the caller, from our own store)
        if ack.agency != agency:
            raise InputError(
                "the acknowledgement is signed for another agency", reasons=("other_agency",)
            )
        return ack

    async def _was_queued(self, referral_id: str, agency: str) -> bool:
        seen = await self._store.lookup(referral_id)
        if seen is None:
            # Claims (and their receipts) are pruned after replay_window_s; the deliveries
            # stay, so a view or a deletion long after the disclosure still finds it.
            return await self._store.was_delivered(referral_id, agency)
        receipt = Receipt.model_validate_json(seen.receipt)
        return any(
            r.agency == agency and r.status is RecipientStatus.QUEUED for r in receipt.recipients
        )

    def _dead_letter(self, msg: Any, reason: str, ids: dict[str, str] | None = None) -> Record:
        headers = {**header_map(msg.headers or ()), **(ids or {})}
        log.warning(
            "receipt.dead_lettered",
            topic=msg.topic,
            partition=msg.partition,
            offset=msg.offset,
            # Header values as codes only: a hostile producer's header never reaches the log.
            referral_id=code(headers.get("cairn-referral-id")),
            agency=code(headers.get("cairn-agency")),
            reason=reason,
        )
        return dead_letter(dlq_topic(self._settings.topic_prefix), CONSUMER, msg, reason, ids)
