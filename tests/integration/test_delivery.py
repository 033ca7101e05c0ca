"""A referral through the real broker and the real Kafka: who gets it, and what is refused."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from adapters.client import SubmissionRefused
from broker.config import Settings
from broker.kafka.topics import federation_topics
from schemas.federation import Federation
from tests.conftest import FederationKeys
from tests.integration.conftest import client
from tests.kafka_support import read_committed
from tests.samples import sample


async def delivery_counts(settings: Settings, federation: Federation) -> dict[str, list[bytes]]:
    """Referral ids (record keys) committed on every delivery topic of this test."""
    topics = [t.name for t in federation_topics(federation, settings.topic_prefix)]
    keys = {}
    for topic in topics:
        if ".deliver." in topic:
            records = await read_committed(settings.kafka_bootstrap_servers, topic)
            keys[topic.split(".deliver.")[1]] = [r.key for r in records]
    return keys


async def test_referral_reaches_exactly_the_intended_recipients(
    broker_url: str,
    kafka_settings: Settings,
    federation: Federation,
    federation_keys: FederationKeys,
) -> None:
    """After the receipt each allowed recipient's topic holds the referral once; a recipient the
    sharing agreements refuse, and every agency not named, get nothing."""
    data = sample()
    # The NHS trust is not a party to the MARAC agreement: named, but refused by policy.
    data["header"]["recipients"] = ["kelder-idva", "kelder-marac", "kelder-nhs"]
    async with client(federation_keys, broker_url) as c:
        receipt = await c.submit(json.dumps(data).encode())
    statuses = {r.agency: r.status.value for r in receipt.recipients}
    assert statuses == {"kelder-idva": "queued", "kelder-marac": "queued", "kelder-nhs": "refused"}
    rid = data["header"]["referral_id"].encode()
    keys = await delivery_counts(kafka_settings, federation)
    assert {a: k for a, k in keys.items() if k} == {"kelder-idva": [rid], "kelder-marac": [rid]}


async def test_invalid_referral_gets_422_and_nothing_is_produced(
    broker_url: str,
    kafka_settings: Settings,
    federation: Federation,
    federation_keys: FederationKeys,
) -> None:
    """A referral with a bad field is refused naming it, and no topic receives anything."""
    data = sample()
    data["victim"]["nhs_number"] = "9990000019"  # wrong check digit
    async with client(federation_keys, broker_url) as c:
        with pytest.raises(SubmissionRefused) as info:
            await c.submit(json.dumps(data).encode())
    assert info.value.status == 422
    assert info.value.problem["errors"][0]["field"] == "victim.nhs_number"
    assert all(not k for k in (await delivery_counts(kafka_settings, federation)).values())


async def test_oversized_body_gets_413_without_being_buffered_whole(
    broker_url: str,
    kafka_settings: Settings,
    federation: Federation,
    federation_keys: FederationKeys,
) -> None:
    """A chunked body far over the limit is answered 413 long before the client finishes."""
    host, port = broker_url.removeprefix("https://").split(":")
    reader, writer = await asyncio.open_connection(
        host, int(port), ssl=federation_keys.client_ssl("kelder-police")
    )
    writer.write(
        b"POST /v1/referrals HTTP/1.1\r\nHost: x\r\nContent-Type: application/jose\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b" " * 65_536
    sent = 0
    status_line = b""
    deadline = time.monotonic() + 20
    try:
        # Up to 64 MiB would be sent; the server must answer after reading about 64 KB.
        while sent < 64 * 1024 * 1024 and time.monotonic() < deadline:
            try:
                status_line = await asyncio.wait_for(reader.readline(), 0.01)
            except TimeoutError:
                status_line = b""
            if status_line:
                break
            writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            await writer.drain()
            sent += len(chunk)
    except ConnectionError:
        status_line = status_line or await reader.readline()
    finally:
        writer.close()
    assert status_line.startswith(b"HTTP/1.1 413"), status_line
    assert sent < 8 * 1024 * 1024, f"the client got to send {sent} bytes before the 413"
    assert all(not k for k in (await delivery_counts(kafka_settings, federation)).values())
