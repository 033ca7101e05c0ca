"""Offline verification checks cosigned.log: only this log's checkpoints, each witness's
cosignature verifying, and the largest size each witness cosigned reported."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.audit.checkpoint import Checkpoint, NoteVerifier, sign_checkpoint
from broker.audit.cosign import CosignerVerifier, add_cosignatures, cosign
from broker.audit.files import (
    COSIGNED_FILE,
    DEFAULT_ORIGIN,
    FILE_HEADER,
    note_record,
    note_text,
)
from broker.audit.store import AuditLog
from broker.audit.verify import verify
from keys.jwk import SigningKey

Feed = list[tuple[int, bytes]]
W1 = Ed25519PrivateKey.from_private_bytes(bytes([21]) * 32)
W2 = Ed25519PrivateKey.from_private_bytes(bytes([23]) * 32)
STRANGER = Ed25519PrivateKey.from_private_bytes(bytes([25]) * 32)
V1 = CosignerVerifier("w1.example/north", W1.public_key())
V2 = CosignerVerifier("w2.example/south", W2.public_key())
T = 1_800_000_000


def _cosign(note: bytes, *witnesses: tuple[str, Ed25519PrivateKey]) -> bytes:
    return add_cosignatures(note, b"".join(cosign(note_text(note), n, k, T) for n, k in witnesses))


def _log(folder: Path, feed: Feed, key: SigningKey) -> tuple[bytes, bytes]:
    """A log of 9 entries, checkpoints at 5 (cosigned by both) and 9 (by the first only)."""
    with AuditLog.open(folder, witnesses=[V1, V2]) as log:
        log.append(feed[:5])
        first = log.sign_checkpoint(key)
        log.add_cosignatures(_cosign(first, (V1.name, W1), (V2.name, W2)))
        log.append(feed[5:9])
        second = log.sign_checkpoint(key)
        log.add_cosignatures(_cosign(second, (V1.name, W1)))
    return first, second


def _records(folder: Path) -> list[bytes]:
    """The records of cosigned.log, each as written (header and CRC framing included)."""
    data = (folder / COSIGNED_FILE).read_bytes()
    out, pos = [], FILE_HEADER.size
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        out.append(data[pos : pos + 8 + length])
        pos += 8 + length
    return out


def _rewrite(folder: Path, records: list[bytes]) -> None:
    path = folder / COSIGNED_FILE
    head = path.read_bytes()[: FILE_HEADER.size]
    path.write_bytes(head + b"".join(records))


def test_a_cosigned_log_verifies_and_says_what_each_witness_cosigned(
    tmp_path: Path, feed: Feed, auditor_key: SigningKey, verifiers: list[NoteVerifier]
) -> None:
    _log(tmp_path, feed, auditor_key)
    report = verify(tmp_path, verifiers, witnesses=[V1, V2])
    assert report.ok, report.problems
    assert report.cosigned_notes == 2
    assert report.cosigned == ((V1.name, 9), (V2.name, 5))
    assert report.uncosigned_notes == 0
    # Without witness keys the records are still checked to be this log's, no more.
    bare = verify(tmp_path, verifiers)
    assert bare.ok
    assert bare.cosigned_notes == 2
    assert bare.cosigned == ()
    # A witness nobody cosigned with: the records are not faults, and are counted as such.
    stranger = CosignerVerifier("stranger.example/w", STRANGER.public_key())
    other = verify(tmp_path, verifiers, witnesses=[stranger])
    assert other.ok
    assert other.uncosigned_notes == 2
    assert other.cosigned == ()


def test_no_cosigned_file_is_not_a_fault(
    tmp_path: Path, feed: Feed, auditor_key: SigningKey, verifiers: list[NoteVerifier]
) -> None:
    with AuditLog.open(tmp_path) as log:
        log.append(feed[:5])
        log.sign_checkpoint(auditor_key)
    report = verify(tmp_path, verifiers, witnesses=[V1])
    assert report.ok
    assert report.cosigned_notes == 0
    assert report.cosigned == ()


def test_an_altered_cosignature_is_named(
    tmp_path: Path, feed: Feed, auditor_key: SigningKey, verifiers: list[NoteVerifier]
) -> None:
    """A cosignature changed and its record's CRC recomputed (so only the signature can
    tell): refused, naming the record and the witness."""
    _log(tmp_path, feed, auditor_key)
    records = _records(tmp_path)
    note = records[0][8:]
    lines = note[note.rfind(b"\n\n") + 2 :].splitlines(keepends=True)
    # V2's line, "— <name> base64(key ID || timestamp || signature)", with the signature's last
    # bit flipped: the same witness and key ID, a signature that does not verify.
    own = [ln for ln in lines if ln.startswith(f"\u2014 {V2.name} ".encode())]
    assert len(own) == 1
    blob = bytearray(base64.b64decode(own[0].split(b" ")[2]))
    blob[-1] ^= 0x01
    bad = own[0].rsplit(b" ", 1)[0] + b" " + base64.b64encode(bytes(blob)) + b"\n"
    records[0] = note_record(note.replace(own[0], bad))
    _rewrite(tmp_path, records)
    assert verify(tmp_path, verifiers).ok  # no witness keys: nothing to tell it by
    report = verify(tmp_path, verifiers, witnesses=[V1, V2])
    assert not report.ok
    problem = report.first_bad
    assert problem is not None
    assert problem.where == f"record 0 of {COSIGNED_FILE}"
    assert V2.name in problem.message
    assert "does not verify" in problem.message


def test_a_fork_a_damaged_record_and_another_logs_file_are_named(
    tmp_path: Path, feed: Feed, auditor_key: SigningKey, verifiers: list[NoteVerifier]
) -> None:
    original = tmp_path / "log"
    _log(original, feed, auditor_key)
    records = _records(original)

    # A fork: signed by the auditor's key, for size 5, but another root, cosigned by a witness.
    fork = tmp_path / "fork"
    shutil.copytree(original, fork)
    other = sign_checkpoint(Checkpoint(DEFAULT_ORIGIN, 5, bytes(32)), DEFAULT_ORIGIN, auditor_key)
    _rewrite(fork, [records[0], note_record(_cosign(other, (V1.name, W1)))])
    report = verify(fork, verifiers, witnesses=[V1, V2])
    assert not report.ok
    assert report.first_bad is not None
    assert report.first_bad.where == f"record 1 of {COSIGNED_FILE}"
    assert "not a checkpoint of this log" in report.first_bad.message

    # A damaged record with a whole one after it: damage, not a torn tail.
    damaged = tmp_path / "damaged"
    shutil.copytree(original, damaged)
    flipped = bytearray(records[0])
    flipped[20] ^= 0x40
    _rewrite(damaged, [bytes(flipped), records[1]])
    report = verify(damaged, verifiers, witnesses=[V1, V2])
    assert report.first_bad is not None
    assert report.first_bad.where == f"record 0 of {COSIGNED_FILE}"
    assert "damaged" in report.first_bad.message

    # A torn tail (a crash mid-write) is what the auditor's next start cuts off: not a fault.
    torn = tmp_path / "torn"
    shutil.copytree(original, torn)
    _rewrite(torn, [records[0], records[1][:-7]])
    report = verify(torn, verifiers, witnesses=[V1, V2])
    assert report.ok
    assert report.cosigned == ((V1.name, 5), (V2.name, 5))

    # Another log's cosigned file.
    alien = tmp_path / "alien"
    _log(alien, feed, auditor_key)
    mixed = tmp_path / "mixed"
    shutil.copytree(original, mixed)
    shutil.copy(alien / COSIGNED_FILE, mixed / COSIGNED_FILE)
    report = verify(mixed, verifiers, witnesses=[V1, V2])
    assert report.first_bad is not None
    assert report.first_bad.where == COSIGNED_FILE
    assert "bad header" in report.first_bad.message
