"""Deciding, per intended recipient, whether and what it may receive.

Pure: no I/O. This version checks that every party is a member of the federation, that each
recipient can receive (it has an encryption key the registry lets us use now), and that an
Operation Encompass notification goes from a police force to a school or children's social care
only; it allows each such recipient the whole message. Sharing agreements (consent, lawful
basis, need-to-know) replace the body of ``decide`` without changing its shape.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from uuid import UUID

from schemas.encompass import EncompassNotification
from schemas.errors import FieldProblem, SchemaError, UnknownAgency
from schemas.federation import AgencyRole, Federation
from schemas.referral import Purpose, Referral

__all__ = ["Decision", "Routing", "decide", "routing"]

ENCOMPASS_RECIPIENT_ROLES = frozenset({AgencyRole.SCHOOL, AgencyRole.CHILDRENS_SOCIAL_CARE})


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
class Decision:
    recipient: str
    allowed: bool
    reasons: tuple[str, ...]  # rule ids and codes only, never personal data


def decide(
    message: Referral | EncompassNotification,
    federation: Federation,
    *,
    max_recipients: int,
    can_receive: Callable[[str], bool] = lambda _agency: True,
) -> list[Decision]:
    """One decision per intended recipient, in the order the sender named them."""
    route = routing(message)
    if len(route.recipients) > max_recipients:
        raise SchemaError(
            f"a referral may name at most {max_recipients} recipients",
            (FieldProblem(route.recipients_field, f"at most {max_recipients} recipients"),),
        )
    problems: list[FieldProblem] = []
    sender = federation.get(route.sender)
    if sender is None:
        problems.append(FieldProblem("header.sender_agency", "not a member of this federation"))
    encompass = route.purpose is Purpose.ENCOMPASS
    if encompass and sender is not None and sender.role is not AgencyRole.POLICE:
        problems.append(
            FieldProblem("header.sender_agency", "only a police force sends Encompass notices")
        )
    many = len(route.recipients) > 1 or route.recipients_field.endswith("s")
    for i, recipient in enumerate(route.recipients):
        field = f"{route.recipients_field}.{i}" if many else route.recipients_field
        agency = federation.get(recipient)
        if agency is None:
            problems.append(FieldProblem(field, "not a member of this federation"))
        elif recipient == route.sender:
            problems.append(FieldProblem(field, "a sender cannot refer to itself"))
        elif encompass and agency.role not in ENCOMPASS_RECIPIENT_ROLES:
            problems.append(
                FieldProblem(field, "Encompass notices go to schools or children's social care")
            )
    if problems:
        raise UnknownAgency(
            "the message names agencies that cannot take part; fix the named fields",
            tuple(problems),
        )
    return [
        Decision(r, allowed=True, reasons=("federation-member",))
        if can_receive(r)
        else Decision(r, allowed=False, reasons=("no-usable-encryption-key",))
        for r in route.recipients
    ]
