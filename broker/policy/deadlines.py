"""By when each disclosure must be acknowledged: the deadline its purpose sets.

A disclosure's deadline follows its purpose: Operation Encompass by the start of the next school
day (the policy engine sets ``Decision.deadline``); MARAC and high-risk IDVA a configurable time
after acceptance (``deadline_marac_s``, ``deadline_idva_high_s``); other purposes none. The
pipeline records every committed disclosure with its deadline in the replay store, and the
overdue sweep (``broker.ops.overdue``) reports those not acknowledged in time.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from broker.config import Settings
from broker.policy.decide import Decision
from schemas.dash import RiskLevel
from schemas.encompass import EncompassNotification
from schemas.referral import Purpose, Referral

__all__ = ["deadline_for"]


def deadline_for(
    message: Referral | EncompassNotification,
    decision: Decision,
    settings: Settings,
    now: datetime,
) -> datetime | None:
    """When ``decision``'s recipient must have acknowledged the disclosure, if ever."""
    if isinstance(message, EncompassNotification):
        return decision.deadline  # the start of the next school day, from the policy
    purpose = message.header.purpose
    if purpose is Purpose.MARAC:
        return now + timedelta(seconds=settings.deadline_marac_s)
    if purpose is Purpose.IDVA and message.risk.level is RiskLevel.HIGH:
        return now + timedelta(seconds=settings.deadline_idva_high_s)
    return None
