"""A Kafka node SIGKILLed under load: every answer is 202 or 503, and every 202 is delivered.

Measured from outside, through the public behaviour only (HTTP answers and what the topics
hold), so that it holds whatever the broker does inside: on a three-node local Kafka cluster
(KRaft; tests/kafka_support.py ``LocalCluster``), where ``cairn topics create`` must have made
every topic with 3 replicas and ``min.insync.replicas`` 2, a real ``cairn serve`` process with
the development federation takes 2,000 distinct signed referrals from a retrying client
(tests/fault/retrying.py), 16 in flight, which re-sends the same bytes after a 503 until it
gets 200 or 202. The broker's ``publish_timeout_s`` is 4 s, shorter than the 7-8 s Kafka takes
to fence a dead node and elect new leaders, so that the submissions caught in the failover are
answered 503, some of them while their commit is in flight, and retried. Once a quarter of
them are accepted, the node leading the audit topic's only partition is SIGKILLed: every
referral's transaction writes to that partition, so the kill interrupts all of them at once,
wherever the other leaders (the delivery partitions', the transaction coordinators') happen to
be. Once the broker has accepted another quarter on the two nodes left, the node is started
again and the run goes on.

Then every delivery topic and the audit topic are read read_committed to their ends: each
accepted referral reaches each recipient its receipt says was queued exactly once (nothing
missing, nothing extra), the audit topic holds exactly one ``disclosed`` event per delivery, and
every answer the client got, before, during and after the failover, was 202, 503 or a replayed
200: never a 500, another status, or a connection reset or timeout. The figures (503s, time to
recover) are printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from broker.kafka.topics import federation_topics
from broker.kafka.transport import Record
from schemas.federation import Federation
from tests.conftest import FederationKeys
from tests.fault.processes import CAIRN, Service, cairn_run, free_port, service_env
from tests.fault.retrying import Attempt, Outcome, RetryingClient, Submission
from tests.fault.test_crash import (
    delivered,
    delivery_problems,
    duplicates,
    retry_figures,
    submissions,
)
from tests.kafka_support import LocalCluster, read_committed

REFERRALS = 2_000
CONCURRENCY = 16
KILL_AT = REFERRALS // 4  # accepted referrals when the node is killed
RESTART_AFTER = REFERRALS // 4  # ... and accepted after the kill when it is started again
RECOVERY_LIMIT_S = 120.0  # seconds the broker has to accept RESTART_AFTER more on two nodes
RUN_TIMEOUT_S = 300.0  # seconds for the whole run
PUBLISH_TIMEOUT_S = 4.0  # seconds the broker waits for Kafka before it answers 503
TOPIC_CONFIG = 1  # DescribeConfigs' config_source of a value set on the topic itself
ACCEPTABLE = frozenset({"200", "202", "503"})  # what any one try may be answered


@dataclass
class Failover:
    """What the fault loop did to the cluster, and when (time.monotonic())."""

    node: int = 0  # the node SIGKILLed
    led: dict[str, list[int]] = field(default_factory=dict)  # what it led: topic -> partitions
    killed_at: float | None = None
    accepted_at_kill: int = 0
    restarted_at: float | None = None  # when its restart began
    ready_at: float | None = None  # when the cluster answered again with all three
    recovered_in_time: bool = True  # RESTART_AFTER more accepted within RECOVERY_LIMIT_S


async def leaders(bootstrap: str, topics: list[str]) -> dict[str, dict[int, int]]:
    """topic -> partition -> the node leading it."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await asyncio.wait_for(admin.start(), 30)
    try:
        described = await admin.describe_topics(topics)
    finally:
        await admin.close()
    return {
        t["topic"]: {p["partition"]: p["leader"] for p in t["partitions"]}
        for t in described
        if t["error_code"] == 0
    }


