"""Disclosures to the NHS trust through MESH (issue 16, acceptance 2), end to end.

Real Kafka, a real broker following the receipts topic, an in-process auditor, NHS England's
``mesh-sandbox`` (``tests/mesh_support.py``) and NHS's ``mesh-client`` as the trust's own system.
The police refer to the trust; the trust's gateway stores the disclosure and sends it from the
bridge's mailbox to the trust system's mailbox; the trust system downloads a FHIR message that
``fhir.resources`` validates, whose Provenance carries the broker's JWS (verified with the
broker's key from the federation registry), and acknowledges it in MESH; the gateway sees that
in MESH's tracking and acknowledges the disclosure: one ``acknowledged`` audit event. Across
gateway restarts (one before MESH took the message, one after) it is sent once.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from fhir.resources.R4B.bundle import Bundle
from structlog.testing import capture_logs

from adapters.nhs.mesh.disclosures import ACKNOWLEDGED_BY, DisclosureDelivery, attach
from adapters.nhs.mesh.settings import DISCLOSURE_WORKFLOW, MeshSettings
from adapters.nhs.message import broker_signature
from broker.audit.index import Query
from broker.config import Settings
from gateway.postgres import PostgresGatewayStore
from gateway.service import Gateway
from gateway.settings import GatewaySettings
from gateway.sqlite import SqliteGatewayStore
from keys import BROKER_ID, DISCLOSURE_TYP, verify_signed
from schemas.audit import AuditEventType
from schemas.disclosure import Disclosure
from schemas.receipt import RecipientStatus
from tests.conftest import FederationKeys
from tests.gateway_support import running_gateway, server_certificate
from tests.integration import test_gateway as base
from tests.integration.conftest import client
from tests.integration.test_consumer_faults import FollowingAuditor
from tests.mesh_support import BRIDGE, TRUST_SYSTEM, LocalMesh
from tests.samples import personal_values
from tests.unit.gateway.test_mesh_jobs import given_up_and_deleted, jobs_survive_a_restart
from tests.unit.policy.cases import referral

TRUST = "kelder-nhs"
WAIT_S = 60.0


async def eventually(check: Callable[[], Any], what: str, timeout_s: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:g} s: {what}")
        await asyncio.sleep(0.1)


# The broker and its settings, as the gateway's own integration tests make them.
settings, broker = base.settings, base.broker


@pytest.fixture
def gw(federation_keys: FederationKeys, tmp_path: Path) -> GatewaySettings:
    cert, key = server_certificate(federation_keys, tmp_path / "tls", TRUST)
    return GatewaySettings(tls_cert_file=cert, tls_key_file=key, poll_every_s=0.1)


def bridge_settings(mesh: LocalMesh, **overrides: Any) -> MeshSettings:
    """The trust's bridge on ``BRIDGE``, delivering to ``TRUST_SYSTEM``, with short pauses."""
    given = {k.removeprefix("CAIRN_MESH_").lower(): v for k, v in mesh.env(BRIDGE).items()}
    return MeshSettings(
        **{**given, "poll_every_s": 0.2, "retry_initial_s": 0.2, "retry_max_s": 1.0, **overrides}
    )


async def refer_to_trust(keys: FederationKeys, broker: str) -> tuple[UUID, dict[str, Any]]:
    """The police refer one victim to the trust's safeguarding team (health safeguarding)."""
    source = referral("HEALTH_SAFEGUARDING", [TRUST], "kelder-police")
    async with client(keys, broker) as police:
        receipt = await police.submit(source)
    assert [(r.agency, r.status) for r in receipt.recipients] == [(TRUST, RecipientStatus.QUEUED)]
    return source.header.referral_id, source.model_dump(mode="json")


def in_trust_mailbox(mesh: LocalMesh) -> list[tuple[str, str | None, bytes]]:
    """(MESH message id, local id, body) of every disclosure waiting for the trust's system,
    read with NHS's mesh-client (blocking: run it in a thread)."""
    with mesh.client(TRUST_SYSTEM) as trust:
        found = []
        for message_id in trust.list_messages(workflow_filter=DISCLOSURE_WORKFLOW):
            message = trust.retrieve_message(message_id)
            try:
                found.append((message_id, message.local_id, message.read()))
            finally:
                message.close()
        return found


