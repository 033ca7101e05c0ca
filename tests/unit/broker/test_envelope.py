"""Sealing a disclosure into a record and opening it on the recipient side."""

from __future__ import annotations

import pytest

from broker.envelope import header_map, open_record, seal
from broker.policy import Decision
from schemas.errors import VerificationError
from schemas.referral import Referral
from tests.samples import personal_values, sample


def test_record_is_keyed_by_referral_id_and_routed_to_the_recipient() -> None:
    """The record goes to <prefix>.deliver.<recipient> with the referral id as key."""
    data = sample()
    record = seal(
        Referral.model_validate(data),
        Decision("kelder-idva", True, ()),
        topic_prefix="cairn",
        request_id="rq",
    )
    assert record.topic == "cairn.deliver.kelder-idva"
    assert record.key == data["header"]["referral_id"].encode()
    assert open_record(record.value, recipient="kelder-idva").referral.victim.family_name


def test_headers_carry_no_personal_data() -> None:
    """Kafka headers and keys hold ids and codes only."""
    data = sample()
    record = seal(
        Referral.model_validate(data),
        Decision("kelder-idva", True, ()),
        topic_prefix="c",
        request_id="rq",
    )
    meta = repr(header_map(record.headers)) + record.key.decode()
    for value in personal_values(data):
        assert value not in meta


def test_record_for_another_agency_is_refused() -> None:
    """A disclosure addressed to one agency cannot be opened as another."""
    record = seal(
        Referral.model_validate(sample()),
        Decision("kelder-idva", True, ()),
        topic_prefix="c",
        request_id="rq",
    )
    with pytest.raises(VerificationError):
        open_record(record.value, recipient="kelder-marac")


def test_refused_recipient_cannot_be_sealed() -> None:
    """Sealing for a refused decision is a programming error."""
    with pytest.raises(RuntimeError):
        seal(
            Referral.model_validate(sample()),
            Decision("kelder-idva", False, ()),
            topic_prefix="c",
            request_id="rq",
        )
