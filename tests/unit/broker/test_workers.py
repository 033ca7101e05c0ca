"""cairn serve --workers: one port bound once, workers restarted, drained, or given up on."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

import pytest
from aiohttp.test_utils import TestServer

import broker.web.app as app_module
import broker.web.workers as workers_module
from broker.config import Settings
from broker.kafka.transport import MemoryTransport
from broker.state import SqliteStore
from broker.web.workers import METRICS_DIR, WORKERS_FAILING, Supervisor
from schemas.federation import Federation
from tests.conftest import FederationKeys

# A stand-in worker: it behaves as FAKE_MODE says, and notes each start in FAKE_LOG.
# serve: say "serving", answer each connection with "<index> <pid>" (after FAKE_HOLD_S), exit
# 0 on SIGTERM; die: exit 1 at once; mute: never say "serving"; stubborn: ignore SIGTERM.
FAKE = textwrap.dedent(
    """
    import os, select, signal, socket, sys, time
    index, fds, control = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    mode = os.environ["FAKE_MODE"]
    with open(os.environ["FAKE_LOG"], "a") as log:
        log.write(f"{index} {os.getpid()} {os.environ['PROMETHEUS_MULTIPROC_DIR']}\\n")
    if mode == "die":
        sys.exit(1)
    listener = socket.socket(fileno=int(fds.split(",")[0]))
    ctl = socket.socket(fileno=control)
    stopping = []
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    if mode != "mute":
        ctl.sendall(b"R")
    deadline = time.monotonic() + 60
    while not stopping and time.monotonic() < deadline:
        try:
            ready, _, _ = select.select([listener], [], [], 0.1)
        except InterruptedError:
            continue
        if not ready:
            continue
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            continue  # another worker took it
        time.sleep(float(os.environ.get("FAKE_HOLD_S", "0")))
        conn.sendall(f"{index} {os.getpid()}".encode())
        conn.close()
    sys.exit(0)
    """
)


def _command(index: int, fds: Sequence[int], control: int) -> list[str]:
    return [sys.executable, "-c", FAKE, str(index), ",".join(map(str, fds)), str(control)]


def _supervisor(tmp_path: Path, mode: str, count: int = 2, **values: object) -> Supervisor:
    chosen: dict[str, object] = {
        "state_dir": tmp_path / "state",
        "http_host": "127.0.0.1",
        "http_port": 0,
        "worker_restart_initial_s": 0.05,
        "worker_start_timeout_s": 10.0,
        "shutdown_timeout_s": 2.0,
    }
    settings = Settings(**{**chosen, **values})  # type: ignore[arg-type]
    env = {
        **os.environ,
        "FAKE_MODE": mode,
        "FAKE_LOG": str(tmp_path / "starts.log"),
        "FAKE_HOLD_S": "0.3",
    }
    return Supervisor(settings, count, _command, env=env)


def _starts(tmp_path: Path) -> list[list[str]]:
    path = tmp_path / "starts.log"
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


async def _until(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"not so within {timeout_s} s")


async def _ask(port: int) -> tuple[int, int]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        index, pid = (await asyncio.wait_for(reader.read(), 10)).split()
    finally:
        writer.close()
    return int(index), int(pid)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_workers_share_one_ephemeral_port_and_stop_cleanly(tmp_path: Path) -> None:
    """Port 0 is bound once; both workers accept from it; stopping them all exits 0."""
    stale = tmp_path / "state" / METRICS_DIR / "workers.0"
    stale.mkdir(parents=True)
    (stale / "counter_1.db").write_bytes(b"old")
    supervisor = _supervisor(tmp_path, "serve")
    stop = asyncio.Event()
    run = asyncio.create_task(supervisor.run(stop))
    await _until(lambda: len(supervisor.pids()) == 2 and len(_starts(tmp_path)) == 2)
    assert supervisor.port is not None
    assert supervisor.port > 0
    await _until(lambda: supervisor._announced)
    answers = await asyncio.gather(*[_ask(supervisor.port) for _ in range(4)])
    assert {index for index, _pid in answers} == {0, 1}  # each worker accepted some
    assert not (stale / "counter_1.db").exists()  # a dead supervisor's metrics are gone
    assert {s[2] for s in _starts(tmp_path)} == {str(stale)}  # one folder for every worker
    pids = supervisor.pids()
    stop.set()
    assert await asyncio.wait_for(run, 20) == 0
    assert all(_gone(pid) for pid in pids)
    with pytest.raises(ConnectionRefusedError):  # the port is closed with the supervisor
        await _ask(supervisor.port)


async def test_a_killed_worker_is_restarted_with_the_same_index(tmp_path: Path) -> None:
    """A worker SIGKILLed while serving is started again; the others keep running."""
    supervisor = _supervisor(tmp_path, "serve")
    stop = asyncio.Event()
    run = asyncio.create_task(supervisor.run(stop))
    try:
        await _until(lambda: len(supervisor.pids()) == 2 and supervisor._announced)
        victim = int(_starts(tmp_path)[0][1])
        survivor = int(next(s[1] for s in _starts(tmp_path) if int(s[1]) != victim))
        os.kill(victim, signal.SIGKILL)
        await _until(lambda: len(_starts(tmp_path)) == 3 and len(supervisor.pids()) == 2)
        restarted = _starts(tmp_path)[2]
        assert restarted[0] == next(s[0] for s in _starts(tmp_path) if int(s[1]) == victim)
        assert victim not in supervisor.pids()
        assert survivor in supervisor.pids()
    finally:
        stop.set()
        assert await asyncio.wait_for(run, 20) == 0


async def test_workers_that_keep_dying_at_start_are_given_up_on(tmp_path: Path) -> None:
    """A worker that exits before serving is retried with backoff, then the supervisor exits 3."""
    supervisor = _supervisor(tmp_path, "die", count=1, worker_start_attempts=3)
    code = await asyncio.wait_for(supervisor.run(asyncio.Event()), 30)
    assert code == WORKERS_FAILING
    assert len(_starts(tmp_path)) == 3


async def test_a_worker_that_never_says_it_serves_is_a_failed_start(tmp_path: Path) -> None:
    """A worker silent past worker_start_timeout_s is killed and counted as a failed start."""
    supervisor = _supervisor(
        tmp_path, "mute", count=1, worker_start_attempts=2, worker_start_timeout_s=0.5
    )
    code = await asyncio.wait_for(supervisor.run(asyncio.Event()), 30)
    assert code == WORKERS_FAILING
    starts = _starts(tmp_path)
    assert len(starts) == 2
    assert all(_gone(int(pid)) for _i, pid, _d in starts)


async def test_sigterm_to_the_supervisor_reaches_every_worker(tmp_path: Path) -> None:
    """SIGTERM to the supervisor is forwarded; once the workers have drained it returns 0."""
    supervisor = _supervisor(tmp_path, "serve")
    run = asyncio.create_task(supervisor.run())
    await _until(lambda: len(supervisor.pids()) == 2 and supervisor._announced)
    pids = supervisor.pids()
    os.kill(os.getpid(), signal.SIGTERM)
    assert await asyncio.wait_for(run, 20) == 0
    assert all(_gone(pid) for pid in pids)


async def test_a_worker_that_will_not_stop_is_killed_and_the_exit_is_not_clean(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker still running past its drain time is SIGKILLed, and the exit code is 1."""
    monkeypatch.setattr(workers_module, "_STOP_MARGIN_S", 0.5)
    supervisor = _supervisor(tmp_path, "stubborn", count=1, shutdown_timeout_s=0.5)
    stop = asyncio.Event()
    run = asyncio.create_task(supervisor.run(stop))
    await _until(lambda: supervisor._announced)
    pids = supervisor.pids()
    stop.set()
    assert await asyncio.wait_for(run, 20) == 1
    assert all(_gone(pid) for pid in pids)


