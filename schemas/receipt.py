"""Receipts: what the broker tells a sender, and what a recipient tells the broker back.

The broker returns a ``Receipt`` once every disclosure of a submission is durably queued (or
refused by policy); a recipient adapter sends an ``Acknowledgement`` once it has filed a
disclosure, which closes the loop for the audit trail. Neither carries personal data: ids,
agencies, statuses and reason codes only.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated
from uuid import UUID

from pydantic import AwareDatetime, Field, StringConstraints, model_validator

from schemas.fields import AgencyId, Frozen, MessageId, Moment, inconsistent

__all__ = [
    "Acknowledgement",
    "AcknowledgementStatus",
    "Receipt",
    "RecipientReceipt",
    "RecipientStatus",
]

ReasonCode = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.:-]{0,63}$")]


class RecipientStatus(StrEnum):
    QUEUED = "queued"  # committed to the recipient's Kafka topic, not yet acknowledged by it
    REFUSED = "refused"  # the sharing policy does not allow this recipient; nothing was sent


class RecipientReceipt(Frozen):
    agency: AgencyId
    status: RecipientStatus
    reasons: tuple[ReasonCode, ...] = Field(
        default=(), description="Policy rule ids and codes behind the status; never free text"
    )


class Receipt(Frozen):
    referral_id: UUID
    accepted_at: AwareDatetime
    recipients: tuple[RecipientReceipt, ...]


class AcknowledgementStatus(StrEnum):
    FILED = "filed"  # verified, decrypted and stored in the recipient's own system
    REJECTED = "rejected"  # verified but could not be filed; ``reasons`` say why


class Acknowledgement(Frozen):
    """A recipient's word that it has processed one disclosure."""

    referral_id: MessageId
    agency: AgencyId
    status: AcknowledgementStatus
    reasons: tuple[ReasonCode, ...] = ()
    acknowledged_at: Moment  # a recipient's clock: RFC 3339, in the plausible years

    @model_validator(mode="after")
    def _rejections_say_why(self) -> Acknowledgement:
        if self.status is AcknowledgementStatus.REJECTED and not self.reasons:
            raise inconsistent("reasons", "a rejection must give at least one reason code")
        return self
