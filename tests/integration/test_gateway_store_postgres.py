"""The gateway store's contract on PostgreSQL, the session's throwaway cluster."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from gateway.postgres import PostgresGatewayStore
from gateway.store import GatewayStore
from tests.contracts import gateway_store as contract

pytestmark = pytest.mark.postgres

Check = Callable[[Callable[[], GatewayStore]], Awaitable[None]]


@pytest.mark.parametrize("check", contract.CHECKS, ids=lambda c: c.__name__)
async def test_postgres_gateway_store_keeps_the_contract(check: Check, pg_url: str) -> None:
    await check(lambda: PostgresGatewayStore(pg_url))
