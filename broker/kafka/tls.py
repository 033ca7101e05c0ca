"""TLS material for Kafka's mutual-TLS listener, issued by the federation CA.

The local Kafka (``deploy/kafka/kafka-local`` with ``CAIRN_KAFKA_SSL_PORT``) serves an SSL
listener that requires a client certificate from the federation CA and maps each one to the
Kafka principal ``User:<subject CN>``: an agency's id, ``cairn-broker`` or ``cairn-auditor``
(``broker.kafka.acls`` says what each may do). ``issue_listener_tls`` writes what that
listener needs into a folder of the git-ignored state (never committed):

- ``ca.pem``: the federation CA certificate, the listener's trust store;
- ``server.p12``: the listener's key and certificate chain, a PKCS#12 key store encrypted
  with AES-256 (``ssl.keystore.type=PKCS12``: Kafka's PEM key store cannot read a PKCS#8 key
  encrypted with PBES2, and an unencrypted one would have to sit in server.properties); its
  certificate names 127.0.0.1 and localhost;
- ``server.password``: the password of that key store (a random one, mode 0600);

and, for each service that has no client certificate of its own (the broker: its TLS key is
its HTTPS server's), ``tls/clients/<id>.crt`` and ``.key`` in *that service's* key store (the
auditor's and the agencies' are there already), the key encrypted with that store's
passphrase: the service's Kafka client certificate.

Material that is still good (the same CA, more than ``RENEW_BEFORE`` left) is kept as it is,
so a restart of Kafka keeps its identity; otherwise it is issued afresh.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    PrivateFormat,
    pkcs12,
)

from keys.custody import Custody, store_of
from keys.errors import KeyStoreError
from keys.pki import IssuedCertificate, issue_client_certificate, issue_server_certificate
from keys.store import (
    CA_CERT,
    CA_KEY,
    PASSPHRASE_FILE_ENV,
    PathStore,
    Store,
    client_cert,
    client_key,
    decrypt_private_key,
)

__all__ = [
    "LISTENER_HOSTS",
    "RENEW_BEFORE",
    "ListenerTls",
    "ServiceClient",
    "issue_listener_tls",
    "member_kafka_tls",
]

LISTENER_HOSTS: Final = ("localhost", "127.0.0.1")
RENEW_BEFORE: Final = timedelta(days=14)  # material closer than this to expiry is reissued
VALIDITY: Final = timedelta(days=90)  # of each certificate issued here
KAFKA_SERVER_CN: Final = "cairn-kafka"


@dataclass(frozen=True, repr=False)
class ServiceClient:
    """A service to give a Kafka client certificate: its id (the certificate's CN, so its
    principal), its role (OU), its own key store and that store's passphrase."""

    id: str
    role: str
    store: PathStore
    passphrase: bytes

    def __repr__(self) -> str:
        return f"ServiceClient({self.id!r}, {self.role!r}, {self.store!r})"

    @property
    def cert(self) -> Path:
        return self.store.path(client_cert(self.id))

    @property
    def key(self) -> Path:
        return self.store.path(client_key(self.id))


@dataclass(frozen=True)
class ListenerTls:
    """Where the listener's files are, and what was issued this time."""

    folder: Path
    issued: tuple[str, ...]  # file names (re)written now; empty when everything was kept

    @property
    def ca(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def keystore(self) -> Path:
        return self.folder / "server.p12"

    @property
    def key_password(self) -> Path:
        return self.folder / "server.password"


def _write(path: Path, data: bytes, *, private: bool) -> None:
    """Write whole or not at all (a temporary file moved into place), 0600 if private."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _certificate(path: Path, password: Path) -> x509.Certificate:
    """The certificate in a PEM file, or in a PKCS#12 key store with its password file."""
    data = path.read_bytes()
    if path.suffix != ".p12":
        return x509.load_pem_x509_certificates(data)[0]
    secret = password.read_bytes().strip()
    _key, certificate, _chain = pkcs12.load_key_and_certificates(data, secret)
    if certificate is None:
        raise ValueError("no certificate in the key store")
    return certificate


def _good(cert_path: Path, password: Path, ca: x509.Certificate, now: datetime) -> bool:
    """The certificate at ``cert_path`` was issued by ``ca`` and has more than RENEW_BEFORE
    left."""
    try:
        certificate = _certificate(cert_path, password)
        certificate.verify_directly_issued_by(ca)
    except Exception:  # unreadable, damaged, or another CA's (InvalidSignature): reissue
        return False
    return certificate.not_valid_after_utc - now > RENEW_BEFORE


def _load_ca(store: Store, passphrase: bytes) -> IssuedCertificate:
    if not store.exists(CA_CERT) or not store.exists(CA_KEY):
        raise KeyStoreError(
            f"{store} holds no federation CA ({CA_CERT}, {CA_KEY}); create the federation's "
            "keys first ('cairn keys init')"
        )
    certificate = x509.load_pem_x509_certificate(store.read(CA_CERT))
    key = decrypt_private_key(store.read(CA_KEY), passphrase, name=CA_KEY)
    if not isinstance(key, EllipticCurvePrivateKey):
        raise KeyStoreError(f"{CA_KEY} is not the federation CA's ECDSA key")
    return IssuedCertificate(key, certificate)


def _key_pem(key: EllipticCurvePrivateKey, password: bytes) -> bytes:
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(password))


