"""C2SP signed-note verifier keys: the text form in which a third party is given a note key.

A verifier key (https://c2sp.org/signed-note, "Verifier keys") is ``name+hex(key ID)+base64(type
|| public key)``, where the key ID is the first four bytes of ``SHA-256(name || 0x0A || type ||
public key)``. Cairn uses two types, both Ed25519:

- ``0x01`` (``ED25519``): the auditor's checkpoint key, named by the log's origin
  (c2sp.org/tlog-checkpoint), as Go's ``golang.org/x/mod/sumdb/note`` writes it;
- ``0x04`` (``COSIGNATURE_V1``): a witness's cosignature key (c2sp.org/tlog-cosignature).

The registry publishes both (``keys.registry.RegisteredKey.vkey``) and the audit log signs and
checks with them (``broker.audit.checkpoint``, ``broker.audit.cosign``): one implementation.

Pure. A refusal is a ``ValueError`` saying what is wrong; callers that verify hostile input
turn it into their own typed error.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = [
    "AUDIT_LOG_ORIGIN",
    "COSIGNATURE_V1",
    "ED25519",
    "KEY_ID_BYTES",
    "b64decode_strict",
    "check_key_name",
    "note_key_id",
    "parse_vkey",
    "read_vkey",
    "vkey",
]

ED25519: Final = 0x01  # signed-note key type: Ed25519 note signatures
COSIGNATURE_V1: Final = 0x04  # tlog-cosignature: Ed25519 cosignature/v1
KEY_ID_BYTES: Final = 4
#: The audit log's origin (its checkpoints' first line, and the name of the auditor's note key).
AUDIT_LOG_ORIGIN: Final = "cairn.local/audit"
_HEX_ID: Final = re.compile(r"[0-9a-f]{8}")
_NAMES: Final = {ED25519: "an Ed25519 note key (type 0x01)", COSIGNATURE_V1: "a cosignature/v1 key"}


def check_key_name(name: str) -> None:
    """signed-note: a key name is non-empty, without white space or ``+``."""
    if not name or "+" in name or any(c.isspace() for c in name):
        raise ValueError("a note key name is non-empty, without spaces or '+'")


def b64decode_strict(text: str) -> bytes:
    """Strict standard base64 (RFC 4648 §4): padded, and re-encoding gives the same text."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not valid base64") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise ValueError("not canonical base64")
    return raw


def note_key_id(name: str, type_byte: int, public_key: Ed25519PublicKey) -> bytes:
    """The 4-byte key ID: SHA-256(key name || 0x0A || type byte || public key)[:4]."""
    check_key_name(name)
    material = name.encode("utf-8") + b"\n" + bytes([type_byte]) + public_key.public_bytes_raw()
    return hashlib.sha256(material).digest()[:KEY_ID_BYTES]


def vkey(name: str, type_byte: int, public_key: Ed25519PublicKey) -> str:
    """The verifier key ``name+hex(key ID)+base64(type byte || key)``."""
    kid = note_key_id(name, type_byte, public_key)
    material = base64.b64encode(bytes([type_byte]) + public_key.public_bytes_raw())
    return f"{name}+{kid.hex()}+{material.decode('ascii')}"


def read_vkey(text: str) -> tuple[str, int, Ed25519PublicKey]:
    """The name, type and Ed25519 key of a verifier key of either type, its key ID checked."""
    name, sep, rest = text.partition("+")
    hex_id, sep2, material = rest.partition("+")
    if not sep or not sep2 or _HEX_ID.fullmatch(hex_id) is None:
        raise ValueError("a verifier key is name+hex(key id)+base64(key)")
    check_key_name(name)
    raw = b64decode_strict(material)
    if len(raw) != 33 or raw[0] not in _NAMES:
        raise ValueError("a verifier key is of type 0x01 or 0x04, with an Ed25519 key")
    public_key = Ed25519PublicKey.from_public_bytes(raw[1:])
    if note_key_id(name, raw[0], public_key).hex() != hex_id:
        raise ValueError("the verifier key's key id does not match its name and key")
    return name, raw[0], public_key


def parse_vkey(text: str, type_byte: int) -> tuple[str, Ed25519PublicKey]:
    """The name and Ed25519 key of a verifier key of ``type_byte``, its key ID checked."""
    name, found, public_key = read_vkey(text)
    if found != type_byte:
        raise ValueError(f"not {_NAMES[type_byte]}")
    return name, public_key
