"""Slow clients are cut off and over-limit ones refused, while the broker keeps answering.

The real broker app over real mutual TLS on a loopback port, started the way ``cairn serve``
starts it (``broker.web.server.start_server``), with timeouts of a second so a stall is cut
quickly. Each stalling client measures, from the moment it starts stalling, how long the
server takes to close the connection (its read sees EOF): within the configured bound plus a
margin, and not before most of it has passed (so the timer cut it, not some error).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
import pytest

from adapters.client import ReferralClient
from broker.config import Settings
from broker.kafka.transport import MemoryTransport
from broker.ops.metrics import Metrics
from broker.state import SqliteStore
from broker.web.app import create_app
from broker.web.server import CutReason, Listening, start_server
from schemas.federation import Federation
from tests.conftest import FederationKeys
from tests.samples import sample_bytes
from tests.unit.conftest import captured_logs

TIMEOUT_S = 1.0  # every timeout of these tests' broker
MARGIN_S = 2.0  # on a loaded two-core machine; the bound is what is tested, not speed
WAIT_S = 10.0  # the most any single step of these tests may take
PER_KIND = 10  # five kinds of stall: 50 connections
HOST = "127.0.0.1"
AGENCIES = ("kelder-nhs", "kelder-idva", "kelder-csc", "kelder-housing", "kelder-probation")


def tight(settings: Settings, **update: object) -> Settings:
    return settings.model_copy(
        update={
            "http_host": HOST,
            "http_port": 0,
            "http_tls_handshake_timeout_s": TIMEOUT_S,
            "http_header_timeout_s": TIMEOUT_S,
            "http_keepalive_idle_s": TIMEOUT_S,
            "http_body_grace_s": TIMEOUT_S,
            "http_body_min_rate_bytes_per_s": 100,
            **update,
        }
    )


@dataclass
class Running:
    server: Listening
    metrics: Metrics
    transport: MemoryTransport
    keys: FederationKeys

    def cut(self, reason: CutReason) -> float:
        value = self.metrics.registry.get_sample_value(
            "cairn_http_connections_cut_total", {"reason": reason.value}
        )
        return value or 0.0

    async def post_referral(self, agency: str = "kelder-police") -> int:
        """A normal client: a valid signed referral over a fresh mutual-TLS connection."""
        signer = ReferralClient(
            "-", ssl_context=None, signing_key=self.keys.trust(agency).signing_key()
        )
        connector = aiohttp.TCPConnector(ssl=self.keys.client_ssl(agency))
        timeout = aiohttp.ClientTimeout(total=WAIT_S)
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
            session.post(
                f"https://{HOST}:{self.server.port}/v1/referrals",
                data=signer.sign(sample_bytes()),
                headers={"Content-Type": "application/jose"},
            ) as response,
        ):
            await response.read()
            return response.status


@asynccontextmanager
async def broker(
    settings: Settings, federation: Federation, keys: FederationKeys
) -> AsyncIterator[Running]:
    transport = MemoryTransport()
    metrics = Metrics()
    app = create_app(
        settings, federation, transport, keys.trust(), store=SqliteStore(None), metrics=metrics
    )
    server = await start_server(app, settings, keys.server_ssl(), metrics=metrics)
    try:
        yield Running(server, metrics, transport, keys)
    finally:
        await asyncio.wait_for(server.close(), WAIT_S)


# --- Raw clients: each returns once it is stalling ---------------------------------------------

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Opener = Callable[[int, ssl.SSLContext], Awaitable[Streams]]


async def tcp_only(port: int, _tls: ssl.SSLContext) -> Streams:
    """Connects, never starts TLS."""
    return await asyncio.open_connection(HOST, port)


async def tls_only(port: int, tls: ssl.SSLContext) -> Streams:
    """Completes the handshake, never sends a request."""
    return await asyncio.open_connection(HOST, port, ssl=tls)


async def partial_head(port: int, tls: ssl.SSLContext) -> Streams:
    """Sends half a request head."""
    reader, writer = await tls_only(port, tls)
    writer.write(b"POST /v1/referrals HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: appl")
    await writer.drain()
    return reader, writer


async def slow_body(port: int, tls: ssl.SSLContext) -> Streams:
    """Sends a whole head, then the body one byte a second (see ``trickle``)."""
    reader, writer = await tls_only(port, tls)
    writer.write(
        b"POST /v1/referrals HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/jose\r\nContent-Length: 5000\r\n\r\n"
    )
    await writer.drain()
    return reader, writer


async def idle_after_one(port: int, tls: ssl.SSLContext) -> Streams:
    """Makes one keep-alive request, reads the answer, then sends nothing more."""
    reader, writer = await tls_only(port, tls)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:40]
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    await reader.readexactly(length)
    return reader, writer


async def trickle(writer: asyncio.StreamWriter) -> None:
    """One byte a second until the server has closed (bounded by the body's length)."""
    for _ in range(5000):
        await asyncio.sleep(1.0)
        if writer.is_closing():
            return
        try:
            writer.write(b"x")
            await writer.drain()
        except (OSError, ssl.SSLError):
            return


@dataclass
class Cut:
    kind: str
    seconds: float  # from stalling to the server's close
    answer: bytes  # what the server sent before closing


async def stall(
    kind: str, opener: Opener, port: int, tls: ssl.SSLContext, ready: asyncio.Event
) -> Cut:
    """Open as ``kind`` does, then read until the server closes; fail if it has not by WAIT_S."""
    async with asyncio.timeout(WAIT_S):
        reader, writer = await opener(port, tls)
    start = time.monotonic()
    ready.set()
    feeder = asyncio.create_task(trickle(writer)) if kind == "slow body" else None
    answer = b""
    try:
        async with asyncio.timeout(WAIT_S):
            while chunk := await reader.read(65_536):
                answer += chunk
    except TimeoutError:
        pytest.fail(f"{kind}: the server had not closed the connection after {WAIT_S} s")
    except (OSError, ssl.SSLError):
        pass  # a reset or an abrupt TLS end: closed all the same
    finally:
        if feeder is not None:
            feeder.cancel()
        writer.close()
    return Cut(kind, time.monotonic() - start, answer)


KINDS: dict[str, tuple[Opener, CutReason]] = {
    "tcp only": (tcp_only, CutReason.TLS_HANDSHAKE),
    "tls only": (tls_only, CutReason.REQUEST_HEADER),
    "partial head": (partial_head, CutReason.REQUEST_HEADER),
    "slow body": (slow_body, CutReason.BODY_RATE),
    "idle keep-alive": (idle_after_one, CutReason.KEEPALIVE_IDLE),
}


async def test_fifty_stalling_connections_are_cut_in_time_while_a_referral_gets_its_202(
    settings: Settings, federation: Federation, federation_keys: FederationKeys
) -> None:
    """Fifty stalls of five kinds are each closed within their bound (a 408 for the slow body,
    whose head had arrived); meanwhile a valid referral is accepted with a 202."""
    with captured_logs() as logs:
        async with broker(
            tight(settings, http_max_connections_per_client=64), federation, federation_keys
        ) as running:
            port = running.server.port
            contexts = [federation_keys.client_ssl(a) for a in AGENCIES]
            stalls: list[asyncio.Task[Cut]] = []
            ready: list[asyncio.Event] = []
            for kind, (opener, _reason) in KINDS.items():
                for i in range(PER_KIND):
                    ready.append(asyncio.Event())
                    tls = contexts[i % len(contexts)]
                    stalls.append(asyncio.create_task(stall(kind, opener, port, tls, ready[-1])))
            async with asyncio.timeout(WAIT_S):
                await asyncio.gather(*(event.wait() for event in ready))

            status = await running.post_referral()

            still_open = sum(not task.done() for task in stalls)
            cuts = await asyncio.wait_for(asyncio.gather(*stalls), WAIT_S)

    assert status == 202
    assert still_open >= len(stalls) // 2, "the referral was not sent during the stall"
    assert running.transport.published > 0
    assert len(cuts) == 50
    for cut in cuts:
        assert TIMEOUT_S / 2 <= cut.seconds <= TIMEOUT_S + MARGIN_S, cut
        if cut.kind == "slow body":
            assert cut.answer.startswith(b"HTTP/1.1 408 "), cut.answer[:60]
            assert b"urn:cairn:problem:request-timeout" in cut.answer
            assert b"Connection: close" in cut.answer
        elif cut.kind == "idle keep-alive":
            assert cut.answer == b""  # nothing more than the one answer already read
        else:
            assert cut.answer == b"", cut  # no request head: closed without an answer
    expected: dict[CutReason, int] = {}
    for _opener, reason in KINDS.values():
        expected[reason] = expected.get(reason, 0) + PER_KIND
    assert {reason: running.cut(reason) for reason in expected} == expected
    lines = [entry for entry in logs if entry["event"] == "http.connection_cut"]
    assert len(lines) == 50
    assert {key for entry in lines for key in entry} == {
        "event",
        "log_level",
        "reason",
        "tls_agency",
    }


async def healthz(port: int, tls: ssl.SSLContext) -> tuple[int, Streams]:
    """A keep-alive GET /healthz; its status, and the connection, left open."""
    reader, writer = await asyncio.open_connection(HOST, port, ssl=tls)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), (reader, writer)


