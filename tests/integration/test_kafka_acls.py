"""Kafka itself keeps agencies apart (issue 14): through the mutual-TLS listener with the
standard authorizer on, each principal may do its part of the exchange and nothing else.

The tests run a Kafka of their own (free ports, a state folder of their own) started by
``deploy/kafka/kafka-local`` with ``CAIRN_KAFKA_SSL_PORT``: client certificates from the
session's federation CA required, the listener's certificate issued by ``broker.kafka.tls``,
``allow.everyone.if.no.acl.found=false``, and a SCRAM listener (``CAIRN_KAFKA_SASL_PORT``)
whose users are two agencies; the ACLs are those ``cairn topics create`` applies
(``broker.kafka.acls``). Denials are checked as Kafka's own error codes on the requests that
read (Fetch, Metadata, the group's JoinGroup/OffsetFetch), not as "some error": a Kafka
without the authorizer answers the same requests with no error, which
``test_without_the_authorizer_the_same_probes_are_allowed`` shows on a second Kafka.
If Kafka cannot start, these tests fail; they never skip.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.conn import create_conn
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    LeaderNotAvailableError,
    NotLeaderForPartitionError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
)
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.protocol.metadata import MetadataRequest

from adapters.agency import inbox_for
from adapters.inbox import Delivery
from broker.config import Settings
from broker.kafka.acls import (
    AuthorizerMissing,
    apply_acls,
    federation_acls,
    inbox_group,
    prune_acls,
)
from broker.kafka.consumer import KafkaNotAuthorized
from broker.kafka.tls import ListenerTls, ServiceClient, issue_listener_tls
from broker.kafka.topics import delivery_topic, federation_topics
from broker.kafka.transport import create_topics, kafka_options
from keys import AUDITOR_ID, BROKER_ID, FileStore
from keys.store import client_cert, client_key
from schemas.federation import Federation
from tests.conftest import PASSPHRASE, FederationKeys
from tests.integration.conftest import cairn_env, client, make_settings, running_broker
from tests.integration.test_consumer_faults import FollowingAuditor, acknowledged_in, eventually
from tests.kafka_support import KAFKA_LOCAL, LocalKafka, free_port_run
from tests.samples import sample

A, B = "kelder-idva", "kelder-police"  # A receives the sample referral; B must not see it
TOPIC_AUTHORIZATION_FAILED = TopicAuthorizationFailedError.errno  # 29
GROUP_AUTHORIZATION_FAILED = GroupAuthorizationFailedError.errno  # 30
WAIT_S = 60.0  # seconds any one wait may take before the test fails


@dataclass
class TlsKafka(LocalKafka):
    """A local Kafka with the mutual-TLS listener on ``ssl_port`` (kafka-local
    CAIRN_KAFKA_SSL_PORT), its files (ca.pem, server.p12, server.password) in ``tls_dir``;
    ``acls=False`` leaves the authorizer out (CAIRN_KAFKA_ACLS=off)."""

    ssl_port: int = 0
    tls_dir: Path = Path()
    acls: bool = True
    sasl_port: int = 0  # the SCRAM listener (CAIRN_KAFKA_SASL_PORT)
    scram_users: Path = Path()  # lines "NAME PASSWORD-FILE" (CAIRN_KAFKA_SCRAM_USERS_FILE)

    @property
    def sasl_bootstrap(self) -> str:
        return f"127.0.0.1:{self.sasl_port}"

    @property
    def ssl_bootstrap(self) -> str:
        return f"127.0.0.1:{self.ssl_port}"

    def _run(self, action: str) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "CAIRN_KAFKA_PORT": str(self.port),
            "CAIRN_KAFKA_NODES": "1",
            "CAIRN_STATE_DIR": str(self.state_dir),
            "CAIRN_KAFKA_SSL_PORT": str(self.ssl_port),
            "CAIRN_KAFKA_TLS_DIR": str(self.tls_dir),
            "CAIRN_KAFKA_ACLS": "on" if self.acls else "off",
            "CAIRN_KAFKA_SASL_PORT": str(self.sasl_port),
            "CAIRN_KAFKA_SCRAM_USERS_FILE": str(self.scram_users),
        }
        return subprocess.run(
            [str(KAFKA_LOCAL), action],
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )


@dataclass(frozen=True)
class AclKafka:
    """A Kafka with the TLS listener, and the credentials of each principal on it."""

    kafka: TlsKafka
    tls: ListenerTls
    keys: FederationKeys
    broker: ServiceClient  # the broker's Kafka client certificate, in a store of its own
    password_file: Path  # the key password of every client key here (the store passphrase)
    root: Path  # this Kafka's own folder (the SCRAM users' password files)

    def admin(self) -> Settings:
        """The local operator on the PLAINTEXT listener (a super user), a fresh topic prefix."""
        return make_settings(self.kafka.bootstrap, self.keys.root)

    def as_principal(self, who: str, admin: Settings) -> Settings:
        """``who``'s settings on the TLS listener, with ``admin``'s topics and transactional id."""
        if who == BROKER_ID:  # the broker's Kafka certificate is issued with the listener's
            cert, key = self.broker.cert, self.broker.key
        else:
            cert, key = (
                self.keys.store.path(client_cert(who)),
                self.keys.store.path(client_key(who)),
            )
        return make_settings(
            self.kafka.ssl_bootstrap,
            self.keys.root,
            topic_prefix=admin.topic_prefix,
            transactional_id=admin.transactional_id,
            kafka_security_protocol="SSL",
            kafka_ssl_ca_file=self.tls.ca,
            kafka_ssl_cert_file=cert,
            kafka_ssl_key_file=key,
            kafka_ssl_key_password_file=self.password_file,
        )


def scram_password_file(root: Path, user: str) -> Path:
    return root / "scram" / user


def start_acl_kafka(
    root: Path, federation: Federation, keys: FederationKeys, *, acls: bool
) -> AclKafka:
    broker = ServiceClient(BROKER_ID, "broker", FileStore(root / "broker-keys"), PASSPHRASE)
    tls = issue_listener_tls(
        keys.store,
        PASSPHRASE,
        root / "tls",
        federation.name,
        now=datetime.now(UTC),
        clients=[broker],
    )
    password_file = root / "key-password"
    password_file.write_bytes(PASSPHRASE + b"\n")
    users = root / "scram-users"
    lines = []
    for user in (A, B):
        secret = scram_password_file(root, user)
        secret.parent.mkdir(exist_ok=True)
        secret.write_text(f"{user}-{uuid.uuid4().hex}\n")
        lines.append(f"{user} {secret}\n")
    users.write_text("".join(lines))
    port = free_port_run(4)  # PLAINTEXT, controller (port + 1), TLS, SCRAM
    local = TlsKafka(
        port,
        root / "state",
        ssl_port=port + 2,
        tls_dir=tls.folder,
        acls=acls,
        sasl_port=port + 3,
        scram_users=users,
    )
    try:
        local.start()
    except RuntimeError as exc:
        local.stop()
        pytest.fail(
            f"Kafka with the TLS listener could not start, so these tests cannot run: {exc}"
        )
    return AclKafka(local, tls, keys, broker, password_file, root)


@pytest.fixture(scope="module")
def acl_kafka(
    tmp_path_factory: pytest.TempPathFactory,
    federation: Federation,
    federation_keys: FederationKeys,
) -> Iterator[AclKafka]:
    started = start_acl_kafka(
        tmp_path_factory.mktemp("acl-kafka"), federation, federation_keys, acls=True
    )
    try:
        yield started
    finally:
        started.kafka.stop()


def as_scram(acl_kafka: AclKafka, user: str, admin: Settings, mechanism: str) -> Settings:
    """``user``'s settings on the SCRAM listener (SASL_SSL), its password from its file."""
    return make_settings(
        acl_kafka.kafka.sasl_bootstrap,
        acl_kafka.keys.root,
        topic_prefix=admin.topic_prefix,
        transactional_id=admin.transactional_id,
        kafka_security_protocol="SASL_SSL",
        kafka_ssl_ca_file=acl_kafka.tls.ca,
        kafka_sasl_mechanism=mechanism,
        kafka_sasl_username=user,
        kafka_sasl_password_file=scram_password_file(acl_kafka.root, user),
    )


