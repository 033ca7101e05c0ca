"""After a demo run: Kafka and the audit log hold no personal data, yet a person's identifiers
still find every disclosure about them in the audit log."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from keys.store import ROOT_PUBLIC
from tests.conftest import FederationKeys
from tests.evidence_support import check_every_tampering
from tests.kafka_support import LocalKafka, read_committed, topics_with_prefix
from tests.samples import REPO, all_personal_values


def needles() -> list[bytes]:
    """Byte patterns of every sample personal value.

    A value shorter than six characters could turn up by chance inside base64url ciphertext,
    so it only counts when it stands as a word (quoted or between spaces), as it would in JSON.
    """
    out: list[bytes] = []
    for value in all_personal_values():
        v = value.encode()
        if len(value) >= 6:
            out.append(v)
        else:
            out += [b'"' + v + b'"', b" " + v + b" ", b'"' + v + b" ", b" " + v + b'"']
    return out


async def every_record(bootstrap: str, prefix: str) -> list[bytes]:
    """Key, value and headers of every record on the prefix's topics, aborted ones included."""
    blobs: list[bytes] = []
    for topic in await topics_with_prefix(bootstrap, prefix):
        for r in await read_committed(bootstrap, topic, isolation_level="read_uncommitted"):
            headers = b"\n".join(k.encode() + b"=" + v for k, v in r.headers)
            blobs.append((r.key or b"") + b"\n" + (r.value or b"") + b"\n" + headers)
    return blobs


def demo_env(kafka: LocalKafka, keys: FederationKeys, state: Path, prefix: str) -> dict[str, str]:
    """The environment of a demo run of its own: topics, state folder, the session's keys."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CAIRN_KEY_PASSPHRASE")}
    return {
        **environ,
        "CAIRN_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
        "CAIRN_TOPIC_PREFIX": prefix,
        "CAIRN_TRANSACTIONAL_ID": f"cairn-{prefix}",
        "CAIRN_STATE_DIR": str(state),
        "CAIRN_KEY_DIR": str(keys.root),
        "CAIRN_KEY_PASSPHRASE": keys.passphrase.decode(),
        # the demo honours the configured ports (broker.cli.demo_ports): a test's are free ones
        "CAIRN_HTTP_PORT": "0",
        "CAIRN_AUDITOR_HTTP_PORT": "0",
        "CAIRN_GATEWAY_PORT": "0",
        "CAIRN_GATEWAY_WEB_PORT": "0",
    }


@dataclass(frozen=True)
class DemoRun:
    """One 'cairn demo' run of this module's own: its environment, state folder and output."""

    env: dict[str, str]
    state: Path
    prefix: str
    stdout: str


