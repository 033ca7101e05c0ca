"""The audit log's query index: one sqlite file that finds entries by subject, agency, purpose,
lawful basis, consent override, agreement, type, message and date.

``index.sqlite`` is derived data, never the truth: the store (``broker.audit.store``) feeds it
each batch it appends, and on open it is caught up when behind, or rebuilt from the entries file
when it is ahead, foreign (another log's id) or damaged. A query returns leaf indices; the
store reads the entries themselves from the entries file. ``verify`` uses the leaf hashes the
index recorded at append time as a witness (``recorded_leaves``).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final, NamedTuple
from uuid import UUID

import structlog

from broker.audit.errors import AuditUnavailable
from broker.audit.files import INDEX_FILE, Progress
from schemas.audit import AuditEvent, AuditEventType
from schemas.consent import OverrideReason
from schemas.referral import Purpose

__all__ = ["Index", "IndexRepair", "Query", "Row", "recorded_leaves"]

log = structlog.get_logger(__name__)

# /2: the override's decision-maker (role, staff id) and paragraph; an older index is rebuilt.
_INDEX_FORMAT: Final = "cairn-audit-index/2"
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)

#: One entry as the index records it: leaf index, Kafka offset, leaf hash, the event.
Row = tuple[int, int, bytes, AuditEvent]


@dataclass(frozen=True)
class Query:
    """What ``AuditLog.query`` looks for; every field given must match (``None``: any)."""

    subjects: tuple[str, ...] = ()  # pseudonyms; an event about any of them matches
    agency: str | None = None  # as sender, recipient or key owner
    sender: str | None = None
    recipient: str | None = None
    purpose: Purpose | None = None
    lawful_basis: str | None = None  # one code the event names
    override: bool | None = None  # True: consent overridden; False: not overridden
    override_reason: OverrideReason | None = None
    override_by: str | None = None  # the staff or collar number of who overrode consent
    override_role: str | None = None  # their role code
    override_paragraph: str | None = None  # the legal paragraph the override relied on
    agreement: str | None = None  # the sharing agreement relied on (or changed)
    types: tuple[AuditEventType, ...] = ()
    message_id: UUID | None = None
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive
    limit: int | None = None  # entries, oldest first


def _us(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise TypeError("query times must be timezone-aware")
    return (moment - _EPOCH) // _MICROSECOND


_SCHEMA: Final = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE entry(
    seq INTEGER PRIMARY KEY,
    kafka_offset INTEGER NOT NULL,
    leaf_hash BLOB NOT NULL,
    event_id TEXT NOT NULL,
    type TEXT NOT NULL,
    at_us INTEGER NOT NULL,
    message_id TEXT,
    sender TEXT,
    recipient TEXT,
    agency TEXT,
    purpose TEXT,
    consent_state TEXT,
    override_reason TEXT,
    agreement TEXT,
    override_by_role TEXT,
    override_by_id TEXT,
    override_paragraph TEXT
);
CREATE INDEX entry_at ON entry(at_us);
CREATE INDEX entry_message ON entry(message_id, recipient);
CREATE INDEX entry_sender ON entry(sender);
CREATE INDEX entry_recipient ON entry(recipient);
CREATE TABLE subject(pseudonym TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (pseudonym, seq))
    WITHOUT ROWID;
CREATE TABLE basis(code TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (code, seq))
    WITHOUT ROWID;
"""


class IndexRepair(NamedTuple):
    """What opening the index repaired."""

    indexed: int  # entries added to an index that was behind
    rebuilt: bool  # the index was missing, foreign, ahead or damaged