async def with_acls(acl_kafka: AclKafka, federation: Federation) -> Settings:
    """A fresh topic prefix on the ACL Kafka, its topics and ACLs created by the operator."""
    admin = acl_kafka.admin()
    await create_topics(admin, federation_topics(federation, admin.topic_prefix))
    await apply_acls(admin, federation_acls(federation, admin.topic_prefix, admin.transactional_id))
    return admin


# --- probes: one Kafka request each, answered with Kafka's own error code ---------------------


async def _raw(settings: Settings, request: Any) -> Any:
    options = kafka_options(settings)
    options.pop("request_timeout_ms")
    kafka = AIOKafkaClient(**options, request_timeout_ms=10_000)
    try:
        await asyncio.wait_for(kafka.bootstrap(), 15)
        node = kafka.get_random_node()
        return await asyncio.wait_for(kafka.send(node, request), 15)
    finally:
        await kafka.close()


# A partition whose leader is still being elected (a topic just created): asked again.
_NOT_YET = {LeaderNotAvailableError.errno, NotLeaderForPartitionError.errno}


async def fetch_error(settings: Settings, topic: str, partition: int = 0) -> int:
    """The error code of a Fetch of ``topic``'s partition from offset 0, read_committed."""
    for _ in range(50):  # bounded: a new partition has a leader within seconds
        response = await _raw(
            settings, FetchRequest(100, 1, 1_048_576, 1, [(topic, [(partition, 0, 1_048_576)])])
        )
        ((name, partitions),) = response.topics
        assert name == topic
        code = int(partitions[0][1])
        if code not in _NOT_YET:
            return code
        await asyncio.sleep(0.2)
    raise AssertionError(f"{topic}[{partition}] had no leader to fetch from")


