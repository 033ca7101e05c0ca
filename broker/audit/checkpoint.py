"""Checkpoints: the auditor's signed tree heads, as C2SP signed notes (Ed25519).

A checkpoint (https://c2sp.org/tlog-checkpoint) is the note text ``origin\\nsize\\nbase64(root)\\n``
and a signed note (https://c2sp.org/signed-note) is that text, a blank line, and one line per
signature: ``— <key name> base64(key ID || Ed25519 signature)``, where the key ID is the first
four bytes of ``SHA-256(key name || 0x0A || 0x01 || public key)``. Any tool that speaks these
formats (Go's golang.org/x/mod/sumdb/note, the transparency-dev witnesses) checks ours.

Pure: bytes and keys in, verified objects out. Every refusal is one
``keys.errors.VerificationError`` whose ``reason`` is ``malformed`` (not a note or checkpoint),
``unknown_key`` (no signature by a key we trust) or ``bad_signature``.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from broker.audit.merkle import HASH_SIZE
from keys import note
from keys.errors import Reason, VerificationError
from keys.jwk import SigningKey
from keys.note import ED25519, KEY_ID_BYTES, note_key_id

__all__ = [
    "ED25519",
    "MAX_NOTE_BYTES",
    "MAX_SIGNATURES",
    "Checkpoint",
    "NoteVerifier",
    "b64decode_strict",
    "key_id",
    "note_key_id",
    "open_note",
    "parse_signature_lines",
    "parse_vkey",
    "sign_checkpoint",
    "sign_note",
    "verify_checkpoint",
]

MAX_NOTE_BYTES: Final = 65_536  # bytes; a checkpoint with a few signatures is under 1 KB
MAX_SIGNATURES: Final = 100  # the spec asks verifiers to accept at least 16
_DASH: Final = "\N{EM DASH} "
_SIG_LINE: Final = re.compile(r"^\N{EM DASH} (\S+) (\S+)$")
_SIZE: Final = re.compile(r"^(0|[1-9][0-9]*)$")
_SIGNATURE_BYTES: Final = 64


def _malformed(message: str) -> VerificationError:
    return VerificationError(Reason.MALFORMED, message)


def key_id(name: str, public_key: Ed25519PublicKey) -> bytes:
    """The 4-byte key ID: SHA-256(key name || 0x0A || 0x01 || public key)[:4]."""
    return note_key_id(name, ED25519, public_key)


def b64decode_strict(text: str) -> bytes:
    """Strict standard base64 (RFC 4648 §4, ``keys.note``), refused as ``malformed``."""
    try:
        return note.b64decode_strict(text)
    except ValueError as exc:
        raise _malformed(str(exc)) from None


def parse_vkey(text: str, type_byte: int, kind: str) -> tuple[str, Ed25519PublicKey]:
    """``keys.note.parse_vkey``, refused as ``malformed`` naming ``kind``."""
    try:
        return note.parse_vkey(text, type_byte)
    except ValueError as exc:
        raise _malformed(f"{kind}: {exc}") from None


def parse_signature_lines(lines: Sequence[str]) -> list[tuple[str, bytes, bytes]]:
    """signed-note signature lines (without newlines) as (key name, key ID, rest of the blob).

    Strict: every line is ``— <name> <canonical base64>`` with a blob longer than a key ID.
    """
    if len(lines) > MAX_SIGNATURES:
        raise _malformed(f"a note carries at most {MAX_SIGNATURES} signatures")
    out: list[tuple[str, bytes, bytes]] = []
    for line in lines:
        match = _SIG_LINE.match(line)
        if match is None or "+" in match.group(1):
            raise _malformed("a signature line is '— <key name> <base64 signature>'")
        blob = b64decode_strict(match.group(2))
        if len(blob) <= KEY_ID_BYTES:
            raise _malformed("a signature is a key ID and the signature bytes")
        out.append((match.group(1), blob[:KEY_ID_BYTES], blob[KEY_ID_BYTES:]))
    return out


@dataclass(frozen=True)
class NoteVerifier:
    """A key we trust to sign notes: its name and Ed25519 public key."""

    name: str
    public_key: Ed25519PublicKey
    key_id: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key_id", key_id(self.name, self.public_key))

    def vkey(self) -> str:
        """The verifier key in the Go ``note`` format: ``name+hex(key ID)+base64(0x01||key)``."""
        return note.vkey(self.name, ED25519, self.public_key)

    @classmethod
    def from_vkey(cls, vkey: str) -> NoteVerifier:
        """Parse a verifier key written by ``vkey`` or by Go's ``note.NewVerifier`` format."""
        return cls(*parse_vkey(vkey, ED25519, "a checkpoint verifier key"))


def sign_note(text: bytes, name: str, key: SigningKey | Ed25519PrivateKey) -> bytes:
    """The signed note: ``text``, a blank line, and our signature line."""
    _check_text(text)
    private = key.private_key if isinstance(key, SigningKey) else key
    signature = private.sign(text)
    blob = key_id(name, private.public_key()) + signature
    line = f"{_DASH}{name} {base64.b64encode(blob).decode('ascii')}\n"
    return text + b"\n" + line.encode("utf-8")


