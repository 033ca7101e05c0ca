"""The audit trail against the real Kafka: no disclosure without its audit event, an auditor
that survives ``kill -9`` without a gap or a duplicate, and the audit API for IG officers."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from adapters.client import ReferralClient
from broker.audit.checkpoint import Checkpoint, NoteVerifier, verify_checkpoint
from broker.audit.errors import AuditUnavailable
from broker.audit.files import DEFAULT_ORIGIN
from broker.audit.merkle import InvalidProof, leaf_hash, verify_consistency, verify_inclusion
from broker.audit.proofs import verify_tlog_proof
from broker.audit.service import Auditor, auditor_app
from broker.audit.store import AuditLog, CheckpointPolicy
from broker.config import Settings
from broker.kafka.topics import federation_topics
from keys import AUDITOR_ID
from keys.registry import KeyStatus, KeyUse
from schemas.audit import AuditEvent, AuditEventType
from schemas.federation import Federation
from tests.conftest import FederationKeys
from tests.integration.conftest import cairn_env, client, running_broker
from tests.kafka_support import read_committed
from tests.samples import REPO, sample

JOSE = {"Content-Type": "application/jose"}
CAIRN = [sys.executable, "-m", "broker"]
VICTIM_NHS_NUMBER = "9990000018"  # Testina Fictitia, the victim in referral-high-risk.json
AUDIT_RECORD_LIMIT = 128  # bytes: a topic limit below the size of any audit event's batch

STREAM_REFERRALS = 2_000  # referrals streamed while the auditor is killed
STREAM_IN_FLIGHT = 16  # submissions in flight at once
STREAM_TIMEOUT_S = 150.0  # seconds for the whole stream
KILL_AT_ENTRIES = 1_500  # log size at which the auditor is killed (of ~8,000 entries)
CATCH_UP_TIMEOUT_S = 120.0  # seconds for the restarted auditor to reach the topic's end


# --- Kafka --------------------------------------------------------------------------------------


def audit_topic(settings: Settings) -> str:
    return f"{settings.topic_prefix}.audit"


async def committed_audit(settings: Settings, timeout_s: float = 30.0) -> list[tuple[int, bytes]]:
    """(offset, value) of every committed record on the audit topic's one partition, in order.

    ``read_committed`` gives no offsets; the auditor's log stores them, so they are compared.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        isolation_level="read_committed",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        tp = TopicPartition(audit_topic(settings), 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        records: list[tuple[int, bytes]] = []
        deadline = time.monotonic() + timeout_s
        end = -1
        # The stable end can lag a commit Kafka has already answered (its markers are written
        # a moment later, and right after a leader change on a fresh topic it is reported
        # late): read to it, pause, ask again, and stop only when it holds still.
        while (latest := (await consumer.end_offsets([tp]))[tp]) > end:
            end = latest
            while await consumer.position(tp) < end:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"could not read {tp.topic} to its end in {timeout_s}s")
                batches = await consumer.getmany(tp, timeout_ms=200)
                records += [(m.offset, m.value) for m in batches.get(tp, [])]
            await asyncio.sleep(0.3)
        return records
    finally:
        await asyncio.wait_for(consumer.stop(), 10)


async def audit_events(settings: Settings) -> list[AuditEvent]:
    return [AuditEvent.from_canonical(value) for _, value in await committed_audit(settings)]


async def deliveries(settings: Settings, federation: Federation) -> Counter[tuple[str, str]]:
    """(recipient, referral id) of every disclosure committed on any delivery topic."""
    found: Counter[tuple[str, str]] = Counter()
    for spec in federation_topics(federation, settings.topic_prefix):
        if ".deliver." in spec.name:
            agency = spec.name.split(".deliver.", 1)[1]
            records = await read_committed(settings.kafka_bootstrap_servers, spec.name)
            found.update((agency, r.key.decode()) for r in records)
    return found