async def metadata_error(settings: Settings, topic: str) -> int:
    """The error code of a Metadata request naming ``topic`` (no auto-creation)."""
    response = await _raw(settings, MetadataRequest([topic], False))
    (entry,) = [t for t in response.topics if t[1] == topic]
    return int(entry[0])


async def group_error(settings: Settings, group: str, topic: str) -> int:
    """0 if a consumer of ``group`` can fetch its committed offset of ``topic`` (OffsetFetch,
    which needs the group), else Kafka's error code for it."""
    consumer = AIOKafkaConsumer(**kafka_options(settings), group_id=group, enable_auto_commit=False)
    await asyncio.wait_for(consumer.start(), 15)
    try:
        await asyncio.wait_for(consumer.committed(TopicPartition(topic, 0)), 15)
    except GroupAuthorizationFailedError as exc:
        return int(exc.errno)
    finally:
        await asyncio.wait_for(consumer.stop(), 15)
    return 0


async def produce_error(settings: Settings, topic: str) -> int:
    """0 if an idempotent producer may write one record to ``topic``, else Kafka's code."""
    producer = AIOKafkaProducer(**kafka_options(settings), acks="all", enable_idempotence=True)
    await asyncio.wait_for(producer.start(), 15)
    try:
        await asyncio.wait_for(producer.send_and_wait(topic, b"probe", key=b"probe"), 15)
    except TopicAuthorizationFailedError as exc:
        return int(exc.errno)
    finally:
        await asyncio.wait_for(producer.stop(), 15)
    return 0


# --- the tests ---------------------------------------------------------------------------------


