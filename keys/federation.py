"""Running the federation's keys over a store: init, rotate, revoke, refresh, and loading them.

``init_federation`` creates everything a development federation needs
(docs/architecture.md#security-envelope): the root signing key, the TLS CA, for each agency a
signing key, an encryption key and a client certificate, the broker's server certificate and signing
key, the auditor's signing key, and the root-signed registry. ``rotate`` gives a member new keys and
retires the old ones; ``revoke`` withdraws one key at once; ``refresh`` re-signs an unchanged
registry with a new expiry. Each re-signs the registry with the next serial, and each writes the
registry last, so an interrupted run leaves the previous registry in force.

The loaders are what the broker and the agency adapters call at start-up: the verified registry,
a member's active signing key, and the decryption keys a recipient may still use.

The clock is an argument (``now``), as everywhere in ``keys``; only the CLI reads the time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from pydantic import ValidationError

from keys import store as layout
from keys.errors import FederationExists, KeyStoreError, Reason, VerificationError
from keys.jwk import DecryptionKey, SigningKey, kid_of, public_key_from_jwk
from keys.pki import issue_ca, issue_client_certificate, issue_server_certificate
from keys.registry import (
    AUDITOR_ID,
    BROKER_ID,
    KeyStatus,
    KeyUse,
    Member,
    PublicJwk,
    RegisteredKey,
    Registry,
    ServiceRole,
    sign_registry,
    verify_registry,
    verify_registry_signature,
)
from keys.store import Store, encrypt_private_key
from schemas.errors import UnknownAgency
from schemas.federation import AgencyRole, Federation

__all__ = [
    "Lifetimes",
    "init_federation",
    "load_decryption_keys",
    "load_registry",
    "load_signing_key",
    "read_root_key",
    "refresh",
    "revoke",
    "rotate",
]

_BROKER_NAME: Final = "Cairn broker"
_AUDITOR_NAME: Final = "Cairn auditor"


@dataclass(frozen=True)
class Lifetimes:
    """How long each kind of key, certificate and registry is valid."""

    key: timedelta = timedelta(days=365)  # a signing or encryption key's not_after - not_before
    registry: timedelta = timedelta(days=30)  # issued_at to expires_at; 'refresh' renews it
    retired_grace: timedelta = timedelta(days=7)  # a retired key still verifies / opens
    ca: timedelta = timedelta(days=5 * 365)
    certificate: timedelta = timedelta(days=365)  # TLS client and server certificates


def _uses(role: AgencyRole | ServiceRole) -> tuple[KeyUse, ...]:
    # Agencies receive disclosures, so they need an encryption key; the broker and the auditor
    # only sign.
    if isinstance(role, ServiceRole):
        return (KeyUse.SIGNING,)
    return (KeyUse.SIGNING, KeyUse.ENCRYPTION)


def _changed(key: RegisteredKey, **changes: object) -> RegisteredKey:
    # model_copy(update=...) skips validation; a registry entry must always be validated.
    return RegisteredKey.model_validate({**key.model_dump(), **changes})


def _new_key(
    store: Store, member_id: str, use: KeyUse, passphrase: bytes, now: datetime, life: Lifetimes
) -> RegisteredKey:
    """Generate one key, store its private half encrypted, return its registry entry."""
    private: Ed25519PrivateKey | X25519PrivateKey = (
        Ed25519PrivateKey.generate() if use is KeyUse.SIGNING else X25519PrivateKey.generate()
    )
    public = private.public_key()
    kid = kid_of(public)
    store.write(
        layout.member_key(member_id, kid),
        encrypt_private_key(private, passphrase),
        private=True,
    )
    return RegisteredKey(
        kid=kid,
        use=use,
        jwk=PublicJwk.of(public),
        not_before=now,
        not_after=now + life.key,
        status=KeyStatus.ACTIVE,
    )


def _aware(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise TypeError("now must be timezone-aware")


def init_federation(
    store: Store,
    federation: Federation,
    passphrase: bytes,
    *,
    now: datetime,
    lifetimes: Lifetimes | None = None,
) -> Registry:
    """Create a federation's keys, PKI and signed registry in an empty store."""
    _aware(now)
    life = lifetimes or Lifetimes()
    if not store.is_empty():
        raise FederationExists(
            f"{store} already holds a federation (or part of one); it is never overwritten. "
            "Use 'cairn keys rotate' / 'revoke' to change it, or move it away to start again"
        )
    layout.check_new_passphrase(passphrase)
    if federation.get(BROKER_ID) or federation.get(AUDITOR_ID):
        raise KeyStoreError(f"agency ids {BROKER_ID} and {AUDITOR_ID} are reserved for services")

    # The PKI first: the CA, the broker's server certificate, a client certificate per agency.
    ca = issue_ca(federation.name, now=now, validity=life.ca)
    store.write(layout.CA_CERT, ca.certificate_pem(), private=False)
    store.write(layout.CA_KEY, encrypt_private_key(ca.key, passphrase), private=True)
    server = issue_server_certificate(ca, federation.name, now=now, validity=life.certificate)
    store.write(layout.SERVER_CERT, server.certificate_pem(), private=False)
    store.write(layout.SERVER_KEY, encrypt_private_key(server.key, passphrase), private=True)
    # The auditor's certificate is what IG officers' tools present to the audit API.
    tls_clients = [
        *((a.id, a.role.value) for a in federation.agencies),
        (AUDITOR_ID, ServiceRole.AUDITOR.value),
    ]
    for client_id, role in tls_clients:
        client = issue_client_certificate(
            ca, client_id, role, federation.name, now=now, validity=life.certificate
        )
        store.write(layout.client_cert(client_id), client.certificate_pem(), private=False)
        store.write(
            layout.client_key(client_id), encrypt_private_key(client.key, passphrase), private=True
        )

    # The federation's pseudonym secret (HMAC key for audit subjects), kept as the seed of an
    # Ed25519 key so that it is stored encrypted like every other private key. It is never
    # replaced: a new one would make every earlier audit entry unsearchable.
    store.write(
        layout.PSEUDONYM_KEY,
        encrypt_private_key(Ed25519PrivateKey.generate(), passphrase),
        private=True,
    )

    # Then every member's JOSE keys.
    identities: list[tuple[str, str, AgencyRole | ServiceRole]] = [
        *((a.id, a.name, a.role) for a in federation.agencies),
        (BROKER_ID, _BROKER_NAME, ServiceRole.BROKER),
        (AUDITOR_ID, _AUDITOR_NAME, ServiceRole.AUDITOR),
    ]
    members = tuple(
        Member(
            id=member_id,
            name=name,
            role=role,
            keys=tuple(_new_key(store, member_id, u, passphrase, now, life) for u in _uses(role)),
        )
        for member_id, name, role in identities
    )

    # The root key and the trust anchor, then the registry: its presence marks a complete init.
    root = SigningKey(Ed25519PrivateKey.generate())
    store.write(layout.ROOT_KEY, encrypt_private_key(root.private_key, passphrase), private=True)
    store.write(layout.ROOT_PUBLIC, _jwk_bytes(root.private_key.public_key()), private=False)
    registry = Registry(
        federation=federation.name,
        serial=1,
        issued_at=now,
        expires_at=now + life.registry,
        retired_grace_s=int(life.retired_grace.total_seconds()),
        members=members,
    )
    store.write(layout.REGISTRY, sign_registry(registry, root), private=False)
    return registry


