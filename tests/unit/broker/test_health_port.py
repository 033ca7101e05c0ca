"""The plain-HTTP health port (broker.web.health): /livez, /readyz and nothing else, bounded.

In process, for the application and each service's readiness; the commands that open it,
as processes, are in tests/e2e/test_health_port.py.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import sys
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import pytest

from broker.config import Settings
from broker.kafka.transport import MemoryTransport
from broker.state import SqliteStore
from broker.web.app import create_app, readiness
from broker.web.health import (
    HEALTH_PATHS,
    KafkaReachability,
    health_app,
    service_readiness,
    start_health,
    trust_checks,
)
from schemas.errors import InfrastructureError
from schemas.federation import Federation
from tests.conftest import FederationKeys

CAIRN = [sys.executable, "-m", "broker"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _get(url: str, method: str = "GET") -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, timeout=aiohttp.ClientTimeout(total=20)) as response,
    ):
        body = await response.json(content_type=None) if method != "HEAD" else {}
        return response.status, body


def _always(ready: bool, **codes: str) -> Any:
    async def check() -> tuple[bool, Mapping[str, str]]:
        return ready, codes

    return check


@pytest.fixture
def health_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"health_port": 0, "readiness_timeout_s": 0.5})


async def test_livez_and_readyz_answer_and_readiness_sets_the_code(
    health_settings: Settings,
) -> None:
    """/livez is 200; /readyz is 200 with the checks' codes when ready, 503 when not."""
    for ready, status in ((True, 200), (False, 503)):
        listening = await start_health(health_settings, _always(ready, kafka="x"))
        assert listening is not None
        try:
            base = f"http://127.0.0.1:{listening.port}"
            assert await _get(f"{base}/livez") == (200, {"status": "alive"})
            code, body = await _get(f"{base}/readyz")
            assert code == status
            assert body == {"status": "ready" if ready else "not ready", "kafka": "x"}
        finally:
            await listening.close()


async def test_every_other_path_and_method_is_a_404_problem(health_settings: Settings) -> None:
    """Only GET /livez and GET /readyz exist: any other path, or method, is a 404 problem."""
    listening = await start_health(health_settings, _always(True))
    assert listening is not None
    base = f"http://127.0.0.1:{listening.port}"
    try:
        for method, path in [
            ("GET", "/"),
            ("GET", "/healthz"),
            ("GET", "/metrics"),
            ("GET", "/v1/referrals"),
            ("GET", "/openapi.json"),
            ("GET", "/ui/"),
            ("GET", "/livez/x"),
            ("POST", "/livez"),
            ("POST", "/readyz"),
            ("PUT", "/v1/referrals"),
            ("DELETE", "/readyz"),
        ]:
            code, body = await _get(base + path, method)
            assert code == 404, (method, path)
            assert body["type"].endswith("not-found"), (method, path)
        async with aiohttp.ClientSession() as session, session.head(f"{base}/livez") as reply:
            assert reply.status == 404
    finally:
        await listening.close()


async def test_a_failing_or_slow_check_is_not_ready_never_a_500(
    health_settings: Settings,
) -> None:
    """A check that raises, or outlasts its bound, makes /readyz a 503 naming no detail."""

    async def raises() -> tuple[bool, Mapping[str, str]]:
        raise RuntimeError("secret detail")

    async def hangs() -> tuple[bool, Mapping[str, str]]:
        await asyncio.sleep(30)
        return True, {}

    for check in (raises, hangs):
        listening = await start_health(health_settings, check)
        assert listening is not None
        try:
            started = time.monotonic()
            code, body = await _get(f"http://127.0.0.1:{listening.port}/readyz")
            assert (code, body) == (503, {"status": "not ready", "checks": "failed"})
            assert time.monotonic() - started < 5
        finally:
            await listening.close()


async def test_unset_is_no_port_and_a_taken_port_is_a_one_line_error(settings: Settings) -> None:
    """Unset (the default) opens nothing; a port in use is an error naming CAIRN_HEALTH_PORT."""
    assert Settings().health_port is None
    assert await start_health(settings, _always(True)) is None
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy = settings.model_copy(update={"health_port": taken.getsockname()[1]})
        with pytest.raises(InfrastructureError, match="CAIRN_HEALTH_PORT"):
            await start_health(busy, _always(True))


async def test_plain_http_only_and_bounded_like_the_service_ports(
    health_settings: Settings,
) -> None:
    """No TLS is spoken; the total connection limit and the header timeout apply as elsewhere."""
    bounded = health_settings.model_copy(
        update={"http_max_connections": 1, "http_header_timeout_s": 0.5}
    )
    listening = await start_health(bounded, _always(True))
    assert listening is not None
    port = listening.port
    try:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        tls = asyncio.open_connection("127.0.0.1", port, ssl=context)
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):  # the server answers HTTP
            await asyncio.wait_for(tls, 5)
        await asyncio.sleep(0.1)
        # One silent connection holds the only slot; a second is closed at once.
        silent_reader, silent = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.sleep(0.1)
        second_reader, second = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(second_reader.read(), 5) == b""
        second.close()
        # The silent one is cut by the header timeout, without an answer.
        assert await asyncio.wait_for(silent_reader.read(), 5) == b""
        silent.close()
    finally:
        await listening.close()


