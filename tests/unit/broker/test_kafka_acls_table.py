"""The ACL table (broker.kafka.acls) and the Kafka listener's TLS material (broker.kafka.tls).

The integration tests (tests/integration/test_kafka_acls.py) prove the table against a real
Kafka; these check its shape for every agency of the federation, fast.
"""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key, pkcs12

from broker.audit import service as auditor_service
from broker.kafka.acls import (
    AUDITOR_GROUP,
    AUDITOR_PRINCIPAL,
    BROKER_PRINCIPAL,
    RECEIPTS_GROUP,
    AclBinding,
    Operation,
    PatternType,
    ResourceType,
    agency_principal,
    describe_grant,
    federation_acls,
    inbox_group,
    stale_acls,
)
from broker.kafka.tls import ServiceClient, issue_listener_tls, member_kafka_tls
from broker.kafka.topics import delivery_topic, federation_topics
from broker.receipts import GROUP_ID as RECEIPTS_GROUP_ID
from keys import AUDITOR_ID, BROKER_ID, FileStore, KeyStoreError
from keys.custody import Custody
from schemas.federation import Federation
from tests.conftest import PASSPHRASE, FederationKeys, make_federation_keys

PREFIX, TID = "cairn", "cairn-broker"


def table(federation: Federation) -> tuple[AclBinding, ...]:
    return federation_acls(federation, PREFIX, TID)


def who_may(
    bindings: tuple[AclBinding, ...], kind: ResourceType, name: str, op: Operation
) -> set[str]:
    """Principals a binding lets do ``op`` on the resource ``name`` (prefixes matched)."""
    return {
        b.principal
        for b in bindings
        if b.resource_type is kind
        and b.operation is op
        and (b.name == name if b.pattern is PatternType.LITERAL else name.startswith(b.name))
    }


def test_each_delivery_topic_is_read_by_its_agency_alone(federation: Federation) -> None:
    acls = table(federation)
    for agency in federation.agencies:
        topic = delivery_topic(PREFIX, agency.id)
        assert who_may(acls, ResourceType.TOPIC, topic, Operation.READ) == {
            agency_principal(agency.id)
        }
        assert who_may(acls, ResourceType.TOPIC, topic, Operation.WRITE) == {BROKER_PRINCIPAL}
        group = inbox_group(agency.id)
        assert who_may(acls, ResourceType.GROUP, group, Operation.READ) == {
            agency_principal(agency.id)
        }
        assert who_may(acls, ResourceType.GROUP, f"{group}.replay", Operation.READ) == {
            agency_principal(agency.id)
        }


def test_no_agency_group_is_a_prefix_of_another_agencys(federation: Federation) -> None:
    """kelder-police's groups must not cover kelder-police-x's: the prefix ends with a dot,
    which an agency id cannot hold."""
    acls = table(federation)
    assert who_may(acls, ResourceType.GROUP, "cairn-inbox-kelder-police-x", Operation.READ) == set()
    assert who_may(acls, ResourceType.GROUP, "cairn-inbox-kelder-policex", Operation.READ) == set()


