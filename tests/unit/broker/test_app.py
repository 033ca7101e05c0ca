"""The broker's HTTP interface over mutual TLS, against the in-memory transport."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from adapters.client import SubmissionRefused
from broker.config import Settings
from broker.envelope import open_record
from broker.kafka.transport import MemoryTransport
from tests.conftest import FederationKeys
from tests.samples import sample, sample_bytes
from tests.unit.conftest import AgencyClient, captured_logs

JOSE = {"Content-Type": "application/jose"}


async def refused(client_cm: Any, body: bytes) -> SubmissionRefused:
    async with client_cm as client:
        with pytest.raises(SubmissionRefused) as info:
            await client.submit(body)
    return info.value


async def test_accepted_referral_gets_202_and_one_record_per_recipient(
    agency_client: AgencyClient, transport: MemoryTransport
) -> None:
    """A valid signed referral is answered with a receipt after one record per recipient."""
    data = sample()
    async with agency_client("kelder-police") as client:
        receipt = await client.submit(json.dumps(data).encode())
    assert str(receipt.referral_id) == data["header"]["referral_id"]
    assert [r.agency for r in receipt.recipients] == ["kelder-idva", "kelder-marac"]
    assert sorted(transport.topics) == [
        "unit.audit",
        "unit.deliver.kelder-idva",
        "unit.deliver.kelder-marac",
    ]
    events = [dict(r.headers)["cairn-event-type"] for r in transport.topics["unit.audit"]]
    assert events == [b"received", b"decided", b"disclosed", b"disclosed"]
    record = transport.topics["unit.deliver.kelder-idva"][0]
    assert record.key == data["header"]["referral_id"].encode()


async def test_the_override_decision_maker_is_in_the_audit_events_only(
    agency_client: AgencyClient, transport: MemoryTransport
) -> None:
    """The staff id is in the audit events (accountability), never in a log or Kafka header."""
    data = sample("referral-consent-refused.json")
    staff_id = data["consent"]["override"]["decision_maker_id"]
    with captured_logs() as logs:
        async with agency_client(data["header"]["sender_agency"]) as client:
            await client.submit(json.dumps(data).encode())
    audited = [json.loads(r.value) for r in transport.topics["unit.audit"]]
    outcomes = [e for e in audited if e["type"] in ("disclosed", "refused")]
    assert outcomes
    assert {e["override_by_id"] for e in outcomes} == {staff_id}
    headers = [v for records in transport.topics.values() for r in records for _, v in r.headers]
    assert staff_id.encode() not in b"".join(headers)
    assert logs
    assert staff_id not in repr(logs)


async def test_invalid_referral_gets_422_naming_the_field_and_sends_nothing(
    agency_client: AgencyClient, transport: MemoryTransport
) -> None:
    """A bad date of birth is refused with problem+json naming victim.date_of_birth."""
    data = sample()
    data["victim"]["date_of_birth"] = "not a date"
    exc = await refused(agency_client("kelder-police"), json.dumps(data).encode())
    assert exc.status == 422
    assert exc.problem["type"] == "urn:cairn:problem:invalid-referral"
    assert [e["field"] for e in exc.problem["errors"]] == ["victim.date_of_birth"]
    assert "not a date" not in json.dumps(exc.problem)  # values are never echoed back
    assert transport.published == 0


async def test_an_override_naming_its_decision_maker_the_old_way_gets_422_naming_the_new_field(
    agency_client: AgencyClient, transport: MemoryTransport
) -> None:
    """'decision_maker' is refused at that field, the problem naming decision_maker_id."""
    data = sample("referral-consent-refused.json")
    data["consent"]["override"]["decision_maker"] = data["consent"]["override"].pop(
        "decision_maker_id"
    )
    exc = await refused(agency_client(data["header"]["sender_agency"]), json.dumps(data).encode())
    assert exc.status == 422
    [error] = exc.problem["errors"]
    assert error["field"] == "consent.override.decision_maker"
    assert "decision_maker_id" in error["problem"]
    assert "NHS-SG-0001" not in json.dumps(exc.problem)
    assert transport.published == 0


async def test_unknown_recipient_is_refused_with_422(
    agency_client: AgencyClient, transport: MemoryTransport
) -> None:
    """A recipient outside the federation is refused and nothing is sent to the others."""
    body = sample_bytes(recipients=["kelder-idva", "nowhere-council"])
    exc = await refused(agency_client("kelder-police"), body)
    assert exc.status == 422
    assert exc.problem["type"] == "urn:cairn:problem:unknown-agency"
    assert exc.problem["errors"] == [
        {"field": "header.recipients.1", "problem": "not a member of this federation"}
    ]
    assert transport.published == 0


async def test_signed_non_json_is_a_422_not_a_500(agency_client: AgencyClient) -> None:
    """Signed bytes that are not JSON get a typed 422, never a 500."""
    exc = await refused(agency_client("kelder-police"), b"{not json")
    assert exc.status == 422
    assert exc.problem["type"] == "urn:cairn:problem:invalid-referral"


async def test_unsigned_json_gets_415_saying_to_sign(
    police_session: aiohttp.ClientSession, broker_url: str, transport: MemoryTransport
) -> None:
    """A plain JSON referral is refused: only signed referrals (application/jose) are taken."""
    response = await police_session.post(
        f"{broker_url}/v1/referrals",
        data=sample_bytes(),
        headers={"Content-Type": "application/json"},
    )
    assert response.status == 415
    assert response.content_type == "application/problem+json"
    assert "signed" in (await response.json())["detail"]
    assert transport.published == 0


async def test_declared_oversized_body_gets_413(
    police_session: aiohttp.ClientSession, broker_url: str, transport: MemoryTransport
) -> None:
    """A Content-Length over the limit is refused with 413 before the body is read."""
    response = await police_session.post(
        f"{broker_url}/v1/referrals", data=b" " * 64_001, headers=JOSE
    )
    assert response.status == 413
    assert (await response.json())["type"] == "urn:cairn:problem:payload-too-large"
    assert transport.published == 0


async def test_streamed_oversized_body_is_refused_while_streaming(
    police_session: aiohttp.ClientSession, broker_url: str, transport: MemoryTransport
) -> None:
    """A chunked body with no length is cut off once it passes the limit, not buffered whole."""
    sent = 0

    async def body() -> Any:
        nonlocal sent
        for _ in range(1000):  # would be 16 MB in all
            sent += 16_384
            yield b" " * 16_384
            await asyncio.sleep(0)

    try:
        response = await police_session.post(
            f"{broker_url}/v1/referrals",
            data=body(),
            headers=JOSE,  # type: ignore[arg-type]
        )
        status = response.status
    except aiohttp.ClientError:  # the server may close while we are still sending
        status = 413
    assert status == 413
    assert sent < 16_384_000
    assert transport.published == 0


async def test_kafka_unavailable_gives_503_and_nothing(
    police_session: aiohttp.ClientSession,
    broker_url: str,
    agency_client: AgencyClient,
    transport: MemoryTransport,
) -> None:
    """When the transport cannot commit, the sender gets 503 problem+json with Retry-After."""
    transport.available = False
    async with agency_client("kelder-police") as client:
        signed = client.sign(sample_bytes())
    response = await police_session.post(f"{broker_url}/v1/referrals", data=signed, headers=JOSE)
    assert response.status == 503
    assert response.headers["Retry-After"]
    assert (await response.json())["type"] == "urn:cairn:problem:kafka-unavailable"
    assert transport.topics == {}


async def test_readyz_follows_the_transport(
    police_session: aiohttp.ClientSession, broker_url: str, transport: MemoryTransport
) -> None:
    """/readyz is 200 while the transport is ready and 503 when it is not; /healthz stays 200."""
    assert (await police_session.get(f"{broker_url}/readyz")).status == 200
    transport.available = False
    assert (await police_session.get(f"{broker_url}/readyz")).status == 503
    assert (await police_session.get(f"{broker_url}/healthz")).status == 200


async def test_unknown_route_is_problem_json(
    police_session: aiohttp.ClientSession, broker_url: str
) -> None:
    """404 and 405 are problem+json too."""
    r404 = await police_session.get(f"{broker_url}/v1/nothing")
    assert r404.status == 404
    assert r404.content_type == "application/problem+json"
    r405 = await police_session.get(f"{broker_url}/v1/referrals")
    assert r405.status == 405
    assert r405.content_type == "application/problem+json"


async def test_request_id_is_echoed(police_session: aiohttp.ClientSession, broker_url: str) -> None:
    """The caller's X-Request-Id comes back on the response and in problem bodies."""
    response = await police_session.post(
        f"{broker_url}/v1/referrals", data=b"x", headers={**JOSE, "X-Request-Id": "req-123"}
    )
    assert response.headers["X-Request-Id"] == "req-123"
    assert (await response.json())["request_id"] == "req-123"


async def test_each_disclosure_tells_its_recipient_when_to_acknowledge(
    agency_client: AgencyClient,
    transport: MemoryTransport,
    settings: Settings,
    federation_keys: FederationKeys,
) -> None:
    """The sealed disclosure carries the deadline the broker's overdue sweep holds the
    recipient to (DESIGN: MARAC and high-risk IDVA deadlines), so the recipient's gateway can
    show it: the IDVA service's is deadline_idva_high_s after acceptance."""
    data = sample()
    assert data["risk"]["level"] == "high"
    async with agency_client("kelder-police") as client:
        receipt = await client.submit(json.dumps(data).encode())
    idva = federation_keys.trust("kelder-idva")
    disclosure = open_record(
        transport.topics["unit.deliver.kelder-idva"][0].value,
        recipient="kelder-idva",
        keys=idva.decryption_keys(),
        registry=idva.registry(),
        now=datetime.now(UTC),
    )
    expected = receipt.accepted_at + timedelta(seconds=settings.deadline_idva_high_s)
    assert disclosure.acknowledge_by == expected