async def test_the_brokers_readiness_on_the_health_port_follows_kafka(
    health_settings: Settings, federation: Federation, federation_keys: FederationKeys
) -> None:
    """The broker's readiness (the same as its mTLS /readyz): 503 'unreachable' while Kafka is
    down, 200 once it is back; the registry and the signing key are reported by code only."""
    transport = MemoryTransport(available=False)
    app = create_app(
        health_settings, federation, transport, federation_keys.trust(), store=SqliteStore(None)
    )
    listening = await start_health(health_settings, lambda: readiness(app))
    assert listening is not None
    url = f"http://127.0.0.1:{listening.port}/readyz"
    try:
        code, body = await _get(url)
        assert code == 503
        assert body == {
            "status": "not ready",
            "kafka": "unreachable",
            "registry": "trusted",
            "signing_key": "usable",
        }
        transport.available = True
        assert (await _get(url))[0] == 200
    finally:
        await listening.close()


async def test_service_readiness_kafka_down_and_each_kind_of_key(
    settings: Settings, federation_keys: FederationKeys
) -> None:
    """The auditor's and a gateway's readiness: Kafka at a closed port is 'unreachable'; the
    registry and the signing (auditor) or decryption (gateway) keys are checked by code."""
    down = settings.model_copy(
        update={"kafka_bootstrap_servers": f"127.0.0.1:{_free_port()}", "readiness_timeout_s": 1}
    )
    auditor = service_readiness(down, federation_keys.trust("cairn-auditor"))
    ready, codes = await auditor()
    assert not ready
    assert codes == {"kafka": "unreachable", "registry": "trusted", "signing_key": "usable"}
    police = federation_keys.trust("kelder-police")
    assert trust_checks(police, key="decryption") == (
        True,
        {"registry": "trusted", "decryption_key": "usable"},
    )


async def test_kafka_reachability_asks_at_most_once_per_interval(settings: Settings) -> None:
    """Probes in between reuse the last answer: Kafka sees one connection per interval."""
    now = [0.0]
    probe = KafkaReachability(settings, clock=lambda: now[0])
    looks: list[float] = []

    async def look() -> str:
        looks.append(now[0])
        return "reachable"

    probe._look = look  # type: ignore[method-assign]  # count the looks, no Kafka
    for _ in range(5):
        assert await probe.check() == "reachable"
    now[0] = settings.readiness_probe_every_s + 0.1
    await asyncio.gather(*(probe.check() for _ in range(5)))
    assert looks == [0.0, settings.readiness_probe_every_s + 0.1]


def test_health_app_routes_are_the_two_paths() -> None:
    """The application's own routes: GET of the two health paths, and the 404 catch-all."""
    app = health_app(_always(True), timeout_s=1)
    routes = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource}
    assert routes == {("GET", "/livez"), ("GET", "/readyz"), ("*", "/{tail}")}
    assert HEALTH_PATHS == ("/livez", "/readyz")


async def test_the_mtls_port_is_unchanged_and_agrees_with_the_health_port(
    health_settings: Settings, federation: Federation, federation_keys: FederationKeys
) -> None:
    """Beside the health port the broker's mutual-TLS port still serves /healthz and /readyz to
    a federation certificate, refuses a client without one, and says what the health port says."""
    from broker.web.server import start_server

    transport = MemoryTransport(available=False)
    app = create_app(
        health_settings, federation, transport, federation_keys.trust(), store=SqliteStore(None)
    )
    served = await start_server(
        app, health_settings.model_copy(update={"http_port": 0}), federation_keys.server_ssl()
    )
    health = await start_health(health_settings, lambda: readiness(app))
    assert health is not None
    tls = f"https://127.0.0.1:{served.port}"
    plain = f"http://127.0.0.1:{health.port}"
    police = aiohttp.TCPConnector(ssl=federation_keys.client_ssl("kelder-police"))
    try:
        async with aiohttp.ClientSession(connector=police) as session:
            for available in (False, True):
                transport.available = available
                async with session.get(f"{tls}/readyz") as response:
                    over_tls = (response.status, await response.json())
                assert over_tls == await _get(f"{plain}/readyz")
            async with session.get(f"{tls}/healthz") as response:
                assert response.status == 200
        assert (await _get(f"{plain}/healthz"))[0] == 404
        anonymous = ssl.create_default_context()
        anonymous.check_hostname = False
        anonymous.verify_mode = ssl.CERT_NONE
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientError):
                async with session.get(f"{tls}/readyz", ssl=anonymous) as response:
                    await response.read()
    finally:
        await health.close()
        await served.close()
