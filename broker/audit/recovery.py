"""Opening the audit log's files after a stop at any point: what ``AuditLog.open`` repairs.

A new log's two files are born whole with one random id. On every open, a record the file ends
inside, or a last record that fails its checksum with nothing but zero bytes after it, is a torn
tail and is cut off (those events were never acknowledged to Kafka, so the consumer delivers
them again); a damaged record with valid data after it is not a crash but damage or tampering,
and the log refuses to open (``TamperDetected``). The log's own checkpoints must describe its
own tree, and the latest-checkpoint file is restored from the checkpoints file. Opened
read-only (beside the running auditor), nothing is written: a tail being written is ignored.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import secrets
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from broker.audit.checkpoint import Checkpoint
from broker.audit.errors import AuditBusy, AuditUnavailable, TamperDetected
from broker.audit.files import (
    CHECKPOINTS_FILE,
    CHECKPOINTS_MAGIC,
    ENTRIES_FILE,
    ENTRIES_MAGIC,
    FILE_HEADER,
    LATEST_FILE,
    LOG_ID_BYTES,
    Disk,
    Progress,
    entry_frames,
    mapped,
    note_frames,
    torn,
    unverified_checkpoint,
)
from broker.audit.merkle import Tree

__all__ = [
    "Checkpoints",
    "Entries",
    "Recovery",
    "lock",
    "open_files",
    "restore_latest",
    "scan_checkpoints",
    "scan_entries",
]

_LOCK_FILE: Final = "lock"


@dataclass(frozen=True)
class Recovery:
    """What ``open`` had to repair after the previous run stopped."""

    truncated_entry_bytes: int = 0  # a torn tail of entries.log, cut off
    truncated_checkpoint_bytes: int = 0  # a torn tail of checkpoints.log, cut off
    restored_latest: bool = False  # the latest-checkpoint file was rewritten
    indexed: int = 0  # entries added to an index that was behind
    index_rebuilt: bool = False  # the index was missing, foreign, ahead or damaged

    @property
    def repaired(self) -> bool:
        return bool(
            self.truncated_entry_bytes
            or self.truncated_checkpoint_bytes
            or self.restored_latest
            or self.indexed
            or self.index_rebuilt
        )


def lock(directory: Path) -> int:
    """Hold the log in ``directory`` for writing (creating the folder); ``AuditBusy`` if held."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(directory / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise AuditUnavailable(f"cannot open {directory}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AuditBusy(
            f"another process (the auditor) is writing the audit log in {directory}"
        ) from None
    return fd


def open_files(directory: Path, disk: Disk, *, readonly: bool) -> tuple[int, int]:
    """The entries and the checkpoints file, opened; a new log's are created first."""
    entries = directory / ENTRIES_FILE
    checkpoints = directory / CHECKPOINTS_FILE
    opened: list[int] = []
    try:
        if not readonly and not entries.exists():
            # A new log: both files are born whole (temp + rename) with one random id, so
            # an index or a checkpoints file from another log is recognised as foreign.
            # The entries file comes last: its presence marks a complete creation.
            log_id = secrets.token_bytes(LOG_ID_BYTES)
            disk.replace(FILE_HEADER.pack(CHECKPOINTS_MAGIC, log_id), checkpoints)
            disk.replace(FILE_HEADER.pack(ENTRIES_MAGIC, log_id), entries)
        flags = os.O_RDONLY if readonly else os.O_RDWR
        opened.append(os.open(entries, flags))
        if not readonly and not checkpoints.exists():
            raise TamperDetected(
                f"{checkpoints} is missing while {entries} exists; restore it from backup "
                "(checkpoints are also on the cairn.checkpoints topic)"
            )
        opened.append(os.open(checkpoints, flags))
    except BaseException as exc:
        for fd in opened:
            os.close(fd)
        if isinstance(exc, FileNotFoundError):
            raise AuditUnavailable(f"no audit log in {directory}") from None
        if isinstance(exc, OSError):
            raise AuditUnavailable(f"cannot open the audit log: {exc.strerror}") from None
        raise
    return opened[0], opened[1]


def _header(buf: bytes | mmap.mmap, magic: bytes, name: str) -> bytes:
    if len(buf) < FILE_HEADER.size:
        raise TamperDetected(f"{name} has no header: it is not an audit log file")
    found, log_id = FILE_HEADER.unpack_from(buf, 0)
    if found != magic:
        raise TamperDetected(f"{name} does not start with {magic!r}: not an audit log file")
    return bytes(log_id)


@dataclass(frozen=True)
class Entries:
    """The whole, intact records of the entries file, as ``scan_entries`` found them."""

    log_id: bytes
    end: int  # bytes of entries.log that hold whole, intact records
    offsets: array[int] = field(default_factory=lambda: array("Q"))  # Kafka offset of each
    positions: array[int] = field(default_factory=lambda: array("Q"))  # where each starts
    leaves: list[bytes] = field(default_factory=list)  # leaf hash of each
    truncated: int = 0  # bytes of a torn tail cut off


