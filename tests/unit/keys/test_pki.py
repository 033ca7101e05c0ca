"""The development PKI: certificates say who each agency is, and mutual TLS works with them."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from keys.errors import KeyStoreError, PassphraseError
from keys.pki import agency_of_certificate
from keys.store import CA_CERT, SERVER_CERT, FileStore, client_cert
from keys.tls import client_context, peer_agency, server_context
from tests.unit.keys.conftest import PASSPHRASE, Kelder


def _cert(kelder: Kelder, name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(kelder.store.read(name))


def test_client_certificates_name_the_agency_and_its_role(kelder: Kelder) -> None:
    """Each client certificate has CN = agency id, OU = role, clientAuth, issued by the CA."""
    ca = _cert(kelder, CA_CERT)
    for member in kelder.registry.members:
        if member.role.value in ("broker", "auditor"):
            continue
        cert = _cert(kelder, client_cert(member.id))
        assert agency_of_certificate(cert) == member.id
        units = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
        assert [u.value for u in units] == [member.role.value]
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
        cert.verify_directly_issued_by(ca)


def test_the_server_certificate_covers_loopback(kelder: Kelder) -> None:
    """The broker's certificate names localhost, 127.0.0.1 and ::1, for serverAuth only."""
    cert = _cert(kelder, SERVER_CERT)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    cert.verify_directly_issued_by(_cert(kelder, CA_CERT))


def test_the_ca_issues_leaves_only(kelder: Kelder) -> None:
    """The CA is a CA with path length 0; no leaf certificate is a CA."""
    ca = _cert(kelder, CA_CERT).extensions.get_extension_for_class(x509.BasicConstraints)
    assert ca.critical
    assert (ca.value.ca, ca.value.path_length) == (True, 0)
    leaf = _cert(kelder, SERVER_CERT).extensions.get_extension_for_class(x509.BasicConstraints)
    assert leaf.value.ca is False


def _handshake(
    server: ssl.SSLContext, client: ssl.SSLContext, hostname: str
) -> tuple[str | None, BaseException | None]:
    """Run a TLS handshake over a socket pair; the agency the server saw, or the error."""
    left, right = socket.socketpair()
    seen: list[str] = []
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            with server.wrap_socket(left, server_side=True) as tls:
                seen.append(peer_agency(tls))
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as exc:
            errors.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client.wrap_socket(right, server_hostname=hostname) as tls:
            tls.recv(2)
    except (ssl.SSLError, OSError) as exc:
        errors.append(exc)
    thread.join(timeout=10)
    left.close()
    right.close()
    return (seen[0] if seen else None), (errors[0] if errors else None)


@pytest.mark.parametrize("hostname", ["localhost", "127.0.0.1"])
def test_mutual_tls_identifies_the_agency(kelder: Kelder, hostname: str) -> None:
    """Broker and agency contexts handshake under strict X.509 checks; the broker sees the CN."""
    server = server_context(kelder.store, PASSPHRASE)
    client = client_context(kelder.store, "kelder-police", PASSPHRASE)
    for context in (server, client):
        context.verify_flags |= ssl.VERIFY_X509_STRICT
    agency, error = _handshake(server, client, hostname)
    assert error is None
    assert agency == "kelder-police"


def test_a_client_without_a_certificate_is_turned_away(kelder: Kelder) -> None:
    """The broker's context requires a client certificate from the federation CA."""
    server = server_context(kelder.store, PASSPHRASE)
    anonymous = ssl.create_default_context(cafile=kelder.store.path(CA_CERT))
    agency, error = _handshake(server, anonymous, "localhost")
    assert agency is None
    assert error is not None


def test_tls_keys_need_the_passphrase(kelder: Kelder) -> None:
    """Loading the encrypted TLS key with a wrong passphrase is a clear PassphraseError."""
    with pytest.raises(PassphraseError, match="passphrase is wrong"):
        server_context(kelder.store, b"wrong")


def test_tls_contexts_need_an_initialised_store(tmp_path: Path) -> None:
    """Without 'cairn keys init' the context helpers say what to run."""
    with pytest.raises(KeyStoreError, match="cairn keys init"):
        client_context(FileStore(tmp_path), "kelder-police", PASSPHRASE)