def acknowledge_in_mesh(mesh: LocalMesh, message_id: str) -> None:
    with mesh.client(TRUST_SYSTEM) as trust:
        trust.acknowledge_message(message_id)


def attaching(mesh_settings: MeshSettings, into: list[DisclosureDelivery]) -> Callable[..., None]:
    def prepare(gateway: Gateway) -> None:
        into.append(attach(gateway, mesh_settings))

    return prepare


async def test_a_disclosure_reaches_the_trust_mailbox_as_fhir_and_its_mesh_ack_is_audited(
    settings: Settings,
    broker: str,
    federation_keys: FederationKeys,
    mesh: LocalMesh,
    gw: GatewaySettings,
    tmp_path: Path,
) -> None:
    """The trust's system downloads a valid FHIR message of the disclosure, with the broker's
    verifiable JWS as its Provenance, and acknowledges it in MESH: the gateway acknowledges
    the disclosure (by client:mesh) and the audit log holds one ``acknowledged`` event."""
    rid, source = await refer_to_trust(federation_keys, broker)
    channels: list[DisclosureDelivery] = []
    async with (
        FollowingAuditor(settings, federation_keys, tmp_path / "audit") as auditor,
        running_gateway(
            settings,
            gw,
            TRUST,
            federation_keys,
            store=SqliteGatewayStore(tmp_path / "gw.sqlite"),
            prepare=attaching(bridge_settings(mesh), channels),
        ) as running,
    ):
        with capture_logs() as logs:
            await deliver_and_acknowledge(
                running, channels, auditor, mesh, federation_keys, rid, source
            )
    # Neither the gateway's log lines nor the audit event carry anything personal.
    text = json.dumps(logs, default=str)
    assert any(e["event"] == "gateway.mesh_acknowledged" for e in logs)
    assert not any(value in text for value in personal_values(source))


async def deliver_and_acknowledge(
    running: Any,
    channels: list[DisclosureDelivery],
    auditor: Any,
    mesh: LocalMesh,
    federation_keys: FederationKeys,
    rid: UUID,
    source: dict[str, Any],
) -> None:
    """Through MESH and back, as the test above says."""
    (delivery,) = channels
    await eventually(lambda: delivery.sent == 1, "the disclosure sent into MESH")
    ((message_id, local_id, body),) = await asyncio.to_thread(in_trust_mailbox, mesh)
    assert local_id == str(rid)

    # The trust's system reads a FHIR message that fhir.resources validates ...
    message = json.loads(body)
    Bundle.model_validate(message)
    assert message["type"] == "message"
    kinds = [e["resource"]["resourceType"] for e in message["entry"]]
    assert kinds[0] == "MessageHeader"
    assert {"Patient", "ServiceRequest", "Consent", "Provenance"} <= set(kinds)
    header = message["entry"][0]["resource"]
    assert header["destination"][0]["receiver"]["identifier"]["value"] == TRUST
    assert header["sender"]["identifier"]["value"] == "kelder-police"
    patient = next(
        e["resource"] for e in message["entry"] if e["resource"]["resourceType"] == "Patient"
    )
    assert patient["identifier"][0]["value"] == source["victim"]["nhs_number"]

    # ... whose Provenance is the broker's signature over exactly what the gateway stored.
    registry = federation_keys.trust(TRUST).registry()
    payload = verify_signed(
        broker_signature(message),
        registry,
        signer=BROKER_ID,
        typ=DISCLOSURE_TYP,
        now=datetime.now(UTC),
    )
    signed = Disclosure.model_validate_json(payload)
    assert (signed.referral_id, signed.recipient_agency) == (rid, TRUST)
    stored = await running.service.get(rid)
    assert stored is not None
    assert stored.disclosure() == signed
    assert stored.acknowledged_at is None  # not before the trust said so in MESH

    # The trust's system acknowledges the message in MESH; the gateway acknowledges it.
    await asyncio.to_thread(acknowledge_in_mesh, mesh, message_id)
    await eventually(lambda: delivery.acknowledged == 1, "MESH's acknowledgement seen")
    again = await running.service.get(rid)
    assert again is not None
    assert again.ack_status == "filed"
    state = await running.service.store.mesh_state(rid)
    assert state is not None
    assert (state["message_id"], state["acknowledged"], state["attempts"]) == (
        message_id,
        True,
        1,
    )

    async def acknowledged() -> list[Any]:
        return await auditor.call(
            auditor.log.query, Query(types=(AuditEventType.ACKNOWLEDGED,), message_id=rid)
        )

    await eventually(acknowledged, "the acknowledgement in the audit log")
    await eventually(
        lambda: running.service.receipts_sent == 2, "the delivery and the acknowledgement sent"
    )
    (entry,) = await acknowledged()
    assert (entry.event.recipient, entry.event.viewer) == (TRUST, ACKNOWLEDGED_BY)
    assert entry.event.status is not None
    assert entry.event.status.value == "filed"
    assert await running.service.store.pending_receipts(10) == ()
    text = json.dumps(entry.event.model_dump(mode="json"))
    assert not any(value in text for value in personal_values(source))


