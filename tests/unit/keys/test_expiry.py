"""Credential expiry read from a key store, and renewal of what is about to expire.

The federation here is made with TLS certificates that expire in 10 days and a registry that
expires in 20, so a 14-day window catches the certificates and not the registry.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from broker.federation import load_federation
from keys import FileStore, Lifetimes, init_federation, load_registry
from keys.expiry import (
    FEDERATION,
    Credential,
    CredentialKind,
    Unreadable,
    days_left,
    expiring,
    read_credentials,
    read_key_folder,
)
from keys.renewal import describe, renew
from keys.store import CA_CERT, REGISTRY, SERVER_CERT, client_cert
from tests.samples import FEDERATION_DIR

NOW = datetime.now(UTC).replace(microsecond=0)
PASSPHRASE = b"expiry unit-test passphrase 0123456789"
SHORT = Lifetimes(certificate=timedelta(days=10), registry=timedelta(days=20))
WINDOW = timedelta(days=14)
AGENCIES = load_federation(FEDERATION_DIR).ids
TLS_CLIENTS = (*AGENCIES, "cairn-auditor")


def short_lived(root: Path, lifetimes: Lifetimes = SHORT) -> FileStore:
    store = FileStore(root)
    init_federation(
        store, load_federation(FEDERATION_DIR), PASSPHRASE, now=NOW, lifetimes=lifetimes
    )
    return store


def by_key(credentials: list[Credential]) -> dict[tuple[CredentialKind, str], Credential]:
    return {(c.kind, c.subject): c for c in credentials}


def cert(store: FileStore, name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(store.read(name))


def test_every_credential_of_the_store_is_read_with_its_expiry(tmp_path: Path) -> None:
    """The registry, the CA, the server certificate, each member certificate and each active
    key, each named by an agency id or a component, with the moment it expires."""
    store = short_lived(tmp_path / "keys")
    found, problems = read_credentials(store)
    assert problems == []
    got = by_key(found)
    assert got[(CredentialKind.REGISTRY, FEDERATION)].expires_at == NOW + timedelta(days=20)
    assert got[(CredentialKind.CA, FEDERATION)].expires_at == NOW + timedelta(days=5 * 365)
    assert got[(CredentialKind.TLS_SERVER, "cairn-broker")].expires_at == NOW + timedelta(days=10)
    for member in TLS_CLIENTS:
        assert got[(CredentialKind.MEMBER_TLS, member)].expires_at == NOW + timedelta(days=10)
    for agency in AGENCIES:
        assert got[(CredentialKind.SIGNING_KEY, agency)].expires_at == NOW + timedelta(days=365)
        assert (CredentialKind.ENCRYPTION_KEY, agency) in got
    assert (CredentialKind.SIGNING_KEY, "cairn-broker") in got
    assert (CredentialKind.ENCRYPTION_KEY, "cairn-broker") not in got  # services only sign


def test_the_window_picks_what_expires_within_it_soonest_first(tmp_path: Path) -> None:
    """14 days: the certificates (10 days) and not the registry (20); 21 days: both."""
    found, _ = read_credentials(short_lived(tmp_path / "keys"))
    soon = expiring(found, NOW, WINDOW)
    assert {c.kind for c in soon} == {CredentialKind.TLS_SERVER, CredentialKind.MEMBER_TLS}
    assert [days_left(c, NOW) for c in soon] == [10] * (1 + len(TLS_CLIENTS))
    later = expiring(found, NOW, timedelta(days=21))
    assert later[-1].kind is CredentialKind.REGISTRY
    assert days_left(later[-1], NOW) == 20


def test_an_expired_registry_still_says_when_it_expired(tmp_path: Path) -> None:
    """Freshness is not checked: 25 days on, the registry is read, 5 days past its expiry."""
    found, _ = read_credentials(short_lived(tmp_path / "keys"))
    registry = by_key(found)[(CredentialKind.REGISTRY, FEDERATION)]
    assert days_left(registry, NOW + timedelta(days=25)) == -5


def test_a_tampered_registry_or_a_broken_certificate_is_named_not_trusted(tmp_path: Path) -> None:
    """A registry whose signature fails gives no expiry (and names why); a certificate file
    that is not PEM is named as malformed; the rest is still read."""
    store = short_lived(tmp_path / "keys")
    token = store.read(REGISTRY)
    store.write(
        REGISTRY, token[:-8] + (b"A" * 8 if token[-8:] != b"A" * 8 else b"B" * 8), private=False
    )
    store.write(client_cert("kelder-police"), b"not a certificate", private=False)
    found, problems = read_credentials(store)
    kinds = {c.kind for c in found}
    assert CredentialKind.REGISTRY not in kinds
    assert CredentialKind.SIGNING_KEY not in kinds
    assert Unreadable(client_cert("kelder-police"), "malformed") in problems
    assert [p.name for p in problems] == [REGISTRY, client_cert("kelder-police")]
    assert (CredentialKind.TLS_SERVER, "cairn-broker") in by_key(found)


def test_a_pinned_root_that_is_not_the_stores_gives_no_registry_expiry(tmp_path: Path) -> None:
    """With the root kid pinned, a store whose root key is another gives no registry figure."""
    found, problems = read_credentials(short_lived(tmp_path / "keys"), root_kid="A" * 43)
    assert CredentialKind.REGISTRY not in {c.kind for c in found}
    assert problems == [Unreadable(REGISTRY, "wrong_signer")]


def test_renewal_reissues_the_certificates_due_for_the_same_keys(tmp_path: Path) -> None:
    """Certificates within the window get a new validity for the same public key, subject and
    extensions, still issued by the CA; the registry is re-signed; nothing else changes."""
    store = short_lived(tmp_path / "keys")
    before = {n: cert(store, n) for n in (SERVER_CERT, CA_CERT, client_cert("kelder-police"))}
    later = NOW + timedelta(days=1)
    renewal = renew(store, PASSPHRASE, now=later, within=WINDOW)
    ca = cert(store, CA_CERT)
    assert ca == before[CA_CERT]  # five years left: the CA is not due
    for name in (SERVER_CERT, client_cert("kelder-police")):
        old, new = before[name], cert(store, name)
        assert new.serial_number != old.serial_number
        assert new.public_key() == old.public_key()
        assert new.subject == old.subject
        assert list(new.extensions) == list(old.extensions)
        assert new.not_valid_after_utc == later + timedelta(days=365)
        new.verify_directly_issued_by(ca)
    kinds = [c.kind for c in renewal.renewed]
    assert kinds.count(CredentialKind.MEMBER_TLS) == len(TLS_CLIENTS)
    assert kinds.count(CredentialKind.TLS_SERVER) == 1
    assert kinds[-1] is CredentialKind.REGISTRY
    registry = load_registry(store, now=later)
    assert registry.serial == 2
    assert registry.expires_at == later + timedelta(days=30)
    assert renewal.to_rotate == ()
    found, _ = read_credentials(store)
    assert expiring(found, later, WINDOW) == []


def test_a_certificate_from_an_agencys_own_ca_is_left_to_that_ca(tmp_path: Path) -> None:
    """An agency that brings a certificate from its own CA renews it there: refresh re-issues
    the federation CA's certificates only, and leaves the other as it is."""
    store = short_lived(tmp_path / "keys")
    name = client_cert("kelder-police")
    theirs = cert(store, name)
    own_key = ec.generate_private_key(ec.SECP256R1())
    own_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Kelder Police own CA")])
    own = (
        x509.CertificateBuilder()
        .subject_name(theirs.subject)
        .issuer_name(own_name)
        .public_key(theirs.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=10))
        .sign(own_key, hashes.SHA256())
    )
    store.write(name, own.public_bytes(Encoding.PEM), private=False)
    renewal = renew(store, PASSPHRASE, now=NOW + timedelta(days=1), within=WINDOW)
    assert cert(store, name) == own
    kinds = [c.kind for c in renewal.renewed]
    assert kinds.count(CredentialKind.MEMBER_TLS) == len(TLS_CLIENTS) - 1


