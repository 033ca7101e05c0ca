"""Kafka never holds a readable referral: scan every record of a demo run for personal data."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

from tests.conftest import FederationKeys
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
            blobs.append(r.key + b"\n" + r.value + b"\n" + headers)
    return blobs


def test_demo_run_leaves_no_personal_data_in_kafka(
    kafka: LocalKafka, federation_keys: FederationKeys, tmp_path: Path
) -> None:
    """After 'cairn demo', no record on any Cairn topic holds a sample name, date of birth,
    NHS number, phone number or address, in its value, key or headers."""
    prefix = f"scan{uuid.uuid4().hex[:8]}"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CAIRN_KEY_PASSPHRASE")}
    env = {
        **environ,
        "CAIRN_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
        "CAIRN_TOPIC_PREFIX": prefix,
        "CAIRN_TRANSACTIONAL_ID": f"cairn-{prefix}",
        "CAIRN_STATE_DIR": str(tmp_path),
        "CAIRN_KEY_DIR": str(federation_keys.root),
        "CAIRN_KEY_PASSPHRASE": federation_keys.passphrase.decode(),
    }
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

    blobs = asyncio.run(every_record(kafka.bootstrap, prefix))
    assert len(blobs) >= 10  # the demo's deliveries are there to be scanned
    patterns = needles()
    assert len(patterns) > 40
    leaks = sorted({p.decode() for blob in blobs for p in patterns if p in blob})
    assert leaks == [], f"personal data found in Kafka records: {leaks}"
