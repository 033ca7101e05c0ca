"""The registry is trusted only if the root key signed it, unaltered, and it is in force."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from pydantic import ValidationError

from keys.errors import Reason, VerificationError
from keys.federation import load_registry, read_root_key
from keys.jose import sign_compact
from keys.jwk import SigningKey, b64url_decode, b64url_encode, kid_of
from keys.registry import (
    AUDITOR_ID,
    BROKER_ID,
    REGISTRY_TYP,
    KeyStatus,
    KeyUse,
    PublicJwk,
    RegisteredKey,
    ServiceRole,
    sign_registry,
    verify_registry,
)
from keys.store import REGISTRY, ROOT_KEY, load_signing_key
from tests.unit.keys.conftest import NOW, PASSPHRASE, Kelder


@pytest.fixture(scope="module")
def token(kelder: Kelder) -> bytes:
    return kelder.store.read(REGISTRY)


@pytest.fixture(scope="module")
def root(kelder: Kelder) -> SigningKey:
    return load_signing_key(kelder.store.read(ROOT_KEY), PASSPHRASE, name=ROOT_KEY)


def _refused(
    token: bytes | str, kelder: Kelder, *, now: datetime = NOW, min_serial: int = 0
) -> Reason:
    with pytest.raises(VerificationError) as caught:
        verify_registry(token, read_root_key(kelder.store), now=now, min_serial=min_serial)
    return caught.value.reason


def test_the_signed_registry_verifies(kelder: Kelder) -> None:
    """The registry init wrote verifies against the root key and equals what init returned."""
    assert load_registry(kelder.store, now=NOW) == kelder.registry


def test_the_registry_lists_every_member_role_and_key(kelder: Kelder) -> None:
    """Each agency has a signing and an encryption key; the broker and auditor a signing key."""
    registry = kelder.registry
    assert registry.serial == 1
    assert registry.expires_at > registry.issued_at == NOW
    for member in registry.members:
        uses = sorted(k.use.value for k in member.keys)
        if isinstance(member.role, ServiceRole):
            assert uses == ["sig"]
        else:
            assert uses == ["enc", "sig"]
        assert all(k.status is KeyStatus.ACTIVE for k in member.keys)
    assert [m.id for m in registry.members][-2:] == [BROKER_ID, AUDITOR_ID]
    police = registry.member("kelder-police")
    assert police is not None
    assert police.role.value == "police"


def test_a_tampered_registry_is_refused(kelder: Kelder, token: bytes) -> None:
    """Changing any byte of the signed document (here: a key's status) breaks the signature."""
    header, payload, signature = token.split(b".")
    document = json.loads(b64url_decode(payload))
    document["members"][0]["keys"][0]["status"] = "revoked"
    document["members"][0]["keys"][0]["revoked_at"] = NOW.isoformat()
    forged = b".".join([header, b64url_encode(json.dumps(document).encode()).encode(), signature])
    assert _refused(forged, kelder) is Reason.BAD_SIGNATURE


def test_a_flipped_signature_bit_is_refused(kelder: Kelder, token: bytes) -> None:
    """A registry whose signature was altered is refused."""
    header, payload, signature = token.split(b".")
    raw = bytearray(b64url_decode(signature))
    raw[0] ^= 1
    forged = b".".join([header, payload, b64url_encode(bytes(raw)).encode()])
    assert _refused(forged, kelder) is Reason.BAD_SIGNATURE


def test_an_unsigned_registry_is_refused(kelder: Kelder, token: bytes) -> None:
    """Bare JSON, an alg 'none' JWS and a JWS with its signature cut off are all refused."""
    payload = token.split(b".")[1]
    assert _refused(b64url_decode(payload), kelder) is Reason.UNSIGNED
    none_header = b64url_encode(
        json.dumps({"alg": "none", "kid": "x", "typ": REGISTRY_TYP}).encode()
    ).encode()
    assert _refused(none_header + b"." + payload + b".", kelder) is Reason.UNSIGNED
    assert _refused(token.rsplit(b".", 1)[0] + b".", kelder) is Reason.UNSIGNED


def test_a_registry_signed_by_another_key_is_refused(kelder: Kelder) -> None:
    """A valid registry signed by a key that is not the federation root is refused."""
    impostor = SigningKey(Ed25519PrivateKey.generate())
    assert _refused(sign_registry(kelder.registry, impostor), kelder) is Reason.WRONG_SIGNER


def test_an_expired_registry_is_refused(kelder: Kelder, token: bytes) -> None:
    """After expires_at the registry is refused, and the message says who must re-sign it."""
    later = kelder.registry.expires_at + timedelta(seconds=1)
    with pytest.raises(VerificationError, match="cairn keys refresh") as caught:
        verify_registry(token, read_root_key(kelder.store), now=later)
    assert caught.value.reason is Reason.REGISTRY_EXPIRED


def test_a_registry_from_the_future_is_refused(kelder: Kelder, token: bytes) -> None:
    """A registry issued beyond the clock-skew bound after now is refused; within it, accepted."""
    assert _refused(token, kelder, now=NOW - timedelta(hours=1)) is Reason.REGISTRY_NOT_YET_VALID
    verify_registry(token, read_root_key(kelder.store), now=NOW - timedelta(minutes=4))


def test_an_older_registry_is_refused_after_a_newer_one(kelder: Kelder, token: bytes) -> None:
    """With min_serial set to a serial already seen, an older registry is a rollback."""
    assert _refused(token, kelder, min_serial=2) is Reason.REGISTRY_ROLLBACK


def test_a_root_signed_non_registry_is_refused(kelder: Kelder, root: SigningKey) -> None:
    """A document the root signed that is not a valid registry is still refused."""
    token = sign_compact(b'{"members": []}', root, typ=REGISTRY_TYP)
    assert _refused(token, kelder) is Reason.REGISTRY_INVALID


def test_another_kind_of_root_signed_token_is_refused(kelder: Kelder, root: SigningKey) -> None:
    """A root-signed token of another typ cannot pass as the registry."""
    token = sign_compact(kelder.registry.model_dump_json().encode(), root, typ="other+jws")
    assert _refused(token, kelder) is Reason.WRONG_TYPE


def test_a_pinned_root_kid_must_match(kelder: Kelder) -> None:
    """If the configuration pins the root kid, a store with another root key is refused."""
    other = kid_of(Ed25519PrivateKey.generate().public_key())
    with pytest.raises(VerificationError) as caught:
        load_registry(kelder.store, now=NOW, root_kid=other)
    assert caught.value.reason is Reason.WRONG_SIGNER
    root_kid = kid_of(read_root_key(kelder.store))
    assert load_registry(kelder.store, now=NOW, root_kid=root_kid).serial == 1


def test_a_registry_entry_kid_must_be_the_thumbprint() -> None:
    """The model refuses a key whose kid is not its RFC 7638 thumbprint, or the wrong curve."""
    jwk = PublicJwk.of(Ed25519PrivateKey.generate().public_key())
    fields = {
        "use": KeyUse.SIGNING,
        "jwk": jwk,
        "not_before": NOW,
        "not_after": NOW + timedelta(days=1),
        "status": KeyStatus.ACTIVE,
    }
    RegisteredKey(kid=kid_of(jwk.public_key()), **fields)
    with pytest.raises(ValidationError, match="thumbprint"):
        RegisteredKey(kid="A" * 43, **fields)
    x25519 = PublicJwk.of(X25519PrivateKey.generate().public_key())
    with pytest.raises(ValidationError, match="Ed25519"):
        RegisteredKey(
            kid=kid_of(x25519.public_key()),
            **{**fields, "jwk": x25519},
        )


def test_the_check_time_must_be_timezone_aware(kelder: Kelder, token: bytes) -> None:
    """A naive datetime is a programming mistake: TypeError, not a verification result."""
    with pytest.raises(TypeError, match="timezone-aware"):
        verify_registry(token, read_root_key(kelder.store), now=datetime(2026, 1, 1))
