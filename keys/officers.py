"""IG officers' own client certificates: who searched the audit log, by name, over mutual TLS.

Enrolled the way an agency is (``keys.enrolment``): the officer makes their own TLS key (ECDSA
P-256, encrypted at rest in their own key store) and a certificate signing request, signed by
that key (the proof that they hold it); the administrator checks the request and issues the
certificate from the federation CA, never seeing the private key. The certificate's subject is
OU ``ig-officer`` and CN ``ig-officer.<officer id>`` (``schemas.audit.IG_OFFICER_PREFIX``): a
dot is never in an agency id, so no officer is taken for an agency and no agency for an
officer, and no agency's own CA may issue that name (``keys.tls.peer_agency`` accepts a
certificate from the federation CA or from the CA trusted for the agency it names). The
auditor admits that CN to the IG view and records it as the officer in every search's event.
Officers are not federation members: they hold no signing key and are not in the registry.

Pure: keys, requests and certificates in, certificates out; the CLI (``cairn audit officer``)
reads and writes the files.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from keys.errors import EnrolmentRefused
from keys.pki import IssuedCertificate, client_csr, issue_client_certificate_for
from schemas.audit import IG_OFFICER_PREFIX

__all__ = [
    "MAX_CSR_BYTES",
    "OFFICER_UNIT",
    "issue_officer_certificate",
    "officer_common_name",
    "officer_csr",
]

#: The OU of every IG officer's certificate.
OFFICER_UNIT: Final = "ig-officer"
_OFFICER_ID: Final = re.compile(r"^[a-z0-9][a-z0-9-]{1,47}$")
_CN: Final = re.compile(rf"^{re.escape(IG_OFFICER_PREFIX)}[a-z0-9][a-z0-9-]{{1,47}}$")
MAX_CSR_BYTES: Final = 16_384  # bytes: a P-256 CSR is under 1 KB


def officer_common_name(officer_id: str) -> str:
    """``ig-officer.<officer_id>``; ``ValueError`` unless the id is 2 to 48 lower-case letters,
    digits and hyphens (a staff login, not a person's name in full)."""
    if not _OFFICER_ID.fullmatch(officer_id):
        raise ValueError(
            "an IG officer id is 2 to 48 lower-case letters, digits and hyphens, starting "
            "with a letter or digit (e.g. a staff login: 'jsmith')"
        )
    return IG_OFFICER_PREFIX + officer_id


def officer_csr(key: ec.EllipticCurvePrivateKey, officer_id: str) -> x509.CertificateSigningRequest:
    """The officer's certificate signing request for their TLS key, signed by it."""
    return client_csr(key, officer_common_name(officer_id), OFFICER_UNIT)


def issue_officer_certificate(
    ca: IssuedCertificate,
    csr_pem: bytes,
    federation_name: str,
    *,
    now: datetime,
    validity: timedelta,
) -> x509.Certificate:
    """The federation CA's client certificate for the officer's request.

    Refused (``EnrolmentRefused``) unless the request is one PEM CSR whose own signature
    verifies (proof of possession), for a P-256 key, naming exactly OU ``ig-officer`` and CN
    ``ig-officer.<id>``: every check before the certificate is made.
    """
    if len(csr_pem) > MAX_CSR_BYTES:
        raise EnrolmentRefused(f"the request is over {MAX_CSR_BYTES} bytes")
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError:
        raise EnrolmentRefused("the request is not a PEM CSR") from None
    if not csr.is_signature_valid:
        raise EnrolmentRefused("the request's signature does not verify with its key")
    public = csr.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name != "secp256r1":
        raise EnrolmentRefused("an officer's TLS key is ECDSA P-256")
    names = [(a.oid, a.value) for a in csr.subject]
    units = [v for oid, v in names if oid == NameOID.ORGANIZATIONAL_UNIT_NAME]
    commons = [v for oid, v in names if oid == NameOID.COMMON_NAME]
    if (
        len(names) != 2
        or units != [OFFICER_UNIT]
        or len(commons) != 1
        or not isinstance(commons[0], str)
        or not _CN.fullmatch(commons[0])
    ):
        raise EnrolmentRefused(
            f"an officer's request names OU={OFFICER_UNIT} and CN={IG_OFFICER_PREFIX}<id> only",
        )
    return issue_client_certificate_for(
        ca, public, commons[0], OFFICER_UNIT, federation_name, now=now, validity=validity
    )
