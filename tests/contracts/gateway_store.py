"""The GatewayStore contract, run against SqliteGatewayStore (unit) and PostgresGatewayStore
(integration). Each check takes ``open_store``: a factory of fresh, unopened stores over the
same database, so two instances stand for two gateway processes (or one restarted)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import pytest

from gateway.store import (
    Action,
    GatewayStore,
    NewDisclosure,
    ViewRecord,
    decode_cursor,
    encode_cursor,
)
from schemas.errors import InputError
from tests.contracts.state import stores

StoreFactory = Callable[[], GatewayStore]

T0 = datetime(2026, 11, 26, 6, 0, tzinfo=UTC)


def rid(n: int) -> UUID:
    return UUID(f"00000000-0000-4000-8000-{n:012d}")


def new(
    n: int, *, at: datetime = T0, keep: timedelta | None = None, body: str = ""
) -> NewDisclosure:
    return NewDisclosure(
        referral_id=rid(n),
        sender="kelder-police",
        purpose="MARAC",
        kind="referral",
        body=body or f'{{"referral_id": "{rid(n)}", "n": {n}}}',
        received_at=at,
        delete_after=None if keep is None else at + keep,
        source=f"t.deliver.kelder-idva:0:{n}",
    )


async def a_disclosure_is_stored_once_whoever_delivers_it_again(open_store: StoreFactory) -> None:
    async with stores(open_store, 2) as (a, b):
        assert await a.put(new(1), webhook=True) is True
        assert await a.put(new(1), webhook=True) is False
        assert await b.put(new(1, body='{"other": 1}'), webhook=True) is False
        stored = await b.get(rid(1))
        assert stored is not None
        assert stored.body == new(1).body
        page = await b.page(0, 10)
        assert [s.referral_id for s in page.items] == [rid(1)]
        assert await a.webhook_state(rid(1)) == (0, False, False)
        assert await a.get(rid(2)) is None


async def pages_follow_the_cursor_in_order_without_gaps(open_store: StoreFactory) -> None:
    async with stores(open_store) as (store,):
        for n in range(1, 8):
            await store.put(new(n), webhook=False)
        seen: list[UUID] = []
        cursor = 0
        for _ in range(10):
            page = await store.page(cursor, 3)
            seen.extend(s.referral_id for s in page.items)
            cursor = page.last_seq
            if not page.more:
                break
        assert seen == [rid(n) for n in range(1, 8)]
        assert (await store.page(cursor, 3)).items == ()
        await store.put(new(8), webhook=False)
        assert [s.referral_id for s in (await store.page(cursor, 3)).items] == [rid(8)]


async def acknowledging_is_once_and_queues_its_receipt(open_store: StoreFactory) -> None:
    async with stores(open_store) as (store,):
        await store.put(new(1), webhook=False)
        await store.put(new(2), webhook=False)
        assert await store.acknowledge(rid(1), "filed", T0, b"tok.en.1") is True
        assert await store.acknowledge(rid(1), "filed", T0, b"tok.en.2") is False
        assert await store.acknowledge(rid(9), "filed", T0, b"tok.en.3") is False
        stored = await store.get(rid(1))
        assert stored is not None
        assert stored.ack_status == "filed"
        assert stored.acknowledged_at == T0
        new_only = await store.page(0, 10, unacknowledged=True)
        assert [s.referral_id for s in new_only.items] == [rid(2)]
        pending = await store.pending_receipts(10)
        assert [(p.referral_id, p.kind, p.token) for p in pending] == [
            (rid(1), "acknowledged", b"tok.en.1")
        ]
        await store.receipts_sent([pending[0].id], T0)
        assert await store.pending_receipts(10) == ()


async def every_view_is_kept_and_queued(open_store: StoreFactory) -> None:
    async with stores(open_store) as (store,):
        await store.put(new(1), webhook=False)
        views = [
            ViewRecord(uuid4(), rid(1), f"staff:KP-{n}", T0 + timedelta(seconds=n)) for n in (1, 2)
        ]
        for view in views:
            assert await store.record_view(view, f"view.{view.view_id}.x".encode()) is True
        missing = ViewRecord(uuid4(), rid(5), "client:case-system", T0)
        assert await store.record_view(missing, b"a.b.c") is False
        assert await store.views(rid(1)) == tuple(views)
        assert [p.kind for p in await store.pending_receipts(10)] == ["viewed", "viewed"]


async def a_deleted_disclosure_is_gone_and_never_comes_back(open_store: StoreFactory) -> None:
    async with stores(open_store) as (store,):
        await store.put(new(1, keep=timedelta(days=1)), webhook=True)
        await store.put(new(2, keep=timedelta(days=3)), webhook=False)
        await store.put(new(3), webhook=False)  # no end known: never expires here
        due = await store.expired(T0 + timedelta(days=2), 10)
        assert [s.referral_id for s in due] == [rid(1)]
        assert await store.delete(rid(1), T0, "retention-expired", b"del.et.e") is True
        assert await store.delete(rid(1), T0, "retention-expired", b"del.et.e") is False
        assert await store.get(rid(1)) is None
        assert await store.webhook_state(rid(1)) is None
        assert await store.put(new(1), webhook=True) is False  # a redelivery stays deleted
        assert await store.get(rid(1)) is None
        assert [p.kind for p in await store.pending_receipts(10)] == ["deleted"]
        assert [s.referral_id for s in await store.expired(T0 + timedelta(days=9), 10)] == [rid(2)]


async def search_finds_text_in_what_was_received(open_store: StoreFactory) -> None:
    async with stores(open_store) as (store,):
        await store.put(new(1, body='{"victim": "Jane 100% Example_Person"}'), webhook=False)
        await store.put(new(2, body='{"victim": "Someone Else"}'), webhook=False)
        assert [s.referral_id for s in await store.search("jane", 10)] == [rid(1)]
        assert [s.referral_id for s in await store.search("100%", 10)] == [rid(1)]
        assert [s.referral_id for s in await store.search("e_p", 10)] == [rid(1)]
        assert await store.search("%%", 10) == ()  # a literal "%%": in neither
        assert len(await store.search("e", 10)) == 2


async def webhook_jobs_are_retried_until_delivered_across_restarts(
    open_store: StoreFactory,
) -> None:
    async with stores(open_store) as (store,):
        await store.put(new(1), webhook=True)
        await store.put(new(2), webhook=True)
        due = await store.due_webhooks(T0, 10)
        assert {j.referral_id for j in due} == {rid(1), rid(2)}
        later = T0 + timedelta(seconds=30)
        await store.webhook_attempted(rid(1), status=500, at=T0, delivered=False, next_at=later)
        await store.webhook_attempted(rid(2), status=None, at=T0, delivered=False, next_at=None)
        assert await store.due_webhooks(T0, 10) == ()
        assert await store.webhook_state(rid(2)) == (1, False, True)
    async with stores(open_store) as (again,):
        (job,) = await again.due_webhooks(later, 10)
        assert (job.referral_id, job.attempts) == (rid(1), 1)
        await again.webhook_attempted(rid(1), status=204, at=later, delivered=True, next_at=None)
        assert await again.webhook_state(rid(1)) == (2, True, False)
        assert await again.due_webhooks(later + timedelta(days=1), 10) == ()


async def a_persons_read_then_actioned_is_kept_with_its_note(open_store: StoreFactory) -> None:
    """The first acknowledgement carries the person's action (one receipt); a later
    "actioned" is kept beside it (no receipt), each status once; deletion takes the notes."""
    read = Action("read", "staff:KS-1", "Told the class teacher", T0)
    actioned = Action("actioned", "staff:KS-2", "", T0 + timedelta(minutes=5))
    async with stores(open_store, 2) as (store, other):
        await store.put(new(1, keep=timedelta(days=1)), webhook=False)
        assert await store.acknowledge(rid(1), "read", T0, b"ack.read.1", action=read) is True
        assert await other.acknowledge(rid(1), "actioned", T0, b"ack.x.2", action=actioned) is False
        assert await other.add_action(rid(1), actioned) is True
        assert await store.add_action(rid(1), actioned) is False  # each status once
        assert await store.add_action(rid(7), actioned) is False  # not stored
        assert await other.actions(rid(1)) == (read, actioned)
        assert [p.token for p in await store.pending_receipts(10)] == [b"ack.read.1"]
        with pytest.raises(InputError):
            await store.add_action(rid(1), Action("other", "staff:KS-3", "x" * 2001, T0))
        assert await store.delete(rid(1), T0, "retention-expired", b"del.et.e") is True
        assert await store.actions(rid(1)) == ()


async def the_disclosure_as_delivered_and_the_signed_ack_are_kept_until_deleted(
    open_store: StoreFactory,
) -> None:
    """The JWE as delivered, the JWS inside it and the first signed acknowledgement (a copy:
    the outbox's goes once sent), read by another process; deleting the disclosure deletes
    every copy, and a redelivery brings none back."""
    kept = replace(new(1), signed="h.jws.s", delivered="h.k.i.c.t")
    async with stores(open_store, 2) as (store, other):
        assert await store.put(kept, webhook=False) is True
        assert await store.put(new(2), webhook=False) is True  # nothing known of its envelope
        got = await other.delivered(rid(1))
        assert got is not None
        assert (got.jwe, got.jws, got.ack) == ("h.k.i.c.t", "h.jws.s", None)
        assert await other.signed(rid(1)) == "h.jws.s"
        assert await store.acknowledge(rid(1), "filed", T0, b"ack.first.1") is True
        assert await store.acknowledge(rid(1), "read", T0, b"ack.later.2") is False
        assert await store.acknowledge(rid(2), "filed", T0, b"ack.two.2") is True
        (first, second) = await store.pending_receipts(10)
        await store.receipts_sent([first.id, second.id], T0)
        got = await other.delivered(rid(1))
        assert got is not None
        assert (got.jwe, got.jws, got.ack) == ("h.k.i.c.t", "h.jws.s", "ack.first.1")
        two = await other.delivered(rid(2))
        assert two is not None
        assert (two.jwe, two.jws, two.ack) == (None, None, "ack.two.2")
        assert await other.signed(rid(2)) is None
        assert await other.delivered(rid(9)) is None
        for n in (1, 2):
            assert await store.delete(rid(n), T0, "retention-expired", b"del.et.e") is True
            assert await other.delivered(rid(n)) is None
            assert await other.signed(rid(n)) is None
        assert await store.put(kept, webhook=False) is False
        assert await other.delivered(rid(1)) is None


def cursors_are_opaque_and_checked() -> None:
    for seq in (0, 1, 2**40):
        assert decode_cursor(encode_cursor(seq)) == seq
    for bad in ("", "x", "!!!!", encode_cursor(5)[:-2], "A" * 40):
        with pytest.raises(InputError):
            decode_cursor(bad)


CHECKS = (
    a_disclosure_is_stored_once_whoever_delivers_it_again,
    pages_follow_the_cursor_in_order_without_gaps,
    acknowledging_is_once_and_queues_its_receipt,
    a_persons_read_then_actioned_is_kept_with_its_note,
    every_view_is_kept_and_queued,
    a_deleted_disclosure_is_gone_and_never_comes_back,
    search_finds_text_in_what_was_received,
    webhook_jobs_are_retried_until_delivered_across_restarts,
    the_disclosure_as_delivered_and_the_signed_ack_are_kept_until_deleted,
)

#: The ``gw_signed`` table as versions before the JWE and acknowledgement copies made it: a
#: store opening such a database adds the columns and keeps the rows (each backend's test
#: creates it in its own database, then runs ``an_older_database_is_upgraded``).
OLD_SIGNED_TABLE = "CREATE TABLE gw_signed (referral_id TEXT PRIMARY KEY, jws TEXT NOT NULL)"
OLD_SIGNED_ROW = ("INSERT INTO gw_signed (referral_id, jws) VALUES (?, ?)", (str(rid(1)), "o.l.d"))


async def an_older_database_is_upgraded(open_store: StoreFactory) -> None:
    """After ``OLD_SIGNED_TABLE`` and ``OLD_SIGNED_ROW``: the old row reads as before, with no
    JWE or acknowledgement copy, and new disclosures keep theirs."""
    async with stores(open_store) as (store,):
        await store.put(new(1), webhook=False)  # its gw_signed row is the old one
        assert await store.signed(rid(1)) == "o.l.d"
        old = await store.delivered(rid(1))
        assert old is not None
        assert (old.jwe, old.jws, old.ack) == (None, "o.l.d", None)
        assert await store.acknowledge(rid(1), "filed", T0, b"ack.old.1") is True
        old = await store.delivered(rid(1))
        assert old is not None
        assert old.ack == "ack.old.1"
        kept = replace(new(2), signed="n.e.w", delivered="a.b.c.d.e")
        await store.put(kept, webhook=False)
        fresh = await store.delivered(rid(2))
        assert fresh is not None
        assert (fresh.jwe, fresh.jws) == ("a.b.c.d.e", "n.e.w")
    async with stores(open_store) as (again,):  # opening an upgraded database changes nothing
        again_old = await again.delivered(rid(1))
        assert again_old is not None
        assert again_old.ack == "ack.old.1"