async def test_another_agency_cannot_read_a_topic_or_use_a_group_that_is_not_its_own(
    acl_kafka: AclKafka, federation: Federation
) -> None:
    """Agency B's certificate: Kafka refuses B the Fetch and the Metadata of A's delivery
    topic, and A's consumer group, with its authorization errors; A may read its own, with
    its own group. B may not write into A's topic either."""
    admin = await with_acls(acl_kafka, federation)
    as_a, as_b = acl_kafka.as_principal(A, admin), acl_kafka.as_principal(B, admin)
    a_topic = delivery_topic(admin.topic_prefix, A)

    assert await fetch_error(as_b, a_topic) == TOPIC_AUTHORIZATION_FAILED
    assert await metadata_error(as_b, a_topic) == TOPIC_AUTHORIZATION_FAILED
    assert await group_error(as_b, inbox_group(A), a_topic) == GROUP_AUTHORIZATION_FAILED
    assert await produce_error(as_b, a_topic) == TOPIC_AUTHORIZATION_FAILED

    # B's credentials in A's inbox (A's keys, A's topic and group): a typed error at once,
    # not a reconnection loop.
    async def never(_delivery: Delivery) -> None:
        raise AssertionError("B's credentials received one of A's deliveries")

    with pytest.raises(KafkaNotAuthorized, match=f"as group {inbox_group(A)}"):
        async with inbox_for(as_b, A, passphrase=PASSPHRASE) as inbox:
            await inbox.drain(never, max_messages=1, idle_timeout_s=10, total_timeout_s=WAIT_S)

    assert await fetch_error(as_a, a_topic) == 0
    assert await metadata_error(as_a, a_topic) == 0
    assert await group_error(as_a, inbox_group(A), a_topic) == 0
    # Nor may an agency read the others' acknowledgements or the audit trail.
    assert await fetch_error(as_a, f"{admin.topic_prefix}.receipts") == TOPIC_AUTHORIZATION_FAILED
    assert await fetch_error(as_a, f"{admin.topic_prefix}.audit") == TOPIC_AUTHORIZATION_FAILED


