"""Key management for Cairn: the federation's keys, its signed registry, and the JOSE envelope.

What the broker and the agency adapters call (docs/architecture.md#security-envelope):

- ``load_registry`` — the root-signed registry from the store, verified and in force now;
- ``load_signing_key`` / ``load_decryption_keys`` — a member's private keys, decrypted;
- ``sign_referral`` / ``verify_referral`` — the sender's JWS over a referral;
- ``seal_disclosure`` / ``open_disclosure`` — the broker's JWS inside a JWE to the recipient;
- ``server_context`` / ``client_context`` / ``peer_agency`` — mutual TLS from the federation PKI.

Every party holds its own keys in a store of its own (``keys.custody``); agencies join by
enrolment (``keys.enrolment``: ``cairn agency`` on the agency's machine, ``cairn federation`` on
the administrator's), and ``cairn keys`` runs the development federation on one machine
(``keys.cli``). Every cryptographic refusal is one ``VerificationError`` with a ``reason``.
"""

from __future__ import annotations

from keys.envelope import (
    ACK_TYP,
    DISCLOSURE_TYP,
    REFERRAL_TYP,
    decrypt_for,
    encrypt_to,
    open_disclosure,
    seal_disclosure,
    sign_ack,
    sign_referral,
    verify_ack,
    verify_referral,
    verify_signed,
)
from keys.errors import (
    FederationExists,
    KeyStoreError,
    PassphraseError,
    Reason,
    VerificationError,
)
from keys.federation import (
    Lifetimes,
    init_federation,
    load_decryption_keys,
    load_registry,
    load_signing_key,
    read_root_key,
    refresh,
    revoke,
    rotate,
)
from keys.jwk import DecryptionKey, SigningKey, kid_of, public_jwk, thumbprint
from keys.registry import (
    AUDITOR_ID,
    BROKER_ID,
    CLOCK_SKEW,
    KeyStatus,
    KeyUse,
    Member,
    RegisteredKey,
    Registry,
    ServiceRole,
    verify_registry,
)
from keys.store import FileStore, MemoryStore, Store, passphrase_from_env
from keys.tls import client_context, peer_agency, server_context

__all__ = [
    "ACK_TYP",
    "AUDITOR_ID",
    "BROKER_ID",
    "CLOCK_SKEW",
    "DISCLOSURE_TYP",
    "REFERRAL_TYP",
    "DecryptionKey",
    "FederationExists",
    "FileStore",
    "KeyStatus",
    "KeyStoreError",
    "KeyUse",
    "Lifetimes",
    "Member",
    "MemoryStore",
    "PassphraseError",
    "Reason",
    "RegisteredKey",
    "Registry",
    "ServiceRole",
    "SigningKey",
    "Store",
    "VerificationError",
    "client_context",
    "decrypt_for",
    "encrypt_to",
    "init_federation",
    "kid_of",
    "load_decryption_keys",
    "load_registry",
    "load_signing_key",
    "open_disclosure",
    "passphrase_from_env",
    "peer_agency",
    "public_jwk",
    "read_root_key",
    "refresh",
    "revoke",
    "rotate",
    "seal_disclosure",
    "server_context",
    "sign_ack",
    "sign_referral",
    "thumbprint",
    "verify_ack",
    "verify_referral",
    "verify_registry",
    "verify_signed",
]
