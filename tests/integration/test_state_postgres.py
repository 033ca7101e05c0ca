"""PostgresStore holds to the StateStore contract, on a PostgreSQL the suite starts itself.

The cluster comes from Debian's postgresql package (``tests/pg_support.py``; ``make test``
installs it); each test has a database of its own. Without the binaries these tests fail.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from broker.config import Settings
from broker.state import ClaimState, PostgresStore, open_store
from schemas.errors import StateUnavailable
from tests.contracts import state as contract
from tests.unit.state.test_sqlite import CONTRACT

pytestmark = pytest.mark.postgres


@pytest.mark.parametrize("check", CONTRACT, ids=[c.__name__ for c in CONTRACT])
async def test_postgres_holds_to_the_state_contract(
    check: Callable[[contract.StoreFactory], Awaitable[None]], pg_url: str
) -> None:
    """Every contract check passes on one database through separate pools (two brokers)."""
    await check(lambda: PostgresStore(pg_url, pool_size=4, timeout_s=5.0))


async def test_brokers_starting_together_create_the_schema_once(pg_url: str) -> None:
    """Eight stores opening a fresh database at once all succeed (the advisory lock) and then
    race for one id: one NEW."""
    stores = [PostgresStore(pg_url, pool_size=2) for _ in range(8)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        results = await asyncio.gather(
            *(
                s.claim(contract.rid(50), "d", f"owner-{n}", contract.T0, contract.LEASE)
                for n, s in enumerate(stores)
            )
        )
        assert [r.state for r in results].count(ClaimState.NEW) == 1
    finally:
        for s in stores:
            await s.close()


async def test_open_store_follows_the_database_url(pg_url: str, tmp_path: object) -> None:
    """CAIRN_DATABASE_URL set: open_store connects to PostgreSQL and says so, no password."""
    settings = Settings(database_url=pg_url.replace("cairn@", "cairn:pw-not-shown@"))  # type: ignore[arg-type]
    store = await open_store(settings)
    try:
        assert store.describe().startswith("postgresql cairn@127.0.0.1:")
        assert "pw-not-shown" not in store.describe()
        await store.heartbeat("me", "tx", contract.T0)
        assert await store.holder("me") == ("tx", contract.T0)
    finally:
        await store.close()


async def test_a_missing_database_is_a_typed_error_without_the_password(pg_url: str) -> None:
    """PostgreSQL answers but the database does not exist: StateUnavailable naming the
    setting and the database, never the password."""
    url = pg_url.rsplit("/", 1)[0].replace("cairn@", "cairn:s3cret-pw@") + "/no_such_db"
    store = PostgresStore(url, timeout_s=2.0)
    with pytest.raises(StateUnavailable) as raised:
        await store.open()
    message = str(raised.value)
    assert "CAIRN_DATABASE_URL" in message
    assert "/no_such_db" in message
    assert "s3cret" not in message
    await store.close()


async def test_a_database_that_goes_away_is_a_503_and_comes_back(
    pg_url: str, postgres: object
) -> None:
    """Connections killed under the pool: the next calls fail as StateUnavailable or
    succeed on a fresh connection, never with a raw psycopg error; then all succeed."""
    import psycopg

    from tests.pg_support import LocalPostgres

    assert isinstance(postgres, LocalPostgres)
    store = PostgresStore(pg_url, pool_size=2, timeout_s=2.0)
    try:
        await store.open()
        await store.heartbeat("me", "tx", contract.T0)
        database = pg_url.rsplit("/", 1)[1]
        async with await psycopg.AsyncConnection.connect(postgres.url(), autocommit=True) as admin:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (database,),
            )
        outcomes = []
        for _ in range(4):
            try:
                outcomes.append(await store.holder("me"))
            except StateUnavailable:
                outcomes.append(None)
        assert outcomes[-1] == ("tx", contract.T0)
    finally:
        await store.close()
