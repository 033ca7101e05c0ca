"""Receipts: what the broker tells a sender, and what a recipient tells the broker back.

The broker returns a ``Receipt`` once every disclosure of a submission is durably queued (or
refused by policy); a recipient sends a ``Delivery`` once it has durably stored a disclosure
(its gateway's store, or ``cairn inbox``'s handler) and an ``Acknowledgement`` once it has
filed it, which closes the loop for the audit trail. Neither carries personal data: ids,
agencies, statuses and reason codes only.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Literal
from uuid import UUID

from pydantic import AwareDatetime, Field, StringConstraints, model_validator

from schemas.fields import AgencyId, Frozen, MessageId, Moment, inconsistent

__all__ = [
    "PERSONAL_STATUSES",
    "RETENTION_EXPIRED",
    "Acknowledgement",
    "AcknowledgementStatus",
    "AgencyReceipt",
    "Deletion",
    "Delivery",
    "Receipt",
    "RecipientReceipt",
    "RecipientStatus",
    "View",
    "ViewerId",
    "receipt_of",
]

ReasonCode = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.:-]{0,63}$")]
#: Who looked: ``staff:<staff id>`` (a person of the agency, by their staff number, never a
#: name or an e-mail address) or ``client:<client id>`` (a case system, by its configured id).
ViewerId = Annotated[
    str,
    StringConstraints(pattern=r"^(?:staff|client):[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"),
    Field(description="staff:<staff id> or client:<API client id>; never a name"),
]
RETENTION_EXPIRED = "retention-expired"  # a deletion's reason: the agreement's period ran out


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
    READ = "read"  # a person of the recipient read it (the gateway's web inbox)
    ACTIONED = "actioned"  # a person of the recipient read it and acted on it


#: The statuses a person gives in the web inbox (``by`` names them); the others are a system's.
PERSONAL_STATUSES = frozenset({AcknowledgementStatus.READ, AcknowledgementStatus.ACTIONED})


class Acknowledgement(Frozen):
    """A recipient's word that it has processed one disclosure.

    ``by`` says who, when a person (``staff:<staff id>``) or a named case system
    (``client:<id>``) did; a note a person adds stays in the recipient's gateway, never here.
    """

    referral_id: MessageId
    agency: AgencyId
    status: AcknowledgementStatus
    reasons: tuple[ReasonCode, ...] = ()
    acknowledged_at: Moment  # a recipient's clock: RFC 3339, in the plausible years
    by: ViewerId | None = None

    @model_validator(mode="after")
    def _people_say_who(self) -> Acknowledgement:
        if self.status in PERSONAL_STATUSES and (
            self.by is None or not self.by.startswith("staff:")
        ):
            raise inconsistent("by", f"a '{self.status.value}' acknowledgement names its staff:id")
        return self

    @model_validator(mode="after")
    def _rejections_say_why(self) -> Acknowledgement:
        if self.status is AcknowledgementStatus.REJECTED and not self.reasons:
            raise inconsistent("reasons", "a rejection must give at least one reason code")
        return self


class View(Frozen):
    """A recipient's word that one of its people (or case systems) opened one disclosure.

    Every view is its own fact: ``view_id`` names it, so a view sent twice (a gateway that
    stopped between sending and noting it sent) is recognisable as one.
    """

    kind: Literal["viewed"] = "viewed"
    view_id: UUID
    referral_id: MessageId
    agency: AgencyId
    viewer: ViewerId
    viewed_at: Moment


class Delivery(Frozen):
    """A recipient's word that it has durably stored one disclosure (its gateway committed it
    to its store, or ``cairn inbox``'s handler returned): before anyone has read or filed it.

    Sent once per disclosure by the recipient; the broker audits it as ``delivered``, once per
    (referral, agency).
    """

    kind: Literal["delivered"] = "delivered"
    referral_id: MessageId
    agency: AgencyId
    delivered_at: Moment  # the recipient's clock: when it had the disclosure stored


class Deletion(Frozen):
    """A recipient's word that it deleted its copy of one disclosure, and why (a code)."""

    kind: Literal["deleted"] = "deleted"
    referral_id: MessageId
    agency: AgencyId
    reason: ReasonCode
    deleted_at: Moment


#: What travels on the receipts topic, each signed by the recipient (``cairn-ack+jws``).
AgencyReceipt = Acknowledgement | Delivery | View | Deletion


def receipt_of(
    payload: bytes,
) -> type[Acknowledgement] | type[Delivery] | type[View] | type[Deletion]:
    """Which model a signed receipt's payload is: by its ``kind`` (an acknowledgement has none).

    Only looks; the caller decodes with the model (``schemas.decode.decode``), which refuses
    whatever does not fit it. A payload that is not a JSON object is left to that decode.
    """
    try:
        kind = json.loads(payload).get("kind") if payload.lstrip()[:1] == b"{" else None
    except (ValueError, RecursionError):
        return Acknowledgement
    if kind == "viewed":
        return View
    if kind == "deleted":
        return Deletion
    if kind == "delivered":
        return Delivery
    return Acknowledgement
