"""The cairn CLI as an operator and an agency adapter use it: serve, send, inbox, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import FederationKeys
from tests.kafka_support import LocalKafka
from tests.samples import REPO, personal_values, sample

CAIRN = [sys.executable, "-m", "broker"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def env(kafka: LocalKafka, federation_keys: FederationKeys, tmp_path: Path) -> dict[str, str]:
    tag = uuid.uuid4().hex[:8]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CAIRN_KEY_PASSPHRASE")}
    return {
        **environ,
        "CAIRN_STATE_DIR": str(tmp_path / "state"),
        "CAIRN_KEY_DIR": str(federation_keys.root),
        "CAIRN_KEY_PASSPHRASE": federation_keys.passphrase.decode(),
        "CAIRN_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
        "CAIRN_TOPIC_PREFIX": f"e2e{tag}",
        "CAIRN_TRANSACTIONAL_ID": f"cairn-e2e-{tag}",
        "CAIRN_HTTP_PORT": str(free_port()),
        "CAIRN_LOG_FORMAT": "json",
    }


def cairn(env: dict[str, str], *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CAIRN, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )


@pytest.fixture
def served(env: dict[str, str], federation_keys: FederationKeys) -> Iterator[subprocess.Popen[str]]:
    keys = federation_keys
    assert cairn(env, "topics", "create").returncode == 0
    proc = subprocess.Popen(
        [*CAIRN, "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    url = f"https://127.0.0.1:{env['CAIRN_HTTP_PORT']}/readyz"
    context = keys.client_ssl("kelder-police")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail(f"cairn serve never became ready: {proc.communicate()[1][-2000:]}")
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


def test_send_then_each_recipient_reads_it(
    env: dict[str, str], served: subprocess.Popen[str], tmp_path: Path
) -> None:
    """'cairn send' gets a receipt; 'cairn inbox' for each recipient prints the referral."""
    data = sample()
    path = tmp_path / "referral.json"
    path.write_text(json.dumps(data))
    sent = cairn(env, "send", str(path), "--as", "kelder-police")
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout)["referral_id"] == data["header"]["referral_id"]
    for agency in data["header"]["recipients"]:
        got = cairn(env, "inbox", "--as", agency, "--max", "1", "--idle", "15", "--json")
        assert got.returncode == 0, got.stderr
        disclosure = json.loads(got.stdout.splitlines()[0])
        assert disclosure["referral_id"] == data["header"]["referral_id"]
        assert disclosure["recipient_agency"] == agency

    served.send_signal(signal.SIGTERM)
    _out, err = served.communicate(timeout=30)
    assert served.returncode == 0
    assert "broker.stopped" in err
    for value in personal_values(data):  # the broker's log lines hold no personal data
        assert value not in err


def test_send_refuses_an_invalid_file_naming_the_field(env: dict[str, str], tmp_path: Path) -> None:
    """An invalid referral is refused locally with the field path and a non-zero exit."""
    data = sample()
    data["header"]["purpose"] = "GOSSIP"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    result = cairn(env, "send", str(path), "--as", "kelder-police")
    assert result.returncode == 1
    assert "header.purpose" in result.stderr
    assert "Traceback" not in result.stderr


def test_status_exits_zero_only_while_broker_kafka_and_auditor_answer(
    env: dict[str, str], served: subprocess.Popen[str], tmp_path: Path
) -> None:
    """'cairn status' against a real broker, Kafka and auditor: 0 while all answer; 1 naming
    the auditor once it is stopped (issue 18)."""
    env = {**env, "CAIRN_AUDITOR_HTTP_PORT": str(free_port())}
    auditor = subprocess.Popen(
        [*CAIRN, "auditor"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        deadline = time.monotonic() + 60
        result = cairn(env, "status")
        while result.returncode != 0 and time.monotonic() < deadline:
            if auditor.poll() is not None:
                pytest.fail(f"cairn auditor stopped: {auditor.communicate()[1][-2000:]}")
            time.sleep(1)
            result = cairn(env, "status")
        assert result.returncode == 0, result.stdout + result.stderr
        flat = " ".join(result.stdout.split())
        assert "broker │ ready" in flat
        assert "kafka │ reachable" in flat
        assert "auditor │ answering" in flat
    finally:
        auditor.send_signal(signal.SIGTERM)
        auditor.communicate(timeout=60)
    stopped = cairn(env, "status")
    assert stopped.returncode == 1
    assert "status: not healthy: auditor" in stopped.stderr
    assert "Traceback" not in stopped.stderr
