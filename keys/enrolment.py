"""Enrolment: an agency makes its own keys and asks to join; the administrator admits it.

The X-Road way: every member holds its own keys, and the central authority only signs who
belongs. An agency, on its own machine and in its own store (``keys.custody``), runs
``create_agency``: it generates its Ed25519 signing key, its X25519 encryption key and its TLS
key (ECDSA P-256), and writes an *enrolment request*: a compact JWS (``typ``
``cairn-enrolment+jws``) signed by the new signing key, whose payload names the agency, the
role it claims, its public keys (JWKs with RFC 7638 kids) and a CSR for its TLS key. The
signature is the proof that the sender holds the signing key; the CSR's own signature, that it
holds the TLS key. (Holding the encryption key needs no proof: a key that is not the sender's
only harms the sender, who could then not read its own deliveries.)

The administrator's ``enrol`` verifies both proofs, checks the id and the role against
``agencies.yaml``, issues the TLS certificate from the federation CA for the CSR's key, adds the
public keys to the registry and publishes the next signed serial. It never sees a private key
of the agency. Every check comes before the first write, so a refused request changes nothing:
no certificate, no serial.

Rotation goes the same way: ``rotation_request`` makes new keys in the agency's store (and, if
asked, a new TLS key with a CSR) and signs a request for them with the new signing key (proof
of possession), wrapped in a JWS
(``cairn-rotation+jws``) signed by the agency's *current* registered signing key, which
``apply_rotation`` verifies against the registry before it retires the old keys. A revocation
request (``cairn-revocation+jws``) is signed by one of the agency's registered signing keys;
the administrator may also revoke any key on its own (``keys.federation.revoke_key``).

An agency may bring a TLS certificate from its own CA instead of a CSR being signed: the
request then carries that certificate too, and ``enrol`` accepts it only if ``agencies.yaml``
lists the CA that issued it as trusted for the agency (``trusted_ca``), the certificate names
the agency and is for the CSR's key. The CA is then published beside the federation CA
(``tls/agency-cas/<id>.crt``); the broker trusts it for that agency alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, Final, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import AwareDatetime, StringConstraints, ValidationError, model_validator

from keys import store as layout
from keys.errors import EnrolmentRefused, KeyStoreError, Reason, VerificationError
from keys.federation import Admin, Lifetimes, rotated_member
from keys.jose import read_header, sign_compact, verify_compact
from keys.jwk import SigningKey, b64url_decode, thumbprint
from keys.pki import IssuedCertificate, client_csr, issue_client_certificate_for, new_tls_key
from keys.registry import (
    AUDITOR_ID,
    BROKER_ID,
    CLOCK_SKEW,
    KeyStatus,
    KeyUse,
    Kid,
    Member,
    PublicJwk,
    RegisteredKey,
    Registry,
)
from keys.store import Store, check_new_passphrase, encrypt_private_key, load_signing_key
from schemas.federation import AgencyRole, Federation
from schemas.referral import AgencyId, Frozen

__all__ = [
    "ENROLMENT_TYP",
    "MAX_REQUEST_AGE",
    "MAX_REQUEST_BYTES",
    "REVOCATION_TYP",
    "ROTATION_TYP",
    "Enrolled",
    "EnrolmentRequest",
    "RequestKey",
    "RevocationRequest",
    "agency_ca_name",
    "apply_revocation",
    "apply_rotation",
    "create_agency",
    "csr_name",
    "enrol",
    "install_certificate",
    "load_ca",
    "next_csr_name",
    "next_tls_key_name",
    "read_enrolment",
    "request_name",
    "request_with_certificate",
    "revocation_request",
    "rotation_name",
    "rotation_request",
]

ENROLMENT_TYP: Final = "cairn-enrolment+jws"
ROTATION_TYP: Final = "cairn-rotation+jws"
REVOCATION_TYP: Final = "cairn-revocation+jws"
REQUEST_FORMAT: Final = "cairn-enrolment/1"
MAX_REQUEST_BYTES: Final = 65_536  # bytes: keys, a CSR and a certificate chain fit many times
# A request is acted on within days of being made; an older one is refused as stale, so a
# request that leaked cannot be replayed long after (a replay of a fresh one changes nothing:
# its keys are registered already).
MAX_REQUEST_AGE: Final = timedelta(days=30)

_CURVE_FOR_USE: Final = {KeyUse.SIGNING: "Ed25519", KeyUse.ENCRYPTION: "X25519"}
_TLS_CURVES: Final = (ec.SECP256R1, ec.SECP384R1)

Pem = Annotated[str, StringConstraints(max_length=32_768)]


def agency_ca_name(agency_id: str) -> str:
    """Where the public store publishes the CA trusted for one agency's own certificate."""
    return f"{layout.AGENCY_CAS}/{agency_id}.crt"


