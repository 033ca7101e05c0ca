"""The broker's receipts loop with the memory transport: a poison acknowledgement is
dead-lettered in the same transaction as the offsets, counted, and the next one is audited; a
repeated acknowledgement is audited once."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import pytest
from aiokafka import TopicPartition

from broker.config import Settings
from broker.kafka.consumer import DLQ_CONSUMER, DLQ_OFFSET, DLQ_REASON, DLQ_TOPIC
from broker.kafka.transport import MemoryTransport
from broker.ops.metrics import Metrics
from broker.receipts import GROUP_ID, ReceiptsLoop
from broker.state import SqliteStore, StateStore
from keys import sign_ack
from schemas.audit import AuditEvent, AuditEventType
from schemas.errors import RegistryUntrusted, TransportError
from schemas.receipt import (
    Acknowledgement,
    AcknowledgementStatus,
    Receipt,
    RecipientReceipt,
    RecipientStatus,
)
from tests.conftest import FederationKeys

AGENCY = "kelder-idva"
TP = TopicPartition("unit.receipts", 1)


@dataclass
class Message:
    value: bytes
    offset: int
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    key: bytes = b""
    topic: str = TP.topic
    partition: int = TP.partition


@pytest.fixture
def store() -> StateStore:
    return SqliteStore(None)


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def loop(
    settings: Settings,
    federation_keys: FederationKeys,
    store: StateStore,
    transport: MemoryTransport,
    metrics: Metrics,
) -> ReceiptsLoop:
    return ReceiptsLoop(
        settings,
        federation_keys.trust(),
        store,
        transport,
        lambda: datetime.now(UTC),
        metrics=metrics,
    )


async def queued(store: StateStore, agency: str = AGENCY, rid: UUID | None = None) -> UUID:
    """A referral the broker queued for ``agency``, as the state store remembers it."""
    rid = rid or uuid4()
    now = datetime.now(UTC)
    receipt = Receipt(
        referral_id=rid,
        accepted_at=now,
        recipients=(RecipientReceipt(agency=agency, status=RecipientStatus.QUEUED),),
    )
    await store.published([(str(rid), "digest", receipt.model_dump_json())], "broker", now)
    return rid


def ack_message(
    keys: FederationKeys, rid: UUID, offset: int, agency: str = AGENCY, signer: str = AGENCY
) -> Message:
    now = datetime.now(UTC)
    ack = Acknowledgement(
        referral_id=rid, agency=agency, status=AcknowledgementStatus.FILED, acknowledged_at=now
    )
    key = keys.trust(signer).signing_key()
    token = sign_ack(ack.model_dump_json().encode(), key, issued_at=now)
    headers = [("cairn-referral-id", str(rid).encode()), ("cairn-agency", signer.encode())]
    return Message(token, offset, headers, key=str(rid).encode())


def nested_header_ack(rid: UUID, offset: int, depth: int = 5000) -> Message:
    """An acknowledgement whose protected header nests ``depth`` deep (the reported poison)."""
    header = b'{"alg":"EdDSA","typ":"cairn-ack+jws","x":' + b"[" * depth + b"]" * depth + b"}"

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    token = b64(header) + b"." + b64(b"{}") + b"." + b64(b"\0" * 64)
    headers = [("cairn-referral-id", str(rid).encode()), ("cairn-agency", AGENCY.encode())]
    return Message(token, offset, headers, key=str(rid).encode())


def acknowledged(transport: MemoryTransport) -> list[AuditEvent]:
    events = [AuditEvent.from_canonical(r.value) for r in transport.read_committed("unit.audit")]
    return [e for e in events if e.type is AuditEventType.ACKNOWLEDGED]


def dead(transport: MemoryTransport) -> list[dict[str, bytes]]:
    return [dict(r.headers) for r in transport.read_committed("unit.dlq")]


def dead_letters(metrics: Metrics, reason: str) -> float:
    value = metrics.registry.get_sample_value(
        "cairn_consumer_dead_letters_total", {"consumer": "receipts", "reason": reason}
    )
    return value or 0.0


async def test_a_deeply_nested_header_is_dead_lettered_and_the_next_ack_audited(
    loop: ReceiptsLoop,
    store: StateStore,
    transport: MemoryTransport,
    federation_keys: FederationKeys,
    metrics: Metrics,
) -> None:
    """The reported poison: dead-lettered with its ids, source and reason, counted, committed
    past in the same transaction, and the valid acknowledgement behind it is audited."""
    rid = await queued(store)
    poison = nested_header_ack(rid, 10)
    await loop.handle_batch(TP, [poison, ack_message(federation_keys, rid, 11)])

    assert [e.message_id for e in acknowledged(transport)] == [rid]
    (letter,) = transport.read_committed("unit.dlq")
    assert letter.value == poison.value  # the record's own bytes, nothing decoded
    headers = dict(letter.headers)
    assert headers[DLQ_REASON] == b"malformed"
    assert headers[DLQ_CONSUMER] == b"receipts"
    assert headers[DLQ_TOPIC] == b"unit.receipts"
    assert headers[DLQ_OFFSET] == b"10"
    assert headers["cairn-referral-id"] == str(rid).encode()
    assert transport.committed[GROUP_ID] == {TP: 12}
    assert dead_letters(metrics, "malformed") == 1
    assert loop.dead_letters == 1


async def test_any_exception_while_reading_a_record_is_that_records_fault(
    loop: ReceiptsLoop,
    store: StateStore,
    transport: MemoryTransport,
    federation_keys: FederationKeys,
    metrics: Metrics,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Not only the refusals we foresaw: a RecursionError (or any other) from decoding one
    record dead-letters it as ``unreadable``; the loop neither dies nor re-reads it."""
    rid = await queued(store)
    poison = ack_message(federation_keys, rid, 3)
    import broker.receipts

    real = broker.receipts.verify_ack

    def verify(token: bytes, *args: Any, **kwargs: Any) -> bytes:
        if token == poison.value:
            raise RecursionError("maximum recursion depth exceeded")
        return real(token, *args, **kwargs)

    monkeypatch.setattr(broker.receipts, "verify_ack", verify)
    other = await queued(store)
    await loop.handle_batch(TP, [poison, ack_message(federation_keys, other, 4)])
    assert [h[DLQ_REASON] for h in dead(transport)] == [b"unreadable"]
    assert [e.message_id for e in acknowledged(transport)] == [other]
    assert transport.committed[GROUP_ID] == {TP: 5}
    assert dead_letters(metrics, "unreadable") == 1