def test_renewal_leaves_what_is_not_due_alone(tmp_path: Path) -> None:
    """Certificates with a year left are not re-issued; only the registry is re-signed."""
    store = short_lived(tmp_path / "keys", Lifetimes())
    server = store.read(SERVER_CERT)
    renewal = renew(store, PASSPHRASE, now=NOW, within=WINDOW)
    assert store.read(SERVER_CERT) == server
    assert [c.kind for c in renewal.renewed] == [CredentialKind.REGISTRY]


def test_a_renewed_ca_keeps_its_key_so_old_certificates_still_chain(tmp_path: Path) -> None:
    """A CA within the window is re-issued with the same key and name: a certificate issued
    before still verifies against the new CA certificate, and the renewed leaves outlive the
    old CA's end."""
    store = short_lived(tmp_path / "keys", Lifetimes(ca=timedelta(days=10)))
    old_ca, old_leaf = cert(store, CA_CERT), cert(store, SERVER_CERT)
    assert old_leaf.not_valid_after_utc == old_ca.not_valid_after_utc  # capped by the CA
    renewal = renew(store, PASSPHRASE, now=NOW, within=WINDOW)
    new_ca, new_leaf = cert(store, CA_CERT), cert(store, SERVER_CERT)
    assert new_ca.public_key() == old_ca.public_key()
    assert new_ca.subject == old_ca.subject
    assert new_ca.not_valid_after_utc == NOW + timedelta(days=5 * 365)
    old_leaf.verify_directly_issued_by(new_ca)
    new_leaf.verify_directly_issued_by(old_ca)
    assert new_leaf.not_valid_after_utc == NOW + timedelta(days=365)
    assert renewal.renewed[0].kind is CredentialKind.CA


