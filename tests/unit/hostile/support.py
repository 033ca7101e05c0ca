"""Talking to a broker the way a hostile client would: raw bytes over mutual TLS.

A well-behaved HTTP client refuses to send most of what these tests need (a header value
with a stray byte, a header whose JSON nests a thousand deep, a signature over a header no
library would write), so requests are written by hand and answers parsed by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from keys.envelope import REFERRAL_TYP
from keys.jwk import SigningKey, b64url_encode
from tests.unit.conftest import Broker

__all__ = ["Answer", "assert_problem", "exchange", "header_text", "post_signed", "signed"]

_TIMEOUT_S = 10.0  # seconds for one whole exchange with the broker on loopback


@dataclass(frozen=True)
class Answer:
    """What the broker sent back: status, headers (names lower-cased) and the raw body."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def exchange(
    url: str,
    context: ssl.SSLContext,
    *,
    body: bytes,
    path: str = "/v1/referrals",
    headers: tuple[tuple[bytes, bytes], ...] = (),
    content_type: bytes = b"application/jose",
) -> Answer:
    """One POST over a fresh TLS connection, headers sent byte for byte as given."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 443
    head = [
        b"POST " + path.encode() + b" HTTP/1.1",
        b"Host: " + f"{host}:{port}".encode(),
        b"Content-Type: " + content_type,
        b"Content-Length: " + str(len(body)).encode(),
        b"Connection: close",
        *(name + b": " + value for name, value in headers),
    ]
    request = b"\r\n".join(head) + b"\r\n\r\n" + body

    async def run() -> bytes:
        reader, writer = await asyncio.open_connection(host, port, ssl=context)
        try:
            writer.write(request)
            await writer.drain()
            return await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()

    raw = await asyncio.wait_for(run(), _TIMEOUT_S)
    head_bytes, _, rest = raw.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    parsed = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    if "content-length" in parsed:
        rest = rest[: int(parsed["content-length"])]
    return Answer(status, parsed, rest)


def signed(header: str, payload: bytes, key: SigningKey) -> bytes:
    """A compact JWS over ``payload`` whose protected header is exactly the text ``header``."""
    protected = b64url_encode(header.encode("utf-8"))
    body = b64url_encode(payload)
    signature = key.private_key.sign(f"{protected}.{body}".encode("ascii"))
    return f"{protected}.{body}.{b64url_encode(signature)}".encode("ascii")


def header_text(key: SigningKey, *, iat: str, extra: str = "") -> str:
    """A referral's protected header, with ``iat`` (and any ``extra`` members) as raw JSON."""
    return f'{{"alg":"EdDSA","kid":"{key.kid}","typ":"{REFERRAL_TYP}","iat":{iat}{extra}}}'


async def post_signed(
    broker: Broker,
    payload: dict[str, Any] | bytes,
    *,
    agency: str = "kelder-police",
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> Answer:
    """``payload`` signed as ``agency`` signs it, posted over ``agency``'s TLS identity."""
    return await exchange(
        broker.url,
        broker.keys.client_ssl(agency),
        body=broker.sign(agency, payload),
        headers=headers,
    )


def assert_problem(answer: Answer, *, published_before: int, published_now: int) -> dict[str, Any]:
    """``answer`` is a typed 4xx problem, shows no traceback, and nothing was published."""
    assert 400 <= answer.status < 500, (answer.status, answer.body[:300])
    assert answer.headers.get("content-type", "").startswith("application/problem+json")
    text = answer.body.decode("utf-8", "replace")
    assert "Traceback" not in text
    assert 'File "' not in text
    body = answer.json()
    assert str(body["type"]).startswith("urn:cairn:problem:")
    assert body["status"] == answer.status
    assert published_now == published_before, "a refused request published records"
    return body  # type: ignore[no-any-return]
