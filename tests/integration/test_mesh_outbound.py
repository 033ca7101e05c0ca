"""Issue 16, outbound: referrals from an NHS trust's MESH mailbox into Cairn (acceptance 1, 3, 4).

The other side is NHS England's own software, unchanged: ``mesh-sandbox`` (the ``mesh``
fixture, full MESH authentication) and ``mesh-client`` as the trust's system. The broker is
real, over mutual TLS, publishing to the real Kafka; the bridge signs as ``kelder-nhs``.

1. A referral sent from the trust's mailbox reaches the broker and its recipient's topic
   through Kafka, once; the trust gets the receipt back in its mailbox as a FHIR message.
3. Bad input (not FHIR, not a message, resource types outside the mapping, no NHS number, a
   referral the broker refuses) gets a refusal naming the FHIRPath at fault in the sender's
   mailbox, is acknowledged, and nothing goes onward. A broker that cannot be reached leaves
   the message in MESH for later, until the give-up age, then the trust is told.
4. The bridge (``cairn nhs mesh``, a process of its own) killed with SIGKILL after the broker's
   202 and before acknowledging: restarted, it gets the original receipt back (replay), the
   referral is on the recipient's topic exactly once, and the message is acknowledged in MESH.
"""

from __future__ import annotations

import asyncio
import copy
import json
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle

from adapters.agency import Submitter
from adapters.client import ReferralClient
from adapters.nhs.mesh.bridge import PAUSE_FILE_ENV, Ledger, ReferralBridge
from adapters.nhs.mesh.client import FHIR_JSON, MeshError, MeshMailbox
from adapters.nhs.mesh.referrals import (
    GAVE_UP,
    NOT_A_MESSAGE,
    NOT_A_REFERRAL,
    PROBLEM_TYPE_SYSTEM,
    REFERRAL_EVENT,
    referral_id_of,
)
from adapters.nhs.mesh.settings import RECEIPT_WORKFLOW, REFERRAL_WORKFLOW, MeshSettings
from adapters.nhs.message import MESSAGE_EVENT_SYSTEM, mesh_endpoint
from broker.config import Settings
from broker.kafka.topics import delivery_topic
from schemas.federation import Federation
from tests.conftest import FederationKeys
from tests.integration.conftest import cairn_env, client, running_broker
from tests.kafka_support import read_committed_many
from tests.mesh_support import BRIDGE, HEADER_ID, TRUST_SYSTEM, LocalMesh, referral_message

TRUST = "kelder-nhs"
RECIPIENT = "kelder-idva"
WAIT_S = 60.0


def personal_values(message: dict[str, Any]) -> list[str]:
    patient = next(
        e["resource"] for e in message["entry"] if e["resource"]["resourceType"] == "Patient"
    )
    values = [i["value"] for i in patient.get("identifier", [])]
    for name in patient.get("name", []):
        values += [name.get("family", ""), *name.get("given", [])]
    values.append(patient.get("birthDate", ""))
    return [v for v in values if v]


def send(mesh: LocalMesh, body: bytes) -> str:
    """The trust's system sends ``body`` to its Cairn mailbox, as NHS's mesh-client does."""
    with mesh.client(TRUST_SYSTEM) as trust:
        return str(
            trust.send_message(BRIDGE, body, workflow_id=REFERRAL_WORKFLOW, content_type=FHIR_JSON)
        )


def replies(mesh: LocalMesh) -> list[tuple[str | None, str | None, dict[str, Any]]]:
    """(workflow id, local id, FHIR message) of each reply in the trust's inbox, acknowledged."""
    out = []
    with mesh.client(TRUST_SYSTEM) as trust:
        for message_id in trust.list_messages():
            message = trust.retrieve_message(message_id)
            try:
                body = json.loads(message.read())
            finally:
                message.close()
            out.append((message.workflow_id, message.local_id, body))
            trust.acknowledge_message(message_id)
    return out


def waiting(mesh: LocalMesh) -> list[str]:
    """The messages still in the bridge's inbox (not acknowledged)."""
    with mesh.client(BRIDGE) as bridge:
        return list(bridge.list_messages())


def mesh_settings(mesh: LocalMesh, **overrides: Any) -> MeshSettings:
    values: dict[str, Any] = {
        k.removeprefix("CAIRN_MESH_").lower(): v for k, v in mesh.env().items()
    }
    values.update(overrides)
    return MeshSettings(**values)


