"""Witnesses cosign the auditor's checkpoints (issue 17, acceptance 2), for real.

A real auditor log and two real ``cairn witness serve`` processes over TLS on free loopback
ports: both cosign each checkpoint, and the cosigned note (verified with
``verify_cosignatures`` and the log key) is stored, served by the public tlog-tiles checkpoint
and published on cairn.checkpoints; a witness down does not stop checkpoints and cosigns again
once back; a forked log (another AuditLog of the same origin and size, one entry different,
signed by the same key) is refused by both witnesses (409), which keep the evidence, and the
auditor reports the fork in its log, its metric and its status file.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from structlog.testing import capture_logs

from broker.audit.checkpoint import NoteVerifier, verify_checkpoint
from broker.audit.cosign import CosignerVerifier, verify_cosignatures
from broker.audit.files import DEFAULT_ORIGIN, WITNESS_STATUS_FILE
from broker.audit.service import Auditor, auditor_app, tls_context
from broker.config import Settings, WitnessSetting
from broker.kafka.transport import kafka_options
from broker.ops.health import status_answer
from broker.ops.metrics import Metrics
from keys import AUDITOR_ID
from keys.store import CA_CERT
from schemas.federation import Federation
from tests.conftest import FederationKeys
from tests.go_support import GO_TIMEOUT_S, go_build, go_env
from tests.samples import REPO
from tests.unit.audit.conftest import events_for, sample_messages
from tests.unit.audit.test_witness_cli import _free_port, _tls

_CODE = "import sys; from broker.cli.main import main; sys.argv[0] = 'cairn'; main()"


@dataclass
class WitnessProcess:
    """One ``cairn witness serve`` over TLS: its name, key, state folder, port and process."""

    name: str
    key: Path
    state: Path
    port: int
    verifier: CosignerVerifier
    proc: asyncio.subprocess.Process | None = None
    args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/"

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(sys.executable, "-c", _CODE, *self.args)
        deadline = time.monotonic() + 30
        while True:  # bounded: until it listens, or 30 s
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            assert self.proc.returncode is None, f"{self.name} exited"
            assert time.monotonic() < deadline, f"{self.name} did not start"
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await asyncio.wait_for(self.proc.wait(), timeout=20)
        self.proc = None

    def forks(self) -> list[Path]:
        return sorted((self.state / "forks").glob("*.txt"))


def _log_vkey(keys: FederationKeys) -> str:
    key = keys.trust(AUDITOR_ID).signing_key()
    return NoteVerifier(DEFAULT_ORIGIN, key.private_key.public_key()).vkey()


@pytest.fixture
async def witnesses(
    tmp_path: Path, federation_keys: FederationKeys
) -> AsyncIterator[tuple[list[WitnessProcess], Path]]:
    """Two witnesses following the auditor's log, and the CA file their certificate is in."""
    cert, tls_key = _tls(tmp_path)
    made = []
    for n in (1, 2):
        name = f"witness-{n}.cairn.test"
        key = tmp_path / f"w{n}.pem"
        # The key as 'cairn witness keygen' writes it (PKCS#8 PEM, 0600), made here rather
        # than by an in-process command, which would reconfigure this process's logging.
        private = Ed25519PrivateKey.generate()
        pem = private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        key.write_bytes(pem)
        key.chmod(0o600)
        verifier = CosignerVerifier(name, private.public_key())
        w = WitnessProcess(name, key, tmp_path / f"w{n}", _free_port(), verifier)
        w.args = [
            *("witness", "serve", "--key", str(key), "--name", name),
            *("--state", str(w.state), "--log", _log_vkey(federation_keys)),
            *("--tls-cert", str(cert), "--tls-key", str(tls_key), "--port", str(w.port)),
        ]
        made.append(w)
    try:
        await asyncio.gather(*(w.start() for w in made))
        yield made, cert
    finally:
        for w in made:
            await w.stop()


def _with_witnesses(settings: Settings, ws: list[WitnessProcess], ca: Path) -> Settings:
    return Settings(
        **{
            **settings.model_dump(),
            "auditor_witnesses": [WitnessSetting(vkey=w.verifier.vkey(), url=w.url) for w in ws],
            "auditor_witness_quorum": 2,
            "auditor_witness_ca_file": ca,
            "auditor_witness_timeout_s": 3.0,
        }
    )


