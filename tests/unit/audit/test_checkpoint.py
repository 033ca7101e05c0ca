"""C2SP signed notes and checkpoints: byte-for-byte with the Go reference, and every refusal.

The reference vector is the example key and note of golang.org/x/mod/sumdb/note (note_test.go,
also used by the C2SP signed-note implementations): key "PeterNeumann", private key
"PRIVATE+KEY+PeterNeumann+c74f20a3+AYEK...", verifier key "PeterNeumann+c74f20a3+ARpc...".
Ed25519 is deterministic (RFC 8032), so signing the same text with the same key must give the
published note exactly; if it does, Go's verifiers and the transparency-dev witnesses accept
our checkpoints.
"""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from broker.audit.checkpoint import (
    Checkpoint,
    NoteVerifier,
    key_id,
    open_note,
    sign_checkpoint,
    sign_note,
    verify_checkpoint,
)
from keys.errors import Reason, VerificationError

GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    b"If you think cryptography is the answer to your problem,\n"
    b"then you don't know what your problem is.\n"
)
GO_NOTE = (
    GO_TEXT
    + "\n\N{EM DASH} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZ"
    "SNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n".encode()
)
ROOT = hashlib.sha256(b"root").digest()


def _go_private_key() -> Ed25519PrivateKey:
    material = base64.b64decode(GO_SKEY.split("+", 4)[4])
    assert material[0] == 0x01  # Ed25519
    return Ed25519PrivateKey.from_private_bytes(material[1:])


def _reason(exc: pytest.ExceptionInfo[VerificationError]) -> Reason:
    return exc.value.reason


def test_signing_reproduces_the_go_reference_note() -> None:
    """Our note for the reference key and text is the published note, byte for byte."""
    assert sign_note(GO_TEXT, "PeterNeumann", _go_private_key()) == GO_NOTE


def test_the_go_reference_note_verifies() -> None:
    """The published note opens with the published verifier key."""
    verifier = NoteVerifier.from_vkey(GO_VKEY)
    text, signed_by = open_note(GO_NOTE, [verifier])
    assert text == GO_TEXT
    assert signed_by == verifier


def test_verifier_key_round_trips_and_key_id_follows_the_spec() -> None:
    """vkey() writes Go's format, and the key ID is SHA-256(name || LF || 0x01 || key)[:4]."""
    private = _go_private_key()
    verifier = NoteVerifier("PeterNeumann", private.public_key())
    assert verifier.vkey() == GO_VKEY
    raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    expected = hashlib.sha256(b"PeterNeumann\n\x01" + raw).digest()[:4]
    assert key_id("PeterNeumann", private.public_key()) == expected == bytes.fromhex("c74f20a3")


def test_a_changed_text_is_refused() -> None:
    """One changed character in the text fails the signature."""
    changed = GO_NOTE.replace(b"cryptography", b"cryptographY")
    with pytest.raises(VerificationError) as exc:
        open_note(changed, [NoteVerifier.from_vkey(GO_VKEY)])
    assert _reason(exc) is Reason.BAD_SIGNATURE


def test_signatures_by_unknown_keys_are_ignored_but_one_trusted_is_needed() -> None:
    """An extra signature by another key is ignored; a note with none trusted is refused."""
    other = Ed25519PrivateKey.generate()
    cosigned = sign_note(GO_TEXT, "someone-else", other)
    both = GO_NOTE + cosigned.split(b"\n\n", 1)[1]
    text, _ = open_note(both, [NoteVerifier.from_vkey(GO_VKEY)])
    assert text == GO_TEXT
    with pytest.raises(VerificationError) as exc:
        open_note(cosigned, [NoteVerifier.from_vkey(GO_VKEY)])
    assert _reason(exc) is Reason.UNKNOWN_KEY


