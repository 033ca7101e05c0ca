"""``cairn serve --workers N``: one port, N worker processes, each a whole broker.

The supervisor (the process the operator started) binds the listening sockets once
(``broker.web.server.bind_sockets``) and starts N workers as fresh interpreters
(``python -m broker serve --worker-index I``), handing each the listening sockets and one end
of a control socket pair. Each worker runs its own event loop, app and Kafka producers, under
a transactional id of its own (``broker.instance``), and accepts from the one queue the kernel
keeps for the shared socket. Binding once, rather than each worker binding with
``SO_REUSEPORT``: port 0 (ephemeral) works, the port is chosen and logged once; an address in
use is one error before any worker starts; a worker that dies takes no queued connection with
it (``SO_REUSEPORT`` gives each socket its own queue, reset when it closes); and no other
process of the same user can bind into the group and receive a share of the referrals.

A worker says it is serving with one byte on its control socket, once its app is up and it is
listening. One that exits before that, or does not say so within ``worker_start_timeout_s``,
has failed to start; after ``worker_start_attempts`` failed starts in a row of one worker the
supervisor stops the others and exits ``WORKERS_FAILING`` (3). A worker that dies later is
restarted after ``worker_restart_initial_s``, doubling while it keeps dying, up to
``worker_restart_max_s``; one that ran that long counts as healthy again. SIGTERM or SIGINT to
the supervisor is forwarded to every worker as SIGTERM; each drains as ``broker.web.app.serve``
does, and the supervisor exits 0 once all have stopped cleanly (1 if one had to be killed after
``shutdown_timeout_s`` plus a margin). Workers ignore SIGINT (a terminal's Ctrl-C reaches the
whole process group; the supervisor decides) and stop by themselves if the supervisor goes
away (their control socket reads end-of-file).

Metrics: the supervisor gives every worker one ``PROMETHEUS_MULTIPROC_DIR``,
``<state_dir>/broker/metrics/workers.<slot>/``, emptied when it starts (the slot's lock shows
no other supervisor uses it), and marks a worker's files dead when it exits; see
``broker.ops.metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from prometheus_client.multiprocess import mark_process_dead

from broker.config import Settings
from broker.instance import SlotLock
from broker.web.app import serve
from broker.web.server import bind_sockets

__all__ = [
    "METRICS_DIR",
    "WORKERS_FAILING",
    "Supervisor",
    "WorkerCommand",
    "label_logs",
    "run_worker",
]

log = structlog.get_logger(__name__)

WORKERS_FAILING = 3  # exit code: a worker kept failing to start
METRICS_DIR = Path("broker") / "metrics"  # under the state folder
READY = b"R"  # a worker's one byte on its control socket: it is serving
_STOP_MARGIN_S = 30.0  # seconds beyond shutdown_timeout_s for a worker's flush and close

# argv of worker ``index`` given the listening descriptors and its control descriptor
WorkerCommand = Callable[[int, Sequence[int], int], Sequence[str]]


@dataclass
class _Worker:
    index: int
    process: asyncio.subprocess.Process | None = None
    control: socket.socket | None = None
    ready: bool = False


class Supervisor:
    """Runs ``count`` workers on one port until stopped; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        count: int,
        command: WorkerCommand,
        *,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._settings = settings
        self._count = count
        self._command = command
        self._env = dict(os.environ if env is None else env)
        self._workers = [_Worker(i) for i in range(count)]
        self._stopping = asyncio.Event()
        self._failing: int | None = None  # the worker that kept failing to start
        self._announced = False
        self.port: int | None = None  # once bound
        self.metrics_dir: Path | None = None

    def pids(self) -> list[int]:
        """The process ids of the workers running now."""
        return [
            w.process.pid
            for w in self._workers
            if w.process is not None and w.process.returncode is None
        ]

    async def run(self, stop: asyncio.Event | None = None) -> int:
        """Bind, start the workers, keep them running until ``stop`` (or SIGTERM/SIGINT when
        ``stop`` is None); the exit code: 0 clean, 1 a worker did not stop cleanly,
        ``WORKERS_FAILING``. ``OSError`` if the port cannot be bound."""
        settings = self._settings
        listeners = bind_sockets(settings.http_host, settings.http_port)
        slot = None
        loop = asyncio.get_running_loop()
        signals: tuple[signal.Signals, ...] = ()
        if stop is None:
            stop = asyncio.Event()
            signals = (signal.SIGTERM, signal.SIGINT)
            for sig in signals:
                loop.add_signal_handler(sig, stop.set)
        try:
            self.port = int(listeners[0].getsockname()[1])
            slot = SlotLock(settings.state_dir / METRICS_DIR, "workers", settings.instance_slots)
            self.metrics_dir = self._fresh_metrics_dir(slot)
            keepers = [asyncio.create_task(self._keep(w, listeners)) for w in self._workers]
            asked = asyncio.create_task(stop.wait())
            await asyncio.wait([asked, *keepers], return_when=asyncio.FIRST_COMPLETED)
            if self._failing is not None:
                log.error(
                    "broker.workers_failing",
                    worker=self._failing,
                    attempts=settings.worker_start_attempts,
                )
            else:
                log.info("broker.workers_draining", workers=len(self.pids()))
            self._stopping.set()
            asked.cancel()
            await asyncio.gather(*keepers)
            for sock in listeners:  # no new connection is queued for workers that are leaving
                sock.close()
            clean = await self._stop_all()
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
            for sock in listeners:
                sock.close()
            for worker in self._workers:
                if worker.control is not None:
                    worker.control.close()
            if slot is not None:
                slot.release()
        code = WORKERS_FAILING if self._failing is not None else (0 if clean else 1)
        log.info("broker.workers_stopped", exit_code=code)
        return code

    def _fresh_metrics_dir(self, slot: SlotLock) -> Path:
        folder = slot.directory / f"{slot.stem}.{slot.slot}"
        shutil.rmtree(folder, ignore_errors=True)  # a dead supervisor's; nobody else has it
        folder.mkdir(mode=0o700, parents=True)
        return folder

    async def _keep(self, worker: _Worker, listeners: Sequence[socket.socket]) -> None:
        """Start ``worker`` and start it again when it dies, until stopping or it keeps
        failing to start (then ``_failing`` says which)."""
        settings = self._settings
        loop = asyncio.get_running_loop()
        failed_starts = 0
        deaths = 0  # in a row, each within worker_restart_max_s of its start
        while not self._stopping.is_set():
            started_at = loop.time()
            try:
                process = await self._spawn(worker, listeners)
            except OSError as exc:  # no process at all (out of processes or files, say)
                log.error("broker.worker_spawn_failed", worker=worker.index, error=exc.strerror)
                self._failing = worker.index
                return
            ready = await self._until_ready(worker, process)
            if self._stopping.is_set() and process.returncode is None:
                return  # _stop_all stops it
            if ready:
                failed_starts = 0
                self._announce()
                await _first(process.wait(), self._stopping.wait())
                if self._stopping.is_set() and process.returncode is None:
                    return
            else:
                failed_starts += 1
            self._dead(worker, process)
            if failed_starts >= settings.worker_start_attempts:
                self._failing = worker.index
                return
            if loop.time() - started_at >= settings.worker_restart_max_s:
                deaths = 0
            delay = min(
                settings.worker_restart_max_s, settings.worker_restart_initial_s * 2**deaths
            )
            deaths += 1
            log.warning(
                "broker.worker_restarting",
                worker=worker.index,
                exit_code=process.returncode,
                started=worker.ready,
                in_s=delay,
            )
            worker.ready = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    async def _spawn(
        self, worker: _Worker, listeners: Sequence[socket.socket]
    ) -> asyncio.subprocess.Process:
        mine, theirs = socket.socketpair()
        mine.setblocking(False)
        fds = [s.fileno() for s in listeners]
        env = {**self._env, "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir)}
        try:
            process = await asyncio.create_subprocess_exec(
                *self._command(worker.index, fds, theirs.fileno()),
                pass_fds=(*fds, theirs.fileno()),
                env=env,
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        if worker.control is not None:
            worker.control.close()
        worker.control = mine
        worker.process = process
        return process

    async def _until_ready(self, worker: _Worker, process: asyncio.subprocess.Process) -> bool:
        """True once the worker says it serves; False if it exits, or is killed for taking
        longer than ``worker_start_timeout_s``, first (or the supervisor is stopping)."""
        assert worker.control is not None
        loop = asyncio.get_running_loop()
        said = asyncio.ensure_future(loop.sock_recv(worker.control, 1))
        try:
            async with asyncio.timeout(self._settings.worker_start_timeout_s):
                await _first(said, process.wait(), self._stopping.wait())
        except TimeoutError:
            log.error(
                "broker.worker_start_timeout",
                worker=worker.index,
                timeout_s=self._settings.worker_start_timeout_s,
            )
        finally:
            said.cancel()
            with contextlib.suppress(BaseException):
                await said
        worker.ready = said.done() and not said.cancelled() and said.result() == READY
        if not worker.ready and not self._stopping.is_set() and process.returncode is None:
            # Too slow, or it closed its control socket without serving: it failed to start.
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        return worker.ready

    def _announce(self) -> None:
        if not self._announced and all(w.ready for w in self._workers):
            self._announced = True
            log.info(
                "broker.listening",
                host=self._settings.http_host,
                port=self.port,
                workers=self._count,
            )

    def _dead(self, worker: _Worker, process: asyncio.subprocess.Process) -> None:
        if self.metrics_dir is not None:
            mark_process_dead(process.pid, str(self.metrics_dir))  # type: ignore[no-untyped-call]
        if not self._stopping.is_set():
            log.warning(
                "broker.worker_exited",
                worker=worker.index,
                pid=process.pid,
                exit_code=process.returncode,
            )

    async def _stop_all(self) -> bool:
        """SIGTERM every worker, wait for them to drain; kill those that take too long.
        True if each exited 0 (or was stopped before it had started serving)."""
        running = [
            w for w in self._workers if w.process is not None and w.process.returncode is None
        ]
        for w in running:
            assert w.process is not None
            with contextlib.suppress(ProcessLookupError):
                w.process.send_signal(signal.SIGTERM)
        grace = self._settings.shutdown_timeout_s + _STOP_MARGIN_S
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        clean = True
        for w in running:
            assert w.process is not None
            try:
                await asyncio.wait_for(w.process.wait(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                log.error("broker.worker_killed", worker=w.index, after_s=grace)
                with contextlib.suppress(ProcessLookupError):
                    w.process.kill()
                await w.process.wait()
            code = w.process.returncode
            if code != 0 and not (not w.ready and code == -signal.SIGTERM):
                clean = False
            self._dead(w, w.process)
        return clean


async def _first(*awaitables: Any) -> None:
    """Wait until the first of ``awaitables`` is done; cancel the rest (tasks given are not)."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    owned = [t for t, a in zip(tasks, awaitables, strict=True) if t is not a]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in owned:
            if not task.done():
                task.cancel()
        await asyncio.gather(*owned, return_exceptions=True)


async def run_worker(
    app: web.Application,
    settings: Settings,
    ssl_context: ssl.SSLContext | None,
    sockets: Sequence[socket.socket],
    control: socket.socket,
) -> None:
    """Serve ``app`` on the supervisor's ``sockets`` until SIGTERM or the supervisor is gone;
    say "serving" on ``control`` once listening. Then drain as ``serve`` does."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    control.setblocking(False)

    def on_control() -> None:
        try:
            data = control.recv(64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # end of file: the supervisor has gone, so nobody would restart us
            loop.remove_reader(control.fileno())
            log.warning("broker.supervisor_gone")
            stop.set()

    loop.add_reader(control.fileno(), on_control)
    started = asyncio.Event()
    serving = asyncio.create_task(
        serve(app, settings, ssl_context, started=started, sockets=sockets, stop=stop)
    )
    try:
        await _first(serving, started.wait())
        if started.is_set():
            with contextlib.suppress(OSError):  # a supervisor already gone: we stop anyway
                await loop.sock_sendall(control, READY)
        await serving
    finally:
        loop.remove_reader(control.fileno())
        loop.remove_signal_handler(signal.SIGTERM)
        control.close()


def label_logs(worker: int) -> None:
    """Add ``worker=<index>`` to every structlog line of this process from now on."""

    def add_worker(
        _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        event_dict.setdefault("worker", worker)
        return event_dict

    processors = structlog.get_config()["processors"]
    structlog.configure(processors=[add_worker, *processors])