def issue_listener_tls(
    ca_store: Store,
    ca_passphrase: bytes,
    folder: Path,
    federation_name: str,
    *,
    now: datetime,
    clients: Sequence[ServiceClient] = (),
) -> ListenerTls:
    """Write (or keep) the Kafka listener's TLS files in ``folder``, and a client certificate
    for each of ``clients`` in its own store, all from the federation CA in ``ca_store``."""
    out = ListenerTls(folder, ())
    ca_pem = ca_store.read(CA_CERT) if ca_store.exists(CA_CERT) else b""
    ca_cert = x509.load_pem_x509_certificate(ca_pem) if ca_pem else None
    server_stale = (
        ca_cert is None
        or not out.key_password.is_file()
        or not _good(out.keystore, out.key_password, ca_cert, now)
    )
    stale_clients = [
        c
        for c in clients
        if ca_cert is None or not c.key.is_file() or not _good(c.cert, c.cert, ca_cert, now)
    ]
    same_ca = out.ca.is_file() and out.ca.read_bytes() == ca_pem
    if not server_stale and not stale_clients and same_ca:
        return out
    ca = _load_ca(ca_store, ca_passphrase)
    issued: list[str] = []
    if not same_ca:
        _write(out.ca, ca.certificate_pem(), private=False)
        issued.append(out.ca.name)
    if server_stale:
        server = issue_server_certificate(
            ca,
            federation_name,
            now=now,
            validity=VALIDITY,
            common_name=KAFKA_SERVER_CN,
            hosts=LISTENER_HOSTS,
        )
        password = secrets.token_urlsafe(24).encode()
        store_bytes = pkcs12.serialize_key_and_certificates(
            b"kafka",
            server.key,
            server.certificate,
            [ca.certificate],
            BestAvailableEncryption(password),
        )
        _write(out.key_password, password + b"\n", private=True)
        _write(out.keystore, store_bytes, private=True)
        issued += [out.key_password.name, out.keystore.name]
    for c in stale_clients:
        cert = issue_client_certificate(
            ca, c.id, c.role, federation_name, now=now, validity=VALIDITY
        )
        c.store.write(client_key(c.id), _key_pem(cert.key, c.passphrase), private=True)
        c.store.write(client_cert(c.id), cert.certificate_pem(), private=False)
        issued += [str(c.key), str(c.cert)]
    return ListenerTls(folder, tuple(issued))


def member_kafka_tls(
    custody: Custody, member_id: str, environ: Mapping[str, str]
) -> dict[str, Path]:
    """The Kafka TLS settings of ``member_id`` under ``custody``: the CA file (published), its
    client certificate and key (in its own store) and the file holding that key's password
    (its store's passphrase file, else ``CAIRN_KEY_PASSPHRASE_FILE``), as setting names; a
    ``KeyStoreError`` saying what is missing."""
    store = custody.member_store(member_id)
    files = {
        "kafka_ssl_ca_file": store.path(CA_CERT),
        "kafka_ssl_cert_file": store.path(client_cert(member_id)),
        "kafka_ssl_key_file": store.path(client_key(member_id)),
    }
    for path in files.values():
        if not path.is_file():
            raise KeyStoreError(
                f"{path} is missing: {member_id} has no Kafka client certificate there (an "
                "agency's comes with its enrolment; the broker's from 'cairn kafka tls "
                "--client cairn-broker:broker')"
            )
    own = None if custody.all_in_one else custody.passphrase_file(store_of(member_id))
    if own is not None and own.is_file():
        files["kafka_ssl_key_password_file"] = own
    elif environ.get(PASSPHRASE_FILE_ENV):
        files["kafka_ssl_key_password_file"] = Path(environ[PASSPHRASE_FILE_ENV])
    else:
        raise KeyStoreError(
            f"no file holds the passphrase of {member_id}'s key store: put it in "
            f"{own if own is not None else 'a file'} or name one in {PASSPHRASE_FILE_ENV}"
        )
    return files
