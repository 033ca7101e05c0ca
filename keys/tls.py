"""TLS contexts for mutual TLS between the agencies and the broker, from the store's PKI files.

``ssl`` loads certificates and keys only from paths, so these helpers take a store on disk and
hand ``ssl`` the paths of the files in it (the reading is done by OpenSSL, not by us). The
private keys stay encrypted on disk: OpenSSL decrypts them in memory with the passphrase, so no
unencrypted key file is ever written. ``peer_agency`` names the agency at the other end of an
accepted connection, which the broker compares with the referral's claimed sender.
"""

from __future__ import annotations

import functools
import ssl
import weakref

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding

from keys.errors import KeyStoreError, PassphraseError, Reason, VerificationError
from keys.pki import agency_of_certificate
from keys.store import (
    AGENCY_CAS,
    CA_CERT,
    SERVER_CERT,
    SERVER_KEY,
    PathStore,
    client_cert,
    client_key,
)

__all__ = ["client_context", "peer_agency", "server_context"]


def _load_chain(context: ssl.SSLContext, store: PathStore, cert: str, key: str, pw: bytes) -> None:
    try:
        context.load_cert_chain(store.path(cert), store.path(key), password=pw)
    except FileNotFoundError:
        raise KeyStoreError(
            f"{store.path(cert)} or its key is missing; has 'cairn keys init' been run?"
        ) from None
    except ssl.SSLError:
        raise PassphraseError(
            f"cannot load {store.path(key)}: the passphrase is wrong or the file is damaged"
        ) from None


def _ca(store: PathStore) -> str:
    path = store.path(CA_CERT)
    if not path.is_file():
        raise KeyStoreError(f"{path} is missing; has 'cairn keys init' been run?")
    return str(path)


def server_context(store: PathStore, passphrase: bytes) -> ssl.SSLContext:
    """The broker's server context: its certificate, and client certificates required.

    Client certificates are verified against the federation CA and, for an agency that brought
    a certificate of its own CA (``keys.enrolment``), against the CA published for it in
    ``tls/agency-cas/<id>.crt``; ``peer_agency`` then accepts such a certificate for that
    agency alone.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=_ca(store))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED  # mTLS: no certificate, no connection
    bound: dict[str, bytes] = {}
    folder = store.path(AGENCY_CAS)
    for path in sorted(folder.glob("*.crt")) if folder.is_dir() else ():
        try:
            ca = x509.load_pem_x509_certificate(path.read_bytes())
        except ValueError:
            raise KeyStoreError(f"{path} is not a PEM certificate") from None
        context.load_verify_locations(cadata=ca.public_bytes(Encoding.PEM).decode("ascii"))
        bound[path.stem] = ca.public_bytes(Encoding.DER)
    if bound:
        federation_ca = x509.load_pem_x509_certificate(store.read(CA_CERT))
        _BINDINGS[id(context)] = (federation_ca.public_bytes(Encoding.DER), bound)
        weakref.finalize(context, _BINDINGS.pop, id(context), None)
    _load_chain(context, store, SERVER_CERT, SERVER_KEY, passphrase)
    return context


def client_context(store: PathStore, agency_id: str, passphrase: bytes) -> ssl.SSLContext:
    """An agency's client context: its client certificate; the broker checked against the CA."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=_ca(store))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(context, store, client_cert(agency_id), client_key(agency_id), passphrase)
    return context


def peer_agency(connection: ssl.SSLObject | ssl.SSLSocket) -> str:
    """The agency id in the verified client certificate of an accepted connection."""
    der = connection.getpeercert(binary_form=True)
    if not der:
        raise VerificationError(Reason.WRONG_SIGNER, "the client presented no certificate")
    try:
        agency = _agency_of_der(der)
    except ValueError:
        raise VerificationError(
            Reason.MALFORMED, "the client certificate does not name one agency"
        ) from None
    binding = _BINDINGS.get(id(connection.context))
    if binding is not None:
        federation_ca, bound = binding
        if not _issued_by_either(der, federation_ca, bound.get(agency)):
            # Verified at the handshake, but by the CA trusted for another agency.
            raise VerificationError(
                Reason.WRONG_SIGNER,
                f"the client certificate names {agency} but is issued by neither the "
                "federation CA nor the CA trusted for that agency",
            )
    return agency


# Server contexts that trust agencies' own CAs: (federation CA, {agency: its CA}), DER.
_BINDINGS: dict[int, tuple[bytes, dict[str, bytes]]] = {}


@functools.lru_cache(maxsize=1024)
def _issued_by_either(der: bytes, federation_ca: bytes, agency_ca: bytes | None) -> bool:
    """Whether the certificate is signed by the federation CA or by ``agency_ca``: a function
    of the three certificates' bytes, so each certificate is checked once."""
    leaf = x509.load_der_x509_certificate(der)
    for issuer in (federation_ca, agency_ca):
        if issuer is None:
            continue
        try:
            leaf.verify_directly_issued_by(x509.load_der_x509_certificate(issuer))
        except (ValueError, TypeError, InvalidSignature):
            continue
        return True
    return False


@functools.lru_cache(maxsize=1024)
def _agency_of_der(der: bytes) -> str:
    """The agency a certificate names: a function of its bytes alone, so each request on a
    connection (and each connection of one agency) parses it once. OpenSSL verified the chain
    when the connection was accepted; a failure (ValueError) is not cached."""
    return agency_of_certificate(x509.load_der_x509_certificate(der))
