"""The gateway store's contract on PostgreSQL, the session's throwaway cluster."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import psycopg
import pytest

from gateway.postgres import PostgresGatewayStore
from gateway.store import GatewayStore
from tests.contracts import gateway_store as contract

pytestmark = pytest.mark.postgres

Check = Callable[[Callable[[], GatewayStore]], Awaitable[None]]


@pytest.mark.parametrize("check", contract.CHECKS, ids=lambda c: c.__name__)
async def test_postgres_gateway_store_keeps_the_contract(check: Check, pg_url: str) -> None:
    await check(lambda: PostgresGatewayStore(pg_url))


async def test_an_older_postgres_database_is_upgraded(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(b"DROP TABLE IF EXISTS gw_signed")
        conn.execute(contract.OLD_SIGNED_TABLE.encode())
        sql, params = contract.OLD_SIGNED_ROW
        conn.execute(sql.replace("?", "%s").encode(), params)
    await contract.an_older_database_is_upgraded(lambda: PostgresGatewayStore(pg_url))
