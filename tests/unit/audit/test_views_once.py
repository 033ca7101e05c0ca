"""Views and deletions in the audit log: a view is kept once per view id (the same view sent
again, in one batch or a later one, after reopening too, is a counted duplicate), two views of
one disclosure are two entries, and a deletion is kept once per (referral, agency)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

from broker.audit.index import Query
from broker.audit.store import AuditLog
from schemas.audit import AuditEventType, deleted, delivery_receipted, viewed
from schemas.receipt import RETENTION_EXPIRED, Deletion, Delivery, View

AGENCY = "kelder-brook-primary"


def test_a_view_is_one_entry_per_view_id_and_a_deletion_one_per_recipient(tmp_path: Path) -> None:
    rid = uuid4()
    now = datetime.now(UTC)
    first = View(
        view_id=uuid4(), referral_id=rid, agency=AGENCY, viewer="staff:DSL-1", viewed_at=now
    )
    second = View(
        view_id=uuid4(), referral_id=rid, agency=AGENCY, viewer="staff:DSL-1", viewed_at=now
    )
    gone = Deletion(referral_id=rid, agency=AGENCY, reason=RETENTION_EXPIRED, deleted_at=now)
    with AuditLog.open(tmp_path) as log:
        result = log.append(
            [
                (0, viewed(first).canonical()),
                (1, viewed(first).canonical()),  # the same view, sent again
                (2, viewed(second).canonical()),
                (3, deleted(gone).canonical()),
            ]
        )
        assert (result.appended, result.duplicates) == (3, (1,))
    with AuditLog.open(tmp_path) as log:
        again = log.append([(4, viewed(first).canonical()), (5, deleted(gone).canonical())])
        assert (again.appended, again.duplicates) == (0, (4, 5))
        views = log.query(Query(types=(AuditEventType.VIEWED,), message_id=rid))
        assert sorted(str(e.event.event_id) for e in views) == sorted(
            str(v.view_id) for v in (first, second)
        )
        assert len(log.query(Query(types=(AuditEventType.DELETED,), message_id=rid))) == 1


def test_a_delivery_receipt_sent_again_is_one_entry(tmp_path: Path) -> None:
    """A gateway that stopped between Kafka taking its delivery receipt and noting it sent
    sends it again: the log keeps one 'delivered' per (referral, agency), after reopening too."""
    rid = uuid4()
    stored = Delivery(referral_id=rid, agency=AGENCY, delivered_at=datetime.now(UTC))
    with AuditLog.open(tmp_path) as log:
        event = delivery_receipted(stored).canonical()
        result = log.append([(0, event), (1, event)])
        assert (result.appended, result.duplicates) == (1, (1,))
    with AuditLog.open(tmp_path) as log:
        again = log.append([(2, delivery_receipted(stored).canonical())])
        assert (again.appended, again.duplicates) == (0, (2,))
        assert len(log.query(Query(types=(AuditEventType.DELIVERED,), message_id=rid))) == 1
