"""The federation's pseudonym secret: the HMAC key audit events name their subjects with.

Kept in the key store with the same protection at rest as every private key, because anyone
holding it can test guesses against the pseudonyms in the audit log.
"""

from __future__ import annotations

from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from keys import store as keys_store
from keys.errors import KeyStoreError
from keys.store import Store, decrypt_private_key, encrypt_private_key

__all__ = ["PSEUDONYM_KEY", "create_pseudonym_secret", "load_pseudonym_secret"]

#: Where the federation's pseudonym secret lives in the key store (see ``load_pseudonym_secret``).
PSEUDONYM_KEY: Final = keys_store.PSEUDONYM_KEY


def create_pseudonym_secret(store: Store, passphrase: bytes) -> None:
    """Create the federation's pseudonym secret in the key store (once, at ``keys init``).

    The secret is 32 random bytes, kept as the seed of an Ed25519 private key in encrypted
    PKCS#8 so it has the same protection at rest as every other private key (anyone holding it
    can test guesses: an NHS number is one of a billion). It is never used to sign.
    """
    if store.exists(PSEUDONYM_KEY):
        raise KeyStoreError(
            f"{PSEUDONYM_KEY} already exists; replacing it would make every pseudonym in the "
            "audit log unsearchable"
        )
    store.write(
        PSEUDONYM_KEY, encrypt_private_key(Ed25519PrivateKey.generate(), passphrase), private=True
    )


def load_pseudonym_secret(store: Store, passphrase: bytes) -> bytes:
    """The 32-byte pseudonym secret (HMAC key) from the key store."""
    key = decrypt_private_key(store.read(PSEUDONYM_KEY), passphrase, name=PSEUDONYM_KEY)
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyStoreError(f"{PSEUDONYM_KEY} is not a pseudonym secret")
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
