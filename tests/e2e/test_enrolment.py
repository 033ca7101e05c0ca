"""The enrolment procedure with the real commands, each machine a folder of its own.

The administrator runs 'cairn federation init'; the police force and the IDVA service each run
'cairn agency init' on their own machine and send only the request; the administrator runs
'cairn federation enrol' and sends back only the certificate; each agency installs it. The
broker's machine holds the broker and pseudonym stores and the published files, the auditor's
the auditor and pseudonym stores: 'cairn serve' and 'cairn auditor' start on those alone, the
police's 'cairn send' is accepted and the IDVA's 'cairn inbox' decrypts the disclosure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from keys.custody import Custody
from keys.tls import client_context
from tests.e2e.test_cli import CAIRN, cairn, free_port
from tests.kafka_support import LocalKafka
from tests.samples import REPO, sample

POLICE = "kelder-police"
IDVA = "kelder-idva"


class Machines:
    """One folder per machine; ``env(name)`` is a cairn process's environment on it."""

    def __init__(self, root: Path, kafka: LocalKafka) -> None:
        self.root = root
        tag = uuid.uuid4().hex[:8]
        environ = {k: v for k, v in os.environ.items() if not k.startswith("CAIRN_")}
        self.common = {
            **environ,
            "CAIRN_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
            "CAIRN_TOPIC_PREFIX": f"enrol{tag}",
            "CAIRN_TRANSACTIONAL_ID": f"cairn-enrol-{tag}",
            "CAIRN_HTTP_PORT": str(free_port()),
            "CAIRN_AUDITOR_HTTP_PORT": str(free_port()),
            "CAIRN_LOG_FORMAT": "json",
        }

    def env(self, machine: str) -> dict[str, str]:
        return {**self.common, "CAIRN_STATE_DIR": str(self.root / machine)}

    def custody(self, machine: str) -> Custody:
        return Custody(self.root / machine / "keys", self.root / machine / "passphrases")

    def publish(self, machine: str) -> None:
        """Copy the administrator's published files to ``machine``."""
        shutil.copytree(
            self.root / "admin" / "keys" / "public",
            self.root / machine / "keys" / "public",
            dirs_exist_ok=True,
        )

    def hand_over(self, machine: str, store: str) -> None:
        shutil.copytree(self.root / "admin" / "keys" / store, self.root / machine / "keys" / store)
        secret = self.root / machine / "passphrases" / store
        secret.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.root / "admin" / "passphrases" / store, secret)

    def own_passphrase(self, machine: str, store: str) -> None:
        secret = self.root / machine / "passphrases" / store
        secret.parent.mkdir(parents=True, exist_ok=True)
        secret.write_text(f"the {machine} operator's own passphrase for {store}\n")


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    return result.stdout


@pytest.fixture
def machines(kafka: LocalKafka, tmp_path: Path) -> Machines:
    m = Machines(tmp_path, kafka)
    ok(cairn(m.env("admin"), "federation", "init"))
    for agency in (POLICE, IDVA):
        m.publish(agency)
        m.own_passphrase(agency, f"agencies/{agency}")
        request = tmp_path / f"{agency}.request.jws"
        ok(cairn(m.env(agency), "agency", "init", "--agency", agency, "--out", str(request)))
        cert = tmp_path / f"{agency}.crt"
        ok(cairn(m.env("admin"), "federation", "enrol", str(request), "--out", str(cert)))
        m.publish(agency)
        ok(cairn(m.env(agency), "agency", "install", str(cert), "--agency", agency))
    for machine, stores in (
        ("broker", ("broker", "pseudonym")),
        ("auditor", ("auditor", "pseudonym")),
    ):
        for store in stores:
            m.hand_over(machine, store)
    for machine in ("broker", "auditor", POLICE, IDVA):
        m.publish(machine)
    return m


def _start(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CAIRN, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def _stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    try:
        _out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
    return proc.returncode, err


@pytest.fixture
def services(machines: Machines) -> Iterator[tuple[subprocess.Popen[str], subprocess.Popen[str]]]:
    ok(cairn(machines.env("broker"), "topics", "create"))
    broker = _start(machines.env("broker"), "serve")
    auditor = _start(machines.env("auditor"), "auditor")
    police = machines.custody(POLICE)
    context = client_context(
        police.member_store(POLICE), POLICE, police.passphrase(f"agencies/{POLICE}")
    )
    url = f"https://127.0.0.1:{machines.common['CAIRN_HTTP_PORT']}/readyz"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as r:
                if r.status == 200:
                    break
        except OSError:
            if broker.poll() is not None:
                break
            time.sleep(0.2)
    else:
        broker.kill()
        pytest.fail(f"cairn serve never became ready: {broker.communicate()[1][-2000:]}")
    assert broker.poll() is None, broker.communicate()[1][-2000:]
    try:
        yield broker, auditor
    finally:
        for proc in (broker, auditor):
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


def test_each_machine_runs_on_its_own_stores(
    machines: Machines,
    services: tuple[subprocess.Popen[str], subprocess.Popen[str]],
    tmp_path: Path,
) -> None:
    broker, auditor = services
    for machine, expected in (
        ("broker", ["broker", "pseudonym", "public"]),
        ("auditor", ["auditor", "pseudonym", "public"]),
        (POLICE, ["agencies", "public"]),
    ):
        assert sorted(p.name for p in (tmp_path / machine / "keys").iterdir()) == expected
    data = sample()
    data["header"]["recipients"] = [IDVA]
    path = tmp_path / "referral.json"
    path.write_text(json.dumps(data))
    receipt = json.loads(ok(cairn(machines.env(POLICE), "send", str(path), "--as", POLICE)))
    assert [r["status"] for r in receipt["recipients"]] == ["queued"]
    got = ok(
        cairn(machines.env(IDVA), "inbox", "--as", IDVA, "--max", "1", "--idle", "15", "--json")
    )
    disclosure = json.loads(got.splitlines()[0])
    assert disclosure["referral_id"] == data["header"]["referral_id"]
    assert disclosure["sender_agency"] == POLICE

    # The IDVA service cannot act as the police: its machine has no police keys at all.
    refused = cairn(machines.env(IDVA), "send", str(path), "--as", POLICE)
    assert refused.returncode == 1
    assert "Traceback" not in refused.stderr

    code, err = _stop(broker)
    assert code == 0, err[-2000:]
    code, err = _stop(auditor)
    assert code == 0, err[-2000:]
