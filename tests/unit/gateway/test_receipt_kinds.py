"""The broker's receipts loop audits the gateway's signed views and deletions, as it audits
acknowledgements: verified as their agency, for a referral queued for it, once per view (by its
id) and once per deletion; anyone else's is dead-lettered."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID, uuid4

import pytest
from pydantic import BaseModel, ValidationError

from broker.kafka.consumer import DLQ_REASON
from broker.kafka.transport import MemoryTransport
from broker.receipts import ReceiptsLoop
from broker.state import Delivery, StateStore
from keys import sign_ack
from schemas.audit import AuditEvent, AuditEventType
from schemas.receipt import (
    RETENTION_EXPIRED,
    Acknowledgement,
    AcknowledgementStatus,
    Deletion,
    View,
    receipt_of,
)
from tests.conftest import FederationKeys
from tests.unit.broker import test_receipts as base
from tests.unit.broker.test_receipts import TP, Message, ack_message, queued

# The receipts loop's fixtures, as its own tests make them.
loop, metrics, store = base.loop, base.metrics, base.store

AGENCY = "kelder-idva"


def signed(
    keys: FederationKeys, receipt: BaseModel, offset: int, rid: UUID, signer: str
) -> Message:
    now = datetime.now(UTC)
    token = sign_ack(
        receipt.model_dump_json().encode(), keys.trust(signer).signing_key(), issued_at=now
    )
    headers = [("cairn-referral-id", str(rid).encode()), ("cairn-agency", signer.encode())]
    return Message(token, offset, headers, key=str(rid).encode())


def view(rid: UUID, viewer: str = "staff:DSL-0042", agency: str = AGENCY) -> View:
    return View(
        view_id=uuid4(), referral_id=rid, agency=agency, viewer=viewer, viewed_at=datetime.now(UTC)
    )


def events(transport: MemoryTransport) -> list[AuditEvent]:
    return [AuditEvent.from_canonical(r.value) for r in transport.read_committed("unit.audit")]


async def test_views_and_deletions_become_viewed_and_deleted_events(
    loop: ReceiptsLoop,
    store: StateStore,
    transport: MemoryTransport,
    federation_keys: FederationKeys,
) -> None:
    rid = await queued(store)
    first, second = view(rid), view(rid, "client:case-system-1")
    gone = Deletion(
        referral_id=rid, agency=AGENCY, reason=RETENTION_EXPIRED, deleted_at=datetime.now(UTC)
    )
    batch = [
        signed(federation_keys, first, 1, rid, AGENCY),
        signed(federation_keys, first, 2, rid, AGENCY),  # the same view sent again
        signed(federation_keys, second, 3, rid, AGENCY),
        signed(federation_keys, gone, 4, rid, AGENCY),
        signed(federation_keys, gone, 5, rid, AGENCY),
        ack_message(federation_keys, rid, 6),
    ]
    await loop.handle_batch(TP, batch)
    found = events(transport)
    views = [e for e in found if e.type is AuditEventType.VIEWED]
    assert [(e.event_id, e.viewer, e.recipient) for e in views] == [
        (first.view_id, "staff:DSL-0042", AGENCY),
        (second.view_id, "client:case-system-1", AGENCY),
    ]
    deletions = [e for e in found if e.type is AuditEventType.DELETED]
    assert [(e.message_id, e.reasons) for e in deletions] == [(rid, (RETENTION_EXPIRED,))]
    assert [e.type for e in found if e.type is AuditEventType.ACKNOWLEDGED] == [
        AuditEventType.ACKNOWLEDGED
    ]
    assert loop.repeats == 2
    assert loop.audited == 4


async def test_a_view_signed_by_another_agency_or_for_an_unqueued_referral_is_dead_lettered(
    loop: ReceiptsLoop,
    store: StateStore,
    transport: MemoryTransport,
    federation_keys: FederationKeys,
) -> None:
    rid = await queued(store)
    other = uuid4()
    batch = [
        # the housing service signs a view claiming to be the IDVA service's
        signed(federation_keys, view(rid), 1, rid, "kelder-housing"),
        signed(federation_keys, view(other), 2, other, AGENCY),  # never queued for it
    ]
    await loop.handle_batch(TP, batch)
    assert [e for e in events(transport) if e.type is AuditEventType.VIEWED] == []
    reasons = [dict(r.headers)[DLQ_REASON] for r in transport.read_committed("unit.dlq")]
    assert reasons == [b"other_agency", b"not_queued"]


def test_a_receipt_is_told_by_its_kind() -> None:
    rid = uuid4()
    assert receipt_of(view(rid).model_dump_json().encode()) is View
    assert receipt_of(b'{"kind": "deleted"}') is Deletion
    assert receipt_of(b'{"referral_id": "x"}').__name__ == "Acknowledgement"
    assert receipt_of(b"[" * 5000).__name__ == "Acknowledgement"  # left to the decode to refuse


async def test_a_deletion_a_year_on_is_audited_from_the_deliveries_once_claims_are_pruned(
    loop: ReceiptsLoop,
    store: StateStore,
    transport: MemoryTransport,
    federation_keys: FederationKeys,
) -> None:
    """Claims go after replay_window_s (30 days); an Encompass notice is kept a year: the
    deletion is still known as the school's, from the deliveries the broker keeps."""
    rid = uuid4()
    school = "kelder-brook-primary"
    then = datetime.now(UTC)
    await store.record_deliveries([Delivery(str(rid), school, "ENCOMPASS", "kelder-police", then)])
    assert await store.lookup(str(rid)) is None  # no claim (pruned)
    gone = Deletion(
        referral_id=rid, agency=school, reason=RETENTION_EXPIRED, deleted_at=datetime.now(UTC)
    )
    elsewhere = Deletion(
        referral_id=rid, agency=AGENCY, reason=RETENTION_EXPIRED, deleted_at=datetime.now(UTC)
    )
    await loop.handle_batch(
        TP,
        [
            signed(federation_keys, gone, 1, rid, school),
            signed(federation_keys, elsewhere, 2, rid, AGENCY),
        ],
    )
    deletions = [e for e in events(transport) if e.type is AuditEventType.DELETED]
    assert [(e.recipient, e.message_id) for e in deletions] == [(school, rid)]
    reasons = [dict(r.headers)[DLQ_REASON] for r in transport.read_committed("unit.dlq")]
    assert reasons == [b"not_queued"]  # never delivered to the IDVA service