async def test_the_broker_and_the_auditor_cannot_read_any_delivery_topic(
    acl_kafka: AclKafka, federation: Federation
) -> None:
    """The broker writes every delivery topic but Kafka refuses it every Fetch of one, every
    partition, also through an ordinary consumer; nor may the auditor read them."""
    admin = await with_acls(acl_kafka, federation)
    broker = acl_kafka.as_principal(BROKER_ID, admin)
    auditor = acl_kafka.as_principal(AUDITOR_ID, admin)
    specs = [s for s in federation_topics(federation, admin.topic_prefix) if ".deliver." in s.name]
    assert len(specs) == len(federation.agencies)
    for spec in specs:
        for partition in range(spec.partitions):
            assert await fetch_error(broker, spec.name, partition) == TOPIC_AUTHORIZATION_FAILED
        assert await fetch_error(auditor, spec.name) == TOPIC_AUTHORIZATION_FAILED
        assert await produce_error(broker, spec.name) == 0  # what it may do: write

    consumer = AIOKafkaConsumer(
        **kafka_options(broker), enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        tps = [TopicPartition(specs[0].name, p) for p in range(specs[0].partitions)]
        consumer.assign(tps)
        refused = await first_refusal(consumer)
    finally:
        await asyncio.wait_for(consumer.stop(), 15)
    assert refused.errno == TOPIC_AUTHORIZATION_FAILED
    assert refused.args[0] == specs[0].name or specs[0].name in str(refused)


async def first_refusal(consumer: AIOKafkaConsumer) -> TopicAuthorizationFailedError:
    """Fetch (bounded) until Kafka's refusal comes back; fail if records come instead."""
    for _ in range(50):
        try:
            batches = await consumer.getmany(timeout_ms=200)
        except TopicAuthorizationFailedError as exc:
            return exc
        assert not batches, "the consumer read records Kafka should have refused it"
    raise AssertionError("Kafka never refused the fetch")


async def test_the_exchange_runs_through_the_acl_listener(
    acl_kafka: AclKafka,
    federation: Federation,
    federation_keys: FederationKeys,
    tmp_path: Path,
) -> None:
    """Everything each component does is allowed: the broker publishes a referral in its
    transaction (deliveries, audit, ledger), the recipient's inbox reads its topic with its
    group and writes its acknowledgement, the broker's receipts loop reads it and audits it,
    and the auditor reads the audit topic and publishes checkpoints: each with its own
    certificate on the TLS listener."""
    admin = await with_acls(acl_kafka, federation)
    broker = acl_kafka.as_principal(BROKER_ID, admin)
    agency = acl_kafka.as_principal(A, admin)
    auditor_settings = acl_kafka.as_principal(AUDITOR_ID, admin)
    data = sample()
    rid = data["header"]["referral_id"]
    received: list[str] = []

    async def handler(delivery: Delivery) -> None:
        received.append(str(delivery.disclosure.referral_id))

    async with (
        FollowingAuditor(auditor_settings, federation_keys, tmp_path / "audit") as auditor,
        running_broker(broker, federation, federation_keys, consume_receipts=True) as url,
    ):
        async with client(federation_keys, url) as police:
            receipt = await police.submit(json.dumps(data).encode())
        assert A in {r.agency for r in receipt.recipients if r.status.value == "queued"}
        async with inbox_for(agency, A, passphrase=PASSPHRASE) as inbox:
            await inbox.drain(handler, max_messages=1, idle_timeout_s=20, total_timeout_s=WAIT_S)
        assert received == [rid]
        assert inbox.acknowledged == 1
        await eventually(
            lambda: _has(acknowledged_in(auditor, uuid.UUID(rid)), A),
            "the acknowledgement in the audit log",
        )
        note = await auditor.checkpoint()
    assert note
    checkpoints = f"{admin.topic_prefix}.checkpoints"
    assert await fetch_error(auditor_settings, checkpoints) == TOPIC_AUTHORIZATION_FAILED
    assert await produce_error(auditor_settings, checkpoints) == 0


async def _has(agencies: Any, agency: str) -> bool:
    return agency in await agencies


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
async def test_a_scram_user_is_the_same_principal_under_the_same_acls(
    acl_kafka: AclKafka, federation: Federation, tmp_path: Path, mechanism: str
) -> None:
    """On the SCRAM listener the principal is User:<SCRAM user>, its password read from its
    file (CAIRN_KAFKA_SASL_PASSWORD_FILE): A may read its own topic, B is refused it; a wrong
    password does not get in at all."""
    admin = await with_acls(acl_kafka, federation)
    a_topic = delivery_topic(admin.topic_prefix, A)
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password-at-all\n")
    impostor = as_scram(acl_kafka, A, admin, mechanism).model_copy(
        update={"kafka_sasl_password_file": wrong}
    )
    options = kafka_options(impostor)
    host, port = options["bootstrap_servers"][0].split(":")
    with pytest.raises(SaslAuthenticationFailed):  # Kafka's own answer, not a lost connection
        await asyncio.wait_for(
            create_conn(
                host,
                int(port),
                ssl_context=options["ssl_context"],
                security_protocol="SASL_SSL",
                sasl_mechanism=mechanism,
                sasl_plain_username=A,
                sasl_plain_password=options["sasl_plain_password"],
            ),
            15,
        )
    # aiokafka closes the refused connection without waiting for its TLS transport to shut:
    # let the loop finish that before anything else (else an unclosed-socket warning).
    await asyncio.sleep(0.5)

    assert await fetch_error(as_scram(acl_kafka, A, admin, mechanism), a_topic) == 0
    as_b = as_scram(acl_kafka, B, admin, mechanism)
    assert await fetch_error(as_b, a_topic) == TOPIC_AUTHORIZATION_FAILED
    assert await group_error(as_b, inbox_group(A), a_topic) == GROUP_AUTHORIZATION_FAILED


async def test_an_agency_that_leaves_loses_its_grants(
    acl_kafka: AclKafka, federation: Federation
) -> None:
    """Pruning against a federation without B deletes B's grants on Cairn's topics and
    groups (Kafka then refuses B its own former topic) and leaves everyone else's."""
    admin = await with_acls(acl_kafka, federation)
    as_a, as_b = acl_kafka.as_principal(A, admin), acl_kafka.as_principal(B, admin)
    b_topic = delivery_topic(admin.topic_prefix, B)
    assert await fetch_error(as_b, b_topic) == 0
    smaller = federation.model_copy(
        update={"agencies": tuple(a for a in federation.agencies if a.id != B)}
    )
    table = federation_acls(smaller, admin.topic_prefix, admin.transactional_id)
    removed = await prune_acls(admin, table)
    mine = {g[2] for g in removed if g[0] == f"User:{B}"}
    assert mine >= {b_topic, inbox_group(B), f"{admin.topic_prefix}.receipts"}
    # The broker's grants on B's topic and group go too: it no longer delivers there.
    assert {g[2] for g in removed if g[0] != f"User:{B}"} == {b_topic, inbox_group(B)}
    for _ in range(50):  # bounded: the broker applies the deletion a moment after
        if await fetch_error(as_b, b_topic) == TOPIC_AUTHORIZATION_FAILED:
            break
        await asyncio.sleep(0.2)
    assert await fetch_error(as_b, b_topic) == TOPIC_AUTHORIZATION_FAILED
    assert await fetch_error(as_a, delivery_topic(admin.topic_prefix, A)) == 0
    assert await prune_acls(admin, table) == []


def test_topics_create_applies_the_acls(
    acl_kafka: AclKafka, federation: Federation, federation_keys: FederationKeys, tmp_path: Path
) -> None:
    """``cairn topics create`` creates the topics and the ACLs (and says so); after it the
    agency may read its own topic and not another's."""
    admin = acl_kafka.admin()
    env = cairn_env(
        admin,
        federation_keys,
        tmp_path,
        CAIRN_TRANSACTIONAL_ID=admin.transactional_id,
        CAIRN_FEDERATION_DIR=str(admin.federation_dir),
    )
    result = subprocess.run(  # our own CLI, fixed argv
        [sys.executable, "-m", "broker", "topics", "create", "--acls", "require"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    count = len(federation_acls(federation, admin.topic_prefix, admin.transactional_id))
    assert f"{count} ACLs in force" in result.stdout
    as_b = acl_kafka.as_principal(B, admin)
    assert asyncio.run(fetch_error(as_b, delivery_topic(admin.topic_prefix, B))) == 0
    assert (
        asyncio.run(fetch_error(as_b, delivery_topic(admin.topic_prefix, A)))
        == TOPIC_AUTHORIZATION_FAILED
    )


async def test_without_the_authorizer_the_same_probes_are_allowed(
    tmp_path: Path, federation: Federation, federation_keys: FederationKeys
) -> None:
    """The probes above are not vacuous: on the same TLS listener with the authorizer left
    out (CAIRN_KAFKA_ACLS=off) B's Fetch of A's topic, its use of A's group and the broker's
    Fetch of a delivery topic all succeed, so every test above would fail; and the ACLs
    cannot be applied there (Kafka keeps none), which ``topics create --acls require`` turns
    into a failure."""
    open_kafka = await asyncio.to_thread(
        start_acl_kafka, tmp_path, federation, federation_keys, acls=False
    )
    try:
        admin = open_kafka.admin()
        await create_topics(admin, federation_topics(federation, admin.topic_prefix))
        with pytest.raises(AuthorizerMissing):
            await apply_acls(
                admin, federation_acls(federation, admin.topic_prefix, admin.transactional_id)
            )
        as_b = open_kafka.as_principal(B, admin)
        broker = open_kafka.as_principal(BROKER_ID, admin)
        a_topic = delivery_topic(admin.topic_prefix, A)
        assert await fetch_error(as_b, a_topic) == 0
        assert await metadata_error(as_b, a_topic) == 0
        assert await group_error(as_b, inbox_group(A), a_topic) == 0
        assert await fetch_error(broker, a_topic) == 0
    finally:
        await asyncio.to_thread(open_kafka.kafka.stop)
