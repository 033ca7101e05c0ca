"""``delivered``: the recipient's signed word that it durably stored a disclosure (issue 18).

The receipt (``schemas.receipt.Delivery``), its audit event (``schemas.audit.delivery_receipted``:
ids and codes only, an id derived from (referral, agency)), the broker's receipts loop auditing
it as it audits acknowledgements (signed by the agency the record names, for itself, for a
referral queued for it; anyone else's dead-lettered), once per (referral, agency) in a batch,
and the gateway queueing one, signed, in its durable outbox as it first stores a disclosure.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from uuid import UUID, uuid4

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from broker.config import Settings
from broker.kafka.consumer import DLQ_REASON
from broker.kafka.transport import MemoryTransport
from broker.receipts import ReceiptsLoop
from broker.state import StateStore
from gateway.settings import GatewaySettings
from gateway.sqlite import SqliteGatewayStore
from keys import sign_ack, verify_ack
from keys.jwk import SigningKey
from schemas.audit import DELIVERED_NAMESPACE, AuditEvent, AuditEventType, delivery_receipted
from schemas.decode import decode
from schemas.receipt import Delivery, receipt_of
from tests.conftest import FederationKeys
from tests.gateway_support import running_gateway, server_certificate
from tests.unit.broker import test_receipts as base
from tests.unit.broker.test_receipts import TP, Message, ack_message, queued
from tests.unit.conftest import AgencyClient
from tests.unit.gateway.test_api import delivered

# The receipts loop's fixtures, as its own tests make them.
loop, metrics, store = base.loop, base.metrics, base.store

AGENCY = "kelder-idva"


def receipt(rid: UUID, agency: str = AGENCY, at: datetime | None = None) -> Delivery:
    return Delivery(referral_id=rid, agency=agency, delivered_at=at or datetime.now(UTC))


def signed(
    token_of: Delivery, offset: int, *, signer: str, key: SigningKey, header: str | None = None
) -> Message:
    now = datetime.now(UTC)
    token = sign_ack(token_of.model_dump_json().encode(), key, issued_at=now)
    rid = str(token_of.referral_id).encode()
    headers = [("cairn-referral-id", rid), ("cairn-agency", (header or signer).encode())]
    return Message(token, offset, headers, key=rid)


def by(keys: FederationKeys, agency: str = AGENCY) -> SigningKey:
    return keys.trust(agency).signing_key()


def events(transport: MemoryTransport) -> list[AuditEvent]:
    return [AuditEvent.from_canonical(r.value) for r in transport.read_committed("unit.audit")]


def dead(transport: MemoryTransport) -> list[bytes]:
    return [dict(r.headers)[DLQ_REASON] for r in transport.read_committed("unit.dlq")]


# -- the receipt and its event ------------------------------------------------------------------


def test_a_delivery_receipt_is_told_by_its_kind_and_holds_ids_only() -> None:
    rid = uuid4()
    payload = receipt(rid).model_dump_json().encode()
    assert receipt_of(payload) is Delivery
    got = decode(Delivery, payload)
    assert (got.kind, got.referral_id, got.agency) == ("delivered", rid, AGENCY)
    assert set(json.loads(payload)) == {"kind", "referral_id", "agency", "delivered_at"}
    with pytest.raises(ValidationError):  # nothing else rides along
        Delivery.model_validate({**json.loads(payload), "note": "Jane Doe"})
    with pytest.raises(ValidationError):
        Delivery.model_validate({**json.loads(payload), "agency": "Not An Agency"})
    with pytest.raises(ValidationError):
        Delivery.model_validate({**json.loads(payload), "delivered_at": "2026-01-01T00:00:00"})


def test_the_delivered_event_is_ids_and_times_under_an_id_of_the_referral_and_agency() -> None:
    rid = uuid4()
    at = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)
    event = delivery_receipted(receipt(rid, at=at))
    assert event.type is AuditEventType.DELIVERED
    assert (event.message_id, event.recipient, event.at) == (rid, AGENCY, at)
    assert event.event_id == uuid.uuid5(DELIVERED_NAMESPACE, f"{rid}:{AGENCY}")
    assert set(event.jsonable()) == {"format", "event_id", "type", "at", "message_id", "recipient"}
    # The same delivery told again later is the same fact under the same id; another agency's
    # delivery of the same referral is another fact.
    again = delivery_receipted(receipt(rid, at=at + timedelta(minutes=5)))
    assert again.event_id == event.event_id
    assert delivery_receipted(receipt(rid, "kelder-housing")).event_id != event.event_id
    assert AuditEvent.from_canonical(event.canonical()) == event


# -- the broker's receipts loop -----------------------------------------------------------------


async def test_a_delivery_receipt_is_audited_once_per_referral_and_agency(
    loop: ReceiptsLoop,
    store: StateStore,
    transport: MemoryTransport,
    federation_keys: FederationKeys,
) -> None:
    rid = await queued(store)
    told = receipt(rid)
    key = by(federation_keys)
    batch = [
        signed(told, 1, signer=AGENCY, key=key),
        signed(told, 2, signer=AGENCY, key=key),  # its gateway sent it again
        signed(receipt(rid), 3, signer=AGENCY, key=key),  # and again, signed anew
        ack_message(federation_keys, rid, 4),
    ]
    await loop.handle_batch(TP, batch)
    found = events(transport)
    assert [e.type for e in found] == [AuditEventType.DELIVERED, AuditEventType.ACKNOWLEDGED]
    (event,) = (e for e in found if e.type is AuditEventType.DELIVERED)
    assert (event.message_id, event.recipient, event.at) == (rid, AGENCY, told.delivered_at)
    assert (loop.audited, loop.repeats, loop.dead_letters) == (2, 2, 0)
    assert dead(transport) == []


async def test_a_forged_or_another_agencys_delivery_receipt_is_dead_lettered_not_audited(
    loop: ReceiptsLoop,
    store: StateStore,
    transport: MemoryTransport,
    federation_keys: FederationKeys,
) -> None:
    rid = await queued(store)
    other = uuid4()
    forger = SigningKey(Ed25519PrivateKey.generate())  # a key no registry lists
    batch = [
        # a key that is not the IDVA service's, under its name
        signed(receipt(rid), 1, signer=AGENCY, key=forger),
        # the housing service, signing as itself, says the IDVA service has it
        signed(receipt(rid), 2, signer="kelder-housing", key=by(federation_keys, "kelder-housing")),
        # the housing service's key, the record claiming the IDVA service sent it
        signed(
            receipt(rid),
            3,
            signer="kelder-housing",
            key=by(federation_keys, "kelder-housing"),
            header=AGENCY,
        ),
        # the IDVA service, for a referral never queued for it
        signed(receipt(other), 4, signer=AGENCY, key=by(federation_keys)),
        # the housing service, for itself, for a referral queued only for the IDVA service
        signed(
            receipt(rid, "kelder-housing"),
            5,
            signer="kelder-housing",
            key=by(federation_keys, "kelder-housing"),
        ),
    ]
    await loop.handle_batch(TP, batch)
    assert [e for e in events(transport) if e.type is AuditEventType.DELIVERED] == []
    reasons = dead(transport)
    assert len(reasons) == 5
    assert reasons[1] == b"other_agency"
    assert reasons[3:] == [b"not_queued", b"not_queued"]
    assert b"other_agency" not in (reasons[0], reasons[2])  # a signature failure, not a claim
    assert loop.audited == 0


# -- the gateway --------------------------------------------------------------------------------


async def test_the_gateway_queues_one_signed_delivery_receipt_per_disclosure_across_restarts(
    settings: Settings,
    federation_keys: FederationKeys,
    agency_client: AgencyClient,
    transport: MemoryTransport,
    tmp_path: Path,
) -> None:
    """Stored once, one ``Delivery`` in the outbox, signed by the agency; Kafka delivering it
    again (before and after the gateway restarts) queues none more; the outbox still has it
    after the restart until it is sent."""
    cert, key = server_certificate(federation_keys, tmp_path / "tls", AGENCY)
    gw = GatewaySettings(tls_cert_file=cert, tls_key_file=key)
    path = tmp_path / "gw.sqlite"
    (delivery,) = await delivered(agency_client, transport, federation_keys, AGENCY, 1)
    rid = delivery.disclosure.referral_id
    async with running_gateway(
        settings, gw, AGENCY, federation_keys, store=SqliteGatewayStore(path), background=False
    ) as running:
        await running.service.store_delivery(delivery)
        await running.service.store_delivery(delivery)
    async with running_gateway(
        settings, gw, AGENCY, federation_keys, store=SqliteGatewayStore(path), background=False
    ) as running:
        await running.service.store_delivery(delivery)  # redelivered after the restart
        owed = await running.service.store.pending_receipts(10)
    assert [(o.kind, o.referral_id) for o in owed] == [("delivered", rid)]
    payload = verify_ack(
        owed[0].token,
        federation_keys.trust("cairn-broker").registry(),
        signer=AGENCY,
        now=datetime.now(UTC),
    )
    told = decode(receipt_of(payload), payload)
    assert isinstance(told, Delivery)
    assert (told.referral_id, told.agency) == (rid, AGENCY)


# -- cairn inbox --------------------------------------------------------------------------------


async def test_cairn_inbox_sends_the_delivery_then_the_acknowledgement_before_committing(
    federation_keys: FederationKeys,
) -> None:
    """``cairn inbox`` (``inbox_for``'s signers): once its handler has returned, a signed
    ``Delivery`` and then the acknowledgement go to the receipts topic, and only then is the
    offset committed; a handler that fails sends neither."""
    from adapters.agency import acknowledger_for, delivery_receipt_for
    from adapters.inbox import Delivery as Handed
    from tests.unit.adapters.test_inbox import TP as DELIVER_TP
    from tests.unit.adapters.test_inbox import Consumer, FakeInbox, m

    trust = federation_keys.trust(AGENCY)
    rid = uuid4()
    consumer = Consumer([[m(b"good", 0)]])
    order: list[str] = []

    def open_value(_value: bytes) -> object:
        return SimpleNamespace(referral_id=rid)

    inbox = FakeInbox(
        [consumer],
        open_value=open_value,
        acknowledge=acknowledger_for(trust, AGENCY),
        confirm_delivery=delivery_receipt_for(trust, AGENCY),
        receipts_topic="unit.receipts",
    )

    async def handler(_delivery: Handed) -> None:
        order.append("handled")

    async with inbox:
        await inbox.drain(handler, idle_timeout_s=0.1, total_timeout_s=5)
    assert order == ["handled"]
    assert consumer.commits == [{DELIVER_TP: 1}]
    registry = federation_keys.trust("cairn-broker").registry()
    kinds = []
    for topic, token, headers in inbox.producer.sent:
        assert topic == "unit.receipts"
        assert dict(headers)["cairn-agency"] == AGENCY.encode()
        payload = verify_ack(token, registry, signer=AGENCY, now=datetime.now(UTC))
        kinds.append(receipt_of(payload).__name__)
        assert decode(receipt_of(payload), payload).referral_id == rid
    assert kinds == ["Delivery", "Acknowledgement"]
    assert inbox.acknowledged == 1

    failing = Consumer([[m(b"good", 0)]])
    broken = FakeInbox(
        [failing],
        open_value=open_value,
        acknowledge=acknowledger_for(trust, AGENCY),
        confirm_delivery=delivery_receipt_for(trust, AGENCY),
        receipts_topic="unit.receipts",
    )

    async def fails(_delivery: Handed) -> None:
        raise RuntimeError("the case system is down")

    with pytest.raises(RuntimeError):
        async with broken:
            await broken.drain(fails, idle_timeout_s=0.1, total_timeout_s=5)
    assert broken.producer.sent == []
    assert failing.commits == []
