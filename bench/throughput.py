"""Throughput of the real broker, end to end, with its parts in separate processes, beside two
bare aiohttp + aiokafka baselines in the same run.

Each path runs a load generator (``bench/loadgen.py``), a server and one recipient process per
recipient agency (``bench/recipient.py``), all on 127.0.0.1 against the local Kafka:

- ``baseline-idem``: ``bench/bare_server.py`` over plain HTTP, one idempotent ``acks=all``
  ``send_and_wait`` per recipient, no transaction; bare read_committed consumers.
- ``baseline-txn``: the same server with both records in one Kafka transaction per request, one
  transaction at a time (as the broker published before group commit).
- ``cairn``: the real ``cairn serve`` (``python -m broker serve``, ``--workers N`` where it has
  it) over mutual TLS with the development federation and keys made for the run; the load
  generator signs each referral with its sender's key and posts the JWS with the sender's
  client certificate; each recipient is ``adapters.inbox.Inbox``, decrypting with its agency's
  keys and verifying the broker's signature.

This process only orchestrates: it makes the keys and topics, starts and stops the others, reads
their one-line events (``bench/common.py``), and reads their CPU time and memory from /proc
(``bench/procfs.py``), Kafka's JVM included. It prints one Markdown table: referrals/s, latency
from submit to 202 and to the last recipient's decryption, CPU time per referral of each
process, and the ratios to the idempotent baseline. ``--rate`` sends open loop at a fixed rate,
``--soak`` holds a rate for minutes and follows the broker's memory, ``--profile`` runs the
broker under py-spy. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import hotspots
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.protocol.admin import DeleteGroupsRequest
from common import BenchError, BenchKeys, check_local, percentile, utcnow
from procfs import (
    CpuSample,
    Group,
    MachineSample,
    descendants,
    listening_pid,
    rss_mib,
    started_at,
)

import broker
from broker.config import Settings
from broker.envelope import seal
from broker.federation import load_federation
from broker.kafka.topics import TopicSpec, delivery_topic, federation_topics
from broker.kafka.transport import create_topics, kafka_options
from broker.logs import configure_logging
from broker.policy.agreements import AGREEMENTS_DIR, load_agreements
from broker.policy.decide import decide
from keys import BROKER_ID, FileStore, client_context, init_federation, sign_referral
from schemas.errors import CairnError
from schemas.federation import Federation
from schemas.referral import Referral

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CONNECT_TIMEOUT_S = 10.0  # seconds for any Kafka client to start
CLEANUP_TIMEOUT_S = 30.0  # seconds for deleting topics and groups after the run
READY_TIMEOUT_S = 90.0  # seconds for a started process to say it is ready
STOP_TIMEOUT_S = 45.0  # seconds for a process to stop on SIGTERM (the broker drains 20 s)
END_TIMEOUT_S = 30.0  # seconds between the last delivery and the load generator's end line
RSS_EVERY_S = 0.5  # seconds between samples of the server's memory
SOAK_EVERY_S = 60.0  # seconds between the soak's memory lines
SOAK_FLAT_MIB = 8.0  # MiB: last minute within this (or SOAK_FLAT_SHARE) of the first is flat
SOAK_FLAT_SHARE = 0.05
OTHERS_WARN_SHARE = 0.25  # share of the machine's CPUs used by others from which a row is suspect
PROFILE_TOP = 15  # functions listed by --profile
RSS_TARGET_MIB = 300e6 / 2**20  # issue 13: broker RSS <= 300 MB
PATHS = ("baseline-idem", "baseline-txn", "cairn")
ROLES = ("load", "server", "recipients", "kafka")


# --- one phase's bookkeeping --------------------------------------------------------------------


@dataclass
class Entry:
    t_ref: float = math.nan  # when it was sent (closed loop) or due (open loop)
    accepted: bool = False
    seen: dict[str, float] = field(default_factory=dict)  # recipient -> when it had it


class Phase:
    """Which referrals of one phase are answered and delivered, from the processes' events.

    A recipient's ``seen`` may arrive before the load generator's ``ok`` (two pipes), so
    either can come first; a referral is delivered once it is accepted and every recipient
    has it. ``on_complete`` runs the moment the last one is, so that the CPU figures end there.
    """

    def __init__(
        self,
        name: str,
        count: int,
        recipients: Sequence[str],
        *,
        on_begin: Callable[[], None] = lambda: None,
        on_complete: Callable[[], None] = lambda: None,
    ) -> None:
        self.name = name
        self.count = count
        self.recipients = frozenset(recipients)
        self.on_begin = on_begin
        self.on_complete = on_complete
        self.entries: dict[str, Entry] = {}
        self.results = 0
        self.outstanding = 0  # accepted, not yet at every recipient
        self.accept_ms: list[float] = []
        self.e2e_ms: list[float] = []
        self.failures: Counter[str] = Counter()
        self.begin_t = math.nan
        self.last_t = math.nan
        self.note: dict[str, Any] = {}
        self.begun = asyncio.Event()
        self.complete = asyncio.Event()
        self.ended = asyncio.Event()

    @property
    def delivered(self) -> int:
        return len(self.e2e_ms)

    def begin(self, t: float) -> None:
        self.begin_t = t
        self.begun.set()
        self.on_begin()
        self._check()

    def ok(self, referral_id: str, t_ref: float, t_answered: float) -> None:
        self.results += 1
        entry = self.entries.setdefault(referral_id, Entry())
        entry.t_ref, entry.accepted = t_ref, True
        self.accept_ms.append((t_answered - t_ref) * 1000)
        if self.recipients <= entry.seen.keys():
            self._deliver(referral_id, entry)
        else:
            self.outstanding += 1
        self._check()

    def fail(self, referral_id: str, reason: str) -> None:
        self.results += 1
        self.failures[reason] += 1
        self.entries.pop(referral_id, None)
        self._check()

    def seen(self, referral_id: str, recipient: str, t: float) -> None:
        entry = self.entries.setdefault(referral_id, Entry())  # perhaps before its ok
        if recipient in entry.seen:
            return  # a redelivery
        entry.seen[recipient] = t
        if entry.accepted and self.recipients <= entry.seen.keys():
            self.outstanding -= 1
            self._deliver(referral_id, entry)
            self._check()

    def end(self, note: dict[str, Any]) -> None:
        self.note = note
        self.ended.set()

    def _deliver(self, referral_id: str, entry: Entry) -> None:
        last = max(entry.seen[r] for r in self.recipients)
        self.e2e_ms.append((last - entry.t_ref) * 1000)
        self.last_t = last if math.isnan(self.last_t) else max(self.last_t, last)
        del self.entries[referral_id]

    def _check(self) -> None:
        if (
            self.begun.is_set()
            and not self.complete.is_set()
            and self.results == self.count
            and self.outstanding == 0
        ):
            self.on_complete()
            self.complete.set()

    def waiting(self) -> str:
        return (
            f"{self.results} of {self.count} answered, {self.outstanding} accepted but not yet "
            "at every recipient"
        )


# --- child processes ----------------------------------------------------------------------------


@dataclass
class Child:
    """A process this run started, with its events' reader."""

    role: str
    proc: asyncio.subprocess.Process
    stderr: Path
    ready: asyncio.Future[list[str]]
    reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self, lines: int = 12) -> str:
        try:
            text = self.stderr.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            return ""
        return " | ".join(text.splitlines()[-lines:]) or "(nothing on stderr)"

    async def stop(self, extra: Sequence[tuple[int, int | None]] = ()) -> None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT_S; ``extra`` are its own descendants, killed
        if they outlive it."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                print(f"bench: {self.role} did not stop on SIGTERM; killing it", file=sys.stderr)
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT_S)
        for pid, started in extra:
            if started is not None and started_at(pid) == started:
                print(
                    f"bench: {self.role}'s process {pid} outlived it; killing it", file=sys.stderr
                )
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.reader

    async def command(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment with the repository first on PYTHONPATH, so every process runs the
    same code as this one, and no passphrase of the environment's own."""
    env = {k: v for k, v in os.environ.items() if k != "CAIRN_KEY_PASSPHRASE"}
    env.pop("CAIRN_KEY_PASSPHRASE_FILE", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


# --- the run ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PathSpec:
    path: str  # one of PATHS
    workers: int  # broker workers; 0 for the baselines
    prefix: str  # topic prefix of its own

    @property
    def label(self) -> str:
        if not self.workers:
            return self.path
        return f"cairn, {self.workers} worker{'s' if self.workers > 1 else ''}"


@dataclass
class Result:
    spec: PathSpec
    count: int = 0
    delivered: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = math.nan
    e2e_ms: list[float] = field(default_factory=list)
    accept_ms: list[float] = field(default_factory=list)
    cpu_s: dict[str, float] = field(default_factory=dict)  # role -> CPU seconds in the phase
    machine_busy: float = math.nan  # share of all CPUs busy in the phase, whoever used them
    run_busy: float = math.nan  # share of all CPUs that this run's processes used
    server_procs: int = 0
    rss_start_mib: float = math.nan
    rss_peak_mib: float = math.nan
    soak_rss: list[tuple[float, float]] = field(default_factory=list)  # (minute, MiB)
    note: dict[str, Any] = field(default_factory=dict)
    profile: list[str] = field(default_factory=list)
    command: str = ""
    pending: str = ""  # why the row could not run
    rounds: list[float] = field(default_factory=list)  # with --rounds: each round's figure

    @property
    def rate(self) -> float:
        ok = self.elapsed_s > 0 and self.delivered
        return self.delivered / self.elapsed_s if ok else math.nan

    def cpu_ms(self, role: str) -> float:
        if role == "all":
            return sum(self.cpu_ms(r) for r in ROLES)
        seconds = self.cpu_s.get(role, math.nan)
        return 1000 * seconds / self.delivered if self.delivered else math.nan

    def summary(self) -> dict[str, Any]:
        def pcts(values: list[float]) -> dict[str, float]:
            return {f"p{p}": round(percentile(values, p), 2) for p in (50, 95, 99)}

        return {
            "path": self.spec.label,
            "workers": self.spec.workers,
            "pending": self.pending,
            "count": self.count,
            "delivered": self.delivered,
            "failures": self.failures,
            "elapsed_s": round(self.elapsed_s, 3),
            "referrals_per_s": round(self.rate, 1),
            "accept_ms": pcts(self.accept_ms),
            "e2e_ms": pcts(self.e2e_ms),
            "cpu_ms_per_referral": {r: round(self.cpu_ms(r), 3) for r in (*ROLES, "all")},
            "machine_busy": round(self.machine_busy, 3),
            "run_busy": round(self.run_busy, 3),
            "server_rss_peak_mib": round(self.rss_peak_mib, 1),
            "soak_rss_mib": self.soak_rss,
            "loadgen": self.note,
            "command": self.command,
            "rounds": self.rounds,
        }


class Run:
    """One benchmark run: its keys, topics and processes."""

    def __init__(
        self,
        args: argparse.Namespace,
        folder: Path,
        federation: Federation,
        sample: dict[str, Any],
        sizes: Sizes,
    ) -> None:
        self.args = args
        self.folder = folder
        self.federation = federation
        self.sample = sample
        self.sizes = sizes
        self.recipients = tuple(sample["header"]["recipients"])
        self.senders = (sample["header"]["sender_agency"],)
        self.deadline = time.monotonic() + args.timeout
        self.phase: Phase | None = None
        self.kafka_pid = listening_pid(int(args.bootstrap.split(",")[0].rsplit(":", 1)[1]))
        self.workers_flag = broker_has_workers()

    # -- processes

    async def spawn(self, role: str, argv: Sequence[str], env: dict[str, str]) -> Child:
        stderr = self.folder / f"{role}.stderr"
        with stderr.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                env=env,
                cwd=self.folder,
            )
        child = Child(role, proc, stderr, asyncio.get_running_loop().create_future())
        child.reader = asyncio.create_task(self._read(child))
        return child

    async def _read(self, child: Child) -> None:
        assert child.proc.stdout is not None
        recipient = child.role.removeprefix("recipient-")
        while line := await child.proc.stdout.readline():
            fields = line.decode(errors="replace").split(maxsplit=3)
            if not fields:
                continue
            kind, phase = fields[0], self.phase
            if kind == "ready":
                if not child.ready.done():
                    child.ready.set_result(fields[1:])
            elif phase is None:
                continue
            elif kind == "seen":
                phase.seen(fields[1], recipient, float(fields[2]))
            elif kind == "ok":
                phase.ok(fields[1], float(fields[2]), float(fields[3]))
            elif kind == "fail":
                phase.fail(fields[1], fields[3] if len(fields) > 3 else "")
            elif kind == "begin":
                phase.begin(float(fields[2]))
            elif kind == "end":
                phase.end(json.loads(line.decode().split(maxsplit=2)[2]))

    async def until_ready(self, child: Child) -> list[str]:
        exited = asyncio.create_task(child.proc.wait())
        either: set[asyncio.Future[Any]] = {child.ready, exited}
        try:
            done, _ = await asyncio.wait(
                either, timeout=READY_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            exited.cancel()
        if child.ready.done():
            return child.ready.result()
        if exited in done:
            raise BenchError(f"{child.role} exited before it was ready: {child.tail()}")
        raise BenchError(f"{child.role} was not ready within {READY_TIMEOUT_S:g} s: {child.tail()}")

    def config_file(self, role: str, config: dict[str, Any]) -> str:
        path = self.folder / f"{role}.json"
        path.write_text(json.dumps({**config, "timeout_s": self.args.timeout + 60}), "utf-8")
        return str(path)

    def script(self, name: str, role: str, config: dict[str, Any]) -> list[str]:
        return [sys.executable, str(HERE / name), self.config_file(role, config)]

    @contextlib.asynccontextmanager
    async def started(
        self, role: str, argv: Sequence[str], env: dict[str, str] | None = None
    ) -> AsyncIterator[Child]:
        child = await self.spawn(role, argv, env or child_env())
        try:
            yield child
        finally:
            # Its own workers, recognised later by pid and start time, in case they outlive it.
            below = [] if child.proc.returncode is not None else descendants(child.pid)
            await child.stop([(pid, started_at(pid)) for pid in below])

    async def serving(
        self, spec: PathSpec, stack: contextlib.AsyncExitStack
    ) -> tuple[Child, str, str]:
        """Start the path's server; once it answers, return it, its URL and its command."""
        if spec.path != "cairn":
            config = {
                "bootstrap": self.args.bootstrap,
                "prefix": spec.prefix,
                "transactional": spec.path == "baseline-txn",
                "padding": self.sizes.padding(),
            }
            server = await stack.enter_async_context(
                self.started("server", self.script("bare_server.py", "server", config))
            )
            port = int((await self.until_ready(server))[0])
            kind = "transactional" if spec.path == "baseline-txn" else "idempotent"
            return server, f"http://127.0.0.1:{port}", f"bench/bare_server.py ({kind})"
        port = free_port()
        argv = [sys.executable, "-m", "broker", "serve"]
        if self.workers_flag:
            argv += ["--workers", str(spec.workers)]
        env = child_env(
            {
                "CAIRN_KAFKA_BOOTSTRAP_SERVERS": self.args.bootstrap,
                "CAIRN_TOPIC_PREFIX": spec.prefix,
                "CAIRN_TRANSACTIONAL_ID": f"{spec.prefix}-broker",
                "CAIRN_HTTP_HOST": "127.0.0.1",
                "CAIRN_HTTP_PORT": str(port),
                "CAIRN_STATE_DIR": str(self.folder / f"state-{spec.prefix}"),
                "CAIRN_KEY_DIR": str(self.folder / "keys"),
                "CAIRN_KEY_PASSPHRASE_FILE": str(self.folder / "passphrase"),
                "CAIRN_LOG_LEVEL": "warning",
                "CAIRN_LOG_FORMAT": "json",
                # One sender posts with --concurrency connections; the default per-agency cap
                # (16) would refuse the rest with 429.
                "CAIRN_HTTP_MAX_CONNECTIONS_PER_CLIENT": str(max(16, self.args.concurrency + 8)),
            }
        )
        server = await stack.enter_async_context(self.started("server", argv, env))
        url = f"https://127.0.0.1:{port}"
        await self.until_answering(server, url)
        return server, url, " ".join(["cairn serve", *argv[4:]])

    async def until_answering(self, server: Child, url: str) -> None:
        """Until the broker's /readyz says 200 (it probes Kafka), over mutual TLS."""
        keys = BenchKeys(FileStore(self.folder / "keys"), self.passphrase())
        ssl_context = client_context(keys.store, self.senders[0], keys.passphrase)
        give_up = time.monotonic() + READY_TIMEOUT_S
        last = "no answer"
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ssl_context),
            timeout=aiohttp.ClientTimeout(total=5),
        ) as session:
            while time.monotonic() < give_up:
                if server.proc.returncode is not None:
                    raise BenchError(
                        f"cairn serve exited ({server.proc.returncode}): {server.tail()}"
                    )
                try:
                    async with session.get(f"{url}/readyz") as response:
                        if response.status == 200:
                            return
                        last = f"HTTP {response.status}"
                except (aiohttp.ClientError, TimeoutError) as exc:
                    last = type(exc).__name__
                await asyncio.sleep(0.25)
        raise BenchError(
            f"cairn serve was not ready within {READY_TIMEOUT_S:g} s ({last}): {server.tail()}"
        )

    def passphrase(self) -> bytes:
        return (self.folder / "passphrase").read_bytes().removesuffix(b"\n")

    # -- phases

    async def wait_for(self, phase: Phase, children: Sequence[Child]) -> None:
        exits = {asyncio.create_task(c.proc.wait()): c for c in children}
        done_task = asyncio.create_task(phase.complete.wait())
        try:
            done, _ = await asyncio.wait(
                {done_task, *exits},
                timeout=max(0.0, self.deadline - time.monotonic()),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for task in (done_task, *exits):
                task.cancel()
        if phase.complete.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(phase.ended.wait(), END_TIMEOUT_S)
            return
        for task in done:
            if task in exits:
                child = exits[task]
                raise BenchError(
                    f"{child.role} exited ({child.proc.returncode}) during the {phase.name} "
                    f"phase: {child.tail()}"
                )
        raise BenchError(
            f"the {phase.name} phase did not finish within --timeout {self.args.timeout:g} s "
            f"({phase.waiting()}); raise --timeout or lower --count"
        )

    async def run_path(self, spec: PathSpec) -> Result:
        result = Result(spec)
        if spec.workers > 1 and not self.workers_flag:
            result.pending = "pending: 'cairn serve' has no --workers option yet"
            return result
        args = self.args
        async with contextlib.AsyncExitStack() as stack:
            recipients = []
            for agency in self.recipients:
                role = f"recipient-{agency}"
                opened = spec.path == "cairn" and args.recipient == "inbox"
                config = {
                    "mode": "inbox" if opened else "plain",
                    "agency": agency,
                    "bootstrap": args.bootstrap,
                    "topic": delivery_topic(spec.prefix, agency),
                    "dlq_topic": f"{spec.prefix}.dlq",
                    # Inbox and the baselines' like-for-like consumer: a group, one commit per
                    # batch; --recipient plain: neither.
                    "group_id": (
                        f"{spec.prefix}-recipient-{agency}" if args.recipient == "inbox" else None
                    ),
                    "keys": str(self.folder / "keys"),
                    "passphrase_file": str(self.folder / "passphrase"),
                }
                child = await stack.enter_async_context(
                    self.started(role, self.script("recipient.py", role, config))
                )
                recipients.append(child)
            for child in recipients:
                await self.until_ready(child)
            server, url, result.command = await self.serving(spec, stack)
            load_config = {
                "mode": "cairn" if spec.path == "cairn" else "plain",
                "url": url,
                "senders": list(self.senders),
                "keys": str(self.folder / "keys"),
                "passphrase_file": str(self.folder / "passphrase"),
                "sample": str(args.sample),
                "concurrency": args.concurrency,
                "sign": args.sign,
                "max_signature_age_s": Settings().max_signature_age_s,
            }
            load = await stack.enter_async_context(
                self.started("load", self.script("loadgen.py", "load", load_config))
            )
            await self.until_ready(load)
            children = [*recipients, server, load]
            expected_s = math.inf
            if args.warmup:
                warm = Phase("warm-up", args.warmup, self.recipients)
                self.phase = warm
                await load.command(f"run warm {args.warmup} inf 0")
                await self.wait_for(warm, children)
                if warm.failures:
                    raise BenchError(f"{spec.label}: warm-up failed: {dict(warm.failures)}")
                if warm.delivered and warm.last_t > warm.begin_t:
                    # Connecting and Kafka's first transactions are in it: an overestimate,
                    # on the safe side for pre-signing.
                    expected_s = args.count * (warm.last_t - warm.begin_t) / warm.delivered
            if args.rate:
                expected_s = args.count / args.rate
            await self.measure(spec, result, load, server, recipients, children, expected_s)
            await load.command("quit")
        return result

    async def measure(
        self,
        spec: PathSpec,
        result: Result,
        load: Child,
        server: Child,
        recipients: Sequence[Child],
        children: Sequence[Child],
        expected_s: float,
    ) -> None:
        args = self.args
        groups = [
            Group("load", [load.pid]),
            Group("server", [server.pid], tree=True),
            Group("recipients", [c.pid for c in recipients]),
            Group("kafka", [self.kafka_pid] if self.kafka_pid else []),
            Group("bench", [os.getpid()]),
        ]
        starts: dict[str, CpuSample] = {}
        ends: dict[str, CpuSample] = {}
        machine: list[MachineSample] = []
        stamps: list[float] = []

        def snapshot(into: dict[str, CpuSample]) -> None:
            for g in groups:
                into[g.name] = g.cpu()
            machine.append(MachineSample.now())
            stamps.append(time.monotonic())

        phase = Phase(
            "measured",
            args.count,
            self.recipients,
            on_begin=lambda: snapshot(starts),
            on_complete=lambda: snapshot(ends),
        )
        self.phase = phase
        profiler: asyncio.subprocess.Process | None = None
        raw = self.folder / f"profile-{spec.prefix}.raw"
        rss_task = asyncio.create_task(self.follow_rss(phase, groups[1], result))
        try:
            await load.command(f"run measure {args.count} {expected_s} {args.rate or 0}")
            if args.profile and spec.path == "cairn":
                await asyncio.wait_for(phase.begun.wait(), READY_TIMEOUT_S)
                profiler = await start_profiler(
                    server.pid, raw, self.folder, gil=args.profile == "gil"
                )
            await self.wait_for(phase, children)
        finally:
            if phase.complete.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(rss_task), 2 * RSS_EVERY_S)
            rss_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await rss_task
            if profiler is not None:
                result.profile = await stop_profiler(
                    profiler, raw, self.folder, gil=args.profile == "gil"
                )
        result.count = phase.count
        result.delivered = phase.delivered
        result.failures = dict(phase.failures)
        result.elapsed_s = phase.last_t - phase.begin_t
        result.e2e_ms, result.accept_ms = phase.e2e_ms, phase.accept_ms
        result.note = phase.note
        result.server_procs = len(groups[1].seen)
        if starts and ends:
            for g in groups:
                result.cpu_s[g.name] = ends[g.name].since(starts[g.name])
            result.machine_busy = machine[1].busy_share(machine[0])
            wall = (stamps[1] - stamps[0]) * (os.cpu_count() or 1)
            if wall > 0:
                result.run_busy = sum(result.cpu_s.values()) / wall
            if not self.kafka_pid:
                result.cpu_s.pop("kafka", None)

    async def follow_rss(self, phase: Phase, server: Group, result: Result) -> None:
        """The server's memory (all its processes) through the phase; with --soak, a line a
        minute."""
        await phase.begun.wait()
        pids = server.pids()
        start = time.monotonic()
        next_line = start + SOAK_EVERY_S
        result.rss_start_mib = result.rss_peak_mib = sum(server_rss(pids))
        done = False
        while not done:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(phase.complete.wait(), RSS_EVERY_S)
            done = phase.complete.is_set()
            each = server_rss(pids)
            now_mib = sum(each)
            result.rss_peak_mib = max(result.rss_peak_mib, now_mib)
            # With --soak, a line a minute, and one at the end unless the last was just now.
            due = time.monotonic() >= next_line or (
                done and time.monotonic() >= next_line - SOAK_EVERY_S + SOAK_EVERY_S / 4
            )
            if self.args.soak and due:
                minute = round((time.monotonic() - start) / 60, 1)
                result.soak_rss.append((minute, round(now_mib, 1)))
                parts = " + ".join(f"{m:.1f}" for m in each)
                print(
                    f"soak: minute {minute:g}: broker RSS {now_mib:.1f} MiB ({parts}), "
                    f"{phase.delivered} delivered, {sum(phase.failures.values())} failed",
                    flush=True,
                )
                next_line += SOAK_EVERY_S