async def test_a_worker_that_cannot_be_started_at_all_is_given_up_on(tmp_path: Path) -> None:
    """No process (here: no such program) is a failed start at once; the others are stopped."""
    settings = Settings(state_dir=tmp_path / "state", http_host="127.0.0.1", http_port=0)

    def command(index: int, fds: Sequence[int], control: int) -> list[str]:
        return [str(tmp_path / "no-such-program")] if index == 1 else _command(index, fds, control)

    env = {**os.environ, "FAKE_MODE": "serve", "FAKE_LOG": str(tmp_path / "starts.log")}
    supervisor = Supervisor(settings, 2, command, env=env)
    assert await asyncio.wait_for(supervisor.run(asyncio.Event()), 30) == WORKERS_FAILING
    assert all(_gone(int(pid)) for _i, pid, _d in _starts(tmp_path))


async def test_a_port_in_use_is_an_error_before_any_worker_starts(tmp_path: Path) -> None:
    """Binding happens once, in the supervisor: a port in use raises and starts nothing."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        supervisor = _supervisor(tmp_path, "serve", http_port=taken.getsockname()[1])
        with pytest.raises(OSError, match="in use"):
            await supervisor.run(asyncio.Event())
    assert _starts(tmp_path) == []


class _Recorded:
    """Stands in for the receipts loop and the overdue sweep; notes that it was started."""

    started: ClassVar[list[str]] = []

    def __init__(self, *_args: object, **_kwargs: object) -> None:
        pass

    async def run(self, stop: asyncio.Event) -> None:
        _Recorded.started.append(type(self).__name__)
        await stop.wait()


class _Receipts(_Recorded):
    pass


class _Sweep(_Recorded):
    pass


@pytest.mark.parametrize(
    ("sweep", "started"), [(True, ["_Receipts", "_Sweep"]), (False, ["_Receipts"])]
)
async def test_only_an_app_told_to_sweep_runs_the_overdue_sweep(
    settings: Settings,
    federation: Federation,
    federation_keys: FederationKeys,
    monkeypatch: pytest.MonkeyPatch,
    sweep: bool,
    started: list[str],
) -> None:
    """Every worker follows the receipts; only the first sweeps (two sweeps would both
    publish the same overdue events)."""
    monkeypatch.setattr(app_module, "ReceiptsLoop", _Receipts)
    monkeypatch.setattr(app_module, "OverdueSweep", _Sweep)
    monkeypatch.setattr(_Recorded, "started", [])
    app = app_module.create_app(
        settings,
        federation,
        MemoryTransport(),
        federation_keys.trust(),
        store=SqliteStore(None),
        consume_receipts=True,
        sweep_overdue=sweep,
    )
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        await _until(lambda: len(_Recorded.started) == len(started), 5)
    finally:
        await server.close()
    assert sorted(_Recorded.started) == started
