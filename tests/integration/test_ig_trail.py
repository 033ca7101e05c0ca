"""IG searches in the audit log, through real Kafka (issue 18, acceptance 5).

A following auditor (real Kafka, its own log on disk) serves the IG API over real TLS; an IG
officer, with their own certificate issued by the federation CA from their request, searches
by NHS number. The search's ig_search event goes to cairn.audit and comes back through the
auditor's consumer into the log: it names the officer, the reason and the pseudonym, and the
log's files nowhere hold the NHS number typed.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestServer
from aiokafka import AIOKafkaProducer

from broker.audit.index import Query
from broker.audit.service import Auditor, auditor_app, tls_context
from broker.config import Settings
from broker.kafka.transport import kafka_options
from broker.policy.decide import Decision
from broker.receipts import audit_record
from keys import AUDITOR_ID
from schemas.audit import AuditEventType, submission_events
from schemas.pseudonyms import person_pseudonyms
from schemas.referral import Referral
from tests.conftest import FederationKeys
from tests.integration.test_consumer_faults import FollowingAuditor
from tests.samples import sample
from tests.unit.audit.test_ig_trail import _officer_context

NHS = "999 000 0018"  # the victim of referral-high-risk.json (fictional)
REASON = "SAR request ref IG-2026-0142 from the data subject"


async def _until(auditor: Auditor, kind: AuditEventType, count: int, within_s: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        found = await auditor.call(auditor.log.query, Query(types=(kind,)))
        if len(found) >= count:
            return
        assert asyncio.get_running_loop().time() < deadline, f"no {count} {kind.value} events"
        await asyncio.sleep(0.2)


async def test_an_ig_search_reaches_the_log_through_kafka_with_no_identifier_in_clear(
    kafka_settings: Settings, federation_keys: FederationKeys, tmp_path: Path
) -> None:
    """A referral's events on cairn.audit, an officer's search over mutual TLS: the answer
    lists the disclosures; an ig_search event with the officer, reason and pseudonym is
    consumed into the log; a second search lists the first one among the person's events;
    no file of the log holds the NHS number, spaced or not."""
    trust = federation_keys.trust(AUDITOR_ID)
    referral = Referral.model_validate(sample())
    decisions = [
        Decision(r, allowed=True, reasons=("rule:test",)) for r in referral.header.recipients
    ]
    events = submission_events(
        referral, decisions, secret=trust.pseudonym_secret(), at=datetime.now(UTC)
    )
    producer = AIOKafkaProducer(**kafka_options(kafka_settings), acks="all")
    await producer.start()
    try:
        for event in events:
            rec = audit_record(kafka_settings.topic_prefix, event)
            await producer.send_and_wait(
                rec.topic, rec.value, key=rec.key, headers=list(rec.headers)
            )
    finally:
        await producer.stop()

    async with FollowingAuditor(kafka_settings, federation_keys, tmp_path / "audit") as auditor:
        await _until(auditor, AuditEventType.DISCLOSED, 1)
        context = tls_context(federation_keys.store, federation_keys.passphrase)
        server = TestServer(auditor_app(auditor, dashboard=True), host="127.0.0.1")
        await server.start_server(ssl=context)
        officer = _officer_context(federation_keys, tmp_path, "jsmith")
        url = str(server.make_url("/v1/audit/subject"))
        try:
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=officer)
            ) as session:
                async with session.post(url, json={"nhs_number": NHS, "reason": REASON}) as r:
                    assert r.status == 200, await r.text()
                    first = json.loads(await r.text())
                assert first["disclosures"]
                await _until(auditor, AuditEventType.IG_SEARCH, 1)
                async with session.post(url, json={"nhs_number": NHS, "reason": REASON}) as r:
                    assert r.status == 200, await r.text()
                    second = json.loads(await r.text())
        finally:
            await server.close()
        (logged,) = [
            e.event
            for e in await auditor.call(auditor.log.query, Query(types=(AuditEventType.IG_SEARCH,)))
            if str(e.event.event_id) == first["searched"]["audit_event"]
        ]
        assert logged.officer == "ig-officer.jsmith"
        assert logged.ig_reason == REASON
        assert logged.subjects == person_pseudonyms(trust.pseudonym_secret(), nhs_number=NHS)
        listed = {e["event"]["event_id"] for e in second["entries"]}
        assert first["searched"]["audit_event"] in listed  # who searched for this person
    files = b"".join(f.read_bytes() for f in (tmp_path / "audit").rglob("*") if f.is_file())
    assert NHS.encode() not in files
    assert NHS.replace(" ", "").encode() not in files
    assert b"ig-officer.jsmith" in files
