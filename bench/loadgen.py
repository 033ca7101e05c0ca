"""The load generator of ``bench/throughput.py``: a process of its own that sends referrals to
one server, as the agencies' adapters would, and reports when each was sent and answered.

Against the broker it signs each referral with its sender's key (``ReferralClient.sign``) and
posts the compact JWS over mutual TLS with the sender's client certificate
(``ReferralClient.post_raw``); against a baseline it posts the referral JSON over plain HTTP.
Signing happens ahead of each referral's turn wherever the broker's ``max_signature_age_s``
allows, so the client's signing cost does not limit the rate, just as the baselines' JSON is
made beforehand.

Commands on standard input, one a line::

    run PHASE COUNT EXPECTED_S RATE   send COUNT fresh referrals; RATE 0: closed loop, CONCURRENCY
                                      requests in flight, each timed from its POST start; RATE > 0:
                                      open loop, one every 1/RATE s on a fixed schedule, each timed
                                      from its scheduled send time (so a slow server cannot hide
                                      its queueing by slowing the sender down)
    quit

Events on standard output (see ``bench/common.py``): ``ready``; ``begin PHASE T``; ``ok ID
T_REF T_ANSWERED``; ``fail ID T_REF REASON``; ``end PHASE NOTE`` (NOTE: a JSON object saying how
the phase was signed and how far the sender fell behind its schedule).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from common import BenchError, BenchKeys, Job, emit, make_job, read_config

from adapters.client import ReferralClient, SubmissionRefused
from keys import client_context
from schemas.errors import CairnError, TransportError
from schemas.receipt import RecipientStatus

REQUEST_TIMEOUT_S = 60.0  # seconds for one submission, connection included
# A body is signed before its turn only if its signature will still be fresh when it is sent:
# closed loop, all bodies ahead when the phase (estimated from the warm-up) fits PRESIGN_SAFETY
# times over in max_signature_age_s less the margin; open loop, each at most LEAD_MAX_S ahead.
# The margin covers iat being whole seconds and a request waiting between the check and the
# broker's own.
PRESIGN_SAFETY = 2.0  # times the estimated phase duration
SIGNATURE_MARGIN_S = 20.0  # seconds kept in hand below max_signature_age_s
LEAD_MAX_S = 60.0  # seconds: how far ahead of its turn an open-loop body is made and signed
SIGN_SLICE = 8  # bodies made (and signed) between two turns of the event loop
LATE_S = 0.005  # seconds behind schedule from which an open-loop send counts as late


class Sender(Protocol):
    """How one path's client submits a job."""

    signs: bool

    def sign(self, job: Job) -> None:
        """Sign ``job`` now, if this path signs at all."""

    async def post(self, job: Job) -> str | None:
        """Submit ``job``; None once it is accepted, else why it was not."""


class PlainSender:
    """The baselines' client: the referral JSON as it is, over plain HTTP."""

    signs = False

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    def sign(self, job: Job) -> None:
        """Nothing to sign: the JSON is the body."""

    async def post(self, job: Job) -> str | None:
        try:
            async with self.session.post(
                self.url, data=job.payload, headers={"Content-Type": "application/json"}
            ) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            return type(exc).__name__
        return None if status == 202 else f"HTTP {status}"


class CairnSender:
    """The broker's client: one ``ReferralClient`` per sender, signing with its key and
    connecting with its TLS client certificate. A body not signed ahead, or whose signature
    has aged too far by its turn, is signed at its turn and counted."""

    signs = True

    def __init__(self, clients: dict[str, ReferralClient], *, max_age_s: float) -> None:
        self.clients = clients
        self.max_age_s = max_age_s
        self.signed_at_turn = 0
        self.resigned = 0

    def sign(self, job: Job) -> None:
        job.signed_at = time.time()
        job.signed = self.clients[job.sender].sign(job.payload)

    def _fresh(self, job: Job) -> bool:
        return time.time() - job.signed_at + SIGNATURE_MARGIN_S <= self.max_age_s

    async def post(self, job: Job) -> str | None:
        if job.signed is None:
            self.signed_at_turn += 1
            self.sign(job)
        elif not self._fresh(job):
            self.resigned += 1
            self.sign(job)
        assert job.signed is not None
        try:
            receipt = await self.clients[job.sender].post_raw(
                job.signed, content_type="application/jose"
            )
        except SubmissionRefused as exc:
            return f"HTTP {exc.status} {exc.problem.get('title', '')}".rstrip()
        except TransportError as exc:
            return f"TransportError: {exc}"
        refused = [r.agency for r in receipt.recipients if r.status is not RecipientStatus.QUEUED]
        return f"not queued for {', '.join(refused)}" if refused else None


