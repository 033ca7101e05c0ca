"""The errors of key management: one verification error for every cryptographic refusal.

Every failure to verify a signature, open a ciphertext or trust a registry becomes one
``VerificationError`` carrying a short ``reason`` code, so callers quarantine on one class and
operators (and metrics) tell the causes apart by the code. Faults of the local key store (a
missing or wrong passphrase, a federation that already exists) are a different family: the
operator must fix something on this machine, and no message was judged.

    schemas.errors.CairnError
    └── InputError
        ├── schemas.errors.VerificationError
        │   └── VerificationError       a token or the registry failed a check; see ``reason``
        └── KeyStoreError               the local key store refused: nothing was changed
            ├── PassphraseError         no passphrase given, or it does not open the key files
            ├── FederationExists        ``init`` would overwrite an existing federation
            └── EnrolmentRefused        an enrolment, rotation or revocation request was
                                        refused: nothing was issued, written or published

Messages name keys by kid and members by id, never any message content.
"""

from __future__ import annotations

from enum import StrEnum

from schemas import errors as _shared

__all__ = [
    "EnrolmentRefused",
    "FederationExists",
    "KeyStoreError",
    "PassphraseError",
    "Reason",
    "VerificationError",
]


class Reason(StrEnum):
    """Why a token or a registry was refused: short, stable codes for logs and metrics."""

    MALFORMED = "malformed"  # not a compact JWS/JWE, or a header we cannot parse
    TOO_LARGE = "too_large"  # over the size limit; not parsed
    ALGORITHM = "algorithm"  # alg / enc other than the ones the federation uses
    WRONG_TYPE = "wrong_type"  # the typ header names another kind of message
    UNKNOWN_KEY = "unknown_key"  # the kid is not in the registry
    UNKNOWN_MEMBER = "unknown_member"  # a recipient the registry does not list
    WRONG_SIGNER = "wrong_signer"  # the key belongs to another member than the expected one
    WRONG_RECIPIENT = "wrong_recipient"  # the JWE was encrypted to a key that is not ours
    WRONG_USE = "wrong_use"  # an encryption key used to sign, or the reverse
    KEY_REVOKED = "key_revoked"
    KEY_RETIRED = "key_retired"  # retired and past the grace period
    KEY_NOT_YET_VALID = "key_not_yet_valid"
    KEY_EXPIRED = "key_expired"  # past the key's not_after
    NO_ACTIVE_KEY = "no_active_key"  # the recipient has no key we may encrypt to now
    BAD_SIGNATURE = "bad_signature"
    DECRYPTION_FAILED = "decryption_failed"
    UNSIGNED = "unsigned"  # a registry (or token) without a signature
    REGISTRY_INVALID = "registry_invalid"  # signed, but not a valid registry document
    REGISTRY_NOT_YET_VALID = "registry_not_yet_valid"
    REGISTRY_EXPIRED = "registry_expired"
    REGISTRY_ROLLBACK = "registry_rollback"  # older than a registry already seen
    NO_IAT = "no_iat"  # a referral without the signed time it was issued
    IAT_TOO_OLD = "iat_too_old"  # signed longer ago than the replay window allows
    IAT_IN_FUTURE = "iat_in_future"  # signed at a time beyond the clock-skew bound
    IAT_INVALID = "iat_invalid"  # an iat that is no whole number of seconds in plausible years


class VerificationError(_shared.VerificationError):
    """A token or the registry failed verification; ``reason`` says which check refused it.

    Subclasses the shared ``VerificationError``, so code that quarantines on that class
    catches this one too.
    """

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.args[0]} [{self.reason.value}]"


class KeyStoreError(_shared.InputError):
    """The local key store refused the operation; nothing was changed."""


class PassphraseError(KeyStoreError):
    """No passphrase was supplied, or it does not decrypt the private key files."""


class FederationExists(KeyStoreError):
    """``init`` found an existing federation and refused to overwrite it."""


class EnrolmentRefused(KeyStoreError):
    """An enrolment, rotation or revocation request was refused; nothing was changed."""
