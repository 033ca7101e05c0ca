"""Recipients' acknowledgements: verified, then written to the audit log as ``acknowledged``.

A recipient's inbox signs an acknowledgement (``cairn-ack+jws``) once it has filed a disclosure
and sends it on ``<prefix>.receipts``. This loop, run inside ``cairn serve``, reads that topic in
a consumer group (read_committed), and for each acknowledgement:

1. verifies the signature against the registry, as the agency named in the record header;
2. checks the signed acknowledgement names that same agency, and that the broker did queue
   that referral for it (from the replay store's receipts): nobody acknowledges for another;
3. ignores a repeat (same referral, same agency);
4. publishes the ``acknowledged`` audit event together with the consumer offsets in one Kafka
   transaction, so an acknowledgement is audited exactly once even across crashes.

Anything that fails 1-2 is copied to the dead-letter topic with a reason code, never dropped
silently and never audited as an acknowledgement.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import datetime
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from broker.config import Settings
from broker.envelope import header_map
from broker.kafka.transport import Consumed, Record, Transport, kafka_options
from broker.ops.metrics import Metrics, code
from broker.replay import ReplayStore
from broker.trust import TrustStore
from keys import verify_ack
from schemas.audit import AuditEvent, acknowledged
from schemas.decode import decode
from schemas.errors import CairnError, InputError
from schemas.receipt import Acknowledgement, Receipt, RecipientStatus

__all__ = ["GROUP_ID", "ReceiptsLoop", "audit_record"]

log = structlog.get_logger(__name__)

GROUP_ID = "cairn-broker-receipts"


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
        replay: ReplayStore,
        transport: Transport,
        clock: Callable[[], datetime],
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._trust = trust
        self._replay = replay
        self._transport = transport
        self._clock = clock
        self.audited = 0
        self.quarantined = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; reconnect after Kafka failures, with a pause."""
        while not stop.is_set():
            try:
                await self._consume(stop)
            except (KafkaError, OSError, CairnError) as exc:
                log.warning("receipts.paused", error=type(exc).__name__)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 5.0)

    async def _consume(self, stop: asyncio.Event) -> None:
        consumer = AIOKafkaConsumer(
            f"{self._settings.topic_prefix}.receipts",
            **kafka_options(self._settings),
            group_id=GROUP_ID,
            isolation_level="read_committed",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await asyncio.wait_for(consumer.start(), self._settings.kafka_connect_timeout_s)
        try:
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=500, max_records=100)
                for tp, messages in batches.items():
                    await self.handle_batch(tp, messages)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer.stop(), 10)

    async def handle_batch(self, tp: TopicPartition, messages: list[Any]) -> None:
        """Audit (or quarantine) one partition's batch and commit its offsets, atomically."""
        records: list[Record] = []
        acks: list[tuple[str, str]] = []
        for msg in messages:
            record, ack = self._examine(msg)
            if record is not None:
                records.append(record)
            if ack is not None and ack not in acks:
                acks.append(ack)
        consumed = Consumed(GROUP_ID, {tp: messages[-1].offset + 1})
        await self._transport.publish(records, consumed)
        now = self._clock()
        for referral_id, agency in acks:
            self._replay.remember_ack(referral_id, agency, now)
            if self._metrics is not None:
                self._metrics.acknowledged.labels(recipient=code(agency)).inc()
        self.audited += len(acks)

    def _examine(self, msg: Any) -> tuple[Record | None, tuple[str, str] | None]:
        headers = header_map(msg.headers or ())
        agency = headers.get("cairn-agency", "")
        try:
            # 1 the signature, by the agency the record says sent it
            payload = verify_ack(
                msg.value, self._trust.registry(), signer=agency, now=self._clock()
            )
            ack = decode(Acknowledgement, payload)
            # 2 for itself, about a referral queued for it
            if ack.agency != agency:
                raise InputError("the acknowledgement is signed for another agency")
            if not self._was_queued(str(ack.referral_id), agency):
                raise InputError("no disclosure of that referral was queued for this agency")
        except InputError as exc:
            self.quarantined += 1
            reason = str(getattr(exc, "reason", type(exc).__name__))
            if self._metrics is not None:
                self._metrics.quarantined.labels(reason=code(reason)).inc()
            log.warning(
                "receipt.quarantined",
                referral_id=headers.get("cairn-referral-id"),
                agency=agency or None,
                reason=reason,
            )
            return self._dead_letter(msg, reason), None
        # 3 a repeat is committed past, not audited again
        key = (str(ack.referral_id), ack.agency)
        if self._replay.acknowledged(*key):
            return None, None
        log.info("receipt.acknowledged", referral_id=key[0], agency=key[1])
        return audit_record(self._settings.topic_prefix, acknowledged(ack)), key

    def _was_queued(self, referral_id: str, agency: str) -> bool:
        seen = self._replay.lookup(referral_id)
        if seen is None:
            return False
        receipt = Receipt.model_validate_json(seen.receipt)
        return any(
            r.agency == agency and r.status is RecipientStatus.QUEUED for r in receipt.recipients
        )

    def _dead_letter(self, msg: Any, reason: str) -> Record:
        return Record(
            topic=f"{self._settings.topic_prefix}.dlq",
            key=msg.key or b"",
            value=msg.value,
            headers=(
                *tuple(msg.headers or ()),
                ("cairn-dlq-reason", reason.encode()),
                ("cairn-dlq-source", f"{msg.topic}/{msg.partition}/{msg.offset}".encode()),
            ),
        )