def request_name(agency_id: str) -> str:
    """Where the agency's store keeps a copy of its enrolment request (public)."""
    return f"enrolment/{agency_id}.request.jws"


def csr_name(agency_id: str) -> str:
    """Where the agency's store keeps its CSR (public), to check the certificate it gets."""
    return f"enrolment/{agency_id}.csr"


def rotation_name(agency_id: str) -> str:
    return f"enrolment/{agency_id}.rotation.jws"


def next_csr_name(agency_id: str) -> str:
    """A rotation's CSR for a new TLS key, until its certificate is installed (public)."""
    return f"enrolment/{agency_id}.next.csr"


def next_tls_key_name(agency_id: str) -> str:
    """A rotation's new TLS key, until its certificate is installed (private)."""
    return f"tls/clients/{agency_id}.next.key"


class RequestKey(Frozen):
    """One public key an agency asks to have registered."""

    kid: Kid
    use: KeyUse
    jwk: PublicJwk

    @model_validator(mode="after")
    def _consistent(self) -> RequestKey:
        if self.kid != thumbprint(self.jwk.model_dump()):
            raise ValueError("kid is not the RFC 7638 thumbprint of the key")
        if self.jwk.crv != _CURVE_FOR_USE[self.use]:
            raise ValueError(f"a '{self.use.value}' key must be on {_CURVE_FOR_USE[self.use]}")
        return self


class EnrolmentRequest(Frozen):
    """What an agency asks for: to join (``enrol``) or to replace its keys (``rotate``)."""

    format: Literal["cairn-enrolment/1"] = REQUEST_FORMAT
    kind: Literal["enrol", "rotate"]
    agency: AgencyId
    role: AgencyRole
    keys: tuple[RequestKey, RequestKey]
    csr: Pem | None = None  # PEM; required to enrol
    certificate: Pem | None = None  # PEM: the certificate its own CA issued for the CSR
    issued_at: AwareDatetime

    @model_validator(mode="after")
    def _one_key_per_use(self) -> EnrolmentRequest:
        if {k.use for k in self.keys} != {KeyUse.SIGNING, KeyUse.ENCRYPTION}:
            raise ValueError("a request carries one signing and one encryption key")
        if self.kind == "enrol" and self.csr is None:
            raise ValueError("an enrolment request carries a CSR for the agency's TLS key")
        return self

    def key(self, use: KeyUse) -> RequestKey:
        return next(k for k in self.keys if k.use is use)


class RevocationRequest(Frozen):
    """An agency's request to revoke one of its keys at once."""

    format: Literal["cairn-enrolment/1"] = REQUEST_FORMAT
    kind: Literal["revoke"] = "revoke"
    agency: AgencyId
    kid: Kid
    issued_at: AwareDatetime


@dataclass(frozen=True)
class Enrolled:
    """What ``enrol`` did: the registry it published and the certificate to send back."""

    agency: str
    registry: Registry
    certificate_pem: bytes
    issued_by_federation: bool  # False: the agency brought a certificate of its own CA


# --- The agency's side -----------------------------------------------------------------------


