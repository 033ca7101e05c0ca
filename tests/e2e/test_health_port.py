"""Each service opens the plain-HTTP health port from CAIRN_HEALTH_PORT (broker.web.health).

Real ``cairn serve`` (one process and ``--workers 2``), ``cairn auditor``, ``cairn gateway``
and ``cairn witness serve`` processes, with Kafka pointed at a port where nothing listens (no
Kafka is needed): each is alive, says why it is not ready in codes, and serves nothing else
there.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner

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
        session.request(method, url, timeout=aiohttp.ClientTimeout(total=30)) as response,
    ):
        return response.status, await response.json(content_type=None)


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
    """/livez once it answers (within 120 s: a busy machine), then /readyz: their answers."""
    deadline = time.monotonic() + 120
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


@pytest.mark.parametrize("command", [["serve"], ["serve", "--workers", "2"], ["auditor"]])
async def test_serve_and_auditor_open_the_health_port(
    command: list[str], process_env: dict[str, str], run_process: Any
) -> None:
    """'cairn serve' (with --workers too: the first worker opens it, the others do not try)
    and 'cairn auditor' with CAIRN_HEALTH_PORT: alive, not ready (Kafka down), registry and
    key fine, /metrics not there."""
    proc = run_process(command, process_env)
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