def test_what_each_service_may_do(federation: Federation) -> None:
    acls = table(federation)
    topic, op = ResourceType.TOPIC, Operation
    # The auditor writes its IG searches' own events (broker.audit.trail).
    assert who_may(acls, topic, f"{PREFIX}.audit", op.WRITE) == {
        BROKER_PRINCIPAL,
        AUDITOR_PRINCIPAL,
    }
    assert who_may(acls, topic, f"{PREFIX}.audit", op.READ) == {AUDITOR_PRINCIPAL}
    assert who_may(acls, topic, f"{PREFIX}.checkpoints", op.WRITE) == {AUDITOR_PRINCIPAL}
    assert who_may(acls, topic, f"{PREFIX}.checkpoints", op.READ) == set()
    assert who_may(acls, topic, f"{PREFIX}.ledger", op.READ) == {BROKER_PRINCIPAL}
    assert who_may(acls, topic, f"{PREFIX}.ledger", op.WRITE) == {BROKER_PRINCIPAL}
    assert who_may(acls, topic, f"{PREFIX}.receipts", op.READ) == {BROKER_PRINCIPAL}
    agencies = {agency_principal(a.id) for a in federation.agencies}
    assert who_may(acls, topic, f"{PREFIX}.receipts", op.WRITE) == agencies
    assert who_may(acls, topic, f"{PREFIX}.dlq", op.WRITE) == {
        BROKER_PRINCIPAL,
        AUDITOR_PRINCIPAL,
        *agencies,
    }
    assert who_may(acls, topic, f"{PREFIX}.dlq", op.READ) == set()  # the operator's alone
    tid = ResourceType.TRANSACTIONAL_ID
    assert who_may(acls, tid, f"{TID}.host.3.claims", op.WRITE) == {BROKER_PRINCIPAL}
    assert who_may(acls, ResourceType.GROUP, RECEIPTS_GROUP, op.READ) == {BROKER_PRINCIPAL}
    assert who_may(acls, ResourceType.GROUP, AUDITOR_GROUP, op.READ) == {AUDITOR_PRINCIPAL}


def test_the_broker_reads_no_delivery_topic_and_nothing_outside_the_prefix(
    federation: Federation,
) -> None:
    acls = table(federation)
    reads = {
        b.name for b in acls if b.principal == BROKER_PRINCIPAL and b.operation is Operation.READ
    }
    assert not any(".deliver." in name for name in reads)
    topics = {s.name for s in federation_topics(federation, PREFIX)}
    for b in acls:
        if b.resource_type is ResourceType.TOPIC:
            assert b.name in topics
            assert b.pattern is PatternType.LITERAL


def test_the_groups_and_principals_are_the_codes_own() -> None:
    """The table's names are the ones the consumers and the certificates use."""
    assert RECEIPTS_GROUP == RECEIPTS_GROUP_ID
    assert AUDITOR_GROUP == auditor_service.GROUP_ID
    assert f"User:{BROKER_ID}" == BROKER_PRINCIPAL
    assert f"User:{AUDITOR_ID}" == AUDITOR_PRINCIPAL