def _new_keys(
    store: Store, agency_id: str, passphrase: bytes
) -> tuple[SigningKey, tuple[RequestKey, RequestKey]]:
    signing = Ed25519PrivateKey.generate()
    encryption = X25519PrivateKey.generate()
    entries = []
    for private, use in ((signing, KeyUse.SIGNING), (encryption, KeyUse.ENCRYPTION)):
        jwk = PublicJwk.of(private.public_key())
        kid = thumbprint(jwk.model_dump())
        store.write(
            layout.member_key(agency_id, kid),
            encrypt_private_key(private, passphrase),
            private=True,
        )
        entries.append(RequestKey(kid=kid, use=use, jwk=jwk))
    return SigningKey(signing), (entries[0], entries[1])


def _json(model: Frozen) -> bytes:
    return model.model_dump_json(exclude_none=True).encode("utf-8")


def create_agency(
    store: Store,
    agency_id: str,
    role: AgencyRole,
    passphrase: bytes,
    *,
    now: datetime,
) -> bytes:
    """Make an agency's keys in its own empty ``store`` and return its enrolment request.

    The private keys are written encrypted under ``passphrase``; the request (and the CSR)
    are kept in the store too, as public files. An agency that brings a certificate of its own
    CA has that CA sign the CSR, then makes the request again with ``request_with_certificate``.
    """
    _aware(now)
    if not store.is_empty():
        raise KeyStoreError(
            f"{store} already holds keys; an agency's store is made once. Use "
            "'cairn agency rotate' for new keys, or move the folder away to start again"
        )
    if agency_id in (BROKER_ID, AUDITOR_ID):
        raise EnrolmentRefused(f"{agency_id} is reserved for a federation service")
    check_new_passphrase(passphrase)
    signing, keys = _new_keys(store, agency_id, passphrase)
    tls = new_tls_key()
    store.write(layout.client_key(agency_id), encrypt_private_key(tls, passphrase), private=True)
    csr = client_csr(tls, agency_id, role.value).public_bytes(Encoding.PEM)
    store.write(csr_name(agency_id), csr, private=False)
    request = EnrolmentRequest(
        kind="enrol",
        agency=agency_id,
        role=role,
        keys=keys,
        csr=csr.decode("ascii"),
        issued_at=now.replace(microsecond=0),
    )
    token = sign_compact(_json(request), signing, typ=ENROLMENT_TYP)
    store.write(request_name(agency_id), token, private=False)
    return token


def request_with_certificate(
    store: Store, agency_id: str, passphrase: bytes, chain_pem: bytes, *, now: datetime
) -> bytes:
    """The agency's enrolment request again, carrying the certificate its own CA issued for
    its CSR, signed again by its signing key."""
    _aware(now)
    pending = read_enrolment(store.read(request_name(agency_id)))
    leaf = _one_certificate(chain_pem, what="the certificate")
    csr = x509.load_pem_x509_csr(store.read(csr_name(agency_id)))
    if _public_der(leaf.public_key()) != _public_der(csr.public_key()):
        raise KeyStoreError(f"the certificate is not for {agency_id}'s TLS key (its CSR's)")
    _check_names_agency(leaf, agency_id)
    kid = pending.key(KeyUse.SIGNING).kid
    name = layout.member_key(agency_id, kid)
    signing = load_signing_key(store.read(name), passphrase, name=name)
    request = EnrolmentRequest.model_validate(
        {
            **pending.model_dump(),
            "certificate": chain_pem.decode("ascii"),
            "issued_at": now.replace(microsecond=0),
        }
    )
    token = sign_compact(_json(request), signing, typ=ENROLMENT_TYP)
    store.write(request_name(agency_id), token, private=False)
    return token


