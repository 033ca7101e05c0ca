"""The gateway's own store: what this agency received, once per referral id, and what it owes.

One interface, ``GatewayStore``, two implementations held to one contract
(``tests/contracts/gateway_store.py``): ``gateway.sqlite.SqliteGatewayStore`` (one machine, the
default, a file under the state folder) and ``gateway.postgres.PostgresGatewayStore`` (a URL).
Both are the same SQL (``SqlGatewayStore``) run in a worker thread, each call one transaction.

What it keeps, per agency:

- ``disclosures``: each disclosure opened from Kafka, keyed by referral id, with ``seq``, the
  order in which the store took it (the API's cursor). ``put`` is insert-or-nothing: a record
  Kafka delivers again is recognised by its referral id and not stored again; nor is one whose
  copy was deleted (a tombstone stays), so a redelivery never brings a deleted record back.
- ``outbox``: the signed receipts (deliveries, acknowledgements, views, deletions) this agency
  owes the broker, written in the same transaction as the fact they report (a delivery: as the
  disclosure is first stored), and marked sent once Kafka has them, so a stop between the two
  sends one again (the broker and the audit log know a repeat) and never loses one.
- ``views``: who opened which disclosure when (a viewer id, never a name).
- ``actions``: who at the agency marked a disclosure read or actioned, when, with their note.
  The note is the agency's own working text: it stays here, never in a receipt, a log line or
  the audit log. The first acknowledgement is also the signed one the broker audits; a later
  "actioned" after "read" is kept here only.
- ``webhooks``: one job per disclosure when webhooks are on, created with it: attempts, the next
  attempt, delivered or given up. Marked delivered only when the receiver answered 2xx.
- ``signed``: the disclosure exactly as delivered, for evidence (``cairn evidence``,
  docs/evidence.md): the broker's compact JWS as it came out of the JWE (the origin signature an
  NHS trust's MESH message carries as its Provenance), the compact JWE bytes of the Kafka record
  it was opened from, and the signed acknowledgement receipt (compact JWS) this agency sent the
  broker as its first acknowledgement (the outbox's copy is only kept until sent). Deleted with
  the disclosure: the JWE is ciphertext, but still the agency's record of it.
- ``mesh``: one job per referral when the trust's MESH delivery is on (``adapters.nhs.mesh``),
  created with it: attempts, the next attempt, when an attempt began (its outcome not yet
  known), the MESH message id once MESH took it, when MESH said the trust acknowledged it, or
  given up (with a reason code, never a message).

Times are UTC microseconds since the epoch (an integer in both databases). Every database
failure becomes ``StateUnavailable`` (an infrastructure error: the consumer reads the record
again later, the API answers 503).
"""

from __future__ import annotations

import abc
import asyncio
import base64
import binascii
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Protocol, TypeVar
from uuid import UUID

from schemas.disclosure import Disclosure
from schemas.errors import InputError

__all__ = [
    "NOTE_MAX_CHARS",
    "Action",
    "Cursor",
    "Delivered",
    "GatewayStore",
    "MeshJob",
    "NewDisclosure",
    "OutboxItem",
    "Page",
    "SqlGatewayStore",
    "Stored",
    "Tx",
    "ViewRecord",
    "WebhookJob",
    "deadline_of",
    "decode_cursor",
    "encode_cursor",
    "from_us",
    "to_us",
]

T = TypeVar("T")

NOTE_MAX_CHARS: Final = 2000  # an acknowledgement's note, at most

_CURSOR_PREFIX: Final = b"cg1"  # a version tag, so a later cursor form can be told apart


def to_us(moment: datetime) -> int:
    """UTC microseconds since the epoch."""
    delta = moment.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1_000_000, UTC).replace(microsecond=value % 1_000_000)


# -- cursors ------------------------------------------------------------------------------------


Cursor = int  # the last ``seq`` a client has seen; 0 before the first


def encode_cursor(seq: int) -> str:
    """An opaque, URL-safe token for "after ``seq``"; clients must not look inside it."""
    return base64.urlsafe_b64encode(_CURSOR_PREFIX + struct.pack(">Q", seq)).rstrip(b"=").decode()


