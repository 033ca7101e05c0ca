"""The gateway's store in PostgreSQL (``CAIRN_GATEWAY_DATABASE_URL``), for an agency that runs
more than one gateway process or keeps its data in its own database server.

psycopg 3 with a small connection pool, the same SQL as SQLite (``gateway.store``), each call
one transaction. ``put`` takes a transaction-scoped advisory lock first, so disclosures commit
in the order of their ``seq`` and a client paging with a cursor never skips one that commits
late. Every failure becomes ``StateUnavailable`` naming the database as user@host:port/db,
never its password (``broker.state.postgres.describe_url``). Opening a database an older
version made adds the columns it lacks (``gateway.store.ADDED_COLUMNS``, under the same
advisory lock as the schema).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar

import psycopg
import psycopg_pool

from broker.state.postgres import describe_url
from gateway.store import ADDED_COLUMNS, SCHEMA, SqlGatewayStore, Tx
from schemas.errors import StateUnavailable

__all__ = ["PostgresGatewayStore"]

T = TypeVar("T")

_LOCK_KEY: Final = 0x6361_6972_6E5F_6777  # "cairn_gw": the advisory lock of puts and the schema


class _PgTx:
    def __init__(self, cur: psycopg.Cursor[tuple[Any, ...]]) -> None:
        self._cur = cur

    def run(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self._cur.execute(sql.replace("?", "%s").encode(), tuple(params))
        return self._cur.fetchall() if self._cur.description is not None else []

    def count(self, sql: str, params: Sequence[Any] = ()) -> int:
        self._cur.execute(sql.replace("?", "%s").encode(), tuple(params))
        return self._cur.rowcount


class PostgresGatewayStore(SqlGatewayStore):
    """``GatewayStore`` in the PostgreSQL database ``url``."""

    def __init__(self, url: str, *, pool_size: int = 4, timeout_s: float = 10.0) -> None:
        self._url = url
        self._where = describe_url(url)
        self._pool_size = pool_size
        self._timeout_s = timeout_s
        self._pool: psycopg_pool.ConnectionPool | None = None

    def _unavailable(self, exc: Exception) -> StateUnavailable:
        return StateUnavailable(
            f"the gateway's database {self._where} failed ({type(exc).__name__}); check "
            "CAIRN_GATEWAY_DATABASE_URL and that the server is up"
        )

    async def open(self) -> None:
        if self._pool is not None:
            return
        pool = psycopg_pool.ConnectionPool(
            self._url,
            min_size=1,
            max_size=self._pool_size,
            timeout=self._timeout_s,
            open=False,
            kwargs={"connect_timeout": max(1, int(self._timeout_s))},
        )
        try:
            pool.open(wait=True, timeout=self._timeout_s)
            self._pool = pool

            def schema(tx: Tx) -> None:
                for statement in SCHEMA:
                    tx.run(
                        statement.format(serial="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY")
                    )
                for table, column, kind in ADDED_COLUMNS:  # a database an older version made
                    tx.run(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {kind}")

            self._transaction(schema, serial=True)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            self._pool = None
            pool.close()
            raise self._unavailable(exc) from None

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def _transaction(self, work: Callable[[Tx], T], *, serial: bool = False) -> T:
        pool = self._pool
        if pool is None:
            raise StateUnavailable("the gateway's database is not open")
        try:
            with pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                if serial:
                    cur.execute(b"SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
                return work(_PgTx(cur))
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise self._unavailable(exc) from None
