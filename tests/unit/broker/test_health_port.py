"""The plain-HTTP health port (broker.web.health): /livez, /readyz and nothing else, bounded.

In process for the application and each service's readiness; as real ``cairn serve``,
``cairn auditor`` and ``cairn witness serve`` processes (Kafka pointed at a closed port) for
the wiring: each opens the port from CAIRN_HEALTH_PORT and its /readyz says Kafka is down.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner

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
from tests.samples import REPO
from tests.unit.audit.test_witness_cli import _tls

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


# The commands, as processes: each opens CAIRN_HEALTH_PORT and reports Kafka down.


@pytest.fixture
def process_env(federation_keys: FederationKeys, tmp_path: Path) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CAIRN_")}
    environ.update(
        {
            "CAIRN_STATE_DIR": str(tmp_path / "state"),
            "CAIRN_KEY_DIR": str(federation_keys.root),
            "CAIRN_KEY_PASSPHRASE": federation_keys.passphrase.decode(),
            "CAIRN_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{_free_port()}",  # nothing listens
            "CAIRN_READINESS_TIMEOUT_S": "1",
            "CAIRN_HTTP_PORT": str(_free_port()),
            "CAIRN_AUDITOR_HTTP_PORT": str(_free_port()),
            "CAIRN_HEALTH_PORT": str(_free_port()),
            "CAIRN_LOG_FORMAT": "json",
        }
    )
    return environ


@pytest.fixture
def run_process(tmp_path: Path) -> Iterator[Any]:
    procs: list[subprocess.Popen[bytes]] = []

    def run(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with (tmp_path / f"{args[0]}.log").open("wb") as log:
            proc = subprocess.Popen([*CAIRN, *args], env=env, cwd=REPO, stdout=log, stderr=log)
        procs.append(proc)
        return proc

    yield run
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


async def _health_of(proc: subprocess.Popen[bytes], port: int) -> dict[str, Any]:
    """/livez once it answers (within 60 s), then /readyz: their answers."""
    deadline = time.monotonic() + 60
    while True:
        try:
            live = await _get(f"http://127.0.0.1:{port}/livez")
            break
        except aiohttp.ClientConnectionError:
            assert proc.poll() is None, "the process exited"
            assert time.monotonic() < deadline, "the health port did not open"
            await asyncio.sleep(0.3)
    code, body = await _get(f"http://127.0.0.1:{port}/readyz")
    missing = await _get(f"http://127.0.0.1:{port}/metrics")
    return {"live": live, "ready": (code, body), "metrics": missing[0]}


@pytest.mark.parametrize("command", ["serve", "auditor"])
async def test_serve_and_auditor_open_the_health_port(
    command: str, process_env: dict[str, str], run_process: Any
) -> None:
    """'cairn serve' and 'cairn auditor' with CAIRN_HEALTH_PORT: alive, not ready (Kafka down),
    registry and key fine, /metrics not there."""
    proc = run_process([command], process_env)
    found = await _health_of(proc, int(process_env["CAIRN_HEALTH_PORT"]))
    assert found["live"] == (200, {"status": "alive"})
    code, body = found["ready"]
    assert code == 503
    assert body["kafka"] == "unreachable"
    assert body["registry"] == "trusted"
    assert body["signing_key"] == "usable"
    assert found["metrics"] == 404


async def test_witness_serve_opens_the_health_port(
    tmp_path: Path, process_env: dict[str, str], run_process: Any
) -> None:
    """'cairn witness serve' with CAIRN_HEALTH_PORT: alive and ready while its state folder can
    be written; its own route is not on the health port."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from broker.audit.checkpoint import NoteVerifier
    from broker.cli.main import cli

    key = tmp_path / "w.pem"
    name = "witness.example/w1"
    made = CliRunner().invoke(cli, ["witness", "keygen", "--key", str(key), "--name", name])
    assert made.exit_code == 0, made.output
    log_vkey = NoteVerifier("auditor.example/log", Ed25519PrivateKey.generate().public_key())
    cert, tls_key = _tls(tmp_path)
    state = tmp_path / "witness-state"
    args = [
        *("witness", "serve", "--key", str(key), "--name", name, "--state", str(state)),
        *("--log", log_vkey.vkey(), "--tls-cert", str(cert), "--tls-key", str(tls_key)),
        *("--port", str(_free_port())),
    ]
    port = int(process_env["CAIRN_HEALTH_PORT"])
    proc = run_process(args, process_env)
    found = await _health_of(proc, port)
    assert found["live"] == (200, {"status": "alive"})
    assert found["ready"] == (200, {"status": "ready", "state": "writable"})
    code, _ = await _get(f"http://127.0.0.1:{port}/add-checkpoint", "POST")
    assert code == 404


async def test_gateway_opens_the_health_port(
    tmp_path: Path, process_env: dict[str, str], run_process: Any
) -> None:
    """'cairn gateway --as AGENCY' with CAIRN_HEALTH_PORT: alive, not ready while Kafka is
    down, its registry and decryption keys fine; its API's routes are not on the health port."""
    cert, tls_key = _tls(tmp_path)
    env = {
        **process_env,
        "CAIRN_GATEWAY_TLS_CERT_FILE": str(cert),
        "CAIRN_GATEWAY_TLS_KEY_FILE": str(tls_key),
        "CAIRN_GATEWAY_PORT": str(_free_port()),
        "CAIRN_GATEWAY_WEB_ENABLED": "false",
    }
    port = int(env["CAIRN_HEALTH_PORT"])
    proc = run_process(["gateway", "--as", "kelder-idva"], env)
    found = await _health_of(proc, port)
    assert found["live"] == (200, {"status": "alive"})
    assert found["ready"] == (
        503,
        {
            "status": "not ready",
            "kafka": "unreachable",
            "registry": "trusted",
            "decryption_key": "usable",
        },
    )
    assert (await _get(f"http://127.0.0.1:{port}/v1/disclosures"))[0] == 404