async def test_an_agency_over_its_connection_limit_gets_429_while_others_are_served(
    settings: Settings, federation: Federation, federation_keys: FederationKeys
) -> None:
    """With a limit of 3, an agency's fourth connection gets a 429 problem and is closed; the
    police are still served, and once one of the three closes the agency is served again."""
    limit = 3
    slow = federation_keys.client_ssl("kelder-nhs")
    async with broker(
        tight(
            settings,
            http_max_connections_per_client=limit,
            http_keepalive_idle_s=WAIT_S * 3,  # the three stay open for the whole test
        ),
        federation,
        federation_keys,
    ) as running:
        port = running.server.port
        async with asyncio.timeout(WAIT_S):
            held = [await healthz(port, slow) for _ in range(limit)]
            assert [status for status, _ in held] == [200] * limit

            status, extra = await healthz(port, slow)
            answer = await extra[0].read()  # the rest of the 429, then EOF: closed
            extra[1].close()

            accepted = await running.post_referral("kelder-police")

            held[0][1][1].close()
            await held[0][1][1].wait_closed()
            again = 429
            for _ in range(50):  # until the server has seen the close (bounded: 5 s)
                again, streams = await healthz(port, slow)
                streams[1].close()
                if again == 200:
                    break
                await asyncio.sleep(0.1)
        for _status, (_reader, writer) in held[1:]:
            writer.close()

    assert status == 429
    assert b"urn:cairn:problem:too-many-connections" in answer
    assert accepted == 202
    assert again == 200
    assert running.cut(CutReason.CLIENT_LIMIT) >= 1


