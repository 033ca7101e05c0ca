"""When the federation's credentials run out: the registry, the CA, the TLS certificates, the keys.

A component that trusts a registry and serves or presents TLS certificates stops working the
moment one of them expires: an expired registry is refused (every request a 503), an expired
server certificate fails every handshake, an expired member certificate locks that agency out.
``Credential`` names one such thing by a kind and a subject (an agency id or a component name,
never anything about a person) with the moment it expires; ``registry_credentials`` and
``certificate_credential`` are pure, ``read_credentials`` reads the public files of a key store
(the registry, the root public key, the certificates: no passphrase, no private key).

``expiring`` picks those that expire within a window, which is how the broker's metric, its
``credentials.expiring`` log line, ``cairn status`` and ``cairn keys refresh`` decide what needs
attention (docs/architecture.md#security-envelope).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Final

from cryptography import x509
from cryptography.x509.oid import NameOID

from keys.errors import KeyStoreError, VerificationError
from keys.federation import read_root_key
from keys.registry import KeyStatus, KeyUse, Registry, verify_registry_signature
from keys.store import CA_CERT, REGISTRY, SERVER_CERT, FileStore, MemoryStore, Store

__all__ = [
    "FEDERATION",
    "KAFKA",
    "Credential",
    "CredentialKind",
    "Unreadable",
    "certificate_credential",
    "certificate_files",
    "days_left",
    "expiring",
    "read_certificate_file",
    "read_credentials",
    "read_key_folder",
    "registry_credentials",
]

# The subject of the credentials that belong to the federation as a whole (registry, CA).
FEDERATION: Final = "federation"
KAFKA: Final = "kafka"  # the subject of the Kafka clients' CA file
_TLS_FOLDER: Final = "tls"
_SUBJECT: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class CredentialKind(StrEnum):
    """What expires; the metric's ``kind`` label."""

    REGISTRY = "registry"  # the root-signed registry (expires_at)
    CA = "ca"  # the federation CA certificate
    TLS_SERVER = "tls_server"  # the broker's (and auditor's) TLS server certificate
    MEMBER_TLS = "member_tls"  # a member's TLS client certificate, by its CN
    SIGNING_KEY = "signing_key"  # a member's active signing key in the registry (not_after)
    ENCRYPTION_KEY = "encryption_key"  # a member's active encryption key (not_after)
    KAFKA_CA = "kafka_ca"  # the CA file the Kafka clients verify the cluster with
    KAFKA_CLIENT = "kafka_client"  # the certificate the Kafka clients present, by its CN


_KEY_KIND: Final = {
    KeyUse.SIGNING: CredentialKind.SIGNING_KEY,
    KeyUse.ENCRYPTION: CredentialKind.ENCRYPTION_KEY,
}


@dataclass(frozen=True, order=True)
class Credential:
    """One thing that expires: its kind, whose it is, and when (timezone-aware)."""

    kind: CredentialKind
    subject: str  # an agency id or a component name: a code, never personal data
    expires_at: datetime

    def seconds_left(self, now: datetime) -> float:
        """Seconds until it expires at ``now``; negative once it has."""
        return (self.expires_at - now).total_seconds()


@dataclass(frozen=True)
class Unreadable:
    """A file of the store that should have named an expiry but could not be read."""

    name: str  # the store name, e.g. tls/server.crt
    reason: str  # a short code: missing, malformed, unsigned, ...


