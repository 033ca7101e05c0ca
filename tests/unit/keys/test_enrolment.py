"""Enrolment: an agency makes its own keys, the administrator admits it from its request alone.

Each refusal is checked for what it must leave alone: the published registry (same bytes,
same serial), and every file of every store (same names, same bytes), and no certificate
delivered.
"""

from __future__ import annotations

import functools
import hashlib
import json
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding

from broker.trust import TrustStore
from keys import custody as names
from keys.custody import Custody, agency_store
from keys.development import HUB_STORES, init_development
from keys.enrolment import (
    ENROLMENT_TYP,
    EnrolmentRequest,
    agency_ca_name,
    apply_revocation,
    apply_rotation,
    create_agency,
    csr_name,
    enrol,
    install_certificate,
    load_ca,
    read_enrolment,
    request_with_certificate,
    revocation_request,
    rotation_request,
)
from keys.errors import EnrolmentRefused, KeyStoreError, VerificationError
from keys.federation import Admin, init_hub, load_registry
from keys.jose import sign_compact
from keys.jwk import SigningKey, b64url_decode, b64url_encode
from keys.pki import (
    IssuedCertificate,
    issue_ca,
    issue_client_certificate,
    issue_client_certificate_for,
)
from keys.registry import BROKER_ID, KeyStatus, KeyUse, Registry
from keys.store import (
    CA_CERT,
    REGISTRY,
    client_cert,
    encrypt_private_key,
    load_signing_key,
    member_key,
)
from keys.tls import client_context, peer_agency, server_context
from schemas.federation import AgencyRole, Federation
from tests.unit.keys.conftest import NOW, SMALL

LATER = NOW + timedelta(hours=1)


@dataclass
class Partnership:
    """A federation with no agency yet, its stores side by side in one folder."""

    custody: Custody
    admin: Admin
    federation: Federation

    @property
    def folder(self) -> Path:
        return self.custody.key_dir.parent

    def registry(self) -> Registry:
        return load_registry(self.custody.public(), now=LATER)

    def request(self, agency_id: str, role: AgencyRole) -> bytes:
        """The agency's side: its own store and passphrase, and its enrolment request."""
        name = agency_store(agency_id)
        store = self.custody.store(name)
        return create_agency(store, agency_id, role, self.custody.new_passphrase(name), now=NOW)

    def enrol(self, token: bytes, **extra: object) -> bytes:
        """The administrator's side; returns the certificate it issued."""
        ca = load_ca(self.custody.store(names.CA), self.custody.passphrase(names.CA))
        # NOW: TLS checks the certificate it issues against the real clock.
        done = enrol(self.admin, ca, self.federation, token, now=NOW, **extra)  # type: ignore[arg-type]
        return done.certificate_pem

    def install(self, agency_id: str, pem: bytes) -> None:
        issuers = (x509.load_pem_x509_certificate(self.custody.public().read(CA_CERT)),)
        store = self.custody.store(agency_store(agency_id))
        install_certificate(store, agency_id, pem, issuers=issuers, now=LATER)

    def join(self, agency_id: str, role: AgencyRole) -> None:
        self.install(agency_id, self.enrol(self.request(agency_id, role)))

    def trust(self, agency_id: str) -> TrustStore:
        return TrustStore(
            self.custody.member_store(agency_id),
            self.custody.passphrase(agency_store(agency_id)),
            member_id=agency_id,
            clock=lambda: LATER,
        )


