"""Cosigned checkpoints in the audit log: only our checkpoints, only trusted witnesses, durable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.audit.checkpoint import Checkpoint, sign_checkpoint
from broker.audit.cosign import CosignerVerifier, add_cosignatures, cosign, verify_cosignatures
from broker.audit.errors import TamperDetected
from broker.audit.files import COSIGNED_FILE
from broker.audit.store import AuditLog
from keys.errors import Reason, VerificationError
from keys.jwk import SigningKey

Feed = list[tuple[int, bytes]]
W1 = Ed25519PrivateKey.from_private_bytes(bytes([7]) * 32)
W2 = Ed25519PrivateKey.from_private_bytes(bytes([9]) * 32)
STRANGER = Ed25519PrivateKey.from_private_bytes(bytes([11]) * 32)
V1 = CosignerVerifier("w1.example/a", W1.public_key())
V2 = CosignerVerifier("w2.example/b", W2.public_key())
T = 1_800_000_000


def _text(note: bytes) -> bytes:
    return note[: note.rfind(b"\n\n") + 1]


def _cosigned(note: bytes, *lines: bytes) -> bytes:
    return add_cosignatures(note, b"".join(lines))


def _line(note: bytes, name: str, key: Ed25519PrivateKey, at: int = T) -> bytes:
    return cosign(_text(note), name, key, at)


def test_cosignatures_accumulate_per_size_and_survive_reopening(
    tmp_path: Path, feed: Feed, auditor_key: SigningKey
) -> None:
    """Two witnesses' cosignatures, added one at a time, are kept together for their size,
    verify with verify_cosignatures, and are there after reopening (fsynced, in their file)."""
    with AuditLog.open(tmp_path, witnesses=[V1, V2]) as log:
        log.append(feed[:5])
        first = log.sign_checkpoint(auditor_key)
        assert log.cosigned_checkpoint() is None
        assert log.published_checkpoint() == first
        log.add_cosignatures(_cosigned(first, _line(first, V1.name, W1)))
        both = log.add_cosignatures(_cosigned(first, _line(first, V2.name, W2)))
        assert sorted(c.name for c in verify_cosignatures(both, [V1, V2])) == [V1.name, V2.name]
        assert both.startswith(first)  # the same text and the log's own signature first
        # A second cosignature by the same witness for the same size adds nothing.
        again = log.add_cosignatures(_cosigned(first, _line(first, V1.name, W1, T + 5)))
        assert again == both
        log.append(feed[5:9])
        second = log.sign_checkpoint(auditor_key)
        assert log.published_checkpoint() == second  # not cosigned yet: the bare note
        log.add_cosignatures(_cosigned(second, _line(second, V1.name, W1)))
        assert log.cosigned_size(V1) == 9
        assert log.cosigned_size(V2) == 5
    with AuditLog.open(tmp_path, witnesses=[V1, V2]) as log:
        assert log.cosigned_checkpoint(5) == both
        latest = log.cosigned_checkpoint()
        assert latest is not None
        assert _text(latest) == _text(second)
        assert log.published_checkpoint() == latest
        assert log.cosigned_checkpoint(7) is None
        assert (log.cosigned_size(V1), log.cosigned_size(V2)) == (9, 5)


def test_only_our_checkpoints_cosigned_by_trusted_witnesses_are_kept(
    tmp_path: Path, feed: Feed, auditor_key: SigningKey
) -> None:
    """A fork's checkpoint, another log's, a stranger's or a bad cosignature, and a note
    with no cosignature are refused with their reason, and nothing is written."""
    with AuditLog.open(tmp_path, witnesses=[V1]) as log:
        log.append(feed[:5])
        note = log.sign_checkpoint(auditor_key)
        fork = sign_checkpoint(
            Checkpoint(log.origin, 5, b"\x01" * 32), log.origin, auditor_key
        )  # same origin, same size, another root, our key
        other_log = sign_checkpoint(
            Checkpoint("elsewhere.example/log", 5, log.root()), "elsewhere.example/log", auditor_key
        )
        forged = _line(note, V1.name, W1).replace(b"A", b"B", 1)
        cases = [
            (_cosigned(fork, _line(fork, V1.name, W1)), Reason.MALFORMED),
            (_cosigned(other_log, _line(other_log, V1.name, W1)), Reason.MALFORMED),
            (_cosigned(note, _line(note, "stranger.example", STRANGER)), Reason.UNKNOWN_KEY),
            (_cosigned(note, _line(note, V1.name, W1), _line(note, V2.name, W2)), None),
            (note, Reason.UNKNOWN_KEY),
            (b"not a note", Reason.MALFORMED),
        ]
        for bad, reason in cases:
            with pytest.raises(VerificationError) as refused:
                log.add_cosignatures(bad)
            if reason is not None:
                assert refused.value.reason == reason, refused.value
        if forged != _line(note, V1.name, W1):
            with pytest.raises(VerificationError):
                log.add_cosignatures(_cosigned(note, forged))
        assert log.cosigned_checkpoint() is None
        assert not (tmp_path / COSIGNED_FILE).exists()
        # With the second witness given explicitly, its cosignature is accepted.
        kept = log.add_cosignatures(_cosigned(note, _line(note, V2.name, W2)), [V2])
        assert [c.name for c in verify_cosignatures(kept, [V2])] == [V2.name]


def test_a_torn_tail_is_cut_and_damage_before_valid_data_is_tampering(
    tmp_path: Path, feed: Feed, auditor_key: SigningKey
) -> None:
    """A record the file ends inside is a crash (cut off on open); a changed byte in a record
    with another after it is refused as tampering."""
    with AuditLog.open(tmp_path, witnesses=[V1]) as log:
        log.append(feed[:3])
        one = log.sign_checkpoint(auditor_key)
        log.add_cosignatures(_cosigned(one, _line(one, V1.name, W1)))
        log.append(feed[3:6])
        two = log.sign_checkpoint(auditor_key)
        log.add_cosignatures(_cosigned(two, _line(two, V1.name, W1)))
    path = tmp_path / COSIGNED_FILE
    whole = path.read_bytes()
    path.write_bytes(whole[:-10])
    with AuditLog.open(tmp_path, witnesses=[V1]) as log:
        assert log.cosigned_checkpoint() == log.cosigned_checkpoint(3)
        assert log.cosigned_checkpoint(6) is None
    damaged = bytearray(whole)
    damaged[40] ^= 0x01  # inside the first record, the second still whole after it
    path.write_bytes(bytes(damaged))
    with pytest.raises(TamperDetected):
        AuditLog.open(tmp_path, witnesses=[V1])
    os.unlink(path)
    with AuditLog.open(tmp_path, witnesses=[V1]) as log:  # no file: nothing cosigned, no error
        assert log.cosigned_checkpoint() is None


def test_read_only_opening_sees_the_cosigned_notes(
    tmp_path: Path, feed: Feed, auditor_key: SigningKey
) -> None:
    """The CLI's read-only view of a running auditor's log has its cosigned checkpoints."""
    with AuditLog.open(tmp_path, witnesses=[V1]) as log:
        log.append(feed[:4])
        note = log.sign_checkpoint(auditor_key)
        kept = log.add_cosignatures(_cosigned(note, _line(note, V1.name, W1)))
        with AuditLog.open(tmp_path, readonly=True) as reader:
            assert reader.cosigned_checkpoint(4) == kept
            with pytest.raises(RuntimeError):
                reader.add_cosignatures(kept)
