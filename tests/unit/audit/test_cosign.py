"""C2SP tlog-cosignature (cosignature/v1): a vector computed here independently, and refusals."""

from __future__ import annotations

import base64
import hashlib
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from broker.audit.checkpoint import Checkpoint, NoteVerifier, sign_checkpoint, verify_checkpoint
from broker.audit.cosign import (
    CosignerVerifier,
    add_cosignatures,
    cosign,
    cosigner_key_id,
    verify_cosignatures,
)
from keys.errors import Reason, VerificationError

ORIGIN = "example.com/behind-the-sofa"
WITNESS = "witness.example.com/w1"
LOG_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
W1_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
W2_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(64, 96)))
T = 1679315147


def _checkpoint() -> Checkpoint:
    root = base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
    return Checkpoint(ORIGIN, 20852163, root)


def test_vector_computed_independently() -> None:
    text = _checkpoint().text()
    raw = W1_KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    kid = hashlib.sha256(WITNESS.encode() + b"\n\x04" + raw).digest()[:4]
    message = (
        b"cosignature/v1\ntime 1679315147\n"
        b"example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    )
    blob = kid + struct.pack(">Q", T) + W1_KEY.sign(message)
    expected = ("\N{EM DASH} " + WITNESS + " " + base64.b64encode(blob).decode() + "\n").encode()
    assert cosign(text, WITNESS, W1_KEY, T) == expected
    assert cosigner_key_id(WITNESS, W1_KEY.public_key()) == kid
    vkey = CosignerVerifier(WITNESS, W1_KEY.public_key()).vkey()
    assert vkey == f"{WITNESS}+{kid.hex()}+" + base64.b64encode(b"\x04" + raw).decode()
    assert CosignerVerifier.from_vkey(vkey).key_id == kid


def test_cosigned_note_verifies_for_both_witnesses_and_the_log() -> None:
    note = sign_checkpoint(_checkpoint(), ORIGIN, LOG_KEY)
    text = _checkpoint().text()
    lines = cosign(text, WITNESS, W1_KEY, T) + cosign(text, "w2.example", W2_KEY, T + 1)
    cosigned = add_cosignatures(note, lines)
    assert add_cosignatures(cosigned, lines) == cosigned  # duplicates dropped
    w1 = CosignerVerifier(WITNESS, W1_KEY.public_key())
    w2 = CosignerVerifier("w2.example", W2_KEY.public_key())
    found = verify_cosignatures(cosigned, [w1, w2])
    assert [(c.name, c.timestamp) for c in found] == [(WITNESS, T), ("w2.example", T + 1)]
    # The log's own signature still verifies in the cosigned note.
    verify_checkpoint(cosigned, [NoteVerifier(ORIGIN, LOG_KEY.public_key())])


def test_refusals() -> None:
    note = sign_checkpoint(_checkpoint(), ORIGIN, LOG_KEY)
    w1 = CosignerVerifier(WITNESS, W1_KEY.public_key())
    with pytest.raises(VerificationError) as unknown:
        verify_cosignatures(note, [w1])
    assert unknown.value.reason == Reason.UNKNOWN_KEY
    line = cosign(_checkpoint().text(), WITNESS, W1_KEY, T)
    cosigned = add_cosignatures(note, line)
    tampered = cosigned.replace(b"20852163", b"20852164")
    with pytest.raises(VerificationError) as bad:
        verify_cosignatures(tampered, [w1])
    assert bad.value.reason == Reason.BAD_SIGNATURE
    # A changed timestamp is part of the signed message.
    blob = bytearray(base64.b64decode(line.split(b" ")[2]))
    blob[11] ^= 1
    forged = "\N{EM DASH} " + WITNESS + " " + base64.b64encode(bytes(blob)).decode() + "\n"
    with pytest.raises(VerificationError) as bad_time:
        verify_cosignatures(note + forged.encode(), [w1])
    assert bad_time.value.reason == Reason.BAD_SIGNATURE
    # A checkpoint-type (0x01) vkey is not a witness key.
    with pytest.raises(VerificationError) as wrong_type:
        CosignerVerifier.from_vkey(NoteVerifier(WITNESS, W1_KEY.public_key()).vkey())
    assert wrong_type.value.reason == Reason.MALFORMED
    for junk in (b"no blank line\n", note + b"- not a signature line\n", note + b"\xff\n"):
        with pytest.raises(VerificationError) as malformed:
            verify_cosignatures(junk, [w1])
        assert malformed.value.reason == Reason.MALFORMED
    with pytest.raises(VerificationError):
        add_cosignatures(note, b"junk\n")
    with pytest.raises(ValueError, match="timestamp"):
        cosign(_checkpoint().text(), WITNESS, W1_KEY, 2**63)