async def set_topic_config(settings: Settings, topic: str, name: str, value: str) -> str:
    """Set one topic config and wait until the broker reports it; return the previous value."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:

        async def current() -> str:
            [response] = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topic, configs={name: None})]
            )
            [resource] = response.to_object()["resources"]
            assert resource["error_code"] == 0, resource["error_message"]
            [entry] = resource["config_entries"]
            return str(entry["config_value"])

        previous = await current()
        # AlterConfigs (not the incremental kind) replaces every override on the topic; this
        # suite's topics are created without any, so setting just this one loses nothing.
        [response] = await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, configs={name: value})]
        )
        for resource in response.to_object()["resources"]:
            assert resource["error_code"] == 0, resource["error_message"]
        deadline = time.monotonic() + 15
        while await current() != value:
            assert time.monotonic() < deadline, f"{topic} never reported {name}={value}"
            await asyncio.sleep(0.1)
        return previous
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def topic_config(
    settings: Settings, topic: str, name: str, value: str
) -> AsyncIterator[None]:
    previous = await set_topic_config(settings, topic, name, value)
    # The broker reports a new config from its metadata image a moment before every log has
    # applied it; a short wait keeps the first produce from racing the change.
    await asyncio.sleep(1.0)
    try:
        yield
    finally:
        await set_topic_config(settings, topic, name, previous)


# --- 1. atomicity -------------------------------------------------------------------------------


async def test_failed_audit_write_means_503_and_no_recipient_sees_the_referral(
    broker_url: str,
    kafka_settings: Settings,
    federation: Federation,
    federation_keys: FederationKeys,
) -> None:
    """When Kafka refuses the audit record inside the transaction, the sender gets 503
    kafka-unavailable and no recipient's read_committed consumer sees the referral; once the
    audit topic takes records again, the same submission is delivered once and audited once."""
    data = sample()
    rid = data["header"]["referral_id"]
    recipients = data["header"]["recipients"]
    police = client(federation_keys, broker_url)
    body = police.sign(json.dumps(data).encode())
    connector = aiohttp.TCPConnector(ssl=federation_keys.client_ssl("kelder-police"))
    async with aiohttp.ClientSession(connector=connector) as s:
        warm = await s.post(
            f"{broker_url}/v1/referrals",
            data=police.sign(json.dumps(sample()).encode()),
            headers=JOSE,
        )
        assert warm.status == 202, await warm.text()  # the producer is connected beforehand

        async with topic_config(
            kafka_settings,
            audit_topic(kafka_settings),
            "max.message.bytes",
            str(AUDIT_RECORD_LIMIT),
        ):
            r = await s.post(f"{broker_url}/v1/referrals", data=body, headers=JOSE)
            status, content_type, text = r.status, r.content_type, await r.text()

        delivered = await deliveries(kafka_settings, federation)
        seen = sorted(a for a, ref in delivered.elements() if ref == rid)
        audited = [
            e.type.value for e in await audit_events(kafka_settings) if str(e.message_id) == rid
        ]
        is_problem = content_type == "application/problem+json"
        problem_type = json.loads(text).get("type") if is_problem else content_type
        # One comparison, so that a failure shows the status, the deliveries and the events.
        assert (status, problem_type, seen, audited) == (
            503,
            "urn:cairn:problem:kafka-unavailable",
            [],
            [],
        ), (
            f"Kafka refused the audit record, yet the broker answered {status} "
            f"({problem_type}), {seen or 'no recipient'} can read the referral, and its "
            f"committed audit events are {audited}"
        )

        r = await s.post(f"{broker_url}/v1/referrals", data=body, headers=JOSE)
        assert r.status == 202, await r.text()

    delivered = await deliveries(kafka_settings, federation)
    assert {a: delivered[(a, rid)] for a in recipients} == dict.fromkeys(recipients, 1)
    disclosed = Counter(
        e.recipient
        for e in await audit_events(kafka_settings)
        if str(e.message_id) == rid and e.type is AuditEventType.DISCLOSED
    )
    assert disclosed == Counter(recipients)


async def test_every_delivered_disclosure_has_exactly_one_disclosed_event(
    broker_url: str,
    kafka_settings: Settings,
    federation: Federation,
    federation_keys: FederationKeys,
) -> None:
    """With the audit path working, the committed audit events name each delivered (recipient,
    referral) pair in exactly one 'disclosed' event and each refused pair in one 'refused'
    event, and nothing else: the deliveries and the events match one to one."""
    queued: Counter[tuple[str, str]] = Counter()
    refused: Counter[tuple[str, str]] = Counter()
    submitted: list[str] = []
    async with client(federation_keys, broker_url) as police:
        for n in range(5):
            data = sample()
            if n == 2:
                # The NHS trust is not a party to the MARAC agreement: named, but refused.
                data["header"]["recipients"] = ["kelder-idva", "kelder-marac", "kelder-nhs"]
            receipt = await police.submit(json.dumps(data).encode())
            submitted.append(str(receipt.referral_id))
            for r in receipt.recipients:
                pair = (r.agency, str(receipt.referral_id))
                (queued if r.status.value == "queued" else refused)[pair] += 1
    async with client(federation_keys, broker_url, "kelder-nhs") as nhs:
        receipt = await nhs.submit(json.dumps(sample("referral-medium-risk.json")).encode())
        submitted.append(str(receipt.referral_id))
        queued.update((r.agency, str(receipt.referral_id)) for r in receipt.recipients)
    assert refused == Counter({("kelder-nhs", submitted[2]): 1})

    delivered = await deliveries(kafka_settings, federation)
    events = await audit_events(kafka_settings)
    by_type: dict[AuditEventType, Counter[tuple[str, str]]] = {}
    for e in events:
        by_type.setdefault(e.type, Counter())[(e.recipient or "", str(e.message_id))] += 1

    assert delivered == queued
    assert by_type[AuditEventType.DISCLOSED] == delivered
    assert by_type[AuditEventType.REFUSED] == refused
    assert set(by_type[AuditEventType.DISCLOSED].values()) == {1}
    assert sorted(m for _, m in by_type[AuditEventType.RECEIVED]) == sorted(submitted)
    assert sorted(m for _, m in by_type[AuditEventType.DECIDED]) == sorted(submitted)
    assert set(by_type) == {
        AuditEventType.RECEIVED,
        AuditEventType.DECIDED,
        AuditEventType.DISCLOSED,
        AuditEventType.REFUSED,
    }


# --- 2. the auditor killed mid-stream -------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def auditor_env(settings: Settings, keys: FederationKeys, state: Path) -> dict[str, str]:
    """The environment of a ``cairn`` process on this test's topics, state folder and keys."""
    return cairn_env(
        settings,
        keys,
        state,
        CAIRN_HTTP_HOST="127.0.0.1",
        CAIRN_AUDITOR_HTTP_PORT=str(free_port()),
        CAIRN_CHECKPOINT_EVERY_ENTRIES="500",
        CAIRN_LOG_FORMAT="json",
    )


