"""``delivered`` through the real broker, the real Kafka and a real gateway (issue 18).

A disclosure the gateway has durably stored reaches the audit log as exactly one ``delivered``
event (ids and times only), from the gateway's signed ``Delivery`` receipt, which the broker's
receipts loop verified; the gateway restarting adds none.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from broker.audit.index import Query
from broker.config import Settings
from gateway.settings import GatewaySettings
from gateway.sqlite import SqliteGatewayStore
from schemas.audit import AuditEvent, AuditEventType
from tests.conftest import FederationKeys
from tests.gateway_support import running_gateway
from tests.integration import test_gateway as base
from tests.integration.test_consumer_faults import FollowingAuditor
from tests.integration.test_gateway import AGENCY, eventually, send
from tests.kafka_support import read_committed
from tests.samples import personal_values, sample

# The gateway tests' fixtures: Kafka's topics, a broker auditing receipts, the TLS files.
settings, broker, gw_files = base.settings, base.broker, base.gw_files


async def test_a_disclosure_stored_by_the_gateway_is_delivered_once_in_the_audit_log(
    settings: Settings,
    broker: str,
    federation_keys: FederationKeys,
    gw_files: dict[str, Any],
    tmp_path: Path,
) -> None:
    gw = GatewaySettings(**gw_files)
    (rid,) = await send(federation_keys, broker)
    path = tmp_path / "gw.sqlite"
    async with FollowingAuditor(settings, federation_keys, tmp_path / "audit") as auditor:

        async def delivered() -> list[Any]:
            return await auditor.call(
                auditor.log.query, Query(types=(AuditEventType.DELIVERED,), message_id=rid)
            )

        async with running_gateway(
            settings, gw, AGENCY, federation_keys, store=SqliteGatewayStore(path)
        ) as running:
            await eventually(lambda: running.service.stored == 1, "the disclosure stored")
            await eventually(delivered, "the delivery in the audit log")
            assert running.service.receipts_sent == 1
        # The gateway again, over the same store: nothing new is stored or owed.
        async with running_gateway(
            settings, gw, AGENCY, federation_keys, store=SqliteGatewayStore(path)
        ) as again:
            await asyncio.sleep(2.0)  # anything repeated would arrive by now
            assert again.service.stored == 0
            assert await again.service.store.pending_receipts(10) == ()
        (entry,) = await delivered()
    event = entry.event
    assert (event.message_id, event.recipient) == (rid, AGENCY)
    assert set(event.jsonable()) == {"format", "event_id", "type", "at", "message_id", "recipient"}
    # On the audit topic itself: one delivered record for this referral, and no personal data.
    records = await read_committed(
        settings.kafka_bootstrap_servers, f"{settings.topic_prefix}.audit"
    )
    mine = [
        AuditEvent.from_canonical(r.value)
        for r in records
        if dict(r.headers).get("cairn-event-type") == b"delivered"
        and AuditEvent.from_canonical(r.value).message_id == rid
    ]
    assert len(mine) == 1
    text = json.dumps(mine[0].jsonable())
    assert not any(value in text for value in personal_values(sample()))
