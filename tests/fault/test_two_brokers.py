"""Two brokers on one PostgreSQL database publish each referral once, even when sent to both.

Measured from outside, through the public behaviour only: two ``cairn serve`` processes, each
on its own port, share the state folder (so each takes its own instance slot, and with it its
own Kafka transactional id, with no configuration: broker/instance.py), one topic prefix, the
real local Kafka and one PostgreSQL database (``CAIRN_DATABASE_URL``, a database of this test's
own in the suite's cluster, tests/pg_support.py). 1,000 distinct signed referrals from two
agencies are spread across them, 16 in flight: most go to one broker or the other, alternately,
and 200 go to both at the same instant (the same bytes, as a client that fails over on a slow
answer would send them). A 503 is retried with the same bytes, a bounded number of times.

Then every delivery topic and the audit topic are read read_committed to their ends: every
submission was answered 202 or a replayed 200 (a 503 only on the way to one of those), both
answers for a referral sent twice carry the same receipt and at most one of them is a 202, each
referral reaches each recipient its receipt says was queued exactly once (nothing missing,
nothing extra), the audit topic holds exactly one ``disclosed`` event per delivery, both brokers
accepted some, and neither was fenced (neither log names a fenced producer). The figures (200s
and 202s of the double sends, 503s, duration) are printed.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from broker.instance import INSTANCES_DIR
from schemas.federation import Federation
from tests.conftest import FederationKeys
from tests.fault.processes import CAIRN, Service, cairn_run, free_port, service_env
from tests.fault.retrying import Submission
from tests.fault.test_crash import delivered, delivery_problems, duplicates, submissions
from tests.fault.test_failover import disclosed_on_topic
from tests.kafka_support import LocalKafka, read_committed

REFERRALS = 1_000
DOUBLE_SENT = 200  # referrals posted to both brokers at the same instant
CONCURRENCY = 16  # referrals in flight (a double send is one referral, two requests)
MAX_TRIES = 20  # tries per request: the first, then retries after a 503
BACKOFF_S = (0.05, 1.0)  # first and largest pause before a retry
ATTEMPT_TIMEOUT_S = 30.0  # seconds per try
RUN_TIMEOUT_S = 150.0  # seconds for all the sending
FENCED = ("kafka.transaction_fenced", "ProducerFenced", "InvalidProducerEpoch")


@dataclass
class Answer:
    """One request's tries, as the client saw them, and its final answer."""

    broker: int
    tries: list[str] = field(default_factory=list)  # each try's status or exception class
    status: int | None = None  # the last try's status; None if it ended in an exception
    receipt: dict[str, Any] | None = None  # the body of a 200 or 202

    @property
    def accepted(self) -> bool:
        return self.status in (200, 202) and self.receipt is not None


def queued(receipt: dict[str, Any] | None) -> set[str]:
    """The recipients a receipt says a disclosure was queued for."""
    if receipt is None:
        return set()
    return {r["agency"] for r in receipt.get("recipients", ()) if r.get("status") == "queued"}


async def post(session: aiohttp.ClientSession, url: str, s: Submission, broker: int) -> Answer:
    """Post ``s`` until it is answered other than 503 (bounded): connection errors and every
    other status are final, since nothing here kills anything."""
    answer = Answer(broker)
    pause = BACKOFF_S[0]
    for _ in range(MAX_TRIES):
        try:
            async with session.post(
                f"{url}/v1/referrals", data=s.body, headers={"Content-Type": "application/jose"}
            ) as response:
                answer.status = response.status
                text = await response.text()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            answer.tries.append(type(exc).__name__)
            answer.status = None
            return answer
        answer.tries.append(str(answer.status))
        if answer.status in (200, 202):
            answer.receipt = json.loads(text)
            return answer
        if answer.status != 503:
            return answer
        await asyncio.sleep(pause * random.uniform(0.5, 1.0))  # noqa: S311 - jitter
        pause = min(pause * 2, BACKOFF_S[1])
    return answer


@dataclass(frozen=True)
class Job:
    submission: Submission
    brokers: tuple[int, ...]  # one broker, or both at the same instant


