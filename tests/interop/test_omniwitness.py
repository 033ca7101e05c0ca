"""Issue 17's "if transparency-dev's own witness can be built here, test against it as well".

transparency-dev's omniwitness (github.com/transparency-dev/witness/cmd/omniwitness, pinned by
tests/interop/go-witness/go.sum, built from the Go module proxy by ``make go``) runs on a free
loopback port, following our log (its ``--additional_logs`` file: our origin and the
auditor's verifier key from the registry). The auditor's own checkpoints go to it over C2SP
tlog-witness ``add-checkpoint`` with our log-side client (``broker.audit.witness.
submit_checkpoint``) and our RFC 9162 consistency proofs; its cosignatures are checked with our
``verify_cosignatures``. A fork (the auditor's key signing another root for a size it
cosigned) is refused (422 from omniwitness: the empty proof between two roots of one size fails
before the same-size root check that would answer 409). No Go toolchain fails the test.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from broker.audit.checkpoint import Checkpoint, sign_checkpoint
from broker.audit.cosign import CosignerVerifier, add_cosignatures, verify_cosignatures
from broker.audit.files import DEFAULT_ORIGIN
from broker.audit.service import Auditor
from broker.audit.witness import WitnessEndpoint, WitnessResult, submit_checkpoint
from broker.config import Settings
from broker.federation import load_federation
from keys import AUDITOR_ID
from keys.errors import VerificationError
from tests.conftest import FederationKeys
from tests.go_support import go_build, go_env
from tests.interop.test_go_tiles_http import _registry_vkey
from tests.samples import FEDERATION_DIR, REPO
from tests.unit.audit.conftest import NOW, events_for, sample_messages

PROGRAM = REPO / "tests" / "interop" / "go-witness"
OMNIWITNESS = "github.com/transparency-dev/witness/cmd/omniwitness"
BUILD_TIMEOUT_S = 900.0  # a cold build compiles modernc.org/sqlite: about 6 minutes on 2 cores
START_TIMEOUT_S = 30.0
NAME = "witness.interop.example"
KEY = Ed25519PrivateKey.from_private_bytes(bytes([5] * 32))
VERIFIER = CosignerVerifier(NAME, KEY.public_key())


def _signer_key() -> str:
    """The witness's note signer key (formats' NewSignerForCosignatureV1: type 0x04, seed)."""
    seed = KEY.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    blob = base64.b64encode(bytes([0x04]) + seed).decode("ascii")
    return f"PRIVATE+KEY+{NAME}+{VERIFIER.key_id.hex()}+{blob}\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def omniwitness(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("omniwitness") / "omniwitness"
    return go_build(PROGRAM, OMNIWITNESS, out, timeout_s=BUILD_TIMEOUT_S)


@contextlib.contextmanager
def _running(binary: Path, folder: Path, log_vkey: str) -> Iterator[str]:
    """omniwitness on loopback, following our log only (no feeders, distributors, bastion or
    metrics listener); yields its submission prefix URL; stopped (then killed) at the end."""
    folder.mkdir(mode=0o700)
    key = folder / "witness.key"
    key.touch(mode=0o600)
    key.write_text(_signer_key())
    logs = folder / "logs.yaml"
    logs.write_text(
        f"Logs:\n  - Origin: {DEFAULT_ORIGIN}\n    PublicKey: {log_vkey}\n"
        "    URL: https://127.0.0.1/v1/audit/log/\n"
    )
    port = _free_port()
    with (folder / "omniwitness.log").open("wb") as output:
        process = subprocess.Popen(
            [
                str(binary),
                f"--listen=127.0.0.1:{port}",
                "--metrics_listen=",
                f"--private_key_path={key}",
                f"--additional_logs={logs}",
                f"--db_file={folder / 'witness.db'}",
                "--logtostderr",
            ],
            env=go_env(),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                assert process.poll() is None, (folder / "omniwitness.log").read_text()
                assert time.monotonic() < deadline, "omniwitness did not listen in time"
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                    break
                time.sleep(0.1)
            yield f"http://127.0.0.1:{port}/"
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


async def test_transparency_devs_witness_cosigns_our_checkpoints(
    omniwitness: Path, federation_keys: FederationKeys, tmp_path: Path
) -> None:
    """omniwitness cosigns the auditor's first checkpoint (old 0) and the next one with our
    consistency proof; each cosignature verifies with our verify_cosignatures, and a flipped
    bit in it does not; it answers a stale old size with its size (our client retries once)
    and refuses a same-size fork."""
    settings = Settings(
        topic_prefix="interop", federation_dir=FEDERATION_DIR, key_dir=federation_keys.root
    )
    auditor = Auditor(settings, federation_keys.trust(AUDITOR_ID), directory=tmp_path / "audit")
    messages = sample_messages(load_federation(FEDERATION_DIR))
    events = [
        event
        for r in range(3)
        for n, message in enumerate(messages)
        for event in events_for(message, NOW + timedelta(days=r, minutes=n))
    ]
    records = list(enumerate(events))
    await auditor.open()
    try:
        await auditor.call(auditor.log.append, records[:100])
        first = await auditor.checkpoint()
        with _running(omniwitness, tmp_path / "witness", _registry_vkey(federation_keys)) as url:
            endpoint = WitnessEndpoint(url, VERIFIER)
            async with aiohttp.ClientSession() as session:
                started = int(time.time())
                one = await submit_checkpoint(session, first, 100, lambda _old: [], endpoint)
                assert one.result is WitnessResult.COSIGNED, one.detail
                cosigned = add_cosignatures(first, one.cosignature)
                [c] = verify_cosignatures(cosigned, [VERIFIER])
                assert c.name == NAME
                assert started - 5 <= c.timestamp <= int(time.time()) + 5

                await auditor.call(auditor.log.append, records[100:])
                second = await auditor.checkpoint()
                size = len(records)

                async def proof(old: int) -> list[bytes]:
                    return await auditor.call(auditor.log.consistency_proof, old, size)

                two = await submit_checkpoint(session, second, size, proof, endpoint, old=100)
                assert two.result is WitnessResult.COSIGNED, two.detail
                verify_cosignatures(add_cosignatures(second, two.cosignature), [VERIFIER])
                head, _, line = add_cosignatures(second, two.cosignature).rpartition(b" ")
                blob = bytearray(base64.b64decode(line))
                blob[-1] ^= 1
                with pytest.raises(VerificationError):
                    verify_cosignatures(head + b" " + base64.b64encode(blob) + b"\n", [VERIFIER])

                # A stale old size: the witness names the size it holds; the retry cosigns.
                again = await submit_checkpoint(session, second, size, proof, endpoint, old=100)
                assert again.result is WitnessResult.COSIGNED, again.detail
                assert again.held_size == size

                signing = auditor.trust.signing_key()
                fork = sign_checkpoint(
                    Checkpoint(DEFAULT_ORIGIN, size, bytes(32)), DEFAULT_ORIGIN, signing
                )
                forked = await submit_checkpoint(session, fork, size, proof, endpoint, old=size)
                # tlog-witness lists the proof check (422) before the same-size root check
                # (409); an empty proof between two roots of one size fails the first, and
                # omniwitness answers 422 (ours, broker.audit.witness, 409): both are forks.
                assert forked.result is WitnessResult.FORK, forked.detail
                assert "HTTP 422" in forked.detail or "HTTP 409" in forked.detail
    finally:
        await auditor.close()