def decode_cursor(token: str) -> int:
    """The ``seq`` of a token from ``encode_cursor``; a typed error for anything else."""
    bad = InputError("the cursor is not one this gateway gave out", reasons=("bad_cursor",))
    if len(token) > 32:
        raise bad
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise bad from None
    if len(raw) != len(_CURSOR_PREFIX) + 8 or not raw.startswith(_CURSOR_PREFIX):
        raise bad
    seq: int = struct.unpack(">Q", raw[len(_CURSOR_PREFIX) :])[0]
    if seq >= 2**63:
        raise bad
    return seq


# -- records ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewDisclosure:
    """A disclosure just opened from Kafka, as the store takes it."""

    referral_id: UUID
    sender: str
    purpose: str
    kind: str  # "referral" or "notification"
    body: str  # the disclosure's JSON, as opened and verified
    received_at: datetime
    delete_after: datetime | None  # None: the retention does not start at receipt
    source: str  # topic:partition:offset it came from (no personal data)
    signed: str = ""  # the broker's compact JWS it was opened from ("" if not known)
    delivered: str = ""  # the compact JWE of the Kafka record, as delivered ("" if not known)
    #: The signed ``schemas.receipt.Delivery`` (compact JWS) queued in the outbox, in the same
    #: transaction, when the disclosure is first stored (b"": none).
    receipt: bytes = b""


@dataclass(frozen=True)
class Delivered:
    """What a recipient can show of one disclosure (``cairn evidence``): the compact JWE it
    received, the broker's JWS inside it, and its own signed first acknowledgement, each as the
    exact compact serialization (None where the store does not have it)."""

    jwe: str | None
    jws: str | None
    ack: str | None


@dataclass(frozen=True)
class Stored:
    """One stored disclosure and what this agency has done with it."""

    seq: int
    referral_id: UUID
    sender: str
    purpose: str
    kind: str
    body: str
    received_at: datetime
    delete_after: datetime | None
    source: str
    ack_status: str | None
    acknowledged_at: datetime | None

    def disclosure(self) -> Disclosure:
        """The disclosure as the broker signed it (parsed from ``body``)."""
        return Disclosure.model_validate_json(self.body)


def deadline_of(disclosure: Disclosure) -> datetime | None:
    """When the recipient should acknowledge it: the broker's ``acknowledge_by``, else (a
    notice sealed before the broker said so) the Encompass notice's own notify-by time."""
    if disclosure.acknowledge_by is not None:
        return disclosure.acknowledge_by
    if disclosure.notification is not None:
        return disclosure.notification.header.notify_by
    return None


@dataclass(frozen=True)
class Page:
    items: tuple[Stored, ...]
    last_seq: int  # the cursor after these items (the given one if there were none)
    more: bool  # whether more items follow


@dataclass(frozen=True)
class OutboxItem:
    id: int
    referral_id: UUID
    kind: str  # "acknowledged", "viewed", "deleted"
    token: bytes  # the signed receipt (compact JWS)


@dataclass(frozen=True)
class ViewRecord:
    view_id: UUID
    referral_id: UUID
    viewer: str
    viewed_at: datetime


@dataclass(frozen=True)
class Action:
    """One person's acknowledgement of a disclosure: "read" or "actioned", with a note."""

    status: str
    by: str  # staff:<staff id>
    note: str
    at: datetime


@dataclass(frozen=True)
class WebhookJob:
    referral_id: UUID
    attempts: int
    first_at: datetime
    next_at: datetime


@dataclass(frozen=True)
class MeshJob:
    """A referral's delivery to the trust's MESH mailbox: not yet sent (``message_id`` None;
    ``sending_at`` set if an attempt began and its outcome is not known), or sent and waiting
    for MESH to say the trust acknowledged it."""

    referral_id: UUID
    attempts: int
    first_at: datetime
    next_at: datetime
    sending_at: datetime | None
    message_id: str | None