def days_left(credential: Credential, now: datetime) -> int:
    """Whole days until ``credential`` expires (rounded down; negative once it has)."""
    return int(credential.seconds_left(now) // 86_400)


def expiring(
    credentials: Iterable[Credential], now: datetime, within: timedelta
) -> list[Credential]:
    """The credentials that expire within ``within`` of ``now`` (or already have), soonest
    first."""
    limit = now + within
    return sorted((c for c in credentials if c.expires_at <= limit), key=_soonest)


def _soonest(credential: Credential) -> tuple[datetime, str, str]:
    return (credential.expires_at, credential.kind.value, credential.subject)


def registry_credentials(registry: Registry) -> list[Credential]:
    """The registry's own expiry, and each member's active keys' ``not_after``.

    Retired keys expire by design once their grace is over, and revoked ones are refused
    anyway, so only the active keys are credentials someone must renew (by rotating).
    """
    found = [Credential(CredentialKind.REGISTRY, FEDERATION, registry.expires_at)]
    for member in registry.members:
        for key in member.keys:
            if key.status is KeyStatus.ACTIVE:
                found.append(Credential(_KEY_KIND[key.use], member.id, key.not_after))
    return found


def certificate_credential(kind: CredentialKind, certificate: x509.Certificate) -> Credential:
    """The certificate's ``notAfter``, named by its subject CN (an agency id or a component
    name). The CA is named ``federation``: its CN is the federation's display name."""
    if kind is CredentialKind.CA:
        subject = FEDERATION
    elif kind is CredentialKind.KAFKA_CA:
        subject = KAFKA
    else:
        names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        value = names[0].value if len(names) == 1 else None
        subject = value if isinstance(value, str) and _SUBJECT.fullmatch(value) else "other"
    return Credential(kind, subject, certificate.not_valid_after_utc)


def certificate_files(store: Store) -> list[str]:
    """The store names of every certificate in the store's TLS folder, and of the CA and
    server certificates wherever the store keeps them (a member's store reads the CA's from
    the published one, ``keys.custody``), sorted."""
    names = {n for n in (CA_CERT, SERVER_CERT) if store.exists(n)}
    if isinstance(store, FileStore):
        folder = store.root / _TLS_FOLDER
        if folder.is_dir():
            names.update(
                str(PurePosixPath(*path.relative_to(store.root).parts))
                for path in folder.rglob("*.crt")
                if path.is_file()
            )
    elif isinstance(store, MemoryStore):
        names.update(
            n for n in store.files if n.startswith(f"{_TLS_FOLDER}/") and n.endswith(".crt")
        )
    return sorted(names)


def _kind_of(name: str) -> CredentialKind:
    if name == CA_CERT:
        return CredentialKind.CA
    if name == SERVER_CERT:
        return CredentialKind.TLS_SERVER
    return CredentialKind.MEMBER_TLS


def read_certificate_file(kind: CredentialKind, path: Path) -> Credential | Unreadable:
    """The expiry of the (first) certificate in a PEM file outside any key store (the Kafka
    clients' CA and certificate files), or why it cannot be read (named by ``kind``)."""
    try:
        certificate = x509.load_pem_x509_certificate(path.read_bytes())
    except OSError:
        return Unreadable(kind.value, "missing")
    except ValueError:
        return Unreadable(kind.value, "malformed")
    return certificate_credential(kind, certificate)


def read_credentials(
    store: Store, *, root_kid: str | None = None
) -> tuple[list[Credential], list[Unreadable]]:
    """Every credential named by the store's public files, and the files that could not say.

    The registry's signature is checked against the store's root key (pinned by ``root_kid``
    if given), but not its freshness: an expired registry still says when it expired. One
    credential per (kind, subject): if two certificates name one subject, the sooner counts.
    """
    found: list[Credential] = []
    problems: list[Unreadable] = []
    _read_registry(store, root_kid, found, problems)
    for name in certificate_files(store):
        _read_certificate(store, name, name, found, problems)
    return _one_per_subject(found), problems


def read_key_folder(
    folder: Path, *, public: Path | None = None, root_kid: str | None = None
) -> tuple[list[Credential], list[Unreadable]]:
    """Every credential in a machine's key folder, however custody splits it into stores
    (``keys.custody``: ``<folder>/<store>``, the published files in ``public`` or
    ``<folder>/public``; or one all-in-one store): the registry from wherever it is
    published, and every certificate of every store under the folder, named by its path
    relative to the folder. For ``cairn status --offline``."""
    candidates = [public] if public is not None else [folder, folder / "public"]
    published = next(
        (FileStore(c) for c in candidates if (c / REGISTRY).is_file()), FileStore(candidates[0])
    )
    found: list[Credential] = []
    problems: list[Unreadable] = []
    _read_registry(published, root_kid, found, problems)
    paths = {p for base in {folder, published.root} if base.is_dir() for p in base.rglob("*.crt")}
    for path in sorted(p for p in paths if p.is_file()):
        base = folder if path.is_relative_to(folder) else published.root
        relative = PurePosixPath(*path.relative_to(base).parts)
        # A store's own layout name is its last two parts: tls/ca.crt, tls/server.crt, ...
        layout = str(PurePosixPath(*relative.parts[-2:]))
        kind_name = layout if layout in (CA_CERT, SERVER_CERT) else str(relative)
        _read_certificate(FileStore(base), str(relative), kind_name, found, problems)
    return _one_per_subject(found), problems


def _read_registry(
    store: Store, root_kid: str | None, found: list[Credential], problems: list[Unreadable]
) -> None:
    try:
        root = read_root_key(store, root_kid=root_kid)
        registry = verify_registry_signature(store.read(REGISTRY), root)
    except VerificationError as exc:
        problems.append(Unreadable(REGISTRY, exc.reason.value))
    except KeyStoreError:  # no registry or root key, or a root key that is not one
        problems.append(Unreadable(REGISTRY, "unreadable"))
    else:
        found.extend(registry_credentials(registry))


def _read_certificate(
    store: Store, name: str, kind_name: str, found: list[Credential], problems: list[Unreadable]
) -> None:
    try:
        certificate = x509.load_pem_x509_certificate(store.read(name))
    except KeyStoreError:
        problems.append(Unreadable(name, "missing"))
    except ValueError:
        problems.append(Unreadable(name, "malformed"))
    else:
        found.append(certificate_credential(_kind_of(kind_name), certificate))


def _one_per_subject(credentials: Sequence[Credential]) -> list[Credential]:
    sooner: dict[tuple[CredentialKind, str], Credential] = {}
    for c in credentials:
        key = (c.kind, c.subject)
        if key not in sooner or c.expires_at < sooner[key].expires_at:
            sooner[key] = c
    return sorted(sooner.values(), key=lambda c: (c.kind.value, c.subject))
