"""The StateStore contract, run against SqliteStore (unit) and PostgresStore (integration).

Each check takes ``open_store``: a factory of fresh, unopened store instances over the same
backing database (a file, or one PostgreSQL database), each with connections of its own, so
two instances stand for two brokers. Every check closes what it opens.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Protocol, TypeVar

import pytest

from broker.state import (
    OVERDUE_LATE,
    OVERDUE_NEVER,
    ClaimState,
    Delivery,
    Fact,
    Seen,
    StateStore,
)

StoreFactory = Callable[[], StateStore]

T0 = datetime(2026, 11, 26, 6, 0, tzinfo=UTC)
LEASE = timedelta(seconds=30)
A, B, C = "cairn-broker.host-a.0", "cairn-broker.host-b.0", "cairn-broker.host-c.0"


class Opens(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...


S = TypeVar("S", bound=Opens)


@contextlib.asynccontextmanager
async def stores(open_store: Callable[[], S], n: int = 1) -> AsyncIterator[list[S]]:
    """``n`` fresh stores from ``open_store``, opened, and closed after (any store with
    ``open``/``close``: the broker's state stores, the gateway's)."""
    opened = [open_store() for _ in range(n)]
    try:
        for store in opened:
            await store.open()
        yield opened
    finally:
        for store in opened:
            await store.close()


def rid(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


async def a_new_id_is_claimed_then_published_once(open_store: StoreFactory) -> None:
    async with stores(open_store) as (store,):
        first = await store.claim(rid(1), "d1", A, T0, LEASE)
        assert (first.state, first.owner, first.seen) == (ClaimState.NEW, A, None)
        assert await store.lookup(rid(1)) is None  # pending is not published
        await store.published([(rid(1), "d1", '{"r": 1}')], A, T0)
        assert await store.lookup(rid(1)) == Seen("d1", '{"r": 1}')
        again = await store.claim(rid(1), "d2", B, T0, LEASE)
        assert again.state is ClaimState.PUBLISHED
        assert again.seen == Seen("d1", '{"r": 1}')
        assert again.owner == A


async def a_pending_claim_is_busy_while_its_owner_beats_and_stale_after(
    open_store: StoreFactory,
) -> None:
    async with stores(open_store, 2) as (a, b):
        await a.heartbeat(A, "tx-a", T0)
        assert (await a.claim(rid(2), "d", A, T0, LEASE)).state is ClaimState.NEW
        busy = await b.claim(rid(2), "d", B, T0 + LEASE, LEASE)
        assert (busy.state, busy.owner, busy.digest) == (ClaimState.BUSY, A, "d")
        stale = await b.claim(rid(2), "d", B, T0 + LEASE + timedelta(microseconds=1), LEASE)
        assert (stale.state, stale.owner) == (ClaimState.STALE, A)
        # Our own pending row is a leftover of our earlier life.
        assert (await a.claim(rid(2), "d", A, T0, LEASE)).state is ClaimState.STALE
        # An owner that never beat is stale at once.
        assert (await b.claim(rid(3), "d", C, T0, LEASE)).state is ClaimState.NEW
        assert (await a.claim(rid(3), "d", A, T0, LEASE)).state is ClaimState.STALE


async def a_claim_older_than_the_lease_is_stale_though_its_owner_beats(
    open_store: StoreFactory,
) -> None:
    """An owner that lives on but never heard whether Kafka committed its claim's records
    (no publish outlasts the lease) leaves it to be settled by whoever asks next."""
    async with stores(open_store, 2) as (a, b):
        await a.heartbeat(A, "tx-a", T0)
        assert (await a.claim(rid(12), "d", A, T0, LEASE)).state is ClaimState.NEW
        later = T0 + LEASE + timedelta(seconds=1)
        await a.heartbeat(A, "tx-a", later)
        stale = await b.claim(rid(12), "d", B, later, LEASE)
        assert (stale.state, stale.owner) == (ClaimState.STALE, A)


async def take_over_moves_a_pending_claim_once(open_store: StoreFactory) -> None:
    async with stores(open_store) as (store,):
        await store.claim(rid(4), "d", A, T0, LEASE)
        assert await store.take_over(rid(4), A, B, T0, digest="d-new")
        assert not await store.take_over(rid(4), A, C, T0)  # B won
        found = await store.claim(rid(4), "x", C, T0, LEASE)
        assert (found.owner, found.digest) == (B, "d-new")
        await store.published([(rid(4), "d-new", "{}")], B, T0)
        assert not await store.take_over(rid(4), B, C, T0)  # published is final


async def published_is_one_batch_keeps_the_first_receipt_and_learns_missing_ids(
    open_store: StoreFactory,
) -> None:
    async with stores(open_store) as (store,):
        await store.claim(rid(5), "d5", A, T0, LEASE)
        await store.claim(rid(6), "d6", B, T0, LEASE)
        await store.published(
            [(rid(5), "d5", "r5"), (rid(6), "d6", "r6"), (rid(7), "d7", "r7")], A, T0
        )
        assert await store.lookup(rid(5)) == Seen("d5", "r5")
        assert await store.lookup(rid(6)) == Seen("d6", "r6")  # another's pending: Kafka said so
        assert await store.lookup(rid(7)) == Seen("d7", "r7")  # learnt from the ledger
        await store.published([(rid(5), "other", "later")], B, T0)
        assert await store.lookup(rid(5)) == Seen("d5", "r5")
        await store.published([], A, T0)


async def release_forgets_only_our_own_pending_claims(open_store: StoreFactory) -> None:
    async with stores(open_store) as (store,):
        await store.claim(rid(8), "d", A, T0, LEASE)
        await store.claim(rid(9), "d", B, T0, LEASE)
        await store.claim(rid(10), "d", A, T0, LEASE)
        await store.published([(rid(10), "d", "r")], A, T0)
        await store.release([rid(8), rid(9), rid(10)], A)
        assert (await store.claim(rid(8), "d", C, T0, LEASE)).state is ClaimState.NEW
        assert (await store.claim(rid(9), "d", C, T0, LEASE)).owner == B
        assert await store.lookup(rid(10)) == Seen("d", "r")
        await store.release([], A)


async def heartbeats_name_the_holder_and_its_last_beat(open_store: StoreFactory) -> None:
    async with stores(open_store, 2) as (a, b):
        assert await b.holder(A) is None
        await a.heartbeat(A, "tx-a.0", T0)
        await a.heartbeat(A, "tx-a.1", T0 + timedelta(seconds=5))
        assert await b.holder(A) == ("tx-a.1", T0 + timedelta(seconds=5))


async def a_lease_has_one_holder_until_it_runs_out(open_store: StoreFactory) -> None:
    ttl = timedelta(seconds=60)
    async with stores(open_store, 2) as (a, b):
        assert await a.lease("overdue-sweep", A, T0, ttl)
        assert not await b.lease("overdue-sweep", B, T0 + timedelta(seconds=59), ttl)
        assert await b.lease("other-work", B, T0, ttl)  # leases are by name
        # The holder renews it; the other still waits for the renewed end.
        assert await a.lease("overdue-sweep", A, T0 + timedelta(seconds=30), ttl)
        assert not await b.lease("overdue-sweep", B, T0 + timedelta(seconds=89), ttl)
        # Run out (the holder stopped renewing): the next asker has it, and the old holder not.
        assert await b.lease("overdue-sweep", B, T0 + timedelta(seconds=90), ttl)
        assert not await a.lease("overdue-sweep", A, T0 + timedelta(seconds=91), ttl)


async def twenty_concurrent_asks_for_a_free_lease_make_one_holder(
    open_store: StoreFactory,
) -> None:
    async with stores(open_store, 2) as (a, b):
        held = await asyncio.gather(
            *(
                (a if n % 2 else b).lease("overdue-sweep", f"broker-{n}", T0, LEASE)
                for n in range(20)
            )
        )
        assert held.count(True) == 1, held


async def prune_forgets_what_is_older_than_the_window(open_store: StoreFactory) -> None:
    window = timedelta(days=30)
    async with stores(open_store) as (store,):
        await store.claim(rid(11), "d", A, T0 - window - timedelta(seconds=1), LEASE)
        await store.published([(rid(12), "d", "r")], A, T0 - window - timedelta(seconds=1))
        await store.claim(rid(13), "d", A, T0 - window, LEASE)
        await store.record_facts([Fact("disclosed", T0 - window - timedelta(days=1), rid(11), "x")])
        assert await store.prune(T0, window) == 2
        assert (await store.claim(rid(11), "d", B, T0, LEASE)).state is ClaimState.NEW
        assert await store.lookup(rid(12)) is None
        assert (await store.claim(rid(13), "d", B, T0, LEASE)).owner == A
        assert await store.facts(T0 - 2 * window, 10) == []


async def an_acknowledgement_is_remembered_once(open_store: StoreFactory) -> None:
    async with stores(open_store, 2) as (a, b):
        assert not await a.acknowledged(rid(14), "kelder-idva")
        assert await a.remember_ack(rid(14), "kelder-idva", T0)
        assert not await b.remember_ack(rid(14), "kelder-idva", T0 + timedelta(hours=1))
        assert await b.acknowledged(rid(14), "kelder-idva")
        assert await b.remember_ack(rid(15), "kelder-marac", T0)
        assert await a.acks() == {
            (rid(14), "kelder-idva"): T0,
            (rid(15), "kelder-marac"): T0,
        }
        assert await a.acks([rid(15), rid(16)]) == {(rid(15), "kelder-marac"): T0}
        assert await a.acks([]) == {}


async def deliveries_keep_their_deadlines_and_are_marked_overdue_once(
    open_store: StoreFactory,
) -> None:
    due = T0 + timedelta(hours=1)
    first = Delivery(rid(17), "kelder-marac", "MARAC", "kelder-police", T0, due)
    second = Delivery(rid(18), "kelder-idva", "IDVA", "kelder-police", T0 + timedelta(seconds=1))
    third = Delivery(rid(19), "kelder-marac", "MARAC", "kelder-police", T0, T0 + timedelta(hours=2))
    async with stores(open_store, 2) as (a, b):
        await a.record_deliveries([first, second, third])
        await b.record_deliveries([first])  # a repeat is ignored
        await a.record_deliveries([])
        assert await b.deliveries() == [first, third, second]
        assert await b.was_delivered(rid(17), "kelder-marac")
        assert not await b.was_delivered(rid(17), "kelder-idva")
        assert not await a.was_delivered(rid(20), "kelder-marac")
        assert await b.open_deliveries() == [first, third]
        assert await b.delivery_counts() == {
            ("kelder-police", "kelder-marac", "MARAC"): 2,
            ("kelder-police", "kelder-idva", "IDVA"): 1,
        }
        late = due + timedelta(minutes=1)
        assert await a.mark_overdue(rid(17), "kelder-marac", late)
        assert not await b.mark_overdue(rid(17), "kelder-marac", late)
        assert await b.mark_overdue(rid(19), "kelder-marac", late + timedelta(hours=1))
        assert await b.open_deliveries() == []
        marked = await a.overdue()
        assert [d.referral_id for d in marked] == [rid(19), rid(17)]
        assert marked[1].overdue_at == late
        assert [d.referral_id for d in await a.overdue(1)] == [rid(19)]


async def overdue_deliveries_are_counted_late_or_never_and_found_one_by_one(
    open_store: StoreFactory,
) -> None:
    """``overdue_counts`` splits the deliveries marked overdue by whether the recipient has
    acknowledged them since (late) or not (never); ``overdue`` lists each with the time of
    its late acknowledgement; ``delivery`` finds one delivery. A delivery acknowledged but
    never marked overdue (in time) is in neither."""
    due = T0 + timedelta(hours=1)
    marac = [
        Delivery(rid(n), "kelder-marac", "MARAC", "kelder-police", T0, due) for n in (40, 41, 42)
    ]
    idva = Delivery(rid(43), "kelder-idva", "IDVA", "kelder-police", T0, due)
    async with stores(open_store, 2) as (a, b):
        assert await a.overdue_counts() == {}
        await a.record_deliveries([*marac, idva])
        assert await b.delivery(rid(40), "kelder-marac") == marac[0]
        assert await b.delivery(rid(40), "kelder-idva") is None
        await a.remember_ack(rid(40), "kelder-marac", due - timedelta(minutes=5))  # in time
        for d in (marac[1], marac[2], idva):
            assert await a.mark_overdue(d.referral_id, d.agency, due)
        late = due + timedelta(minutes=30)
        await b.remember_ack(rid(41), "kelder-marac", late)
        assert await b.overdue_counts() == {
            ("MARAC", "kelder-marac", OVERDUE_LATE): 1,
            ("MARAC", "kelder-marac", OVERDUE_NEVER): 1,
            ("IDVA", "kelder-idva", OVERDUE_NEVER): 1,
        }
        listed = {d.referral_id: d.acknowledged_at for d in await a.overdue()}
        assert listed == {rid(41): late, rid(42): None, rid(43): None}


async def flow_facts_are_read_by_window_newest_first_with_their_acknowledgement(
    open_store: StoreFactory,
) -> None:
    def fact(kind: str, minutes: int, n: int, recipient: str = "kelder-idva") -> Fact:
        return Fact(
            kind,
            T0 + timedelta(minutes=minutes),
            rid(n),
            recipient,
            "kelder-police",
            "IDVA",
            T0 + timedelta(days=1) if kind == "disclosed" else None,
        )

    async with stores(open_store, 2) as (a, b):
        await a.record_facts(
            [
                fact("disclosed", 0, 20),
                fact("refused", 1, 20, "kelder-school"),
                fact("disclosed", 2, 21),
            ]
        )
        await b.record_facts([fact("acknowledged", 90, 20)])  # later, by another broker
        await b.record_facts([])
        got = await b.facts(T0, 10)
        assert [(f.type, f.message_id, f.acknowledged) for f in got] == [
            ("disclosed", rid(21), False),
            ("refused", rid(20), False),
            ("disclosed", rid(20), True),
        ]
        assert got[2] == dataclasses.replace(fact("disclosed", 0, 20), acknowledged=True)
        assert [f.message_id for f in await a.facts(T0 + timedelta(minutes=1), 10)] == [
            rid(21),
            rid(20),
        ]
        assert len(await a.facts(T0, 1)) == 1


async def times_come_back_timezone_aware_in_utc(open_store: StoreFactory) -> None:
    local = datetime(2026, 11, 26, 7, 0, 0, 123456, tzinfo=timezone(timedelta(hours=1)))
    async with stores(open_store) as (store,):
        await store.heartbeat(A, "tx", local)
        holder = await store.holder(A)
        assert holder is not None
        assert holder[1] == local
        assert holder[1].utcoffset() == timedelta(0)
        with pytest.raises(TypeError):
            await store.heartbeat(A, "tx", datetime(2026, 11, 26, 7, 0))  # naive: refused


async def twenty_concurrent_claims_from_two_brokers_make_one_new(open_store: StoreFactory) -> None:
    async with stores(open_store, 2) as (a, b):
        for store, owner in ((a, A), (b, B)):
            await store.heartbeat(owner, owner, T0)
        results = await asyncio.gather(
            *(
                (a if n % 2 else b).claim(rid(30), f"d{n % 2}", A if n % 2 else B, T0, LEASE)
                for n in range(20)
            )
        )
        states = [r.state for r in results]
        assert states.count(ClaimState.NEW) == 1, states
        winner = next(r.owner for r in results if r.state is ClaimState.NEW)
        # The loser's view: busy (the winner beats); the winner's own later view: stale (itself).
        assert all(r.owner == winner for r in results)
        acks = await asyncio.gather(
            *((a if n % 2 else b).remember_ack(rid(30), "kelder-idva", T0) for n in range(20))
        )
        assert acks.count(True) == 1


async def run_claim(open_store: StoreFactory, referral_id: str, owner: str) -> str:
    """One claim from a store of its own (for a process of its own); the state's value."""
    store = open_store()
    try:
        return (await store.claim(referral_id, "d", owner, T0, LEASE)).state.value
    finally:
        await store.close()
