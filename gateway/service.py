"""The agency gateway's service: what ``cairn gateway --as AGENCY`` runs beside the agency's keys.

``Gateway`` is the one Python interface over what this agency received. The HTTP API
(``gateway.api``) and a web inbox for people call it; nothing else reaches the store.

- ``page`` / ``search`` / ``get``: read what the store holds. ``get`` records nothing: every
  caller that shows a disclosure to someone calls ``view`` (which fetches it and records the
  view) or ``record_view``.
- ``view`` / ``record_view``: a person (``staff:<id>``) or a case system (``client:<id>``)
  opened a disclosure; the gateway signs a ``View`` receipt with the agency's key and queues it
  in the store in the same transaction as the view, to go to the broker on the receipts topic
  (the path acknowledgements take), which audits it as ``viewed``.
- ``acknowledge``: the first acknowledgement of a disclosure, signed as ``cairn inbox`` signs
  one (``adapters.agency.acknowledger_for``), queued the same way; a repeat changes nothing.

``run(stop)`` runs the background work until ``stop`` is set, each loop retrying after any
failure with a bounded, doubling pause (``broker.kafka.consumer.follow_until_stopped``):

- **consume**: ``adapters.inbox.Inbox`` (read committed, the agency's own Kafka credentials and
  keys; what it cannot open is dead-lettered with a reason code) hands each opened disclosure
  to ``store_delivery``, and commits its offset only after that returns, so only after the
  store has it. With the disclosure the store queues, in the same transaction, a signed
  ``Delivery`` receipt (``adapters.agency.delivery_receipt_for``), which the broker audits as
  ``delivered``. A redelivered record (a consumer restarted before its commit) is recognised by
  its referral id and not stored twice.
- **receipts**: the store's queued receipts go to ``<prefix>.receipts`` (idempotent producer,
  acks=all), each marked sent after Kafka has it.
- **webhooks**: ``gateway.webhooks.Dispatcher``, when a URL is configured.
- **mesh**: an NHS trust's MESH delivery (``adapters.nhs.mesh.delivery``), when configured: each
  stored referral gets a MESH job in the same transaction, and the channel's ``deliver_due``
  runs beside the webhooks. The broker's JWS of every stored disclosure is kept with it (the
  origin signature the trust's FHIR message carries as its Provenance), and so are the JWE as
  delivered and the signed first acknowledgement, for evidence (``cairn evidence delivered``).
- **retention**: a disclosure whose agreement's retention (from receipt) has run out is deleted,
  with a signed ``Deletion`` receipt (``retention-expired``) queued in the same transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Protocol
from uuid import UUID, uuid4

import structlog
from aiokafka import AIOKafkaProducer

from adapters.agency import acknowledger_for, delivery_receipt_for
from adapters.inbox import Delivery, Inbox
from broker.config import Settings
from broker.envelope import open_record
from broker.kafka.acls import inbox_group
from broker.kafka.consumer import Retry, close, dlq_topic, follow_until_stopped, pause
from broker.kafka.topics import delivery_topic
from broker.kafka.transport import kafka_options
from broker.trust import TrustStore
from gateway.retention import delete_after
from gateway.store import (
    NOTE_MAX_CHARS,
    Action,
    GatewayStore,
    NewDisclosure,
    Page,
    Stored,
    ViewRecord,
    decode_cursor,
)
from gateway.webhooks import Dispatcher
from keys import decrypt_for, sign_ack
from schemas.disclosure import Disclosure
from schemas.errors import InputError
from schemas.receipt import (
    PERSONAL_STATUSES,
    RETENTION_EXPIRED,
    Acknowledgement,
    AcknowledgementStatus,
    Deletion,
    View,
)

__all__ = ["Channel", "Gateway", "Listing", "group_id"]

log = structlog.get_logger(__name__)

Clock = Callable[[], datetime]
RECEIPT_BATCH: Final = 100


def _utcnow() -> datetime:
    return datetime.now(UTC)


def group_id(agency: str) -> str:
    """The gateway's consumer group: under the agency's own group prefix (the ACLs allow it)."""
    return f"{inbox_group(agency)}.gateway"


class Channel(Protocol):
    """A delivery channel the gateway runs beside its consumer (the MESH delivery)."""

    async def deliver_due(self) -> int: ...
    async def close(self) -> None: ...


class _Opener:
    """Opens a delivered record exactly as ``adapters.agency.opener_for`` does, and keeps the
    record's compact JWE as delivered and the broker's JWS from inside it for the handler that
    follows (``take``): ``open_record`` gives only the verified disclosure, and the inbox hands
    its handler only that."""

    def __init__(self, trust: TrustStore, agency: str, clock: Clock) -> None:
        self._trust = trust
        self._agency = agency
        self._clock = clock
        self._last: tuple[UUID, str, str] | None = None

    def __call__(self, value: bytes) -> Disclosure:
        self._last = None
        now = self._clock()
        keys, registry = self._trust.decryption_keys(), self._trust.registry()
        disclosure = open_record(
            value, recipient=self._agency, keys=keys, registry=registry, now=now
        )
        # Verified above; decrypting again only reads the JWS the payload came out of.
        signed = decrypt_for(value, keys, registry, recipient=self._agency, now=now)
        self._last = (disclosure.referral_id, signed.decode("ascii"), value.decode("ascii"))
        return disclosure

    def take(self, referral_id: UUID) -> tuple[str, str]:
        """The JWS and the JWE of the record just opened, if it was this referral's ("" and ""
        otherwise)."""
        last, self._last = self._last, None
        return (last[1], last[2]) if last is not None and last[0] == referral_id else ("", "")


@dataclass(frozen=True)
class Listing:
    """One page of disclosures, and the opaque cursor to ask for the next."""

    items: tuple[Stored, ...]
    cursor: str
    more: bool


class Gateway:
    """One agency's gateway over its store; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        agency: str,
        trust: TrustStore,
        store: GatewayStore,
        *,
        dispatcher: Dispatcher | None = None,
        retention_every_s: float = 3600.0,
        poll_every_s: float = 0.5,
        clock: Clock = _utcnow,
        kafka: dict[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.agency = agency
        self.trust = trust
        self.store = store
        self.dispatcher = dispatcher
        #: The trust's MESH delivery, if configured (set before ``run``: it is built over this
        #: gateway, whose ``acknowledge`` it calls when MESH says the trust acknowledged).
        self.mesh: Channel | None = None
        self._clock = clock
        self._kafka = kafka if kafka is not None else kafka_options(settings)
        self._retry = Retry.from_settings(settings)
        self._retention_every_s = retention_every_s
        self._poll_every_s = poll_every_s
        self._acknowledger = acknowledger_for(trust, agency, clock=clock)
        self._delivery_receipt = delivery_receipt_for(trust, agency, clock=clock)
        self._producer: AIOKafkaProducer | None = None
        self._opener = _Opener(trust, agency, clock)
        self.receipts_topic = f"{settings.topic_prefix}.receipts"
        self.stored = 0  # disclosures stored by this process
        self.repeats = 0  # deliveries it recognised as already stored (or deleted)
        self.receipts_sent = 0
        #: Called after each delivery is stored and before its offset is committed (a test
        #: stops the consumer there to force a redelivery).
        self.after_store: Callable[[Delivery, bool], Awaitable[None]] | None = None

    # -- the interface a web layer uses ---------------------------------------------------------

    async def page(
        self, cursor: str | None, limit: int, *, unacknowledged: bool = False
    ) -> Listing:
        """Disclosures after ``cursor`` (None: from the first), in the order the store took
        them; the listing's ``cursor`` asks for the ones after it. A bad cursor: ``InputError``."""
        from gateway.store import encode_cursor

        after = 0 if cursor is None else decode_cursor(cursor)
        page: Page = await self.store.page(after, limit, unacknowledged=unacknowledged)
        return Listing(page.items, encode_cursor(page.last_seq), page.more)

    async def search(self, text: str, limit: int = 50) -> tuple[Stored, ...]:
        """Disclosures this agency received whose content holds ``text``, newest first."""
        text = text.strip()
        if not 2 <= len(text) <= 200:
            raise InputError("search for 2 to 200 characters", reasons=("bad_search",))
        return await self.store.search(text, limit)

    async def get(self, referral_id: UUID) -> Stored | None:
        """The stored disclosure, recording no view (show it only through ``view``)."""
        return await self.store.get(referral_id)

    async def view(self, referral_id: UUID, viewer: str) -> Stored | None:
        """The stored disclosure, and a view of it by ``viewer`` on the record."""
        stored = await self.store.get(referral_id)
        if stored is None:
            return None
        if await self.record_view(referral_id, viewer) is None:
            return None  # deleted in between
        return stored

    async def record_view(self, referral_id: UUID, viewer: str) -> View | None:
        """Record that ``viewer`` (``staff:<staff id>`` or ``client:<client id>``) opened the
        disclosure now, and queue its signed receipt; None if it is not stored."""
        now = self._clock()
        view = View(
            view_id=uuid4(),
            referral_id=referral_id,
            agency=self.agency,
            viewer=viewer,
            viewed_at=now,
        )
        token = sign_ack(view.model_dump_json().encode(), self.trust.signing_key(), issued_at=now)
        record = ViewRecord(view.view_id, referral_id, viewer, now)
        return view if await self.store.record_view(record, token) else None

    async def views(self, referral_id: UUID) -> tuple[ViewRecord, ...]:
        return await self.store.views(referral_id)

    async def acknowledge(
        self,
        referral_id: UUID,
        *,
        status: AcknowledgementStatus = AcknowledgementStatus.FILED,
        reasons: Sequence[str] = (),
        by: str | None = None,
        note: str = "",
    ) -> tuple[Stored, bool] | None:
        """Acknowledge a stored disclosure; (its record, whether this was the first time), or
        None if it is not stored. Only the first acknowledgement is signed and sent; a person's
        later "actioned" after "read" is kept in the store with its note (``actions``).

        ``by``: who (``staff:<id>`` for a person, required with "read" and "actioned";
        ``client:<id>`` for a case system). ``note``: a person's own words, kept here only."""
        if len(note) > NOTE_MAX_CHARS:
            raise InputError(
                f"a note is at most {NOTE_MAX_CHARS} characters", reasons=("note_too_long",)
            )
        personal = status in PERSONAL_STATUSES
        if personal and (by is None or not by.startswith("staff:")):
            raise InputError(
                f"a '{status.value}' acknowledgement names the person who gave it",
                reasons=("bad_acknowledgement",),
            )
        stored = await self.store.get(referral_id)
        if stored is None:
            return None
        now = self._clock()
        action = Action(status.value, by, note, now) if personal and by is not None else None
        if stored.acknowledged_at is not None:
            if action is not None and status is AcknowledgementStatus.ACTIONED:
                await self.store.add_action(referral_id, action)
            return stored, False
        disclosure = stored.disclosure()
        if status is AcknowledgementStatus.FILED and not reasons and by is None:
            token = self._acknowledger(disclosure)  # exactly what cairn inbox sends
        else:
            ack = Acknowledgement(
                referral_id=referral_id,
                agency=self.agency,
                status=status,
                reasons=tuple(reasons),
                acknowledged_at=now,
                by=by,
            )
            token = sign_ack(
                ack.model_dump_json().encode(), self.trust.signing_key(), issued_at=now
            )
        first = await self.store.acknowledge(referral_id, status.value, now, token, action=action)
        again = await self.store.get(referral_id)
        return (again or stored), first

    async def actions(self, referral_id: UUID) -> tuple[Action, ...]:
        """Who at this agency marked the disclosure read or actioned (with their notes)."""
        return await self.store.actions(referral_id)

    # -- background work ----------------------------------------------------------------------

    def inbox(self) -> Inbox:
        return Inbox(
            self._kafka,
            agency=self.agency,
            topic=delivery_topic(self.settings.topic_prefix, self.agency),
            dlq_topic=dlq_topic(self.settings.topic_prefix),
            open_value=self._opener,
            group_id=group_id(self.agency),
            retry=self._retry,
        )

    async def store_delivery(self, delivery: Delivery) -> None:
        disclosure = delivery.disclosure
        received = self._clock()
        jws, jwe = self._opener.take(disclosure.referral_id)
        new = NewDisclosure(
            referral_id=disclosure.referral_id,
            sender=disclosure.sender_agency,
            purpose=disclosure.purpose.value,
            kind="referral" if disclosure.referral is not None else "notification",
            body=disclosure.model_dump_json(),
            received_at=received,
            delete_after=delete_after(disclosure.retention, received),
            source=f"{delivery.topic}:{delivery.partition}:{delivery.offset}",
            signed=jws,
            delivered=jwe,
            receipt=self._delivery_receipt(disclosure),
        )
        added = await self.store.put(
            new,
            webhook=self.dispatcher is not None,
            mesh=self.mesh is not None and disclosure.referral is not None,
        )
        if added:
            self.stored += 1
            log.info("gateway.stored", referral_id=str(new.referral_id), agency=self.agency)
        else:
            self.repeats += 1
            log.info("gateway.repeat", referral_id=str(new.referral_id), agency=self.agency)
        if self.after_store is not None:
            await self.after_store(delivery, added)

    async def consume(self, stop: asyncio.Event, *, idle_s: float = 1.0) -> None:
        """Follow the delivery topic into the store until ``stop``."""

        async def follow(backoff: Any) -> None:
            async with self.inbox() as box:
                while not stop.is_set():
                    await box.drain(
                        self.store_delivery, idle_timeout_s=idle_s, total_timeout_s=30.0
                    )
                    backoff.reset()
                    if await pause(stop, 0.05):
                        return

        await self._until(stop, follow, "gateway.consumer_restarting")

    async def send_receipts(self) -> int:
        """Send what the store has queued for the broker; how many were sent."""
        pending = await self.store.pending_receipts(RECEIPT_BATCH)
        if not pending:
            return 0
        producer = await self._receipts_producer()
        sent: list[int] = []
        try:
            for item in pending:
                rid = str(item.referral_id).encode()
                await asyncio.wait_for(
                    producer.send_and_wait(
                        self.receipts_topic,
                        item.token,
                        key=rid,
                        headers=[
                            ("cairn-referral-id", rid),
                            ("cairn-agency", self.agency.encode()),
                        ],
                    ),
                    self._retry.connect_s,
                )
                sent.append(item.id)
        except BaseException:
            # Kafka failed us: a fresh producer next time (the unsent stay queued in the store).
            self._producer = None
            await close(producer)
            raise
        finally:
            await self.store.receipts_sent(sent, self._clock())
            self.receipts_sent += len(sent)
        return len(sent)

    async def _receipts_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = AIOKafkaProducer(**self._kafka, acks="all", enable_idempotence=True)
            try:
                await asyncio.wait_for(producer.start(), self._retry.connect_s)
            except BaseException:
                await close(producer)
                raise
            self._producer = producer
        return self._producer

    async def sweep_retention(self) -> int:
        """Delete what is past its retention, each with its signed receipt; how many."""
        now = self._clock()
        deleted = 0
        for stored in await self.store.expired(now, 500):
            deletion = Deletion(
                referral_id=stored.referral_id,
                agency=self.agency,
                reason=RETENTION_EXPIRED,
                deleted_at=now,
            )
            token = sign_ack(
                deletion.model_dump_json().encode(), self.trust.signing_key(), issued_at=now
            )
            if await self.store.delete(stored.referral_id, now, RETENTION_EXPIRED, token):
                deleted += 1
                log.info(
                    "gateway.deleted",
                    referral_id=str(stored.referral_id),
                    agency=self.agency,
                    reason=RETENTION_EXPIRED,
                )
        return deleted

    async def _until(
        self, stop: asyncio.Event, follow: Callable[[Any], Awaitable[None]], event: str
    ) -> None:
        await follow_until_stopped(stop, follow, self._retry, event=event, reconnected=lambda: None)

    async def _every(
        self, stop: asyncio.Event, seconds: float, work: Callable[[], Awaitable[object]], event: str
    ) -> None:
        async def follow(backoff: Any) -> None:
            while not stop.is_set():
                await work()
                backoff.reset()
                if await pause(stop, seconds):
                    return

        await self._until(stop, follow, event)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume, send receipts, deliver webhooks and sweep retention until ``stop``."""
        tasks = [
            asyncio.create_task(self.consume(stop), name="gateway-consume"),
            asyncio.create_task(
                self._every(
                    stop, self._poll_every_s, self.send_receipts, "gateway.receipts_failed"
                ),
                name="gateway-receipts",
            ),
            asyncio.create_task(
                self._every(
                    stop, self._retention_every_s, self.sweep_retention, "gateway.retention_failed"
                ),
                name="gateway-retention",
            ),
        ]
        if self.dispatcher is not None:
            tasks.append(
                asyncio.create_task(
                    self._every(
                        stop,
                        self._poll_every_s,
                        self.dispatcher.deliver_due,
                        "gateway.webhook_failed",
                    ),
                    name="gateway-webhooks",
                )
            )
        if self.mesh is not None:
            tasks.append(
                asyncio.create_task(
                    self._every(
                        stop, self._poll_every_s, self.mesh.deliver_due, "gateway.mesh_failed"
                    ),
                    name="gateway-mesh",
                )
            )
        try:
            await stop.wait()
            # The consumer may be inside a drain: end it (what it stored but did not commit is
            # read again by the next run, and recognised).
            _, pending = await asyncio.wait(tasks, timeout=5.0)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        finally:
            for task in tasks:
                task.cancel()
            producer, self._producer = self._producer, None
            if producer is not None:
                await close(producer)
            if self.dispatcher is not None:
                await self.dispatcher.close()
            if self.mesh is not None:
                await self.mesh.close()
