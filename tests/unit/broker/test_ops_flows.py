"""The ops view's flows come from the shared state store: two brokers, one picture."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from adapters.client import ReferralClient
from broker.config import Settings
from broker.kafka.transport import MemoryTransport, Record
from broker.receipts import audit_record
from broker.state import SqliteStore
from broker.web.app import create_app
from broker.web.dashboard import facts_of
from schemas.audit import AuditEventType, delivered
from schemas.federation import Federation
from schemas.receipt import AcknowledgementStatus
from tests.conftest import FederationKeys
from tests.samples import sample


@contextlib.asynccontextmanager
async def broker_with_ops_view(
    settings: Settings, federation: Federation, keys: FederationKeys, store_path: Path
) -> AsyncIterator[str]:
    """A broker with the ops view whose state is the SQLite file at ``store_path``."""
    app = create_app(
        settings,
        federation,
        MemoryTransport(),
        keys.trust(),
        store=SqliteStore(store_path),
        dashboard=True,
    )
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(ssl=keys.server_ssl())
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


async def ops(url: str, keys: FederationKeys) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(ssl=keys.client_ssl("kelder-police"))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(f"{url}/ui/api/ops?window_s=3600") as response,
    ):
        assert response.status == 200
        body: dict[str, Any] = await response.json()
        return body


async def test_two_brokers_on_one_store_show_the_same_flows(
    settings: Settings, federation: Federation, federation_keys: FederationKeys, tmp_path: Path
) -> None:
    """A referral accepted by one broker shows in the other broker's ops view (and its own),
    with the same flows and unacknowledged counts: the facts live in the shared store."""
    path = tmp_path / "state.sqlite"
    async with (
        broker_with_ops_view(settings, federation, federation_keys, path) as first,
        broker_with_ops_view(settings, federation, federation_keys, path) as second,
    ):
        async with ReferralClient(
            first,
            ssl_context=federation_keys.client_ssl("kelder-police"),
            signing_key=federation_keys.trust("kelder-police").signing_key(),
        ) as client:
            receipt = await client.submit(json.dumps(sample()).encode())
        queued = sorted(r.agency for r in receipt.recipients if r.status.value == "queued")
        assert queued
        seen_first, seen_second = (
            await ops(first, federation_keys),
            await ops(second, federation_keys),
        )
        assert seen_first["flows"] == seen_second["flows"]
        assert sorted(f["recipient"] for f in seen_second["flows"] if f["disclosed"]) == queued
        assert {a["agency"]: a["unacknowledged"] for a in seen_second["agencies"]} == {
            a["agency"]: a["unacknowledged"] for a in seen_first["agencies"]
        }
        assert sum(a["unacknowledged"] for a in seen_second["agencies"]) == len(queued)


def test_facts_come_from_counted_audit_events_named_by_header_or_parsed() -> None:
    """facts_of keeps disclosed, refused and acknowledged events: those whose type header
    names an uncounted type are skipped unread, a record without the header is parsed."""
    message_id = uuid.UUID(sample()["header"]["referral_id"])
    at = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
    event = delivered(message_id, recipient="kelder-idva", at=at)  # not counted: no fact
    counted = event.model_copy(
        update={"type": AuditEventType.ACKNOWLEDGED, "status": AcknowledgementStatus.FILED}
    )
    with_header = audit_record("unit", counted)
    bare = Record(topic="unit.audit", key=with_header.key, value=with_header.value, headers=())
    named_uncounted = Record(
        topic="unit.audit",
        key=with_header.key,
        value=with_header.value,
        headers=(("cairn-event-type", b"received"),),
    )
    facts = facts_of([with_header, bare, named_uncounted, audit_record("unit", event)])
    assert [(f.type, f.message_id, f.recipient) for f in facts] == [
        ("acknowledged", str(message_id), "kelder-idva")
    ] * 2
