"""The receiving side of an agency adapter: consume the agency's own delivery topic.

It reads committed records only, in a consumer group, and commits offsets only after the handler
has finished with the records before them, so a crash re-delivers rather than loses (at least
once; handlers make processing idempotent by referral id). Each record is decrypted and its
broker signature verified by ``open_value``. A record it cannot open, for whatever reason
(anything ``open_value`` raises but our own keys or Kafka failing), is that record's fault: it
is copied to the dead-letter topic with its ids and a reason code (``broker.kafka.consumer``),
counted, then committed: never dropped silently, never acted on, never blocking the records
behind it.

Once the handler has filed a disclosure, the inbox sends the broker, on the receipts topic, a
signed ``Delivery`` receipt (``confirm_delivery``: the broker audits it as ``delivered``) and a
signed acknowledgement, both before committing the offset, so neither is ever lost (the broker
and the audit log know a repeat). That acknowledgement closes the loop in the audit trail and
stops the disclosure's delivery deadline.

Kafka need not be up. The inbox connects when it first drains, and whenever Kafka goes away (an
error, or a consumer that reads nothing while Kafka does not answer or while its partitions
have more to read) it drops its clients and waits for Kafka with a doubling pause, saying so
("waiting for Kafka at ..., retrying in Ns"), then follows on from its last commit. It gives up
only after ``consumer_kafka_wait_s`` without Kafka, or at the end of the caller's time.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from broker.envelope import header_map
from broker.kafka.consumer import (
    Backoff,
    ConsumerStalled,
    Retry,
    Watchdog,
    close,
    dead_letter,
    is_infrastructure,
    lag,
    not_authorized,
    reason_code,
)
from schemas.disclosure import Disclosure
from schemas.errors import TransportError

__all__ = ["CONSUMER", "Delivery", "Inbox"]

log = structlog.get_logger(__name__)

CONSUMER: Final = "inbox"  # the consumer's name on its dead letters


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
Progress = Callable[[str], None]  # one line for a person watching (cairn inbox: stderr)


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
        confirm_delivery: Acknowledger | None = None,
        group_id: str | None = None,
        connect_timeout_s: float = 10.0,
        retry: Retry | None = None,
        progress: Progress | None = None,
        on_dead_letter: Callable[[str], None] | None = None,
    ) -> None:
        self._kafka = kafka
        self.agency = agency
        self.topic = topic
        self.dlq_topic = dlq_topic
        self._open = open_value
        if (acknowledge is None) != (receipts_topic is None):
            raise TypeError("give both acknowledge and receipts_topic, or neither")
        if confirm_delivery is not None and receipts_topic is None:
            raise TypeError("confirm_delivery goes with acknowledge and receipts_topic")
        self._acknowledge = acknowledge
        self._confirm_delivery = confirm_delivery  # -> a signed Delivery receipt
        self.receipts_topic = receipts_topic
        self.acknowledged = 0
        self.group_id = group_id or f"cairn-inbox-{agency}"
        self._retry = retry or Retry(connect_s=connect_timeout_s)
        self._progress = progress
        self._on_dead_letter = on_dead_letter  # told each reason code (a benchmark stops)
        self._backoff = Backoff(self._retry)
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._entered = False
        self._ever_connected = False
        self._committed: dict[TopicPartition, int] = {}  # what this consumer committed last
        self.dead_letters: Counter[str] = Counter()  # reason code -> records dead-lettered
        self.reconnections = 0

    @property
    def quarantined(self) -> int:
        """Records dead-lettered so far, whatever the reason."""
        return sum(self.dead_letters.values())

    @property
    def servers(self) -> str:
        found = self._kafka.get("bootstrap_servers", "?")
        return ",".join(found) if isinstance(found, list | tuple) else str(found)

    async def __aenter__(self) -> Inbox:
        self._entered = True  # connects on the first drain, which waits for Kafka if need be
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._disconnect()
        self._entered = False

    # -- connecting --

    async def _connect(self) -> None:
        consumer = AIOKafkaConsumer(
            **self._kafka,
            group_id=self.group_id,
            isolation_level="read_committed",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        # One idempotent producer for dead letters and acknowledgements.
        producer = AIOKafkaProducer(**self._kafka, acks="all", enable_idempotence=True)
        try:
            await asyncio.wait_for(consumer.start(), self._retry.connect_s)
            # After start(), so that it does not wait for the group to rebalance (see
            # broker.kafka.consumer): the first fetches join the group.
            consumer.subscribe([self.topic])
            await asyncio.wait_for(producer.start(), self._retry.connect_s)
        except BaseException:
            await close(consumer)
            await close(producer)
            raise
        self._consumer, self._producer = consumer, producer
        self._committed.clear()

    async def _disconnect(self) -> None:
        consumer, producer = self._consumer, self._producer
        self._consumer = self._producer = None
        for client in (consumer, producer):
            if client is not None:
                await close(client)

    async def _connected(self, deadline: float) -> AIOKafkaConsumer | None:
        """The consumer, connecting (and waiting for Kafka) if need be.

        None if ``deadline`` passes while Kafka is away after it had answered; a
        ``TransportError`` if it never answered by then, or not for ``wait_s``.
        """
        if self._consumer is not None:
            return self._consumer
        started = time.monotonic()
        give_up = min(deadline, started + self._retry.wait_s)
        waited = False
        while True:
            try:
                await self._connect()
            except Exception as exc:
                refused = not_authorized(exc, f"connecting to read {self.topic}")
                if refused is not None:
                    raise refused from exc
                if not is_infrastructure(exc):
                    raise
                left = give_up - time.monotonic()
                if left <= 0:
                    if self._ever_connected and give_up == deadline:
                        self._say(f"Kafka at {self.servers} did not come back in time; stopping")
                        return None
                    raise TransportError(
                        f"Kafka at {self.servers} did not answer for "
                        f"{time.monotonic() - started:.0f} s; check "
                        "CAIRN_KAFKA_BOOTSTRAP_SERVERS and that the cluster is up"
                    ) from exc
                delay = min(self._backoff.next(), left)
                self._say(f"waiting for Kafka at {self.servers}, retrying in {delay:.2g}s")
                self._log("inbox.waiting_for_kafka", error=type(exc).__name__, retry_in_s=delay)
                waited = True
                await asyncio.sleep(delay)
                continue
            self._ever_connected = True
            if waited:
                self._say(f"Kafka at {self.servers} answers; following {self.topic}")
            assert self._consumer is not None
            return self._consumer

    async def _lost(self, exc: BaseException) -> None:
        """Kafka went away (or forgot us): drop the clients; the next drain step reconnects."""
        self.reconnections += 1
        self._say(f"lost Kafka at {self.servers} ({type(exc).__name__}); reconnecting")
        self._log("inbox.reconnecting", error=type(exc).__name__)
        await self._disconnect()

    def _say(self, line: str) -> None:
        if self._progress is not None:
            self._progress(line)

    def _log(self, event: str, **fields: Any) -> None:
        """A warning, or only a debug line where a person already reads the progress lines."""
        (log.warning if self._progress is None else log.debug)(event, **fields)

    # -- consuming --

    async def drain(
        self,
        handler: Handler,
        *,
        max_messages: int | None = None,
        idle_timeout_s: float = 5.0,
        total_timeout_s: float = 60.0,
    ) -> int:
        """Handle deliveries until ``max_messages``, ``idle_timeout_s`` without one (while
        Kafka answers and nothing is left to read), or the overall ``total_timeout_s``; return
        how many were handled. Time spent waiting for Kafka is not idle time."""
        if not self._entered:
            raise RuntimeError("use Inbox as 'async with'")
        handled = 0
        deadline = time.monotonic() + total_timeout_s
        last_seen = time.monotonic()
        watchdog = Watchdog(self._retry)
        while time.monotonic() < deadline:
            if max_messages is not None and handled >= max_messages:
                break
            was_connected = self._consumer is not None
            consumer = await self._connected(deadline)
            if consumer is None:
                break
            if not was_connected:
                last_seen = time.monotonic()  # a new consumer: the idle time starts again
                watchdog.progressed()
            room = None if max_messages is None else max_messages - handled
            try:
                count = await self._step(consumer, handler, room)
                if count:
                    handled += count
                    last_seen = time.monotonic()
                    watchdog.progressed()
                    self._backoff.reset()
                    continue
                await watchdog.check(consumer, consumer.assignment())
                if time.monotonic() - last_seen > idle_timeout_s:
                    # Idle: stop only if Kafka answers and nothing is left to read.
                    if not await lag(consumer, consumer.assignment(), self._retry.connect_s):
                        break
                    last_seen = time.monotonic()
            except Exception as exc:
                refused = not_authorized(exc, f"reading {self.topic} as group {self.group_id}")
                if refused is not None:
                    raise refused from exc
                if not (is_infrastructure(exc) or isinstance(exc, ConsumerStalled)):
                    raise
                await self._lost(exc)
        return handled

    async def _step(self, consumer: AIOKafkaConsumer, handler: Handler, room: int | None) -> int:
        """Fetch once and handle what came, committing exactly what was handled; after an
        empty fetch, commit past the transaction markers read (``_commit_position``)."""
        batches = await consumer.getmany(timeout_ms=500, max_records=100)
        done: dict[TopicPartition, int] = {}
        handled = 0
        try:
            for tp, messages in batches.items():
                for msg in messages:
                    if room is not None and handled >= room:
                        # Fetched, not handled: read it again next time (the position had
                        # moved past it, and a later commit of the position would skip it).
                        consumer.seek(tp, msg.offset)
                        break
                    await self._handle_one(msg, handler)
                    done[tp] = msg.offset + 1
                    handled += 1
        finally:
            # One commit per batch, covering exactly the records already handled.
            if done:
                await asyncio.wait_for(consumer.commit(done), self._retry.connect_s)
                self._committed.update(done)
        if not batches:
            await self._commit_position(consumer)
        return handled

    async def _commit_position(self, consumer: AIOKafkaConsumer) -> None:
        """Caught up: commit the position where it is past the last commit.

        With ``read_committed`` each transaction ends with a commit marker that takes an
        offset of its own (KIP-98) but is never handed to a consumer, so committing "last
        record + 1" leaves a caught-up group one offset behind the end and its lag at 1. After
        an empty fetch every offset below the position was handled (and committed) or is a
        marker or an aborted record, so the position itself may be committed: lag 0.
        """
        ahead: dict[TopicPartition, int] = {}
        for tp in consumer.assignment():
            position = await asyncio.wait_for(consumer.position(tp), self._retry.connect_s)
            if tp not in self._committed:
                known = await asyncio.wait_for(consumer.committed(tp), self._retry.connect_s)
                self._committed[tp] = known if known is not None else -1
            if position > self._committed[tp]:
                ahead[tp] = position
        if ahead:
            await asyncio.wait_for(consumer.commit(ahead), self._retry.connect_s)
            self._committed.update(ahead)

    async def _handle_one(self, msg: Any, handler: Handler) -> None:
        headers = header_map(msg.headers or ())
        try:
            disclosure = self._open(msg.value)
        except Exception as exc:
            if is_infrastructure(exc):
                raise  # our own keys or registry, not the record: nothing committed
            await self._dead_letter(msg, reason_code(exc))
            return
        await handler(Delivery(disclosure, msg.topic, msg.partition, msg.offset, headers))
        if self._acknowledge is not None and self.receipts_topic is not None:
            signers = (self._confirm_delivery, self._acknowledge)
            for sign in (s for s in signers if s is not None):
                await self._send_receipt(disclosure, sign(disclosure))
            self.acknowledged += 1

    async def _send_receipt(self, disclosure: Disclosure, token: bytes) -> None:
        assert self._producer is not None
        assert self.receipts_topic is not None
        rid = str(disclosure.referral_id).encode()
        await asyncio.wait_for(
            self._producer.send_and_wait(
                self.receipts_topic,
                token,
                key=rid,
                headers=[("cairn-referral-id", rid), ("cairn-agency", self.agency.encode())],
            ),
            self._retry.connect_s,
        )

    async def _dead_letter(self, msg: Any, reason: str) -> None:
        assert self._producer is not None
        record = dead_letter(self.dlq_topic, CONSUMER, msg, reason, {"cairn-agency": self.agency})
        ids = header_map(record.headers)
        log.warning(
            "inbox.dead_lettered",
            topic=msg.topic,
            partition=msg.partition,
            offset=msg.offset,
            referral_id=ids.get("cairn-referral-id"),
            reason=reason,
        )
        await asyncio.wait_for(
            self._producer.send_and_wait(
                record.topic, record.value, key=record.key, headers=list(record.headers)
            ),
            self._retry.connect_s,
        )
        self.dead_letters[reason] += 1
        if self._on_dead_letter is not None:
            self._on_dead_letter(reason)
