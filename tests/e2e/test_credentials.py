"""Certificates about to expire, as an operator meets them: `cairn serve` and `cairn auditor`
warn at start, `cairn status` says so, and `cairn keys refresh` reaches both running services' TLS
listeners without a restart.

The federation's TLS certificates expire in 10 days and its registry in 20; the services look
at their key store every half second here (`credential_check_every_s`).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from broker.federation import load_federation
from keys import FileStore, Lifetimes, init_federation
from keys.store import SERVER_CERT
from tests.conftest import PASSPHRASE, FederationKeys
from tests.e2e.test_cli import CAIRN, cairn, free_port
from tests.kafka_support import LocalKafka
from tests.samples import FEDERATION_DIR, REPO

SHORT = Lifetimes(certificate=timedelta(days=10), registry=timedelta(days=20))
WAIT_S = 30.0  # seconds any one step may take


@pytest.fixture
def short_keys(tmp_path: Path) -> FederationKeys:
    root = tmp_path / "keys"
    store = FileStore(root)
    init_federation(
        store, load_federation(FEDERATION_DIR), PASSPHRASE, now=datetime.now(UTC), lifetimes=SHORT
    )
    return FederationKeys(root, store, PASSPHRASE)


@pytest.fixture
def env(short_keys: FederationKeys, kafka: LocalKafka, tmp_path: Path) -> dict[str, str]:
    tag = uuid.uuid4().hex[:8]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CAIRN_")}
    return {
        **environ,
        "CAIRN_STATE_DIR": str(tmp_path / "state"),
        "CAIRN_KEY_DIR": str(short_keys.root),
        "CAIRN_KEY_PASSPHRASE": PASSPHRASE.decode(),
        "CAIRN_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
        "CAIRN_TOPIC_PREFIX": f"e2ecred{tag}",
        "CAIRN_TRANSACTIONAL_ID": f"cairn-e2e-{tag}",
        "CAIRN_HTTP_PORT": str(free_port()),
        "CAIRN_AUDITOR_HTTP_PORT": str(free_port()),
        "CAIRN_CREDENTIAL_CHECK_EVERY_S": "0.5",
        "CAIRN_LOG_FORMAT": "json",
        "COLUMNS": "200",
    }


def served_certificate(port: int, context: ssl.SSLContext) -> x509.Certificate:
    """The certificate a new TLS connection to ``port`` is handed (verified against the CA)."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def wait_for_certificate(port: int, context: ssl.SSLContext) -> x509.Certificate:
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            return served_certificate(port, context)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture
def services(env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[str], subprocess.Popen[str]]]:
    assert cairn(env, "topics", "create").returncode == 0
    procs = [
        subprocess.Popen(
            [*CAIRN, command],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        for command in ("serve", "auditor")
    ]
    yield procs[0], procs[1]
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def events(stderr: str) -> list[dict[str, object]]:
    found = []
    for line in stderr.splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:
            continue
    return found


def test_services_warn_and_serve_a_renewed_certificate_without_a_restart(
    env: dict[str, str],
    short_keys: FederationKeys,
    services: tuple[subprocess.Popen[str], subprocess.Popen[str]],
) -> None:
    """Both services warn of their 10-day certificate at start; `cairn status` warns too;
    after `cairn keys refresh` both hand new connections the renewed certificate while still
    running, `cairn status` warns no more, and both stop cleanly on SIGTERM."""
    broker, auditor = services
    context = short_keys.client_ssl("cairn-auditor")
    ports = (int(env["CAIRN_HTTP_PORT"]), int(env["CAIRN_AUDITOR_HTTP_PORT"]))
    first = [wait_for_certificate(port, context) for port in ports]
    assert {c.serial_number for c in first} == {
        x509.load_pem_x509_certificate(short_keys.store.read(SERVER_CERT)).serial_number
    }
    status = subprocess.run(
        [*CAIRN, "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert status.returncode == 0, status.stderr
    assert "warning: tls_server cairn-broker expires in 9 days" in status.stdout
    assert "from the broker" in status.stdout

    refreshed = cairn(env, "keys", "refresh")  # what an operator runs
    assert refreshed.returncode == 0, refreshed.stderr
    assert "renewed tls_server cairn-broker" in refreshed.stdout
    renewed = x509.load_pem_x509_certificate(short_keys.store.read(SERVER_CERT))
    deadline = time.monotonic() + WAIT_S
    pending = set(ports)
    while pending and time.monotonic() < deadline:
        for port in sorted(pending):
            if served_certificate(port, context).serial_number == renewed.serial_number:
                pending.discard(port)
        time.sleep(0.2)
    assert not pending, f"still served the old certificate on {sorted(pending)}"
    assert broker.poll() is None  # never restarted
    assert auditor.poll() is None

    later = subprocess.run(
        [*CAIRN, "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert later.returncode == 0, later.stderr
    assert "warning: tls_server" not in later.stdout

    logs = []
    for proc in (broker, auditor):
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err[-2000:]
        logs.append(events(err))
    for lines in logs:
        warned = [e for e in lines if e.get("event") == "credentials.expiring"]
        assert {"kind": "tls_server", "subject": "cairn-broker", "days_left": 9}.items() <= next(
            e for e in warned if e["kind"] == "tls_server"
        ).items()
        names = [e.get("event") for e in lines]
        assert "tls.server_certificate_reloaded" in names
        assert "credentials.renewed" in names
