"""SqliteStore holds to the StateStore contract, across instances and across processes."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import sqlite3
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from broker.config import Settings
from broker.state import (
    ClaimState,
    Delivery,
    PostgresStore,
    Seen,
    SqliteStore,
    StateStore,
    store_for,
)
from schemas.errors import StateUnavailable
from tests.contracts import state as contract

CONTRACT = [
    contract.a_new_id_is_claimed_then_published_once,
    contract.a_pending_claim_is_busy_while_its_owner_beats_and_stale_after,
    contract.a_claim_older_than_the_lease_is_stale_though_its_owner_beats,
    contract.take_over_moves_a_pending_claim_once,
    contract.a_lease_has_one_holder_until_it_runs_out,
    contract.twenty_concurrent_asks_for_a_free_lease_make_one_holder,
    contract.published_is_one_batch_keeps_the_first_receipt_and_learns_missing_ids,
    contract.release_forgets_only_our_own_pending_claims,
    contract.heartbeats_name_the_holder_and_its_last_beat,
    contract.prune_forgets_what_is_older_than_the_window,
    contract.an_acknowledgement_is_remembered_once,
    contract.overdue_deliveries_are_counted_late_or_never_and_found_one_by_one,
    contract.deliveries_keep_their_deadlines_and_are_marked_overdue_once,
    contract.flow_facts_are_read_by_window_newest_first_with_their_acknowledgement,
    contract.times_come_back_timezone_aware_in_utc,
    contract.twenty_concurrent_claims_from_two_brokers_make_one_new,
]


@pytest.mark.parametrize("check", CONTRACT, ids=[c.__name__ for c in CONTRACT])
async def test_sqlite_file_holds_to_the_state_contract(
    check: Callable[[contract.StoreFactory], Awaitable[None]], tmp_path: Path
) -> None:
    """Every contract check passes on one SQLite file opened by separate store instances."""
    await check(lambda: SqliteStore(tmp_path / "state.sqlite", busy_timeout_s=10.0))


async def test_in_memory_store_works_without_opening() -> None:
    """SqliteStore(None) answers at once (unit tests), opening itself on first use."""
    store = SqliteStore(None)
    assert (await store.claim("r", "d", "me", contract.T0, contract.LEASE)).state is ClaimState.NEW
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(RuntimeError):
        await store.lookup("r")


def _claim_in_process(args: tuple[str, str, str]) -> str:
    path, referral_id, owner = args
    return asyncio.run(
        contract.run_claim(lambda: SqliteStore(Path(path), busy_timeout_s=30.0), referral_id, owner)
    )


def test_twenty_claims_from_four_processes_make_one_new(tmp_path: Path) -> None:
    """Processes racing for one id on one file (BEGIN IMMEDIATE, busy timeout): one NEW, and
    every process opening the fresh file at once migrates it without error."""
    path = str(tmp_path / "state.sqlite")
    jobs = [(path, contract.rid(40), f"owner-{n}") for n in range(20)]
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        states = pool.map(_claim_in_process, jobs, chunksize=1)
    assert states.count(ClaimState.NEW.value) == 1, states
    assert set(states) <= {ClaimState.NEW.value, ClaimState.STALE.value}


async def test_a_legacy_replay_file_is_imported_once(tmp_path: Path) -> None:
    """The first open of state.sqlite takes ids, acknowledgements and deliveries from the
    pre-issue-13 replay.sqlite beside it, so no deadline is lost in the upgrade."""
    legacy = sqlite3.connect(tmp_path / "replay.sqlite")
    legacy.executescript(
        """
        CREATE TABLE seen (referral_id TEXT PRIMARY KEY, digest TEXT, receipt TEXT,
                           first_seen TEXT);
        CREATE TABLE acks (referral_id TEXT, agency TEXT, acked_at TEXT,
                           PRIMARY KEY (referral_id, agency));
        CREATE TABLE deliveries (referral_id TEXT, agency TEXT, purpose TEXT, sender TEXT,
                                 delivered_at TEXT, due_at TEXT, overdue_at TEXT,
                                 PRIMARY KEY (referral_id, agency));
        INSERT INTO seen VALUES ('r1', 'd1', '{}', '2026-11-26T06:00:00+00:00');
        INSERT INTO acks VALUES ('r1', 'kelder-idva', '2026-11-26T07:00:00+00:00');
        INSERT INTO deliveries VALUES ('r1', 'kelder-idva', 'IDVA', 'kelder-police',
            '2026-11-26T06:00:00+00:00', '2026-11-27T06:00:00+00:00', NULL);
        """
    )
    legacy.commit()
    legacy.close()
    store = SqliteStore(tmp_path / "state.sqlite")
    assert await store.lookup("r1") == Seen("d1", "{}")
    assert await store.acknowledged("r1", "kelder-idva")
    (d,) = await store.open_deliveries()
    assert d == Delivery(
        "r1", "kelder-idva", "IDVA", "kelder-police", contract.T0, contract.T0 + timedelta(days=1)
    )
    await store.close()
    again = SqliteStore(tmp_path / "state.sqlite")  # already migrated: nothing imported twice
    assert len(await again.deliveries()) == 1
    await again.close()


async def test_an_unusable_file_is_a_typed_503_error(tmp_path: Path) -> None:
    """A state folder that cannot hold the file gives StateUnavailable, never a raw sqlite3
    error (the web layer answers 503)."""
    (tmp_path / "broker").write_text("a file where the folder should be")
    store = SqliteStore(tmp_path / "broker" / "state.sqlite")
    with pytest.raises((StateUnavailable, OSError)):
        await store.open()
    missing = SqliteStore(tmp_path / "absent.sqlite", read_only=True)
    with pytest.raises(StateUnavailable, match="does not exist"):
        await missing.open()
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"not a database at all" * 100)
    with pytest.raises(StateUnavailable, match="DatabaseError"):
        await SqliteStore(corrupt).open()


def test_store_for_picks_sqlite_by_default_and_postgres_from_the_url(tmp_path: Path) -> None:
    """No CAIRN_DATABASE_URL: SQLite under the state folder; with one, PostgreSQL, described
    without its password."""
    default = store_for(Settings(state_dir=tmp_path))
    assert isinstance(default, SqliteStore)
    assert default.describe() == f"sqlite {tmp_path / 'broker' / 'state.sqlite'}"
    url = "postgresql://cairn:s3cret-pw@db.example:6543/cairn_state"
    pg: StateStore = store_for(Settings(state_dir=tmp_path, database_url=url))  # type: ignore[arg-type]
    assert isinstance(pg, PostgresStore)
    assert pg.describe() == "postgresql cairn@db.example:6543/cairn_state"
    secret = tmp_path / "db-url"
    secret.write_text(url + "\n")
    from_file = store_for(Settings(state_dir=tmp_path, database_url_file=secret))
    assert from_file.describe() == pg.describe()
    with pytest.raises(StateUnavailable, match="set only one"):
        store_for(Settings(state_dir=tmp_path, database_url=url, database_url_file=secret))  # type: ignore[arg-type]
    with pytest.raises(StateUnavailable, match="CAIRN_DATABASE_URL_FILE"):
        store_for(Settings(state_dir=tmp_path, database_url_file=tmp_path / "none"))


@pytest.mark.parametrize(
    "url",
    ["mysql://cairn:s3cret-pw@host/db", "host=db password=s3cret-pw", "postgresql://[bad"],
)
def test_a_bad_database_url_names_the_setting_and_never_the_password(url: str) -> None:
    """A URL that is not PostgreSQL's is refused when the store is made, with a message that
    names CAIRN_DATABASE_URL and repeats no part of the URL."""
    with pytest.raises(StateUnavailable, match="CAIRN_DATABASE_URL") as raised:
        PostgresStore(url)
    assert "s3cret" not in str(raised.value)


async def test_an_unreachable_database_is_a_typed_error_without_the_password() -> None:
    """Nothing listening: open fails within the timeout with StateUnavailable, naming the
    setting and user@host:port/db, never the password."""
    from tests.pg_support import free_port

    url = f"postgresql://cairn:s3cret-pw@127.0.0.1:{free_port()}/cairn"
    store = PostgresStore(url, timeout_s=1.0)
    with pytest.raises(StateUnavailable) as raised:
        await asyncio.wait_for(store.open(), 10)
    message = str(raised.value)
    assert "CAIRN_DATABASE_URL" in message
    assert "cairn@127.0.0.1" in message
    assert "s3cret" not in message
    await store.close()


async def test_concurrent_writes_share_a_transaction_and_a_failing_one_is_undone_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Claims, published and deliveries queued together commit in one transaction (fewer
    commits than writes); one write that fails mid-way gets its own 503 and leaves nothing
    behind, while the writes beside it commit; one id claimed by many owners at once: one NEW."""
    store = SqliteStore(tmp_path / "state.sqlite")
    await store.open()
    batches: list[int] = []
    commit_batch = store._commit_batch

    def counted(batch: list[Any]) -> Any:
        batches.append(len(batch))
        return commit_batch(batch)

    monkeypatch.setattr(store, "_commit_batch", counted)

    def half_then_fail(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO claims VALUES ('half', 'd', NULL, 'x', 'now', 'now')")
        db.execute("INSERT INTO claims VALUES ('bad', NULL, NULL, 'x', 'now', 'now')")  # NOT NULL

    ids = [contract.rid(n) for n in range(20)]
    results = await asyncio.gather(
        *(store.claim(r, "d", contract.A, contract.T0, contract.LEASE) for r in ids),
        store._write(half_then_fail),
        *(
            store.claim(contract.rid(99), "d", f"owner-{n}", contract.T0, contract.LEASE)
            for n in range(10)
        ),
        return_exceptions=True,
    )
    claims, failed, same = results[:20], results[20], results[21:]
    assert all(c.state is ClaimState.NEW for c in claims)  # type: ignore[union-attr]
    assert isinstance(failed, StateUnavailable)
    assert [c.state for c in same].count(ClaimState.NEW) == 1  # type: ignore[union-attr]
    assert sum(batches) == 31
    assert len(batches) < 31  # group-committed: fewer transactions than writes
    with contextlib.closing(sqlite3.connect(tmp_path / "state.sqlite")) as db:
        left = db.execute("SELECT COUNT(*) FROM claims WHERE owner = 'x'").fetchone()[0]
    assert left == 0  # the failed write's first insert was rolled back with it
    await store.published([(r, "d", "{}") for r in ids], contract.A, contract.T0)
    assert all(await asyncio.gather(*(store.lookup(r) for r in ids)))
    await store.close()
