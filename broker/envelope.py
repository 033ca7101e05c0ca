"""Sealing a disclosure into a Kafka record for one recipient, and opening it again.

Pure: no I/O. In this first version the record carries the disclosure as JSON; signing (JWS) and
encryption to the recipient's key (JWE) replace the body of ``seal`` and ``open_record`` without
changing their shape. Headers and keys carry ids and codes only, never personal data.
"""

from __future__ import annotations

from broker.policy import Decision
from broker.topics import delivery_topic
from broker.transport import Record
from schemas.decode import decode
from schemas.disclosure import Disclosure
from schemas.errors import VerificationError
from schemas.referral import Referral

__all__ = ["CONTENT_TYPE", "header_map", "open_record", "seal"]

CONTENT_TYPE = b"application/vnd.cairn.disclosure+json"


def seal(referral: Referral, decision: Decision, *, topic_prefix: str, request_id: str) -> Record:
    """The record that delivers ``referral`` to ``decision.recipient``, keyed by referral id."""
    if not decision.allowed:
        raise RuntimeError("seal() called for a refused recipient")
    header = referral.header
    disclosure = Disclosure(
        referral_id=header.referral_id,
        sender_agency=header.sender_agency,
        recipient_agency=decision.recipient,
        purpose=header.purpose,
        referral=referral,
    )
    return Record(
        topic=delivery_topic(topic_prefix, decision.recipient),
        key=str(header.referral_id).encode(),
        value=disclosure.model_dump_json().encode(),
        headers=(
            ("cairn-referral-id", str(header.referral_id).encode()),
            ("cairn-sender", header.sender_agency.encode()),
            ("cairn-recipient", decision.recipient.encode()),
            ("cairn-purpose", header.purpose.value.encode()),
            ("cairn-schema-version", header.schema_version.encode()),
            ("cairn-request-id", request_id.encode()),
            ("content-type", CONTENT_TYPE),
        ),
    )


def header_map(headers: tuple[tuple[str, bytes], ...]) -> dict[str, str]:
    return {k: v.decode("utf-8", "replace") for k, v in headers}


def open_record(value: bytes, *, recipient: str) -> Disclosure:
    """Turn a delivered record's value back into the disclosure; refuse one meant for another."""
    disclosure = decode(Disclosure, value)
    if disclosure.recipient_agency != recipient:
        raise VerificationError(
            "a disclosure addressed to another agency reached this inbox; quarantined"
        )
    return disclosure
