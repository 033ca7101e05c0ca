"""The development federation on one machine, made through the real enrolment procedure.

``init_development`` does on one box what a partnership does on many: the administrator
creates the root key, the CA, the pseudonym secret and the broker's and the auditor's keys, each
in a store of its own with a passphrase of its own (``keys.custody``); then every agency of
``agencies.yaml`` makes its own keys in its own store (``create_agency``), the administrator
admits it from its enrolment request alone (``enrol``), and the agency installs the
certificate it is sent (``install_certificate``). The passphrases are random, one per store,
written to ``<passphrase_dir>/<store>`` (0600) unless a file is there already.
"""

from __future__ import annotations

from datetime import datetime

from cryptography import x509

from keys import custody as names
from keys.custody import Custody
from keys.enrolment import Enrolled, create_agency, enrol, install_certificate, load_ca
from keys.errors import FederationExists
from keys.federation import Admin, Lifetimes, init_hub
from keys.registry import Registry
from keys.store import CA_CERT, Store
from schemas.federation import Federation

__all__ = ["HUB_STORES", "init_development"]

HUB_STORES = (names.ROOT, names.CA, names.PSEUDONYM, names.BROKER, names.AUDITOR)


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
    for name in (*HUB_STORES, *agency_stores):
        if not custody.store(name).is_empty():
            raise FederationExists(f"{custody.folder(name)} already holds keys; move it away first")
    stores: dict[str, tuple[Store, bytes]] = {
        name: (custody.store(name), custody.new_passphrase(name)) for name in HUB_STORES
    }
    public = custody.public()
    registry = init_hub(stores, public, federation.name, now=now, lifetimes=lifetimes)
    admin = Admin(stores[names.ROOT][0], stores[names.ROOT][1], public)
    ca = load_ca(*stores[names.CA])
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