class GatewayStore(Protocol):
    """What the gateway's service (and a web layer) needs of its store."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...

    async def put(self, new: NewDisclosure, *, webhook: bool, mesh: bool = False) -> bool:
        """Store ``new`` unless its referral id is known (stored, or deleted); True if stored.
        With ``webhook`` (``mesh``), a webhook (MESH) delivery job for it is created in the same
        transaction."""
        ...

    async def signed(self, referral_id: UUID) -> str | None:
        """The broker's JWS a stored disclosure was opened from, if the store has it."""
        ...

    async def delivered(self, referral_id: UUID) -> Delivered | None:
        """The JWE, JWS and signed acknowledgement kept of a stored disclosure; None if it is
        not stored (or was deleted)."""
        ...

    async def get(self, referral_id: UUID) -> Stored | None: ...

    async def page(self, after: int, limit: int, *, unacknowledged: bool = False) -> Page:
        """Up to ``limit`` disclosures stored after cursor ``after``, in the order stored."""
        ...

    async def search(self, text: str, limit: int) -> tuple[Stored, ...]:
        """Disclosures whose JSON holds ``text`` (case-insensitive), newest first."""
        ...

    async def acknowledge(
        self,
        referral_id: UUID,
        status: str,
        at: datetime,
        token: bytes,
        *,
        action: Action | None = None,
    ) -> bool:
        """Record the first acknowledgement, queue its signed receipt and keep a copy of it
        (``delivered``), and, if a person gave it, their ``action``; False (nothing changed) if
        it was acknowledged already or is not stored."""
        ...

    async def add_action(self, referral_id: UUID, action: Action) -> bool:
        """Record a person's later acknowledgement (kept here only: no receipt); False if the
        disclosure is not stored or already has an action of that status."""
        ...

    async def actions(self, referral_id: UUID) -> tuple[Action, ...]:
        """Who marked the disclosure read or actioned, oldest first."""
        ...

    async def record_view(self, view: ViewRecord, token: bytes) -> bool:
        """Record a view and queue its signed receipt; False if the disclosure is not stored."""
        ...

    async def views(self, referral_id: UUID) -> tuple[ViewRecord, ...]: ...

    async def expired(self, now: datetime, limit: int) -> tuple[Stored, ...]:
        """Disclosures whose ``delete_after`` is at or before ``now``, oldest first."""
        ...

    async def delete(self, referral_id: UUID, at: datetime, reason: str, token: bytes) -> bool:
        """Delete a disclosure (and its webhook job), keep a tombstone, queue the signed
        receipt, in one transaction; False if it was not stored."""
        ...

    async def pending_receipts(self, limit: int) -> tuple[OutboxItem, ...]: ...
    async def receipts_sent(self, ids: Sequence[int], at: datetime) -> None: ...

    async def due_webhooks(self, now: datetime, limit: int) -> tuple[WebhookJob, ...]: ...

    async def webhook_attempted(
        self,
        referral_id: UUID,
        *,
        status: int | None,
        at: datetime,
        delivered: bool,
        next_at: datetime | None,
    ) -> None:
        """One attempt at ``at`` (``status``: the receiver's answer, None if none): delivered
        (a 2xx), else tried again at ``next_at``, else (no ``next_at``) given up."""
        ...

    async def webhook_state(self, referral_id: UUID) -> tuple[int, bool, bool] | None:
        """(attempts, delivered, given up) of a disclosure's webhook job."""
        ...

    async def due_mesh(self, now: datetime, limit: int) -> tuple[MeshJob, ...]:
        """MESH jobs due at ``now`` (to send, or to track), neither acknowledged nor given up."""
        ...

    async def mesh_sending(self, referral_id: UUID, at: datetime) -> None:
        """An attempt to send begins at ``at`` (one more attempt; its outcome not yet known)."""
        ...

    async def mesh_sent(
        self, referral_id: UUID, message_id: str, *, at: datetime, next_at: datetime
    ) -> None:
        """MESH took the message as ``message_id`` (known at ``at``); look at its tracking at
        ``next_at``."""
        ...

    async def mesh_later(
        self, referral_id: UUID, *, at: datetime, next_at: datetime | None, error: str | None
    ) -> None:
        """At ``at``: try (send or track) again at ``next_at``, else (None) give up;
        ``error``: a reason code of what went wrong, None if nothing did (not yet
        acknowledged)."""
        ...

    async def mesh_acknowledged(self, referral_id: UUID, at: datetime) -> None:
        """MESH said the trust acknowledged the message at ``at``: the job is done."""
        ...

    async def mesh_state(self, referral_id: UUID) -> dict[str, Any] | None:
        """A MESH job as it stands: attempts, message_id, sent, acknowledged, given_up,
        last_error (for the operator and the tests)."""
        ...