def _jwk_bytes(key: Ed25519PublicKey) -> bytes:
    jwk = PublicJwk.of(key)
    return (jwk.model_dump_json() + "\n").encode("utf-8")


def read_root_key(store: Store, *, root_kid: str | None = None) -> Ed25519PublicKey:
    """The federation root public key (the trust anchor), checked against ``root_kid`` if given.

    In a real deployment the root kid is pinned in configuration, so that whoever can write
    the state folder cannot swap in a root of their own.
    """
    try:
        jwk = PublicJwk.model_validate_json(store.read(layout.ROOT_PUBLIC))
        key = public_key_from_jwk(jwk.model_dump())
    except (ValidationError, ValueError):
        raise KeyStoreError(f"{layout.ROOT_PUBLIC} is not an Ed25519 public JWK") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyStoreError(f"{layout.ROOT_PUBLIC} is not an Ed25519 public JWK")
    if root_kid is not None and kid_of(key) != root_kid:
        raise VerificationError(
            Reason.WRONG_SIGNER,
            f"the root key in the store ({kid_of(key)}) is not the pinned root {root_kid}",
        )
    return key


def load_registry(
    store: Store, *, now: datetime, root_kid: str | None = None, min_serial: int = 0
) -> Registry:
    """The store's registry, verified against its root key and in force at ``now``."""
    root = read_root_key(store, root_kid=root_kid)
    return verify_registry(store.read(layout.REGISTRY), root, now=now, min_serial=min_serial)


def load_signing_key(
    store: Store, member_id: str, passphrase: bytes, registry: Registry, *, now: datetime
) -> SigningKey:
    """``member_id``'s active signing key, decrypted, if the registry lets it sign at ``now``."""
    member = _member(registry, member_id)
    active = member.active_key(KeyUse.SIGNING)
    if active is None:
        raise VerificationError(
            Reason.NO_ACTIVE_KEY,
            f"{member_id} has no active signing key; run 'cairn keys rotate --agency {member_id}'",
        )
    registry.check_key(member_id, active.kid, KeyUse.SIGNING, now=now)
    name = layout.member_key(member_id, active.kid)
    key = layout.load_signing_key(store.read(name), passphrase, name=name)
    if key.kid != active.kid:
        raise KeyStoreError(f"{name} does not hold the key its name says")
    return key


