"""The development federation on one machine, made through the real enrolment procedure.

``init_development`` does on one box what a partnership does on many: the administrator
creates the root key, the CA, the pseudonym secret and the broker's and the auditor's keys, each
in a store of its own with a passphrase of its own (``keys.custody``); then every agency of
``agencies.yaml`` makes its own keys in its own store (``create_agency``), the administrator
admits it from its enrolment request alone (``enrol``), and the agency installs the
certificate it is sent (``install_certificate``). The passphrases are random, one per store,
written to ``<passphrase_dir>/<store>`` (0600) unless a file is there already.

Two development witnesses (``DEV_WITNESSES``) stand in for the outside organisations that
cosign the auditor's checkpoints: each has its own store ``witnesses/<id>`` holding its
cosignature/v1 key (``witness.pem``, encrypted PKCS#8 as ``cairn witness serve --key`` reads it
under ``CAIRN_WITNESS_PASSPHRASE``) and a TLS server certificate from the federation CA for
127.0.0.1 and localhost; the registry lists them (role ``witness``, with their verifier keys)
from serial 1.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from keys import custody as names
from keys.custody import Custody
from keys.enrolment import Enrolled, create_agency, enrol, install_certificate, load_ca
from keys.errors import FederationExists
from keys.federation import Admin, Lifetimes, init_hub, witness_member
from keys.pki import IssuedCertificate, issue_server_certificate
from keys.registry import Member, Registry, cosigner_vkey
from keys.store import CA_CERT, SERVER_CERT, SERVER_KEY, Store, encrypt_private_key
from schemas.federation import Federation

__all__ = ["DEV_WITNESSES", "HUB_STORES", "WITNESS_KEY", "init_development", "witness_store"]

HUB_STORES = (names.ROOT, names.CA, names.PSEUDONYM, names.BROKER, names.AUDITOR)
#: The development witnesses: (member id, display name, the name in their cosignatures).
DEV_WITNESSES: Final = (
    ("witness-north", "Kelder North witness (development)", "witness-north.cairn.local"),
    ("witness-south", "Kelder South witness (development)", "witness-south.cairn.local"),
)
WITNESS_KEY: Final = "witness.pem"  # in the witness's store: its cosignature/v1 key


def witness_store(member_id: str) -> str:
    """The store name of a development witness's keys."""
    return f"witnesses/{member_id}"


def _witness_keys(custody: Custody, now: datetime, life: Lifetimes) -> tuple[Member, ...]:
    """Make each development witness's cosignature/v1 key in its own store; its entry."""
    members = []
    for member_id, display, cosigner in DEV_WITNESSES:
        name = witness_store(member_id)
        store, passphrase = custody.store(name), custody.new_passphrase(name)
        key = Ed25519PrivateKey.generate()
        store.write(WITNESS_KEY, encrypt_private_key(key, passphrase), private=True)
        vkey = cosigner_vkey(cosigner, key.public_key())
        members.append(witness_member(member_id, display, vkey, now=now, lifetimes=life))
    return tuple(members)


def _witness_certificates(
    custody: Custody, federation_name: str, ca: IssuedCertificate, now: datetime, life: Lifetimes
) -> None:
    """A TLS server certificate from the federation CA for each development witness."""
    for member_id, _display, _cosigner in DEV_WITNESSES:
        name = witness_store(member_id)
        store, passphrase = custody.store(name), custody.new_passphrase(name)
        tls = issue_server_certificate(
            ca, federation_name, now=now, validity=life.certificate, common_name=member_id
        )
        store.write(SERVER_CERT, tls.certificate_pem(), private=False)
        store.write(SERVER_KEY, encrypt_private_key(tls.key, passphrase), private=True)


def init_development(
    custody: Custody,
    federation: Federation,
    *,
    now: datetime,
    lifetimes: Lifetimes | None = None,
) -> tuple[Registry, tuple[Enrolled, ...]]:
    """Create the development federation in ``custody``'s separate stores, through enrolment."""
    if not custody.store(names.PUBLIC).is_empty() or custody.all_in_one:
        raise FederationExists(
            f"{custody.key_dir} already holds a federation; it is never overwritten. Use "
            "'cairn keys rotate' / 'revoke', or move it away to start again"
        )
    agency_stores = [names.agency_store(a.id) for a in federation.agencies]
    witness_stores = [witness_store(member_id) for member_id, _, _ in DEV_WITNESSES]
    for name in (*HUB_STORES, *agency_stores, *witness_stores):
        if not custody.store(name).is_empty():
            raise FederationExists(f"{custody.folder(name)} already holds keys; move it away first")
    stores: dict[str, tuple[Store, bytes]] = {
        name: (custody.store(name), custody.new_passphrase(name)) for name in HUB_STORES
    }
    public = custody.public()
    life = lifetimes or Lifetimes()
    witnesses = _witness_keys(custody, now, life)  # listed from serial 1 on
    registry = init_hub(
        stores, public, federation.name, now=now, lifetimes=lifetimes, witnesses=witnesses
    )
    admin = Admin(stores[names.ROOT][0], stores[names.ROOT][1], public)
    ca = load_ca(*stores[names.CA])
    _witness_certificates(custody, federation.name, ca, now, life)
    issuers = (x509.load_pem_x509_certificate(public.read(CA_CERT)),)
    admitted = []
    for agency in federation.agencies:
        # The agency's machine: its own keys, its own passphrase, its request.
        name = names.agency_store(agency.id)
        own = custody.store(name)
        request = create_agency(own, agency.id, agency.role, custody.new_passphrase(name), now=now)

        # The administrator's machine: the request alone; the certificate goes back.
        def deliver(pem: bytes, own: Store = own, agency_id: str = agency.id) -> None:
            install_certificate(own, agency_id, pem, issuers=issuers, now=now)

        done = enrol(admin, ca, federation, request, now=now, lifetimes=lifetimes, deliver=deliver)
        admitted.append(done)
        registry = done.registry
    return registry, tuple(admitted)
