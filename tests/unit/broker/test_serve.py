"""SIGTERM handling: in-flight submissions are answered, then the transport is flushed."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import Sequence

import aiohttp

from adapters.client import ReferralClient
from broker.config import Settings
from broker.kafka.ledger import Claim
from broker.kafka.transport import Consumed, MemoryTransport, Record
from broker.state import SqliteStore
from broker.web.app import create_app, serve
from schemas.federation import Federation
from tests.conftest import FederationKeys
from tests.samples import sample_bytes


class SlowTransport(MemoryTransport):
    """A transport whose commit takes a while, so a request is in flight at SIGTERM."""

    stopped: bool = False

    async def publish(
        self,
        records: Sequence[Record],
        consumed: Consumed | None = None,
        *,
        claim: Claim | None = None,
    ) -> None:
        await asyncio.sleep(0.5)
        await super().publish(records, consumed, claim=claim)

    async def stop(self) -> None:
        self.stopped = True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_sigterm_answers_in_flight_request_then_stops_transport(
    settings: Settings, federation: Federation, federation_keys: FederationKeys
) -> None:
    """A submission in flight when SIGTERM arrives still gets its 202; then the producer stops."""
    settings = settings.model_copy(update={"http_port": free_port(), "shutdown_timeout_s": 5.0})
    transport = SlowTransport()
    started = asyncio.Event()
    app = create_app(
        settings, federation, transport, federation_keys.trust(), store=SqliteStore(None)
    )
    server = asyncio.create_task(
        serve(app, settings, federation_keys.server_ssl(), started=started)
    )
    await asyncio.wait_for(started.wait(), 5)
    signer = ReferralClient(
        "-", ssl_context=None, signing_key=federation_keys.trust("kelder-police").signing_key()
    )
    connector = aiohttp.TCPConnector(ssl=federation_keys.client_ssl("kelder-police"))
    async with aiohttp.ClientSession(connector=connector) as session:
        request = asyncio.create_task(
            session.post(
                f"https://127.0.0.1:{settings.http_port}/v1/referrals",
                data=signer.sign(sample_bytes()),
                headers={"Content-Type": "application/jose"},
            )
        )
        await asyncio.sleep(0.2)  # the request is now waiting on the slow commit
        os.kill(os.getpid(), signal.SIGTERM)
        response = await asyncio.wait_for(request, 5)
        assert response.status == 202
        response.release()
    await asyncio.wait_for(server, 10)
    assert transport.stopped
    assert transport.published == 6  # 2 disclosures and their 4 audit events