async def test_a_persons_read_acknowledgement_is_audited_with_their_staff_id_once(
    loop: ReceiptsLoop,
    store: StateStore,
    transport: MemoryTransport,
    federation_keys: FederationKeys,
) -> None:
    """A DSL's "read" (the web inbox) is the acknowledgement: audited with their staff id; a
    later "actioned" for the same disclosure is a repeat to the broker (kept at the gateway)."""
    rid = await queued(store)
    now = datetime.now(UTC)
    read, actioned = (
        Acknowledgement(
            referral_id=rid, agency=AGENCY, status=s, acknowledged_at=now, by="staff:DSL-0042"
        )
        for s in (AcknowledgementStatus.READ, AcknowledgementStatus.ACTIONED)
    )
    await loop.handle_batch(
        TP,
        [
            signed(federation_keys, read, 1, rid, AGENCY),
            signed(federation_keys, actioned, 2, rid, AGENCY),
        ],
    )
    acks = [e for e in events(transport) if e.type is AuditEventType.ACKNOWLEDGED]
    assert [(e.status, e.viewer, e.recipient) for e in acks] == [
        (AcknowledgementStatus.READ, "staff:DSL-0042", AGENCY)
    ]
    assert loop.repeats == 1


def test_a_person_acknowledging_is_named_by_staff_id() -> None:
    now = datetime.now(UTC)
    for by in (None, "client:case-system-1"):
        with pytest.raises(ValidationError, match="staff:id"):
            Acknowledgement(
                referral_id=uuid4(),
                agency=AGENCY,
                status=AcknowledgementStatus.READ,
                acknowledged_at=now,
                by=by,
            )
    filed = Acknowledgement(
        referral_id=uuid4(),
        agency=AGENCY,
        status=AcknowledgementStatus.FILED,
        acknowledged_at=now,
        by="client:case-system-1",
    )
    assert filed.by == "client:case-system-1"