async def test_acknowledging_for_another_agency_or_an_unqueued_referral_is_dead_lettered(
    loop: ReceiptsLoop,
    store: StateStore,
    transport: MemoryTransport,
    federation_keys: FederationKeys,
) -> None:
    rid = await queued(store)
    for_another = ack_message(federation_keys, rid, 0, agency="kelder-nhs", signer=AGENCY)
    never_queued = ack_message(federation_keys, uuid4(), 1)
    await loop.handle_batch(TP, [for_another, never_queued])
    assert [h[DLQ_REASON] for h in dead(transport)] == [b"other_agency", b"not_queued"]
    assert acknowledged(transport) == []


async def test_the_same_ack_twice_in_one_batch_or_in_two_is_audited_once(
    loop: ReceiptsLoop,
    store: StateStore,
    transport: MemoryTransport,
    federation_keys: FederationKeys,
) -> None:
    rid = await queued(store)
    same = ack_message(federation_keys, rid, 0)
    again = Message(same.value, 1, same.headers, same.key)
    await loop.handle_batch(TP, [same, again])
    assert len(acknowledged(transport)) == 1
    await loop.handle_batch(TP, [Message(same.value, 2, same.headers, same.key)])
    assert len(acknowledged(transport)) == 1
    assert loop.repeats == 2
    assert transport.committed[GROUP_ID] == {TP: 3}
    assert dead(transport) == []


async def test_kafka_or_our_registry_failing_commits_nothing_and_letters_nothing(
    loop: ReceiptsLoop,
    store: StateStore,
    transport: MemoryTransport,
    federation_keys: FederationKeys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Not the record's fault: the batch is read again later, not dead-lettered."""
    rid = await queued(store)
    batch = [ack_message(federation_keys, rid, 0)]
    transport.available = False
    with pytest.raises(TransportError):
        await loop.handle_batch(TP, batch)
    transport.available = True

    def untrusted() -> Any:
        raise RegistryUntrusted("the registry expired")

    monkeypatch.setattr(loop._trust, "registry", untrusted)
    with pytest.raises(RegistryUntrusted):
        await loop.handle_batch(TP, batch)
    assert transport.read_committed("unit.dlq") == []
    assert GROUP_ID not in transport.committed
