"""The pass-through decision stage: federation membership and fan-out limits."""

from __future__ import annotations

import pytest

from broker.policy import decide
from schemas.errors import SchemaError, UnknownAgency
from schemas.federation import Federation
from schemas.referral import Referral
from tests.samples import sample


def referral(**header: object) -> Referral:
    data = sample()
    data["header"].update(header)
    return Referral.model_validate(data)


def test_each_named_recipient_gets_a_decision_in_order(federation: Federation) -> None:
    """Every intended recipient gets one decision, in the order the sender named them."""
    decisions = decide(referral(), federation, max_recipients=16)
    assert [d.recipient for d in decisions] == ["kelder-idva", "kelder-marac"]
    assert all(d.allowed for d in decisions)


def test_unknown_sender_is_refused(federation: Federation) -> None:
    """A sender outside the federation is refused with the field named."""
    with pytest.raises(UnknownAgency) as info:
        decide(referral(sender_agency="rogue-force"), federation, max_recipients=16)
    assert info.value.problems[0].field == "header.sender_agency"


def test_self_referral_is_refused(federation: Federation) -> None:
    """An agency cannot name itself as a recipient."""
    with pytest.raises(UnknownAgency):
        decide(referral(recipients=["kelder-police"]), federation, max_recipients=16)


def test_fan_out_limit(federation: Federation) -> None:
    """More recipients than max_recipients is refused before anything else."""
    with pytest.raises(SchemaError):
        decide(referral(), federation, max_recipients=1)
