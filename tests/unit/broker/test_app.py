"""The broker's HTTP interface against the in-memory transport."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp.test_utils import TestClient

from broker.transport import MemoryTransport
from tests.samples import sample, sample_bytes

JSON = {"Content-Type": "application/json"}


async def post(client: TestClient, body: bytes, **headers: str) -> Any:  # type: ignore[type-arg]
    return await client.post("/v1/referrals", data=body, headers={**JSON, **headers})


async def test_accepted_referral_gets_202_and_one_record_per_recipient(
    client: TestClient,
    transport: MemoryTransport,  # type: ignore[type-arg]
) -> None:
    """A valid referral is answered 202 with a receipt after one record per recipient."""
    data = sample()
    response = await post(client, json.dumps(data).encode())
    assert response.status == 202
    receipt = await response.json()
    assert receipt["referral_id"] == data["header"]["referral_id"]
    assert [r["agency"] for r in receipt["recipients"]] == ["kelder-idva", "kelder-marac"]
    assert sorted(transport.topics) == ["unit.deliver.kelder-idva", "unit.deliver.kelder-marac"]
    record = transport.topics["unit.deliver.kelder-idva"][0]
    assert record.key == data["header"]["referral_id"].encode()


async def test_invalid_referral_gets_422_naming_the_field_and_sends_nothing(
    client: TestClient,
    transport: MemoryTransport,  # type: ignore[type-arg]
) -> None:
    """A bad date of birth is refused with problem+json naming victim.date_of_birth."""
    data = sample()
    data["victim"]["date_of_birth"] = "not a date"
    response = await post(client, json.dumps(data).encode())
    assert response.status == 422
    assert response.content_type == "application/problem+json"
    problem = await response.json()
    assert problem["type"] == "urn:cairn:problem:invalid-referral"
    assert [e["field"] for e in problem["errors"]] == ["victim.date_of_birth"]
    assert "not a date" not in json.dumps(problem)  # values are never echoed back
    assert transport.published == 0


async def test_unknown_recipient_is_refused_with_422(
    client: TestClient,
    transport: MemoryTransport,  # type: ignore[type-arg]
) -> None:
    """A recipient outside the federation is refused and nothing is sent to the others."""
    response = await post(client, sample_bytes(recipients=["kelder-idva", "nowhere-council"]))
    assert response.status == 422
    problem = await response.json()
    assert problem["type"] == "urn:cairn:problem:unknown-agency"
    assert problem["errors"] == [
        {"field": "header.recipients.1", "problem": "not a member of this federation"}
    ]
    assert transport.published == 0


async def test_malformed_json_is_a_422_not_a_500(client: TestClient) -> None:  # type: ignore[type-arg]
    """Bytes that are not JSON get a typed 422, never a 500."""
    response = await post(client, b"{not json")
    assert response.status == 422
    assert (await response.json())["type"] == "urn:cairn:problem:invalid-referral"


async def test_wrong_media_type_gets_415(client: TestClient) -> None:  # type: ignore[type-arg]
    """Only application/json is accepted."""
    response = await client.post(
        "/v1/referrals", data=sample_bytes(), headers={"Content-Type": "text/plain"}
    )
    assert response.status == 415
    assert response.content_type == "application/problem+json"


async def test_declared_oversized_body_gets_413(
    client: TestClient,
    transport: MemoryTransport,  # type: ignore[type-arg]
) -> None:
    """A Content-Length over the limit is refused with 413 before the body is read."""
    response = await post(client, b" " * 64_001)
    assert response.status == 413
    assert (await response.json())["type"] == "urn:cairn:problem:payload-too-large"
    assert transport.published == 0


async def test_streamed_oversized_body_is_refused_while_streaming(
    client: TestClient,
    transport: MemoryTransport,  # type: ignore[type-arg]
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
        response = await post(client, body())  # type: ignore[arg-type]
        status = response.status
    except Exception:  # the server may close while we are still sending
        status = 413
    assert status == 413
    assert sent < 16_384_000
    assert transport.published == 0


async def test_kafka_unavailable_gives_503_and_nothing(
    client: TestClient,
    transport: MemoryTransport,  # type: ignore[type-arg]
) -> None:
    """When the transport cannot commit, the sender gets 503 problem+json with Retry-After."""
    transport.available = False
    response = await post(client, sample_bytes())
    assert response.status == 503
    assert response.headers["Retry-After"]
    assert (await response.json())["type"] == "urn:cairn:problem:kafka-unavailable"
    assert transport.topics == {}


async def test_readyz_follows_the_transport(
    client: TestClient,
    transport: MemoryTransport,  # type: ignore[type-arg]
) -> None:
    """/readyz is 200 while the transport is ready and 503 when it is not; /healthz stays 200."""
    assert (await client.get("/readyz")).status == 200
    transport.available = False
    assert (await client.get("/readyz")).status == 503
    assert (await client.get("/healthz")).status == 200


async def test_unknown_route_is_problem_json(client: TestClient) -> None:  # type: ignore[type-arg]
    """404 and 405 are problem+json too."""
    r404 = await client.get("/v1/nothing")
    assert r404.status == 404
    assert r404.content_type == "application/problem+json"
    r405 = await client.get("/v1/referrals")
    assert r405.status == 405
    assert r405.content_type == "application/problem+json"


async def test_request_id_is_echoed(client: TestClient) -> None:  # type: ignore[type-arg]
    """The caller's X-Request-Id comes back on the response and in problem bodies."""
    response = await post(client, b"[]", **{"X-Request-Id": "req-123"})
    assert response.headers["X-Request-Id"] == "req-123"
    assert (await response.json())["request_id"] == "req-123"