def test_same_name_other_key_is_unknown_not_accepted() -> None:
    """A signature under our key name by another key has another key ID: it is not ours."""
    impostor = sign_note(GO_TEXT, "PeterNeumann", Ed25519PrivateKey.generate())
    with pytest.raises(VerificationError) as exc:
        open_note(impostor, [NoteVerifier.from_vkey(GO_VKEY)])
    assert _reason(exc) is Reason.UNKNOWN_KEY


@pytest.mark.parametrize(
    "note",
    [
        b"",
        GO_TEXT,  # no signatures
        GO_NOTE.replace(b"\n\n", b"\n"),  # no blank line
        GO_NOTE[:-1],  # no final newline
        GO_NOTE.replace("\N{EM DASH}".encode(), b"-"),  # not an em dash
        GO_NOTE.replace(b"x08go", b"x08g!"),  # not base64
        GO_NOTE.replace(b"problem,", b"problem,\x07"),  # a control character
        b"\xff\n\n\xe2\x80\x94 a AAAA\n",  # not UTF-8
        GO_TEXT + "\n\N{EM DASH} Peter+Neumann AAAAAAA=\n".encode(),  # '+' in the key name
    ],
)
def test_malformed_notes_are_refused(note: bytes) -> None:
    """Anything that is not text, blank line, signature lines is malformed."""
    with pytest.raises(VerificationError) as exc:
        open_note(note, [NoteVerifier.from_vkey(GO_VKEY)])
    assert _reason(exc) is Reason.MALFORMED


def test_checkpoint_text_is_the_tlog_checkpoint_body() -> None:
    """The body is origin, size and base64 root hash, each on its own line."""
    checkpoint = Checkpoint("example.com/log", 20852163, ROOT)
    assert checkpoint.text() == (
        f"example.com/log\n20852163\n{base64.b64encode(ROOT).decode()}\n".encode()
    )
    assert Checkpoint.parse(checkpoint.text()) == checkpoint


def test_signed_checkpoint_verifies_and_names_its_origin() -> None:
    """A checkpoint signed by the auditor verifies; another origin is refused."""
    key = Ed25519PrivateKey.generate()
    verifier = NoteVerifier("cairn.local/audit", key.public_key())
    note = sign_checkpoint(Checkpoint("cairn.local/audit", 7, ROOT), "cairn.local/audit", key)
    assert verify_checkpoint(note, [verifier], origin="cairn.local/audit").size == 7
    with pytest.raises(VerificationError) as exc:
        verify_checkpoint(note, [verifier], origin="elsewhere/log")
    assert _reason(exc) is Reason.MALFORMED


@pytest.mark.parametrize(
    "text",
    [
        b"origin\n5\n",  # fewer than three lines
        b"origin\n05\n" + base64.b64encode(ROOT) + b"\n",  # a leading zero
        b"origin\n-5\n" + base64.b64encode(ROOT) + b"\n",  # not a number
        b"origin\n5\n" + base64.b64encode(ROOT[:31]) + b"\n",  # a short hash
        b"origin\n5\n" + base64.b64encode(ROOT).rstrip(b"=") + b"\n",  # unpadded base64
        b"origin\n5\n" + base64.b64encode(ROOT) + b"\n\n",  # an empty extension line
        b"\n5\n" + base64.b64encode(ROOT) + b"\n",  # an empty origin
    ],
)
def test_malformed_checkpoints_are_refused(text: bytes) -> None:
    """Checkpoint bodies that break tlog-checkpoint's rules are refused."""
    with pytest.raises(VerificationError) as exc:
        Checkpoint.parse(text)
    assert _reason(exc) is Reason.MALFORMED


def test_verifier_keys_with_a_wrong_id_or_type_are_refused() -> None:
    """A vkey whose id does not match its key, or that is not Ed25519, is refused."""
    with pytest.raises(VerificationError):
        NoteVerifier.from_vkey(GO_VKEY.replace("c74f20a3", "c74f20a4"))
    with pytest.raises(VerificationError):
        NoteVerifier.from_vkey(GO_VKEY.replace("+ARpc", "+AhpC"))
