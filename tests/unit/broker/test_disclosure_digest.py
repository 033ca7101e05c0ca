"""The ``disclosed`` event binds its disclosure: ``disclosure_digest`` is the SHA-256 (lower-case
hex, the schemas' ``Digest``) of the compact JWE bytes exactly as put on ``cairn.deliver``."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime

import pytest

from broker.kafka.transport import MemoryTransport
from schemas.audit import AuditEvent, AuditEventType, delivered
from schemas.referral import Referral
from tests.samples import sample
from tests.unit.audit.conftest import events_for
from tests.unit.conftest import AgencyClient


async def test_each_disclosed_event_names_the_sha256_of_the_jwe_its_recipient_is_sent(
    agency_client: AgencyClient, transport: MemoryTransport
) -> None:
    data = sample()
    async with agency_client("kelder-police") as client:
        await client.submit(json.dumps(data).encode())
    events = [AuditEvent.from_canonical(r.value) for r in transport.topics["unit.audit"]]
    disclosed = {str(e.recipient): e for e in events if e.type is AuditEventType.DISCLOSED}
    assert sorted(disclosed) == ["kelder-idva", "kelder-marac"]
    for recipient, event in disclosed.items():
        (record,) = transport.topics[f"unit.deliver.{recipient}"]
        assert record.value.count(b".") == 4  # a compact JWE: five parts
        assert event.disclosure_digest == hashlib.sha256(record.value).hexdigest()
    assert len({e.disclosure_digest for e in disclosed.values()}) == 2
    assert all(e.disclosure_digest is None for e in events if e not in disclosed.values())


def test_a_disclosed_event_without_the_digest_keeps_its_canonical_bytes() -> None:
    """Absent fields are left out of the canonical form, so older events parse to their bytes."""
    old = [
        e
        for e in map(AuditEvent.from_canonical, events_for(Referral.model_validate(sample())))
        if e.type is AuditEventType.DISCLOSED
    ]
    assert old
    for event in old:
        data = event.canonical()
        assert event.disclosure_digest is None
        assert b"disclosure_digest" not in data
        assert AuditEvent.from_canonical(data).canonical() == data
        bound = event.model_copy(update={"disclosure_digest": "ab" * 32}).canonical()
        assert json.loads(bound) == {**json.loads(data), "disclosure_digest": "ab" * 32}


def test_only_a_disclosed_event_carries_a_disclosure_digest() -> None:
    at = datetime.now(UTC)
    old = json.loads(delivered(uuid.uuid4(), recipient="kelder-idva", at=at).canonical())
    with pytest.raises(ValueError, match="has no disclosure_digest"):
        AuditEvent.model_validate({**old, "disclosure_digest": "0" * 64})