def install_certificate(
    store: Store,
    agency_id: str,
    certificate_pem: bytes,
    *,
    issuers: tuple[x509.Certificate, ...],
    now: datetime,
) -> x509.Certificate:
    """Check the certificate the administrator sent back and keep it as the agency's own.

    It must be for the TLS key this store made (the CSR's), name the agency, be valid now and
    be directly issued by one of ``issuers`` (the federation CA, or the agency's own CA).
    """
    _aware(now)
    certificate = _one_certificate(certificate_pem, what="the certificate")
    key = _public_der(certificate.public_key())
    csr = x509.load_pem_x509_csr(store.read(csr_name(agency_id)))
    rotated = None
    if key != _public_der(csr.public_key()) and store.exists(next_csr_name(agency_id)):
        rotated = x509.load_pem_x509_csr(store.read(next_csr_name(agency_id)))
    if key != _public_der(csr.public_key()) and (
        rotated is None or key != _public_der(rotated.public_key())
    ):
        raise KeyStoreError(
            f"the certificate is not for {agency_id}'s TLS key in {store}; was it issued for "
            "another request?"
        )
    _check_names_agency(certificate, agency_id)
    _check_valid(certificate, now)
    if not any(_issued_by(certificate, ca) for ca in issuers):
        raise KeyStoreError(
            "the certificate is not issued by the federation CA (or the agency's own CA)"
        )
    if rotated is not None:
        # The rotation's TLS key takes the place of the old one, then its certificate.
        store.write(
            layout.client_key(agency_id), store.read(next_tls_key_name(agency_id)), private=True
        )
        store.write(csr_name(agency_id), store.read(next_csr_name(agency_id)), private=False)
    store.write(layout.client_cert(agency_id), certificate_pem, private=False)
    return certificate


def rotation_request(
    store: Store,
    agency_id: str,
    passphrase: bytes,
    registry: Registry,
    *,
    now: datetime,
    tls: bool = False,
) -> bytes:
    """New keys in the agency's ``store`` and the request to register them, signed by the new
    signing key inside a JWS by the agency's current registered signing key. With ``tls``, a
    new TLS key too, and a CSR for it in the request: the current TLS key and certificate stay
    in use until the certificate for the new one is installed."""
    _aware(now)
    member = registry.member(agency_id)
    if member is None or not isinstance(member.role, AgencyRole):
        raise KeyStoreError(f"{agency_id} is not an agency in the registry; enrol it first")
    current_entry = member.active_key(KeyUse.SIGNING)
    if current_entry is None:
        raise KeyStoreError(
            f"{agency_id} has no active signing key to sign a rotation request with; the "
            "administrator must revoke and re-admit it"
        )
    registry.check_key(agency_id, current_entry.kid, KeyUse.SIGNING, now=now)
    name = layout.member_key(agency_id, current_entry.kid)
    current = load_signing_key(store.read(name), passphrase, name=name)
    signing, keys = _new_keys(store, agency_id, passphrase)
    csr = None
    if tls:
        key = new_tls_key()
        store.write(
            next_tls_key_name(agency_id), encrypt_private_key(key, passphrase), private=True
        )
        csr = client_csr(key, agency_id, member.role.value).public_bytes(Encoding.PEM)
        store.write(next_csr_name(agency_id), csr, private=False)
    request = EnrolmentRequest(
        kind="rotate",
        agency=agency_id,
        role=member.role,
        keys=keys,
        csr=csr.decode("ascii") if csr is not None else None,
        issued_at=now.replace(microsecond=0),
    )
    inner = sign_compact(_json(request), signing, typ=ENROLMENT_TYP)
    token = sign_compact(inner, current, typ=ROTATION_TYP)
    store.write(rotation_name(agency_id), token, private=False)
    return token


def revocation_request(
    store: Store,
    agency_id: str,
    kid: str,
    passphrase: bytes,
    registry: Registry,
    *,
    now: datetime,
) -> bytes:
    """A request to revoke the agency's key ``kid``, signed by its active signing key (or by
    ``kid`` itself, if that is the signing key being revoked and no other is active)."""
    _aware(now)
    member = registry.member(agency_id)
    if member is None:
        raise KeyStoreError(f"{agency_id} is not a member of the registry")
    signer = member.active_key(KeyUse.SIGNING)
    if signer is None:
        raise KeyStoreError(f"{agency_id} has no active signing key to sign the request with")
    registry.check_key(agency_id, signer.kid, KeyUse.SIGNING, now=now)
    name = layout.member_key(agency_id, signer.kid)
    key = load_signing_key(store.read(name), passphrase, name=name)
    request = RevocationRequest(agency=agency_id, kid=kid, issued_at=now.replace(microsecond=0))
    return sign_compact(_json(request), key, typ=REVOCATION_TYP)