@pytest.fixture
def partnership(tmp_path: Path) -> Partnership:
    custody = Custody(tmp_path / "keys", tmp_path / "passphrases")
    stores = {n: (custody.store(n), custody.new_passphrase(n)) for n in HUB_STORES}
    init_hub(stores, custody.public(), SMALL.name, now=NOW)
    admin = Admin(custody.store(names.ROOT), custody.passphrase(names.ROOT), custody.public())
    return Partnership(custody, admin, SMALL)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` and a hash of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def refused_without_change(
    partnership: Partnership, act: Callable[[], object], match: str
) -> EnrolmentRefused:
    """``act`` raises EnrolmentRefused matching ``match``, and not one file changed."""
    before = snapshot(partnership.folder)
    serial = partnership.registry().serial
    with pytest.raises(EnrolmentRefused, match=match) as caught:
        act()
    assert partnership.registry().serial == serial
    assert snapshot(partnership.folder) == before
    assert "Traceback" not in str(caught.value)
    return caught.value


def _payload(token: bytes) -> dict[str, object]:
    return json.loads(b64url_decode(token.split(b".")[1]))  # type: ignore[no-any-return]


def _with_payload(token: bytes, payload: dict[str, object]) -> bytes:
    header, _, signature = token.split(b".")
    body = b64url_encode(json.dumps(payload).encode()).encode()
    return b".".join((header, body, signature))


def _handshake(
    server: ssl.SSLContext,
    client: ssl.SSLContext,
    hostname: str,
    *,
    raise_from_server: bool = False,
) -> tuple[str | None, BaseException | None]:
    """A TLS handshake over a socket pair: the agency ``peer_agency`` names, or the error (the
    server's refusal is raised with ``raise_from_server``)."""
    left, right = socket.socketpair()
    seen: list[str] = []
    errors: list[BaseException] = []
    refused: list[VerificationError] = []

    def serve() -> None:
        try:
            with server.wrap_socket(left, server_side=True) as tls:
                try:
                    seen.append(peer_agency(tls))
                except VerificationError as exc:
                    refused.append(exc)
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
    if refused and raise_from_server:
        raise refused[0]
    return (seen[0] if seen else None), (errors[0] if errors else None)


# --- The round trip ----------------------------------------------------------------------------


def test_enrolment_admits_the_agency_with_its_own_keys(partnership: Partnership) -> None:
    """The registry gains the agency with the keys of its request and a new serial; its
    certificate is for its own TLS key, and it signs and opens with keys only it holds."""
    token = partnership.request("test-police", AgencyRole.POLICE)
    asked = read_enrolment(token)
    before = partnership.registry()
    pem = partnership.enrol(token)
    after = partnership.registry()
    assert after.serial == before.serial + 1
    police = after.member("test-police")
    assert police is not None
    assert police.role is AgencyRole.POLICE
    assert police.name == "Test Constabulary"  # agencies.yaml's name, not the request's
    assert {k.kid for k in police.keys} == {k.kid for k in asked.keys}
    assert all(k.status is KeyStatus.ACTIVE for k in police.keys)

    certificate = x509.load_pem_x509_certificate(pem)
    csr = x509.load_pem_x509_csr(
        partnership.custody.store(agency_store("test-police")).read(csr_name("test-police"))
    )
    assert certificate.public_key() == csr.public_key()
    ca = x509.load_pem_x509_certificate(partnership.custody.public().read(CA_CERT))
    certificate.verify_directly_issued_by(ca)
    partnership.install("test-police", pem)

    trust = partnership.trust("test-police")
    assert trust.signing_key().kid == asked.key(KeyUse.SIGNING).kid
    assert [k.kid for k in trust.decryption_keys()] == [asked.key(KeyUse.ENCRYPTION).kid]


def test_the_administrator_never_holds_an_agency_private_key(partnership: Partnership) -> None:
    """Every private key file of the agency is in its own store, none in any hub store."""
    partnership.join("test-police", AgencyRole.POLICE)
    own = partnership.custody.folder(agency_store("test-police"))
    registry = partnership.registry()
    police = registry.member("test-police")
    assert police is not None
    for key in police.keys:
        assert (own / member_key("test-police", key.kid)).is_file()
    for hub in (*HUB_STORES, names.PUBLIC):
        folder = partnership.custody.folder(hub)
        assert not [p for p in folder.rglob("*") if "test-police" in p.name and p.suffix == ".key"]


def test_a_certificate_for_another_key_is_not_installed(partnership: Partnership) -> None:
    """The agency refuses a certificate that is not for its own TLS key."""
    partnership.request("test-police", AgencyRole.POLICE)
    ca = load_ca(partnership.custody.store(names.CA), partnership.custody.passphrase(names.CA))
    other = issue_client_certificate(
        ca, "test-police", "police", SMALL.name, now=NOW, validity=timedelta(days=1)
    )
    with pytest.raises(KeyStoreError, match="not for test-police's TLS key"):
        partnership.install("test-police", other.certificate_pem())
    store = partnership.custody.store(agency_store("test-police"))
    assert not store.exists(client_cert("test-police"))


def test_the_development_federation_is_made_through_enrolment(tmp_path: Path) -> None:
    """Every agency of agencies.yaml has its keys in its own store, with its own passphrase,
    and the registry's serial counts one enrolment per agency."""
    custody = Custody(tmp_path / "keys", tmp_path / "passphrases")
    registry, admitted = init_development(custody, SMALL, now=NOW)
    assert registry.serial == 1 + len(SMALL.agencies)
    assert [a.agency for a in admitted] == [a.id for a in SMALL.agencies]
    stores = [*HUB_STORES, *(agency_store(a.id) for a in SMALL.agencies)]
    passphrases = [custody.passphrase(n) for n in stores]
    assert len(set(passphrases)) == len(stores)  # one of its own each
    assert not (custody.key_dir / REGISTRY).exists()  # not an all-in-one store
    for agency in SMALL.agencies:
        store = custody.store(agency_store(agency.id))
        assert store.exists(client_cert(agency.id))


# --- Refusals: each changes nothing -----------------------------------------------------------


def test_an_id_not_in_agencies_yaml_is_refused(partnership: Partnership) -> None:
    token = partnership.request("test-refuge", AgencyRole.IDVA)
    refused_without_change(
        partnership, lambda: partnership.enrol(token), "'test-refuge' is not an agency of"
    )


def test_a_role_the_agency_may_not_claim_is_refused(partnership: Partnership) -> None:
    token = partnership.request("test-nhs", AgencyRole.POLICE)
    refused_without_change(
        partnership,
        lambda: partnership.enrol(token),
        "test-nhs may not claim the role 'police': agencies.yaml lists it as 'nhs_safeguarding'",
    )


def test_a_request_altered_after_signing_fails_its_proof_of_possession(
    partnership: Partnership,
) -> None:
    """Changing the claimed role after signing breaks the signature by the request's key."""
    token = partnership.request("test-nhs", AgencyRole.POLICE)
    payload = _payload(token)
    payload["role"] = "nhs_safeguarding"
    forged = _with_payload(token, payload)
    refused_without_change(
        partnership, lambda: partnership.enrol(forged), "bad proof of possession"
    )


def test_a_request_signed_by_a_key_it_does_not_register_is_refused(
    partnership: Partnership,
) -> None:
    """Someone who copies an agency's public keys into a request cannot sign it for them."""
    token = partnership.request("test-police", AgencyRole.POLICE)
    intruder = SigningKey(Ed25519PrivateKey.generate())
    resigned = sign_compact(b64url_decode(token.split(b".")[1]), intruder, typ=ENROLMENT_TYP)
    refused_without_change(
        partnership, lambda: partnership.enrol(resigned), "bad proof of possession"
    )


def test_a_csr_not_signed_by_its_key_is_refused(partnership: Partnership) -> None:
    """A CSR whose signature does not verify is no proof of holding the TLS key."""
    name = agency_store("test-police")
    store = partnership.custody.store(name)
    token = partnership.request("test-police", AgencyRole.POLICE)
    request = read_enrolment(token)
    assert request.csr is not None
    der = bytearray(x509.load_pem_x509_csr(request.csr.encode()).public_bytes(Encoding.DER))
    der[-3] ^= 0x01  # a bit of the signature
    bad_csr = x509.load_der_x509_csr(bytes(der)).public_bytes(Encoding.PEM).decode()
    kid = request.key(KeyUse.SIGNING).kid
    signing = load_signing_key(
        store.read(member_key("test-police", kid)),
        partnership.custody.passphrase(name),
        name="k",
    )
    tampered = EnrolmentRequest.model_validate({**request.model_dump(), "csr": bad_csr})
    resigned = sign_compact(tampered.model_dump_json().encode(), signing, typ=ENROLMENT_TYP)
    refused_without_change(
        partnership, lambda: partnership.enrol(resigned), "CSR's signature by its TLS key"
    )


def test_not_a_request_at_all_is_refused(partnership: Partnership) -> None:
    for junk in (b"", b"hello", b"a.b.c", b'{"kind": "enrol"}'):
        refused_without_change(partnership, functools.partial(partnership.enrol, junk), "request")


def test_enrolling_twice_is_refused(partnership: Partnership) -> None:
    token = partnership.request("test-police", AgencyRole.POLICE)
    partnership.enrol(token)
    refused_without_change(partnership, lambda: partnership.enrol(token), "enrolled already")


def test_a_stale_request_is_refused(partnership: Partnership) -> None:
    token = partnership.request("test-police", AgencyRole.POLICE)
    ca = load_ca(partnership.custody.store(names.CA), partnership.custody.passphrase(names.CA))
    later = NOW + timedelta(days=31)
    refused_without_change(
        partnership,
        lambda: enrol(partnership.admin, ca, SMALL, token, now=later),
        "more than 30 days ago",
    )


def test_nothing_is_published_when_the_certificate_cannot_be_delivered(
    partnership: Partnership,
) -> None:
    token = partnership.request("test-police", AgencyRole.POLICE)
    serial = partnership.registry().serial

    def fail(_pem: bytes) -> None:
        raise KeyStoreError("cannot write the certificate")

    with pytest.raises(KeyStoreError):
        partnership.enrol(token, deliver=fail)
    assert partnership.registry().serial == serial


# --- Rotation and revocation ------------------------------------------------------------------


def _rotation(partnership: Partnership, agency_id: str) -> bytes:
    name = agency_store(agency_id)
    return rotation_request(
        partnership.custody.member_store(agency_id),
        agency_id,
        partnership.custody.passphrase(name),
        partnership.registry(),
        now=LATER,
    )


def test_rotation_signed_by_the_current_key_replaces_the_keys(partnership: Partnership) -> None:
    partnership.join("test-police", AgencyRole.POLICE)
    old = partnership.trust("test-police").signing_key().kid
    token = _rotation(partnership, "test-police")
    rotated = apply_rotation(partnership.admin, token, now=LATER)
    police = rotated.member("test-police")
    assert police is not None
    status = {k.kid: k.status for k in police.keys}
    assert status[old] is KeyStatus.RETIRED
    new = police.active_key(KeyUse.SIGNING)
    assert new is not None
    assert new.kid != old
    assert partnership.trust("test-police").signing_key().kid == new.kid
    # Applied once: a replay finds its keys registered and the signer retired.
    refused_without_change(
        partnership,
        lambda: apply_rotation(partnership.admin, token, now=LATER),
        "not signed by its current registered signing key",
    )


def test_rotation_signed_by_another_agency_is_refused(partnership: Partnership) -> None:
    """A rotation request for the police wrapped in the NHS trust's signature is refused."""
    partnership.join("test-police", AgencyRole.POLICE)
    partnership.join("test-nhs", AgencyRole.NHS_SAFEGUARDING)
    genuine = _rotation(partnership, "test-police")
    inner = b64url_decode(genuine.split(b".")[1])
    nhs = partnership.trust("test-nhs").signing_key()
    wrapped = sign_compact(inner, nhs, typ="cairn-rotation+jws")
    refused_without_change(
        partnership,
        lambda: apply_rotation(partnership.admin, wrapped, now=LATER),
        "not signed by its current registered signing key .* a key of test-nhs",
    )


def test_rotation_signed_by_an_unregistered_key_is_refused(partnership: Partnership) -> None:
    partnership.join("test-police", AgencyRole.POLICE)
    genuine = _rotation(partnership, "test-police")
    inner = b64url_decode(genuine.split(b".")[1])
    # The new signing key (registered by nobody yet) signs its own rotation: not enough.
    new_kid = read_enrolment(inner).key(KeyUse.SIGNING).kid
    store = partnership.custody.store(agency_store("test-police"))
    new = load_signing_key(
        store.read(member_key("test-police", new_kid)),
        partnership.custody.passphrase(agency_store("test-police")),
        name="k",
    )
    wrapped = sign_compact(inner, new, typ="cairn-rotation+jws")
    refused_without_change(
        partnership,
        lambda: apply_rotation(partnership.admin, wrapped, now=LATER),
        "a key the registry does not hold",
    )


def test_rotation_with_a_forged_inner_request_is_refused(partnership: Partnership) -> None:
    """The current key's signature does not excuse the new key's missing proof."""
    partnership.join("test-police", AgencyRole.POLICE)
    genuine = _rotation(partnership, "test-police")
    inner = b64url_decode(genuine.split(b".")[1])
    payload = _payload(inner)
    payload["issued_at"] = LATER.isoformat()
    forged_inner = _with_payload(inner, payload)
    current = partnership.trust("test-police").signing_key()
    wrapped = sign_compact(forged_inner, current, typ="cairn-rotation+jws")
    refused_without_change(
        partnership,
        lambda: apply_rotation(partnership.admin, wrapped, now=LATER),
        "bad proof of possession",
    )


def test_revocation_at_the_agency_request(partnership: Partnership) -> None:
    partnership.join("test-police", AgencyRole.POLICE)
    registry = partnership.registry()
    police = registry.member("test-police")
    assert police is not None
    enc = police.active_key(KeyUse.ENCRYPTION)
    assert enc is not None
    name = agency_store("test-police")
    token = revocation_request(
        partnership.custody.member_store("test-police"),
        "test-police",
        enc.kid,
        partnership.custody.passphrase(name),
        registry,
        now=LATER,
    )
    revoked = apply_revocation(partnership.admin, token, now=LATER)
    after = revoked.member("test-police")
    assert after is not None
    assert {k.kid: k.status for k in after.keys}[enc.kid] is KeyStatus.REVOKED


def test_revocation_signed_by_another_agency_is_refused(partnership: Partnership) -> None:
    partnership.join("test-police", AgencyRole.POLICE)
    partnership.join("test-nhs", AgencyRole.NHS_SAFEGUARDING)
    registry = partnership.registry()
    police = registry.member("test-police")
    assert police is not None
    sig = police.active_key(KeyUse.SIGNING)
    assert sig is not None
    # The NHS trust signs a request naming the police's key, claiming to be the police.
    payload = {
        "format": "cairn-enrolment/1",
        "kind": "revoke",
        "agency": "test-police",
        "kid": sig.kid,
        "issued_at": LATER.isoformat(),
    }
    nhs = partnership.trust("test-nhs").signing_key()
    token = sign_compact(json.dumps(payload).encode(), nhs, typ="cairn-revocation+jws")
    refused_without_change(
        partnership,
        lambda: apply_revocation(partnership.admin, token, now=LATER),
        "not signed by a usable key of test-police",
    )


# --- An agency's own CA ---------------------------------------------------------------------


def _own_ca_certificate(partnership: Partnership, agency_id: str, role: str) -> tuple[bytes, bytes]:
    """The agency's own CA (PEM) and the certificate it issues for the agency's CSR."""
    own_ca = issue_ca(f"{agency_id} own", now=NOW, validity=timedelta(days=30))
    store = partnership.custody.store(agency_store(agency_id))
    csr = x509.load_pem_x509_csr(store.read(csr_name(agency_id)))
    public = csr.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    certificate = issue_client_certificate_for(
        own_ca, public, agency_id, role, "its own", now=NOW, validity=timedelta(days=30)
    )
    return own_ca.certificate_pem(), certificate.public_bytes(Encoding.PEM)


def test_a_certificate_of_a_trusted_own_ca_is_accepted(partnership: Partnership) -> None:
    partnership.request("test-police", AgencyRole.POLICE)
    ca_pem, cert_pem = _own_ca_certificate(partnership, "test-police", "police")
    name = agency_store("test-police")
    token = request_with_certificate(
        partnership.custody.store(name),
        "test-police",
        partnership.custody.passphrase(name),
        cert_pem,
        now=NOW,
    )
    trusted = (x509.load_pem_x509_certificate(ca_pem),)
    pem = partnership.enrol(token, trusted_cas=trusted)
    assert x509.load_pem_x509_certificate(pem).issuer == trusted[0].subject
    assert partnership.registry().member("test-police") is not None


def test_an_own_ca_certificate_is_refused_unless_that_ca_is_trusted(
    partnership: Partnership,
) -> None:
    partnership.request("test-police", AgencyRole.POLICE)
    _ca_pem, cert_pem = _own_ca_certificate(partnership, "test-police", "police")
    name = agency_store("test-police")
    token = request_with_certificate(
        partnership.custody.store(name),
        "test-police",
        partnership.custody.passphrase(name),
        cert_pem,
        now=NOW,
    )
    refused_without_change(
        partnership, lambda: partnership.enrol(token), "lists no CA trusted for it"
    )
    another = issue_ca("someone else", now=NOW, validity=timedelta(days=30)).certificate
    refused_without_change(
        partnership,
        lambda: partnership.enrol(token, trusted_cas=(another,)),
        "is not issued by the CA agencies.yaml trusts",
    )


def _enrol_with_own_ca(
    partnership: Partnership, agency_id: str, role: AgencyRole
) -> IssuedCertificate:
    """Enrol ``agency_id`` with a certificate of its own CA (trusted for it); the CA."""
    partnership.request(agency_id, role)
    store = partnership.custody.store(agency_store(agency_id))
    own_ca = issue_ca(f"{agency_id} own", now=NOW, validity=timedelta(days=30))
    csr = x509.load_pem_x509_csr(store.read(csr_name(agency_id)))
    public = csr.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    cert_pem = issue_client_certificate_for(
        own_ca, public, agency_id, role.value, "its own", now=NOW, validity=timedelta(days=30)
    ).public_bytes(Encoding.PEM)
    name = agency_store(agency_id)
    token = request_with_certificate(
        store, agency_id, partnership.custody.passphrase(name), cert_pem, now=NOW
    )
    pem = partnership.enrol(token, trusted_cas=(own_ca.certificate,))
    install_certificate(store, agency_id, pem, issuers=(own_ca.certificate,), now=LATER)
    return own_ca


def test_the_broker_accepts_an_own_ca_certificate_for_its_agency_only(
    partnership: Partnership,
) -> None:
    """With the police's own CA published, the police connects with its certificate; the NHS
    trust's own CA cannot make a certificate the broker takes for the police."""
    _enrol_with_own_ca(partnership, "test-police", AgencyRole.POLICE)
    nhs_ca = _enrol_with_own_ca(partnership, "test-nhs", AgencyRole.NHS_SAFEGUARDING)
    partnership.join("test-idva", AgencyRole.IDVA)
    custody = partnership.custody
    assert custody.public().exists(agency_ca_name("test-police"))
    server = server_context(custody.member_store(BROKER_ID), custody.passphrase(names.BROKER))

    def client(agency_id: str) -> ssl.SSLContext:
        return client_context(
            custody.member_store(agency_id), agency_id, custody.passphrase(agency_store(agency_id))
        )

    for agency_id in ("test-police", "test-nhs", "test-idva"):
        assert _handshake(server, client(agency_id), "localhost") == (agency_id, None)

    # The NHS trust's CA issues a certificate naming the police, for a key the NHS holds.
    forged = issue_client_certificate(
        nhs_ca, "test-police", "police", "its own", now=NOW, validity=timedelta(days=1)
    )
    folder = custody.key_dir.parent / "forger"
    folder.mkdir()
    (folder / "cert.pem").write_bytes(forged.certificate_pem())
    (folder / "key.pem").write_bytes(encrypt_private_key(forged.key, b"forger passphrase 0123"))
    impostor = ssl.create_default_context(cafile=custody.public().path(CA_CERT))
    impostor.load_cert_chain(
        folder / "cert.pem", folder / "key.pem", password=b"forger passphrase 0123"
    )
    with pytest.raises(VerificationError, match="names test-police but is issued by neither"):
        _handshake(server, impostor, "localhost", raise_from_server=True)


def test_two_enrolments_at_once_lose_neither(partnership: Partnership) -> None:
    """An enrolment that opened the registry before another one published is refused, not
    allowed to overwrite it; run again, it is admitted beside the other."""
    ca = load_ca(partnership.custody.store(names.CA), partnership.custody.passphrase(names.CA))
    first = partnership.request("test-police", AgencyRole.POLICE)
    second = partnership.request("test-nhs", AgencyRole.NHS_SAFEGUARDING)
    opened = partnership.admin.open

    def open_then_let_the_other_publish() -> tuple[SigningKey, Registry]:
        got = opened()
        enrol(partnership.admin, ca, SMALL, second, now=NOW)  # the other run, in between
        return got

    racing = Admin(
        partnership.admin.root, partnership.admin.root_passphrase, partnership.admin.public
    )
    object.__setattr__(racing, "open", open_then_let_the_other_publish)
    with pytest.raises(KeyStoreError, match="the registry changed while this ran"):
        enrol(racing, ca, SMALL, first, now=NOW)
    assert partnership.registry().member("test-nhs") is not None
    assert partnership.registry().member("test-police") is None
    enrol(partnership.admin, ca, SMALL, first, now=NOW)
    members = {m.id for m in partnership.registry().members}
    assert {"test-police", "test-nhs"} <= members


def test_rotation_with_a_new_tls_key(partnership: Partnership) -> None:
    """A rotation asking for a new TLS key gets a certificate for it; installing it puts the new
    key in place, and the agency connects with it."""
    partnership.join("test-police", AgencyRole.POLICE)
    custody = partnership.custody
    store = custody.store(agency_store("test-police"))
    old_cert = x509.load_pem_x509_certificate(store.read(client_cert("test-police")))
    token = rotation_request(
        custody.member_store("test-police"),
        "test-police",
        custody.passphrase(agency_store("test-police")),
        partnership.registry(),
        now=NOW,
        tls=True,
    )
    # Until the certificate comes, the current TLS key and certificate stay in use.
    assert x509.load_pem_x509_certificate(store.read(client_cert("test-police"))) == old_cert
    ca = load_ca(custody.store(names.CA), custody.passphrase(names.CA))
    delivered: list[bytes] = []
    with pytest.raises(EnrolmentRefused, match="needs the CA store"):
        apply_rotation(partnership.admin, token, now=NOW)
    apply_rotation(partnership.admin, token, now=NOW, ca=ca, deliver=delivered.append)
    (pem,) = delivered
    partnership.install("test-police", pem)
    new_cert = x509.load_pem_x509_certificate(store.read(client_cert("test-police")))
    assert new_cert.public_key() != old_cert.public_key()
    server = server_context(custody.member_store(BROKER_ID), custody.passphrase(names.BROKER))
    client = client_context(
        custody.member_store("test-police"),
        "test-police",
        custody.passphrase(agency_store("test-police")),
    )
    assert _handshake(server, client, "localhost") == ("test-police", None)


def test_rotation_with_a_bad_csr_changes_nothing(partnership: Partnership) -> None:
    partnership.join("test-police", AgencyRole.POLICE)
    partnership.join("test-nhs", AgencyRole.NHS_SAFEGUARDING)
    custody = partnership.custody
    token = rotation_request(
        custody.member_store("test-police"),
        "test-police",
        custody.passphrase(agency_store("test-police")),
        partnership.registry(),
        now=NOW,
        tls=True,
    )
    # The police's rotation, its CSR swapped for the NHS trust's (a key the police lacks).
    inner = b64url_decode(token.split(b".")[1])
    request = read_enrolment(inner)
    nhs_csr = custody.store(agency_store("test-nhs")).read(csr_name("test-nhs")).decode()
    name = agency_store("test-police")
    new_sig = load_signing_key(
        custody.store(name).read(member_key("test-police", request.key(KeyUse.SIGNING).kid)),
        custody.passphrase(name),
        name="k",
    )
    swapped = EnrolmentRequest.model_validate({**request.model_dump(), "csr": nhs_csr})
    inner2 = sign_compact(swapped.model_dump_json().encode(), new_sig, typ=ENROLMENT_TYP)
    current = partnership.trust("test-police").signing_key()
    wrapped = sign_compact(inner2, current, typ="cairn-rotation+jws")
    ca = load_ca(custody.store(names.CA), custody.passphrase(names.CA))
    delivered: list[bytes] = []
    refused_without_change(
        partnership,
        lambda: apply_rotation(
            partnership.admin, wrapped, now=NOW, ca=ca, deliver=delivered.append
        ),
        "the CSR does not name test-police",
    )
    assert delivered == []
