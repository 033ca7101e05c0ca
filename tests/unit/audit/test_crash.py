"""Crash safety at the storage level: stop the auditor at every write step, recover, resume.

A run appends the feed in batches, signing a checkpoint after each, as the auditor does. A
``Disk`` double stops it at a chosen durable step (the first creation of the files, each
entries write and fsync, the index commit, each checkpoint write and fsync, the latest-file
write and rename, and the recovery's own truncation), optionally after writing only part of
the data, the way a power cut leaves a torn write. Then the log is reopened with the real disk
and the consumer resumes from the last offset it committed (only after ``append`` returned), or
from the very start of the topic. Every time, recovery yields exactly one leaf per event, in
order, with no gap and no duplicate, and the files verify.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from broker.audit.checkpoint import NoteVerifier
from broker.audit.errors import TamperDetected
from broker.audit.files import ENTRIES_FILE, Disk
from broker.audit.index import Query
from broker.audit.store import AuditLog
from broker.audit.verify import verify
from keys.jwk import SigningKey

Feed = list[tuple[int, bytes]]
FEED_SIZE = 10
BATCH = 4
# The appends that can be torn; the latest-checkpoint file is written whole (temp + rename).
_TORN_WRITES = frozenset({"entries.write", "checkpoints.write"})


class Crash(BaseException):
    """The process died: nothing after this point ran (a BaseException, so nothing catches it)."""


class CrashingDisk(Disk):
    """The real disk, until step number ``at``: there it stops, perhaps mid-write."""

    def __init__(self, at: int, keep: int | None = None) -> None:
        self.at = at
        self.keep = keep  # bytes of the interrupted write that reach the disk; None: none
        self.steps: list[str] = []
        self._armed = False

    def step(self, name: str) -> None:
        self.steps.append(name)
        if len(self.steps) == self.at:
            if self.keep is None or name not in _TORN_WRITES:
                raise Crash(name)
            self._armed = True

    def write(self, fd: int, data: bytes, at: int) -> None:
        if self._armed:
            super().write(fd, data[: min(self.keep or 0, len(data))], at)
            raise Crash("mid-write")
        super().write(fd, data, at)


def _run(folder: Path, feed: Feed, key: SigningKey, disk: Disk, committed: list[int]) -> None:
    """The auditor: append a batch, commit its offset, sign a checkpoint; until the feed ends."""
    log = AuditLog.open(folder, disk=disk)
    try:
        start = next((i for i, (o, _) in enumerate(feed) if o >= log.next_offset), len(feed))
        for lo in range(start, len(feed), BATCH):
            log.append(feed[lo : lo + BATCH])
            committed.append(feed[min(lo + BATCH, len(feed)) - 1][0] + 1)
            log.sign_checkpoint(key)
    finally:
        log.close()


def _steps(tmp: Path, feed: Feed, key: SigningKey) -> list[str]:
    counting = CrashingDisk(at=-1)
    _run(tmp / "count", feed, key, counting, [])
    return counting.steps


def _resume(folder: Path, feed: Feed, key: SigningKey, start_offset: int) -> AuditLog:
    log = AuditLog.open(folder)
    pending = [(o, e) for o, e in feed if o >= start_offset]
    for lo in range(0, len(pending), BATCH):
        log.append(pending[lo : lo + BATCH])
    log.sign_checkpoint(key)
    return log


def _assert_whole(log: AuditLog, feed: Feed, verifiers: Sequence[NoteVerifier]) -> None:
    assert log.size == len(feed)
    assert [(e.offset, e.data) for e in log.entries()] == feed
    assert len(log.query(Query())) == len(feed)
    folder = log.directory
    log.close()
    report = verify(folder, verifiers)
    assert report.ok, report.problems
    assert report.verified_size == len(feed)


def _scenarios(steps: list[str]) -> list[tuple[int, int | None]]:
    out: list[tuple[int, int | None]] = []
    for n, name in enumerate(steps, start=1):
        out.append((n, None))
        if name in _TORN_WRITES:
            out += [(n, 1), (n, 30)]  # the header torn; the header whole, the event torn
    return out


@pytest.fixture
def small_feed(feed: Feed) -> Feed:
    return feed[:FEED_SIZE]


def test_the_run_passes_every_kind_of_step(
    tmp_path: Path, small_feed: Feed, auditor_key: SigningKey
) -> None:
    """The instrumented run covers creation, entries, index, checkpoints and the latest file."""
    steps = set(_steps(tmp_path, small_feed, auditor_key))
    assert steps >= {
        "checkpoints.log.replace",
        "entries.log.replace",
        "entries.write",
        "entries.fsync",
        "index.commit",
        "checkpoints.write",
        "checkpoints.fsync",
        "latest.write",
        "checkpoint.replace",
    }


@pytest.mark.parametrize("replay_from_start", [False, True])
def test_a_crash_at_any_step_recovers_to_exactly_one_leaf_per_event(
    tmp_path: Path,
    small_feed: Feed,
    auditor_key: SigningKey,
    verifiers: list[NoteVerifier],
    replay_from_start: bool,
) -> None:
    """Stopped anywhere, reopened and resumed: every event once, in order, files verify."""
    steps = _steps(tmp_path, small_feed, auditor_key)
    for n, (at, keep) in enumerate(_scenarios(steps)):
        folder = tmp_path / f"crash-{n}"
        committed: list[int] = []
        with pytest.raises(Crash):
            _run(folder, small_feed, auditor_key, CrashingDisk(at, keep), committed)
        start = 0 if replay_from_start or not committed else committed[-1]
        log = _resume(folder, small_feed, auditor_key, start)
        _assert_whole(log, small_feed, verifiers)


def test_a_crash_during_recovery_is_recovered_too(
    tmp_path: Path, small_feed: Feed, auditor_key: SigningKey, verifiers: list[NoteVerifier]
) -> None:
    """A torn tail whose truncation is itself interrupted is cut on the next open."""
    folder = tmp_path / "audit"
    steps = _steps(tmp_path, small_feed, auditor_key)
    second_write = [i for i, s in enumerate(steps, start=1) if s == "entries.write"][1]
    with pytest.raises(Crash):
        _run(folder, small_feed, auditor_key, CrashingDisk(second_write, keep=50), [])
    torn = (folder / ENTRIES_FILE).stat().st_size
    with pytest.raises(Crash):
        AuditLog.open(folder, disk=CrashingDisk(1))  # dies before "entries.truncate"
    assert (folder / ENTRIES_FILE).stat().st_size == torn
    log = _resume(folder, small_feed, auditor_key, 0)
    assert log.recovery.truncated_entry_bytes == 50
    _assert_whole(log, small_feed, verifiers)


def test_zero_filled_tail_after_power_loss_is_a_torn_write(
    tmp_path: Path, small_feed: Feed, auditor_key: SigningKey, verifiers: list[NoteVerifier]
) -> None:
    """A file extended with zeros (metadata ahead of data on power loss) is recovered."""
    folder = tmp_path / "audit"
    with AuditLog.open(folder) as log:
        log.append(small_feed[:4])
    with (folder / ENTRIES_FILE).open("ab") as f:
        f.write(b"\0" * 4096)
    log = _resume(folder, small_feed, auditor_key, 0)
    assert log.recovery.truncated_entry_bytes == 4096
    _assert_whole(log, small_feed, verifiers)


def test_damage_followed_by_valid_records_is_refused_not_truncated(
    tmp_path: Path, small_feed: Feed
) -> None:
    """A bad record in the middle is not a crash: open refuses rather than cut signed data."""
    folder = tmp_path / "audit"
    with AuditLog.open(folder) as log:
        log.append(small_feed[:6])
    path = folder / ENTRIES_FILE
    data = bytearray(path.read_bytes())
    data[24 + 24 + 5] ^= 0xFF  # inside the first event
    path.write_bytes(bytes(data))
    with pytest.raises(TamperDetected, match="not a crash"):
        AuditLog.open(folder)
    assert path.stat().st_size == len(data)