# --- The administrator's side ----------------------------------------------------------------


def _unverified_payload(token: bytes, typ: str) -> tuple[str, bytes]:
    """The kid and payload of a compact JWS, before its signature is checked."""
    header = read_header(token, jwe_token=False, max_bytes=MAX_REQUEST_BYTES)
    if header.get("typ") != typ:
        raise EnrolmentRefused(f"this is not a {typ} request (its type is {header.get('typ')!r})")
    try:
        return str(header["kid"]), b64url_decode(token.split(b".")[1])
    except ValueError:
        raise EnrolmentRefused("the request's payload is not base64url") from None


def _parse(model: type[EnrolmentRequest], payload: bytes) -> EnrolmentRequest:
    try:
        return model.model_validate_json(payload)
    except ValidationError as exc:
        where = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'request'}: {e['msg']}"
            for e in exc.errors()[:3]
        )
        raise EnrolmentRefused(f"the request is not a valid enrolment request ({where})") from None


def read_enrolment(token: bytes, *, typ: str = ENROLMENT_TYP) -> EnrolmentRequest:
    """The request in ``token`` if it is signed by the signing key it carries.

    That signature is the proof of possession: only the holder of the private key could make
    it. Raises ``EnrolmentRefused`` saying what is wrong.
    """
    raw = token.strip()
    try:
        kid, payload = _unverified_payload(raw, typ)
    except VerificationError as exc:
        raise EnrolmentRefused(f"the request is not a signed request: {exc}") from None
    request = _parse(EnrolmentRequest, payload)
    own = request.key(KeyUse.SIGNING)

    def key_for(header_kid: str) -> Ed25519PublicKey:
        if header_kid != own.kid:
            raise VerificationError(
                Reason.WRONG_SIGNER,
                f"signed by key {header_kid}, not by the signing key it asks to register",
            )
        public = own.jwk.public_key()
        assert isinstance(public, Ed25519PublicKey)  # RequestKey checks the curve
        return public

    if kid != own.kid:
        raise EnrolmentRefused(
            f"bad proof of possession: the request is signed by key {kid}, not by the signing "
            f"key {own.kid} it asks to register"
        )
    try:
        verify_compact(raw, key_for, typ=typ, max_bytes=MAX_REQUEST_BYTES)
    except VerificationError as exc:
        raise EnrolmentRefused(
            f"bad proof of possession: the request's signature by its own signing key does not "
            f"verify ({exc.reason.value}); it was altered, or not made by 'cairn agency init'"
        ) from None
    return request


