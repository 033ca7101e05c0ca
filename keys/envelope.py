"""The security envelope: signing, sealing and opening messages against the registry.

The formats are those of docs/architecture.md#security-envelope.

A sender signs its referral as a compact JWS (Ed25519, ``typ`` ``cairn-referral+jws``). The broker
signs each disclosure with its own key (``typ`` ``cairn-disclosure+jws``) and encrypts that JWS
to the recipient's active X25519 key as a compact JWE (ECDH-ES+A256KW, A256GCM, ``cty`` JOSE).
A recipient opens the JWE with whichever of its private keys the header's kid names, then
verifies the inner JWS against the registry. A key is trusted only if the registry lists it for
the expected member and use, and at the check time it is active, or retired within the grace
period, and inside its validity window; a revoked key is never trusted.

Pure: bytes, keys, a verified ``Registry`` and a clock in; bytes out, or one
``VerificationError`` whose ``reason`` says what failed.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from keys.errors import Reason, VerificationError
from keys.jose import (
    DEFAULT_BOUNDS,
    MAX_TOKEN_BYTES,
    HeaderBounds,
    decrypt_compact,
    encrypt_compact,
    read_header,
    sign_compact,
    verify_compact,
)
from keys.jwk import DecryptionKey, SigningKey
from keys.registry import BROKER_ID, CLOCK_SKEW, KeyUse, Registry

__all__ = [
    "ACK_TYP",
    "DISCLOSURE_TYP",
    "REFERRAL_TYP",
    "decrypt_for",
    "encrypt_to",
    "open_disclosure",
    "seal_disclosure",
    "sign_ack",
    "sign_referral",
    "verify_ack",
    "verify_referral",
    "verify_signed",
]

REFERRAL_TYP: Final = "cairn-referral+jws"
DISCLOSURE_TYP: Final = "cairn-disclosure+jws"
ACK_TYP: Final = "cairn-ack+jws"  # a recipient's signed acknowledgement of one disclosure


def sign_referral(payload: bytes, key: SigningKey, *, issued_at: datetime | None = None) -> bytes:
    """The sender's referral as a compact JWS under its signing key.

    ``issued_at`` becomes the signed ``iat`` header the broker checks against its clock.
    """
    iat = None if issued_at is None else int(issued_at.timestamp())
    return sign_compact(payload, key, typ=REFERRAL_TYP, iat=iat)


def verify_signed(
    token: bytes | str,
    registry: Registry,
    *,
    signer: str,
    typ: str,
    now: datetime,
    max_bytes: int = MAX_TOKEN_BYTES,
    clock_skew: timedelta = CLOCK_SKEW,
    bounds: HeaderBounds = DEFAULT_BOUNDS,
) -> bytes:
    """The payload of a JWS of type ``typ`` that ``signer`` signed with a key trusted at ``now``."""

    def key_for(kid: str) -> Ed25519PublicKey:
        return registry.verification_key(signer, kid, now=now, clock_skew=clock_skew)

    return verify_compact(token, key_for, typ=typ, max_bytes=max_bytes, bounds=bounds)


def verify_referral(
    token: bytes | str,
    registry: Registry,
    *,
    sender: str,
    now: datetime,
    max_bytes: int = MAX_TOKEN_BYTES,
    clock_skew: timedelta = CLOCK_SKEW,
    max_age: timedelta | None = None,
    bounds: HeaderBounds = DEFAULT_BOUNDS,
) -> bytes:
    """The referral payload if ``sender`` signed it with a key the registry trusts at ``now``.

    ``sender`` is the agency the broker has already authenticated (its TLS client certificate);
    a referral signed by any other member's key is refused as ``wrong_signer``. With
    ``max_age``, the signed ``iat`` must exist and lie within ``[now - max_age, now +
    clock_skew]``: an old signed referral cannot be replayed later, nor a future one pre-made.
    """
    payload = verify_signed(
        token,
        registry,
        signer=sender,
        typ=REFERRAL_TYP,
        now=now,
        max_bytes=max_bytes,
        clock_skew=clock_skew,
        bounds=bounds,
    )
    if max_age is not None:
        # The header is covered by the signature just verified, so its iat can be trusted
        # (read_header has refused an iat outside the years a datetime can hold).
        iat = read_header(token, jwe_token=False, max_bytes=max_bytes, bounds=bounds).get("iat")
        if not isinstance(iat, int) or isinstance(iat, bool):
            raise VerificationError(Reason.NO_IAT, "the signed referral carries no iat header")
        issued = datetime.fromtimestamp(iat, tz=UTC)
        if issued < now - max_age:
            raise VerificationError(
                Reason.IAT_TOO_OLD,
                f"the referral was signed more than {int(max_age.total_seconds())} s ago; "
                "sign it again (and check the sender's clock)",
            )
        if issued > now + clock_skew:
            raise VerificationError(
                Reason.IAT_IN_FUTURE,
                "the referral is signed with a time in the future; check the sender's clock",
            )
    return payload


def encrypt_to(
    plaintext: bytes,
    registry: Registry,
    *,
    recipient: str,
    now: datetime,
    clock_skew: timedelta = CLOCK_SKEW,
) -> bytes:
    """A compact JWE of ``plaintext`` to ``recipient``'s active encryption key."""
    public_key = registry.encryption_key(recipient, now=now, clock_skew=clock_skew)
    return encrypt_compact(plaintext, public_key)