def server_rss(pids: Sequence[int]) -> list[float]:
    return [m for m in (rss_mib(p) for p in pids) if m is not None]


def broker_has_workers() -> bool:
    """Whether this checkout's 'cairn serve' takes --workers (issue 13 adds it)."""
    try:
        out = subprocess.run(
            [sys.executable, "-m", "broker", "serve", "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            env=child_env(),
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "--workers" in out


def py_spy() -> str:
    found = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if found is None:
        raise BenchError("--profile needs py-spy (in the dev extras: make venv)")
    return found


async def start_profiler(
    pid: int, raw: Path, folder: Path, *, gil: bool
) -> asyncio.subprocess.Process:
    with (folder / "py-spy.stderr").open("wb") as err:
        return await asyncio.create_subprocess_exec(
            py_spy(),
            "record",
            *(["--gil"] if gil else []),
            "--pid",
            str(pid),
            "--subprocesses",
            "--format",
            "raw",
            "--rate",
            "100",
            "--output",
            str(raw),
            stdout=err,
            stderr=err,
        )


async def stop_profiler(
    proc: asyncio.subprocess.Process, raw: Path, folder: Path, *, gil: bool
) -> list[str]:
    """Stop py-spy as Ctrl-C does (it writes its file then) and fold its samples."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    return fold_profile(raw, folder, gil=gil)


def fold_profile(raw: Path, folder: Path, *, gil: bool) -> list[str]:
    if not raw.is_file():
        log = (folder / "py-spy.stderr").read_text(encoding="utf-8", errors="replace")
        return [f"WARNING py-spy wrote no profile: {' | '.join(log.strip().splitlines()[-5:])}"]
    return hotspots.render(raw, PROFILE_TOP, gil=gil)


# --- setup and cleanup --------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """What one referral weighs on each path, in bytes."""

    json: int  # the referral JSON, as the baselines post it
    jws: int  # the same signed as a compact JWS, as Cairn's senders post it
    records: dict[str, int]  # the broker's sealed record (JWE) per recipient

    def record_range(self) -> str:
        low, high = min(self.records.values(), default=0), max(self.records.values(), default=0)
        return f"{low}" if low == high else f"{low}-{high}"

    def padding(self) -> dict[str, int]:
        """Bytes a baseline adds to the JSON so that its record weighs what the broker's does."""
        return {r: max(0, n - self.json) for r, n in self.records.items()}


def message_sizes(
    sample: dict[str, Any], federation: Federation, settings: Settings, keys: BenchKeys
) -> Sizes:
    """Sign one fresh copy as its sender would and seal it as the broker would."""
    fresh = {"referral_id": str(uuid.uuid4()), "created_at": utcnow().isoformat()}
    referral = Referral.model_validate({**sample, "header": {**sample["header"], **fresh}})
    payload = referral.model_dump_json().encode()
    now = utcnow()
    signed = sign_referral(
        payload, keys.trust(referral.header.sender_agency).signing_key(), issued_at=now
    )
    broker_trust = keys.trust(BROKER_ID)
    records = {}
    decisions = decide(
        referral,
        federation,
        agreements=load_agreements(settings.federation_dir / AGREEMENTS_DIR),
        now=now,
        max_recipients=settings.max_recipients,
    )
    for decision in (d for d in decisions if d.allowed):
        record = seal(
            referral,
            decision,
            topic_prefix=settings.topic_prefix,
            request_id=str(uuid.uuid4()),
            broker_key=broker_trust.signing_key(),
            registry=broker_trust.registry(),
            now=now,
        )
        records[decision.recipient] = len(record.value)
    return Sizes(len(payload), len(signed), records)


async def wait_for_leaders(
    settings: Settings, specs: Sequence[TopicSpec], timeout_s: float
) -> None:
    """Until every partition of the new topics answers a ListOffsets request from its leader,
    so the warm-up is not spent on NotLeaderForPartition retries (muted: aiokafka logs each)."""
    partitions = [TopicPartition(s.name, p) for s in specs for p in range(s.partitions)]
    consumer = AIOKafkaConsumer(**kafka_options(settings))  # no group, no subscription
    await asyncio.wait_for(consumer.start(), CONNECT_TIMEOUT_S)
    fetcher_log = logging.getLogger("aiokafka.consumer.fetcher")
    level = fetcher_log.level
    fetcher_log.setLevel(logging.CRITICAL)
    try:
        await asyncio.wait_for(consumer.end_offsets(partitions), timeout_s)
    except (KafkaError, TimeoutError) as exc:
        raise BenchError(
            f"the new topics had no working leaders after {timeout_s:g} s "
            f"({type(exc).__name__}); is Kafka healthy?"
        ) from exc
    finally:
        fetcher_log.setLevel(level)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(consumer.stop(), CLEANUP_TIMEOUT_S)


async def delete_leftovers(settings: Settings, topics: Sequence[str], run_prefix: str) -> None:
    """Best effort: the run's topics, and every consumer group whose name starts with the
    run's prefix (the recipients' and the broker's own); a failure only leaves them behind."""
    admin = AIOKafkaAdminClient(**kafka_options(settings))
    try:
        await asyncio.wait_for(admin.start(), CONNECT_TIMEOUT_S)
        await asyncio.wait_for(admin.delete_topics(list(topics)), CLEANUP_TIMEOUT_S)
        listed = await asyncio.wait_for(admin.list_consumer_groups(), CLEANUP_TIMEOUT_S)
        groups = [g[0] for g in listed if str(g[0]).startswith(run_prefix)]
        # aiokafka's admin client has no delete_consumer_groups; send DeleteGroups to each
        # group's coordinator as its own methods send requests.
        by_coordinator: dict[int, list[str]] = {}
        for group in groups:
            node = await asyncio.wait_for(admin.find_coordinator(group), CONNECT_TIMEOUT_S)
            by_coordinator.setdefault(node, []).append(group)
        for node, names in by_coordinator.items():
            await asyncio.wait_for(
                admin._send_request(DeleteGroupsRequest(names), node), CLEANUP_TIMEOUT_S
            )
    except Exception as exc:  # cleanup must not hide the results
        print(f"note: could not delete the run's topics or groups: {exc!r}", file=sys.stderr)
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


def plan(args: argparse.Namespace, prefix: str) -> list[PathSpec]:
    specs = [PathSpec(p, 0, f"{prefix}-{p.removeprefix('baseline-')}") for p in PATHS[:2]]
    specs = [s for s in specs if s.path in args.paths]
    if "cairn" in args.paths:
        specs += [PathSpec("cairn", w, f"{prefix}-w{w}") for w in args.workers]
    return specs


def best_round(results: Sequence[Result], *, open_loop: bool) -> Result:
    """The round least disturbed: closed loop, the highest referrals/s; open loop (where the
    rate is fixed), the lowest e2e p99. The others' figures stay in ``rounds``."""

    def figure(r: Result) -> float:
        return percentile(r.e2e_ms, 99) if open_loop else r.rate

    def key(r: Result) -> float:
        value = figure(r)
        return -math.inf if math.isnan(value) else (-value if open_loop else value)

    best = max(results, key=key)
    if len(results) > 1:
        best.rounds = [figure(r) for r in results]
    return best


def topic_specs(run: Run, specs: Sequence[PathSpec]) -> list[TopicSpec]:
    topics: list[TopicSpec] = []
    for spec in specs:
        if spec.path == "cairn":
            topics += federation_topics(run.federation, spec.prefix)
        else:
            topics += [
                TopicSpec(delivery_topic(spec.prefix, r), 3, "baseline") for r in run.recipients
            ]
    return topics


async def run(args: argparse.Namespace) -> tuple[list[Result], Sizes, str]:
    prefix = f"bench{secrets.token_hex(4)}"
    settings = Settings(kafka_bootstrap_servers=args.bootstrap, topic_prefix=prefix)
    federation = load_federation(settings.federation_dir)
    sample = json.loads(args.sample.read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory(prefix="cairn-bench-") as name:
        folder = Path(name)
        passphrase = secrets.token_urlsafe(32).encode()  # random: it leaves with the folder
        (folder / "passphrase").touch(mode=0o600)
        (folder / "passphrase").write_bytes(passphrase)
        store = FileStore(folder / "keys")
        init_federation(store, federation, passphrase, now=utcnow())
        sizes = message_sizes(sample, federation, settings, BenchKeys(store, passphrase))
        bench = Run(args, folder, federation, sample, sizes)
        specs = plan(args, prefix)
        topics = topic_specs(bench, specs)
        results: list[Result] = []
        created = False
        try:
            async with asyncio.timeout(args.timeout):
                await create_topics(settings, topics)
                created = True
                await wait_for_leaders(settings, topics, CONNECT_TIMEOUT_S)
                rounds: dict[PathSpec, list[Result]] = {spec: [] for spec in specs}
                for n in range(args.rounds):
                    for spec in specs:  # interleaved, so that a busy spell hits every path
                        of = f" (round {n + 1} of {args.rounds})" if args.rounds > 1 else ""
                        print(f"bench: running {spec.label}{of} ...", file=sys.stderr, flush=True)
                        rounds[spec].append(await bench.run_path(spec))
                results = [best_round(rs, open_loop=bool(args.rate)) for rs in rounds.values()]
        except TimeoutError:
            raise BenchError(
                f"the run did not finish within --timeout {args.timeout:g} s; raise it or "
                "lower --count"
            ) from None
        finally:
            if created and not args.keep_topics:
                await delete_leftovers(settings, [t.name for t in topics], prefix)
        kafka = f"pid {bench.kafka_pid}" if bench.kafka_pid else "its process not found"
    return results, sizes, kafka


# --- report -------------------------------------------------------------------------------------


def code_version() -> str:
    """The commit measured, and whether the code under it had uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            [
                "git",
                "-C",
                str(REPO),
                "status",
                "--porcelain",
                "--",
                "broker",
                "adapters",
                "keys",
                "schemas",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return "not a git checkout"
    if dirty:
        return (
            f"{head} + uncommitted changes in {len(dirty)} file(s) of broker/adapters/keys/schemas"
        )
    return f"{head} (clean)"


def _f(value: float, digits: int = 1) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def _x(a: float, b: float) -> str:
    return "n/a" if math.isnan(a) or math.isnan(b) or b == 0 else f"{a / b:.2f}x"


def render(results: Sequence[Result], args: argparse.Namespace, sizes: Sizes, kafka: str) -> str:
    if args.rate:
        mode = (
            f"open loop at {args.rate:g} referrals/s"
            + (f" for {args.soak:g} s" if args.soak else "")
            + f", at most {args.concurrency} requests on the wire; latency from each referral's "
            "scheduled send time"
        )
    else:
        mode = f"closed loop, {args.concurrency} requests in flight; latency from each POST's start"
    lines = [
        f"## Cairn throughput, processes apart ({code_version()})",
        "",
        f"{args.count} referrals per path after {args.warmup} warm-up; {mode}; "
        f"{len(sizes.records)} recipients each; recipients {args.recipient}; Kafka "
        f"{args.bootstrap} ({kafka}); {os.cpu_count()} CPUs",
        f"body {sizes.json} B JSON (baselines) / {sizes.jws} B JWS (cairn); records "
        f"{sizes.record_range()} B (the broker's JWE per recipient; baselines padded to it)",
        "",
        "| path | referrals/s | 202 p50 | 202 p95 | 202 p99 | e2e p50 | e2e p95 | e2e p99 | "
        "CPU ms/ref load | server | recipients | Kafka | all | server cores | server RSS MiB |",
        "| --- |" + " ---: |" * 15,
    ]
    for r in results:
        if r.pending:
            lines.append(f"| {r.spec.label} | {r.pending} |" + " |" * 14)
            continue
        lines.append(
            f"| {r.spec.label} | {_f(r.rate)} | "
            + " | ".join(_f(percentile(r.accept_ms, p)) for p in (50, 95, 99))
            + " | "
            + " | ".join(_f(percentile(r.e2e_ms, p)) for p in (50, 95, 99))
            + " | "
            + " | ".join(_f(r.cpu_ms(role), 2) for role in (*ROLES, "all"))
            + f" | {_f(r.cpu_s.get('server', math.nan) / r.elapsed_s, 2)}"
            f" | {_f(r.rss_peak_mib)} |"
        )
    lines += [
        "",
        "latency in ms: 202 = submit -> HTTP answer; e2e = submit -> the last recipient has it "
        "(decrypted and verified on the cairn rows). CPU ms/ref = utime+stime (/proc/<pid>/stat) "
        "in the measured phase / referrals delivered: load generator; server (the broker's "
        "parent and all its workers); recipients (both); Kafka's JVM; all = their sum. "
        "server cores = server CPU s / wall s. server RSS = peak VmRSS, all its processes.",
    ]
    base = next((r for r in results if r.spec.path == "baseline-idem" and not r.pending), None)
    measured = [r for r in results if not r.pending]
    if base is not None and len(measured) > 1:
        lines += [
            "",
            "Ratios to baseline-idem (same run):",
            "",
            "| path | throughput | 202 p99 | e2e p50 | e2e p99 | server CPU/ref | all CPU/ref |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in measured:
            if r is base:
                continue
            lines.append(
                f"| {r.spec.label} | {_x(r.rate, base.rate)} | "
                f"{_x(percentile(r.accept_ms, 99), percentile(base.accept_ms, 99))} | "
                f"{_x(percentile(r.e2e_ms, 50), percentile(base.e2e_ms, 50))} | "
                f"{_x(percentile(r.e2e_ms, 99), percentile(base.e2e_ms, 99))} | "
                f"{_x(r.cpu_ms('server'), base.cpu_ms('server'))} | "
                f"{_x(r.cpu_ms('all'), base.cpu_ms('all'))} |"
            )
    lines += ["", *targets(results, args)]
    lines.append("")
    for r in results:
        if r.pending:
            continue
        detail = [
            f"{r.spec.label}: {r.command}",
            f"machine CPU busy {_f(100 * r.machine_busy)}% (this run's processes "
            f"{_f(100 * r.run_busy)}%, the rest other work on the machine)",
        ]
        if r.spec.path == "cairn":
            detail.append(f"{r.server_procs} broker process(es)")
        if "signing" in r.note:
            detail.append(f"signing: {r.note['signing']}")
        for key in ("signed_at_turn", "resigned", "late_sends", "bodies_not_ready"):
            if r.note.get(key):
                detail.append(f"{key.replace('_', ' ')}: {r.note[key]}")
        if r.note.get("late_sends"):
            detail.append(f"max send lag {r.note['max_send_lag_ms']} ms")
        if r.rounds:
            what = "e2e p99 ms" if args.rate else "referrals/s"
            detail.append(
                f"best of {len(r.rounds)} rounds by {what}: {', '.join(_f(v) for v in r.rounds)}"
            )
        lines.append("- " + "; ".join(detail))
        if not args.rate and percentile(r.e2e_ms, 50) > 3 * percentile(r.accept_ms, 50) + 50:
            lines.append(
                f"- note {r.spec.label}: its recipients fell behind the sender (e2e p50 far above "
                "202 p50): that latency is queueing and grows with -n"
            )
        others = r.machine_busy - r.run_busy
        if others > OTHERS_WARN_SHARE:
            lines.append(
                f"- WARNING {r.spec.label}: other work on the machine used {100 * others:.0f}% "
                "of its CPUs during the phase, so this row's rates and latencies are mostly "
                "what was left over; the CPU per referral still holds; rerun on a quiet machine"
            )
        if r.failures:
            lines.append(
                f"- WARNING {r.spec.label}: {r.count - r.delivered} not delivered: {r.failures}"
            )
    lines.append(
        "- bench orchestrator CPU (not in 'all'): "
        + ", ".join(f"{r.spec.label} {_f(r.cpu_ms('bench'), 3)} ms/ref" for r in measured)
    )
    if args.profile:
        lines.append("- --profile: the broker ran under py-spy (100 Hz), which slows it a little")
    for r in results:
        if r.soak_rss:
            lines += ["", *soak_lines(r)]
        if r.profile:
            lines += ["", f"### {r.spec.label}", "", *r.profile]
    return "\n".join(lines)


def soak_lines(r: Result) -> list[str]:
    minutes = ", ".join(f"{m:g} min {mib:.1f}" for m, mib in r.soak_rss)
    first, last = r.soak_rss[0][1], r.soak_rss[-1][1]
    growth = last - first
    flat = growth <= max(SOAK_FLAT_MIB, SOAK_FLAT_SHARE * first)
    verdict = "flat" if flat else "GROWING"
    return [
        f"soak {r.spec.label}: broker RSS MiB by minute: {minutes}",
        f"soak {r.spec.label}: first minute {first:.1f} MiB, last minute {last:.1f} MiB: "
        f"{verdict} ({growth:+.1f} MiB; flat means within {SOAK_FLAT_MIB:g} MiB or "
        f"{100 * SOAK_FLAT_SHARE:g}%); peak {r.rss_peak_mib:.1f} MiB",
    ]


def targets(results: Sequence[Result], args: argparse.Namespace) -> list[str]:
    """Issue 13's targets against this run's figures (never a test: a report)."""
    by = {r.spec.label: r for r in results if not r.pending}
    base = by.get("baseline-idem")
    one, two = by.get("cairn, 1 worker"), by.get("cairn, 2 workers")
    lines = ["Targets (issue 13):"]
    for r in (one, two):
        if r is not None and base is not None and not args.rate:
            ratio = r.rate / base.rate
            lines.append(
                f"- {r.spec.label} throughput >= 1.0x baseline-idem: {ratio:.2f}x "
                f"({'met' if ratio >= 1.0 else 'not met'})"
            )
    for r in (one, two):
        if r is not None and args.rate:
            p99a, p99e = percentile(r.accept_ms, 99), percentile(r.e2e_ms, 99)
            met = p99a <= 50 and p99e <= 150
            lines.append(
                f"- {r.spec.label} at {args.rate:g}/s: p99 202 {_f(p99a)} ms (<= 50), p99 e2e "
                f"{_f(p99e)} ms (<= 150): {'met' if met and args.rate >= 200 else 'not met'}"
                + ("" if args.rate >= 200 else " (the target is at 200/s)")
            )
    if one is not None and two is not None:
        lines.append(
            f"- 2 workers >= 1.6x 1 worker: throughput {_x(two.rate, one.rate)}; broker CPU per "
            f"referral {_x(two.cpu_ms('server'), one.cpu_ms('server'))} (on "
            f"{os.cpu_count()} CPUs shared with Kafka, the load generator and the recipients)"
        )
    elif one is not None and "cairn, 2 workers" in {r.spec.label for r in results}:
        lines.append("- 2 workers >= 1.6x 1 worker: pending ('cairn serve --workers' missing)")
    for r in (one, two):
        if r is not None:
            lines.append(
                f"- {r.spec.label} broker RSS <= 300 MB ({RSS_TARGET_MIB:.0f} MiB): peak "
                f"{_f(r.rss_peak_mib)} MiB "
                f"({'met' if r.rss_peak_mib <= RSS_TARGET_MIB else 'not met'})"
            )
    return lines


# --- command line -------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/throughput.py",
        description=(
            "Send referrals from a load generator process through 'cairn serve' (1 and 2 "
            "workers) to recipient processes, and the same through two bare aiohttp + aiokafka "
            "baselines, in one run; print referrals/s, latency to 202 and to the last "
            "recipient, CPU time per referral of each process, and the ratios."
        ),
    )
    parser.add_argument("-n", "--count", type=int, default=2000, help="referrals per path")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=32,
        help="requests in flight (closed loop), or at most on the wire (--rate); default 32",
    )
    parser.add_argument(
        "--warmup", type=int, default=100, help="unmeasured referrals per path first (100)"
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="open loop: send R referrals/s on a fixed schedule, latency from the scheduled "
        "time (default: closed loop)",
    )
    parser.add_argument(
        "--soak",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="with --rate: run that long (600 for issue 13), print the broker's RSS every "
        "minute and whether it stayed flat; -n is then SECONDS x R; --paths defaults to cairn",
    )
    parser.add_argument(
        "--workers",
        default="1,2",
        help="broker worker counts to run, comma-separated (default 1,2): 'cairn serve "
        "--workers N' per count",
    )
    parser.add_argument(
        "--profile",
        nargs="?",
        const="threads",
        choices=("threads", "gil"),
        default=None,
        help=f"run the broker under py-spy and print its top {PROFILE_TOP} functions by own "
        "time: threads (default) samples every thread that is not idle, gil only those holding "
        "the GIL (the interpreter's CPU-bound share)",
    )
    parser.add_argument(
        "--bootstrap",
        default=os.environ.get("CAIRN_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        help="local Kafka, host:port on 127.0.0.1 (default $CAIRN_KAFKA_BOOTSTRAP_SERVERS or "
        "127.0.0.1:9092)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=0.0,
        help="seconds for the whole run (default 900; with --soak, SECONDS + 600)",
    )
    parser.add_argument(
        "--paths",
        default="",
        help="comma-separated subset of baseline-idem,baseline-txn,cairn (default all; with "
        "--soak, cairn)",
    )
    parser.add_argument(
        "--sample",
        type=Path,
        default=None,
        help="referral JSON to copy (default deploy/federation/samples/referral-high-risk.json)",
    )
    parser.add_argument(
        "--recipient",
        choices=("inbox", "plain"),
        default="inbox",
        help="inbox (default): the broker's recipients are adapters.inbox.Inbox (decrypt and "
        "verify, one commit per batch) and the baselines' a consumer that commits likewise; "
        "plain: every recipient is a bare read_committed consumer without group, commits or "
        "opening",
    )
    parser.add_argument(
        "--sign",
        choices=("auto", "inside"),
        default="auto",
        help="auto (default): the load generator signs each body ahead of its turn where "
        "max_signature_age_s allows; inside: at its turn, so its signing is measured too",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every path this many times, interleaved, and show each path's best round "
        "(closed loop: highest referrals/s; --rate: lowest e2e p99), listing all rounds in the "
        "footer: on a machine that also runs other work, the least disturbed figure (default 1)",
    )
    parser.add_argument(
        "--keep-topics", action="store_true", help="leave the run's topics and groups behind"
    )
    parser.add_argument(
        "--json", action="store_true", help="also print the results as one JSON object"
    )
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.warmup < 0 or args.timeout < 0 or args.rate < 0:
        parser.error("--concurrency must be >= 1, --warmup, --timeout and --rate >= 0")
    if args.soak:
        if args.soak < 0 or not args.rate:
            parser.error("--soak SECONDS needs --rate R")
        args.count = math.ceil(args.soak * args.rate)
    if args.count < 1:
        parser.error("--count must be >= 1")
    if args.rounds < 1 or (args.soak and args.rounds > 1):
        parser.error("--rounds must be >= 1, and 1 with --soak")
    args.timeout = args.timeout or (args.soak + 600 if args.soak else 900.0 * args.rounds)
    args.paths = {
        p.strip()
        for p in (args.paths or ("cairn" if args.soak else ",".join(PATHS))).split(",")
        if p.strip()
    }
    unknown = args.paths - set(PATHS)
    if unknown or not args.paths:
        parser.error(f"--paths: unknown {sorted(unknown)}")
    try:
        args.workers = sorted({int(w) for w in args.workers.split(",") if w.strip()})
    except ValueError:
        parser.error("--workers: comma-separated whole numbers")
    if not args.workers or min(args.workers) < 1 or max(args.workers) > 16:
        parser.error("--workers: counts from 1 to 16")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(fmt="console", level="warning")
    if args.sample is None:
        args.sample = Settings().federation_dir / "samples" / "referral-high-risk.json"
    args.sample = args.sample.resolve()
    try:
        if not Path(broker.__file__).resolve().is_relative_to(REPO):
            raise BenchError(
                f"this script is in {REPO} but imports broker from {broker.__file__}; run it "
                f"with PYTHONPATH={REPO}"
            )
        check_local(args.bootstrap)
        results, sizes, kafka = asyncio.run(run(args))
    except (BenchError, CairnError, OSError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    print(render(results, args, sizes, kafka))
    if args.json:
        print(
            json.dumps(
                {
                    "code": code_version(),
                    "count": args.count,
                    "warmup": args.warmup,
                    "concurrency": args.concurrency,
                    "rate": args.rate,
                    "soak_s": args.soak,
                    "recipient": args.recipient,
                    "sign": args.sign,
                    "body_bytes": {"json": sizes.json, "jws": sizes.jws},
                    "record_bytes": sizes.records,
                    "bootstrap": args.bootstrap,
                    "results": [r.summary() for r in results],
                }
            )
        )
    failed = any(r.failures for r in results) or any(
        p.startswith("WARNING") for r in results for p in r.profile
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
