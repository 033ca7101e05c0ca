"""The receipt the broker returns to a sender once every disclosure is durably queued."""

from __future__ import annotations

from enum import StrEnum
from uuid import UUID

from pydantic import AwareDatetime

from schemas.referral import AgencyId, Frozen

__all__ = ["Receipt", "RecipientReceipt", "RecipientStatus"]


class RecipientStatus(StrEnum):
    QUEUED = "queued"  # committed to the recipient's Kafka topic, not yet acknowledged by it


class RecipientReceipt(Frozen):
    agency: AgencyId
    status: RecipientStatus


class Receipt(Frozen):
    referral_id: UUID
    accepted_at: AwareDatetime
    recipients: tuple[RecipientReceipt, ...]