async def replication(bootstrap: str, topics: list[str]) -> dict[str, tuple[int, str | None]]:
    """topic -> (the fewest replicas any of its partitions has, its min.insync.replicas if set
    on the topic itself rather than inherited)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await asyncio.wait_for(admin.start(), 30)
    try:
        described = await admin.describe_topics(topics)
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, t) for t in topics]
        )
    finally:
        await admin.close()
    insync: dict[str, str | None] = {}
    for response in responses:
        for _error, _message, _type, name, entries, *_ in response.resources:
            insync[name] = next(
                (e[1] for e in entries if e[0] == "min.insync.replicas" and e[3] == TOPIC_CONFIG),
                None,
            )
    return {
        t["topic"]: (min(len(p["replicas"]) for p in t["partitions"]), insync.get(t["topic"]))
        for t in described
    }


async def fail_a_node(
    cluster: LocalCluster, client: RetryingClient, prefix: str, stop: asyncio.Event
) -> Failover:
    """SIGKILL the audit partition's leader at KILL_AT accepted, start it again once the
    broker has accepted RESTART_AFTER more (or RECOVERY_LIMIT_S passed)."""
    f = Failover()
    while client.accepted < KILL_AT and not stop.is_set():  # noqa: ASYNC110 - polls a counter
        await asyncio.sleep(0.02)
    if stop.is_set():
        return f
    led = await leaders(cluster.bootstrap, [f"{prefix}.audit", "__transaction_state"])
    f.node = led[f"{prefix}.audit"][0]
    f.led = {t: sorted(p for p, n in ps.items() if n == f.node) for t, ps in led.items()}
    f.accepted_at_kill = client.accepted
    await asyncio.to_thread(cluster.kill, f.node)
    f.killed_at = time.monotonic()
    deadline = f.killed_at + RECOVERY_LIMIT_S
    while client.accepted < f.accepted_at_kill + RESTART_AFTER and not stop.is_set():
        if time.monotonic() > deadline:
            f.recovered_in_time = False
            break
        await asyncio.sleep(0.05)
    f.restarted_at = time.monotonic()
    await asyncio.to_thread(cluster.restart, f.node)
    f.ready_at = time.monotonic()
    return f


@dataclass
class FailoverRun:
    """One run's topics (a fresh prefix), state folders and the broker process."""

    keys: FederationKeys
    cluster: LocalCluster
    base: Path
    prefix: str = field(default_factory=lambda: f"failover{uuid.uuid4().hex[:8]}")
    services: list[Service] = field(default_factory=list)

    def env(self, state: str, **extra: str) -> dict[str, str]:
        return service_env(
            dict(os.environ),
            CAIRN_KAFKA_BOOTSTRAP_SERVERS=self.cluster.bootstrap,
            CAIRN_TOPIC_PREFIX=self.prefix,
            CAIRN_TOPIC_REPLICATION_FACTOR="3",  # min.insync.replicas follows: 2
            CAIRN_TRANSACTIONAL_ID=f"cairn-{self.prefix}",
            CAIRN_KEY_DIR=str(self.keys.root),
            CAIRN_KEY_PASSPHRASE=self.keys.passphrase.decode(),
            CAIRN_STATE_DIR=str(self.base / state),
            # The referrals are signed once, before the run; a retry near its end re-sends them.
            CAIRN_MAX_SIGNATURE_AGE_S="900",
            # Shorter than the ~10 s Kafka takes to fence a dead node and elect new leaders, so
            # that the submissions caught in the failover are answered 503 and retried.
            CAIRN_PUBLISH_TIMEOUT_S=str(PUBLISH_TIMEOUT_S),
            CAIRN_LOG_FORMAT="json",
            CAIRN_LOG_LEVEL="warning",
            **extra,
        )

    def broker(self) -> Service:
        port = free_port()
        env = self.env("broker-state", CAIRN_HTTP_HOST="127.0.0.1", CAIRN_HTTP_PORT=str(port))
        s = Service(
            "broker",
            (*CAIRN, "serve"),
            env,
            self.base / "broker.log",
            ready_url=f"https://127.0.0.1:{port}/readyz",
            ssl_context=self.keys.client_ssl("kelder-police"),
        )
        self.services.append(s)
        return s


@pytest.fixture
def failover_run(
    kafka_cluster: LocalCluster, federation_keys: FederationKeys, tmp_path: Path
) -> Iterator[FailoverRun]:
    run = FailoverRun(federation_keys, kafka_cluster, tmp_path)
    yield run
    for s in run.services:
        s.close()


async def send_through_failover(
    run: FailoverRun, client: RetryingClient, to_send: list[Submission]
) -> tuple[dict[str, Outcome], Failover, float]:
    """Send everything while one node is killed and restarted; the outcomes, what was done
    and how long it took. Fails if the run overruns."""
    stop = asyncio.Event()
    started = time.monotonic()
    sending = asyncio.create_task(client.send_all(to_send))
    faulting = asyncio.create_task(fail_a_node(run.cluster, client, run.prefix, stop))
    try:
        await asyncio.wait({sending}, timeout=RUN_TIMEOUT_S)
    finally:
        stop.set()
        if not sending.done():
            sending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sending
    failover = await faulting  # raises if the node could not be killed or brought back
    if sending.cancelled():
        pytest.fail(
            f"the client had {client.accepted} of {len(to_send)} referrals accepted when the "
            f"run stopped after {time.monotonic() - started:.0f}s (limit {RUN_TIMEOUT_S}s); "
            f"{failover}\n{run.services[0].tail()}"
        )
    return sending.result(), failover, time.monotonic() - started


def disclosed_on_topic(records: list[Record]) -> Counter[tuple[str, str]]:
    """How many ``disclosed`` events each (referral, recipient) has on the audit topic."""
    counts: Counter[tuple[str, str]] = Counter()
    for r in records:
        event = json.loads(r.value)
        if event.get("type") == "disclosed":
            counts[(str(event["message_id"]), str(event["recipient"]))] += 1
    return counts


