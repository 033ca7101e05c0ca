"""Subject access: every disclosure about one person, from the audit log, as CSV or JSON.

A row per disclosure (or refusal) names when, from whom, to whom, why, on what lawful basis and
consent, which field groups, the delivery and acknowledgement found for it, and its leaf index,
so an inclusion proof can be given for it (``cairn audit prove``).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from broker.audit.index import Query
from broker.audit.store import AuditLog
from schemas.audit import AuditEventType

__all__ = ["REPORT_COLUMNS", "ReportRow", "disclosure_report", "report_csv", "report_json"]


@dataclass(frozen=True)
class ReportRow:
    """One line of a disclosure report: one disclosure (or refusal) about the subject."""

    leaf_index: int
    at: str
    type: str
    message_id: str
    sender: str
    recipient: str
    purpose: str
    lawful_basis: str
    consent_state: str
    override_reason: str
    field_groups: str
    reasons: str
    delivered_at: str
    acknowledged_at: str
    acknowledgement: str


REPORT_COLUMNS: Final = tuple(ReportRow.__dataclass_fields__)


def disclosure_report(
    audit: AuditLog,
    subjects: Sequence[str],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    include_refusals: bool = True,
) -> list[ReportRow]:
    """Every disclosure about a person (any of ``subjects``), for a subject access request.

    Each row names when, from whom, to whom, why, on what lawful basis and consent, and which
    field groups, with the delivery and acknowledgement found for it, and its leaf index so an
    inclusion proof can be given.
    """
    if not subjects:
        raise ValueError("a disclosure report is about someone: give their pseudonyms")
    types = (AuditEventType.DISCLOSED,) + ((AuditEventType.REFUSED,) if include_refusals else ())
    found = audit.query(Query(subjects=tuple(subjects), types=types, since=since, until=until))
    rows = []
    for entry in found:
        event = entry.event
        delivered_at = acknowledged_at = acknowledgement = ""
        if event.type is AuditEventType.DISCLOSED and event.message_id is not None:
            follow = audit.query(
                Query(
                    message_id=event.message_id,
                    recipient=event.recipient,
                    types=(AuditEventType.DELIVERED, AuditEventType.ACKNOWLEDGED),
                )
            )
            for later in follow:
                e = later.event
                if e.type is AuditEventType.DELIVERED and not delivered_at:
                    delivered_at = e.at.isoformat()
                elif e.type is AuditEventType.ACKNOWLEDGED and e.status is not None:
                    acknowledged_at = e.at.isoformat()
                    acknowledgement = e.status.value
        rows.append(
            ReportRow(
                leaf_index=entry.index,
                at=event.at.isoformat(),
                type=event.type.value,
                message_id=str(event.message_id),
                sender=event.sender or "",
                recipient=event.recipient or "",
                purpose=event.purpose.value if event.purpose else "",
                lawful_basis=" ".join(event.lawful_basis),
                consent_state=event.consent_state.value if event.consent_state else "",
                override_reason=event.override_reason.value if event.override_reason else "",
                field_groups=" ".join(event.field_groups),
                reasons=" ".join(event.reasons),
                delivered_at=delivered_at,
                acknowledged_at=acknowledged_at,
                acknowledgement=acknowledgement,
            )
        )
    return rows


def report_csv(rows: Sequence[ReportRow]) -> str:
    """The report as CSV with a header line."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(REPORT_COLUMNS)
    for row in rows:
        writer.writerow([getattr(row, c) for c in REPORT_COLUMNS])
    return out.getvalue()


def report_json(rows: Sequence[ReportRow], *, checkpoint: bytes | None = None) -> str:
    """The report as JSON, with the checkpoint its leaf indices can be proven against."""
    document = {
        "format": "cairn-disclosure-report/1",
        "disclosures": [vars(row) for row in rows],
        "checkpoint": None if checkpoint is None else checkpoint.decode("utf-8"),
    }
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