# -- one SQL for both databases -------------------------------------------------------------------


class Tx(Protocol):
    """One transaction: ``?`` placeholders, rows as tuples."""

    def run(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...
    def count(self, sql: str, params: Sequence[Any] = ()) -> int: ...


_COLUMNS: Final = (
    "seq, referral_id, sender, purpose, kind, body, received_us, delete_after_us, source, "
    "ack_status, ack_us"
)


def _stored(row: tuple[Any, ...]) -> Stored:
    return Stored(
        seq=int(row[0]),
        referral_id=UUID(row[1]),
        sender=row[2],
        purpose=row[3],
        kind=row[4],
        body=row[5],
        received_at=from_us(int(row[6])),
        delete_after=None if row[7] is None else from_us(int(row[7])),
        source=row[8],
        ack_status=row[9],
        acknowledged_at=None if row[10] is None else from_us(int(row[10])),
    )


def _like(text: str) -> str:
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class SqlGatewayStore(abc.ABC):
    """``GatewayStore`` in SQL common to SQLite and PostgreSQL; subclasses run transactions."""

    MAX_LIMIT: Final = 500

    @abc.abstractmethod
    def _transaction(self, work: Callable[[Tx], T], *, serial: bool = False) -> T:
        """Run ``work`` in one transaction (blocking); ``serial``: one such at a time across
        every process sharing the database (seq must commit in the order it is assigned)."""

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def _do(self, work: Callable[[Tx], T], *, serial: bool = False) -> T:
        return await asyncio.to_thread(self._transaction, work, serial=serial)

    async def put(self, new: NewDisclosure, *, webhook: bool, mesh: bool = False) -> bool:
        rid = str(new.referral_id)

        def work(tx: Tx) -> bool:
            if tx.run("SELECT 1 FROM gw_tombstones WHERE referral_id = ?", (rid,)):
                return False
            added = tx.count(
                "INSERT INTO gw_disclosures (referral_id, sender, purpose, kind, body, "
                "received_us, delete_after_us, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (referral_id) DO NOTHING",
                (
                    rid,
                    new.sender,
                    new.purpose,
                    new.kind,
                    new.body,
                    to_us(new.received_at),
                    None if new.delete_after is None else to_us(new.delete_after),
                    new.source,
                ),
            )
            now = to_us(new.received_at)
            if added and webhook:
                tx.run(
                    "INSERT INTO gw_webhooks (referral_id, attempts, first_us, next_us) "
                    "VALUES (?, 0, ?, ?) ON CONFLICT (referral_id) DO NOTHING",
                    (rid, now, now),
                )
            if added and (new.signed or new.delivered):
                tx.run(
                    "INSERT INTO gw_signed (referral_id, jws, jwe) VALUES (?, ?, ?) "
                    "ON CONFLICT (referral_id) DO NOTHING",
                    (rid, new.signed, new.delivered or None),
                )
            if added and new.receipt:
                self._queue(tx, rid, "delivered", new.receipt, new.received_at)
            if added and mesh:
                tx.run(
                    "INSERT INTO gw_mesh (referral_id, attempts, first_us, next_us) "
                    "VALUES (?, 0, ?, ?) ON CONFLICT (referral_id) DO NOTHING",
                    (rid, now, now),
                )
            return added > 0

        return await self._do(work, serial=True)

    async def signed(self, referral_id: UUID) -> str | None:
        rows = await self._do(
            lambda tx: tx.run(
                "SELECT jws FROM gw_signed WHERE referral_id = ?", (str(referral_id),)
            )
        )
        return str(rows[0][0]) if rows and rows[0][0] else None

    async def delivered(self, referral_id: UUID) -> Delivered | None:
        rid = str(referral_id)

        def work(tx: Tx) -> Delivered | None:
            if not tx.run("SELECT 1 FROM gw_disclosures WHERE referral_id = ?", (rid,)):
                return None
            rows = tx.run("SELECT jwe, jws, ack FROM gw_signed WHERE referral_id = ?", (rid,))
            if not rows:
                return Delivered(None, None, None)
            jwe, jws, ack = rows[0]
            return Delivered(jwe or None, jws or None, ack or None)

        return await self._do(work)

    async def get(self, referral_id: UUID) -> Stored | None:
        rows = await self._do(
            lambda tx: tx.run(
                f"SELECT {_COLUMNS} FROM gw_disclosures WHERE referral_id = ?",  # noqa: S608
                (str(referral_id),),
            )
        )
        return _stored(rows[0]) if rows else None

    async def page(self, after: int, limit: int, *, unacknowledged: bool = False) -> Page:
        limit = max(1, min(limit, self.MAX_LIMIT))
        where = "seq > ?" + (" AND ack_us IS NULL" if unacknowledged else "")
        rows = await self._do(
            lambda tx: tx.run(
                f"SELECT {_COLUMNS} FROM gw_disclosures WHERE {where} ORDER BY seq LIMIT ?",  # noqa: S608 - constants and ? marks only
                (after, limit + 1),
            )
        )
        items = tuple(_stored(r) for r in rows[:limit])
        return Page(items, items[-1].seq if items else after, len(rows) > limit)

    async def search(self, text: str, limit: int) -> tuple[Stored, ...]:
        limit = max(1, min(limit, self.MAX_LIMIT))
        rows = await self._do(
            lambda tx: tx.run(
                f"SELECT {_COLUMNS} FROM gw_disclosures WHERE lower(body) LIKE ? ESCAPE '\\' "  # noqa: S608 - constants and ? marks only
                "ORDER BY seq DESC LIMIT ?",
                (_like(text), limit),
            )
        )
        return tuple(_stored(r) for r in rows)

    async def acknowledge(
        self,
        referral_id: UUID,
        status: str,
        at: datetime,
        token: bytes,
        *,
        action: Action | None = None,
    ) -> bool:
        rid = str(referral_id)

        def work(tx: Tx) -> bool:
            changed = tx.count(
                "UPDATE gw_disclosures SET ack_status = ?, ack_us = ? "
                "WHERE referral_id = ? AND ack_us IS NULL",
                (status, to_us(at), rid),
            )
            if changed:
                self._queue(tx, rid, "acknowledged", token, at)
                # The outbox marks it sent and may be cleared; the evidence keeps this copy.
                tx.run(
                    "INSERT INTO gw_signed (referral_id, jws, ack) VALUES (?, '', ?) "
                    "ON CONFLICT (referral_id) DO UPDATE SET ack = excluded.ack "
                    "WHERE gw_signed.ack IS NULL",
                    (rid, token.decode("ascii")),
                )
                if action is not None:
                    self._act(tx, rid, action)
            return changed > 0

        return await self._do(work)

    @staticmethod
    def _act(tx: Tx, rid: str, action: Action) -> bool:
        if len(action.note) > NOTE_MAX_CHARS:
            raise InputError(
                f"a note is at most {NOTE_MAX_CHARS} characters", reasons=("note_too_long",)
            )
        return (
            tx.count(
                "INSERT INTO gw_actions (referral_id, status, actor, note, at_us) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (referral_id, status) DO NOTHING",
                (rid, action.status, action.by, action.note, to_us(action.at)),
            )
            > 0
        )

    async def add_action(self, referral_id: UUID, action: Action) -> bool:
        rid = str(referral_id)

        def work(tx: Tx) -> bool:
            if not tx.run("SELECT 1 FROM gw_disclosures WHERE referral_id = ?", (rid,)):
                return False
            return self._act(tx, rid, action)

        return await self._do(work)

    async def actions(self, referral_id: UUID) -> tuple[Action, ...]:
        rows = await self._do(
            lambda tx: tx.run(
                "SELECT status, actor, note, at_us FROM gw_actions WHERE referral_id = ? "
                "ORDER BY at_us, status",
                (str(referral_id),),
            )
        )
        return tuple(Action(r[0], r[1], r[2], from_us(int(r[3]))) for r in rows)

    async def record_view(self, view: ViewRecord, token: bytes) -> bool:
        rid = str(view.referral_id)

        def work(tx: Tx) -> bool:
            if not tx.run("SELECT 1 FROM gw_disclosures WHERE referral_id = ?", (rid,)):
                return False
            tx.run(
                "INSERT INTO gw_views (view_id, referral_id, viewer, viewed_us) "
                "VALUES (?, ?, ?, ?)",
                (str(view.view_id), rid, view.viewer, to_us(view.viewed_at)),
            )
            self._queue(tx, rid, "viewed", token, view.viewed_at)
            return True

        return await self._do(work)

    async def views(self, referral_id: UUID) -> tuple[ViewRecord, ...]:
        rows = await self._do(
            lambda tx: tx.run(
                "SELECT view_id, referral_id, viewer, viewed_us FROM gw_views "
                "WHERE referral_id = ? ORDER BY viewed_us, view_id",
                (str(referral_id),),
            )
        )
        return tuple(ViewRecord(UUID(r[0]), UUID(r[1]), r[2], from_us(int(r[3]))) for r in rows)

    async def expired(self, now: datetime, limit: int) -> tuple[Stored, ...]:
        rows = await self._do(
            lambda tx: tx.run(
                f"SELECT {_COLUMNS} FROM gw_disclosures WHERE delete_after_us <= ? "  # noqa: S608 - constants and ? marks only
                "ORDER BY delete_after_us, seq LIMIT ?",
                (to_us(now), max(1, limit)),
            )
        )
        return tuple(_stored(r) for r in rows)

    async def delete(self, referral_id: UUID, at: datetime, reason: str, token: bytes) -> bool:
        rid = str(referral_id)

        def work(tx: Tx) -> bool:
            if not tx.count("DELETE FROM gw_disclosures WHERE referral_id = ?", (rid,)):
                return False
            tx.run("DELETE FROM gw_webhooks WHERE referral_id = ?", (rid,))
            tx.run("DELETE FROM gw_mesh WHERE referral_id = ?", (rid,))
            tx.run("DELETE FROM gw_signed WHERE referral_id = ?", (rid,))
            tx.run("DELETE FROM gw_actions WHERE referral_id = ?", (rid,))
            tx.run(
                "INSERT INTO gw_tombstones (referral_id, deleted_us, reason) VALUES (?, ?, ?) "
                "ON CONFLICT (referral_id) DO NOTHING",
                (rid, to_us(at), reason),
            )
            self._queue(tx, rid, "deleted", token, at)
            return True

        return await self._do(work)

    @staticmethod
    def _queue(tx: Tx, rid: str, kind: str, token: bytes, at: datetime) -> None:
        tx.run(
            "INSERT INTO gw_outbox (referral_id, kind, token, created_us) VALUES (?, ?, ?, ?)",
            (rid, kind, token.decode("ascii"), to_us(at)),
        )

    async def pending_receipts(self, limit: int) -> tuple[OutboxItem, ...]:
        rows = await self._do(
            lambda tx: tx.run(
                "SELECT id, referral_id, kind, token FROM gw_outbox WHERE sent_us IS NULL "
                "ORDER BY id LIMIT ?",
                (max(1, limit),),
            )
        )
        return tuple(OutboxItem(int(r[0]), UUID(r[1]), r[2], r[3].encode("ascii")) for r in rows)

    async def receipts_sent(self, ids: Sequence[int], at: datetime) -> None:
        if not ids:
            return
        marks = ", ".join("?" for _ in ids)
        await self._do(
            lambda tx: tx.run(
                f"UPDATE gw_outbox SET sent_us = ? WHERE id IN ({marks})",  # noqa: S608
                (to_us(at), *ids),
            )
        )

    async def due_webhooks(self, now: datetime, limit: int) -> tuple[WebhookJob, ...]:
        rows = await self._do(
            lambda tx: tx.run(
                "SELECT referral_id, attempts, first_us, next_us FROM gw_webhooks "
                "WHERE delivered_us IS NULL AND given_up_us IS NULL AND next_us <= ? "
                "ORDER BY next_us LIMIT ?",
                (to_us(now), max(1, limit)),
            )
        )
        return tuple(
            WebhookJob(UUID(r[0]), int(r[1]), from_us(int(r[2])), from_us(int(r[3]))) for r in rows
        )

    async def webhook_attempted(
        self,
        referral_id: UUID,
        *,
        status: int | None,
        at: datetime,
        delivered: bool,
        next_at: datetime | None,
    ) -> None:
        column, value = (
            ("delivered_us", at)
            if delivered
            else ("next_us", next_at)
            if next_at
            else ("given_up_us", at)
        )
        await self._do(
            lambda tx: tx.run(
                f"UPDATE gw_webhooks SET attempts = attempts + 1, last_status = ?, {column} = ? "  # noqa: S608 - constants and ? marks only
                "WHERE referral_id = ? AND delivered_us IS NULL",
                (status, to_us(value), str(referral_id)),
            )
        )

    async def webhook_state(self, referral_id: UUID) -> tuple[int, bool, bool] | None:
        rows = await self._do(
            lambda tx: tx.run(
                "SELECT attempts, delivered_us, given_up_us FROM gw_webhooks WHERE referral_id = ?",
                (str(referral_id),),
            )
        )
        if not rows:
            return None
        return int(rows[0][0]), rows[0][1] is not None, rows[0][2] is not None

    async def due_mesh(self, now: datetime, limit: int) -> tuple[MeshJob, ...]:
        rows = await self._do(
            lambda tx: tx.run(
                "SELECT referral_id, attempts, first_us, next_us, sending_us, message_id "
                "FROM gw_mesh WHERE acked_us IS NULL AND given_up_us IS NULL AND next_us <= ? "
                "ORDER BY next_us LIMIT ?",
                (to_us(now), max(1, limit)),
            )
        )
        return tuple(
            MeshJob(
                UUID(r[0]),
                int(r[1]),
                from_us(int(r[2])),
                from_us(int(r[3])),
                None if r[4] is None else from_us(int(r[4])),
                r[5],
            )
            for r in rows
        )

    async def mesh_sending(self, referral_id: UUID, at: datetime) -> None:
        await self._do(
            lambda tx: tx.run(
                "UPDATE gw_mesh SET attempts = attempts + 1, sending_us = ? "
                "WHERE referral_id = ? AND message_id IS NULL",
                (to_us(at), str(referral_id)),
            )
        )

    async def mesh_sent(
        self, referral_id: UUID, message_id: str, *, at: datetime, next_at: datetime
    ) -> None:
        await self._do(
            lambda tx: tx.run(
                "UPDATE gw_mesh SET message_id = ?, sent_us = ?, next_us = ?, last_error = NULL "
                "WHERE referral_id = ? AND message_id IS NULL",
                (message_id, to_us(at), to_us(next_at), str(referral_id)),
            )
        )

    async def mesh_later(
        self, referral_id: UUID, *, at: datetime, next_at: datetime | None, error: str | None
    ) -> None:
        rid = str(referral_id)
        if next_at is None:
            sql = "UPDATE gw_mesh SET given_up_us = ?, last_error = ? WHERE referral_id = ?"
            params: tuple[Any, ...] = (to_us(at), error, rid)
        else:
            sql = "UPDATE gw_mesh SET next_us = ?, last_error = ? WHERE referral_id = ?"
            params = (to_us(next_at), error, rid)
        await self._do(lambda tx: tx.run(sql, params))

    async def mesh_acknowledged(self, referral_id: UUID, at: datetime) -> None:
        await self._do(
            lambda tx: tx.run(
                "UPDATE gw_mesh SET acked_us = ? WHERE referral_id = ? AND acked_us IS NULL",
                (to_us(at), str(referral_id)),
            )
        )

    async def mesh_state(self, referral_id: UUID) -> dict[str, Any] | None:
        rows = await self._do(
            lambda tx: tx.run(
                "SELECT attempts, message_id, sent_us, acked_us, given_up_us, last_error "
                "FROM gw_mesh WHERE referral_id = ?",
                (str(referral_id),),
            )
        )
        if not rows:
            return None
        attempts, message_id, sent, acked, given_up, error = rows[0]
        return {
            "attempts": int(attempts),
            "message_id": message_id,
            "sent": sent is not None,
            "acknowledged": acked is not None,
            "given_up": given_up is not None,
            "last_error": error,
        }


#: The tables, in SQL both databases accept; ``{serial}`` is each one's auto-increment key.
SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS gw_disclosures (
        seq             {serial},
        referral_id     TEXT NOT NULL UNIQUE,
        sender          TEXT NOT NULL,
        purpose         TEXT NOT NULL,
        kind            TEXT NOT NULL,
        body            TEXT NOT NULL,
        received_us     BIGINT NOT NULL,
        delete_after_us BIGINT,
        source          TEXT NOT NULL,
        ack_status      TEXT,
        ack_us          BIGINT
    )""",
    "CREATE INDEX IF NOT EXISTS gw_disclosures_expiry ON gw_disclosures (delete_after_us)",
    """CREATE TABLE IF NOT EXISTS gw_tombstones (
        referral_id TEXT PRIMARY KEY,
        deleted_us  BIGINT NOT NULL,
        reason      TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS gw_views (
        view_id     TEXT PRIMARY KEY,
        referral_id TEXT NOT NULL,
        viewer      TEXT NOT NULL,
        viewed_us   BIGINT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS gw_views_referral ON gw_views (referral_id)",
    """CREATE TABLE IF NOT EXISTS gw_actions (
        referral_id TEXT NOT NULL,
        status      TEXT NOT NULL,
        actor       TEXT NOT NULL,
        note        TEXT NOT NULL,
        at_us       BIGINT NOT NULL,
        PRIMARY KEY (referral_id, status)
    )""",
    """CREATE TABLE IF NOT EXISTS gw_outbox (
        id          {serial},
        referral_id TEXT NOT NULL,
        kind        TEXT NOT NULL,
        token       TEXT NOT NULL,
        created_us  BIGINT NOT NULL,
        sent_us     BIGINT
    )""",
    """CREATE TABLE IF NOT EXISTS gw_webhooks (
        referral_id  TEXT PRIMARY KEY,
        attempts     INTEGER NOT NULL,
        first_us     BIGINT NOT NULL,
        next_us      BIGINT NOT NULL,
        delivered_us BIGINT,
        given_up_us  BIGINT,
        last_status  INTEGER
    )""",
    """CREATE TABLE IF NOT EXISTS gw_signed (
        referral_id TEXT PRIMARY KEY,
        jws         TEXT NOT NULL,
        jwe         TEXT,
        ack         TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS gw_mesh (
        referral_id TEXT PRIMARY KEY,
        attempts    INTEGER NOT NULL,
        first_us    BIGINT NOT NULL,
        next_us     BIGINT NOT NULL,
        sending_us  BIGINT,
        message_id  TEXT,
        sent_us     BIGINT,
        acked_us    BIGINT,
        given_up_us BIGINT,
        last_error  TEXT
    )""",
)


#: Columns added after a table was first created: (table, column, type). A store opening an
#: older database adds each one it lacks (``ALTER TABLE ... ADD COLUMN``, nullable, so every
#: existing row stays valid: a disclosure stored before has no JWE or acknowledgement copy).
ADDED_COLUMNS: Final = (
    ("gw_signed", "jwe", "TEXT"),
    ("gw_signed", "ack", "TEXT"),
)
