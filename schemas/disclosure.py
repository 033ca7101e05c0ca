"""What one recipient receives: the part of a referral it may see, with where it came from."""

from __future__ import annotations

from uuid import UUID

from schemas.referral import AgencyId, Frozen, Purpose, Referral

__all__ = ["Disclosure"]


class Disclosure(Frozen):
    referral_id: UUID
    sender_agency: AgencyId
    recipient_agency: AgencyId
    purpose: Purpose
    referral: Referral
