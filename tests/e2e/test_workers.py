"""cairn serve --workers 2 on real Kafka: one ephemeral port, both workers serve, metrics summed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import FederationKeys
from tests.integration.conftest import client
from tests.kafka_support import LocalKafka
from tests.samples import REPO, sample

CAIRN = [sys.executable, "-m", "broker"]
JOSE = {"Content-Type": "application/jose"}
REFERRALS = 40
ACCEPTED = re.compile(r"^cairn_referrals_accepted_total\{[^}]*\} (\S+)$", re.MULTILINE)


class Served:
    """A running ``cairn serve --workers 2`` and its JSON log lines (stderr, to a file)."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.proc = proc
        self.log = log

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue  # a line still being written
        return out

    def wait_for(self, event: str, count: int = 1, timeout_s: float = 90.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = [e for e in self.events() if e.get("event") == event]
            if len(found) >= count:
                return found
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        pytest.fail(f"no {count} x {event} in the log: {self.log.read_text()[-3000:]}")


@pytest.fixture
def env(kafka: LocalKafka, federation_keys: FederationKeys, tmp_path: Path) -> dict[str, str]:
    tag = uuid.uuid4().hex[:8]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CAIRN_")}
    return {
        **environ,
        "CAIRN_STATE_DIR": str(tmp_path / "state"),
        "CAIRN_KEY_DIR": str(federation_keys.root),
        "CAIRN_KEY_PASSPHRASE": federation_keys.passphrase.decode(),
        "CAIRN_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
        "CAIRN_TOPIC_PREFIX": f"e2ew{tag}",
        "CAIRN_TRANSACTIONAL_ID": f"cairn-e2ew-{tag}",
        "CAIRN_HTTP_PORT": "0",  # the supervisor binds any free port, and logs it once
        "CAIRN_LOG_FORMAT": "json",
    }


@pytest.fixture
def served(env: dict[str, str], tmp_path: Path) -> Iterator[Served]:
    created = subprocess.run(
        [*CAIRN, "topics", "create"], env=env, cwd=REPO, capture_output=True, timeout=90
    )
    assert created.returncode == 0, created.stderr
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [*CAIRN, "serve", "--workers", "2"], env=env, cwd=REPO, stdout=sink, stderr=sink
        )
    served = Served(proc, log)
    try:
        yield served
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        for started in served.events():
            if started.get("event") == "broker.worker_started":
                _kill(int(started["pid"]))


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def _fresh(keys: FederationKeys, method: str, url: str, **kw: Any) -> tuple[int, bytes]:
    """One request over a connection of its own (so the kernel hands it to either worker)."""
    connector = aiohttp.TCPConnector(ssl=keys.client_ssl("kelder-police"), force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.request(method, url, **kw) as response,
    ):
        return response.status, await response.read()


async def _until_ready(keys: FederationKeys, base: str) -> None:
    for _ in range(120):
        try:
            status, _body = await _fresh(keys, "GET", f"{base}/readyz")
            if status == 200:
                return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.5)
    raise AssertionError("no worker said ready within 60 s")


async def test_two_workers_share_the_port_and_metrics_sum_over_both(
    served: Served, federation_keys: FederationKeys
) -> None:
    """40 referrals over fresh connections are served by both workers; /metrics from any
    worker counts 40; SIGTERM to the supervisor drains both, exits 0, and leaves none."""
    keys = federation_keys
    (listening,) = served.wait_for("broker.listening")  # once, from the supervisor
    assert listening["workers"] == 2
    assert "worker" not in listening
    base = f"https://127.0.0.1:{listening['port']}"
    started = served.wait_for("broker.worker_started", 2)
    assert {e["worker"] for e in started} == {0, 1}
    assert len({e["transactional_id"] for e in started}) == 2
    pids = [int(e["pid"]) for e in started]
    await _until_ready(keys, base)

    police = client(keys, "https://unused")
    statuses: Counter[int] = Counter()
    for _ in range(REFERRALS // 4):  # four at a time, so that one worker is busy now and then
        batch = [police.sign(json.dumps(sample()).encode()) for _ in range(4)]
        answers = await asyncio.gather(
            *[
                _fresh(keys, "POST", f"{base}/v1/referrals", data=body, headers=JOSE)
                for body in batch
            ]
        )
        statuses.update(status for status, _body in answers)
    assert statuses == {202: REFERRALS}
    accepted = served.wait_for("referral.accepted", REFERRALS)
    by_worker = Counter(e["worker"] for e in accepted)
    assert set(by_worker) == {0, 1}, by_worker  # each worker accepted some
    assert sum(by_worker.values()) == REFERRALS

    for _ in range(8):  # whichever worker answers, it counts both workers' referrals
        status, body = await _fresh(keys, "GET", f"{base}/metrics")
        assert status == 200
        assert sum(float(v) for v in ACCEPTED.findall(body.decode())) == REFERRALS

    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(90) == 0
    stopped = [e for e in served.events() if e.get("event") == "broker.stopped"]
    assert {e["worker"] for e in stopped} == {0, 1}  # each drained and flushed
    assert not any(_alive(pid) for pid in pids)