async def send_all(
    urls: list[str], keys: FederationKeys, jobs: list[Job]
) -> dict[str, list[Answer]]:
    """Every job, CONCURRENCY at a time; each referral id's answers."""
    queue: asyncio.Queue[Job] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    timeout = aiohttp.ClientTimeout(total=ATTEMPT_TIMEOUT_S)
    sessions = {
        (agency, b): aiohttp.ClientSession(
            timeout=timeout, connector=aiohttp.TCPConnector(ssl=keys.client_ssl(agency))
        )
        for agency in {j.submission.sender for j in jobs}
        for b in range(len(urls))
    }
    answers: dict[str, list[Answer]] = {}

    async def worker() -> None:
        while True:
            try:
                job = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            s = job.submission
            answers[s.referral_id] = list(
                await asyncio.gather(
                    *(post(sessions[(s.sender, b)], urls[b], s, b) for b in job.brokers)
                )
            )

    try:
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    finally:
        for session in sessions.values():
            await session.close()
    return answers


@dataclass
class TwoBrokerRun:
    """One run's topics (a fresh prefix), its shared state folder and the broker processes."""

    keys: FederationKeys
    kafka: LocalKafka
    base: Path
    database_url: str
    prefix: str = field(default_factory=lambda: f"twob{uuid.uuid4().hex[:8]}")
    services: list[Service] = field(default_factory=list)

    @property
    def state_dir(self) -> Path:
        return self.base / "broker-state"

    def env(self, **extra: str) -> dict[str, str]:
        return service_env(
            dict(os.environ),
            CAIRN_KAFKA_BOOTSTRAP_SERVERS=self.kafka.bootstrap,
            CAIRN_TOPIC_PREFIX=self.prefix,
            CAIRN_TRANSACTIONAL_ID=f"cairn-{self.prefix}",  # the base: each adds its slot
            CAIRN_KEY_DIR=str(self.keys.root),
            CAIRN_KEY_PASSPHRASE=self.keys.passphrase.decode(),
            CAIRN_STATE_DIR=str(self.state_dir),
            CAIRN_DATABASE_URL=self.database_url,
            # The referrals are signed once, before the run.
            CAIRN_MAX_SIGNATURE_AGE_S="900",
            CAIRN_LOG_FORMAT="json",
            CAIRN_LOG_LEVEL="warning",
            **extra,
        )

    def broker(self, name: str) -> Service:
        port = free_port()
        env = self.env(CAIRN_HTTP_HOST="127.0.0.1", CAIRN_HTTP_PORT=str(port))
        s = Service(
            name,
            (*CAIRN, "serve"),
            env,
            self.base / f"{name}.log",
            ready_url=f"https://127.0.0.1:{port}/readyz",
            ssl_context=self.keys.client_ssl("kelder-police"),
        )
        self.services.append(s)
        return s


@pytest.fixture
def two_broker_run(
    kafka: LocalKafka, federation_keys: FederationKeys, tmp_path: Path, pg_url: str
) -> Iterator[TwoBrokerRun]:
    run = TwoBrokerRun(federation_keys, kafka, tmp_path, pg_url)
    yield run
    for s in run.services:
        s.close()


def plan(to_send: list[Submission], rng: random.Random) -> list[Job]:
    """DOUBLE_SENT referrals to both brokers, the others to each in turn, in a random order."""
    doubles = set(rng.sample(range(len(to_send)), DOUBLE_SENT))
    jobs = [Job(s, (0, 1) if i in doubles else (i % 2,)) for i, s in enumerate(to_send)]
    rng.shuffle(jobs)
    return jobs


def fenced_lines(broker: Service) -> list[str]:
    text = broker.log_path.read_text(errors="replace") if broker.log_path.exists() else ""
    return [line[:300] for line in text.splitlines() if any(f in line for f in FENCED)]


