"""A throwaway PostgreSQL cluster for the tests, from Debian's own binaries.

``LocalPostgres`` runs ``initdb`` and ``pg_ctl`` from ``/usr/lib/postgresql/<version>/bin``
(the ``postgresql`` package, which ``make test`` installs when it is missing) on a folder
``pg-test-<random>`` under ``$CAIRN_STATE_DIR`` or the repo's ``.cairn``: a free loopback port,
the unix socket inside that folder, trust authentication for 127.0.0.1 only (no other line in
``pg_hba.conf``, so nothing else gets in), fsync off (a test cluster need not survive a power
cut). ``initdb`` refuses to run as root, so as root the cluster runs as the ``postgres`` system
user the package creates (``runuser``), owning the folder. ``stop`` stops it and deletes the
folder. Missing binaries are a failure that says to run ``make test``, never a skip.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tests.samples import REPO

SUPERUSER = "cairn"  # the cluster's superuser; trust on 127.0.0.1 only
PG_LIB = Path("/usr/lib/postgresql")
MISSING = (
    "PostgreSQL's server binaries (Debian's postgresql package) are missing: run make test "
    "(installs postgresql), or apt-get install postgresql"
)


def server_bin() -> Path:
    """The newest installed ``/usr/lib/postgresql/<version>/bin`` holding initdb and pg_ctl."""
    found = []
    if PG_LIB.is_dir():
        for version in PG_LIB.iterdir():
            bin_dir = version / "bin"
            if (bin_dir / "initdb").is_file() and (bin_dir / "pg_ctl").is_file():
                with contextlib.suppress(ValueError):
                    found.append((int(version.name.split(".")[0]), bin_dir))
    if not found:
        raise RuntimeError(MISSING)
    return max(found)[1]


def free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _reachable_by_others(folder: Path) -> bool:
    """True if every folder above ``folder`` lets other users through (the postgres user)."""
    return all(parent.stat().st_mode & stat.S_IXOTH for parent in folder.resolve().parents)


@dataclass
class LocalPostgres:
    """One throwaway cluster; ``url(db)`` names a database in it."""

    base: Path | None = None  # None: $CAIRN_STATE_DIR, else <repo>/.cairn
    folder: Path | None = field(init=False, default=None)
    port: int = field(init=False, default=0)
    _as_postgres: bool = field(init=False, default=False)
    _bin: Path = field(init=False)

    def start(self, timeout_s: float = 60.0) -> None:
        self._bin = server_bin()
        base = self.base or Path(os.environ.get("CAIRN_STATE_DIR") or REPO / ".cairn")
        base.mkdir(parents=True, exist_ok=True)
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres and not _reachable_by_others(base / "x"):
            # The postgres user could not reach a folder under ``base``: use /tmp's instead.
            base = Path(tempfile.gettempdir())
        folder = self.folder = base / f"pg-test-{uuid.uuid4().hex[:12]}"
        folder.mkdir(mode=0o700)
        if self._as_postgres:
            shutil.chown(folder, "postgres", "postgres")
        data = folder / "data"
        self._run(
            [
                str(self._bin / "initdb"),
                "-D",
                str(data),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            ],
            timeout_s,
        )
        (data / "pg_hba.conf").write_text(f"host all {SUPERUSER} 127.0.0.1/32 trust\n")
        self.port = free_port()
        options = " ".join(
            [
                "-c listen_addresses=127.0.0.1",
                f"-c port={self.port}",
                f"-c unix_socket_directories={folder}",
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                "-c max_connections=200",
            ]
        )
        self._run(
            [
                str(self._bin / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(folder / "server.log"),
                "-o",
                options,
                "-w",
                "-t",
                str(int(timeout_s)),
                "start",
            ],
            timeout_s + 10,
        )

    def _run(self, argv: list[str], timeout_s: float) -> None:
        assert self.folder is not None
        if self._as_postgres:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout_s, check=False, cwd=self.folder
        )
        if result.returncode != 0:
            log = self.folder / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.is_file() else ""
            raise RuntimeError(
                f"{' '.join(argv[:6])} ... failed ({result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}\n{tail}"
            )

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        """Stop the server at once and delete its folder (whatever state it is in)."""
        if self.folder is None:
            return
        data = self.folder / "data"
        if (data / "postmaster.pid").is_file():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self._run(
                    [str(self._bin / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                    60,
                )
        shutil.rmtree(self.folder, ignore_errors=True)
