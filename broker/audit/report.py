"""Reports from the audit log: subject access, and the consent overrides, as CSV or JSON.

Subject access: a row per disclosure (or refusal) about one person names when, from whom, to
whom, why, on what lawful basis and consent, which field groups, the delivery and
acknowledgement found for it, and its leaf index, so an inclusion proof can be given for it
(``cairn audit prove``). Overrides: a row per disclosure (or refusal) made without consent names
who decided (role and staff id), why, on what legal paragraph, from and to whom, and when.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Final

from broker.audit.index import Query
from broker.audit.store import AuditLog, Entry
from schemas.audit import AuditEventType

__all__ = [
    "OVERRIDE_COLUMNS",
    "REPORT_COLUMNS",
    "OverrideRow",
    "ReportRow",
    "disclosure_report",
    "override_report",
    "report_csv",
    "report_json",
]


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


@dataclass(frozen=True)
class OverrideRow:
    """One consent override: who decided (role, staff id), why, on what paragraph, for what."""

    leaf_index: int
    at: str
    type: str  # disclosed or refused
    message_id: str
    sender: str
    recipient: str
    purpose: str
    consent_state: str
    override_reason: str
    override_by_role: str
    override_by_id: str
    override_paragraph: str
    lawful_basis: str
    rules: str


OVERRIDE_COLUMNS: Final = tuple(OverrideRow.__dataclass_fields__)
_OUTCOMES: Final = (AuditEventType.DISCLOSED, AuditEventType.REFUSED)


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
                **_outcome_cells(entry),
                field_groups=" ".join(event.field_groups),
                reasons=" ".join(event.reasons),
                delivered_at=delivered_at,
                acknowledged_at=acknowledged_at,
                acknowledgement=acknowledgement,
            )
        )
    return rows


def override_report(audit: AuditLog, query: Query | None = None) -> list[OverrideRow]:
    """Every disclosure or refusal made under a consent override that ``query`` also matches."""
    narrowed = replace(query or Query(), override=True, types=_OUTCOMES)
    rows = []
    for entry in audit.query(narrowed):
        e = entry.event
        rows.append(
            OverrideRow(
                **_outcome_cells(entry),
                override_by_role=e.override_by_role or "",
                override_by_id=e.override_by_id or "",
                override_paragraph=e.override_paragraph or "",
                rules=" ".join(e.rules),
            )
        )
    return rows


def _outcome_cells(entry: Entry) -> dict[str, Any]:
    """What both reports say of a disclosed or refused event: when, what, who, why, on what."""
    e = entry.event
    return {
        "leaf_index": entry.index,
        "at": e.at.isoformat(),
        "type": e.type.value,
        "message_id": str(e.message_id),
        "sender": e.sender or "",
        "recipient": e.recipient or "",
        "purpose": e.purpose.value if e.purpose else "",
        "lawful_basis": " ".join(e.lawful_basis),
        "consent_state": e.consent_state.value if e.consent_state else "",
        "override_reason": e.override_reason.value if e.override_reason else "",
    }


def report_csv(
    rows: Sequence[ReportRow | OverrideRow],
    columns: Sequence[str] = REPORT_COLUMNS,
    *,
    newline: str = "\n",
) -> str:
    """The report as CSV with a header line (``OVERRIDE_COLUMNS`` for an override report);
    ``newline="\\r\\n"`` for RFC 4180 (section 2: CRLF line breaks), as HTTP serves it."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=newline)
    writer.writerow(columns)
    for row in rows:
        writer.writerow([getattr(row, c) for c in columns])
    return out.getvalue()


def report_json(rows: Sequence[ReportRow], *, checkpoint: bytes | None = None) -> str:
    """The report as JSON, with the checkpoint its leaf indices can be proven against."""
    document = {
        "format": "cairn-disclosure-report/1",
        "disclosures": [vars(row) for row in rows],
        "checkpoint": None if checkpoint is None else checkpoint.decode("utf-8"),
    }
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
