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

Stored in SQLite (WAL, synchronous=FULL) under the state folder: small, durable, one writer.
"""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

__all__ = ["ReplayStore", "Seen"]

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
)


@dataclass(frozen=True)
class Seen:
    digest: str
    receipt: str  # the receipt JSON as first returned


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

    def prune(self, now: datetime, window: timedelta) -> int:
        """Forget ids first seen before ``now - window``; return how many."""
        cursor = self._db.execute(
            "DELETE FROM seen WHERE first_seen < ?", ((now - window).isoformat(),)
        )
        return cursor.rowcount

    def close(self) -> None:
        self._db.close()