def _aware(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise TypeError("now must be timezone-aware")


def _check_fresh(issued_at: datetime, now: datetime) -> None:
    if issued_at > now + CLOCK_SKEW:
        raise EnrolmentRefused("the request is dated in the future; check the agency's clock")
    if now - issued_at > MAX_REQUEST_AGE:
        raise EnrolmentRefused(
            f"the request was made on {issued_at:%Y-%m-%d}, more than "
            f"{MAX_REQUEST_AGE.days} days ago; ask the agency for a new one"
        )


def _check_member(federation: Federation, agency_id: str, role: AgencyRole) -> str:
    """The agency's name from agencies.yaml, if it lists the agency with this role."""
    if agency_id in (BROKER_ID, AUDITOR_ID):
        raise EnrolmentRefused(f"{agency_id} is reserved for a federation service")
    agency = federation.get(agency_id)
    if agency is None:
        raise EnrolmentRefused(
            f"{agency_id!r} is not an agency of {federation.name} (agencies.yaml); add it "
            "there before enrolling it"
        )
    if agency.role is not role:
        raise EnrolmentRefused(
            f"{agency_id} may not claim the role '{role.value}': agencies.yaml lists it as "
            f"'{agency.role.value}'"
        )
    return agency.name


def _check_new_kids(registry: Registry, keys: tuple[RequestKey, ...]) -> None:
    for key in keys:
        found = registry.owner_of(key.kid)
        if found is not None:
            raise EnrolmentRefused(
                f"key {key.kid} is already registered (to {found[0].id}); a request is "
                "applied once, and keys are never reused"
            )


def _registered(
    keys: tuple[RequestKey, ...], now: datetime, life: Lifetimes
) -> tuple[RegisteredKey, ...]:
    return tuple(
        RegisteredKey(
            kid=k.kid,
            use=k.use,
            jwk=k.jwk,
            not_before=now,
            not_after=now + life.key,
            status=KeyStatus.ACTIVE,
        )
        for k in keys
    )


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(Encoding.PEM)


def _public_der(key: Any) -> bytes:
    return bytes(key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo))


def _one_certificate(pem: bytes, *, what: str) -> x509.Certificate:
    try:
        found = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise KeyStoreError(f"{what} is not a PEM certificate") from None
    return found[0]


def _check_names_agency(certificate: x509.Certificate, agency_id: str) -> None:
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or names[0].value != agency_id:
        raise KeyStoreError(f"the certificate's subject does not name {agency_id} as its one CN")
    try:
        usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usage:
        raise KeyStoreError("the certificate is not for TLS client authentication")


def _check_valid(certificate: x509.Certificate, now: datetime) -> None:
    if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        raise KeyStoreError("the certificate is not valid now")


def _issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _check_csr(request: EnrolmentRequest) -> x509.CertificateSigningRequest:
    assert request.csr is not None  # the model requires it to enrol
    try:
        csr = x509.load_pem_x509_csr(request.csr.encode("ascii"))
    except ValueError:
        raise EnrolmentRefused(
            "the request's CSR is not a PEM certificate signing request"
        ) from None
    if not csr.is_signature_valid:
        raise EnrolmentRefused(
            "bad proof of possession: the CSR's signature by its TLS key does not verify"
        )
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, _TLS_CURVES):
        raise EnrolmentRefused("the CSR's key must be ECDSA on P-256 or P-384")
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or names[0].value != request.agency:
        raise EnrolmentRefused(f"the CSR does not name {request.agency} as its one CN")
    return csr


def _own_ca_certificate(
    request: EnrolmentRequest,
    csr: x509.CertificateSigningRequest,
    trusted: tuple[x509.Certificate, ...],
    now: datetime,
) -> tuple[bytes, x509.Certificate]:
    """The agency's certificate of its own CA, and that CA, if the federation trusts it for
    the agency."""
    assert request.certificate is not None
    if not trusted:
        raise EnrolmentRefused(
            f"{request.agency} brings a certificate of its own CA, but agencies.yaml lists no "
            "CA trusted for it (trusted_ca)"
        )
    try:
        chain = x509.load_pem_x509_certificates(request.certificate.encode("ascii"))
    except ValueError:
        raise EnrolmentRefused("the request's certificate is not PEM") from None
    leaf = chain[0]
    try:
        _check_names_agency(leaf, request.agency)
        _check_valid(leaf, now)
    except KeyStoreError as exc:
        raise EnrolmentRefused(str(exc)) from None
    if _public_der(leaf.public_key()) != _public_der(csr.public_key()):
        raise EnrolmentRefused("the agency's certificate is not for the key of its CSR")
    # The trusted CA issues the agency's certificate itself: that is what the broker checks
    # at every connection (keys.tls.peer_agency), where only the leaf is at hand.
    issuer = next((ca for ca in trusted if _issued_by(leaf, ca)), None)
    if issuer is None:
        raise EnrolmentRefused(
            f"{request.agency}'s certificate is not issued by the CA agencies.yaml trusts for it"
        )
    return leaf.public_bytes(Encoding.PEM), issuer