def _check_text(text: bytes) -> None:
    if not text.endswith(b"\n"):
        raise ValueError("a note text ends with a newline")
    if any(b < 0x20 and b != 0x0A for b in text):
        raise ValueError("a note text holds no control characters but newline")


def open_note(note: bytes, verifiers: Sequence[NoteVerifier]) -> tuple[bytes, NoteVerifier]:
    """The text of ``note`` and the trusted key that signed it.

    Signatures by keys not in ``verifiers`` are ignored, as the spec requires; a signature by
    a trusted key that fails refuses the whole note.
    """
    # 1. Size: refuse before parsing.
    if len(note) > MAX_NOTE_BYTES:
        raise _malformed(f"a note is at most {MAX_NOTE_BYTES} bytes")
    # 2. Valid UTF-8 with no control characters other than newline.
    try:
        decoded = note.decode("utf-8")
    except UnicodeDecodeError:
        raise _malformed("a note is UTF-8") from None
    if any(ord(c) < 0x20 and c != "\n" for c in decoded):
        raise _malformed("a note holds no control characters but newline")
    # 3. The text ends with a newline and is separated from the signatures by the last blank
    #    line; the signature block ends with a newline too.
    split = decoded.rfind("\n\n")
    if split < 0 or not decoded.endswith("\n"):
        raise _malformed("a signed note is text, a blank line, then signature lines")
    text = decoded[: split + 1]
    # 4. Each line: em dash, space, key name, space, base64(key ID || signature).
    signatures = parse_signature_lines(decoded[split + 2 : -1].split("\n"))
    # 5. Verify every signature whose key name and ID match a trusted key; ignore the rest.
    signed_by: NoteVerifier | None = None
    for name, kid, signature in signatures:
        for verifier in verifiers:
            if verifier.name != name or verifier.key_id != kid:
                continue
            try:
                if len(signature) != _SIGNATURE_BYTES:
                    raise InvalidSignature
                verifier.public_key.verify(signature, text.encode("utf-8"))
            except InvalidSignature:
                raise VerificationError(
                    Reason.BAD_SIGNATURE,
                    f"the signature by {name} ({kid.hex()}) does not verify: the note was "
                    "altered or signed with another key",
                ) from None
            signed_by = verifier
    # 6. At least one trusted signature.
    if signed_by is None:
        raise VerificationError(
            Reason.UNKNOWN_KEY,
            "the note carries no signature by a trusted key ("
            + ", ".join(f"{v.name}+{v.key_id.hex()}" for v in verifiers)
            + ")",
        )
    return text.encode("utf-8"), signed_by


@dataclass(frozen=True)
class Checkpoint:
    """A tree head: the log's origin, its size, and the RFC 9162 root hash at that size."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin or "\n" in self.origin:
            raise ValueError("a checkpoint origin is one non-empty line")
        if self.size < 0:
            raise ValueError("a tree size is not negative")
        if len(self.root_hash) != HASH_SIZE:
            raise ValueError(f"a root hash is {HASH_SIZE} bytes")
        if any(not e or "\n" in e for e in self.extensions):
            raise ValueError("extension lines are non-empty single lines")

    def text(self) -> bytes:
        """The note text: origin, size, base64 root hash, any extension lines."""
        lines = [
            self.origin,
            str(self.size),
            base64.b64encode(self.root_hash).decode("ascii"),
            *self.extensions,
        ]
        return ("\n".join(lines) + "\n").encode("utf-8")

    @classmethod
    def parse(cls, text: bytes) -> Checkpoint:
        """The checkpoint in a note text (already verified: see ``verify_checkpoint``)."""
        try:
            decoded = text.decode("utf-8")
        except UnicodeDecodeError:
            raise _malformed("a checkpoint is UTF-8") from None
        if not decoded.endswith("\n"):
            raise _malformed("a checkpoint ends with a newline")
        lines = decoded[:-1].split("\n")
        # tlog-checkpoint: at least three non-empty lines: origin, size, root hash.
        if len(lines) < 3 or any(not line for line in lines):
            raise _malformed("a checkpoint is at least three non-empty lines")
        origin, size, root_b64, *extensions = lines
        if _SIZE.match(size) is None:
            raise _malformed("the tree size is a decimal number without leading zeros")
        root_hash = b64decode_strict(root_b64)
        if len(root_hash) != HASH_SIZE:
            raise _malformed(f"the root hash is {HASH_SIZE} bytes")
        return cls(origin, int(size), root_hash, tuple(extensions))


def sign_checkpoint(
    checkpoint: Checkpoint, name: str, key: SigningKey | Ed25519PrivateKey
) -> bytes:
    """The checkpoint as a signed note by ``name``'s key (the name should be the origin)."""
    return sign_note(checkpoint.text(), name, key)


def verify_checkpoint(
    note: bytes, verifiers: Sequence[NoteVerifier], *, origin: str | None = None
) -> Checkpoint:
    """The checkpoint in ``note`` if a trusted key signed it and it is from ``origin``."""
    text, _ = open_note(note, verifiers)
    checkpoint = Checkpoint.parse(text)
    if origin is not None and checkpoint.origin != origin:
        raise _malformed(f"the checkpoint is from {checkpoint.origin!r}, not from {origin!r}")
    return checkpoint