@pytest.fixture(scope="module")
def demo_run(
    kafka: LocalKafka, federation_keys: FederationKeys, tmp_path_factory: pytest.TempPathFactory
) -> DemoRun:
    """'cairn demo' run once for every test of this module (it takes a while), on keys made as
    'make demo' makes them: 'cairn keys init' (separate stores, passphrase files, and the two
    development witnesses, which the demo runs and the auditor submits each checkpoint to)."""
    state = tmp_path_factory.mktemp("demo-state")
    prefix = f"scan{uuid.uuid4().hex[:8]}"
    env = demo_env(kafka, federation_keys, state, prefix)
    del env["CAIRN_KEY_PASSPHRASE"]
    env["CAIRN_KEY_DIR"] = str(state / "keys")
    env["CAIRN_PASSPHRASE_DIR"] = str(state / "passphrases")
    init = subprocess.run(
        [sys.executable, "-m", "broker", "keys", "init"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )
    assert init.returncode == 0, init.stdout + init.stderr
    demo = subprocess.run(
        [sys.executable, "-m", "broker", "demo", "--timeout", "60"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO,
        check=False,
    )
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "demo: OK" in demo.stdout
    return DemoRun(env, state, prefix, demo.stdout)


def test_demo_run_leaves_no_personal_data_in_kafka(kafka: LocalKafka, demo_run: DemoRun) -> None:
    """After 'cairn demo', no record on any Cairn topic holds a sample name, date of birth,
    NHS number, phone number or address, in its value, key or headers."""
    blobs = asyncio.run(every_record(kafka.bootstrap, demo_run.prefix))
    assert len(blobs) >= 10  # the demo's deliveries are there to be scanned
    patterns = needles()
    assert len(patterns) > 40
    leaks = sorted({p.decode() for blob in blobs for p in patterns if p in blob})
    assert leaks == [], f"personal data found in Kafka records: {leaks}"


def test_demo_audit_log_is_pseudonymous_and_searchable(demo_run: DemoRun) -> None:
    """After 'cairn demo', the audit log verifies, none of its entries holds sample personal
    data, and a query by a sample victim's NHS number (or name and date of birth) finds
    exactly the disclosures made about her."""
    assert "audit verify: OK" in demo_run.stdout
    # The offline check also verified both development witnesses' cosignatures in cosigned.log.
    said = next(line for line in demo_run.stdout.splitlines() if "audit verify: OK" in line)
    assert re.search(r"cosigned: \d+ checkpoints; witnesses: \S*north\S* up to size \d+", said)
    assert re.search(r"\S*south\S* up to size \d+", said), said
    audit_dir = demo_run.state / "audit"
    entries = (audit_dir / "entries.log").read_bytes()
    leaks = sorted({p.decode() for p in needles() if p in entries})
    assert leaks == [], f"personal data found in the audit log: {leaks}"

    def query(*identifiers: str) -> list[dict[str, object]]:
        result = subprocess.run(
            [sys.executable, "-m", "broker", "audit", "--dir", str(audit_dir), "query",
             *identifiers, "--reason", "e2e check IG-0001", "--type", "disclosed",
             "--format", "json"],
            env=demo_run.env, capture_output=True, text=True, timeout=60, cwd=REPO, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return [json.loads(line)["event"] for line in result.stdout.splitlines()]

    # Testina Fictitia (police export line 1): one MARAC and one IDVA referral about her.
    by_nhs = query("--nhs-number", "999 000 0018")
    assert sorted(e["recipient"] for e in by_nhs) == ["kelder-idva", "kelder-marac"]
    by_name = query("--given-name", "testina", "--family-name", "FICTITIA", "--dob", "1991-04-17")
    assert sorted(e["message_id"] for e in by_name) == sorted(e["message_id"] for e in by_nhs)


def test_cairn_status_after_a_demo_run_shows_flows_and_no_personal_data(
    demo_run: DemoRun,
) -> None:
    """'cairn status' on a demo run's broker state shows the police force's flows to each
    recipient and prints none of the samples' personal data."""
    (run_state,) = demo_run.state.glob("demo-*")  # the demo broker's own state folder
    status = subprocess.run(
        [sys.executable, "-m", "broker", "status", "--offline"],
        env={**demo_run.env, "CAIRN_STATE_DIR": str(run_state), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert status.returncode == 0, status.stderr
    for recipient in ("kelder-marac", "kelder-idva", "kelder-brook-primary", "kelder-csc"):
        assert recipient in status.stdout
    assert "kelder-police" in status.stdout
    leaks = sorted({p.decode() for p in needles() if p in status.stdout.encode()})
    assert leaks == [], f"personal data in cairn status: {leaks}"


def test_demo_ends_with_an_evidence_pack_that_verifies_and_names_each_tampering(
    demo_run: DemoRun, federation_keys: FederationKeys, tmp_path: Path
) -> None:
    """'cairn demo' ends with the evidence step: the pack of the disclosure the IDVA service
    acknowledged, exported from the auditor's log and the gateway's store, verified from the
    root key file alone, the words printed; the pack holds no personal data in the clear (the
    JWE is ciphertext, the JWS left out); each way of tampering with it is named
    (tests/evidence_support.py)."""
    out = demo_run.stdout
    assert "evidence verify: OK" in out
    # The proof leads to a checkpoint both development witnesses cosigned.
    assert "2 witness(es) the registry lists cosigned that checkpoint" in " ".join(out.split())
    assert "was disclosed to kelder-idva" in out
    assert "kelder-idva signed an acknowledgement of that referral (filed)" in out
    assert "The log also holds kelder-idva's acknowledgement of it (filed)." in out
    assert "the evidence does not verify: disclosure:" in out  # the altered copy, refused
    (pack,) = demo_run.state.glob("gateways-*/kelder-idva/evidence-*.json")
    data = pack.read_bytes()
    doc = json.loads(data)
    assert {"jwe", "ack", "disclosed", "acknowledged", "registry"} <= doc.keys()
    assert "jws" not in doc
    leaks = sorted({p.decode() for p in needles() if p in data})
    assert leaks == [], f"personal data in the evidence pack: {leaks}"
    root_key = Path(demo_run.env["CAIRN_KEY_DIR"]) / "public" / ROOT_PUBLIC  # split custody
    check_every_tampering(data, root_key, tmp_path)
