"""CPU time and memory of the benchmark's processes, read from Linux's /proc.

A process's CPU time is ``utime + stime`` of ``/proc/<pid>/stat`` (every thread of it, in clock
ticks); its memory is ``VmRSS`` of ``/proc/<pid>/status``. A group is a root process with all
its descendants (the broker's parent and its workers), found by walking the parent ids of
``/proc/*/stat``. Kafka's JVM is found as the process holding the listening socket of the
bootstrap port.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "CpuSample",
    "Group",
    "MachineSample",
    "cpu_seconds",
    "descendants",
    "listening_pid",
    "rss_mib",
    "started_at",
]

PROC = Path("/proc")
TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (which may hold spaces)."""
    try:
        text = (PROC / str(pid) / "stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of ``pid`` in seconds; None once it has gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    # After the name: state(0) ppid(1) ... utime(11) stime(12), as proc(5) numbers them 14, 15.
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S


def started_at(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks after boot: with the pid, names one process for
    good (a pid alone may be reused); None once it has gone."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[19])


def rss_mib(pid: int) -> float | None:
    """VmRSS of ``pid`` in MiB; None once it has gone."""
    try:
        text = (PROC / str(pid) / "status").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) / 1024 if match else 0.0


def _all_pids() -> Iterator[int]:
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            yield int(entry.name)


def descendants(root: int) -> list[int]:
    """Every process below ``root`` (children, their children, ...), in no particular order."""
    children: dict[int, list[int]] = {}
    for pid in _all_pids():
        fields = _stat_fields(pid)
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(pid)
    found: list[int] = []
    todo = list(children.get(root, ()))
    while todo and len(found) < 10_000:  # bounded: a pid table is finite, but be sure
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def listening_pid(port: int) -> int | None:
    """The process with a TCP socket listening on 127.0.0.1 (or any address) at ``port``."""
    inodes: set[str] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / table).read_text(encoding="ascii").splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(parts[9])
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for pid in _all_pids():
        try:
            for fd in (PROC / str(pid) / "fd").iterdir():
                if os.readlink(fd) in wanted:
                    return pid
        except OSError:
            continue
    return None


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds per pid of one group at one moment."""

    seconds: dict[int, float]

    def since(self, earlier: CpuSample) -> float:
        """CPU seconds spent between ``earlier`` and this sample; a process that started in
        between counts from zero, one that ended in between is lost (the table says so)."""
        return sum(s - earlier.seconds.get(pid, 0.0) for pid, s in self.seconds.items())


@dataclass
class Group:
    """One role's processes: a root and, if ``tree``, everything below it."""

    name: str
    roots: list[int]
    tree: bool = False
    seen: set[int] = field(default_factory=set)

    def pids(self) -> list[int]:
        pids = list(self.roots)
        if self.tree:
            for root in self.roots:
                pids += descendants(root)
        self.seen.update(pids)
        return pids

    def cpu(self) -> CpuSample:
        seconds = {}
        for pid in self.pids():
            s = cpu_seconds(pid)
            if s is not None:
                seconds[pid] = s
        return CpuSample(seconds)

    def rss(self) -> list[float]:
        """VmRSS in MiB of each live process of the group, the roots first."""
        return [m for m in (rss_mib(pid) for pid in self.pids()) if m is not None]


@dataclass(frozen=True)
class MachineSample:
    """Busy and total jiffies of all CPUs (/proc/stat), to say how loaded the machine was."""

    busy: int
    total: int

    @classmethod
    def now(cls) -> MachineSample:
        try:
            first = (PROC / "stat").read_text(encoding="ascii").splitlines()[0].split()
        except OSError:
            return cls(0, 0)
        ticks = [int(x) for x in first[1:]]
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
        return cls(sum(ticks) - idle, sum(ticks))

    def busy_share(self, earlier: MachineSample) -> float:
        total = self.total - earlier.total
        return (self.busy - earlier.busy) / total if total > 0 else float("nan")