async def test_over_the_total_limit_a_connection_is_closed_before_any_tls(
    settings: Settings, federation: Federation, federation_keys: FederationKeys
) -> None:
    """With room for 5 connections, a sixth is closed on accepting it, long before its
    handshake could time out; once the five are gone a client is served again."""
    handshake_s = WAIT_S / 2
    async with broker(
        tight(settings, http_max_connections=5, http_tls_handshake_timeout_s=handshake_s),
        federation,
        federation_keys,
    ) as running:
        port = running.server.port
        async with asyncio.timeout(WAIT_S):
            silent = [await asyncio.open_connection(HOST, port) for _ in range(5)]
            await asyncio.sleep(0.2)  # the server has accepted them
            reader, writer = await asyncio.open_connection(HOST, port)
            start = time.monotonic()
            with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
                await reader.readexactly(1)
            refused_after = time.monotonic() - start
            writer.close()
            for _reader, w in silent:
                w.close()
            served = 0
            for _ in range(50):  # until the server has seen the closes (bounded: 5 s)
                try:
                    served, streams = await healthz(port, federation_keys.client_ssl("kelder-nhs"))
                    streams[1].close()
                except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
                    served = 0
                if served == 200:
                    break
                await asyncio.sleep(0.1)

    assert refused_after < handshake_s / 2
    assert served == 200
    assert running.cut(CutReason.TOTAL_LIMIT) >= 1