def enrol(
    admin: Admin,
    ca: IssuedCertificate,
    federation: Federation,
    token: bytes,
    *,
    now: datetime,
    lifetimes: Lifetimes | None = None,
    trusted_cas: tuple[x509.Certificate, ...] = (),
    deliver: Callable[[bytes], None] | None = None,
) -> Enrolled:
    """Admit the agency whose enrolment request is ``token``; publish the next registry serial.

    Every check comes first; ``deliver`` (which writes the certificate for the agency) is
    called before the registry is published, so a failure there publishes nothing either.
    ``trusted_cas`` are the CAs agencies.yaml trusts for this agency's own certificates.
    """
    _aware(now)
    life = lifetimes or Lifetimes()
    request = read_enrolment(token)
    if request.kind != "enrol":
        raise EnrolmentRefused(
            "this is a rotation request; apply it with 'cairn federation rotate'"
        )
    _check_fresh(request.issued_at, now)
    name = _check_member(federation, request.agency, request.role)
    csr = _check_csr(request)
    root, registry = admin.open()
    if registry.member(request.agency) is not None:
        raise EnrolmentRefused(
            f"{request.agency} is enrolled already (registry serial {registry.serial}); it "
            "changes its keys with a rotation request"
        )
    _check_new_kids(registry, request.keys)
    own_ca: x509.Certificate | None = None
    if request.certificate is not None:
        pem, own_ca = _own_ca_certificate(request, csr, trusted_cas, now)
        by_federation = False
    else:
        public = csr.public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey)  # _check_csr
        pem = issue_client_certificate_for(
            ca,
            public,
            request.agency,
            request.role.value,
            registry.federation,
            now=now,
            validity=life.certificate,
        ).public_bytes(Encoding.PEM)
        by_federation = True
    member = Member(
        id=request.agency, name=name, role=request.role, keys=_registered(request.keys, now, life)
    )
    if deliver is not None:
        deliver(pem)
    # An own CA is published beside the federation CA, so the broker accepts this agency's
    # certificate (and only this agency's: keys.tls.peer_agency binds the CA to the agency).
    files = () if own_ca is None else ((agency_ca_name(request.agency), _pem(own_ca)),)
    published = admin.publish(root, registry, (*registry.members, member), now, life, files=files)
    return Enrolled(request.agency, published, pem, by_federation)


def apply_rotation(
    admin: Admin,
    token: bytes,
    *,
    now: datetime,
    lifetimes: Lifetimes | None = None,
    ca: IssuedCertificate | None = None,
    deliver: Callable[[bytes], None] | None = None,
) -> Registry:
    """Register the new keys of a rotation request; the agency's old keys become retired.

    The outer signature must be by the agency's current active signing key in the registry,
    the inner one by the new signing key it asks to register. A request with a CSR (a new TLS
    key) is also issued a certificate by ``ca``, handed to ``deliver`` before the registry is
    published.
    """
    _aware(now)
    life = lifetimes or Lifetimes()
    raw = token.strip()
    try:
        signer_kid, inner = _unverified_payload(raw, ROTATION_TYP)
    except VerificationError as exc:
        raise EnrolmentRefused(f"the request is not a signed rotation request: {exc}") from None
    request = read_enrolment(inner)
    if request.kind != "rotate":
        raise EnrolmentRefused("the inner request is not a rotation request")
    _check_fresh(request.issued_at, now)
    root, registry = admin.open()
    member = registry.member(request.agency)
    if member is None:
        raise EnrolmentRefused(f"{request.agency} is not enrolled; it must enrol first")
    current = member.active_key(KeyUse.SIGNING)
    if current is None or current.kid != signer_kid:
        owner = registry.owner_of(signer_kid)
        whose = f"a key of {owner[0].id}" if owner else "a key the registry does not hold"
        raise EnrolmentRefused(
            f"the rotation request for {request.agency} is not signed by its current "
            f"registered signing key (it is signed by {signer_kid}, {whose})"
        )
    try:
        verify_compact(
            raw,
            lambda kid: registry.verification_key(request.agency, kid, now=now),
            typ=ROTATION_TYP,
            max_bytes=MAX_REQUEST_BYTES,
        )
    except VerificationError as exc:
        raise EnrolmentRefused(
            f"the rotation request's signature by {request.agency}'s current key does not "
            f"verify ({exc.reason.value})"
        ) from None
    if request.role != member.role:
        raise EnrolmentRefused(f"a rotation cannot change {request.agency}'s role")
    _check_new_kids(registry, request.keys)
    pem = None
    if request.csr is not None:
        if ca is None:
            raise EnrolmentRefused(
                "the rotation asks for a certificate for a new TLS key: it needs the CA store"
            )
        public = _check_csr(request).public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey)  # _check_csr
        pem = issue_client_certificate_for(
            ca,
            public,
            request.agency,
            request.role.value,
            registry.federation,
            now=now,
            validity=life.certificate,
        ).public_bytes(Encoding.PEM)
    rotated = rotated_member(member, _registered(request.keys, now, life), now)
    members = tuple(rotated if m.id == member.id else m for m in registry.members)
    if pem is not None and deliver is not None:
        deliver(pem)
    return admin.publish(root, registry, members, now, life)


