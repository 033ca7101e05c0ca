"""Exactly one disclosure per accepted referral, whatever instant the broker is killed at.

Measured from outside, through the public behaviour only: ``cairn serve`` and ``cairn auditor``
run as subprocesses against the real Kafka; a retrying client (tests/fault/retrying.py) sends
2,000 distinct signed referrals from two agencies, eight in flight, and retries the same bytes
until it gets 200 or 202. Meanwhile the broker is SIGKILLed from outside ten times, once at a
random point of each tenth of the run (placed by progress, not by the clock, so that a slow
machine gets the same faults and the run stays bounded rather than spending itself on
restarts), and restarted at once with the same settings; and it kills itself, with a small
chance per referral, in the instant after Kafka committed a submission and before it answered
(tests/fault/killpoint.py): the instant where a crash can make a retry publish the same
referral again.

Afterwards every delivery topic is read read_committed to its end and the auditor's log is
queried: each accepted referral reaches each recipient its receipt says was queued exactly once
(nothing missing, nothing extra), and the log holds exactly one ``disclosed`` event per
delivery and verifies (``cairn audit verify``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from broker.envelope import header_map
from broker.kafka.topics import delivery_topic
from keys import sign_referral
from schemas.federation import Federation
from tests.conftest import FederationKeys
from tests.fault.killpoint import ENV_LOG, ENV_PROBABILITY
from tests.fault.processes import (
    CAIRN,
    KILLPOINT_BROKER,
    Service,
    cairn_run,
    free_port,
    service_env,
)
from tests.fault.retrying import Outcome, RetryingClient, Submission
from tests.kafka_support import LocalKafka, read_committed, read_committed_many
from tests.samples import sample

REFERRALS = 2_000
CONCURRENCY = 8
OUTSIDE_KILLS = 10  # SIGKILLs from outside, one in each tenth of the first 90% of the run
KILL_JITTER_S = 0.5  # seconds: how far after its point a kill may land, at random
KILL_AFTER_COMMIT = 0.004  # chance, per published referral, that the broker dies right after
MAX_RESTARTS = 300  # bounds the fault loop whatever happens
RUN_TIMEOUT_S = 300.0
AUDIT_CATCH_UP_S = 120.0

# (sample, sending agency): police and NHS senders, MARAC, IDVA and Encompass recipients.
TEMPLATES = (
    ("referral-high-risk.json", "kelder-police"),
    ("referral-medium-risk.json", "kelder-nhs"),
    ("referral-professional-judgement.json", "kelder-nhs"),
    ("encompass-notification.json", "kelder-police"),
    ("referral-consent-refused.json", "kelder-nhs"),
)


def submissions(keys: FederationKeys, count: int) -> list[Submission]:
    """``count`` distinct referrals, each signed once (a retry re-sends these bytes)."""
    signing = {sender: keys.trust(sender).signing_key() for _, sender in TEMPLATES}
    now = datetime.now(UTC)
    out = []
    for i in range(count):
        name, sender = TEMPLATES[i % len(TEMPLATES)]
        data = sample(name)
        header = data["header"]
        message_id = header.get("notification_id") or header["referral_id"]  # fresh from sample()
        body = sign_referral(json.dumps(data).encode(), signing[sender], issued_at=now)
        out.append(Submission(message_id, sender, body))
    return out


@dataclass
class Faults:
    """What the fault loop did to the broker."""

    kills: int = 0  # SIGKILLs from outside
    self_kills: int = 0  # deaths at the kill point (after a commit, before the answer)
    restarts: int = 0
    down_s: float = 0.0  # seconds from each death to the broker being ready again, summed
    crashes: list[int] = field(default_factory=list)  # exit codes of any other death
    killed_at: list[int] = field(default_factory=list)  # accepted count at each outside kill


async def inject_faults(
    broker: Service, client: RetryingClient, stop: asyncio.Event, rng: random.Random
) -> Faults:
    """Kill and restart the broker until ``stop``; bring it back whenever it killed itself."""
    faults = Faults()
    points = [
        int(REFERRALS * 0.9 * (i + rng.random()) / OUTSIDE_KILLS) for i in range(OUTSIDE_KILLS)
    ]

    async def restart(since: float) -> None:
        faults.restarts += 1
        broker.start()
        await broker.wait_ready()  # False if it killed itself meanwhile: reaped next round
        faults.down_s += time.monotonic() - since

    while not stop.is_set() and faults.restarts < MAX_RESTARTS:
        exit_code = broker.reap_if_dead()
        if exit_code is not None:
            if exit_code == -signal.SIGKILL:
                faults.self_kills += 1
            else:
                faults.crashes.append(exit_code)
            await restart(time.monotonic())
            continue
        if points and client.accepted >= points[0]:
            await asyncio.sleep(rng.uniform(0, KILL_JITTER_S))
            if not broker.running:  # it killed itself meanwhile: reap it first
                continue
            points.pop(0)
            faults.killed_at.append(client.accepted)
            broker.kill()
            faults.kills += 1
            await restart(time.monotonic())
            continue
        await asyncio.sleep(0.02)
    return faults


def referral_id(record_headers: tuple[tuple[str, bytes], ...], key: bytes | None) -> str:
    return header_map(record_headers).get("cairn-referral-id") or (key or b"").decode()


async def delivered(
    bootstrap: str, prefix: str, federation: Federation
) -> Counter[tuple[str, str]]:
    """How many committed records each (referral, recipient) has on the delivery topics."""
    topics = {delivery_topic(prefix, a.id): a.id for a in federation.agencies}
    found = await read_committed_many(bootstrap, sorted(topics), timeout_s=120)
    counts: Counter[tuple[str, str]] = Counter()
    for topic, records in found.items():
        for r in records:
            counts[(referral_id(r.headers, r.key), topics[topic])] += 1
    return counts


def audit_entries(env: dict[str, str], folder: Path) -> int:
    result = cairn_run(env, "audit", "--dir", str(folder), "verify", "--json", "--skip-events")
    if result.returncode != 0:  # e.g. the log is not there yet
        return -1
    return int(json.loads(result.stdout)["entries"])


def disclosed_events(env: dict[str, str], folder: Path) -> Counter[tuple[str, str]]:
    result = cairn_run(
        env, "audit", "--dir", str(folder), "query", "--type", "disclosed", "--format", "json"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    counts: Counter[tuple[str, str]] = Counter()
    for line in result.stdout.splitlines():
        event = json.loads(line)["event"]
        counts[(str(event["message_id"]), str(event["recipient"]))] += 1
    return counts


def duplicates(counts: Counter[tuple[str, str]]) -> dict[tuple[str, str], int]:
    return {pair: n for pair, n in counts.items() if n > 1}


def delivery_problems(
    expected: set[tuple[str, str]],
    on_topics: Counter[tuple[str, str]],
    disclosed: Counter[tuple[str, str]],
) -> list[str]:
    """What is wrong with what reached the delivery topics (``on_topics``) and the audit's
    ``disclosed`` events, per (referral, recipient), against the ``expected`` deliveries:
    exactly once each, nothing missing, nothing extra."""
    problems = []
    if topic_dups := duplicates(on_topics):
        problems.append(f"delivered more than once: {sorted(topic_dups.items())[:10]}")
    if missing := expected - set(on_topics):
        problems.append(f"{len(missing)} deliveries missing, e.g. {sorted(missing)[:5]}")
    if extra := set(on_topics) - expected:
        problems.append(f"{len(extra)} deliveries no receipt queued, e.g. {sorted(extra)[:5]}")
    if audit_dups := duplicates(disclosed):
        problems.append(f"disclosed more than once: {sorted(audit_dups.items())[:10]}")
    if set(disclosed) != expected:
        problems.append(
            f"disclosed events without a delivery: {sorted(set(disclosed) - expected)[:5]}, "
            f"deliveries without one: {sorted(expected - set(disclosed))[:5]}"
        )
    return problems


def retry_figures(outcomes: dict[str, Outcome]) -> str:
    reasons: Counter[str] = Counter()
    for o in outcomes.values():
        reasons.update(o.retried_on)
    tries = sum(o.attempts for o in outcomes.values())
    statuses = Counter(o.status for o in outcomes.values())
    return (
        f"{tries} tries ({tries - len(outcomes)} retries: {dict(reasons.most_common())}); "
        f"final statuses {dict(statuses)}"
    )


@dataclass
class CrashRun:
    """One run's own topics (a fresh prefix), state folders and processes."""

    keys: FederationKeys
    kafka: LocalKafka
    base: Path
    prefix: str = field(default_factory=lambda: f"crash{uuid.uuid4().hex[:8]}")
    services: list[Service] = field(default_factory=list)

    @property
    def audit_dir(self) -> Path:
        return self.base / "auditor-state" / "audit"

    @property
    def kill_log(self) -> Path:
        return self.base / "killpoint.log"

    def env(self, state: str, **extra: str) -> dict[str, str]:
        return service_env(
            dict(os.environ),
            CAIRN_KAFKA_BOOTSTRAP_SERVERS=self.kafka.bootstrap,
            CAIRN_TOPIC_PREFIX=self.prefix,
            CAIRN_TRANSACTIONAL_ID=f"cairn-{self.prefix}",
            CAIRN_KEY_DIR=str(self.keys.root),
            CAIRN_KEY_PASSPHRASE=self.keys.passphrase.decode(),
            CAIRN_STATE_DIR=str(self.base / state),
            CAIRN_LOG_FORMAT="json",
            CAIRN_LOG_LEVEL="warning",
            **extra,
        )

    def broker(self) -> Service:
        """``cairn serve`` with the kill point armed, always on the same port and state."""
        port = free_port()
        env = self.env(
            "broker-state",
            CAIRN_HTTP_HOST="127.0.0.1",
            CAIRN_HTTP_PORT=str(port),
            **{ENV_PROBABILITY: str(KILL_AFTER_COMMIT), ENV_LOG: str(self.kill_log)},
        )
        return self._service(
            "broker",
            (*KILLPOINT_BROKER, "serve"),
            env,
            ready_url=f"https://127.0.0.1:{port}/readyz",
            ssl_context=self.keys.client_ssl("kelder-police"),
        )

    def auditor(self) -> Service:
        env = self.env("auditor-state", CAIRN_AUDITOR_HTTP_PORT=str(free_port()))
        return self._service("auditor", (*CAIRN, "auditor"), env)

    def _service(self, name: str, argv: tuple[str, ...], env: dict[str, str], **kw: Any) -> Service:
        s = Service(name, argv, env, self.base / f"{name}.log", **kw)
        self.services.append(s)
        return s


