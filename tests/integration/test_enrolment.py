"""Enrolment end to end through the real Kafka: machines that hold only their own keys.

The administrator creates the federation; the police force and the IDVA service, each on a
machine (a folder) of its own with its own passphrase, make their keys and send only their
enrolment requests; the administrator enrols them and publishes the registry; the broker's
machine holds the broker's store, the pseudonym store and the published files, nothing else.
Then the police submits a referral and the IDVA service receives, decrypts and verifies it;
both rotate their keys by request, and the next referral travels under the new keys.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

from aiohttp.test_utils import TestServer
from cryptography import x509

from adapters.agency import client_for, inbox_for
from adapters.inbox import Delivery
from broker.config import Settings
from broker.kafka.topics import delivery_topic, federation_topics
from broker.kafka.transport import KafkaTransport, create_topics
from broker.state import SqliteStore
from broker.trust import custody_of, member_trust
from broker.web.app import create_app
from keys import BROKER_ID, server_context
from keys import custody as names
from keys.custody import Custody, agency_store
from keys.development import HUB_STORES
from keys.enrolment import (
    apply_rotation,
    create_agency,
    enrol,
    install_certificate,
    load_ca,
    rotation_request,
)
from keys.federation import Admin, init_hub, load_registry
from keys.jwk import b64url_decode
from keys.registry import KeyUse
from keys.store import CA_CERT
from schemas.federation import AgencyRole, Federation
from tests.integration.conftest import make_settings
from tests.kafka_support import LocalKafka, read_committed
from tests.samples import sample

POLICE = "kelder-police"
IDVA = "kelder-idva"


def _machine(root: Path) -> Custody:
    return Custody(root / "keys", root / "passphrases")


def _publish(admin: Custody, machine: Custody) -> None:
    """What every machine fetches from the administrator: the public store."""
    shutil.copytree(admin.folder(names.PUBLIC), machine.folder(names.PUBLIC), dirs_exist_ok=True)


def _hand_over(admin: Custody, machine: Custody, store: str) -> None:
    """The administrator hands a service its store and passphrase (done once, at set-up)."""
    shutil.copytree(admin.folder(store), machine.folder(store))
    secret = machine.passphrase_file(store)
    secret.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(admin.passphrase_file(store), secret)


def _enrolled_partnership(tmp_path: Path, federation: Federation) -> dict[str, Custody]:
    admin = _machine(tmp_path / "admin")
    stores = {n: (admin.store(n), admin.new_passphrase(n)) for n in HUB_STORES}
    now = time_now()
    init_hub(stores, admin.public(), federation.name, now=now)
    office = Admin(admin.store(names.ROOT), admin.passphrase(names.ROOT), admin.public())
    ca = load_ca(admin.store(names.CA), admin.passphrase(names.CA))
    machines = {"admin": admin}
    for agency_id, role in ((POLICE, AgencyRole.POLICE), (IDVA, AgencyRole.IDVA)):
        machine = _machine(tmp_path / agency_id)
        _publish(admin, machine)
        name = agency_store(agency_id)
        own = machine.store(name)
        request = create_agency(own, agency_id, role, machine.new_passphrase(name), now=now)
        # Only the request crosses to the administrator, and only the certificate comes back.
        done = enrol(office, ca, federation, request, now=now)
        issuers = (x509.load_pem_x509_certificate(machine.public().read(CA_CERT)),)
        install_certificate(own, agency_id, done.certificate_pem, issuers=issuers, now=now)
        machines[agency_id] = machine
    broker = _machine(tmp_path / "broker")
    for store in (names.BROKER, names.PSEUDONYM):
        _hand_over(admin, broker, store)
    machines["broker"] = broker
    for key, machine in machines.items():
        if key != "admin":
            _publish(admin, machine)
    return machines


def time_now() -> datetime:
    return datetime.now(UTC)


def _settings(bootstrap: str, machine: Custody, prefix: str) -> Settings:
    """An agency machine's settings: its own key folder, on the test's topics."""
    return make_settings(
        bootstrap, machine.key_dir, passphrase_dir=machine.passphrase_dir, topic_prefix=prefix
    )


async def test_enrolled_agencies_exchange_a_referral_through_kafka(
    kafka: LocalKafka, federation: Federation, tmp_path: Path
) -> None:
    machines = _enrolled_partnership(tmp_path, federation)
    broker_settings = make_settings(
        kafka.bootstrap,
        machines["broker"].key_dir,
        passphrase_dir=machines["broker"].passphrase_dir,
    )
    prefix = broker_settings.topic_prefix
    await create_topics(broker_settings, federation_topics(federation, prefix))

    # The broker's machine holds no agency's store: not even the folder.
    broker_keys = machines["broker"].key_dir
    assert sorted(p.name for p in broker_keys.iterdir()) == ["broker", "pseudonym", "public"]
    custody = custody_of(broker_settings)
    trust = member_trust(broker_settings, BROKER_ID, clock=time_now, with_pseudonym=True)
    app = create_app(
        broker_settings,
        federation,
        KafkaTransport(broker_settings),
        trust,
        store=SqliteStore(None),
    )
    server = TestServer(app, host="127.0.0.1")
    context = server_context(custody.member_store(BROKER_ID), custody.passphrase(names.BROKER))
    await server.start_server(ssl=context)
    url = str(server.make_url("")).rstrip("/")
    police = _settings(kafka.bootstrap, machines[POLICE], prefix)
    idva = _settings(kafka.bootstrap, machines[IDVA], prefix)
    received: list[Delivery] = []

    async def keep(delivery: Delivery) -> None:
        received.append(delivery)

    async def exchange() -> Delivery:
        """The police submits a referral to the IDVA service, which receives it."""
        data = sample()
        data["header"]["recipients"] = [IDVA]
        async with client_for(police, POLICE, url) as client:
            receipt = await client.submit(json.dumps(data).encode())
        assert {r.agency: r.status.value for r in receipt.recipients} == {IDVA: "queued"}
        before = len(received)
        deadline = time.monotonic() + 60
        async with inbox_for(idva, IDVA) as box:
            while len(received) == before and time.monotonic() < deadline:
                await box.drain(keep, idle_timeout_s=2.0, total_timeout_s=10.0)
        assert [str(d.disclosure.referral_id) for d in received[before:]] == [
            data["header"]["referral_id"]
        ]
        return received[-1]

    try:
        first = await exchange()
        assert first.disclosure.sender_agency == POLICE
        assert first.disclosure.recipient_agency == IDVA

        # Both agencies rotate: each request goes to the administrator, the new registry to
        # every machine; the broker and the agencies pick it up without a restart.
        admin = machines["admin"]
        office = Admin(admin.store(names.ROOT), admin.passphrase(names.ROOT), admin.public())
        for agency_id in (POLICE, IDVA):
            machine = machines[agency_id]
            registry = load_registry(machine.public(), now=time_now())
            token = rotation_request(
                machine.member_store(agency_id),
                agency_id,
                machine.passphrase(agency_store(agency_id)),
                registry,
                now=time_now(),
            )
            apply_rotation(office, token, now=time_now())
        for name in ("broker", POLICE, IDVA):
            _publish(admin, machines[name])
        rotated = load_registry(machines["broker"].public(), now=time_now())
        new_enc = rotated.member(IDVA).active_key(KeyUse.ENCRYPTION)  # type: ignore[union-attr]
        assert new_enc is not None
        second = await exchange()
        assert second.disclosure.sender_agency == POLICE
        # The broker encrypted the second disclosure to the IDVA's new key.
        records = await read_committed(kafka.bootstrap, delivery_topic(prefix, IDVA))
        kids = {
            r.key.decode(): json.loads(b64url_decode(r.value.split(b".")[0]))["kid"]
            for r in records
        }
        assert kids[str(second.disclosure.referral_id)] == new_enc.kid
        assert kids[str(first.disclosure.referral_id)] != new_enc.kid
    finally:
        await asyncio.wait_for(server.close(), 30)
