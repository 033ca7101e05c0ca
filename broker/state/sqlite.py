"""The embedded state store: one SQLite file shared by every broker process on one machine.

WAL journal (readers never wait for the writer), ``synchronous=FULL`` (a commit is on disk),
and a busy timeout (``sqlite_busy_timeout_s``): the worker processes of one ``cairn serve
--workers N``, or brokers started side by side on one state folder, take turns at the write
lock instead of failing. A claim runs in ``BEGIN IMMEDIATE``, so its insert-or-read is atomic
across processes. Each store runs its connection on one thread of its own, so a wait for the
lock never blocks the event loop. ``SqliteStore(None)`` keeps everything in memory (unit tests).

The writes every submission makes (``claim``, ``published``, ``record_deliveries``,
``record_facts``) are group-committed: those queued while the thread is busy run one after
another in one ``BEGIN IMMEDIATE`` transaction (one commit, one fsync, for all of them), each in
a savepoint of its own, so one that fails is rolled back alone and gets its error. Each caller
is answered only after the transaction holding its write has committed, with what it would have
got run alone at that point: the batch is those writes in order, under one lock.

Times are ISO 8601 text in UTC with microseconds (fixed width, so text order is time order).
The first open of a new file imports a legacy ``replay.sqlite`` beside it (the store before
issue 13), so no delivery deadline or acknowledgement is lost in the upgrade.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final, TypeVar

from broker.state.records import (
    OVERDUE_LATE,
    OVERDUE_NEVER,
    Claimed,
    ClaimState,
    Delivery,
    Fact,
    Published,
    Seen,
    judge,
    utc,
)
from schemas.errors import StateUnavailable

__all__ = ["LEGACY_FILE", "STATE_FILE", "SqliteStore"]

STATE_FILE: Final = "state.sqlite"  # under <state_dir>/broker/
LEGACY_FILE: Final = "replay.sqlite"  # the pre-issue-13 replay store, imported once

T = TypeVar("T")
# A group-committed write's answer: its caller's future, and its result or its error.
_Settled = tuple[asyncio.Future[Any], Any, BaseException | None]

_VERSION: Final = 1  # PRAGMA user_version once the schema below exists

_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS claims (
        referral_id TEXT PRIMARY KEY,
        digest      TEXT NOT NULL,
        receipt     TEXT,
        owner       TEXT,
        claimed_at  TEXT NOT NULL,
        first_seen  TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS claims_first_seen ON claims (first_seen)",
    """CREATE TABLE IF NOT EXISTS heartbeats (
        owner            TEXT PRIMARY KEY,
        transactional_id TEXT NOT NULL,
        beat_at          TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS leases (
        name   TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        until  TEXT NOT NULL
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
    "CREATE INDEX IF NOT EXISTS deliveries_open ON deliveries (due_at) "
    "WHERE due_at IS NOT NULL AND overdue_at IS NULL",
    "CREATE INDEX IF NOT EXISTS deliveries_overdue ON deliveries (overdue_at) "
    "WHERE overdue_at IS NOT NULL",
    """CREATE TABLE IF NOT EXISTS flow_facts (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        type       TEXT NOT NULL,
        at         TEXT NOT NULL,
        message_id TEXT NOT NULL,
        recipient  TEXT NOT NULL,
        sender     TEXT,
        purpose    TEXT,
        due_at     TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS flow_facts_at ON flow_facts (at)",
    "CREATE INDEX IF NOT EXISTS flow_facts_pair ON flow_facts (message_id, recipient, type)",
)

_LEGACY_IMPORT: Final = (
    "INSERT OR IGNORE INTO claims SELECT referral_id, digest, receipt, NULL, first_seen, "
    "first_seen FROM legacy.seen",
    "INSERT OR IGNORE INTO acks SELECT referral_id, agency, acked_at FROM legacy.acks",
    "INSERT OR IGNORE INTO deliveries SELECT referral_id, agency, purpose, sender, "
    "delivered_at, due_at, overdue_at FROM legacy.deliveries",
)

_BATCH_MAX: Final = 256  # group-committed writes per transaction at most
_DELIVERY_COLUMNS: Final = "referral_id, agency, purpose, sender, delivered_at, due_at, overdue_at"
# An overdue delivery and when it was acknowledged (late), if it was.
_OVERDUE_COLUMNS: Final = (
    "d.referral_id, d.agency, d.purpose, d.sender, d.delivered_at, d.due_at, d.overdue_at, "
    "a.acked_at"
)
_CHUNK: Final = 500  # ids per IN (...) list, well inside SQLite's bound on parameters


def _text(moment: datetime) -> str:
    return utc(moment).isoformat(timespec="microseconds")


def _opt_text(moment: datetime | None) -> str | None:
    return None if moment is None else _text(moment)


def _moment(value: str) -> datetime:
    return utc(datetime.fromisoformat(value))


def _opt_moment(value: str | None) -> datetime | None:
    return None if value is None else _moment(value)


def _delivery(row: Sequence[Any]) -> Delivery:
    return Delivery(
        row[0],
        row[1],
        row[2],
        row[3],
        _moment(row[4]),
        _opt_moment(row[5]),
        _opt_moment(row[6]),
    )


@contextlib.contextmanager
def _immediate(db: sqlite3.Connection) -> Iterator[None]:
    """A write transaction that takes the lock first: other processes wait (busy timeout)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _settle(settled: list[_Settled]) -> None:
    """On the loop: answer each group-committed write (unless its caller gave up waiting)."""
    for future, result, error in settled:
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


class SqliteStore:
    """The state in one SQLite file (or in memory); see the module docstring."""

    def __init__(
        self, path: Path | None, *, busy_timeout_s: float = 10.0, read_only: bool = False
    ) -> None:
        """``path=None``: in memory only. ``read_only``: open an existing file read-only
        (``cairn status``), never create or migrate it."""
        self.path = path
        self._busy_timeout_s = busy_timeout_s
        self._read_only = read_only
        self._db: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False
        # Group-committed writes waiting for the thread, and whether a drain is queued for them.
        self._pending: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] = []
        self._pending_lock = threading.Lock()
        self._drain_queued = False

    def describe(self) -> str:
        where = "memory" if self.path is None else str(self.path)
        return f"sqlite {where}" + (" (read-only)" if self._read_only else "")

    # --- the connection and its thread --------------------------------------------------

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise RuntimeError("the state store is closed")
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cairn-state")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._guarded, work)

    def _guarded(self, work: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return work(self._connection())
        except sqlite3.Error as exc:
            raise StateUnavailable(
                f"the state store ({self.describe()}) failed ({type(exc).__name__}); nothing "
                "was sent: check the state folder's disk and permissions, then retry"
            ) from None

    async def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` in the next group-committed write transaction (see the module
        docstring); ``work`` runs inside it and must not begin or end a transaction."""
        if self._closed:
            raise RuntimeError("the state store is closed")
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cairn-state")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._pending_lock:
            self._pending.append((work, future))
            queue_drain = not self._drain_queued
            self._drain_queued = True
        if queue_drain:
            try:
                self._executor.submit(self._drain)
            except RuntimeError:  # the executor was shut down under us (closing)
                with self._pending_lock:
                    self._pending = [p for p in self._pending if p[1] is not future]
                    self._drain_queued = False
                raise
        return await future

    def _drain(self) -> None:
        """On the store's thread: commit the writes queued so far, at most ``_BATCH_MAX`` per
        transaction, and answer each caller on its loop once its transaction has committed."""
        while True:
            with self._pending_lock:
                batch, self._pending = self._pending[:_BATCH_MAX], self._pending[_BATCH_MAX:]
                if not batch:
                    self._drain_queued = False
                    return
            by_loop: dict[asyncio.AbstractEventLoop, list[_Settled]] = {}
            for settled in self._commit_batch(batch):
                by_loop.setdefault(settled[0].get_loop(), []).append(settled)
            for loop, answers in by_loop.items():
                with contextlib.suppress(RuntimeError):  # that loop closed: nobody waits
                    loop.call_soon_threadsafe(_settle, answers)

    def _commit_batch(
        self, batch: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]]
    ) -> list[_Settled]:
        """Each write of ``batch`` in a savepoint of one transaction: its result or its own
        error; every one gets the transaction's error if the transaction fails."""
        out: list[_Settled] = []
        try:
            db = self._connection()
            with _immediate(db):
                for work, future in batch:
                    db.execute("SAVEPOINT cairn_write")
                    try:
                        result = work(db)
                    except Exception as exc:  # this write alone fails: undo it, keep the rest
                        db.execute("ROLLBACK TO cairn_write")
                        db.execute("RELEASE cairn_write")
                        out.append((future, None, self._failure(exc)))
                        continue
                    db.execute("RELEASE cairn_write")
                    out.append((future, result, None))
        except BaseException as exc:  # the transaction failed: nothing of it was committed
            failure = self._failure(exc) if isinstance(exc, Exception) else exc
            return [(future, None, failure) for _, future in batch]
        return out

    def _failure(self, exc: Exception) -> Exception:
        """What a caller gets for ``exc``: ``StateUnavailable`` for a database error."""
        if isinstance(exc, sqlite3.Error):
            return StateUnavailable(
                f"the state store ({self.describe()}) failed ({type(exc).__name__}); nothing "
                "was sent: check the state folder's disk and permissions, then retry"
            )
        return exc

    def _connection(self) -> sqlite3.Connection:
        if self._db is not None:
            return self._db
        if self.path is None:
            db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        elif self._read_only:
            if not self.path.is_file():
                raise StateUnavailable(f"the state store {self.path} does not exist")
            db = sqlite3.connect(
                f"file:{self.path}?mode=ro",
                uri=True,
                isolation_level=None,
                timeout=self._busy_timeout_s,
                check_same_thread=False,
            )
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(
                str(self.path),
                isolation_level=None,
                timeout=self._busy_timeout_s,
                check_same_thread=False,
            )
        try:
            db.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_s * 1000)}")
            if not self._read_only:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                self._migrate(db)
        except BaseException:
            db.close()
            raise
        self._db = db
        return db

    def _migrate(self, db: sqlite3.Connection) -> None:
        """Create the schema once; BEGIN IMMEDIATE makes processes starting together take
        turns, and the version check makes the later ones no-ops."""
        legacy = None if self.path is None else self.path.with_name(LEGACY_FILE)
        attached = False
        if legacy is not None and legacy.is_file() and self._version(db) == 0:
            db.execute("ATTACH DATABASE ? AS legacy", (str(legacy),))  # not inside a transaction
            attached = True
        try:
            with _immediate(db):
                version = self._version(db)
                if version < _VERSION:
                    for statement in _SCHEMA:
                        db.execute(statement)
                    if version == 0 and attached:
                        tables = {r[0] for r in db.execute("SELECT name FROM legacy.sqlite_master")}
                        for statement, table in zip(
                            _LEGACY_IMPORT, ("seen", "acks", "deliveries"), strict=True
                        ):
                            if table in tables:
                                db.execute(statement)
                    db.execute(f"PRAGMA user_version = {_VERSION}")
        finally:
            if attached:
                db.execute("DETACH DATABASE legacy")

    @staticmethod
    def _version(db: sqlite3.Connection) -> int:
        return int(db.execute("PRAGMA user_version").fetchone()[0])

    async def open(self) -> None:
        await self._run(lambda _db: None)

    async def close(self) -> None:
        if self._closed:
            return
        if self._executor is not None:

            def shut(_db: sqlite3.Connection) -> None:
                if self._db is not None:
                    self._db.close()
                    self._db = None

            if self._db is not None:
                await self._run(shut)
            self._executor.shutdown(wait=False)
            self._executor = None
        elif self._db is not None:
            self._db.close()
            self._db = None
        self._closed = True

    # --- claims ---------------------------------------------------------------------------

    async def claim(
        self, referral_id: str, digest: str, owner: str, now: datetime, lease: timedelta
    ) -> Claimed:
        at = _text(now)

        def work(db: sqlite3.Connection) -> Claimed:
            inserted = db.execute(
                "INSERT OR IGNORE INTO claims VALUES (?, ?, NULL, ?, ?, ?)",
                (referral_id, digest, owner, at, at),
            ).rowcount
            row = None
            if inserted != 1:
                row = db.execute(
                    "SELECT c.owner, c.digest, c.receipt, h.beat_at, c.claimed_at "
                    "FROM claims c LEFT JOIN heartbeats h ON h.owner = c.owner "
                    "WHERE c.referral_id = ?",
                    (referral_id,),
                ).fetchone()
            if row is None:
                return Claimed(ClaimState.NEW, None, owner, digest)
            return judge(
                row[0],
                row[1],
                row[2],
                _opt_moment(row[3]),
                owner,
                utc(now),
                lease,
                claimed_at=_moment(row[4]),
            )

        return await self._write(work)  # in BEGIN IMMEDIATE: the insert-or-read is atomic

    async def take_over(
        self,
        referral_id: str,
        old_owner: str,
        new_owner: str,
        now: datetime,
        *,
        digest: str | None = None,
    ) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            return bool(
                db.execute(
                    "UPDATE claims SET owner = ?, claimed_at = ?, digest = COALESCE(?, digest) "
                    "WHERE referral_id = ? AND owner IS ? AND receipt IS NULL",
                    (new_owner, _text(now), digest, referral_id, old_owner),
                ).rowcount
                == 1
            )

        return await self._run(work)

    async def published(self, items: Sequence[Published], owner: str, now: datetime) -> None:
        if not items:
            return
        at = _text(now)

        def work(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT INTO claims VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (referral_id) DO UPDATE SET digest = excluded.digest, "
                "receipt = excluded.receipt, owner = excluded.owner "
                "WHERE claims.receipt IS NULL",
                [(rid, digest, receipt, owner, at, at) for rid, digest, receipt in items],
            )

        await self._write(work)

    async def release(self, referral_ids: Sequence[str], owner: str) -> None:
        ids = list(referral_ids)

        def work(db: sqlite3.Connection) -> None:
            for chunk in _chunks(ids):
                marks = ",".join("?" * len(chunk))
                db.execute(
                    f"DELETE FROM claims WHERE referral_id IN ({marks}) "  # noqa: S608 - marks only
                    "AND owner = ? AND receipt IS NULL",
                    (*chunk, owner),
                )

        await self._run(work)

    async def lookup(self, referral_id: str) -> Seen | None:
        def work(db: sqlite3.Connection) -> Seen | None:
            row = db.execute(
                "SELECT digest, receipt FROM claims WHERE referral_id = ? AND receipt IS NOT NULL",
                (referral_id,),
            ).fetchone()
            return None if row is None else Seen(row[0], row[1])

        return await self._run(work)

    async def heartbeat(self, owner: str, transactional_id: str, now: datetime) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO heartbeats VALUES (?, ?, ?) ON CONFLICT (owner) DO UPDATE SET "
                "transactional_id = excluded.transactional_id, beat_at = excluded.beat_at",
                (owner, transactional_id, _text(now)),
            )

        await self._run(work)

    async def holder(self, owner: str) -> tuple[str, datetime] | None:
        def work(db: sqlite3.Connection) -> tuple[str, datetime] | None:
            row = db.execute(
                "SELECT transactional_id, beat_at FROM heartbeats WHERE owner = ?", (owner,)
            ).fetchone()
            return None if row is None else (row[0], _moment(row[1]))

        return await self._run(work)

    async def lease(self, name: str, holder: str, now: datetime, ttl: timedelta) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            with _immediate(db):
                db.execute(
                    "INSERT INTO leases VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                    "holder = excluded.holder, until = excluded.until "
                    "WHERE leases.holder = excluded.holder OR leases.until <= ?",
                    (name, holder, _text(now + ttl), _text(now)),
                )
                row = db.execute("SELECT holder FROM leases WHERE name = ?", (name,)).fetchone()
            return bool(row is not None and row[0] == holder)

        return await self._run(work)

    async def prune(self, now: datetime, window: timedelta) -> int:
        before = _text(now - window)

        def work(db: sqlite3.Connection) -> int:
            with _immediate(db):
                gone = db.execute("DELETE FROM claims WHERE first_seen < ?", (before,)).rowcount
                db.execute("DELETE FROM flow_facts WHERE at < ?", (before,))
                db.execute("DELETE FROM heartbeats WHERE beat_at < ?", (before,))
            return int(gone)

        return await self._run(work)

    # --- acknowledgements -----------------------------------------------------------------

    async def acknowledged(self, referral_id: str, agency: str) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            row = db.execute(
                "SELECT 1 FROM acks WHERE referral_id = ? AND agency = ?", (referral_id, agency)
            ).fetchone()
            return row is not None

        return await self._run(work)

    async def remember_ack(self, referral_id: str, agency: str, at: datetime) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            cursor = db.execute(
                "INSERT OR IGNORE INTO acks VALUES (?, ?, ?)", (referral_id, agency, _text(at))
            )
            return bool(cursor.rowcount == 1)

        return await self._run(work)

    async def acks(
        self, referral_ids: Sequence[str] | None = None
    ) -> dict[tuple[str, str], datetime]:
        def work(db: sqlite3.Connection) -> dict[tuple[str, str], datetime]:
            if referral_ids is None:
                rows = db.execute("SELECT referral_id, agency, acked_at FROM acks").fetchall()
            else:
                rows = []
                for chunk in _chunks(sorted(set(referral_ids))):
                    marks = ",".join("?" * len(chunk))
                    rows += db.execute(
                        "SELECT referral_id, agency, acked_at FROM acks "  # noqa: S608 - marks only
                        f"WHERE referral_id IN ({marks})",
                        tuple(chunk),
                    ).fetchall()
            return {(r[0], r[1]): _moment(r[2]) for r in rows}

        return await self._run(work)

    # --- deliveries -----------------------------------------------------------------------

    async def record_deliveries(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        rows = [
            (
                d.referral_id,
                d.agency,
                d.purpose,
                d.sender,
                _text(d.delivered_at),
                _opt_text(d.due_at),
                _opt_text(d.overdue_at),
            )
            for d in deliveries
        ]

        def work(db: sqlite3.Connection) -> None:
            db.executemany("INSERT OR IGNORE INTO deliveries VALUES (?, ?, ?, ?, ?, ?, ?)", rows)

        await self._write(work)

    async def _deliveries(self, where: str, params: tuple[Any, ...] = ()) -> list[Delivery]:
        def work(db: sqlite3.Connection) -> list[Delivery]:
            rows = db.execute(
                f"SELECT {_DELIVERY_COLUMNS} FROM deliveries {where}",  # noqa: S608 - constants
                params,
            ).fetchall()
            return [_delivery(r) for r in rows]

        return await self._run(work)

    async def was_delivered(self, referral_id: str, agency: str) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            row = db.execute(
                "SELECT 1 FROM deliveries WHERE referral_id = ? AND agency = ?",
                (referral_id, agency),
            ).fetchone()
            return row is not None

        return await self._run(work)

    async def open_deliveries(self) -> list[Delivery]:
        return await self._deliveries(
            "WHERE due_at IS NOT NULL AND overdue_at IS NULL ORDER BY due_at, referral_id, agency"
        )

    async def deliveries(self) -> list[Delivery]:
        return await self._deliveries("ORDER BY delivered_at, referral_id, agency")

    async def delivery(self, referral_id: str, agency: str) -> Delivery | None:
        found = await self._deliveries(
            "WHERE referral_id = ? AND agency = ?", (referral_id, agency)
        )
        return found[0] if found else None

    async def overdue(self, limit: int = 100) -> list[Delivery]:
        def work(db: sqlite3.Connection) -> list[Delivery]:
            rows = db.execute(
                f"SELECT {_OVERDUE_COLUMNS} FROM deliveries d LEFT JOIN acks a "  # noqa: S608
                "ON a.referral_id = d.referral_id AND a.agency = d.agency "
                "WHERE d.overdue_at IS NOT NULL "
                "ORDER BY d.overdue_at DESC, d.referral_id DESC, d.agency DESC LIMIT ?",
                (limit,),
            ).fetchall()
            return [
                dataclasses.replace(_delivery(r), acknowledged_at=_opt_moment(r[7])) for r in rows
            ]

        return await self._run(work)

    async def overdue_counts(self) -> dict[tuple[str, str, str], int]:
        def work(db: sqlite3.Connection) -> dict[tuple[str, str, str], int]:
            rows = db.execute(
                "SELECT d.purpose, d.agency, a.acked_at IS NOT NULL, COUNT(*) "
                "FROM deliveries d LEFT JOIN acks a "
                "ON a.referral_id = d.referral_id AND a.agency = d.agency "
                "WHERE d.overdue_at IS NOT NULL GROUP BY 1, 2, 3"
            ).fetchall()
            return {(r[0], r[1], OVERDUE_LATE if r[2] else OVERDUE_NEVER): int(r[3]) for r in rows}

        return await self._run(work)

    async def delivery_counts(self) -> dict[tuple[str, str, str], int]:
        def work(db: sqlite3.Connection) -> dict[tuple[str, str, str], int]:
            rows = db.execute(
                "SELECT sender, agency, purpose, COUNT(*) FROM deliveries "
                "GROUP BY sender, agency, purpose"
            ).fetchall()
            return {(r[0], r[1], r[2]): int(r[3]) for r in rows}

        return await self._run(work)

    async def mark_overdue(self, referral_id: str, agency: str, at: datetime) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            cursor = db.execute(
                "UPDATE deliveries SET overdue_at = ? "
                "WHERE referral_id = ? AND agency = ? AND overdue_at IS NULL",
                (_text(at), referral_id, agency),
            )
            return bool(cursor.rowcount == 1)

        return await self._run(work)

    # --- flow facts -----------------------------------------------------------------------

    async def record_facts(self, facts: Sequence[Fact]) -> None:
        if not facts:
            return
        rows = [
            (
                f.type,
                _text(f.at),
                f.message_id,
                f.recipient,
                f.sender,
                f.purpose,
                _opt_text(f.due_at),
            )
            for f in facts
        ]

        def work(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT INTO flow_facts (type, at, message_id, recipient, sender, purpose, "
                "due_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

        await self._write(work)

    async def facts(self, since: datetime, limit: int) -> list[Fact]:
        def work(db: sqlite3.Connection) -> list[Fact]:
            rows = db.execute(
                "SELECT f.type, f.at, f.message_id, f.recipient, f.sender, f.purpose, f.due_at, "
                "EXISTS (SELECT 1 FROM flow_facts a WHERE a.message_id = f.message_id "
                "AND a.recipient = f.recipient AND a.type = 'acknowledged') "
                "FROM flow_facts f WHERE f.at >= ? AND f.type IN ('disclosed', 'refused') "
                "ORDER BY f.at DESC, f.id DESC LIMIT ?",
                (_text(since), limit),
            ).fetchall()
            return [
                Fact(r[0], _moment(r[1]), r[2], r[3], r[4], r[5], _opt_moment(r[6]), bool(r[7]))
                for r in rows
            ]

        return await self._run(work)