class Feed:
    """Open-loop bodies, made (and signed) in small slices at most ``lead`` turns ahead of the
    sender, so that no signature ages past the broker's limit however long the phase, and a
    ten-minute soak does not hold all its bodies at once."""

    def __init__(
        self, sample: dict[str, Any], count: int, sender: Sender, *, sign: bool, lead: int
    ) -> None:
        self.sample = sample
        self.count = count
        self.sender = sender
        self.sign = sign
        self.lead = max(1, lead)
        self.jobs: dict[int, Job] = {}
        self.made = 0
        self.waited = 0  # turns at which the sender found its body not made yet
        self._grown = asyncio.Event()

    def fill(self, upto: int) -> None:
        while self.made < min(upto, self.count):
            job = make_job(self.sample)
            if self.sign:
                self.sender.sign(job)
            self.jobs[self.made] = job
            self.made += 1

    async def run(self, position: Callable[[], int]) -> None:
        """Keep ``lead`` bodies ahead of ``position()`` until all ``count`` are made."""
        while self.made < self.count:
            if self.made >= position() + self.lead:
                await asyncio.sleep(0.02)
                continue
            self.fill(self.made + SIGN_SLICE)
            self._grown.set()
            await asyncio.sleep(0)

    async def take(self, index: int) -> Job:
        if index >= self.made:
            self.waited += 1
        while index >= self.made:
            self._grown.clear()
            await self._grown.wait()
        return self.jobs.pop(index)


def _report(job: Job, t_ref: float, failure: str | None) -> None:
    if failure is None:
        emit("ok", job.referral_id, f"{t_ref:.6f}", f"{time.monotonic():.6f}")
    else:
        emit("fail", job.referral_id, f"{t_ref:.6f}", failure)


async def closed_loop(
    sender: Sender,
    sample: dict[str, Any],
    phase: str,
    count: int,
    *,
    concurrency: int,
    presign: bool,
) -> None:
    jobs = [make_job(sample) for _ in range(count)]
    if presign:
        for job in jobs:
            sender.sign(job)
    queue = iter(jobs)  # shared by the workers: each job is taken once

    async def worker() -> None:
        for job in queue:
            began = time.monotonic()
            _report(job, began, await sender.post(job))

    emit("begin", phase, f"{time.monotonic():.6f}")
    await asyncio.gather(*(worker() for _ in range(min(concurrency, count))))


async def open_loop(
    sender: Sender,
    sample: dict[str, Any],
    phase: str,
    count: int,
    *,
    rate: float,
    concurrency: int,
    feed: Feed,
) -> dict[str, Any]:
    """One send every 1/rate s whatever the answers; at most ``concurrency`` requests on the
    wire (the rest wait for a connection, and that wait is part of their latency)."""
    slots = asyncio.Semaphore(concurrency)
    sent = [0]
    late = 0
    max_lag = 0.0

    async def send(job: Job, scheduled: float) -> None:
        async with slots:
            failure = await sender.post(job)
        _report(job, scheduled, failure)

    feeder = asyncio.create_task(feed.run(lambda: sent[0]))
    tasks: set[asyncio.Task[None]] = set()
    start = time.monotonic() + 0.01
    emit("begin", phase, f"{start:.6f}")
    try:
        for i in range(count):
            job = await feed.take(i)
            scheduled = start + i / rate
            delay = scheduled - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            lag = time.monotonic() - scheduled
            if lag > LATE_S:
                late += 1
                max_lag = max(max_lag, lag)
            sent[0] = i + 1
            task = asyncio.create_task(send(job, scheduled))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
        await feeder
    finally:
        feeder.cancel()
        for task in tasks:
            task.cancel()
    return {
        "late_sends": late,
        "max_send_lag_ms": round(max_lag * 1000, 1),
        "bodies_not_ready": feed.waited,
    }


