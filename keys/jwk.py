"""Keys as JSON Web Keys: RFC 7638 thumbprints (our key ids), public JWK export and import.

Cairn's key ids are RFC 7638 SHA-256 thumbprints, so any party can recompute a kid from the
public key alone and no registry can claim a kid for the wrong key. The private keys of this
module's ``SigningKey`` and ``DecryptionKey`` wrappers never appear in a repr or a log.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = [
    "DecryptionKey",
    "OkpPublicKey",
    "SigningKey",
    "b64url_decode",
    "b64url_encode",
    "kid_of",
    "public_jwk",
    "public_key_from_jwk",
    "thumbprint",
]

OkpPublicKey = Ed25519PublicKey | X25519PublicKey

_B64URL: Final = re.compile(rb"[A-Za-z0-9_-]*")

# RFC 7638 §3.2: the members that go into the thumbprint, per key type; all others are ignored.
_REQUIRED_MEMBERS: Final[Mapping[str, tuple[str, ...]]] = {
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),  # RFC 8037 §2
    "RSA": ("e", "kty", "n"),
    "oct": ("k", "kty"),
}
_OKP_CURVES: Final[Mapping[str, type[OkpPublicKey]]] = {
    "Ed25519": Ed25519PublicKey,
    "X25519": X25519PublicKey,
}


def b64url_encode(data: bytes) -> str:
    """Base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str | bytes) -> bytes:
    """Strict base64url without padding: anything outside the alphabet raises ValueError."""
    raw = text.encode("ascii", "replace") if isinstance(text, str) else text
    if _B64URL.fullmatch(raw) is None:
        raise ValueError("not base64url")
    if len(raw) % 4 == 1:
        raise ValueError("not base64url: impossible length")
    return base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))


def thumbprint(jwk: Mapping[str, object]) -> str:
    """The RFC 7638 SHA-256 thumbprint of a JWK, base64url-encoded: Cairn's key id."""
    kty = jwk.get("kty")
    if not isinstance(kty, str) or kty not in _REQUIRED_MEMBERS:
        raise ValueError(f"cannot take the thumbprint of a key of type {kty!r}")
    members = {}
    for name in _REQUIRED_MEMBERS[kty]:
        value = jwk.get(name)
        if not isinstance(value, str):
            raise ValueError(f"a {kty} JWK needs the string member {name!r}")
        members[name] = value
    # RFC 7638 §3.3: lexicographic member order, no whitespace, UTF-8.
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return b64url_encode(hashlib.sha256(canonical.encode("utf-8")).digest())


def public_jwk(key: OkpPublicKey) -> dict[str, str]:
    """The public JWK of an Ed25519 or X25519 key (RFC 8037), required members only."""
    if isinstance(key, Ed25519PublicKey):
        crv = "Ed25519"
    elif isinstance(key, X25519PublicKey):
        crv = "X25519"
    else:
        raise TypeError(f"not an Ed25519 or X25519 public key: {type(key).__name__}")
    raw = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return {"kty": "OKP", "crv": crv, "x": b64url_encode(raw)}


def public_key_from_jwk(jwk: Mapping[str, object]) -> OkpPublicKey:
    """The Ed25519 or X25519 public key a JWK describes; ValueError if it describes none."""
    crv = jwk.get("crv")
    x = jwk.get("x")
    if jwk.get("kty") != "OKP" or not isinstance(crv, str) or crv not in _OKP_CURVES:
        raise ValueError("only OKP keys on Ed25519 or X25519 are used in Cairn")
    if "d" in jwk:
        raise ValueError("a public JWK must not carry the private member 'd'")
    if not isinstance(x, str):
        raise ValueError("an OKP JWK needs the string member 'x'")
    raw = b64url_decode(x)
    if len(raw) != 32:
        raise ValueError(f"an {crv} public key is 32 bytes")
    return _OKP_CURVES[crv].from_public_bytes(raw)


def kid_of(key: OkpPublicKey) -> str:
    """The key id of a public key: the thumbprint of its JWK."""
    return thumbprint(public_jwk(key))


@dataclass(frozen=True, repr=False)
class SigningKey:
    """An Ed25519 private key and its kid: what a member signs with."""

    private_key: Ed25519PrivateKey
    kid: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kid", kid_of(self.private_key.public_key()))

    def __repr__(self) -> str:
        return f"SigningKey(kid={self.kid!r})"


@dataclass(frozen=True, repr=False)
class DecryptionKey:
    """An X25519 private key and its kid: what a recipient opens JWEs with."""

    private_key: X25519PrivateKey
    kid: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kid", kid_of(self.private_key.public_key()))

    def __repr__(self) -> str:
        return f"DecryptionKey(kid={self.kid!r})"
