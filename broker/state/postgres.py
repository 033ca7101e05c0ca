"""The state store many brokers share: PostgreSQL through psycopg 3 and a connection pool.

``CAIRN_DATABASE_URL`` names the database (``postgresql://USER:PASSWORD@HOST:PORT/DB``);
``database_pool_size`` connections per broker process, ``database_timeout_s`` to connect or to
wait for a free connection. A claim is ``INSERT .. ON CONFLICT DO NOTHING`` and then a read of
the row that won, so two brokers claiming one id at once see one ``NEW`` between them. The
schema is created under a transaction-scoped advisory lock, so brokers starting together take
turns and the later ones find it done. Times are ``timestamptz``.

Every psycopg or pool failure becomes ``StateUnavailable`` naming ``CAIRN_DATABASE_URL`` and the
database as user@host:port/db: the password never reaches a message or a log line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Final, TypeVar

import psycopg
import psycopg_pool
from psycopg.conninfo import conninfo_to_dict

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

__all__ = ["PostgresStore", "describe_url"]

T = TypeVar("T")
Conn = psycopg.AsyncConnection[tuple[Any, ...]]

_LOCK_KEY: Final = 0x6361_6972_6E5F_7374  # "cairn_st": the advisory lock the schema is made under
_VERSION: Final = 1

_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS cairn_schema (version integer NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS claims (
        referral_id text PRIMARY KEY,
        digest      text NOT NULL,
        receipt     text,
        owner       text,
        claimed_at  timestamptz NOT NULL,
        first_seen  timestamptz NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS claims_first_seen ON claims (first_seen)",
    """CREATE TABLE IF NOT EXISTS heartbeats (
        owner            text PRIMARY KEY,
        transactional_id text NOT NULL,
        beat_at          timestamptz NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS leases (
        name   text PRIMARY KEY,
        holder text NOT NULL,
        until  timestamptz NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS acks (
        referral_id text NOT NULL,
        agency      text NOT NULL,
        acked_at    timestamptz NOT NULL,
        PRIMARY KEY (referral_id, agency)
    )""",
    """CREATE TABLE IF NOT EXISTS deliveries (
        referral_id  text NOT NULL,
        agency       text NOT NULL,
        purpose      text NOT NULL,
        sender       text NOT NULL,
        delivered_at timestamptz NOT NULL,
        due_at       timestamptz,
        overdue_at   timestamptz,
        PRIMARY KEY (referral_id, agency)
    )""",
    "CREATE INDEX IF NOT EXISTS deliveries_open ON deliveries (due_at) "
    "WHERE due_at IS NOT NULL AND overdue_at IS NULL",
    "CREATE INDEX IF NOT EXISTS deliveries_overdue ON deliveries (overdue_at) "
    "WHERE overdue_at IS NOT NULL",
    """CREATE TABLE IF NOT EXISTS flow_facts (
        id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        type       text NOT NULL,
        at         timestamptz NOT NULL,
        message_id text NOT NULL,
        recipient  text NOT NULL,
        sender     text,
        purpose    text,
        due_at     timestamptz
    )""",
    "CREATE INDEX IF NOT EXISTS flow_facts_at ON flow_facts (at)",
    "CREATE INDEX IF NOT EXISTS flow_facts_pair ON flow_facts (message_id, recipient, type)",
)

_DELIVERY_COLUMNS: Final = "referral_id, agency, purpose, sender, delivered_at, due_at, overdue_at"
# An overdue delivery and when it was acknowledged (late), if it was.
_OVERDUE_COLUMNS: Final = (
    "d.referral_id, d.agency, d.purpose, d.sender, d.delivered_at, d.due_at, d.overdue_at, "
    "a.acked_at"
)
_CLAIM_TRIES: Final = 5  # a row can vanish between our insert and our read (release): read again


def describe_url(url: str) -> str:
    """``postgresql user@host:port/db`` for ``url``; never its password. A URL that is not a
    PostgreSQL connection string is a ``StateUnavailable`` naming the setting."""
    try:
        parts = conninfo_to_dict(url)
    except psycopg.Error:
        raise StateUnavailable(
            "CAIRN_DATABASE_URL is not a PostgreSQL connection URL; give it as "
            "postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
        ) from None
    if not url.startswith(("postgresql://", "postgres://")):
        raise StateUnavailable(
            "CAIRN_DATABASE_URL must start with postgresql:// (or postgres://); give it as "
            "postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
        )
    user = parts.get("user") or "?"
    host = parts.get("host") or parts.get("hostaddr") or "localhost"
    port = parts.get("port") or "5432"
    database = parts.get("dbname") or user
    return f"postgresql {user}@{host}:{port}/{database}"


def _delivery(row: Sequence[Any]) -> Delivery:
    return Delivery(
        row[0],
        row[1],
        row[2],
        row[3],
        utc(row[4]),
        None if row[5] is None else utc(row[5]),
        None if row[6] is None else utc(row[6]),
    )


class PostgresStore:
    """The state in PostgreSQL; see the module docstring."""

    def __init__(self, url: str, *, pool_size: int = 10, timeout_s: float = 5.0) -> None:
        self._where = describe_url(url)  # refuses a malformed URL before anything connects
        self._url = url
        self._pool_size = pool_size
        self._timeout_s = timeout_s
        self._pool: psycopg_pool.AsyncConnectionPool[Conn] | None = None
        self._closed = False

    def describe(self) -> str:
        return self._where

    def _unavailable(self, exc: BaseException) -> StateUnavailable:
        return StateUnavailable(
            f"the state store ({self._where}) did not answer ({type(exc).__name__}); nothing "
            "was sent: check that PostgreSQL runs and CAIRN_DATABASE_URL, then retry"
        )

    async def open(self) -> None:
        if self._closed:
            raise RuntimeError("the state store is closed")
        if self._pool is not None:
            return
        pool: psycopg_pool.AsyncConnectionPool[Conn] = psycopg_pool.AsyncConnectionPool(
            self._url,
            min_size=1,
            max_size=self._pool_size,
            timeout=self._timeout_s,
            kwargs={"connect_timeout": max(1, round(self._timeout_s))},
            open=False,
            name="cairn-state",
        )
        try:
            await pool.open(wait=True, timeout=self._timeout_s)
            async with pool.connection() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
                for statement in _SCHEMA:
                    await conn.execute(statement)
                cursor = await conn.execute("SELECT max(version) FROM cairn_schema")
                row = await cursor.fetchone()
                if row is None or row[0] is None:
                    await conn.execute("INSERT INTO cairn_schema VALUES (%s)", (_VERSION,))
        except (psycopg.Error, psycopg_pool.PoolTimeout, OSError) as exc:
            await pool.close()
            raise self._unavailable(exc) from None
        self._pool = pool

    async def close(self) -> None:
        self._closed = True
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def _run(self, work: Callable[[Conn], Awaitable[T]]) -> T:
        """``work`` in one transaction on a pooled connection; failures become 503s."""
        if self._pool is None:
            await self.open()
        assert self._pool is not None
        try:
            async with self._pool.connection() as conn, conn.transaction():
                return await work(conn)
        except (psycopg.OperationalError, psycopg.InterfaceError, psycopg_pool.PoolTimeout) as exc:
            raise self._unavailable(exc) from None
        except psycopg.Error as exc:
            # Anything else from the server (a constraint, a serialisation failure) is no
            # less a failure of the store; the request may succeed when retried.
            raise self._unavailable(exc) from None

    # --- claims ---------------------------------------------------------------------------

    async def claim(
        self, referral_id: str, digest: str, owner: str, now: datetime, lease: timedelta
    ) -> Claimed:
        at = utc(now)
        for _ in range(_CLAIM_TRIES):

            async def work(conn: Conn) -> Claimed | None:
                cursor = await conn.execute(
                    "INSERT INTO claims VALUES (%s, %s, NULL, %s, %s, %s) "
                    "ON CONFLICT (referral_id) DO NOTHING",
                    (referral_id, digest, owner, at, at),
                )
                if cursor.rowcount == 1:
                    return Claimed(ClaimState.NEW, None, owner, digest)
                cursor = await conn.execute(
                    "SELECT c.owner, c.digest, c.receipt, h.beat_at, c.claimed_at FROM claims c "
                    "LEFT JOIN heartbeats h ON h.owner = c.owner WHERE c.referral_id = %s",
                    (referral_id,),
                )
                row = await cursor.fetchone()
                if row is None:
                    return None  # released between the two statements: try again
                beat = None if row[3] is None else utc(row[3])
                return judge(row[0], row[1], row[2], beat, owner, at, lease, claimed_at=utc(row[4]))

            claimed = await self._run(work)
            if claimed is not None:
                return claimed
        raise self._unavailable(RuntimeError("claim kept changing"))

    async def take_over(
        self,
        referral_id: str,
        old_owner: str,
        new_owner: str,
        now: datetime,
        *,
        digest: str | None = None,
    ) -> bool:
        async def work(conn: Conn) -> bool:
            cursor = await conn.execute(
                "UPDATE claims SET owner = %s, claimed_at = %s, digest = COALESCE(%s, digest) "
                "WHERE referral_id = %s AND owner IS NOT DISTINCT FROM %s AND receipt IS NULL",
                (new_owner, utc(now), digest, referral_id, old_owner),
            )
            return cursor.rowcount == 1

        return await self._run(work)

    async def published(self, items: Sequence[Published], owner: str, now: datetime) -> None:
        if not items:
            return
        at = utc(now)

        async def work(conn: Conn) -> None:
            async with conn.cursor() as cursor:
                await cursor.executemany(
                    "INSERT INTO claims VALUES (%s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT (referral_id) DO UPDATE SET digest = excluded.digest, "
                    "receipt = excluded.receipt, owner = excluded.owner "
                    "WHERE claims.receipt IS NULL",
                    [(rid, digest, receipt, owner, at, at) for rid, digest, receipt in items],
                )

        await self._run(work)

    async def release(self, referral_ids: Sequence[str], owner: str) -> None:
        if not referral_ids:
            return

        async def work(conn: Conn) -> None:
            await conn.execute(
                "DELETE FROM claims WHERE referral_id = ANY(%s) AND owner = %s AND receipt IS NULL",
                (list(referral_ids), owner),
            )

        await self._run(work)

    async def lookup(self, referral_id: str) -> Seen | None:
        async def work(conn: Conn) -> Seen | None:
            cursor = await conn.execute(
                "SELECT digest, receipt FROM claims WHERE referral_id = %s AND receipt IS NOT NULL",
                (referral_id,),
            )
            row = await cursor.fetchone()
            return None if row is None else Seen(row[0], row[1])

        return await self._run(work)

    async def heartbeat(self, owner: str, transactional_id: str, now: datetime) -> None:
        async def work(conn: Conn) -> None:
            await conn.execute(
                "INSERT INTO heartbeats VALUES (%s, %s, %s) ON CONFLICT (owner) DO UPDATE SET "
                "transactional_id = excluded.transactional_id, beat_at = excluded.beat_at",
                (owner, transactional_id, utc(now)),
            )

        await self._run(work)

    async def holder(self, owner: str) -> tuple[str, datetime] | None:
        async def work(conn: Conn) -> tuple[str, datetime] | None:
            cursor = await conn.execute(
                "SELECT transactional_id, beat_at FROM heartbeats WHERE owner = %s", (owner,)
            )
            row = await cursor.fetchone()
            return None if row is None else (row[0], utc(row[1]))

        return await self._run(work)

    async def lease(self, name: str, holder: str, now: datetime, ttl: timedelta) -> bool:
        async def work(conn: Conn) -> bool:
            cursor = await conn.execute(
                "INSERT INTO leases VALUES (%s, %s, %s) ON CONFLICT (name) DO UPDATE SET "
                "holder = excluded.holder, until = excluded.until "
                "WHERE leases.holder = excluded.holder OR leases.until <= %s RETURNING holder",
                (name, holder, utc(now + ttl), utc(now)),
            )
            return await cursor.fetchone() is not None

        return await self._run(work)

    async def prune(self, now: datetime, window: timedelta) -> int:
        before = utc(now - window)

        async def work(conn: Conn) -> int:
            cursor = await conn.execute("DELETE FROM claims WHERE first_seen < %s", (before,))
            gone = cursor.rowcount
            await conn.execute("DELETE FROM flow_facts WHERE at < %s", (before,))
            await conn.execute("DELETE FROM heartbeats WHERE beat_at < %s", (before,))
            return gone

        return await self._run(work)

    # --- acknowledgements -----------------------------------------------------------------

    async def acknowledged(self, referral_id: str, agency: str) -> bool:
        async def work(conn: Conn) -> bool:
            cursor = await conn.execute(
                "SELECT 1 FROM acks WHERE referral_id = %s AND agency = %s", (referral_id, agency)
            )
            return await cursor.fetchone() is not None

        return await self._run(work)

    async def remember_ack(self, referral_id: str, agency: str, at: datetime) -> bool:
        async def work(conn: Conn) -> bool:
            cursor = await conn.execute(
                "INSERT INTO acks VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                (referral_id, agency, utc(at)),
            )
            return cursor.rowcount == 1

        return await self._run(work)

    async def acks(
        self, referral_ids: Sequence[str] | None = None
    ) -> dict[tuple[str, str], datetime]:
        async def work(conn: Conn) -> dict[tuple[str, str], datetime]:
            if referral_ids is None:
                cursor = await conn.execute("SELECT referral_id, agency, acked_at FROM acks")
            else:
                cursor = await conn.execute(
                    "SELECT referral_id, agency, acked_at FROM acks WHERE referral_id = ANY(%s)",
                    (sorted(set(referral_ids)),),
                )
            return {(r[0], r[1]): utc(r[2]) for r in await cursor.fetchall()}

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
                utc(d.delivered_at),
                None if d.due_at is None else utc(d.due_at),
                None if d.overdue_at is None else utc(d.overdue_at),
            )
            for d in deliveries
        ]

        async def work(conn: Conn) -> None:
            async with conn.cursor() as cursor:
                await cursor.executemany(
                    "INSERT INTO deliveries VALUES (%s, %s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT DO NOTHING",
                    rows,
                )

        await self._run(work)

    async def _deliveries(self, where: str, params: tuple[Any, ...] = ()) -> list[Delivery]:
        query = f"SELECT {_DELIVERY_COLUMNS} FROM deliveries {where}"  # noqa: S608 - constants

        async def work(conn: Conn) -> list[Delivery]:
            cursor = await conn.execute(query.encode(), params)
            return [_delivery(r) for r in await cursor.fetchall()]

        return await self._run(work)

    async def open_deliveries(self) -> list[Delivery]:
        return await self._deliveries(
            "WHERE due_at IS NOT NULL AND overdue_at IS NULL ORDER BY due_at, referral_id, agency"
        )

    async def was_delivered(self, referral_id: str, agency: str) -> bool:
        async def work(conn: Conn) -> bool:
            cursor = await conn.execute(
                "SELECT 1 FROM deliveries WHERE referral_id = %s AND agency = %s",
                (referral_id, agency),
            )
            return await cursor.fetchone() is not None

        return await self._run(work)

    async def deliveries(self) -> list[Delivery]:
        return await self._deliveries("ORDER BY delivered_at, referral_id, agency")

    async def delivery(self, referral_id: str, agency: str) -> Delivery | None:
        found = await self._deliveries(
            "WHERE referral_id = %s AND agency = %s", (referral_id, agency)
        )
        return found[0] if found else None

    async def overdue(self, limit: int = 100) -> list[Delivery]:
        query = (
            f"SELECT {_OVERDUE_COLUMNS} FROM deliveries d LEFT JOIN acks a "  # noqa: S608
            "ON a.referral_id = d.referral_id AND a.agency = d.agency "
            "WHERE d.overdue_at IS NOT NULL "
            "ORDER BY d.overdue_at DESC, d.referral_id DESC, d.agency DESC LIMIT %s"
        )

        async def work(conn: Conn) -> list[Delivery]:
            cursor = await conn.execute(query.encode(), (limit,))
            return [
                dataclasses.replace(
                    _delivery(r), acknowledged_at=None if r[7] is None else utc(r[7])
                )
                for r in await cursor.fetchall()
            ]

        return await self._run(work)

    async def overdue_counts(self) -> dict[tuple[str, str, str], int]:
        async def work(conn: Conn) -> dict[tuple[str, str, str], int]:
            cursor = await conn.execute(
                "SELECT d.purpose, d.agency, a.acked_at IS NOT NULL, COUNT(*) "
                "FROM deliveries d LEFT JOIN acks a "
                "ON a.referral_id = d.referral_id AND a.agency = d.agency "
                "WHERE d.overdue_at IS NOT NULL GROUP BY 1, 2, 3"
            )
            return {
                (r[0], r[1], OVERDUE_LATE if r[2] else OVERDUE_NEVER): int(r[3])
                for r in await cursor.fetchall()
            }

        return await self._run(work)

    async def delivery_counts(self) -> dict[tuple[str, str, str], int]:
        async def work(conn: Conn) -> dict[tuple[str, str, str], int]:
            cursor = await conn.execute(
                "SELECT sender, agency, purpose, COUNT(*) FROM deliveries "
                "GROUP BY sender, agency, purpose"
            )
            return {(r[0], r[1], r[2]): int(r[3]) for r in await cursor.fetchall()}

        return await self._run(work)

    async def mark_overdue(self, referral_id: str, agency: str, at: datetime) -> bool:
        async def work(conn: Conn) -> bool:
            cursor = await conn.execute(
                "UPDATE deliveries SET overdue_at = %s "
                "WHERE referral_id = %s AND agency = %s AND overdue_at IS NULL",
                (utc(at), referral_id, agency),
            )
            return cursor.rowcount == 1

        return await self._run(work)

    # --- flow facts -----------------------------------------------------------------------

    async def record_facts(self, facts: Sequence[Fact]) -> None:
        if not facts:
            return
        rows = [
            (
                f.type,
                utc(f.at),
                f.message_id,
                f.recipient,
                f.sender,
                f.purpose,
                None if f.due_at is None else utc(f.due_at),
            )
            for f in facts
        ]

        async def work(conn: Conn) -> None:
            async with conn.cursor() as cursor:
                await cursor.executemany(
                    "INSERT INTO flow_facts (type, at, message_id, recipient, sender, purpose, "
                    "due_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    rows,
                )

        await self._run(work)

    async def facts(self, since: datetime, limit: int) -> list[Fact]:
        async def work(conn: Conn) -> list[Fact]:
            cursor = await conn.execute(
                "SELECT f.type, f.at, f.message_id, f.recipient, f.sender, f.purpose, f.due_at, "
                "EXISTS (SELECT 1 FROM flow_facts a WHERE a.message_id = f.message_id "
                "AND a.recipient = f.recipient AND a.type = 'acknowledged') "
                "FROM flow_facts f WHERE f.at >= %s AND f.type IN ('disclosed', 'refused') "
                "ORDER BY f.at DESC, f.id DESC LIMIT %s",
                (utc(since), limit),
            )
            return [
                Fact(
                    r[0],
                    utc(r[1]),
                    r[2],
                    r[3],
                    r[4],
                    r[5],
                    None if r[6] is None else utc(r[6]),
                    bool(r[7]),
                )
                for r in await cursor.fetchall()
            ]

        return await self._run(work)
