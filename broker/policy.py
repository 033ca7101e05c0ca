"""Deciding, per intended recipient, whether and what it may receive.

Pure: no I/O. This version checks that every party is a member of the federation and that each
recipient can receive (it has an encryption key the registry lets us use now); it allows each
such recipient the whole referral. Sharing agreements (consent, lawful basis, need-to-know)
replace the body of ``decide`` without changing its shape.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from schemas.errors import FieldProblem, SchemaError, UnknownAgency
from schemas.federation import Federation
from schemas.referral import Referral

__all__ = ["Decision", "decide"]


@dataclass(frozen=True)
class Decision:
    recipient: str
    allowed: bool
    reasons: tuple[str, ...]  # rule ids and codes only, never personal data


def decide(
    referral: Referral,
    federation: Federation,
    *,
    max_recipients: int,
    can_receive: Callable[[str], bool] = lambda _agency: True,
) -> list[Decision]:
    """One decision per intended recipient, in the order the sender named them."""
    header = referral.header
    if len(header.recipients) > max_recipients:
        raise SchemaError(
            f"a referral may name at most {max_recipients} recipients",
            (FieldProblem("header.recipients", f"at most {max_recipients} recipients"),),
        )
    problems: list[FieldProblem] = []
    if federation.get(header.sender_agency) is None:
        problems.append(FieldProblem("header.sender_agency", "not a member of this federation"))
    for i, recipient in enumerate(header.recipients):
        if federation.get(recipient) is None:
            problems.append(
                FieldProblem(f"header.recipients.{i}", "not a member of this federation")
            )
        elif recipient == header.sender_agency:
            problems.append(
                FieldProblem(f"header.recipients.{i}", "a sender cannot refer to itself")
            )
    if problems:
        raise UnknownAgency(
            "the referral names agencies that cannot take part; fix the named fields",
            tuple(problems),
        )
    return [
        Decision(r, allowed=True, reasons=("federation-member",))
        if can_receive(r)
        else Decision(r, allowed=False, reasons=("no-usable-encryption-key",))
        for r in header.recipients
    ]
