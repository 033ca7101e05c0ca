"""The gateway store's contract on SQLite (the same checks run on PostgreSQL in
tests/integration/test_gateway_store_postgres.py)."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from gateway.sqlite import SqliteGatewayStore
from gateway.store import GatewayStore
from tests.contracts import gateway_store as contract

Check = Callable[[Callable[[], GatewayStore]], Awaitable[None]]


@pytest.mark.parametrize("check", contract.CHECKS, ids=lambda c: c.__name__)
async def test_sqlite_gateway_store_keeps_the_contract(check: Check, tmp_path: Path) -> None:
    path = tmp_path / "gateway" / "kelder-idva.sqlite"
    await check(lambda: SqliteGatewayStore(path))


def test_cursors_are_opaque_and_checked() -> None:
    contract.cursors_are_opaque_and_checked()


async def test_the_store_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "gw" / "a.sqlite"
    store = SqliteGatewayStore(path)
    await store.open()
    await store.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700


async def test_an_older_store_file_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "gateway" / "old.sqlite"
    path.parent.mkdir(mode=0o700)
    with sqlite3.connect(path) as conn:
        conn.execute(contract.OLD_SIGNED_TABLE)
        conn.execute(*contract.OLD_SIGNED_ROW)
    conn.close()
    await contract.an_older_database_is_upgraded(lambda: SqliteGatewayStore(path))