async def test_a_body_cut_short_or_garbled_is_an_input_error_not_a_failure(
    settings: Settings, federation: Federation, federation_keys: FederationKeys
) -> None:
    """A body the client abandons half-way, or compresses wrongly, is a 400 input error; one
    whose chunked framing breaks (aiohttp's parser then drops the body without a word) is
    ended by the body timer with a 408. Never a 500, never a traceback in the log."""
    tls = federation_keys.client_ssl("kelder-police")
    head = b"POST /v1/referrals HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/jose\r\n"

    async def exchange(port: int, *parts: bytes) -> bytes:
        reader, writer = await asyncio.open_connection(HOST, port, ssl=tls)
        for part in parts:
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(0.2)  # the handler is reading the body
        answer = await reader.read()
        writer.close()
        return answer

    with captured_logs() as logs:
        async with broker(tight(settings), federation, federation_keys) as running:
            port = running.server.port
            async with asyncio.timeout(WAIT_S):
                _reader, writer = await asyncio.open_connection(HOST, port, ssl=tls)
                writer.write(head + b"Content-Length: 5000\r\n\r\n" + b"x" * 10)
                await writer.drain()
                await asyncio.sleep(0.2)  # the handler is reading the body
                writer.close()
                for _ in range(100):  # until the broker has given up on it (bounded: 5 s)
                    if any(e["event"] == "request.refused" for e in logs):
                        break
                    await asyncio.sleep(0.05)
                gzip = await exchange(
                    port, head + b"Content-Encoding: gzip\r\nContent-Length: 20\r\n\r\n", b"z" * 20
                )
                chunked = await exchange(
                    port, head + b"Transfer-Encoding: chunked\r\n\r\n", b"zz\r\n"
                )

    refused = [(e["status"], e["problem"]) for e in logs if e["event"] == "request.refused"]
    assert refused == [
        (400, "urn:cairn:problem:bad-request"),
        (400, "urn:cairn:problem:bad-request"),
        (408, "urn:cairn:problem:request-timeout"),
    ]
    assert gzip.startswith(b"HTTP/1.1 400 "), gzip[:40]
    assert chunked.startswith(b"HTTP/1.1 408 "), chunked[:40]
    assert [e for e in logs if e["event"] == "request.failed"] == []


@pytest.mark.parametrize(
    "head",
    [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Request-Id: Tess\x00ina\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Note: Tess\x01ina Smith\r\n\r\n",
        b"GET /heal Tessina HTTP/1.1\r\nHost: x\r\n\r\n",
        b"TESSINA /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Long: " + b"Tessina" * 2000 + b"\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nTessina Smith\r\n\r\n",
    ],
    ids=[
        "nul-in-request-id",
        "control-in-header",
        "space-in-target",
        "bad-method",
        "long-field",
        "no-colon",
    ],
)
async def test_a_malformed_request_head_gets_a_problem_that_repeats_nothing(
    settings: Settings, federation: Federation, federation_keys: FederationKeys, head: bytes
) -> None:
    """aiohttp answers a head it cannot parse before any middleware runs; by itself it echoes
    the bytes sent and logs a traceback. The answer is a 4xx problem naming no value, and the
    log holds no value either."""
    tls = federation_keys.client_ssl("kelder-police")
    with captured_logs() as logs:
        async with broker(tight(settings), federation, federation_keys) as running:
            async with asyncio.timeout(WAIT_S):
                reader, writer = await asyncio.open_connection(HOST, running.server.port, ssl=tls)
                writer.write(head)
                await writer.drain()
                answer = await reader.read()
                writer.close()
    status = int(answer.split(b" ", 2)[1])
    assert 400 <= status < 500, answer[:80]
    assert b"application/problem+json" in answer
    assert b"urn:cairn:problem:" in answer
    assert b"Tess" not in answer
    assert b"Traceback" not in answer
    assert "Tess" not in repr(logs)


async def test_header_bounds_are_settings(
    settings: Settings, federation: Federation, federation_keys: FederationKeys
) -> None:
    """A header field over http_max_header_bytes, or more fields than http_max_headers, is
    refused before any handler runs, with a problem; within the bounds the request is served."""
    tls = federation_keys.client_ssl("kelder-police")
    bounded = tight(settings, http_max_header_bytes=1024, http_max_headers=8)

    async def status_of(port: int, head: bytes) -> int:
        reader, writer = await asyncio.open_connection(HOST, port, ssl=tls)
        writer.write(head)
        await writer.drain()
        answer = await reader.readuntil(b"\r\n")
        writer.close()
        return int(answer.split(b" ", 2)[1])

    async with broker(bounded, federation, federation_keys) as running:
        port = running.server.port
        async with asyncio.timeout(WAIT_S):
            fine = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 900 + b"\r\n\r\n"
            assert await status_of(port, fine) == 200
            long = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 1100 + b"\r\n\r\n"
            assert 400 <= await status_of(port, long) < 500
            many = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(
                b"X-%d: 1\r\n" % i for i in range(12)
            )
            assert 400 <= await status_of(port, many + b"\r\n") < 500