@pytest.fixture
def crash_run(
    kafka: LocalKafka, federation_keys: FederationKeys, tmp_path: Path
) -> Iterator[CrashRun]:
    run = CrashRun(federation_keys, kafka, tmp_path)
    yield run
    for s in run.services:
        s.close()


async def send_under_faults(
    broker: Service, client: RetryingClient, to_send: list[Submission]
) -> tuple[dict[str, Outcome], Faults, float]:
    """Send everything while the fault loop kills the broker; the outcomes, the faults and
    how long it took. Stops sending if the fault loop fails or the run overruns."""
    stop = asyncio.Event()
    started = time.monotonic()
    sending = asyncio.create_task(client.send_all(to_send))
    faulting = asyncio.create_task(inject_faults(broker, client, stop, random.Random()))  # noqa: S311
    try:
        await asyncio.wait(
            {sending, faulting}, timeout=RUN_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        stop.set()
        if not sending.done():
            sending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sending
    faults = await faulting  # raises if the broker could not be brought back
    if sending.cancelled():
        pytest.fail(
            f"the client had {client.accepted} of {len(to_send)} referrals accepted when the "
            f"run stopped after {time.monotonic() - started:.0f}s (limit {RUN_TIMEOUT_S}s); "
            f"{faults}\n{broker.tail()}"
        )
    return sending.result(), faults, time.monotonic() - started


async def audit_caught_up(run: CrashRun, auditor: Service) -> tuple[int, int, int]:
    """Wait (bounded) until the auditor's log holds every committed audit record, then stop
    it; (records on the audit topic, entries in the log, the auditor's exit code)."""
    records = len(await read_committed(run.kafka.bootstrap, f"{run.prefix}.audit", timeout_s=120))
    deadline = time.monotonic() + AUDIT_CATCH_UP_S
    entries = audit_entries(auditor.env, run.audit_dir)
    while entries < records and time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        entries = audit_entries(auditor.env, run.audit_dir)
    return records, entries, auditor.stop()


async def test_a_broker_killed_at_any_instant_discloses_each_referral_once(
    crash_run: CrashRun, federation: Federation, federation_keys: FederationKeys
) -> None:
    """2,000 referrals from a retrying client while the broker is SIGKILLed at random and
    right after commits: each recipient has each accepted referral once, and the verified
    audit log holds one disclosed event per delivery."""
    run = crash_run
    created = cairn_run(run.env("topics"), "topics", "create")
    assert created.returncode == 0, created.stderr[-2000:]
    broker, auditor = run.broker(), run.auditor()
    auditor.start()
    broker.start()
    assert await broker.wait_ready(), broker.tail()

    to_send = submissions(federation_keys, REFERRALS)
    client = RetryingClient(
        broker.url,
        {a: federation_keys.client_ssl(a) for a in {s.sender for s in to_send}},
        concurrency=CONCURRENCY,
    )
    outcomes, faults, sent_s = await send_under_faults(broker, client, to_send)
    # A last restart, then a clean stop: whatever the last broker left open is fenced.
    broker.kill()
    broker.start()
    assert await broker.wait_ready(), broker.tail()
    broker.stop()

    expected = {(rid, agency) for rid, o in outcomes.items() for agency in o.queued()}
    on_topics = await delivered(run.kafka.bootstrap, run.prefix, federation)
    audit_records, entries, auditor_exit = await audit_caught_up(run, auditor)
    verified = cairn_run(auditor.env, "audit", "--dir", str(run.audit_dir), "verify")
    disclosed = disclosed_events(auditor.env, run.audit_dir)

    killed_after_commit = run.kill_log.read_text().split() if run.kill_log.exists() else []
    refused = {rid: o for rid, o in outcomes.items() if not o.accepted}
    topic_dups = duplicates(on_topics)
    audit_dups = duplicates(disclosed)
    figures = (
        f"referrals {REFERRALS}, accepted {len(outcomes) - len(refused)} in {sent_s:.0f}s "
        f"({sum(o.status == 200 for o in outcomes.values())} as a replayed 200); "
        f"broker SIGKILLed {faults.kills} times from outside (at accepted counts "
        f"{faults.killed_at}), {faults.self_kills} times right after a commit "
        f"(referrals {killed_after_commit}); {faults.restarts} restarts, "
        f"{faults.down_s:.0f}s down in all; "
        f"{retry_figures(outcomes)}; deliveries expected {len(expected)}, records on the "
        f"delivery topics {sum(on_topics.values())}, duplicated (referral, recipient) pairs "
        f"{len(topic_dups)} ({sum(topic_dups.values()) - len(topic_dups)} extra records); "
        f"disclosed events {sum(disclosed.values())}, duplicated {len(audit_dups)}; "
        f"audit records {audit_records}, log entries {entries}; auditor exit {auditor_exit}; "
        f"the processes' output is in {run.base}"
    )
    print(figures)

    problems = []
    if refused:
        some = {rid: (o.status, o.detail) for rid, o in list(refused.items())[:5]}
        problems.append(f"{len(refused)} referrals never accepted, e.g. {some}")
    if wrong := [rid for rid, o in outcomes.items() if o.receipt_for not in (None, rid)]:
        problems.append(f"{len(wrong)} receipts name another referral, e.g. {wrong[:5]}")
    if faults.crashes:
        problems.append(f"the broker crashed by itself, exit codes {faults.crashes}")
    if faults.kills < OUTSIDE_KILLS:
        problems.append(f"the run ended after {faults.kills} of {OUTSIDE_KILLS} outside kills")
    if entries != audit_records:
        problems.append(f"the auditor holds {entries} of {audit_records} audit records")
    if verified.returncode != 0:
        problems.append(f"cairn audit verify failed: {verified.stdout[-1000:]}")
    problems += delivery_problems(expected, on_topics, disclosed)
    assert problems == [], figures + "\n" + "\n".join(problems)
