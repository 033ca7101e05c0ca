"""The gateway's store in one SQLite file (the default: ``<state_dir>/gateway/<agency>.sqlite``).

One connection, used by one worker thread at a time (a lock), each call one ``BEGIN
IMMEDIATE`` transaction; WAL and ``synchronous=FULL``, so a stored disclosure is on disk before
its Kafka offset is committed. Opening a file an older version made adds the columns it lacks
(``gateway.store.ADDED_COLUMNS``). The file holds what the agency received, in the clear: it is
created 0600 in a 0700 folder, on the agency's own machine.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from gateway.store import ADDED_COLUMNS, SCHEMA, SqlGatewayStore, Tx
from schemas.errors import StateUnavailable

__all__ = ["SqliteGatewayStore"]

T = TypeVar("T")


class _SqliteTx:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def run(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._conn.execute(sql, tuple(params)).fetchall()

    def count(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._conn.execute(sql, tuple(params)).rowcount


class SqliteGatewayStore(SqlGatewayStore):
    """``GatewayStore`` in the SQLite file ``path`` (None: in memory, for tests)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    async def open(self) -> None:
        if self._conn is not None:
            return
        try:
            if self.path is not None:
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
                os.close(fd)
            conn = sqlite3.connect(
                ":memory:" if self.path is None else str(self.path),
                isolation_level=None,
                check_same_thread=False,
                timeout=10.0,
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("BEGIN IMMEDIATE")
            for statement in SCHEMA:
                conn.execute(statement.format(serial="INTEGER PRIMARY KEY AUTOINCREMENT"))
            for table, column, kind in ADDED_COLUMNS:  # a file an older version created
                have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
                if column not in have:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            conn.execute("COMMIT")
        except (OSError, sqlite3.Error) as exc:
            raise StateUnavailable(
                f"the gateway's store {self.path or ':memory:'} cannot be opened: {exc}"
            ) from None
        self._conn = conn

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with self._lock:
                conn.close()

    def _transaction(self, work: Callable[[Tx], T], *, serial: bool = False) -> T:
        with self._lock:  # one writer in this process; BEGIN IMMEDIATE for other processes
            conn = self._conn
            if conn is None:
                raise StateUnavailable("the gateway's store is not open")
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = work(_SqliteTx(conn))
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StateUnavailable(f"the gateway's store {self.path} failed: {exc}") from None
            return result