def answers_figures(log: list[Attempt], f: Failover) -> tuple[str, Counter[str]]:
    """A line on what the client was answered, and when, relative to the kill; and the
    answers outside ACCEPTABLE, counted."""
    kill = f.killed_at if f.killed_at is not None else float("inf")
    before = Counter(a.result for a in log if a.ended < kill)
    after = [a for a in log if a.ended >= kill]
    since_kill = Counter(a.result for a in after)
    first_ok = min((a.ended for a in after if a.result in ("200", "202")), default=None)
    unavailable = [a.ended for a in after if a.result == "503"]
    recover = "never" if first_ok is None else f"{first_ok - kill:.1f}s"
    last_503 = f"{max(unavailable) - kill:.1f}s" if unavailable else "none"
    bad = Counter(a.result for a in log if a.result not in ACCEPTABLE)
    line = (
        f"answers before the kill {dict(before)}, since {dict(since_kill)}; first 2xx "
        f"{recover} after the kill, last 503 {last_503} after it"
    )
    return line, bad


async def test_a_kafka_node_killed_under_load_loses_nothing_and_answers_only_202_or_503(
    failover_run: FailoverRun, federation: Federation, federation_keys: FederationKeys
) -> None:
    """2,000 referrals while the node leading the audit partition is SIGKILLed and restarted:
    every try is answered 202 or 503 (or a replayed 200), all 2,000 are accepted, each
    delivered once per queued recipient, with one disclosed audit event per delivery."""
    run = failover_run
    created = cairn_run(run.env("topics"), "topics", "create")
    assert created.returncode == 0, created.stderr[-2000:]
    names = [t.name for t in federation_topics(federation, run.prefix)]
    layout = await replication(run.cluster.bootstrap, names)
    assert layout == dict.fromkeys(names, (3, "2")), f"(replicas, min.insync.replicas): {layout}"
    broker = run.broker()
    broker.start()
    assert await broker.wait_ready(), broker.tail()

    to_send = submissions(federation_keys, REFERRALS)
    log: list[Attempt] = []
    client = RetryingClient(
        broker.url,
        {a: federation_keys.client_ssl(a) for a in {s.sender for s in to_send}},
        concurrency=CONCURRENCY,
        attempt_log=log,
    )
    outcomes, f, sent_s = await send_through_failover(run, client, to_send)
    broker_exit = broker.reap_if_dead()
    broker.stop()

    expected = {(rid, agency) for rid, o in outcomes.items() for agency in o.queued()}
    on_topics = await delivered(run.cluster.bootstrap, run.prefix, federation)
    audit = await read_committed(run.cluster.bootstrap, f"{run.prefix}.audit", timeout_s=120)
    disclosed = disclosed_on_topic(audit)

    refused = {rid: o for rid, o in outcomes.items() if not o.accepted}
    topic_dups, audit_dups = duplicates(on_topics), duplicates(disclosed)
    answers, bad = answers_figures(log, f)
    down = (
        f"node {f.node} (leading {f.led}) SIGKILLed at {f.accepted_at_kill} accepted, "
        f"{(f.killed_at or 0) - started_at(log):.0f}s into the run; restarted "
        f"{(f.restarted_at or 0) - (f.killed_at or 0):.0f}s later, all three answering "
        f"{(f.ready_at or 0) - (f.restarted_at or 0):.0f}s after that"
    )
    figures = (
        f"referrals {REFERRALS}, accepted {len(outcomes) - len(refused)} in {sent_s:.0f}s "
        f"({sum(o.status == 200 for o in outcomes.values())} as a replayed 200); {down}; "
        f"{answers}; {retry_figures(outcomes)}; deliveries expected {len(expected)}, records "
        f"on the delivery topics {sum(on_topics.values())}, duplicated pairs {len(topic_dups)}; "
        f"disclosed events {sum(disclosed.values())}, duplicated {len(audit_dups)}; "
        f"the broker's output is in {broker.log_path}"
    )
    print(figures)

    problems = []
    if bad:
        problems.append(f"tries answered other than 202, 503 or 200: {dict(bad)}")
    if broker_exit is not None:
        problems.append(f"the broker exited by itself (exit {broker_exit}):\n{broker.tail()}")
    if not f.recovered_in_time:
        problems.append(
            f"the broker did not accept {RESTART_AFTER} more referrals on two nodes within "
            f"{RECOVERY_LIMIT_S:.0f}s of the kill"
        )
    if refused:
        some = {rid: (o.status, o.detail) for rid, o in list(refused.items())[:5]}
        problems.append(f"{len(refused)} referrals never accepted, e.g. {some}")
    if len(outcomes) != REFERRALS:
        problems.append(f"{REFERRALS - len(outcomes)} referrals have no outcome")
    if wrong := [rid for rid, o in outcomes.items() if o.receipt_for not in (None, rid)]:
        problems.append(f"{len(wrong)} receipts name another referral, e.g. {wrong[:5]}")
    problems += delivery_problems(expected, on_topics, disclosed)
    assert problems == [], figures + "\n" + "\n".join(problems)


def started_at(log: list[Attempt]) -> float:
    return min((a.started for a in log), default=0.0)