def test_keys_near_their_end_are_left_to_rotation_and_said(tmp_path: Path) -> None:
    """Active keys within the window are not renewed here: `renew` lists them, and the
    terminal lines name 'cairn keys rotate' for each."""
    store = short_lived(tmp_path / "keys", Lifetimes(key=timedelta(days=10)))
    renewal = renew(store, PASSPHRASE, now=NOW, within=WINDOW)
    subjects = {c.subject for c in renewal.to_rotate}
    assert subjects == {*AGENCIES, "cairn-broker", "cairn-auditor"}
    lines = describe(renewal)
    assert "run 'cairn keys rotate --agency kelder-police'" in "\n".join(lines)
    assert any(line.startswith("renewed registry federation: expires") for line in lines)


def test_renewal_needs_the_right_passphrase_and_changes_nothing_without_it(
    tmp_path: Path,
) -> None:
    """A wrong passphrase is a clear error before any file is written."""
    from keys.errors import PassphraseError

    store = short_lived(tmp_path / "keys")
    server, registry = store.read(SERVER_CERT), store.read(REGISTRY)
    with pytest.raises(PassphraseError):
        renew(store, b"the wrong passphrase, long enough", now=NOW, within=WINDOW)
    assert store.read(SERVER_CERT) == server
    assert store.read(REGISTRY) == registry


def test_the_clock_must_be_timezone_aware(tmp_path: Path) -> None:
    """A naive time is a programming mistake (TypeError), not a domain error."""
    store = short_lived(tmp_path / "keys")
    with pytest.raises(TypeError):
        renew(store, PASSPHRASE, now=datetime(2026, 1, 1), within=WINDOW)


def test_split_custody_renews_each_holders_certificates_with_the_cas_key(tmp_path: Path) -> None:
    """With the CA's key in a store of its own, the certificates of other stores (the
    broker's, an agency's) are re-certified in place, and a renewed CA certificate is also
    written to the published store; no holder's private key is needed."""
    from keys.renewal import renew_certificates
    from keys.store import CA_KEY, MemoryStore

    whole = short_lived(tmp_path / "keys", Lifetimes(ca=timedelta(days=10)))
    ca_store, broker, agency, public = MemoryStore(), MemoryStore(), MemoryStore(), MemoryStore()
    for name, target in ((CA_CERT, ca_store), (CA_KEY, ca_store), (SERVER_CERT, broker)):
        target.write(name, whole.read(name), private=False)
    police = client_cert("kelder-police")
    agency.write(police, whole.read(police), private=False)
    renewed = renew_certificates(
        ca_store, PASSPHRASE, (broker, agency), now=NOW, within=WINDOW, publish_to=(public,)
    )
    assert [(c.kind, c.subject) for c in renewed] == [
        (CredentialKind.CA, FEDERATION),
        (CredentialKind.TLS_SERVER, "cairn-broker"),
        (CredentialKind.MEMBER_TLS, "kelder-police"),
    ]
    assert public.read(CA_CERT) == ca_store.read(CA_CERT) != whole.read(CA_CERT)
    new_ca = x509.load_pem_x509_certificate(public.read(CA_CERT))
    for holder, name in ((broker, SERVER_CERT), (agency, police)):
        fresh = x509.load_pem_x509_certificate(holder.read(name))
        fresh.verify_directly_issued_by(new_ca)
        assert fresh.public_key() == cert(whole, name).public_key()
        assert fresh.not_valid_after_utc == NOW + timedelta(days=365)


def test_a_key_folder_split_into_stores_is_read_whole(tmp_path: Path) -> None:
    """`cairn status --offline` on a machine whose key folder holds several stores (the
    published one with the registry, the broker's, an agency's): the registry from the
    published store, every store's certificates, the CA once."""
    from keys.store import ROOT_PUBLIC

    whole = short_lived(tmp_path / "whole")
    folder = tmp_path / "keys"
    police = client_cert("kelder-police")
    layout = {
        f"public/{REGISTRY}": REGISTRY,
        f"public/{ROOT_PUBLIC}": ROOT_PUBLIC,
        f"public/{CA_CERT}": CA_CERT,
        f"ca/{CA_CERT}": CA_CERT,
        f"broker/{SERVER_CERT}": SERVER_CERT,
        f"agencies/kelder-police/{police}": police,
    }
    for target, source in layout.items():
        path = folder / target
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(whole.read(source))
    found, problems = read_key_folder(folder)
    assert problems == []
    got = by_key(found)
    assert got[(CredentialKind.REGISTRY, FEDERATION)].expires_at == NOW + timedelta(days=20)
    assert got[(CredentialKind.TLS_SERVER, "cairn-broker")].expires_at == NOW + timedelta(days=10)
    assert got[(CredentialKind.MEMBER_TLS, "kelder-police")].expires_at == NOW + timedelta(days=10)
    assert [c.kind for c in found].count(CredentialKind.CA) == 1
    assert (CredentialKind.MEMBER_TLS, "kelder-nhs") not in got
    elsewhere, _ = read_key_folder(folder / "broker", public=folder / "public")
    assert {c.kind for c in elsewhere} >= {CredentialKind.REGISTRY, CredentialKind.TLS_SERVER}