def apply_revocation(
    admin: Admin, token: bytes, *, now: datetime, lifetimes: Lifetimes | None = None
) -> Registry:
    """Revoke the key an agency's revocation request names, if one of its keys signed it."""
    _aware(now)
    life = lifetimes or Lifetimes()
    raw = token.strip()
    try:
        signer_kid, payload = _unverified_payload(raw, REVOCATION_TYP)
        request = RevocationRequest.model_validate_json(payload)
    except VerificationError as exc:
        raise EnrolmentRefused(f"the request is not a signed revocation request: {exc}") from None
    except ValidationError:
        raise EnrolmentRefused("the request is not a valid revocation request") from None
    _check_fresh(request.issued_at, now)
    root, registry = admin.open()
    try:
        verify_compact(
            raw,
            lambda kid: registry.verification_key(request.agency, kid, now=now),
            typ=REVOCATION_TYP,
            max_bytes=MAX_REQUEST_BYTES,
        )
    except VerificationError as exc:
        raise EnrolmentRefused(
            f"the revocation request is not signed by a usable key of {request.agency} "
            f"(key {signer_kid}: {exc.reason.value})"
        ) from None
    member = registry.member(request.agency)
    assert member is not None  # verification_key found its key
    entry = next((k for k in member.keys if k.kid == request.kid), None)
    if entry is None:
        raise EnrolmentRefused(f"{request.agency} has no key {request.kid}")
    if entry.status is KeyStatus.REVOKED:
        raise EnrolmentRefused(f"key {request.kid} of {request.agency} is already revoked")
    revoked = RegisteredKey.model_validate(
        {**entry.model_dump(), "status": KeyStatus.REVOKED, "revoked_at": now}
    )
    keys = tuple(revoked if k.kid == request.kid else k for k in member.keys)
    members = tuple(
        Member(id=m.id, name=m.name, role=m.role, keys=keys) if m.id == member.id else m
        for m in registry.members
    )
    return admin.publish(root, registry, members, now, life)


def load_ca(store: Store, passphrase: bytes) -> IssuedCertificate:
    """The federation CA's key and certificate from the CA store."""
    from keys.store import decrypt_private_key

    key = decrypt_private_key(store.read(layout.CA_KEY), passphrase, name=layout.CA_KEY)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KeyStoreError(f"{layout.CA_KEY} is not an ECDSA key")
    certificate = x509.load_pem_x509_certificate(store.read(layout.CA_CERT))
    if _public_der(certificate.public_key()) != _public_der(key.public_key()):
        raise KeyStoreError(f"{layout.CA_KEY} is not the key of {layout.CA_CERT}")
    return IssuedCertificate(key, certificate)
