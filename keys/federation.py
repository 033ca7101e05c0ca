"""Running the federation's keys over stores: create, rotate, revoke, refresh, and loading them.

``init_hub`` creates the federation's own keys (docs/architecture.md#security-envelope), each
in its own store (``keys.custody``): the root signing key, the TLS CA, the pseudonym secret, the
broker's signing key and server certificate, the auditor's signing key and certificates, and
registry serial 1 in the public store; agencies then join by enrolment (``keys.enrolment``).
``init_federation`` is the all-in-one store of tests and benchmarks: every member's keys in one
store under one passphrase, made by the hub itself, no custody at all. ``Admin`` is what signs
the registry (the root store) and where it is published; ``rotate`` gives a member new keys and
retires the old ones; ``revoke_key`` withdraws one key at once; ``refresh_registry`` re-signs an
unchanged registry with a new expiry. Each re-signs the registry with the next serial, and each
writes the registry last, so an interrupted run leaves the previous registry in force.

The loaders are what the broker and the agency adapters call at start-up: the verified registry,
a member's active signing key, and the decryption keys a recipient may still use.

The clock is an argument (``now``), as everywhere in ``keys``; only the CLI reads the time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from pydantic import ValidationError

from keys import custody
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
    log_vkey,
    parse_cosigner_vkey,
    sign_registry,
    verify_registry,
    verify_registry_signature,
)
from keys.store import Store, encrypt_private_key
from schemas.errors import UnknownAgency
from schemas.federation import AgencyRole, Federation

__all__ = [
    "Admin",
    "Lifetimes",
    "admit_witness",
    "init_federation",
    "init_hub",
    "load_decryption_keys",
    "load_registry",
    "load_signing_key",
    "new_member_key",
    "read_root_key",
    "refresh",
    "refresh_registry",
    "revoke",
    "revoke_key",
    "rotate",
    "rotated_member",
    "witness_member",
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


def new_member_key(
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
    # The auditor's checkpoint key is listed as its signed-note verifier key too (C2SP): the
    # form a tiles client or a witness is configured with (keys.registry.log_vkey).
    vkey = (
        log_vkey(public)
        if member_id == AUDITOR_ID and isinstance(public, Ed25519PublicKey)
        else None
    )
    return RegisteredKey(
        kid=kid,
        use=use,
        jwk=PublicJwk.of(public),
        not_before=now,
        not_after=now + life.key,
        status=KeyStatus.ACTIVE,
        vkey=vkey,
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
    """Create a whole federation in one empty store, every member's keys under one passphrase:
    for tests and benchmarks only (``cairn keys init`` goes through enrolment instead)."""
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
            keys=tuple(
                new_member_key(store, member_id, u, passphrase, now, life) for u in _uses(role)
            ),
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


def init_hub(
    stores: Mapping[str, tuple[Store, bytes]],
    public: Store,
    federation_name: str,
    *,
    now: datetime,
    lifetimes: Lifetimes | None = None,
    witnesses: tuple[Member, ...] = (),
) -> Registry:
    """Create the federation's own keys in separate stores, and registry serial 1 in ``public``.

    ``witnesses`` (``witness_member``) are listed from serial 1 too: the witnesses that cosign
    the auditor's checkpoints, whose private keys are on their own machines.

    ``stores`` maps each of the custody stores root, ca, pseudonym, broker and auditor
    (``keys.custody``) to the store and its passphrase; each must be empty, and so must the
    public store. The first registry lists the broker and the auditor only: agencies join by
    enrolment (``keys.enrolment``), never by the administrator making their keys.
    """
    _aware(now)
    life = lifetimes or Lifetimes()
    names = (custody.ROOT, custody.CA, custody.PSEUDONYM, custody.BROKER, custody.AUDITOR)
    missing = [n for n in names if n not in stores]
    if missing:
        raise KeyStoreError(f"no store given for {', '.join(missing)}")
    for name, (store, passphrase) in stores.items():
        if not store.is_empty():
            raise FederationExists(
                f"{store} (the {name} store) already holds keys; it is never overwritten. Move "
                "it away to start again"
            )
        layout.check_new_passphrase(passphrase)
    if not public.is_empty():
        raise FederationExists(f"{public} (the public store) already holds a federation")

    ca_store, ca_pass = stores[custody.CA]
    ca = issue_ca(federation_name, now=now, validity=life.ca)
    ca_store.write(layout.CA_CERT, ca.certificate_pem(), private=False)
    ca_store.write(layout.CA_KEY, encrypt_private_key(ca.key, ca_pass), private=True)

    broker_store, broker_pass = stores[custody.BROKER]
    server = issue_server_certificate(ca, federation_name, now=now, validity=life.certificate)
    broker_store.write(layout.SERVER_CERT, server.certificate_pem(), private=False)
    broker_store.write(
        layout.SERVER_KEY, encrypt_private_key(server.key, broker_pass), private=True
    )
    auditor_store, auditor_pass = stores[custody.AUDITOR]
    # The auditor's API has a server certificate of its own: it never holds the broker's key.
    audit_server = issue_server_certificate(
        ca, federation_name, now=now, validity=life.certificate, common_name=AUDITOR_ID
    )
    auditor_store.write(layout.SERVER_CERT, audit_server.certificate_pem(), private=False)
    auditor_store.write(
        layout.SERVER_KEY, encrypt_private_key(audit_server.key, auditor_pass), private=True
    )
    client = issue_client_certificate(
        ca,
        AUDITOR_ID,
        ServiceRole.AUDITOR.value,
        federation_name,
        now=now,
        validity=life.certificate,
    )
    auditor_store.write(layout.client_cert(AUDITOR_ID), client.certificate_pem(), private=False)
    auditor_store.write(
        layout.client_key(AUDITOR_ID), encrypt_private_key(client.key, auditor_pass), private=True
    )
    pseudonym_store, pseudonym_pass = stores[custody.PSEUDONYM]
    pseudonym_store.write(
        layout.PSEUDONYM_KEY,
        encrypt_private_key(Ed25519PrivateKey.generate(), pseudonym_pass),
        private=True,
    )
    members = (
        Member(
            id=BROKER_ID,
            name=_BROKER_NAME,
            role=ServiceRole.BROKER,
            keys=(new_member_key(broker_store, BROKER_ID, KeyUse.SIGNING, broker_pass, now, life),),
        ),
        Member(
            id=AUDITOR_ID,
            name=_AUDITOR_NAME,
            role=ServiceRole.AUDITOR,
            keys=(
                new_member_key(auditor_store, AUDITOR_ID, KeyUse.SIGNING, auditor_pass, now, life),
            ),
        ),
    )

    root_store, root_pass = stores[custody.ROOT]
    root = SigningKey(Ed25519PrivateKey.generate())
    root_store.write(
        layout.ROOT_KEY, encrypt_private_key(root.private_key, root_pass), private=True
    )
    anchor = _jwk_bytes(root.private_key.public_key())
    root_store.write(layout.ROOT_PUBLIC, anchor, private=False)
    public.write(layout.CA_CERT, ca.certificate_pem(), private=False)
    public.write(layout.ROOT_PUBLIC, anchor, private=False)
    registry = Registry(
        federation=federation_name,
        serial=1,
        issued_at=now,
        expires_at=now + life.registry,
        retired_grace_s=int(life.retired_grace.total_seconds()),
        members=(*members, *witnesses),
    )
    public.write(layout.REGISTRY, sign_registry(registry, root), private=False)
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


@dataclass(frozen=True, repr=False)
class Admin:
    """What the federation administrator signs with: the root key's store and passphrase, and
    the public store the registry is published to (the same store in an all-in-one store)."""

    root: Store
    root_passphrase: bytes
    public: Store

    @classmethod
    def single(cls, store: Store, passphrase: bytes) -> Admin:
        return cls(store, passphrase, store)

    def __repr__(self) -> str:
        return f"Admin(root={self.root}, public={self.public})"

    def open(self) -> tuple[SigningKey, Registry]:
        """The root signing key and the current registry, which may be stale: we re-sign it."""
        root = layout.load_signing_key(
            self.root.read(layout.ROOT_KEY), self.root_passphrase, name=layout.ROOT_KEY
        )
        anchor = read_root_key(self.public)
        if kid_of(anchor) != root.kid:
            raise KeyStoreError(
                f"{layout.ROOT_KEY} and the published {layout.ROOT_PUBLIC} are not the same key "
                "pair; the stores have been tampered with or mixed up"
            )
        registry = verify_registry_signature(self.public.read(layout.REGISTRY), anchor)
        return root, registry

    def publish(
        self,
        root: SigningKey,
        registry: Registry,
        members: tuple[Member, ...],
        now: datetime,
        life: Lifetimes,
        *,
        files: tuple[tuple[str, bytes], ...] = (),
    ) -> Registry:
        """Sign ``members`` as the next serial of ``registry`` and publish it, after the public
        ``files`` (name, bytes) that go with it.

        Refused if another run published a registry since this one opened ``registry``: its
        change would be lost (two enrolments at once, say), so this one must run again.
        """
        current = self.public.read(layout.REGISTRY)
        published = verify_registry_signature(current, root.private_key.public_key())
        if published.serial != registry.serial:
            raise KeyStoreError(
                f"the registry changed while this ran (serial {registry.serial}, now "
                f"{published.serial}); nothing was published: run the command again"
            )
        for name, data in files:
            self.public.write(name, data, private=False)
        updated = Registry(
            federation=registry.federation,
            serial=registry.serial + 1,
            issued_at=now,
            expires_at=now + life.registry,
            retired_grace_s=registry.retired_grace_s,
            members=members,
        )
        self.public.write(layout.REGISTRY, sign_registry(updated, root), private=False)
        return updated


def rotated_member(member: Member, fresh: tuple[RegisteredKey, ...], now: datetime) -> Member:
    """``member`` with its active keys retired at ``now`` and ``fresh`` as its new keys."""
    if member.role is ServiceRole.WITNESS and any(k.vkey is None for k in fresh):
        raise KeyStoreError(
            f"{member.id} is a witness: it makes its own new key ('cairn witness keygen') and "
            "the administrator lists it (keys.federation.admit_witness)"
        )
    retired = tuple(
        _changed(k, status=KeyStatus.RETIRED, retired_at=now) if k.status is KeyStatus.ACTIVE else k
        for k in member.keys
    )
    return Member(id=member.id, name=member.name, role=member.role, keys=retired + fresh)


def revoke_key(
    admin: Admin,
    member_id: str,
    kid: str,
    *,
    now: datetime,
    lifetimes: Lifetimes | None = None,
) -> Registry:
    """Revoke ``member_id``'s key ``kid`` and publish the next registry serial."""
    _aware(now)
    life = lifetimes or Lifetimes()
    root, registry = admin.open()
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
    return admin.publish(root, registry, members, now, life)


