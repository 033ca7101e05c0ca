"""Our witness (``broker.audit.witness``, what ``cairn witness serve`` runs) driven by
transparency-dev's own tlog-witness client (github.com/transparency-dev/witness/client/http,
tests/interop/go-witness/witnessclient), over real TLS on a free loopback port.

The client reads each answer as the C2SP tlog-witness spec says: a cosignature (checked with
transparency-dev/formats' NewVerifierForCosignatureV1 and our vkey), a 409 ``text/x.tlog.size``
with the size the witness holds (ErrCheckpointStale), a 409 without it for another root of the
same size (ErrRootMismatch), a 422 for a proof that does not verify (ErrInvalidProof). No Go
toolchain fails the test.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.audit.checkpoint import Checkpoint, NoteVerifier, sign_checkpoint
from broker.audit.files import DEFAULT_ORIGIN
from broker.audit.merkle import Tree, leaf_hash
from broker.audit.witness import Witness, witness_app
from keys.store import CA_CERT, SERVER_CERT, SERVER_KEY
from tests.conftest import FederationKeys
from tests.go_support import GO_TIMEOUT_S, go_build, go_env
from tests.openapi_support import serving
from tests.samples import REPO

PROGRAM = REPO / "tests" / "interop" / "go-witness"
LOG_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
WITNESS_KEY = Ed25519PrivateKey.from_private_bytes(bytes([3] * 32))
NAME = "witness.kelder-council.example"


@pytest.fixture(scope="module")
def witnessclient(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("go") / "witnessclient"
    return go_build(PROGRAM, "./witnessclient", out)


def _note(tree: Tree, size: int, root: bytes | None = None) -> bytes:
    checkpoint = Checkpoint(DEFAULT_ORIGIN, size, root or tree.root(size))
    return sign_checkpoint(checkpoint, DEFAULT_ORIGIN, LOG_KEY)


async def test_transparency_devs_witness_client_reads_our_witness(
    witnessclient: Path, federation_keys: FederationKeys, tmp_path: Path
) -> None:
    tree = Tree.of(leaf_hash(b"entry %d" % i) for i in range(9))
    files = {
        "cp1": _note(tree, 4),
        "cp2": _note(tree, 7),
        "proof": b"".join(base64.b64encode(h) + b"\n" for h in tree.consistency_proof(4, 7)),
        "fork": _note(tree, 7, bytes(32)),
        "cp3": _note(tree, 9),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    witness = Witness(
        tmp_path / "witness",
        NAME,
        WITNESS_KEY,
        {DEFAULT_ORIGIN: [NoteVerifier(DEFAULT_ORIGIN, LOG_KEY.public_key())]},
    )
    store = federation_keys.store
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(
        store.path(SERVER_CERT), store.path(SERVER_KEY), password=federation_keys.passphrase
    )
    async with serving(witness_app(witness), context) as url:
        args = [f"-{name}={tmp_path / name}" for name in files]
        result = await _run(
            witnessclient,
            f"-url={url}/",
            f"-ca={store.path(CA_CERT)}",
            f"-vkey={witness.verifier.vkey()}",
            *args,
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    assert witness.state(DEFAULT_ORIGIN).size == 7
    assert len(witness.forks()) == 2  # the same-size fork and the bad proof, kept as evidence


async def _run(binary: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The Go client on a thread: the witness answers on this test's event loop."""
    return await asyncio.to_thread(
        subprocess.run,
        [str(binary), *args],
        env=go_env(),
        capture_output=True,
        text=True,
        timeout=GO_TIMEOUT_S,
        check=False,
    )