async def test_restarts_before_and_after_mesh_took_it_send_the_disclosure_once(
    settings: Settings,
    broker: str,
    federation_keys: FederationKeys,
    mesh: LocalMesh,
    gw: GatewaySettings,
    tmp_path: Path,
) -> None:
    """A gateway whose MESH password is wrong stores the disclosure and fails to send it; a
    restarted one sends it (once); a third, after MESH took it, only tracks it and, when the
    trust acknowledges, acknowledges the disclosure: one message, one audit event."""
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not the password\n")
    path = tmp_path / "gw.sqlite"
    rid, _ = await refer_to_trust(federation_keys, broker)

    refused: list[DisclosureDelivery] = []
    async with running_gateway(
        settings,
        gw,
        TRUST,
        federation_keys,
        store=SqliteGatewayStore(path),
        prepare=attaching(bridge_settings(mesh, password_file=wrong), refused),
    ) as first:
        await eventually(lambda: refused[0].failed_attempts >= 2, "two refused attempts")
        assert first.service.stored == 1
        assert refused[0].sent == 0
    assert await asyncio.to_thread(in_trust_mailbox, mesh) == []

    sending: list[DisclosureDelivery] = []
    async with running_gateway(
        settings,
        gw,
        TRUST,
        federation_keys,
        store=SqliteGatewayStore(path),
        prepare=attaching(bridge_settings(mesh), sending),
    ) as second:
        await eventually(lambda: sending[0].sent == 1, "sent after the restart")
        assert second.service.stored == 0  # Kafka's offset was committed by the first
        state = await second.service.store.mesh_state(rid)
        assert state is not None
        assert state["sent"] is True

    tracking: list[DisclosureDelivery] = []
    async with (
        FollowingAuditor(settings, federation_keys, tmp_path / "audit") as auditor,
        running_gateway(
            settings,
            gw,
            TRUST,
            federation_keys,
            store=SqliteGatewayStore(path),
            prepare=attaching(bridge_settings(mesh), tracking),
        ) as third,
    ):
        ((message_id, local_id, _),) = await asyncio.to_thread(in_trust_mailbox, mesh)
        assert local_id == str(rid)
        await asyncio.to_thread(acknowledge_in_mesh, mesh, message_id)
        await eventually(lambda: tracking[0].acknowledged == 1, "acknowledged after restarts")
        assert tracking[0].sent == 0  # the third gateway never sent it again

        async def acknowledged() -> list[Any]:
            return await auditor.call(
                auditor.log.query, Query(types=(AuditEventType.ACKNOWLEDGED,), message_id=rid)
            )

        await eventually(acknowledged, "the acknowledgement in the audit log")
        # The acknowledgement (the delivery receipt went with an earlier gateway, or this one).
        await eventually(lambda: third.service.receipts_sent >= 1, "the acknowledgement sent")
        assert await third.service.store.pending_receipts(10) == ()
        assert len(await acknowledged()) == 1
    # Nothing left for the trust's system: the one message was acknowledged and MESH has no other.
    assert await asyncio.to_thread(in_trust_mailbox, mesh) == []


async def test_the_mesh_jobs_keep_their_state_in_postgresql(pg_url: str) -> None:
    """The MESH jobs and kept JWS behave in a PostgreSQL gateway store as in SQLite: made with
    the referral, kept across a restart, given up for good, deleted with the disclosure."""
    await jobs_survive_a_restart(lambda: PostgresGatewayStore(pg_url))
    await given_up_and_deleted(lambda: PostgresGatewayStore(pg_url))
