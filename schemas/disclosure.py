"""What one recipient receives: the part of a submission it may see, with where it came from.

A disclosure carries either a referral or an Operation Encompass notification, never both. For a
notification, ``referral_id`` holds the notification's id: it is the message's idempotency key
either way.
"""

from __future__ import annotations

from uuid import UUID

from pydantic import model_validator

from schemas.encompass import EncompassNotification
from schemas.referral import AgencyId, Frozen, Purpose, Referral

__all__ = ["Disclosure"]


class Disclosure(Frozen):
    referral_id: UUID
    sender_agency: AgencyId
    recipient_agency: AgencyId
    purpose: Purpose
    referral: Referral | None = None
    notification: EncompassNotification | None = None

    @model_validator(mode="after")
    def _exactly_one_message(self) -> Disclosure:
        if (self.referral is None) == (self.notification is None):
            raise ValueError("a disclosure carries exactly one of referral or notification")
        return self
