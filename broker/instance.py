"""Which broker process this is: a transactional id unique to it, with no configuration.

Kafka lets one producer at a time hold a transactional id: initialising it fences whoever held
it before. So every broker process needs an id of its own, and a restarted process should get
its old one back, so that it fences only its own earlier self (and aborts what that left
open). ``acquire_instance`` gives ``<transactional_id>.<host>.<slot>``: the setting is the
deployment's base (``cairn-broker``), the host is this machine's name reduced to
``[A-Za-z0-9-]``, and the slot is the lowest number whose lock file,
``<state_dir>/broker/instances/<host>.<slot>.lock``, no running process holds (an exclusive
``fcntl.flock``). The kernel drops a process's locks when it ends, however it ends (SIGKILL
included), so a slot is free again the moment its holder is gone, and the next broker on the
host takes it. Two brokers side by side, or the workers of ``cairn serve --workers N``, hold
different slots; brokers on other hosts differ by host.

Brokers on one host must share the state folder (they share its state anyway); two state
folders on one host would hand out the same slots under the same base. The lock files stay
(removing one could race a process about to lock it); each holds its holder's pid and worker
number, for an operator. ``SlotLock`` is the same mechanism for anything else one process per
slot should own (the workers' metrics folder).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import socket
from pathlib import Path
from types import TracebackType

from broker.config import Settings
from schemas.errors import InfrastructureError

__all__ = [
    "INSTANCES_DIR",
    "Instance",
    "InstanceUnavailable",
    "SlotLock",
    "acquire_instance",
    "host_name",
]

INSTANCES_DIR = Path("broker") / "instances"  # under the state folder
_HOST_MAX = 63  # characters of the host part (a DNS label's length)
_NOT_HOST = re.compile(r"[^A-Za-z0-9-]+")


class InstanceUnavailable(InfrastructureError):
    """Every slot is held by a running process, or the lock folder cannot be used."""


def host_name(raw: str | None = None) -> str:
    """This machine's name (``socket.gethostname()``) as ``[A-Za-z0-9-]``, at most 63 long.

    Every run of other characters (dots included) becomes one ``-``; a name with nothing left
    is ``host``.
    """
    name = _NOT_HOST.sub("-", socket.gethostname() if raw is None else raw).strip("-")
    return name[:_HOST_MAX].rstrip("-") or "host"


class SlotLock:
    """An exclusive ``flock`` on ``<directory>/<stem>.<slot>.lock``, for the lowest free slot.

    Open descriptions are locked independently, so two ``SlotLock``\\s in one process take two
    slots, as two processes do. The descriptor is not inherited by child processes.
    """

    def __init__(self, directory: Path, stem: str, limit: int, *, note: str = "") -> None:
        self.directory = directory
        self.stem = stem
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise InstanceUnavailable(
                f"cannot create the lock folder {directory} ({exc.strerror}); "
                "check CAIRN_STATE_DIR and its permissions"
            ) from None
        for slot in range(limit):
            path = directory / f"{stem}.{slot}.lock"
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                raise InstanceUnavailable(
                    f"cannot open the lock file {path} ({exc.strerror}); "
                    "check CAIRN_STATE_DIR and its permissions"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            except OSError as exc:
                os.close(fd)
                raise InstanceUnavailable(
                    f"cannot lock {path} ({exc.strerror}); the state folder must be on a "
                    "file system with flock (a local disk)"
                ) from None
            with contextlib.suppress(OSError):  # only a note for an operator
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"pid={os.getpid()} {note}".rstrip().encode() + b"\n", 0)
            self.slot = slot
            self.path = path
            self._fd: int | None = fd
            return
        raise InstanceUnavailable(
            f"all {limit} slots {stem}.0 to {stem}.{limit - 1} in {directory} are held by "
            "running processes; stop one, or raise CAIRN_INSTANCE_SLOTS"
        )

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Give the slot back (idempotent); the process ending does the same."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the last descriptor of the description drops the lock


class Instance:
    """One broker process's identity; see the module docstring. A context manager."""

    def __init__(self, base: str, host: str, lock: SlotLock, worker: int | None) -> None:
        self.base = base
        self.host = host
        self.worker = worker  # the index under `cairn serve --workers`, None when alone
        self._lock = lock

    @property
    def slot(self) -> int:
        return self._lock.slot

    @property
    def name(self) -> str:
        """``<host>.<slot>``: which broker process this is, for logs and an operator."""
        return f"{self.host}.{self.slot}"

    @property
    def transactional_id(self) -> str:
        """``<base>.<host>.<slot>``: the base of this process's Kafka transactional ids."""
        return f"{self.base}.{self.name}"

    @property
    def held(self) -> bool:
        return self._lock.held

    def release(self) -> None:
        """Give the slot back, for the next broker on the host (idempotent)."""
        self._lock.release()

    def __enter__(self) -> Instance:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"Instance({self.transactional_id!r}, worker={self.worker!r})"


def acquire_instance(settings: Settings, worker: int | None = None) -> Instance:
    """Take the lowest free slot on this host: ``InstanceUnavailable`` when all are held.

    Apply it before building the app, as ``cairn serve`` does:
    ``settings.model_copy(update={"transactional_id": instance.transactional_id})``.
    """
    host = host_name()
    note = "" if worker is None else f"worker={worker}"
    lock = SlotLock(settings.state_dir / INSTANCES_DIR, host, settings.instance_slots, note=note)
    return Instance(settings.transactional_id, host, lock, worker)