async def run_phase(
    sender: Sender, sample: dict[str, Any], config: dict[str, Any], fields: list[str]
) -> dict[str, Any]:
    phase, count, expected_s, rate = fields[0], int(fields[1]), float(fields[2]), float(fields[3])
    max_age = float(config["max_signature_age_s"])
    sign_mode = str(config["sign"])
    concurrency = int(config["concurrency"])
    if isinstance(sender, CairnSender):
        sender.signed_at_turn = sender.resigned = 0
    note: dict[str, Any] = {}
    if rate <= 0:
        presign = (
            sender.signs
            and sign_mode == "auto"
            and PRESIGN_SAFETY * expected_s + SIGNATURE_MARGIN_S <= max_age
        )
        await closed_loop(sender, sample, phase, count, concurrency=concurrency, presign=presign)
        if sender.signs:
            note["signing"] = (
                f"pre-signed before the clock (phase estimated at {expected_s:.0f} s)"
                if presign
                else (
                    "signed at each referral's turn (--sign inside)"
                    if sign_mode == "inside"
                    else f"signed at each referral's turn: the phase, estimated at "
                    f"{expected_s:.0f} s, could outlive max_signature_age_s {max_age:g}"
                )
            )
    else:
        lead_s = min(LEAD_MAX_S, (max_age - SIGNATURE_MARGIN_S) / (2 * PRESIGN_SAFETY))
        presign = sender.signs and sign_mode == "auto" and lead_s > 1
        feed = Feed(sample, count, sender, sign=presign, lead=math.ceil(lead_s * rate))
        feed.fill(feed.lead)
        note.update(
            await open_loop(
                sender, sample, phase, count, rate=rate, concurrency=concurrency, feed=feed
            )
        )
        if sender.signs:
            note["signing"] = (
                f"signed ahead, at most {lead_s:.0f} s before its turn"
                if presign
                else "signed at each referral's turn"
            )
    if isinstance(sender, CairnSender):
        note["signed_at_turn"] = sender.signed_at_turn
        note["resigned"] = sender.resigned
    return note


async def serve_commands(sender: Sender, sample: dict[str, Any], config: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    emit("ready")
    while line := (await reader.readline()).decode().split():
        if line[0] == "quit":
            return
        if line[0] != "run" or len(line) != 5:
            raise BenchError(f"unknown command {line[0]!r}")
        note = await run_phase(sender, sample, config, line[1:])
        emit("end", line[1], json.dumps(note))


async def main_async(config: dict[str, Any], sample: dict[str, Any]) -> None:
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with asyncio.timeout(float(config["timeout_s"])), contextlib.AsyncExitStack() as stack:
        sender: Sender
        if config["mode"] == "cairn":
            keys = BenchKeys.load(config["keys"], config["passphrase_file"])
            clients = {
                s: await stack.enter_async_context(
                    ReferralClient(
                        config["url"],
                        ssl_context=client_context(keys.store, s, keys.passphrase),
                        signing_key=keys.trust(s).signing_key(),
                        timeout_s=REQUEST_TIMEOUT_S,
                    )
                )
                for s in config["senders"]
            }
            sender = CairnSender(clients, max_age_s=float(config["max_signature_age_s"]))
        else:
            connector = aiohttp.TCPConnector(limit=int(config["concurrency"]))
            session = await stack.enter_async_context(
                aiohttp.ClientSession(connector=connector, timeout=timeout)
            )
            sender = PlainSender(session, f"{config['url']}/v1/referrals")
        await serve_commands(sender, sample, config)


def main() -> int:
    try:
        config = read_config(sys.argv[1:])
        sample = json.loads(Path(config["sample"]).read_text(encoding="utf-8"))
        asyncio.run(main_async(config, sample))
    except (BenchError, CairnError, OSError) as exc:
        print(f"loadgen: {exc}", file=sys.stderr)
        return 1
    except TimeoutError:
        print("loadgen: the run's timeout passed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