class Index:
    """The query index of one log. The store that owns it feeds it: ``size()`` is the log's
    tree size, ``rows(start, end)`` reads entries ``start..end - 1`` back from the entries file
    (to catch up or rebuild)."""

    def __init__(
        self,
        directory: Path,
        *,
        readonly: bool,
        size: Callable[[], int],
        rows: Callable[[int, int], Iterable[Row]],
    ) -> None:
        self.directory = directory
        self.readonly = readonly
        #: Behind the log: caught up before the next query or append (read-only: refused).
        self.stale = False
        self._size = size
        self._rows = rows
        self._log_id = ""
        self._db: sqlite3.Connection | None = None

    def open(self, log_id: bytes, progress: Progress | None) -> IndexRepair:
        """Connect to the index of the log ``log_id``, catching it up or rebuilding it."""
        self._log_id = log_id.hex()
        path = self.directory / INDEX_FILE
        if self.readonly:
            if path.exists():
                self._db = sqlite3.connect(_readonly_uri(path), uri=True)
                meta = self._meta()
                if meta.get("log_id") != self._log_id or meta.get("format") != _INDEX_FORMAT:
                    self._db.close()
                    self._db = None
            if self._db is None or self._indexed() < self._size():
                self.stale = True
            return IndexRepair(0, False)
        try:
            self._db = _connect(path)
            self._db.execute("PRAGMA journal_mode=WAL")
            # The index is derived data: losing its last transactions costs a catch-up, never
            # the log, so it need not sync on every commit.
            self._db.execute("PRAGMA synchronous=NORMAL")
            meta = self._meta()
            ours = meta.get("format") == _INDEX_FORMAT and meta.get("log_id") == self._log_id
            if not ours or self._indexed() > self._size():
                self.rebuild(progress)
                # A new, empty index is no repair; a foreign, ahead or absent one for an
                # existing log is.
                return IndexRepair(0, bool(meta or self._size()))
            if self._indexed() < self._size():
                behind = self._size() - self._indexed()
                self.catch_up(progress)
                return IndexRepair(behind, False)
            return IndexRepair(0, False)
        except sqlite3.DatabaseError:
            # A damaged index is rebuilt from the files, which are the truth.
            if self._db is not None:
                self._db.close()
            self._db = None
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    (self.directory / (INDEX_FILE + suffix)).unlink()
            self._db = _connect(path)
            self._db.execute("PRAGMA journal_mode=WAL")
            self.rebuild(progress)
            return IndexRepair(0, True)

    def _meta(self) -> dict[str, str]:
        assert self._db is not None
        try:
            rows = self._db.execute("SELECT key, value FROM meta").fetchall()
        except sqlite3.OperationalError:
            return {}
        return {str(k): str(v) for k, v in rows}

    def _indexed(self) -> int:
        return int(self._meta().get("size", "0"))

    def _require_db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the audit log is closed")
        return self._db

    def rebuild(self, progress: Progress | None = None) -> int:
        """Recreate the index from the entries file; returns the number of entries indexed."""
        if self.readonly:
            raise RuntimeError("a read-only audit log cannot rebuild its index")
        db = self._require_db()
        with db:
            for table in ("meta", "entry", "subject", "basis"):
                db.execute(f"DROP TABLE IF EXISTS {table}")
            db.executescript(_SCHEMA)
            db.executemany(
                "INSERT INTO meta(key, value) VALUES (?, ?)",
                [("format", _INDEX_FORMAT), ("log_id", self._log_id), ("size", "0")],
            )
        self.catch_up(progress)
        return self._size()

    def catch_up(self, progress: Progress | None) -> None:
        """Index every entry of the log the index does not hold yet."""
        start = self._indexed()
        size = self._size()
        step = 5_000
        for lo in range(start, size, step):
            hi = min(lo + step, size)
            self._add(self._rows(lo, hi))
            if progress is not None:
                progress(hi - start, size - start)
        self.stale = False

    def follow(self, rows: Iterable[Row]) -> None:
        """Index the entries just appended. If the index fails, the log is still whole: the
        index is marked behind and catches up before the next query or append."""
        try:
            if self.stale:
                self.catch_up(None)
            else:
                self._add(rows)
        except sqlite3.Error as exc:
            self.stale = True
            log.warning("audit.index_behind", error=str(exc))

    def _add(self, rows: Iterable[Row]) -> None:
        db = self._require_db()
        entries, subjects, bases = [], [], []
        last = -1
        for i, offset, leaf, event in rows:
            entries.append(
                (
                    i,
                    offset,
                    leaf,
                    str(event.event_id),
                    event.type.value,
                    _us(event.at),
                    None if event.message_id is None else str(event.message_id),
                    event.sender,
                    event.recipient,
                    event.agency,
                    None if event.purpose is None else event.purpose.value,
                    None if event.consent_state is None else event.consent_state.value,
                    None if event.override_reason is None else event.override_reason.value,
                    event.agreement,
                    event.override_by_role,
                    event.override_by_id,
                    event.override_paragraph,
                )
            )
            subjects += [(p, i) for p in event.subjects]
            bases += [(b, i) for b in event.lawful_basis]
            last = i
        if last < 0:
            return
        with db:
            db.executemany(
                "INSERT INTO entry VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                entries,
            )
            db.executemany("INSERT INTO subject(pseudonym, seq) VALUES (?, ?)", subjects)
            db.executemany("INSERT INTO basis(code, seq) VALUES (?, ?)", bases)
            db.execute("UPDATE meta SET value = ? WHERE key = 'size'", (str(last + 1),))

    def recorded(
        self,
        kind: AuditEventType,
        message_id: UUID,
        recipient: str,
        event_id: UUID | None = None,
    ) -> bool:
        """Whether the log holds an event of ``kind`` about ``message_id`` for ``recipient``
        (and with ``event_id``, if given): the store keeps some facts once per recipient, some
        once per event id; caught up first if behind."""
        sql = "SELECT 1 FROM entry WHERE message_id = ? AND recipient = ? AND type = ?"
        params = [str(message_id), recipient, kind.value]
        if event_id is not None:
            sql += " AND event_id = ?"
            params.append(str(event_id))
        try:
            if self.stale:
                self.catch_up(None)
            row = self._require_db().execute(sql + " LIMIT 1", params).fetchone()
        except sqlite3.Error as exc:
            # Not knowing is not "no": the batch waits until the index answers again.
            raise AuditUnavailable(f"the audit index cannot answer: {exc}") from None
        return row is not None

    def select(self, query: Query) -> list[int]:
        """The leaf indices of the entries that match ``query``, oldest first."""
        if self.stale:
            if self.readonly:
                raise AuditUnavailable(
                    "the audit index is behind the log; run a query while the auditor is "
                    "stopped, or 'cairn audit reindex'"
                )
            self.catch_up(None)
        sql, params = _where(query)
        return [int(seq) for (seq,) in self._require_db().execute(sql, params).fetchall()]

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def _connect(path: Path) -> sqlite3.Connection:
    """The index database, its file 0600 like the entries it is derived from (it names agencies,
    purposes and pseudonyms); SQLite gives its -wal and -shm files the same mode."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an index made before this rule was 0644
    finally:
        os.close(fd)
    return sqlite3.connect(path)


def _readonly_uri(path: Path) -> str:
    """A SQLite URI that opens ``path`` read-only, whatever characters the path holds."""
    return path.resolve().as_uri() + "?mode=ro"


def recorded_leaves(directory: Path, log_id: bytes) -> list[bytes] | None:
    """The leaf hashes the index recorded at append time, if the index is this log's."""
    path = directory / INDEX_FILE
    if not path.exists():
        return None
    try:
        db = sqlite3.connect(_readonly_uri(path), uri=True)
        try:
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            if meta.get("log_id") != log_id.hex():
                return None
            rows = db.execute("SELECT leaf_hash FROM entry ORDER BY seq").fetchall()
        finally:
            db.close()
    except sqlite3.Error:
        return None
    return [bytes(h) for (h,) in rows]


