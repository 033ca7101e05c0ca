"""Cairn's services as the operator runs them, as subprocesses a fault test can SIGKILL.

``Service`` is one ``cairn`` process (the broker or the auditor) with fixed settings in its
environment: started, killed with SIGKILL and started again on the same port and state folder,
so that every restart is the same broker coming back, as a supervisor (systemd, Kubernetes)
would bring it back. Output goes to a file per service, appended across restarts, so a failure
can show what the processes said.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import aiohttp

from tests.samples import REPO

__all__ = ["CAIRN", "KILLPOINT_BROKER", "Service", "cairn_run", "free_port", "service_env"]

# `cairn serve` with the test-only kill point loaded first (tests/fault/killpoint.py).
KILLPOINT_BROKER = (
    sys.executable,
    "-c",
    "import tests.fault.killpoint; from broker.cli.main import main; main()",
)
CAIRN = (sys.executable, "-m", "broker")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cairn_run(
    env: dict[str, str], *args: str, timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    """One ``cairn`` command to completion, its output captured."""
    return subprocess.run(
        [*CAIRN, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=REPO,
        check=False,
    )


@dataclass
class Service:
    """One long-running ``cairn`` process, restartable with the same environment."""

    name: str
    argv: tuple[str, ...]
    env: dict[str, str]
    log_path: Path
    ready_url: str | None = None  # polled over mutual TLS until it answers 200
    ssl_context: ssl.SSLContext | None = None
    starts: int = 0
    _proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """The base URL of ``ready_url``'s server."""
        if self.ready_url is None:
            raise RuntimeError(f"{self.name} has no URL")
        return self.ready_url.rsplit("/", 1)[0]

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        if self._log is None:
            self._log = self.log_path.open("ab")
        self._log.write(f"\n--- start {self.starts + 1} ---\n".encode())
        self._log.flush()
        self._proc = subprocess.Popen(
            list(self.argv),
            env=self.env,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.starts += 1

    def kill(self) -> None:
        """SIGKILL, no warning, and reap it."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        self._proc = None

    def reap_if_dead(self) -> int | None:
        """The exit code (and reaped) if it ended by itself since it was started, else None."""
        proc = self._proc
        if proc is None or proc.poll() is None:
            return None
        self._proc = None
        return proc.returncode

    def last_exit(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def stop(self, timeout_s: float = 60) -> int:
        """SIGTERM and wait (SIGKILL after ``timeout_s``); the exit code."""
        proc = self._proc
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
        self._proc = None
        return proc.returncode

    def close(self) -> None:
        """Leave nothing running (fixture teardown)."""
        self.kill()
        if self._log is not None:
            self._log.close()
            self._log = None

    def tail(self, chars: int = 3000) -> str:
        if self._log is not None:
            self._log.flush()
        try:
            text = self.log_path.read_bytes()[-chars:]
        except OSError:
            return "(no output)"
        return text.decode("utf-8", "replace")

    async def wait_ready(self, timeout_s: float = 60) -> bool:
        """Poll ``ready_url`` until it answers 200 (True); False if SIGKILL ended it meanwhile
        (the caller restarts it); fail, with its output, if it exits otherwise or never gets
        ready."""
        if self.ready_url is None:
            return True
        deadline = time.monotonic() + timeout_s
        connector = aiohttp.TCPConnector(ssl=self.ssl_context or False, force_close=True)
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=3)
        ) as session:
            while time.monotonic() < deadline:
                if not self.running:
                    if self.last_exit() == -signal.SIGKILL:
                        return False
                    raise RuntimeError(
                        f"{self.name} exited with {self.last_exit()} while starting:\n{self.tail()}"
                    )
                try:
                    async with session.get(self.ready_url) as response:
                        if response.status == 200:
                            return True
                except (aiohttp.ClientError, OSError, TimeoutError):
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name} was not ready after {timeout_s}s:\n{self.tail()}")


def service_env(base: dict[str, str], **values: str) -> dict[str, str]:
    """``base`` without any passphrase variable of the caller's, plus ``values``."""
    env = {k: v for k, v in base.items() if not k.startswith("CAIRN_KEY_PASSPHRASE")}
    env.update(values)
    return env
