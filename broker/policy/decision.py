"""What the policy engine decides for one recipient, and the routing facts it decides on.

Pure data: ``Routing`` is who sends what kind of message to whom (computed once per submission by
``routing`` and passed on); ``Decision`` is one recipient's outcome with the rules that produced
it. Both hold codes and agency ids only, never personal data. ``Withheld`` names one classified
field (special category or criminal-offence data) a decision keeps out of a granted group.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from schemas.classes import DataClass
from schemas.disclosure import ConsentBasis, GroupShare, LawfulBasis, Retention
from schemas.encompass import EncompassNotification
from schemas.referral import FieldGroup, Purpose, Referral

__all__ = ["Decision", "Routing", "Withheld", "routing"]


@dataclass(frozen=True)
class Routing:
    """Who sends what kind of message to whom: everything routing needs, no personal data."""

    message_id: UUID
    sender: str
    recipients: tuple[str, ...]
    purpose: Purpose
    recipients_field: str  # where the recipients sit in the message, for error paths


def routing(message: Referral | EncompassNotification) -> Routing:
    if isinstance(message, EncompassNotification):
        h = message.header
        return Routing(
            h.notification_id, h.sender_agency, (h.recipient,), h.purpose, "header.recipient"
        )
    r = message.header
    return Routing(r.referral_id, r.sender_agency, r.recipients, r.purpose, "header.recipients")


@dataclass(frozen=True)
class Withheld:
    """A classified field of a granted group kept out for want of its condition in the basis.

    ``field`` is a field of the group, ``dash.<topic>`` for the DASH answers of a question
    topic, or ``dash_score`` (withheld with the answers it counts). Which fields are withheld
    depends on the grant and the bases only, never on what the referral holds, so the record
    says nothing about the person (not even that there was a pregnancy to withhold).
    """

    group: FieldGroup
    field: str
    data_class: DataClass

    @property
    def label(self) -> str:
        """e.g. 'G1.pregnancy', 'G6.dash.depression'."""
        return f"{self.group.value}.{self.field}"

    @property
    def code(self) -> str:
        """The rule code, e.g. 'special_category.withheld.G1.pregnancy'."""
        return f"{self.data_class.value}.withheld.{self.label}"


@dataclass(frozen=True)
class Decision:
    """What one recipient gets, and why. A refused decision has no groups and no basis."""

    recipient: str
    allowed: bool
    reasons: tuple[str, ...]  # short codes for the sender's receipt, never personal data
    groups: tuple[GroupShare, ...] = ()  # exactly the groups and subsets to disclose
    lawful_basis: LawfulBasis | None = None
    consent_basis: ConsentBasis | None = None
    rules: tuple[str, ...] = ()  # every rule that fired, for the IG officer
    deadline: datetime | None = None  # Operation Encompass: the start of the next school day
    agreement: str | None = None
    retention: Retention | None = None
    withheld: tuple[Withheld, ...] = ()  # classified fields kept out of granted groups
    # The age under which the G4 scopes (own_pupil, home_educated) keep a child: the terms'
    # child_age_under, so redaction keeps exactly the children the decision counted.
    child_age_under: int | None = None

    def as_record(self) -> dict[str, Any]:
        """The decision as JSON-ready codes: what ``cairn policy explain --json`` prints."""
        return {
            "recipient": self.recipient,
            "allowed": self.allowed,
            "agreement": self.agreement,
            "groups": [g.label for g in self.groups],
            "lawful_basis": self.lawful_basis.label if self.lawful_basis else None,
            "consent_basis": self.consent_basis.label if self.consent_basis else None,
            "retention": self.retention.label if self.retention else None,
            "deadline": self.deadline.isoformat() if self.deadline else None,
            "reasons": list(self.reasons),
            "rules": list(self.rules),
            "withheld": [
                {"field": w.label, "data_class": w.data_class.value} for w in self.withheld
            ],
        }