def witness_member(
    member_id: str, name: str, vkey: str, *, now: datetime, lifetimes: Lifetimes | None = None
) -> Member:
    """The registry entry of witness ``member_id`` with the key of its cosignature/v1
    verifier key ``vkey`` (KeyStoreError if ``vkey`` is not one)."""
    life = lifetimes or Lifetimes()
    try:
        _cosigner, public = parse_cosigner_vkey(vkey)
    except ValueError as exc:
        raise KeyStoreError(f"not a witness verifier key: {exc}") from None
    key = RegisteredKey(
        kid=kid_of(public),
        use=KeyUse.SIGNING,
        jwk=PublicJwk.of(public),
        not_before=now,
        not_after=now + life.key,
        status=KeyStatus.ACTIVE,
        vkey=vkey,
    )
    return Member(id=member_id, name=name, role=ServiceRole.WITNESS, keys=(key,))


def admit_witness(
    admin: Admin,
    member_id: str,
    name: str,
    vkey: str,
    *,
    now: datetime,
    lifetimes: Lifetimes | None = None,
) -> Registry:
    """List witness ``member_id`` (display ``name``) with the key of its cosignature/v1
    verifier key ``vkey`` (as ``cairn witness vkey`` prints it; the witness keeps its private
    key on its own machine) and publish the next registry serial. A witness already listed
    gets the new key, its previous active one retired (honoured for the grace period)."""
    _aware(now)
    life = lifetimes or Lifetimes()
    (entry,) = witness_member(member_id, name, vkey, now=now, lifetimes=life).keys
    root, registry = admin.open()
    if registry.owner_of(entry.kid) is not None:
        raise KeyStoreError(f"key {entry.kid} is in the registry already")
    current = registry.member(member_id)
    if current is None:
        member = Member(id=member_id, name=name, role=ServiceRole.WITNESS, keys=(entry,))
        members = (*registry.members, member)
    else:
        if current.role is not ServiceRole.WITNESS:
            raise KeyStoreError(f"{member_id} is a member of the federation but not a witness")
        old = tuple(
            _changed(k, status=KeyStatus.RETIRED, retired_at=now)
            if k.status is KeyStatus.ACTIVE
            else k
            for k in current.keys
        )
        member = Member(id=member_id, name=name, role=ServiceRole.WITNESS, keys=(*old, entry))
        members = tuple(member if m.id == member_id else m for m in registry.members)
    return admin.publish(root, registry, members, now, life)


