"""Acceptance 2 of issue 17 (the Go half): a checkpoint cosigned by two witnesses verifies with
Go's golang.org/x/mod/sumdb/note (the log's signature, the cosignature lines present) and with
transparency-dev/formats' NewVerifierForCosignatureV1 (each witness's cosignature, its verifier
key as ``CosignerVerifier.vkey()`` prints it); a tampered cosignature or checkpoint is refused.

The cosignatures are our own witnesses' (``broker.audit.witness.Witness.add_checkpoint``, C2SP
tlog-witness), joined with ``broker.audit.cosign.add_cosignatures``, as the auditor publishes
them. tests/interop/go/cosig is the Go side; no Go toolchain fails the test.
"""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.audit.checkpoint import Checkpoint, NoteVerifier, sign_checkpoint
from broker.audit.cosign import add_cosignatures, verify_cosignatures
from broker.audit.files import DEFAULT_ORIGIN
from broker.audit.merkle import Tree, leaf_hash
from broker.audit.witness import Witness
from tests.go_support import GO_TIMEOUT_S, go_build, go_env
from tests.samples import REPO

PROGRAM = REPO / "tests" / "interop" / "go"
LOG_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
WITNESSES = {
    "witness.kelder-council.example": Ed25519PrivateKey.from_private_bytes(bytes([7] * 32)),
    "witness.ombudsman.example": Ed25519PrivateKey.from_private_bytes(bytes([9] * 32)),
}
NOW = 1_796_000_000  # the witnesses' clock: POSIX seconds


@pytest.fixture(scope="module")
def cosig(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return go_build(PROGRAM, "./cosig", tmp_path_factory.mktemp("go") / "cosig")


def _go(binary: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary), *args],
        env=go_env(),
        capture_output=True,
        text=True,
        timeout=GO_TIMEOUT_S,
        check=False,
    )


def _cosigned(tmp_path: Path) -> tuple[bytes, list[Witness]]:
    """A signed checkpoint of 5 entries, cosigned by both witnesses over tlog-witness."""
    tree = Tree.of(leaf_hash(b"entry %d" % i) for i in range(5))
    note = sign_checkpoint(Checkpoint(DEFAULT_ORIGIN, 5, tree.root()), DEFAULT_ORIGIN, LOG_KEY)
    log = {DEFAULT_ORIGIN: [NoteVerifier(DEFAULT_ORIGIN, LOG_KEY.public_key())]}
    witnesses = [
        Witness(tmp_path / name, name, key, log, clock=lambda: NOW)
        for name, key in WITNESSES.items()
    ]
    lines = b"".join(w.add_checkpoint(b"old 0\n\n" + note) for w in witnesses)
    return add_cosignatures(note, lines), witnesses


def _args(note: Path, witnesses: list[Witness]) -> list[str]:
    log_vkey = NoteVerifier(DEFAULT_ORIGIN, LOG_KEY.public_key()).vkey()
    return ["verify", str(note), log_vkey, *(w.verifier.vkey() for w in witnesses)]


def test_go_verifies_both_cosignatures(cosig: Path, tmp_path: Path) -> None:
    """x/mod opens the note with the log's key (three signature lines, two unknown to it);
    formats verifies each witness's cosignature and reads the time our witness stated."""
    cosigned, witnesses = _cosigned(tmp_path)
    assert len(verify_cosignatures(cosigned, [w.verifier for w in witnesses])) == 2
    note = tmp_path / "cosigned"
    note.write_bytes(cosigned)
    result = _go(cosig, *_args(note, witnesses))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["ok 2", *(f"cosignature {n} {NOW}" for n in WITNESSES)]


def test_our_witness_vkey_is_formats_cosignature_v1_form(cosig: Path, tmp_path: Path) -> None:
    """formats' VKeyToCosignatureV1 of the witness's plain Ed25519 vkey (type 0x01) is exactly
    the vkey we print (type 0x04, its own key ID): the key-ID rule checked independently."""
    _cosigned_note, witnesses = _cosigned(tmp_path)
    for w in witnesses:
        plain = NoteVerifier(w.name, w.verifier.public_key).vkey()
        result = _go(cosig, "vkey", plain)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == w.verifier.vkey()
        assert plain != w.verifier.vkey()


def _flip_cosignature(note: bytes, name: str) -> bytes:
    """``note`` with one bit of ``name``'s Ed25519 signature flipped (key ID and time kept)."""
    head, sep, block = note.rpartition(b"\n\n")
    lines = block.decode().splitlines()
    for i, line in enumerate(lines):
        signer, _, blob_b64 = line.removeprefix("\N{EM DASH} ").partition(" ")
        if signer == name:
            blob = bytearray(base64.b64decode(blob_b64))
            blob[-1] ^= 1
            lines[i] = f"\N{EM DASH} {signer} {base64.b64encode(bytes(blob)).decode()}"
    return head + sep + "".join(f"{line}\n" for line in lines).encode()


@pytest.mark.parametrize("name", list(WITNESSES))
def test_go_refuses_a_tampered_cosignature(cosig: Path, tmp_path: Path, name: str) -> None:
    """A flipped bit in one witness's cosignature: formats refuses that witness's line (and the
    log's signature still verifies with x/mod, which never knew that key)."""
    cosigned, witnesses = _cosigned(tmp_path)
    tampered = _flip_cosignature(cosigned, name)
    assert tampered != cosigned
    note = tmp_path / "tampered"
    note.write_bytes(tampered)
    result = _go(cosig, *_args(note, witnesses))
    assert result.returncode != 0
    assert f"cosignature by {name}" in result.stderr
    assert "ok" not in result.stdout


def test_go_refuses_a_tampered_checkpoint(cosig: Path, tmp_path: Path) -> None:
    """The checkpoint's size changed under its signatures: the log's signature fails first."""
    cosigned, witnesses = _cosigned(tmp_path)
    note = tmp_path / "tampered"
    note.write_bytes(cosigned.replace(b"\n5\n", b"\n6\n", 1))
    result = _go(cosig, *_args(note, witnesses))
    assert result.returncode != 0
    assert "log signature" in result.stderr
