"""Sealing a disclosure into a Kafka record and opening it on the recipient side."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from broker.envelope import header_map, open_record, seal
from broker.federation import load_federation
from broker.kafka.transport import Record
from broker.policy.agreements import load_agreements
from broker.policy.decide import Decision, decide
from schemas.errors import VerificationError
from schemas.referral import Referral
from tests.conftest import FederationKeys
from tests.samples import FEDERATION_DIR, personal_values, sample

NOW = datetime.now(UTC)


def decision_for(recipient: str, data: dict[str, object]) -> Decision:
    """The sharing policy's real decision for ``recipient`` of the referral in ``data``."""
    decisions = decide(
        Referral.model_validate(data),
        load_federation(FEDERATION_DIR),
        agreements=load_agreements(FEDERATION_DIR / "agreements"),
        now=NOW,
        max_recipients=16,
    )
    return next(d for d in decisions if d.recipient == recipient)


def sealed_for(keys: FederationKeys, recipient: str, data: dict[str, object]) -> Record:
    broker = keys.trust()
    return seal(
        Referral.model_validate(data),
        decision_for(recipient, data),
        topic_prefix="cairn",
        request_id="rq",
        broker_key=broker.signing_key(),
        registry=broker.registry(),
        now=NOW,
    )


def open_as(keys: FederationKeys, agency: str, value: bytes) -> object:
    trust = keys.trust(agency)
    return open_record(
        value, recipient=agency, keys=trust.decryption_keys(), registry=trust.registry(), now=NOW
    )


def test_record_is_keyed_by_referral_id_and_opens_for_its_recipient(
    federation_keys: FederationKeys,
) -> None:
    """The record goes to <prefix>.deliver.<recipient>, keyed by referral id, and opens there."""
    data = sample()
    record = sealed_for(federation_keys, "kelder-idva", data)
    assert record.topic == "cairn.deliver.kelder-idva"
    assert record.key == data["header"]["referral_id"].encode()
    disclosure = open_as(federation_keys, "kelder-idva", record.value)
    assert disclosure.referral.victim.family_name == data["victim"]["family_name"]  # type: ignore[attr-defined]


def test_nothing_in_the_record_is_readable(federation_keys: FederationKeys) -> None:
    """Value, key and headers carry none of the sample's personal data, not even encoded."""
    data = sample()
    record = sealed_for(federation_keys, "kelder-idva", data)
    raw = record.value + record.key + repr(header_map(record.headers)).encode()
    assert record.value.count(b".") == 4  # a compact JWE
    for value in personal_values(data):
        assert value.encode() not in raw


def test_record_for_another_agency_does_not_open(federation_keys: FederationKeys) -> None:
    """A disclosure sealed for one agency cannot be opened by another."""
    record = sealed_for(federation_keys, "kelder-idva", sample())
    with pytest.raises(VerificationError):
        open_as(federation_keys, "kelder-marac", record.value)


def test_tampered_record_does_not_open(federation_keys: FederationKeys) -> None:
    """Flipping one byte of the ciphertext makes the record refuse to open."""
    value = bytearray(sealed_for(federation_keys, "kelder-idva", sample()).value)
    value[-30] = ord("A") if value[-30] != ord("A") else ord("B")
    with pytest.raises(VerificationError):
        open_as(federation_keys, "kelder-idva", bytes(value))


def test_refused_recipient_cannot_be_sealed(federation_keys: FederationKeys) -> None:
    """Sealing for a refused decision is a programming error."""
    broker = federation_keys.trust()
    with pytest.raises(RuntimeError):
        seal(
            Referral.model_validate(sample()),
            Decision("kelder-idva", False, ()),
            topic_prefix="c",
            request_id="rq",
            broker_key=broker.signing_key(),
            registry=broker.registry(),
            now=NOW,
        )