async def test_two_brokers_on_one_database_publish_each_referral_once(
    two_broker_run: TwoBrokerRun, federation: Federation, federation_keys: FederationKeys
) -> None:
    """1,000 referrals across two brokers sharing PostgreSQL, 200 sent to both at once: each
    is delivered once per queued recipient with one disclosed event, both answers of a double
    send carry one receipt, and neither broker is fenced."""
    run = two_broker_run
    created = cairn_run(run.env(), "topics", "create")
    assert created.returncode == 0, created.stderr[-2000:]
    brokers = [run.broker("broker-a"), run.broker("broker-b")]
    for b in brokers:
        b.start()
    for b in brokers:
        assert await b.wait_ready(), b.tail()
    slots = sorted(p.name for p in (run.state_dir / INSTANCES_DIR).glob("*.lock"))
    assert len(slots) == 2, f"the brokers should hold two instance slots: {slots}"

    seed = random.randrange(2**32)  # noqa: S311 - test data, printed to rerun
    jobs = plan(submissions(federation_keys, REFERRALS), random.Random(seed))  # noqa: S311
    started = time.monotonic()
    try:
        answers = await asyncio.wait_for(
            send_all([b.url for b in brokers], federation_keys, jobs), RUN_TIMEOUT_S
        )
    except TimeoutError:
        pytest.fail(
            f"sending {REFERRALS} referrals took over {RUN_TIMEOUT_S:.0f}s\n"
            + "\n".join(b.tail() for b in brokers)
        )
    sent_s = time.monotonic() - started
    exits = {b.name: b.reap_if_dead() for b in brokers}
    for b in brokers:
        b.stop()

    receipts = {
        rid: next((a.receipt for a in got if a.receipt is not None), None)
        for rid, got in answers.items()
    }
    expected = {(rid, agency) for rid, r in receipts.items() for agency in queued(r)}
    on_topics = await delivered(run.kafka.bootstrap, run.prefix, federation)
    audit = await read_committed(run.kafka.bootstrap, f"{run.prefix}.audit", timeout_s=120)
    disclosed = disclosed_on_topic(audit)

    every = [a for got in answers.values() for a in got]
    doubles = {rid: got for rid, got in answers.items() if len(got) == 2}
    double_shapes = Counter(
        "+".join(sorted(str(a.status) for a in got)) for got in doubles.values()
    )
    tries = Counter(t for a in every for t in a.tries)
    served = Counter((brokers[a.broker].name, a.status) for a in every)
    fenced = {b.name: fenced_lines(b) for b in brokers}
    topic_dups, audit_dups = duplicates(on_topics), duplicates(disclosed)
    figures = (
        f"referrals {REFERRALS} ({len(doubles)} sent to both brokers at once) in {sent_s:.1f}s, "
        f"{len(every)} requests, {sum(tries.values())} tries {dict(tries)}; double sends' final "
        f"answers {dict(double_shapes)}; answers per broker {dict(sorted(served.items()))}; "
        f"deliveries expected {len(expected)}, records on the delivery topics "
        f"{sum(on_topics.values())}, duplicated pairs {len(topic_dups)}; disclosed events "
        f"{sum(disclosed.values())}, duplicated {len(audit_dups)}; instance slots {slots}; "
        f"seed {seed}; the brokers' output is in {run.base}"
    )
    print(figures)

    problems = []
    if len(answers) != REFERRALS:
        problems.append(f"{REFERRALS - len(answers)} referrals have no answer")
    if refused := [a for a in every if not a.accepted]:
        some = [(brokers[a.broker].name, a.tries) for a in refused[:5]]
        problems.append(f"{len(refused)} requests not answered 200 or 202, e.g. {some}")
    if bad := Counter(t for t in tries if t not in ("200", "202", "503")):
        problems.append(f"tries answered other than 202, 503 or 200: {dict(bad)}")
    if wrong := [rid for rid, r in receipts.items() if r is not None and r["referral_id"] != rid]:
        problems.append(f"{len(wrong)} receipts name another referral, e.g. {wrong[:5]}")
    if split := [rid for rid, got in doubles.items() if got[0].receipt != got[1].receipt]:
        problems.append(f"{len(split)} double sends got two different receipts, e.g. {split[:5]}")
    if twice := [rid for rid, got in doubles.items() if all(a.status == 202 for a in got)]:
        problems.append(f"{len(twice)} double sends were accepted (202) by both, e.g. {twice[:5]}")
    if idle := [b.name for i, b in enumerate(brokers) if served[(b.name, 202)] == 0]:
        problems.append(f"accepted nothing: {idle}")
    if died := {name: code for name, code in exits.items() if code is not None}:
        problems.append(f"brokers exited by themselves: {died}")
    if any(fenced.values()):
        problems.append(f"a broker was fenced: {fenced}")
    problems += delivery_problems(expected, on_topics, disclosed)
    assert problems == [], figures + "\n" + "\n".join(problems)
