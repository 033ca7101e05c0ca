"""The Kafka a command uses is visible (issue 18): against the real local Kafka, 'cairn topics
create' with only CAIRN_KAFKA_PORT set uses that Kafka and says so; with bootstrap servers set
explicitly to it and CAIRN_KAFKA_PORT naming another port, it uses the explicit ones and warns."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

from tests.conftest import FederationKeys
from tests.kafka_support import LocalKafka

REPO = Path(__file__).resolve().parents[2]


def _topics_create(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker", "topics", "create", "--acls", "auto"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )


def _env(keys: FederationKeys, state: Path, **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CAIRN_KAFKA_")}
    return {
        **base,
        "CAIRN_TOPIC_PREFIX": f"visible-{uuid.uuid4().hex[:8]}",
        "CAIRN_STATE_DIR": str(state),
        "CAIRN_KEY_DIR": str(keys.root),
        "CAIRN_LOG_LEVEL": "warning",
        **extra,
    }


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_local_kafka_port_alone_points_the_command_at_that_kafka(
    kafka: LocalKafka, federation_keys: FederationKeys, tmp_path: Path
) -> None:
    done = _topics_create(_env(federation_keys, tmp_path, CAIRN_KAFKA_PORT=str(kafka.port)))
    assert done.returncode == 0, done.stderr
    assert f"Kafka: 127.0.0.1:{kafka.port} (PLAINTEXT; from CAIRN_KAFKA_PORT)" in done.stderr
    assert "warning" not in done.stderr
    assert "created" in done.stdout


def test_an_explicit_bootstrap_wins_and_a_disagreeing_local_port_is_said(
    kafka: LocalKafka, federation_keys: FederationKeys, tmp_path: Path
) -> None:
    other = _unused_port()
    env = _env(
        federation_keys,
        tmp_path,
        CAIRN_KAFKA_PORT=str(other),
        CAIRN_KAFKA_BOOTSTRAP_SERVERS=kafka.bootstrap,
    )
    done = _topics_create(env)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    expected = f"Kafka: {kafka.bootstrap} (PLAINTEXT; from CAIRN_KAFKA_BOOTSTRAP_SERVERS)"
    assert expected in lines
    (warning,) = [line for line in lines if line.startswith("warning:")]
    assert f"CAIRN_KAFKA_PORT={other} (the local Kafka) is not among them" in warning
