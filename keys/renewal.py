"""Renewing what is about to expire, without downtime: the CA, TLS certificates, the registry.

``renew`` is what ``cairn keys refresh`` runs. Within ``within`` of expiry (the setting
``credential_warn_days``) it re-issues, in this order, each step written atomically:

1. the CA certificate: the same key and name, a new validity. Every certificate the old one
   issued still chains to it (same issuer name, same key identifier), so nothing issued before
   has to change at once, and a peer that still holds the old CA file keeps verifying;
2. each TLS certificate in the store (the server's, the members'): the same public key,
   subject and extensions, a new serial and validity (never beyond the CA's). Only the CA key
   signs; no member's private key is read or needed, so this is also how the federation
   re-certifies an enrolled agency's key it never held;
3. the registry, re-signed with a new expiry as ``keys.federation.refresh`` does (always, as
   ``cairn keys refresh`` always did).

A running broker or auditor picks all of it up by itself (``broker.ops.credentials``): the
registry on its next request, the server certificate for new connections from its next look.
An active signing or encryption key near its ``not_after`` is not renewed here: new keys mean a
rotation (``cairn keys rotate --agency ID``), so ``Renewal.to_rotate`` lists them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from keys.errors import KeyStoreError
from keys.expiry import (
    FEDERATION,
    Credential,
    CredentialKind,
    certificate_credential,
    certificate_files,
    expiring,
    registry_credentials,
)
from keys.federation import Lifetimes, refresh
from keys.registry import Registry
from keys.store import CA_CERT, CA_KEY, SERVER_CERT, Store, decrypt_private_key

__all__ = ["Renewal", "describe", "renew", "renew_certificates", "renew_federation"]

# As keys.pki: a certificate starts a little in the past for a peer whose clock is behind.
_BACKDATE: Final = timedelta(minutes=5)
_KEY_KINDS: Final = (CredentialKind.SIGNING_KEY, CredentialKind.ENCRYPTION_KEY)


@dataclass(frozen=True)
class Renewal:
    """What ``renew`` did: the credentials renewed (with their new expiry), the keys that need
    a rotation instead, and the registry now in force."""

    renewed: tuple[Credential, ...]
    to_rotate: tuple[Credential, ...]
    registry: Registry


def _reissued(
    old: x509.Certificate,
    issuer: x509.Name,
    signer: ec.EllipticCurvePrivateKey,
    *,
    not_before: datetime,
    not_after: datetime,
) -> x509.Certificate:
    """``old``'s subject, public key and extensions under a new serial and validity."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(old.subject)
        .issuer_name(issuer)
        .public_key(old.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    for extension in old.extensions:
        builder = builder.add_extension(extension.value, critical=extension.critical)
    return builder.sign(signer, hashes.SHA256())


def _certificate(store: Store, name: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(store.read(name))
    except ValueError:
        raise KeyStoreError(
            f"{name} in {store} is not a PEM certificate; restore it before renewing"
        ) from None


def renew_certificates(
    ca_store: Store,
    ca_passphrase: bytes,
    holders: Sequence[Store],
    *,
    now: datetime,
    within: timedelta,
    lifetimes: Lifetimes | None = None,
    publish_to: Sequence[Store] = (),
) -> list[Credential]:
    """Steps 1 and 2: the CA certificate in ``ca_store`` (also written to each of
    ``publish_to``, the published store of split custody) and every TLS certificate in each
    of ``holders`` that expire within ``within`` of ``now``. Returns what was renewed.

    Only certificates the federation CA issued are renewed: one from an agency's own CA
    (``trusted_ca`` in agencies.yaml) is that CA's to renew, and is left alone."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise TypeError("now must be timezone-aware")
    life = lifetimes or Lifetimes()
    renewed: list[Credential] = []
    ca = _certificate(ca_store, CA_CERT)
    ca_due = ca.not_valid_after_utc <= now + within
    due_leaves = [
        (holder, name, certificate)
        for holder in holders
        for name in certificate_files(holder)
        if name != CA_CERT
        for certificate in (_certificate(holder, name),)
        if certificate.not_valid_after_utc <= now + within and _issued_by(certificate, ca)
    ]
    if ca_due or due_leaves:
        ca_key = decrypt_private_key(ca_store.read(CA_KEY), ca_passphrase, name=CA_KEY)
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
            raise KeyStoreError(f"{CA_KEY} is not the federation CA's (ECDSA) key")
        if ca.public_key() != ca_key.public_key():
            raise KeyStoreError(
                f"{CA_KEY} and {CA_CERT} are not the same key pair; the store has been "
                "tampered with or mixed up"
            )
        # 1. The CA, first: a leaf never outlives it.
        if ca_due:
            ca = _reissued(
                ca, ca.subject, ca_key, not_before=now - _BACKDATE, not_after=now + life.ca
            )
            for target in (ca_store, *publish_to):
                target.write(CA_CERT, ca.public_bytes(Encoding.PEM), private=False)
            renewed.append(certificate_credential(CredentialKind.CA, ca))
        # 2. Each certificate due, for the key it already certifies.
        for holder, name, old in due_leaves:
            fresh = _reissued(
                old,
                ca.subject,
                ca_key,
                not_before=now - _BACKDATE,
                not_after=min(now + life.certificate, ca.not_valid_after_utc),
            )
            holder.write(name, fresh.public_bytes(Encoding.PEM), private=False)
            kind = CredentialKind.TLS_SERVER if name == SERVER_CERT else CredentialKind.MEMBER_TLS
            renewed.append(certificate_credential(kind, fresh))
    return renewed


def _issued_by(certificate: x509.Certificate, ca: x509.Certificate) -> bool:
    """Whether ``ca`` (the federation CA's key, under its name) signed ``certificate``."""
    try:
        certificate.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def renew(
    store: Store,
    passphrase: bytes,
    *,
    now: datetime,
    within: timedelta,
    lifetimes: Lifetimes | None = None,
) -> Renewal:
    """Renew what expires within ``within`` of ``now`` in an all-in-one store (every key
    under one passphrase, as ``keys.federation.init_federation`` makes), then re-sign the
    registry; see the module docstring."""
    life = lifetimes or Lifetimes()
    return renew_federation(
        store,
        passphrase,
        (store,),
        lambda: refresh(store, passphrase, now=now, lifetimes=life),
        now=now,
        within=within,
        lifetimes=life,
    )


def renew_federation(
    ca_store: Store,
    ca_passphrase: bytes,
    holders: Sequence[Store],
    resign: Callable[[], Registry],
    *,
    now: datetime,
    within: timedelta,
    lifetimes: Lifetimes | None = None,
    publish_to: Sequence[Store] = (),
) -> Renewal:
    """All three steps over any custody: ``renew_certificates``, then ``resign()`` (which
    re-signs and publishes the registry, e.g. ``keys.federation.refresh_registry`` with the
    root's store), then the active keys of the new registry that expire within ``within``."""
    renewed = renew_certificates(
        ca_store,
        ca_passphrase,
        holders,
        now=now,
        within=within,
        lifetimes=lifetimes,
        publish_to=publish_to,
    )
    # 3. The registry, last: its new serial marks a complete renewal.
    registry = resign()
    renewed.append(Credential(CredentialKind.REGISTRY, FEDERATION, registry.expires_at))
    due = expiring(registry_credentials(registry), now, within)
    to_rotate = tuple(c for c in due if c.kind in _KEY_KINDS)
    return Renewal(tuple(renewed), to_rotate, registry)


def describe(renewal: Renewal) -> list[str]:
    """One line per credential renewed and per key that needs rotating, for the terminal."""
    lines = [
        f"renewed {c.kind.value} {c.subject}: expires {c.expires_at:%Y-%m-%d %H:%M} UTC"
        for c in renewal.renewed
    ]
    lines.extend(
        f"warning: the {c.kind.value.replace('_', ' ')} of {c.subject} expires "
        f"{c.expires_at:%Y-%m-%d %H:%M} UTC; run 'cairn keys rotate --agency {c.subject}'"
        for c in renewal.to_rotate
    )
    return lines
