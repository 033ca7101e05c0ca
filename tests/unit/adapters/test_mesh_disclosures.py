"""The trust's MESH delivery over a fake outbox and a real (SQLite) gateway store: retried with
doubling pauses, never sent again once MESH took it, repeated identically only when an attempt's
outcome is unknown, acknowledged once when MESH says so, given up on for good reasons."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from structlog.testing import capture_logs

from adapters.nhs.mesh.client import FHIR_JSON, MeshError
from adapters.nhs.mesh.disclosures import SUBJECT, DisclosureDelivery
from gateway.sqlite import SqliteGatewayStore
from gateway.store import NewDisclosure
from tests.unit.adapters.test_nhs_message import JWS, to_trust

T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class FakeOutbox:
    """Takes what it is sent unless told to fail; reports the status it is given."""

    def __init__(self) -> None:
        self.fail = 0  # how many sends to refuse
        self.sent: list[dict[str, Any]] = []
        self.status = "accepted"
        self.tracked = 0

    async def send(
        self,
        recipient: str,
        body: bytes,
        workflow_id: str,
        *,
        local_id: str | None = None,
        subject: str | None = None,
        content_type: str = FHIR_JSON,
    ) -> str:
        if self.fail:
            self.fail -= 1
            raise MeshError("MESH answered HTTP 503 to send_message")
        self.sent.append(
            {
                "recipient": recipient,
                "body": body,
                "workflow_id": workflow_id,
                "local_id": local_id,
                "subject": subject,
                "content_type": content_type,
            }
        )
        return f"MSG-{len(self.sent)}"

    async def track(self, message_id: str) -> dict[str, Any]:
        self.tracked += 1
        return {"message_id": message_id, "status": self.status}


async def setup(
    clock: Clock, outbox: FakeOutbox, acks: list[UUID], store: SqliteGatewayStore | None = None
) -> tuple[SqliteGatewayStore, DisclosureDelivery, UUID]:
    disclosure = to_trust()
    if store is None:
        store = SqliteGatewayStore(None)
        await store.open()
        await store.put(
            NewDisclosure(
                referral_id=disclosure.referral_id,
                sender=disclosure.sender_agency,
                purpose=disclosure.purpose.value,
                kind="referral",
                body=disclosure.model_dump_json(),
                received_at=T0,
                delete_after=None,
                source="t.deliver.kelder-nhs:0:0",
                signed=JWS,
            ),
            webhook=False,
            mesh=True,
        )

    async def acknowledge(referral_id: UUID) -> object:
        acks.append(referral_id)
        return True

    delivery = DisclosureDelivery(
        store,
        outbox,
        sender_mailbox="X26CAIRN01",
        trust_mailbox="X26KELDER1",
        workflow_id="CAIRN_SAFEGUARDING_DISCLOSURE",
        acknowledge=acknowledge,
        retry_initial_s=1.0,
        retry_max_s=4.0,
        give_up_s=60.0,
        track_every_s=10.0,
        clock=clock,
    )
    return store, delivery, disclosure.referral_id


async def test_failed_sends_back_off_then_one_send_then_one_acknowledgement() -> None:
    """Two refused sends are retried after 1 s then 2 s; the third is taken; later passes only
    track it; "acknowledged" acknowledges the disclosure once and ends the job."""
    clock, outbox, acks = Clock(), FakeOutbox(), []
    outbox.fail = 2
    store, delivery, rid = await setup(clock, outbox, acks)
    assert await delivery.deliver_due() == 0  # refused
    assert await delivery.deliver_due() == 0  # not due yet
    clock.advance(0.9)
    assert await delivery.deliver_due() == 0
    clock.advance(0.1)
    assert await delivery.deliver_due() == 0  # refused again: next in 2 s
    clock.advance(1.9)
    assert await delivery.deliver_due() == 0
    assert outbox.sent == []
    clock.advance(0.1)
    assert await delivery.deliver_due() == 1
    (sent,) = outbox.sent
    assert sent["recipient"] == "X26KELDER1"
    assert sent["workflow_id"] == "CAIRN_SAFEGUARDING_DISCLOSURE"
    assert (sent["local_id"], sent["subject"]) == (str(rid), SUBJECT)
    assert json.loads(sent["body"])["type"] == "message"
    for _ in range(3):  # tracked every 10 s, not yet acknowledged, never sent again
        clock.advance(10)
        assert await delivery.deliver_due() == 0
    assert (len(outbox.sent), outbox.tracked, acks) == (1, 3, [])
    outbox.status = "acknowledged"
    clock.advance(10)
    assert await delivery.deliver_due() == 1
    clock.advance(3600)
    assert await delivery.deliver_due() == 0
    assert acks == [rid]
    state = await store.mesh_state(rid)
    assert state is not None
    assert (state["attempts"], state["message_id"], state["acknowledged"]) == (3, "MSG-1", True)


async def test_an_attempt_whose_outcome_is_unknown_is_repeated_with_its_local_id() -> None:
    """A gateway that stopped during a send (the attempt recorded, no message id) sends again on
    restart, with the same local id, and says so; once MESH's message id is recorded, never."""
    clock, outbox, acks = Clock(), FakeOutbox(), []
    store, _, rid = await setup(clock, outbox, acks)
    await store.mesh_sending(rid, clock())  # ... and the process died inside the request
    _, restarted, _ = await setup(clock, outbox, acks, store=store)
    with capture_logs() as logs:
        assert await restarted.deliver_due() == 1
    assert "gateway.mesh_resend" in [e["event"] for e in logs]
    (sent,) = outbox.sent
    assert sent["local_id"] == str(rid)
    state = await store.mesh_state(rid)
    assert state is not None
    assert (state["attempts"], state["message_id"]) == (2, "MSG-1")
    for _ in range(3):
        clock.advance(10)
        await restarted.deliver_due()
    assert len(outbox.sent) == 1


async def test_it_gives_up_after_its_time_and_on_an_undeliverable_message() -> None:
    """Sends refused for longer than give_up_s stop; a message MESH calls undeliverable stops
    being tracked; neither acknowledges the disclosure."""
    clock, outbox, acks = Clock(), FakeOutbox(), []
    outbox.fail = 1000
    store, delivery, rid = await setup(clock, outbox, acks)
    for _ in range(40):
        await delivery.deliver_due()
        clock.advance(4)
    state = await store.mesh_state(rid)
    assert state is not None
    assert (state["given_up"], state["last_error"]) == (True, "mesh_send_failed")
    assert delivery.failed_attempts < 40  # it stopped trying

    clock2, outbox2 = Clock(), FakeOutbox()
    outbox2.status = "undeliverable"
    store2, delivery2, rid2 = await setup(clock2, outbox2, acks)
    await delivery2.deliver_due()
    clock2.advance(10)
    await delivery2.deliver_due()
    state2 = await store2.mesh_state(rid2)
    assert state2 is not None
    assert (state2["given_up"], state2["last_error"]) == (True, "mesh_undeliverable")
    assert acks == []