def load_decryption_keys(
    store: Store, member_id: str, passphrase: bytes, registry: Registry, *, now: datetime
) -> tuple[DecryptionKey, ...]:
    """Every decryption key ``member_id`` may still use at ``now``: active, or retired in grace."""
    member = _member(registry, member_id)
    keys = []
    for entry in member.keys:
        if entry.use is not KeyUse.ENCRYPTION:
            continue
        try:
            registry.check_key(member_id, entry.kid, KeyUse.ENCRYPTION, now=now)
        except VerificationError:
            continue  # revoked, expired or past grace: not worth decrypting from disk
        name = layout.member_key(member_id, entry.kid)
        key = layout.load_decryption_key(store.read(name), passphrase, name=name)
        if key.kid != entry.kid:
            raise KeyStoreError(f"{name} does not hold the key its name says")
        keys.append(key)
    return tuple(keys)


def _member(registry: Registry, member_id: str) -> Member:
    member = registry.member(member_id)
    if member is None:
        raise UnknownAgency(
            f"{member_id!r} is not a member of the federation registry "
            f"({', '.join(m.id for m in registry.members)})"
        )
    return member


def _open_for_update(store: Store, passphrase: bytes) -> tuple[SigningKey, Registry]:
    """The root signing key and the current registry, which may be stale: we re-sign it."""
    root = layout.load_signing_key(store.read(layout.ROOT_KEY), passphrase, name=layout.ROOT_KEY)
    anchor = read_root_key(store)
    if kid_of(anchor) != root.kid:
        raise KeyStoreError(
            f"{layout.ROOT_KEY} and {layout.ROOT_PUBLIC} are not the same key pair; the store "
            "has been tampered with or mixed up"
        )
    registry = verify_registry_signature(store.read(layout.REGISTRY), anchor)
    return root, registry


def _reissue(
    store: Store,
    root: SigningKey,
    registry: Registry,
    members: tuple[Member, ...],
    now: datetime,
    life: Lifetimes,
) -> Registry:
    updated = Registry(
        federation=registry.federation,
        serial=registry.serial + 1,
        issued_at=now,
        expires_at=now + life.registry,
        retired_grace_s=registry.retired_grace_s,
        members=members,
    )
    store.write(layout.REGISTRY, sign_registry(updated, root), private=False)
    return updated


def rotate(
    store: Store,
    member_id: str,
    passphrase: bytes,
    *,
    now: datetime,
    lifetimes: Lifetimes | None = None,
) -> Registry:
    """New active keys for ``member_id``; its previously active keys become retired."""
    _aware(now)
    life = lifetimes or Lifetimes()
    root, registry = _open_for_update(store, passphrase)
    member = _member(registry, member_id)
    retired = tuple(
        _changed(k, status=KeyStatus.RETIRED, retired_at=now) if k.status is KeyStatus.ACTIVE else k
        for k in member.keys
    )
    fresh = tuple(_new_key(store, member_id, u, passphrase, now, life) for u in _uses(member.role))
    rotated = Member(id=member.id, name=member.name, role=member.role, keys=retired + fresh)
    members = tuple(rotated if m.id == member_id else m for m in registry.members)
    return _reissue(store, root, registry, members, now, life)


def revoke(
    store: Store,
    member_id: str,
    kid: str,
    passphrase: bytes,
    *,
    now: datetime,
    lifetimes: Lifetimes | None = None,
) -> Registry:
    """Revoke ``member_id``'s key ``kid``: refused everywhere from the next registry load."""
    _aware(now)
    life = lifetimes or Lifetimes()
    root, registry = _open_for_update(store, passphrase)
    member = _member(registry, member_id)
    entry = next((k for k in member.keys if k.kid == kid), None)
    if entry is None:
        raise KeyStoreError(f"{member_id} has no key {kid}; 'cairn keys list' shows its keys")
    if entry.status is KeyStatus.REVOKED:
        raise KeyStoreError(f"key {kid} of {member_id} is already revoked")
    revoked = _changed(entry, status=KeyStatus.REVOKED, revoked_at=now)
    keys = tuple(revoked if k.kid == kid else k for k in member.keys)
    members = tuple(
        Member(id=m.id, name=m.name, role=m.role, keys=keys) if m.id == member_id else m
        for m in registry.members
    )
    return _reissue(store, root, registry, members, now, life)


def refresh(
    store: Store, passphrase: bytes, *, now: datetime, lifetimes: Lifetimes | None = None
) -> Registry:
    """Re-sign the registry unchanged but for serial, issued_at and expires_at."""
    _aware(now)
    life = lifetimes or Lifetimes()
    root, registry = _open_for_update(store, passphrase)
    return _reissue(store, root, registry, registry.members, now, life)