def scan_entries(
    fd: int, disk: Disk, *, readonly: bool, max_event_bytes: int, progress: Progress | None
) -> Entries:
    """Read the entries file, cutting off a torn tail (unless ``readonly``)."""
    offsets, positions = array("Q"), array("Q")
    leaves: list[bytes] = []
    truncated = 0
    with mapped(fd) as buf:
        log_id = _header(buf, ENTRIES_MAGIC, ENTRIES_FILE)
        sha = hashlib.sha256
        end = FILE_HEADER.size
        last_offset = -1
        total = len(buf)
        for frame in entry_frames(buf, end, max_event_bytes):
            if frame.status != "ok":
                if readonly and frame.status == "incomplete":
                    break  # being written by the auditor right now
                if not torn(frame, buf):
                    raise TamperDetected(
                        f"entry {len(leaves)} of {ENTRIES_FILE} is damaged "
                        f"({frame.status}) and valid data follows it: this is not a crash; "
                        "run 'cairn audit verify' and restore from backup"
                    )
                if readonly:
                    break
                truncated = total - frame.pos
                disk.step("entries.truncate")
                disk.truncate(fd, frame.pos)
                break
            index = len(leaves)
            if frame.seq != index or frame.offset <= last_offset:
                raise TamperDetected(
                    f"entry {index} of {ENTRIES_FILE} has sequence {frame.seq} and Kafka "
                    f"offset {frame.offset} after offset {last_offset}: entries were "
                    "removed, inserted or reordered; run 'cairn audit verify'"
                )
            last_offset = frame.offset
            offsets.append(frame.offset)
            positions.append(frame.pos)
            leaves.append(sha(b"\x00" + buf[frame.body : frame.end]).digest())
            end = frame.end
            if progress is not None and index % 10_000 == 0:
                progress(end, total)
        if progress is not None:
            progress(total, total)
    return Entries(log_id, end, offsets, positions, leaves, truncated)


@dataclass(frozen=True)
class Checkpoints:
    """The log's own checkpoints, as ``scan_checkpoints`` found and checked them."""

    end: int  # bytes of checkpoints.log that hold whole, intact records
    notes: list[bytes] = field(default_factory=list)  # the signed notes, oldest first
    checkpoints: list[Checkpoint] = field(default_factory=list)  # what each note says
    truncated: int = 0  # bytes of a torn tail cut off


def scan_checkpoints(
    fd: int, disk: Disk, *, log_id: bytes, origin: str, tree: Tree, readonly: bool
) -> Checkpoints:
    """Read the checkpoints file of the log ``log_id`` whose entries make ``tree``, cutting off
    a torn tail (unless ``readonly``), and check each checkpoint describes that tree."""
    notes: list[bytes] = []
    truncated = 0
    with mapped(fd) as buf:
        if _header(buf, CHECKPOINTS_MAGIC, CHECKPOINTS_FILE) != log_id:
            raise TamperDetected(
                f"{CHECKPOINTS_FILE} belongs to another audit log than {ENTRIES_FILE}"
            )
        end = FILE_HEADER.size
        total = len(buf)
        for frame in note_frames(buf, end):
            if frame.status != "ok":
                if not torn(frame, buf):
                    raise TamperDetected(
                        f"checkpoint {len(notes)} of {CHECKPOINTS_FILE} is damaged "
                        "and valid data follows it; run 'cairn audit verify'"
                    )
                if not readonly:
                    disk.step("checkpoints.truncate")
                    disk.truncate(fd, frame.pos)
                    truncated = total - frame.pos
                break
            notes.append(bytes(buf[frame.body : frame.end]))
            end = frame.end
    # Our own checkpoints must describe our own tree: a log that has lost signed entries
    # or holds a checkpoint it could not have signed must not go on signing.
    checkpoints: list[Checkpoint] = []
    for i, note in enumerate(notes):
        checkpoint = unverified_checkpoint(note)
        if checkpoint is None or checkpoint.origin != origin:
            raise TamperDetected(
                f"checkpoint {i} is not a checkpoint of {origin}; run 'cairn audit verify'"
            )
        if checkpoint.size > tree.size and readonly:
            # Signed by the running auditor after we read the entries: not ours to see yet.
            del notes[i:]
            break
        if checkpoint.size > tree.size:
            raise TamperDetected(
                f"checkpoint {i} covers {checkpoint.size} entries but {ENTRIES_FILE} holds "
                f"{tree.size}: signed entries are missing; run 'cairn audit verify'"
            )
        if tree.root(checkpoint.size) != checkpoint.root_hash:
            raise TamperDetected(
                f"checkpoint {i} (size {checkpoint.size}) does not match {ENTRIES_FILE}; run "
                "'cairn audit verify'"
            )
        checkpoints.append(checkpoint)
    return Checkpoints(end, notes, checkpoints, truncated)


def restore_latest(directory: Path, note: bytes | None, disk: Disk) -> bool:
    """Make the latest-checkpoint file hold ``note`` and remove the temp files a crash left;
    returns whether the file had to be rewritten."""
    latest = directory / LATEST_FILE
    try:
        have: bytes | None = latest.read_bytes()
    except FileNotFoundError:
        have = None
    restored = False
    if note is not None and have != note:
        disk.step("latest.write")
        disk.replace(note, latest)
        restored = True
    for stray in directory.glob(".*.tmp"):
        stray.unlink()  # a temp file a crash left before its rename
    return restored