def _where(q: Query) -> tuple[str, list[object]]:
    clauses: list[str] = []
    params: list[object] = []

    def eq(column: str, value: object) -> None:
        clauses.append(f"{column} = ?")
        params.append(value)

    if q.subjects:
        marks = ",".join("?" * len(q.subjects))
        clauses.append(
            f"seq IN (SELECT seq FROM subject WHERE pseudonym IN ({marks}))"  # noqa: S608 - marks
        )
        params += list(q.subjects)
    if q.agency is not None:
        clauses.append("(sender = ? OR recipient = ? OR agency = ?)")
        params += [q.agency] * 3
    if q.sender is not None:
        eq("sender", q.sender)
    if q.recipient is not None:
        eq("recipient", q.recipient)
    if q.purpose is not None:
        eq("purpose", q.purpose.value)
    if q.lawful_basis is not None:
        clauses.append("seq IN (SELECT seq FROM basis WHERE code = ?)")
        params.append(q.lawful_basis)
    if q.override is not None:
        clauses.append("override_reason IS NOT NULL" if q.override else "override_reason IS NULL")
    if q.override_reason is not None:
        eq("override_reason", q.override_reason.value)
    if q.override_by is not None:
        eq("override_by_id", q.override_by)
    if q.override_role is not None:
        eq("override_by_role", q.override_role)
    if q.override_paragraph is not None:
        eq("override_paragraph", q.override_paragraph)
    if q.agreement is not None:
        eq("agreement", q.agreement)
    if q.types:
        clauses.append(f"type IN ({','.join('?' * len(q.types))})")
        params += [t.value for t in q.types]
    if q.message_id is not None:
        eq("message_id", str(q.message_id))
    if q.since is not None:
        clauses.append("at_us >= ?")
        params.append(_us(q.since))
    if q.until is not None:
        clauses.append("at_us < ?")
        params.append(_us(q.until))
    sql = "SELECT seq FROM entry"
    if clauses:
        sql += " WHERE " + " AND ".join(clauses)
    sql += " ORDER BY seq"
    if q.limit is not None:
        sql += " LIMIT ?"
        params.append(q.limit)
    return sql, params
