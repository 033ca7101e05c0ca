"""The receiving side of an agency adapter: consume the agency's own delivery topic.

It reads committed records only, in a consumer group, and commits offsets only after the handler
has finished with the records before them, so a crash re-delivers rather than loses (at least
once; handlers make processing idempotent by referral id). Each record is decrypted and its
broker signature verified by ``open_value``; a record that fails is copied to the dead-letter
topic with its ids and the reason code, then committed: never dropped silently, never acted on,
never blocking the records behind it.

Once the handler has filed a disclosure, the inbox sends the broker a signed acknowledgement on
the receipts topic (before committing the offset, so an acknowledgement is never lost; the
broker ignores a repeated one). That acknowledgement closes the loop in the audit trail and
stops the disclosure's delivery deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from broker.envelope import header_map
from schemas.disclosure import Disclosure
from schemas.errors import InputError, TransportError

__all__ = ["Delivery", "Inbox"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Delivery:
    disclosure: Disclosure
    topic: str
    partition: int
    offset: int
    headers: dict[str, str]


Handler = Callable[[Delivery], Awaitable[None]]
Opener = Callable[[bytes], Disclosure]
Acknowledger = Callable[[Disclosure], bytes]  # -> a signed acknowledgement (compact JWS)


class Inbox:
    """One agency's consumer of ``<prefix>.deliver.<agency>``."""

    def __init__(
        self,
        kafka: dict[str, Any],
        *,
        agency: str,
        topic: str,
        dlq_topic: str,
        open_value: Opener,
        acknowledge: Acknowledger | None = None,
        receipts_topic: str | None = None,
        group_id: str | None = None,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self._kafka = kafka
        self.agency = agency
        self.topic = topic
        self.dlq_topic = dlq_topic
        self._open = open_value
        if (acknowledge is None) != (receipts_topic is None):
            raise TypeError("give both acknowledge and receipts_topic, or neither")
        self._acknowledge = acknowledge
        self.receipts_topic = receipts_topic
        self.acknowledged = 0
        self.group_id = group_id or f"cairn-inbox-{agency}"
        self._connect_timeout_s = connect_timeout_s
        self._consumer: AIOKafkaConsumer | None = None
        self._dlq: AIOKafkaProducer | None = None
        self.quarantined = 0

    async def __aenter__(self) -> Inbox:
        consumer = AIOKafkaConsumer(
            self.topic,
            **self._kafka,
            group_id=self.group_id,
            isolation_level="read_committed",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        # One idempotent producer for dead letters and acknowledgements.
        dlq = AIOKafkaProducer(**self._kafka, acks="all", enable_idempotence=True)
        try:
            await asyncio.wait_for(consumer.start(), self._connect_timeout_s)
            await asyncio.wait_for(dlq.start(), self._connect_timeout_s)
        except (KafkaError, OSError, TimeoutError) as exc:
            with contextlib.suppress(Exception):
                await consumer.stop()
            with contextlib.suppress(Exception):
                await dlq.stop()
            raise TransportError(f"cannot consume {self.topic}: {type(exc).__name__}") from exc
        self._consumer, self._dlq = consumer, dlq
        return self

    async def __aexit__(self, *exc: object) -> None:
        for client in (self._consumer, self._dlq):
            if client is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.stop(), 10)
        self._consumer = self._dlq = None

    async def drain(
        self,
        handler: Handler,
        *,
        max_messages: int | None = None,
        idle_timeout_s: float = 5.0,
        total_timeout_s: float = 60.0,
    ) -> int:
        """Handle deliveries until ``max_messages``, ``idle_timeout_s`` without one, or the
        overall ``total_timeout_s``; return how many were handled."""
        consumer = self._consumer
        if consumer is None:
            raise RuntimeError("use Inbox as 'async with'")
        handled = 0
        deadline = time.monotonic() + total_timeout_s
        last_seen = time.monotonic()
        while time.monotonic() < deadline:
            if max_messages is not None and handled >= max_messages:
                break
            if time.monotonic() - last_seen > idle_timeout_s:
                break
            batches = await consumer.getmany(timeout_ms=500, max_records=100)
            done: dict[TopicPartition, int] = {}
            try:
                for tp, messages in batches.items():
                    for msg in messages:
                        if max_messages is not None and handled >= max_messages:
                            break
                        await self._handle_one(msg, handler)
                        done[tp] = msg.offset + 1
                        handled += 1
                        last_seen = time.monotonic()
            finally:
                # One commit per batch, covering exactly the records already handled.
                if done:
                    await consumer.commit(done)
        return handled

    async def _handle_one(self, msg: Any, handler: Handler) -> None:
        headers = header_map(msg.headers or ())
        try:
            disclosure = self._open(msg.value)
        except InputError as exc:
            await self._quarantine(msg, headers, str(getattr(exc, "reason", type(exc).__name__)))
            return
        await handler(Delivery(disclosure, msg.topic, msg.partition, msg.offset, headers))
        if self._acknowledge is not None and self.receipts_topic is not None:
            assert self._dlq is not None
            rid = str(disclosure.referral_id).encode()
            await self._dlq.send_and_wait(
                self.receipts_topic,
                self._acknowledge(disclosure),
                key=rid,
                headers=[("cairn-referral-id", rid), ("cairn-agency", self.agency.encode())],
            )
            self.acknowledged += 1

    async def _quarantine(self, msg: Any, headers: dict[str, str], reason: str) -> None:
        assert self._dlq is not None
        log.warning(
            "inbox.quarantined",
            topic=msg.topic,
            partition=msg.partition,
            offset=msg.offset,
            referral_id=headers.get("cairn-referral-id"),
            reason=reason,
        )
        await self._dlq.send_and_wait(
            self.dlq_topic,
            msg.value,
            key=msg.key,
            headers=[
                *(msg.headers or ()),
                ("cairn-dlq-reason", reason.encode()),
                ("cairn-dlq-source", f"{msg.topic}/{msg.partition}/{msg.offset}".encode()),
            ],
        )
        self.quarantined += 1