def refresh_registry(
    admin: Admin, *, now: datetime, lifetimes: Lifetimes | None = None
) -> Registry:
    """Re-sign the published registry unchanged but for serial, issued_at and expires_at."""
    _aware(now)
    life = lifetimes or Lifetimes()
    root, registry = admin.open()
    return admin.publish(root, registry, registry.members, now, life)


def rotate(
    store: Store,
    member_id: str,
    passphrase: bytes,
    *,
    now: datetime,
    lifetimes: Lifetimes | None = None,
    admin: Admin | None = None,
) -> Registry:
    """New active keys for ``member_id`` in ``store``; its previously active keys are retired.

    ``admin`` signs the new registry; by default ``store`` is an all-in-one store holding the
    root key too, under the same passphrase.
    """
    _aware(now)
    life = lifetimes or Lifetimes()
    admin = admin or Admin.single(store, passphrase)
    root, registry = admin.open()
    member = _member(registry, member_id)
    fresh = tuple(
        new_member_key(store, member_id, u, passphrase, now, life) for u in _uses(member.role)
    )
    rotated = rotated_member(member, fresh, now)
    members = tuple(rotated if m.id == member_id else m for m in registry.members)
    return admin.publish(root, registry, members, now, life)


def revoke(
    store: Store,
    member_id: str,
    kid: str,
    passphrase: bytes,
    *,
    now: datetime,
    lifetimes: Lifetimes | None = None,
) -> Registry:
    """Revoke ``member_id``'s key ``kid`` in an all-in-one store (see ``revoke_key``)."""
    return revoke_key(Admin.single(store, passphrase), member_id, kid, now=now, lifetimes=lifetimes)


def refresh(
    store: Store, passphrase: bytes, *, now: datetime, lifetimes: Lifetimes | None = None
) -> Registry:
    """Re-sign an all-in-one store's registry (see ``refresh_registry``)."""
    return refresh_registry(Admin.single(store, passphrase), now=now, lifetimes=lifetimes)
