"""Witness cosignatures on checkpoints, per C2SP tlog-cosignature (cosignature/v1, Ed25519).

A cosignature (https://c2sp.org/tlog-cosignature, "Format") is a signed-note signature line
``— <witness name> base64(key ID || timestamp || signature)`` where

- the key ID is ``SHA-256(name || 0x0A || 0x04 || 32-byte Ed25519 public key)[:4]``;
- the timestamp is a big-endian u64 of POSIX seconds, at most 2^63 - 1;
- the signature is Ed25519 over the message (section "Ed25519 signed message")
  ``cosignature/v1\\ntime <secs>\\n`` followed by the whole checkpoint note body (origin, size,
  root hash and any extension lines, with the final newline, without signature lines).

The witness verifier key is a signed-note vkey with type byte 0x04.

Pure: bytes and keys in, verified objects out. Every refusal is one
``keys.errors.VerificationError`` whose ``reason`` is ``malformed`` (not a note or cosignature),
``unknown_key`` (no cosignature by a witness we trust) or ``bad_signature``, as in
``broker.audit.checkpoint``.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from broker.audit.checkpoint import (
    MAX_NOTE_BYTES,
    parse_signature_lines,
    parse_vkey,
)
from keys import note
from keys.errors import Reason, VerificationError
from keys.jwk import SigningKey
from keys.note import COSIGNATURE_V1, KEY_ID_BYTES, note_key_id

__all__ = [
    "COSIGNATURE_V1",
    "MAX_TIMESTAMP",
    "Cosignature",
    "CosignerVerifier",
    "add_cosignatures",
    "cosign",
    "cosigned_message",
    "cosigner_key_id",
    "parse_cosignature_lines",
    "verify_cosignatures",
]

MAX_TIMESTAMP: Final = 2**63 - 1  # tlog-cosignature: the timestamp MUST NOT exceed this
_DASH: Final = "\N{EM DASH} "
_TIMESTAMP_BYTES: Final = 8
_SIGNATURE_BYTES: Final = 64
_BLOB_BYTES: Final = KEY_ID_BYTES + _TIMESTAMP_BYTES + _SIGNATURE_BYTES


def _malformed(message: str) -> VerificationError:
    return VerificationError(Reason.MALFORMED, message)


def cosigner_key_id(name: str, public_key: Ed25519PublicKey) -> bytes:
    """tlog-cosignature "Format": SHA-256(name || 0x0A || 0x04 || public key)[:4]."""
    return note_key_id(name, COSIGNATURE_V1, public_key)


def _check_text(text: bytes) -> None:
    if not text.endswith(b"\n") or b"\n\n" in text:
        raise ValueError("a checkpoint note body ends with a newline and has no blank line")
    if any(b < 0x20 and b != 0x0A for b in text):
        raise ValueError("a note text holds no control characters but newline")


def cosigned_message(text: bytes, timestamp: int) -> bytes:
    """tlog-cosignature "Ed25519 signed message": the two header lines, then the note body."""
    if not 0 <= timestamp <= MAX_TIMESTAMP:
        raise ValueError(f"a cosignature timestamp is between 0 and {MAX_TIMESTAMP}")
    return b"cosignature/v1\ntime " + str(timestamp).encode("ascii") + b"\n" + text


@dataclass(frozen=True)
class CosignerVerifier:
    """A witness we trust: its name and Ed25519 public key (cosignature/v1)."""

    name: str
    public_key: Ed25519PublicKey
    key_id: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key_id", cosigner_key_id(self.name, self.public_key))

    def vkey(self) -> str:
        """The signed-note verifier key: ``name+hex(key ID)+base64(0x04 || key)``."""
        return note.vkey(self.name, COSIGNATURE_V1, self.public_key)

    @classmethod
    def from_vkey(cls, vkey: str) -> CosignerVerifier:
        """Parse a witness verifier key (type byte 0x04), checking its key ID."""
        return cls(*parse_vkey(vkey, COSIGNATURE_V1, "a witness verifier key"))


@dataclass(frozen=True)
class Cosignature:
    """A verified cosignature: which witness, and the time it states (POSIX seconds)."""

    name: str
    key_id: bytes
    timestamp: int


def cosign(text: bytes, name: str, key: SigningKey | Ed25519PrivateKey, now: int) -> bytes:
    """The cosignature line (with its newline) by witness ``name`` on checkpoint body ``text``.

    ``text`` is the checkpoint note body (no signature lines); ``now`` is POSIX seconds.
    """
    _check_text(text)
    private = key.private_key if isinstance(key, SigningKey) else key
    signature = private.sign(cosigned_message(text, now))
    blob = cosigner_key_id(name, private.public_key()) + struct.pack(">Q", now) + signature
    return f"{_DASH}{name} {base64.b64encode(blob).decode('ascii')}\n".encode()


def parse_cosignature_lines(lines: bytes) -> list[tuple[str, bytes, bytes]]:
    """Signature lines (each ending in a newline) as (name, key ID, rest of the blob).

    Strict: every line is ``— <name> <canonical base64>`` with a blob longer than a key ID.
    """
    if len(lines) > MAX_NOTE_BYTES:
        raise _malformed(f"signature lines are at most {MAX_NOTE_BYTES} bytes")
    try:
        decoded = lines.decode("utf-8")
    except UnicodeDecodeError:
        raise _malformed("signature lines are UTF-8") from None
    if not decoded.endswith("\n") or any(ord(c) < 0x20 and c != "\n" for c in decoded):
        raise _malformed("signature lines end with a newline and hold no control characters")
    return parse_signature_lines(decoded[:-1].split("\n"))


def _split_note(note: bytes) -> tuple[bytes, bytes]:
    if len(note) > MAX_NOTE_BYTES:
        raise _malformed(f"a note is at most {MAX_NOTE_BYTES} bytes")
    split = note.rfind(b"\n\n")
    if split < 0 or not note.endswith(b"\n"):
        raise _malformed("a signed note is text, a blank line, then signature lines")
    return note[: split + 1], note[split + 2 :]


def add_cosignatures(note: bytes, lines: bytes) -> bytes:
    """``note`` (a signed checkpoint) with the signature ``lines`` appended, duplicates dropped."""
    text, existing = _split_note(note)
    parse_cosignature_lines(existing)
    parse_cosignature_lines(lines)
    have = set(existing.splitlines(keepends=True))
    added = [line for line in lines.splitlines(keepends=True) if line not in have]
    return text + b"\n" + existing + b"".join(added)


def verify_cosignatures(note: bytes, witnesses: Sequence[CosignerVerifier]) -> list[Cosignature]:
    """The cosignatures in ``note`` by the trusted ``witnesses``, each verified.

    Lines by other keys (the log's own signature among them) are ignored, as signed-note
    requires; a line with a trusted witness's name and key ID that does not verify refuses the
    whole note (``bad_signature``); no trusted cosignature at all is ``unknown_key``.
    """
    text, block = _split_note(note)
    found: list[Cosignature] = []
    for name, kid, rest in parse_cosignature_lines(block):
        for witness in witnesses:
            if witness.name != name or witness.key_id != kid:
                continue
            if len(rest) != _BLOB_BYTES - KEY_ID_BYTES:
                raise _malformed(f"the cosignature by {name} is not timestamp || signature")
            (timestamp,) = struct.unpack(">Q", rest[:_TIMESTAMP_BYTES])
            if timestamp > MAX_TIMESTAMP:
                raise _malformed(f"the cosignature by {name} has a timestamp over 2^63 - 1")
            try:
                witness.public_key.verify(
                    rest[_TIMESTAMP_BYTES:], cosigned_message(text, timestamp)
                )
            except InvalidSignature:
                raise VerificationError(
                    Reason.BAD_SIGNATURE,
                    f"the cosignature by {name} ({kid.hex()}) does not verify: the checkpoint "
                    "was altered or cosigned with another key",
                ) from None
            found.append(Cosignature(name, kid, timestamp))
    if not found:
        raise VerificationError(
            Reason.UNKNOWN_KEY,
            "the note carries no cosignature by a trusted witness ("
            + ", ".join(f"{w.name}+{w.key_id.hex()}" for w in witnesses)
            + ")",
        )
    return found
