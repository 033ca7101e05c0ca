"""Sealing a disclosure into a Kafka record for one recipient, and opening it again.

Pure: no I/O. The record's value is a compact JWE, encrypted to the recipient's active X25519
key, of a JWS the broker signed over the disclosure JSON (keys.seal_disclosure). Kafka therefore
never holds a readable disclosure. The key and headers carry ids and codes only, never personal
data, so they can route, correlate and audit without opening anything.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from broker.kafka.topics import delivery_topic
from broker.kafka.transport import Record
from broker.policy.decision import Decision, Routing, routing
from broker.policy.redaction import redact
from keys import DecryptionKey, Registry, SigningKey, open_disclosure, seal_disclosure
from schemas.decode import decode
from schemas.disclosure import DisclosedReferral, Disclosure
from schemas.encompass import EncompassNotification
from schemas.errors import VerificationError
from schemas.referral import Referral

__all__ = ["CONTENT_TYPE", "header_map", "open_record", "seal"]

CONTENT_TYPE = b"application/jose"  # RFC 7516 compact serialisation


def seal(
    message: Referral | EncompassNotification,
    decision: Decision,
    *,
    topic_prefix: str,
    request_id: str,
    broker_key: SigningKey,
    registry: Registry,
    now: datetime,
    route: Routing | None = None,
    acknowledge_by: datetime | None = None,
) -> Record:
    """The record that delivers ``message`` to ``decision.recipient``, keyed by its id;
    ``acknowledge_by``: the recipient's acknowledgement deadline, told to it in the disclosure."""
    if not decision.allowed:
        raise RuntimeError("seal() called for a refused recipient")
    if (
        decision.agreement is None
        or decision.lawful_basis is None
        or decision.consent_basis is None
        or decision.retention is None
        or not decision.groups
    ):
        raise RuntimeError("seal() needs a decision naming its agreement, bases and groups")
    route = route or routing(message)
    # Redact before sealing: the recipient can decrypt only what its agreement allows.
    content = redact(message, decision)
    disclosure = Disclosure(
        referral_id=route.message_id,
        sender_agency=route.sender,
        recipient_agency=decision.recipient,
        purpose=route.purpose,
        agreement=decision.agreement,
        lawful_basis=decision.lawful_basis,
        consent_basis=decision.consent_basis,
        groups=decision.groups,
        retention=decision.retention,
        referral=content if isinstance(content, DisclosedReferral) else None,
        notification=content if isinstance(content, EncompassNotification) else None,
        acknowledge_by=acknowledge_by,
    )
    sealed = seal_disclosure(
        disclosure.model_dump_json().encode(),
        broker_key,
        registry,
        recipient=decision.recipient,
        now=now,
    )
    message_id = str(route.message_id).encode()
    return Record(
        topic=delivery_topic(topic_prefix, decision.recipient),
        key=message_id,
        value=sealed,
        headers=(
            ("cairn-referral-id", message_id),
            ("cairn-sender", route.sender.encode()),
            ("cairn-recipient", decision.recipient.encode()),
            ("cairn-purpose", route.purpose.value.encode()),
            ("cairn-schema-version", message.header.schema_version.encode()),
            ("cairn-request-id", request_id.encode()),
            ("content-type", CONTENT_TYPE),
        ),
    )


def header_map(headers: Iterable[tuple[str, bytes]]) -> dict[str, str]:
    return {k: v.decode("utf-8", "replace") for k, v in headers}


def open_record(
    value: bytes,
    *,
    recipient: str,
    keys: Iterable[DecryptionKey],
    registry: Registry,
    now: datetime,
) -> Disclosure:
    """Decrypt and verify a delivered record; refuse one that is not a disclosure for us."""
    # 1. Decrypt with one of our keys and verify the broker's signature (keys.open_disclosure).
    payload = open_disclosure(value, keys, registry, recipient=recipient, now=now)
    # 2. The signed content must be a valid disclosure addressed to us.
    disclosure = decode(Disclosure, payload)
    if disclosure.recipient_agency != recipient:
        raise VerificationError(
            "a disclosure addressed to another agency reached this inbox; quarantined"
        )
    return disclosure
