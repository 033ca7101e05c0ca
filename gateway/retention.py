"""When a gateway deletes its copy of a disclosure: the agreement's retention, from receipt.

The disclosure carries its agreement's ``Retention`` (years, months, days; from what; then
what). A period that starts at receipt ends at the moment of receipt plus the period (a month
past the 31st ends on the month's last day); the gateway then deletes its copy, whatever comes
next in the agency's own files (``then: review`` is the case system's review of its file: the
gateway's copy is a transit copy). A period that starts at case closure has no end the gateway
can know, so the gateway never deletes that copy itself.
"""

from __future__ import annotations

import calendar
from datetime import datetime, timedelta

from schemas.disclosure import Retention, RetentionStart

__all__ = ["delete_after"]


def _plus_months(moment: datetime, months: int) -> datetime:
    index = moment.month - 1 + months
    year, month = moment.year + index // 12, index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def delete_after(retention: Retention, received_at: datetime) -> datetime | None:
    """When the gateway's copy of a disclosure received at ``received_at`` is due for deletion;
    None if its retention does not start at receipt."""
    if retention.starts is not RetentionStart.RECEIPT:
        return None
    end = _plus_months(received_at, retention.years * 12 + retention.months)
    return end + timedelta(days=retention.days)