def _feed(federation: Federation) -> list[tuple[int, bytes]]:
    out, offset = [], 0
    for message in sample_messages(federation):
        for event in events_for(message):
            out.append((offset, event))
            offset += 1
    return out


async def _public_checkpoint(url: str, ca: ssl.SSLContext) -> bytes:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}/v1/audit/log/checkpoint", ssl=ca) as reply,
    ):
        assert reply.status == 200
        return await reply.read()


async def test_two_witnesses_cosign_what_is_stored_served_and_published_and_one_down_stops_nothing(
    kafka_settings: Settings,
    federation: Federation,
    federation_keys: FederationKeys,
    witnesses: tuple[list[WitnessProcess], Path],
    tmp_path: Path,
) -> None:
    """Both witnesses cosign each checkpoint; the cosigned note verifies (both cosignatures,
    the log's signature), is the log's, the public checkpoint's and cairn.checkpoints' note;
    with a witness down checkpoints go on, cosigned by the other, and it catches up after."""
    ws, ca_file = witnesses
    settings = _with_witnesses(kafka_settings, ws, ca_file)
    verifiers = [w.verifier for w in ws]
    log_key = NoteVerifier.from_vkey(_log_vkey(federation_keys))
    feed = _feed(federation)
    auditor = Auditor(settings, federation_keys.trust(AUDITOR_ID), directory=tmp_path / "audit")
    await auditor.open()
    producer = AIOKafkaProducer(**kafka_options(settings), acks="all")
    await producer.start()
    server = TestServer(auditor_app(auditor), host="127.0.0.1")
    await server.start_server(ssl=tls_context(federation_keys.store, federation_keys.passphrase))
    public = ssl.create_default_context(cafile=str(federation_keys.store.path(CA_CERT)))
    url = str(server.make_url("")).rstrip("/")
    try:
        published = []
        for end in (6, 11):  # the second submission carries a consistency proof from 6
            await auditor.call(auditor.log.append, feed[:end])
            note = await auditor.checkpoint(producer)
            published.append(note)
            found = verify_cosignatures(note, verifiers)
            assert sorted(c.name for c in found) == [w.name for w in ws]
            verify_checkpoint(note, [log_key], origin=DEFAULT_ORIGIN)
            assert await auditor.call(auditor.log.cosigned_checkpoint, end) == note
            assert await _public_checkpoint(url, public) == note
        assert {s["result"] for s in auditor.witness_status.values()} == {"cosigned"}

        # Witness 2 down: the checkpoint is signed and cosigned by witness 1 alone.
        await ws[1].stop()
        with capture_logs() as logs:
            await auditor.call(auditor.log.append, feed[:15])
            started = time.monotonic()
            note = await auditor.checkpoint(producer)
            assert time.monotonic() - started < 2 * settings.auditor_witness_timeout_s + 2
        assert auditor.log.size == 15
        assert [c.name for c in verify_cosignatures(note, verifiers)] == [ws[0].name]
        assert auditor.witness_status[ws[1].name]["result"] == "unreachable"
        events = [e["event"] for e in logs]
        assert "auditor.witness_failed" in events
        assert "auditor.witness_quorum_missed" in events
        assert await _public_checkpoint(url, public) == note
        published.append(note)

        # Back again: the next checkpoint goes to it from the size it holds (11), with a proof.
        await ws[1].start()
        await auditor.call(auditor.log.append, feed[:20])
        note = await auditor.checkpoint(producer)
        assert sorted(c.name for c in verify_cosignatures(note, verifiers)) == [w.name for w in ws]
        published.append(note)

        # cairn.checkpoints holds the cosigned notes, in order.
        consumer = AIOKafkaConsumer(
            f"{settings.topic_prefix}.checkpoints",
            **kafka_options(settings),
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            got: list[bytes] = []
            deadline = time.monotonic() + 20
            while len(got) < len(published) and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=500)
                got += [m.value for msgs in batch.values() for m in msgs]
        finally:
            await consumer.stop()
        assert got == published
        status = json.loads((tmp_path / "audit" / WITNESS_STATUS_FILE).read_text())
        assert status["cosigned_size"] == {w.name: 20 for w in ws}
        assert status["forks"] == 0

        # The published note, as fetched, checked by Go: x/mod's sumdb/note opens it with the
        # log's key, transparency-dev/formats verifies each witness's cosignature (issue 17,
        # acceptance 2; tests/interop/go/cosig).
        served = tmp_path / "published-checkpoint"
        served.write_bytes(await _public_checkpoint(url, public))
        args = [log_key.vkey(), *(v.vkey() for v in verifiers)]
        result = await asyncio.to_thread(_go_verify, tmp_path, served, args)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[0] == "ok 2"
    finally:
        await server.close()
        await producer.stop()
        await auditor.close()


