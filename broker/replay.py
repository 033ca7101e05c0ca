"""What the broker remembers about each referral: its id was used, and who acknowledged it.

Single use of referral ids: a resubmission returns the original receipt and sends nothing.

A referral id is remembered, with a digest of the exact referral and the receipt it got, once
Kafka has committed its disclosures. The same id with the same content is a retry (the sender
lost our answer, or retried a 503 that had in fact committed): it gets the original receipt and
nothing is sent again. The same id with different content is refused. Ids are kept for the
replay window; the signature's ``iat`` clock check refuses anything older than the skew bound,
so an id forgotten after the window cannot come back either.

Acknowledgements from recipients are remembered per (referral, agency), so a repeated one is
recognised and audited once.

Every committed disclosure is remembered as a delivery (referral, recipient, purpose, sender and
the deadline its purpose sets, if any), so the overdue sweep (``broker.ops.overdue``) can find the
unacknowledged ones past their deadline and mark each overdue once.

Stored in SQLite (WAL, synchronous=FULL) under the state folder: small, durable, one writer.
"""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

__all__ = ["Delivery", "ReplayStore", "Seen"]

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS seen (
        referral_id TEXT PRIMARY KEY,
        digest      TEXT NOT NULL,
        receipt     TEXT NOT NULL,
        first_seen  TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS acks (
        referral_id TEXT NOT NULL,
        agency      TEXT NOT NULL,
        acked_at    TEXT NOT NULL,
        PRIMARY KEY (referral_id, agency)
    )""",
    """CREATE TABLE IF NOT EXISTS deliveries (
        referral_id  TEXT NOT NULL,
        agency       TEXT NOT NULL,
        purpose      TEXT NOT NULL,
        sender       TEXT NOT NULL,
        delivered_at TEXT NOT NULL,
        due_at       TEXT,
        overdue_at   TEXT,
        PRIMARY KEY (referral_id, agency)
    )""",
)


@dataclass(frozen=True)
class Seen:
    digest: str
    receipt: str  # the receipt JSON as first returned


@dataclass(frozen=True)
class Delivery:
    """One disclosure committed to a recipient's topic: ids, codes and times only."""

    referral_id: str
    agency: str  # the recipient
    purpose: str
    sender: str
    delivered_at: datetime
    due_at: datetime | None = None  # None: this purpose sets no acknowledgement deadline
    overdue_at: datetime | None = None  # when the sweep found it overdue (once)


def _moment(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _delivery(row: tuple[str, str, str, str, str, str | None, str | None]) -> Delivery:
    return Delivery(
        row[0],
        row[1],
        row[2],
        row[3],
        datetime.fromisoformat(row[4]),
        _moment(row[5]),
        _moment(row[6]),
    )


_DELIVERY_COLUMNS = "referral_id, agency, purpose, sender, delivered_at, due_at, overdue_at"


class ReplayStore:
    """Remembered referral ids, with a lock per id so concurrent duplicates publish once."""

    def __init__(self, path: Path | None) -> None:
        """``path=None`` keeps ids in memory only (unit tests)."""
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(":memory:" if path is None else str(path), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        for statement in _SCHEMA:
            self._db.execute(statement)
        self._locks: dict[str, asyncio.Lock] = {}

    def lock(self, referral_id: str) -> asyncio.Lock:
        return self._locks.setdefault(referral_id, asyncio.Lock())

    def release(self, referral_id: str) -> None:
        lock = self._locks.get(referral_id)
        if lock is not None and not lock.locked():
            del self._locks[referral_id]

    def lookup(self, referral_id: str) -> Seen | None:
        row = self._db.execute(
            "SELECT digest, receipt FROM seen WHERE referral_id = ?", (referral_id,)
        ).fetchone()
        return None if row is None else Seen(row[0], row[1])

    def remember(self, referral_id: str, digest: str, receipt: str, now: datetime) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO seen VALUES (?, ?, ?, ?)",
            (referral_id, digest, receipt, now.isoformat()),
        )

    def acknowledged(self, referral_id: str, agency: str) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM acks WHERE referral_id = ? AND agency = ?", (referral_id, agency)
        ).fetchone()
        return row is not None

    def remember_ack(self, referral_id: str, agency: str, at: datetime) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO acks VALUES (?, ?, ?)", (referral_id, agency, at.isoformat())
        )

    def acks(self, referral_ids: list[str] | None = None) -> dict[tuple[str, str], datetime]:
        """When each (referral, agency) was acknowledged; all of them, or those of some ids."""
        rows = self._db.execute("SELECT referral_id, agency, acked_at FROM acks").fetchall()
        wanted = None if referral_ids is None else set(referral_ids)
        return {
            (r[0], r[1]): datetime.fromisoformat(r[2])
            for r in rows
            if wanted is None or r[0] in wanted
        }

    def record_delivery(self, delivery: Delivery) -> None:
        """Remember a committed disclosure; a repeat of the same (referral, agency) is ignored."""
        self._db.execute(
            "INSERT OR IGNORE INTO deliveries VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                delivery.referral_id,
                delivery.agency,
                delivery.purpose,
                delivery.sender,
                delivery.delivered_at.isoformat(),
                None if delivery.due_at is None else delivery.due_at.isoformat(),
                None if delivery.overdue_at is None else delivery.overdue_at.isoformat(),
            ),
        )

    def open_deliveries(self) -> list[Delivery]:
        """Deliveries with a deadline that have not been marked overdue yet."""
        rows = self._db.execute(
            f"SELECT {_DELIVERY_COLUMNS} FROM deliveries "  # noqa: S608 - constant column list
            "WHERE due_at IS NOT NULL AND overdue_at IS NULL ORDER BY due_at, referral_id"
        ).fetchall()
        return [_delivery(r) for r in rows]

    def deliveries(self) -> list[Delivery]:
        """Every remembered delivery, oldest first."""
        rows = self._db.execute(
            f"SELECT {_DELIVERY_COLUMNS} FROM deliveries "  # noqa: S608 - constant column list
            "ORDER BY delivered_at, referral_id, agency"
        ).fetchall()
        return [_delivery(r) for r in rows]

    def overdue(self, limit: int = 100) -> list[Delivery]:
        """Deliveries marked overdue, newest first."""
        rows = self._db.execute(
            f"SELECT {_DELIVERY_COLUMNS} FROM deliveries "  # noqa: S608 - constant column list
            "WHERE overdue_at IS NOT NULL ORDER BY overdue_at DESC, referral_id DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [_delivery(r) for r in rows]

    def mark_overdue(self, referral_id: str, agency: str, at: datetime) -> bool:
        """Mark a delivery overdue; False if it already was (so it is reported once)."""
        cursor = self._db.execute(
            "UPDATE deliveries SET overdue_at = ? "
            "WHERE referral_id = ? AND agency = ? AND overdue_at IS NULL",
            (at.isoformat(), referral_id, agency),
        )
        return cursor.rowcount == 1

    def prune(self, now: datetime, window: timedelta) -> int:
        """Forget ids first seen before ``now - window``; return how many."""
        cursor = self._db.execute(
            "DELETE FROM seen WHERE first_seen < ?", ((now - window).isoformat(),)
        )
        return cursor.rowcount

    def close(self) -> None:
        self._db.close()
