"""The federation's TLS PKI: a CA, client certificates naming each agency, the broker's server cert.

mTLS is how the broker knows which agency is at the other end of a connection
(docs/architecture.md#the-flow, step 1: TLS identity == claimed sender), so every client certificate
carries the agency id as its subject CN and the agency's role as OU. Keys are ECDSA P-256, the curve
every TLS stack and Kafka's Java clients accept. Certificates follow RFC 5280 closely enough for
strict verifiers (Python 3.13's ``VERIFY_X509_STRICT``): critical basic constraints and key usage,
subject and authority key identifiers, extended key usage per purpose.

Pure: returns key and certificate objects; ``keys.store`` writes them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "BROKER_HOSTS",
    "IssuedCertificate",
    "agency_of_certificate",
    "client_csr",
    "issue_ca",
    "issue_client_certificate",
    "issue_client_certificate_for",
    "issue_server_certificate",
    "new_tls_key",
]

# Where the development broker listens; a real deployment issues its own server certificate.
BROKER_HOSTS: Final = ("localhost", "127.0.0.1", "::1")
# Certificates start a little in the past so that a peer whose clock is behind accepts them.
_BACKDATE: Final = timedelta(minutes=5)
_MAX_NAME_CHARS: Final = 64  # RFC 5280 upper bound on CN, O and OU


@dataclass(frozen=True, repr=False)
class IssuedCertificate:
    """A private key and the certificate issued for it."""

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(Encoding.PEM)

    def __repr__(self) -> str:
        return f"IssuedCertificate(subject={self.certificate.subject.rfc4514_string()!r})"


def _name(common_name: str, organization: str, unit: str | None = None) -> x509.Name:
    attributes = [
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization[:_MAX_NAME_CHARS]),
    ]
    if unit is not None:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit))
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name[:_MAX_NAME_CHARS]))
    return x509.Name(attributes)


def _leaf_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def issue_ca(federation_name: str, *, now: datetime, validity: timedelta) -> IssuedCertificate:
    """A self-signed CA that issues only leaf certificates (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(f"{federation_name} CA", federation_name)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return IssuedCertificate(key, certificate)


def _leaf(
    ca: IssuedCertificate,
    subject: x509.Name,
    usage: x509.ObjectIdentifier,
    san: Sequence[x509.GeneralName],
    *,
    now: datetime,
    validity: timedelta,
) -> IssuedCertificate:
    key = ec.generate_private_key(ec.SECP256R1())
    return IssuedCertificate(
        key,
        _sign_leaf(ca, subject, key.public_key(), usage, san, now=now, validity=validity),
    )


def _sign_leaf(
    ca: IssuedCertificate,
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    usage: x509.ObjectIdentifier,
    san: Sequence[x509.GeneralName],
    *,
    now: datetime,
    validity: timedelta,
) -> x509.Certificate:
    ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.certificate.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        # A leaf never outlives its CA: a verifier would refuse the chain anyway.
        .not_valid_after(min(now + validity, ca.certificate.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_key_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(san)), critical=False)
    return builder.sign(ca.key, hashes.SHA256())


def new_tls_key() -> ec.EllipticCurvePrivateKey:
    """A TLS key of the kind every certificate of the federation is for (ECDSA P-256)."""
    return ec.generate_private_key(ec.SECP256R1())


def client_csr(
    key: ec.EllipticCurvePrivateKey, agency_id: str, role: str
) -> x509.CertificateSigningRequest:
    """An agency's certificate signing request for its TLS key: CN = agency id, OU = role.

    Signed by the key itself, so the request proves that its sender holds the key.
    """
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
            x509.NameAttribute(NameOID.COMMON_NAME, agency_id),
        ]
    )
    return x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())


def issue_client_certificate_for(
    ca: IssuedCertificate,
    public_key: ec.EllipticCurvePublicKey,
    agency_id: str,
    role: str,
    federation_name: str,
    *,
    now: datetime,
    validity: timedelta,
) -> x509.Certificate:
    """A TLS client certificate for a key the CA never sees the private half of (a CSR's)."""
    return _sign_leaf(
        ca,
        _name(agency_id, federation_name, role),
        public_key,
        ExtendedKeyUsageOID.CLIENT_AUTH,
        (),
        now=now,
        validity=validity,
    )


def issue_client_certificate(
    ca: IssuedCertificate,
    agency_id: str,
    role: str,
    federation_name: str,
    *,
    now: datetime,
    validity: timedelta,
) -> IssuedCertificate:
    """A TLS client certificate for one agency: CN = agency id, OU = role, O = federation."""
    return _leaf(
        ca,
        _name(agency_id, federation_name, role),
        ExtendedKeyUsageOID.CLIENT_AUTH,
        (),
        now=now,
        validity=validity,
    )


def issue_server_certificate(
    ca: IssuedCertificate,
    federation_name: str,
    *,
    now: datetime,
    validity: timedelta,
    common_name: str = "cairn-broker",
    hosts: Sequence[str] = BROKER_HOSTS,
) -> IssuedCertificate:
    """The broker's TLS server certificate, with each host as a DNS or IP SAN."""
    san: list[x509.GeneralName] = []
    for host in hosts:
        try:
            san.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            san.append(x509.DNSName(host))
    return _leaf(
        ca,
        _name(common_name, federation_name),
        ExtendedKeyUsageOID.SERVER_AUTH,
        san,
        now=now,
        validity=validity,
    )


def agency_of_certificate(certificate: x509.Certificate) -> str:
    """The agency id a client certificate names (its one subject CN)."""
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or not isinstance(names[0].value, str):
        raise ValueError("a client certificate names exactly one agency as its CN")
    return names[0].value