def test_listener_tls_is_issued_once_and_again_for_a_new_ca(
    federation: Federation, federation_keys: FederationKeys, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    out = tmp_path / "tls"
    broker_store = FileStore(tmp_path / "broker")
    broker = ServiceClient(BROKER_ID, "broker", broker_store, b"the broker store's passphrase")
    first = issue_listener_tls(
        federation_keys.store, PASSPHRASE, out, federation.name, now=now, clients=[broker]
    )
    assert set(first.issued) == {
        "ca.pem",
        "server.password",
        "server.p12",
        str(broker.key),
        str(broker.cert),
    }
    for private in (first.keystore, first.key_password, broker.key):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
    password = first.key_password.read_bytes().strip()
    _key, server, chain = pkcs12.load_key_and_certificates(first.keystore.read_bytes(), password)
    assert server is not None
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert [c.subject for c in chain] == [
        x509.load_pem_x509_certificate(first.ca.read_bytes()).subject
    ]
    broker_cert = x509.load_pem_x509_certificate(broker.cert.read_bytes())
    assert broker_cert.subject.rfc4514_string().startswith(f"CN={BROKER_ID},OU=broker,O=")
    # The broker's key is under its own store's passphrase, not the CA's.
    key = load_pem_private_key(broker.key.read_bytes(), broker.passphrase)
    assert key.public_key() == broker_cert.public_key()

    again = issue_listener_tls(
        federation_keys.store, PASSPHRASE, out, federation.name, now=now, clients=[broker]
    )
    assert again.issued == ()  # still good: kept, Kafka keeps its identity
    late = issue_listener_tls(
        federation_keys.store,
        PASSPHRASE,
        out,
        federation.name,
        now=now + timedelta(days=80),
        clients=[broker],
    )
    assert "server.p12" in late.issued  # within RENEW_BEFORE of expiry: renewed
    assert str(broker.cert) in late.issued

    other = make_federation_keys(tmp_path / "other-keys")
    moved = issue_listener_tls(
        FileStore(other.root), PASSPHRASE, out, federation.name, now=now, clients=[broker]
    )
    assert set(moved.issued) == set(first.issued)  # another CA: everything issued afresh


def test_each_members_kafka_files_come_from_its_own_store(tmp_path: Path) -> None:
    """Under split custody an agency's Kafka certificate is in its own store, its key's
    password is its store's passphrase file, and the CA file is the published one; a missing
    certificate or passphrase file is a KeyStoreError saying what is missing."""
    keys, passphrases = tmp_path / "keys", tmp_path / "passphrases"
    custody = Custody(keys, passphrases)
    files = [
        keys / "public" / "tls" / "ca.crt",
        keys / "agencies" / "kelder-idva" / "tls" / "clients" / "kelder-idva.crt",
        keys / "agencies" / "kelder-idva" / "tls" / "clients" / "kelder-idva.key",
    ]
    for path in files:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x\n")
    with pytest.raises(KeyStoreError, match="CAIRN_KEY_PASSPHRASE_FILE"):
        member_kafka_tls(custody, "kelder-idva", {})
    shared = tmp_path / "shared-passphrase"
    found = member_kafka_tls(custody, "kelder-idva", {"CAIRN_KEY_PASSPHRASE_FILE": str(shared)})
    assert found["kafka_ssl_key_password_file"] == shared
    own = passphrases / "agencies" / "kelder-idva"
    own.parent.mkdir(parents=True)
    own.write_text("its own\n")
    found = member_kafka_tls(custody, "kelder-idva", {"CAIRN_KEY_PASSPHRASE_FILE": str(shared)})
    assert found == {
        "kafka_ssl_ca_file": files[0],
        "kafka_ssl_cert_file": files[1],
        "kafka_ssl_key_file": files[2],
        "kafka_ssl_key_password_file": own,
    }
    with pytest.raises(KeyStoreError, match=r"cairn-broker\.crt is missing"):
        member_kafka_tls(custody, BROKER_ID, {})


def test_pruning_touches_only_cairns_resources_and_keeps_the_table(
    federation: Federation,
) -> None:
    """An agency that left keeps nothing on Cairn's topics and groups; grants on anything
    else (another application's topic, the cluster) are never Cairn's to delete."""
    acls = table(federation)
    gone = "User:kelder-gone"
    in_force = {
        (b.principal, int(b.resource_type), b.name, int(b.pattern), int(b.operation)) for b in acls
    }
    leftovers = {
        (gone, int(ResourceType.TOPIC), f"{PREFIX}.deliver.kelder-gone", 3, int(Operation.READ)),
        (gone, int(ResourceType.GROUP), "cairn-inbox-kelder-gone", 3, int(Operation.READ)),
        (gone, int(ResourceType.TOPIC), f"{PREFIX}.receipts", 3, int(Operation.WRITE)),
    }
    others = {
        (gone, int(ResourceType.TOPIC), "payroll.events", 3, int(Operation.READ)),
        (gone, int(ResourceType.CLUSTER), "kafka-cluster", 3, int(Operation.IDEMPOTENT_WRITE)),
        (gone, int(ResourceType.TOPIC), "cairnx.audit", 3, int(Operation.READ)),
    }
    stale = stale_acls(in_force | leftovers | others, acls, PREFIX, TID)
    assert set(stale) == leftovers
    assert stale_acls(in_force, acls, PREFIX, TID) == []
    assert [describe_grant(g) for g in stale] == [
        f"User:kelder-gone READ topic {PREFIX}.deliver.kelder-gone",
        f"User:kelder-gone WRITE topic {PREFIX}.receipts",
        "User:kelder-gone READ group cairn-inbox-kelder-gone",
    ]