@contextlib.contextmanager
def auditor_process(env: dict[str, str], output: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``cairn auditor`` as its own process, its output in ``output``; killed if left running."""
    with output.open("wb") as out:
        proc = subprocess.Popen(
            [*CAIRN, "auditor"], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(30)


def log_size(directory: Path) -> int:
    """The auditor's log size as a reader beside it sees it (0 before the log exists)."""
    try:
        with AuditLog.open(directory, readonly=True) as log:
            return log.size
    except AuditUnavailable:
        return 0


def log_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON log lines a ``cairn`` process wrote (anything else it printed is skipped)."""
    lines = []
    for raw in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            line = json.loads(raw)
            if isinstance(line, dict):
                lines.append(line)
    return lines


async def wait_for_log(
    directory: Path,
    done: Callable[[int], bool],
    timeout_s: float,
    proc: subprocess.Popen[bytes],
) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        size = await asyncio.to_thread(log_size, directory)
        if done(size):
            return size
        assert proc.poll() is None, f"the auditor exited with {proc.returncode} at size {size}"
        assert time.monotonic() < deadline, f"the audit log stayed at {size} for {timeout_s}s"
        await asyncio.sleep(0.2)


async def stream(police: ReferralClient, count: int, in_flight: int) -> list[str]:
    """Submit ``count`` fresh referrals, ``in_flight`` at a time; their ids, all accepted."""
    gate = asyncio.Semaphore(in_flight)

    async def one() -> str:
        async with gate:
            receipt = await police.submit(json.dumps(sample()).encode())
            return str(receipt.referral_id)

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def test_auditor_killed_mid_stream_resumes_with_one_leaf_per_event(
    kafka_settings: Settings,
    federation: Federation,
    federation_keys: FederationKeys,
    tmp_path: Path,
) -> None:
    """'cairn auditor' killed with SIGKILL in the middle of a stream of 2,000 referrals and
    restarted ends with exactly one leaf per committed audit event, at the events' own Kafka
    offsets, and 'cairn audit verify' passes."""
    env = auditor_env(kafka_settings, federation_keys, tmp_path / "state")
    directory = tmp_path / "state" / "audit"
    with auditor_process(env, tmp_path / "auditor-1.log") as first:
        async with (
            running_broker(kafka_settings, federation, federation_keys) as url,
            client(federation_keys, url) as police,
        ):
            submissions = asyncio.create_task(stream(police, STREAM_REFERRALS, STREAM_IN_FLIGHT))
            try:
                killed_at = await wait_for_log(
                    directory, lambda n: n >= KILL_AT_ENTRIES, STREAM_TIMEOUT_S, first
                )
                assert not submissions.done(), "the stream ended before the auditor was killed"
                first.send_signal(signal.SIGKILL)
                assert await asyncio.to_thread(first.wait, 10) == -signal.SIGKILL
                with auditor_process(env, tmp_path / "auditor-2.log") as second:
                    accepted = await asyncio.wait_for(submissions, STREAM_TIMEOUT_S)
                    records = await committed_audit(kafka_settings)
                    await wait_for_log(
                        directory, lambda n: n >= len(records), CATCH_UP_TIMEOUT_S, second
                    )
                    second.send_signal(signal.SIGTERM)
                    assert await asyncio.to_thread(second.wait, 60) == 0
            finally:
                submissions.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await submissions

    assert len(set(accepted)) == STREAM_REFERRALS
    received = [
        e for _, v in records if (e := AuditEvent.from_canonical(v)).type is AuditEventType.RECEIVED
    ]
    assert len(received) == STREAM_REFERRALS
    with AuditLog.open(directory, readonly=True) as log:
        assert 0 < killed_at < log.size
        assert log.size == len(records)
        stored = [(e.offset, e.data) for e in log.entries()]
        checkpoints = len(log.checkpoints)
    offsets = [offset for offset, _ in stored]
    assert len(set(offsets)) == len(offsets)
    assert stored == records  # every committed event, once, at its own offset, byte for byte
    assert checkpoints > 1  # at least one signed before the kill, and the final one
    # The restarted auditor resumed from what the killed one had made durable.
    [resumed_at] = [
        line["size"]
        for line in log_lines(tmp_path / "auditor-2.log")
        if line.get("event") == "auditor.opened"
    ]
    assert killed_at <= resumed_at < len(records)

    verified = await asyncio.to_thread(
        subprocess.run,
        [*CAIRN, "audit", "--dir", str(directory), "verify", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    report = json.loads(verified.stdout)
    assert (report["ok"], report["entries"], report["checkpoints"]) == (
        True,
        len(records),
        checkpoints,
    )
    assert report["verified_size"] == len(records)  # the final checkpoint covers every leaf


# --- 3. the audit API -----------------------------------------------------------------------------


def auditor_verifiers(keys: FederationKeys) -> list[NoteVerifier]:
    """The auditor's checkpoint keys as the registry publishes them (not from its key file)."""
    member = keys.trust().registry().member(AUDITOR_ID)
    assert member is not None
    found = []
    for k in member.keys:
        public = k.jwk.public_key()
        if k.use is KeyUse.SIGNING and k.status is KeyStatus.ACTIVE:
            assert isinstance(public, Ed25519PublicKey)
            found.append(NoteVerifier(DEFAULT_ORIGIN, public))
    assert found
    return found


def b64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


@contextlib.asynccontextmanager
async def running_auditor(settings: Settings, keys: FederationKeys) -> AsyncIterator[Auditor]:
    """An in-process auditor following the audit topic, checkpointing after every batch."""
    auditor = Auditor(
        settings, keys.trust(AUDITOR_ID), policy=CheckpointPolicy(every_entries=1, every_s=1.0)
    )
    await auditor.open()
    stop = asyncio.Event()
    task = asyncio.create_task(auditor.run(stop))
    try:
        yield auditor
    finally:
        stop.set()
        await asyncio.wait_for(task, settings.shutdown_timeout_s + 15)
        await auditor.close()


async def test_audit_api_proves_entries_to_the_auditor_certificate_only(
    broker_url: str,
    kafka_settings: Settings,
    federation_keys: FederationKeys,
    tmp_path: Path,
) -> None:
    """The auditor's certificate gets a signed checkpoint, entries by recipient, inclusion and
    consistency proofs that verify independently against the signed root, and a victim's
    disclosures by NHS number; another agency's certificate gets 403 problem+json."""
    high, medium = sample(), sample("referral-medium-risk.json")
    async with client(federation_keys, broker_url) as police:
        await police.submit(json.dumps(high).encode())
    async with client(federation_keys, broker_url, "kelder-nhs") as nhs:
        await nhs.submit(json.dumps(medium).encode())
    records = await committed_audit(kafka_settings)
    high_id, medium_id = high["header"]["referral_id"], medium["header"]["referral_id"]

    settings = kafka_settings.model_copy(update={"state_dir": tmp_path})
    async with running_auditor(settings, federation_keys) as auditor:
        deadline = time.monotonic() + 30
        while True:
            note = await auditor.call(auditor.log.latest_checkpoint)
            if note is not None and Checkpoint.parse(note[: note.rfind(b"\n\n") + 1]).size == len(
                records
            ):
                break
            assert time.monotonic() < deadline, "the auditor never checkpointed every event"
            await asyncio.sleep(0.1)

        server = TestServer(auditor_app(auditor), host="127.0.0.1")
        await server.start_server(ssl=federation_keys.server_ssl())
        base = str(server.make_url("")).rstrip("/") + "/v1/audit"
        try:
            connector = aiohttp.TCPConnector(ssl=federation_keys.client_ssl(AUDITOR_ID))
            async with aiohttp.ClientSession(connector=connector) as s:

                async def get(path: str, **params: Any) -> Any:
                    async with s.get(f"{base}{path}", params=params) as r:
                        assert r.status == 200, await r.text()
                        return await r.json()

                # The checkpoint: a signed note over every committed event.
                async with s.get(f"{base}/checkpoint") as r:
                    assert r.status == 200
                    assert r.content_type == "text/plain"
                    signed = await r.read()
                checkpoint = verify_checkpoint(
                    signed, auditor_verifiers(federation_keys), origin=DEFAULT_ORIGIN
                )
                size = checkpoint.size
                assert size == len(records)

                # Entries by recipient: the two disclosures to the IDVA service, nothing else.
                found = (await get("/entries", recipient="kelder-idva"))["entries"]
                assert sorted(
                    (e["event"]["type"], e["event"]["message_id"]) for e in found
                ) == sorted([("disclosed", high_id), ("disclosed", medium_id)])

                # Inclusion: every Kafka record, hashed here, is a leaf under the signed root.
                for index, (_, value) in enumerate(records):
                    proof = await get("/proof/inclusion", index=index, size=size)
                    assert b64(proof["leaf_hash"]) == leaf_hash(value)
                    assert b64(proof["root_hash"]) == checkpoint.root_hash
                    verify_inclusion(
                        index,
                        size,
                        leaf_hash(value),
                        [b64(p) for p in proof["inclusion_path"]],
                        checkpoint.root_hash,
                    )
                    assert (proof["leaf_index"], proof["tree_size"]) == (index, size)
                    assert proof["checkpoint"] == signed.decode()
                    # The same proof as C2SP tlog-proof text, checked from the Kafka record.
                    proven = verify_tlog_proof(
                        proof["tlog_proof"].encode(),
                        value,
                        auditor_verifiers(federation_keys),
                        DEFAULT_ORIGIN,
                    )
                    assert proven == checkpoint
                first = await get("/proof/inclusion", index=0)
                assert first["tree_size"] == size

                # Consistency: the one-leaf tree (the first record's hash) grew into the
                # signed tree.
                proof = await get("/proof/consistency", first=1)
                assert proof["type"] == "consistency"
                assert (proof["tree_size_1"], proof["tree_size_2"]) == (1, size)
                assert b64(proof["root_hash_1"]) == leaf_hash(records[0][1])
                assert b64(proof["root_hash_2"]) == checkpoint.root_hash
                assert proof["checkpoint_2"] == signed.decode()
                path = [b64(p) for p in proof["consistency_path"]]
                verify_consistency(1, size, path, leaf_hash(records[0][1]), checkpoint.root_hash)
                with pytest.raises(InvalidProof):  # the check is not vacuous
                    verify_consistency(
                        1,
                        size,
                        [bytes(32), *path[1:]],
                        leaf_hash(records[0][1]),
                        checkpoint.root_hash,
                    )

                # The data subject: the victim's NHS number, in the body, finds her referral's
                # events (received, decided, a disclosure to each recipient), not the others'.
                # The search is itself an ig_search event (it may be in the log already).
                asked = {"nhs_number": VICTIM_NHS_NUMBER, "reason": "SAR request IG-0001"}
                async with s.post(f"{base}/subject", json=asked) as r:
                    assert r.status == 200, await r.text()
                    found = [e["event"] for e in (await r.json())["entries"]]
                about = [e for e in found if not e["type"].startswith("ig_")]
                assert {e["message_id"] for e in about} == {high_id}
                assert sorted(e["recipient"] for e in about if e["type"] == "disclosed") == sorted(
                    high["header"]["recipients"]
                )
                assert {e["type"] for e in about} >= {"received", "disclosed"}

            connector = aiohttp.TCPConnector(ssl=federation_keys.client_ssl("kelder-police"))
            async with aiohttp.ClientSession(connector=connector) as s:
                for method, endpoint, body in (
                    ("GET", "/checkpoint", None),
                    ("GET", "/entries?recipient=kelder-idva", None),
                    ("GET", "/proof/inclusion?index=0", None),
                    ("POST", "/subject", {"nhs_number": VICTIM_NHS_NUMBER}),
                ):
                    async with s.request(method, f"{base}{endpoint}", json=body) as r:
                        assert r.status == 403, (endpoint, await r.text())
                        assert r.content_type == "application/problem+json"
                        problem = await r.json()
                    assert problem["type"] == "urn:cairn:problem:unauthenticated"
                    assert "kelder-police" in problem["detail"]
        finally:
            await asyncio.wait_for(server.close(), 30)