def decrypt_for(
    token: bytes | str,
    keys: Iterable[DecryptionKey],
    registry: Registry,
    *,
    recipient: str,
    now: datetime,
    max_bytes: int = MAX_TOKEN_BYTES,
    clock_skew: timedelta = CLOCK_SKEW,
) -> bytes:
    """The plaintext of a JWE to one of ``recipient``'s keys that the registry still honours."""
    own = {k.kid: k for k in keys}

    def key_for(kid: str) -> X25519PrivateKey:
        # We hold the private key for the kid (else the JWE was meant for someone else) ...
        key = own.get(kid)
        if key is None:
            raise VerificationError(
                Reason.WRONG_RECIPIENT,
                f"the JWE is encrypted to key {kid}, which {recipient} does not hold",
            )
        # ... and the registry still lets us use it (revoked or past grace: refuse).
        registry.check_key(recipient, kid, KeyUse.ENCRYPTION, now=now, clock_skew=clock_skew)
        return key.private_key

    return decrypt_compact(token, key_for, max_bytes=max_bytes)


def seal_disclosure(
    payload: bytes,
    broker_key: SigningKey,
    registry: Registry,
    *,
    recipient: str,
    now: datetime,
    clock_skew: timedelta = CLOCK_SKEW,
) -> bytes:
    """The disclosure signed by the broker then encrypted to ``recipient``: a compact JWE."""
    # Refuse to sign with a key recipients would refuse: better one error here than a
    # quarantined delivery at every recipient.
    registry.check_key(BROKER_ID, broker_key.kid, KeyUse.SIGNING, now=now, clock_skew=clock_skew)
    signed = sign_compact(payload, broker_key, typ=DISCLOSURE_TYP)
    return encrypt_to(signed, registry, recipient=recipient, now=now, clock_skew=clock_skew)


def open_disclosure(
    token: bytes | str,
    keys: Iterable[DecryptionKey],
    registry: Registry,
    *,
    recipient: str,
    now: datetime,
    signer: str = BROKER_ID,
    max_bytes: int = MAX_TOKEN_BYTES,
    clock_skew: timedelta = CLOCK_SKEW,
) -> bytes:
    """The disclosure payload if it decrypts for ``recipient`` and the broker's JWS verifies."""
    # 1. Decrypt with our key named by the JWE kid, if the registry still honours it.
    inner = decrypt_for(
        token,
        keys,
        registry,
        recipient=recipient,
        now=now,
        max_bytes=max_bytes,
        clock_skew=clock_skew,
    )
    # 2. Verify the inner JWS: a disclosure, signed by the broker with a key trusted now.
    return verify_signed(
        inner,
        registry,
        signer=signer,
        typ=DISCLOSURE_TYP,
        now=now,
        max_bytes=max_bytes,
        clock_skew=clock_skew,
    )


def sign_ack(payload: bytes, key: SigningKey, *, issued_at: datetime) -> bytes:
    """A recipient's acknowledgement as a compact JWS under its signing key."""
    return sign_compact(payload, key, typ=ACK_TYP, iat=int(issued_at.timestamp()))


def verify_ack(token: bytes | str, registry: Registry, *, signer: str, now: datetime) -> bytes:
    """The acknowledgement payload if ``signer`` signed it with a key trusted at ``now``."""
    return verify_signed(token, registry, signer=signer, typ=ACK_TYP, now=now)