@contextmanager
def bridge_for(
    mesh: LocalMesh,
    submitter: Callable[[], AbstractAsyncContextManager[Submitter]],
    ledger: Path,
    *,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    **overrides: Any,
) -> Iterator[ReferralBridge]:
    settings = mesh_settings(mesh, **overrides)
    bridge = ReferralBridge(
        MeshMailbox(settings),
        settings,
        agency=TRUST,
        submitter=submitter,
        ledger=Ledger(ledger),
        clock=clock,
    )
    try:
        yield bridge
    finally:
        bridge.mesh.close()
        bridge.ledger.close()


async def on_topic(settings: Settings, agency: str, referral_id: object) -> int:
    """How many committed records of ``referral_id`` are on ``agency``'s delivery topic."""
    topic = delivery_topic(settings.topic_prefix, agency)
    records = await read_committed_many(settings.kafka_bootstrap_servers, [topic])
    return sum(1 for r in records[topic] if r.key == str(referral_id).encode())


def outcome_of(reply: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The reply validated as FHIR: its MessageHeader and its OperationOutcome."""
    Bundle.model_validate(reply)
    assert reply["type"] == "message"
    header, outcome = (e["resource"] for e in reply["entry"])
    assert header["resourceType"] == "MessageHeader"
    assert header["eventCoding"] == {"system": MESSAGE_EVENT_SYSTEM, "code": REFERRAL_EVENT}
    assert outcome["resourceType"] == "OperationOutcome"
    return header, outcome


# --- 1: a referral through MESH reaches the broker and its recipient; the receipt comes back ---


async def test_referral_from_the_trust_mailbox_reaches_the_recipient_and_the_receipt_returns(
    mesh: LocalMesh,
    kafka_settings: Settings,
    federation: Federation,
    federation_keys: FederationKeys,
    tmp_path: Path,
) -> None:
    message = referral_message()
    message_id = send(mesh, json.dumps(message).encode())
    rid = referral_id_of(BRIDGE, message_id)
    async with running_broker(kafka_settings, federation, federation_keys) as url:
        with bridge_for(
            mesh, lambda: client(federation_keys, url, TRUST), tmp_path / "ledger.sqlite"
        ) as bridge:
            assert await bridge.deliver_due() == 1
            assert await bridge.deliver_due() == 0, "a settled message is not read again"
    assert await on_topic(kafka_settings, RECIPIENT, rid) == 1
    assert waiting(mesh) == [], "the referral is acknowledged in MESH"
    ((workflow, local_id, reply),) = replies(mesh)
    assert (workflow, local_id) == (RECEIPT_WORKFLOW, message_id)
    header, outcome = outcome_of(reply)
    assert header["response"] == {"identifier": HEADER_ID, "code": "ok"}
    assert header["destination"] == [{"endpoint": mesh_endpoint(TRUST_SYSTEM)}]
    first, *recipients = outcome["issue"]
    assert first["severity"] == "information"
    assert first["details"]["coding"][0]["code"] == f"urn:uuid:{rid}"
    assert [i["details"]["text"].split(":")[0] for i in recipients] == [RECIPIENT]
    assert all(i["severity"] == "information" for i in recipients)
    text = json.dumps(reply)
    assert not [v for v in personal_values(message) if v in text], "no personal value returns"


# --- 3: bad input gets a refusal naming the FHIRPath, and nothing goes onward ------------------


def _not_fhir(_: dict[str, Any]) -> bytes:
    return b"MSH|^~\\&|not FHIR at all"


def _not_a_message(m: dict[str, Any]) -> bytes:
    m["type"] = "collection"
    return json.dumps(m).encode()


def _wrong_resource(m: dict[str, Any]) -> bytes:
    m["entry"].append({"resource": {"resourceType": "Observation", "status": "final", "code": {}}})
    return json.dumps(m).encode()


def _no_nhs_number(m: dict[str, Any]) -> bytes:
    patient = next(e["resource"] for e in m["entry"] if e["resource"]["resourceType"] == "Patient")
    patient["identifier"] = [i for i in patient["identifier"] if "nhs-number" not in i["system"]]
    if not patient["identifier"]:
        del patient["identifier"]
    return json.dumps(m).encode()


def _refused_by_broker(m: dict[str, Any]) -> bytes:
    request = next(
        e["resource"] for e in m["entry"] if e["resource"]["resourceType"] == "ServiceRequest"
    )
    request["performer"][0]["identifier"]["value"] = "kelder-nowhere"
    return json.dumps(m).encode()


BAD_INPUT = {
    "not FHIR": (_not_fhir, NOT_A_MESSAGE, "Bundle"),
    "not a FHIR message": (_not_a_message, NOT_A_MESSAGE, "Bundle.type"),
    "a resource type outside the mapping": (
        _wrong_resource,
        NOT_A_REFERRAL,
        "Bundle.entry[6].resource.resourceType",
    ),
    "no NHS number": (_no_nhs_number, NOT_A_REFERRAL, "Bundle.entry[1].resource.identifier"),
    "a referral the broker refuses": (
        _refused_by_broker,
        "urn:cairn:problem:unknown-agency",  # the broker's problem type, passed on
        "Bundle.entry[2].resource.performer",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
async def test_bad_input_gets_a_refusal_in_the_senders_mailbox_and_nothing_goes_onward(
    case: str,
    mesh: LocalMesh,
    kafka_settings: Settings,
    federation: Federation,
    federation_keys: FederationKeys,
    tmp_path: Path,
) -> None:
    make, problem_type, path = BAD_INPUT[case]
    message = referral_message()
    message_id = send(mesh, make(copy.deepcopy(message)))
    rid = referral_id_of(BRIDGE, message_id)
    async with running_broker(kafka_settings, federation, federation_keys) as url:
        with bridge_for(
            mesh, lambda: client(federation_keys, url, TRUST), tmp_path / "ledger.sqlite"
        ) as bridge:
            assert await bridge.deliver_due() == 1
            assert (bridge.submitted, bridge.refused) == (0, 1)
    assert waiting(mesh) == [], "the bad message is acknowledged, not retried"
    ((workflow, local_id, reply),) = replies(mesh)
    assert (workflow, local_id) == (RECEIPT_WORKFLOW, message_id)
    header, outcome = outcome_of(reply)
    assert header["response"]["code"] == "fatal-error"
    issues = outcome["issue"]
    assert all(i["severity"] == "error" for i in issues)
    assert any(e.startswith(path) for i in issues for e in i.get("expression", [])), issues
    assert {c["system"] for i in issues for c in i["details"]["coding"]} == {PROBLEM_TYPE_SYSTEM}
    assert {c["code"] for i in issues for c in i["details"]["coding"]} == {problem_type}
    for agency in (a.id for a in federation.agencies):
        assert await on_topic(kafka_settings, agency, rid) == 0, f"nothing sent to {agency}"
    text = json.dumps(reply)
    assert not [v for v in personal_values(message) if v in text], "no personal value returns"


async def test_an_unreachable_broker_leaves_the_message_in_mesh_until_the_give_up_age(
    mesh: LocalMesh, federation_keys: FederationKeys, tmp_path: Path
) -> None:
    """Infrastructure failures are retried with backoff, never forever: after the give-up age
    the trust gets a refusal and the message is acknowledged."""
    now = [datetime(2026, 12, 2, 12, 0, tzinfo=UTC)]
    message_id = send(mesh, json.dumps(referral_message()).encode())

    def unreachable() -> ReferralClient:  # a closed port: nothing listens there
        return client(federation_keys, "https://127.0.0.1:9", TRUST)

    with bridge_for(
        mesh,
        unreachable,
        tmp_path / "ledger.sqlite",
        clock=lambda: now[0],
        retry_initial_s=10.0,
        retry_max_s=40.0,
        give_up_s=3600.0,
    ) as bridge:
        assert await bridge.deliver_due() == 0
        assert waiting(mesh) == [message_id], "left in MESH for a later pass"
        now[0] += timedelta(seconds=5)
        assert await bridge.deliver_due() == 0  # not yet due: no attempt
        entry = bridge.ledger.get(message_id, now[0])
        assert (entry.attempts, entry.next_at) == (1, datetime(2026, 12, 2, 12, 0, 10, tzinfo=UTC))
        now[0] += timedelta(seconds=10)
        assert await bridge.deliver_due() == 0
        assert bridge.ledger.get(message_id, now[0]).attempts == 2
        assert replies(mesh) == []
        now[0] += timedelta(hours=1)
        assert await bridge.deliver_due() == 1
        now[0] += timedelta(days=61)
        assert await bridge.deliver_due() == 0
        assert bridge.ledger.prune(now[0] + timedelta(days=365)) == 0, "forgotten after 60 days"
    assert waiting(mesh) == []
    ((_, local_id, reply),) = replies(mesh)
    assert local_id == message_id
    _, outcome = outcome_of(reply)
    assert {c["code"] for i in outcome["issue"] for c in i["details"]["coding"]} == {GAVE_UP}


# --- 4: SIGKILL between the broker's 202 and the MESH acknowledgement -------------------------


async def test_bridge_killed_after_submitting_delivers_once_and_acknowledges_after_restart(
    mesh: LocalMesh,
    kafka_settings: Settings,
    federation: Federation,
    federation_keys: FederationKeys,
    tmp_path: Path,
) -> None:
    message_id = send(mesh, json.dumps(referral_message()).encode())
    rid = referral_id_of(BRIDGE, message_id)
    marker = tmp_path / "paused"
    state = tmp_path / "state"
    async with running_broker(kafka_settings, federation, federation_keys) as url:
        env = cairn_env(
            kafka_settings, federation_keys, state, **mesh.env(), CAIRN_MESH_POLL_EVERY_S="0.2"
        )
        argv = [sys.executable, "-m", "broker", "nhs", "mesh", "--as", TRUST, "--broker", url]
        log = tmp_path / "first.log"
        with log.open("wb") as out:
            first = await asyncio.create_subprocess_exec(
                *argv, env={**env, PAUSE_FILE_ENV: str(marker)}, stdout=out, stderr=out
            )
        try:
            deadline = time.monotonic() + WAIT_S
            while not marker.exists():
                assert first.returncode is None, log.read_text()[-2000:]
                assert time.monotonic() < deadline, "the bridge never got the broker's 202"
                await asyncio.sleep(0.1)
        finally:
            first.send_signal(signal.SIGKILL)
            await asyncio.wait_for(first.wait(), 30)
        assert first.returncode == -signal.SIGKILL
        assert await on_topic(kafka_settings, RECIPIENT, rid) == 1, "submitted before the kill"
        assert waiting(mesh) == [message_id], "not acknowledged: the bridge died first"
        assert replies(mesh) == []

        second = await asyncio.create_subprocess_exec(
            *argv,
            "--once",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(second.communicate(), WAIT_S)
        assert second.returncode == 0, output.decode()[-2000:]
    assert waiting(mesh) == [], "acknowledged after the restart"
    assert await on_topic(kafka_settings, RECIPIENT, rid) == 1, "delivered exactly once"
    logs = log.read_text() + output.decode()
    assert "mesh.referral_submitted" in logs
    assert not [v for v in personal_values(referral_message()) if v in logs], "no personal data"
    ((_, local_id, reply),) = replies(mesh)
    assert local_id == message_id
    header, outcome = outcome_of(reply)
    assert header["response"]["code"] == "ok"
    assert outcome["issue"][0]["details"]["coding"][0]["code"] == f"urn:uuid:{rid}"


# --- mutual TLS, as a real MESH: the client certificate settings are used -----------------------


async def test_the_bridge_reaches_mesh_over_mutual_tls_with_its_client_certificate(
    mesh_tls: LocalMesh,
    kafka_settings: Settings,
    federation: Federation,
    federation_keys: FederationKeys,
    tmp_path: Path,
) -> None:
    message_id = send(mesh_tls, json.dumps(referral_message()).encode())
    anonymous = MeshMailbox(mesh_settings(mesh_tls, client_cert_file=None, client_key_file=None))
    try:
        with pytest.raises(MeshError, match="unreachable"):
            await anonymous.list()  # no client certificate: the TLS handshake is refused
    finally:
        anonymous.close()
    async with running_broker(kafka_settings, federation, federation_keys) as url:
        with bridge_for(
            mesh_tls, lambda: client(federation_keys, url, TRUST), tmp_path / "ledger.sqlite"
        ) as bridge:
            assert await bridge.deliver_due() == 1
    assert await on_topic(kafka_settings, RECIPIENT, referral_id_of(BRIDGE, message_id)) == 1
    assert waiting(mesh_tls) == []
    ((_, local_id, reply),) = replies(mesh_tls)
    assert local_id == message_id
    assert outcome_of(reply)[0]["response"]["code"] == "ok"