async def test_a_forked_log_is_refused_by_both_witnesses_and_the_auditor_reports_it(
    kafka_settings: Settings,
    federation: Federation,
    federation_keys: FederationKeys,
    witnesses: tuple[list[WitnessProcess], Path],
    tmp_path: Path,
) -> None:
    """A second log of the same origin and size, one entry different, signed by the same key:
    both witnesses answer 409 and keep the submission; the auditor of that log cosigns
    nothing, logs auditor.witness_fork for each, counts them, and says so in witnesses.json."""
    ws, ca_file = witnesses
    settings = _with_witnesses(kafka_settings, ws, ca_file)
    verifiers = [w.verifier for w in ws]
    feed = _feed(federation)
    trust = federation_keys.trust(AUDITOR_ID)
    honest = Auditor(settings, trust, directory=tmp_path / "audit")
    await honest.open()
    try:
        await honest.call(honest.log.append, feed[:8])
        cosigned = await honest.checkpoint()
        assert len(verify_cosignatures(cosigned, verifiers)) == 2
    finally:
        await honest.close()

    metrics = Metrics()
    forked = Auditor(settings, trust, directory=tmp_path / "fork", metrics=metrics)
    await forked.open()
    try:
        other = [*feed[:7], (feed[7][0], feed[8][1])]  # the same size, the last entry another
        await forked.call(forked.log.append, other)
        with capture_logs() as logs:
            note = await forked.checkpoint()
        assert forked.log.size == 8
        assert forked.log.root() != (await _root_of(settings, trust, tmp_path / "audit"))
        with pytest.raises(Exception, match="no cosignature"):
            verify_cosignatures(note, verifiers)
        assert await forked.call(forked.log.cosigned_checkpoint) is None
        assert forked.forks == 2
        assert {s["result"] for s in forked.witness_status.values()} == {"fork"}
        reported = [e for e in logs if e["event"] == "auditor.witness_fork"]
        assert sorted(e["witness"] for e in reported) == [w.name for w in ws]
        assert all(e["log_level"] == "error" and e["size"] == 8 for e in reported)
        assert all("HTTP 409" in e["detail"] for e in reported)
        for w in ws:
            assert metrics.witness_results.labels(witness=w.name, result="fork")._value.get() == 1
            evidence = w.forks()
            assert len(evidence) == 1
            assert note in evidence[0].read_bytes()
        status = json.loads((tmp_path / "fork" / WITNESS_STATUS_FILE).read_text())
        assert status["forks"] == 2
        assert status["last_fork"]["result"] == "fork"
        metrics.auditor_now = status_answer(await forked.call(forked.status))
        assert b"cairn_audit_witness_forks 2.0" in metrics.render()
    finally:
        await forked.close()
    # The count survives a restart: it is the log's history, not the process's.
    again = Auditor(settings, trust, directory=tmp_path / "fork")
    await again.open()
    try:
        assert again.forks == 2
    finally:
        await again.close()


def _go_verify(tmp: Path, note: Path, vkeys: list[str]) -> subprocess.CompletedProcess[str]:
    """tests/interop/go/cosig's ``verify``: the log's signature with x/mod's sumdb/note, each
    witness's cosignature with transparency-dev/formats (the first vkey is the log's)."""
    cosig = go_build(REPO / "tests" / "interop" / "go", "./cosig", tmp / "cosig")
    return subprocess.run(
        [str(cosig), "verify", str(note), *vkeys],
        env=go_env(),
        capture_output=True,
        text=True,
        timeout=GO_TIMEOUT_S,
        check=False,
    )


async def _root_of(settings: Settings, trust: object, directory: Path) -> bytes:
    from broker.audit.store import AuditLog

    with AuditLog.open(directory, readonly=True) as log:
        return log.root()
