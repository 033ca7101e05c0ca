"""``cairn police import`` of the sample export twice, as processes against ``cairn serve``.

Issue 18, acceptance 1: the second run prints the original receipts and sends nothing (the
interrupted run is ``tests/integration/test_reimport.py``).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections import Counter

from broker.kafka.topics import federation_topics
from schemas.federation import Federation
from tests.e2e.test_cli import cairn, env, served  # noqa: F401  (the CLI tests' fixtures)
from tests.kafka_support import read_committed_many
from tests.samples import FEDERATION_DIR, SAMPLES

ROW = re.compile(r"^ *[0-9]+  (MARAC|IDVA|ENCOMPASS) +([0-9a-f-]{36}) ")


def deliveries(environ: dict[str, str], federation: Federation) -> Counter[tuple[str, str]]:
    """(recipient, message id) -> records of it committed on the recipient's topic."""
    prefix = environ["CAIRN_TOPIC_PREFIX"]
    topics = [t.name for t in federation_topics(federation, prefix) if ".deliver." in t.name]
    found = asyncio.run(read_committed_many(environ["CAIRN_KAFKA_BOOTSTRAP_SERVERS"], topics))
    return Counter(
        (topic.split(".deliver.")[1], r.key.decode())
        for topic, records in found.items()
        for r in records
        if r.key is not None
    )


def test_importing_the_sample_export_twice_sends_each_message_once(
    env: dict[str, str],  # noqa: F811  (the fixture imported above)
    served: subprocess.Popen[str],  # noqa: F811
    federation: Federation,
) -> None:
    """The first import queues all 10 messages; the second exits 0, prints each as already
    sent with its original receipt time and sends nothing; each recipient holds each once."""
    url = f"https://127.0.0.1:{env['CAIRN_HTTP_PORT']}"
    args = ["police", "import", "--broker", url, "--federation-dir", str(FEDERATION_DIR)]
    args.append(str(SAMPLES / "police-export.jsonl"))
    first = cairn(env, *args)
    assert first.returncode == 0, first.stdout + first.stderr
    rows = [line for line in first.stdout.splitlines() if ROW.match(line)]
    assert len(rows) == 10
    assert all("  queued (" in line for line in rows)
    sent = deliveries(env, federation)
    assert sum(sent.values()) == 10
    assert set(sent.values()) == {1}

    again = cairn(env, *args)
    assert again.returncode == 0, again.stdout + again.stderr
    rerun = [line for line in again.stdout.splitlines() if ROW.match(line)]
    assert len(rerun) == 10
    for before, after in zip(rows, rerun, strict=True):  # the same message, its first receipt
        receipt = before[before.index("  queued (") :].removeprefix("  queued ")
        assert after.split("  already sent ")[0] == before.split("  queued ")[0]
        assert after.endswith(f"  already sent {receipt}")
    assert "10 of them already sent by an earlier import" in again.stdout
    assert deliveries(env, federation) == sent
