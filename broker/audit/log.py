"""The auditor's durable store: an append-only Merkle log of audit events, checkpoints, an index.

Files, in one folder (``<state_dir>/audit``):

- ``entries.log``: a 24-byte header (magic, random log id), then one record per audit event in
  the order the auditor consumed ``cairn.audit``: ``length u32 | sequence u64 | Kafka offset
  u64 | CRC-32 u32 | event bytes`` (big-endian; the CRC covers everything in the record but
  itself). Record *i* is leaf *i* of the RFC 9162 tree (``broker.audit.merkle``). Every append batch
  is fsynced before ``append`` returns, so the Kafka offset may be committed after it.
- ``checkpoints.log``: the same header, then ``length u32 | CRC-32 u32 | signed note`` for every
  checkpoint the auditor signed (``broker.audit.checkpoint``), fsynced.
- ``checkpoint``: the latest signed note alone, replaced atomically (temp file, fsync,
  ``os.replace``), for serving.
- ``index.sqlite``: the query index. Derived: ``rebuild_index`` recreates it from the entries
  file, and it is caught up or rebuilt on open whenever it is behind, ahead or foreign.

Crash safety. Writes happen in this order: entries (write, fsync), index (commit), checkpoint
record (write, fsync), latest file (temp, fsync, replace). ``AuditLog.open`` recovers from a
stop at any point: a record the file ends inside, or a last record that fails its checksum with
nothing but zero bytes after it, is a torn tail and is cut off (those events were never
acknowledged to Kafka, so the consumer delivers them again); a damaged record with valid data
after it is not a crash but damage or tampering, and the store refuses to open. The Kafka
offset is the idempotency key: ``append`` skips an event whose offset is already stored with
the same bytes, refuses one stored with different bytes, and refuses an offset that goes
backwards past what is stored. (Offsets on a transactional topic are increasing but not
contiguous: commit markers take offsets too. The consumer seeks to ``next_offset``.)

``verify`` checks the files offline with nothing but the auditor's public key(s): it recomputes
the tree, checks every checkpoint's signature and root and that each is consistent with the
next, and names the first bad place.

Errors: ``TamperDetected`` (the files contradict themselves or their signatures: refuse, tell the
operator) is a ``VerificationError``; ``AuditUnavailable`` (the disk failed, or another process
holds the log) is an ``InfrastructureError``: nothing was appended and the same batch may be
appended again.
"""

from __future__ import annotations

import bisect
import contextlib
import csv
import fcntl
import hashlib
import io
import json
import mmap
import os
import secrets
import sqlite3
import struct
import tempfile
import time
import zlib
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final
from uuid import UUID

import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from broker.audit.checkpoint import Checkpoint, NoteVerifier, sign_checkpoint, verify_checkpoint
from broker.audit.merkle import (
    InvalidProof,
    Tree,
    leaf_hash,
    verify_consistency,
)
from keys import store as keys_store
from keys.errors import KeyStoreError
from keys.errors import VerificationError as KeyVerificationError
from keys.jwk import SigningKey
from keys.store import Store, decrypt_private_key, encrypt_private_key
from schemas.audit import MAX_EVENT_BYTES, AuditEvent, AuditEventType
from schemas.consent import OverrideReason
from schemas.errors import InfrastructureError, SchemaError, VerificationError
from schemas.referral import Purpose

__all__ = [
    "CHECKPOINTS_FILE",
    "DEFAULT_ORIGIN",
    "ENTRIES_FILE",
    "INDEX_FILE",
    "LATEST_FILE",
    "PSEUDONYM_KEY",
    "REPORT_COLUMNS",
    "AppendResult",
    "AuditBusy",
    "AuditLog",
    "AuditUnavailable",
    "CheckpointPolicy",
    "Disk",
    "Entry",
    "Problem",
    "Progress",
    "Query",
    "Recovery",
    "ReportRow",
    "TamperDetected",
    "VerifyReport",
    "create_pseudonym_secret",
    "disclosure_report",
    "load_pseudonym_secret",
    "report_csv",
    "report_json",
    "verify",
]

log = structlog.get_logger(__name__)

ENTRIES_FILE: Final = "entries.log"
CHECKPOINTS_FILE: Final = "checkpoints.log"
LATEST_FILE: Final = "checkpoint"
INDEX_FILE: Final = "index.sqlite"
_LOCK_FILE: Final = "lock"
#: The log's name in its checkpoints, and the auditor's key name in their signature lines.
DEFAULT_ORIGIN: Final = "cairn.local/audit"
#: Where the federation's pseudonym secret lives in the key store (see ``load_pseudonym_secret``).
PSEUDONYM_KEY: Final = keys_store.PSEUDONYM_KEY

_ENTRIES_MAGIC: Final = b"CAIRN-AE"  # audit entries, format 1
_CHECKPOINTS_MAGIC: Final = b"CAIRN-AC"  # audit checkpoints, format 1
_LOG_ID_BYTES: Final = 16
_FILE_HEADER: Final = struct.Struct(">8s16s")
_ENTRY_HEADER: Final = struct.Struct(">IQQI")  # length, sequence, Kafka offset, CRC-32
_NOTE_HEADER: Final = struct.Struct(">II")  # length, CRC-32
_MAX_NOTE_BYTES: Final = 65_536  # bytes of one signed checkpoint
_INDEX_FORMAT: Final = "cairn-audit-index/1"
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)

#: ``progress(done, total)``: called now and then during long runs (units: bytes or entries).
Progress = Callable[[int, int], None]


# --- errors -----------------------------------------------------------------------------------


class TamperDetected(VerificationError):
    """The audit files contradict themselves or their signatures; the log refuses to go on.

    ``str()`` names the first bad place; ``cairn audit verify`` gives the full account.
    """


class AuditUnavailable(InfrastructureError):
    """The audit store could not write or read its files; nothing was appended."""


class AuditBusy(AuditUnavailable):
    """Another process (the running auditor) holds the log for writing."""


# --- the pseudonym secret ---------------------------------------------------------------------


def create_pseudonym_secret(store: Store, passphrase: bytes) -> None:
    """Create the federation's pseudonym secret in the key store (once, at ``keys init``).

    The secret is 32 random bytes, kept as the seed of an Ed25519 private key in encrypted
    PKCS#8 so it has the same protection at rest as every other private key (anyone holding it
    can test guesses: an NHS number is one of a billion). It is never used to sign.
    """
    if store.exists(PSEUDONYM_KEY):
        raise KeyStoreError(
            f"{PSEUDONYM_KEY} already exists; replacing it would make every pseudonym in the "
            "audit log unsearchable"
        )
    store.write(
        PSEUDONYM_KEY, encrypt_private_key(Ed25519PrivateKey.generate(), passphrase), private=True
    )


def load_pseudonym_secret(store: Store, passphrase: bytes) -> bytes:
    """The 32-byte pseudonym secret (HMAC key) from the key store."""
    key = decrypt_private_key(store.read(PSEUDONYM_KEY), passphrase, name=PSEUDONYM_KEY)
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyStoreError(f"{PSEUDONYM_KEY} is not a pseudonym secret")
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


# --- the disk ---------------------------------------------------------------------------------


class Disk:
    """The few durable operations the store makes, each announced by ``step`` first.

    The real one writes and syncs; the crash tests put in one whose ``step`` raises at a chosen
    point and whose ``write`` writes only part of the data, to stop the store anywhere.
    """

    def step(self, name: str) -> None:
        """Called before each durable step (``entries.write``, ``index.commit``, ...)."""

    def write(self, fd: int, data: bytes, at: int) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(fd, view, at)
            view = view[written:]
            at += written

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def truncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)
        os.fsync(fd)

    def replace(self, data: bytes, path: Path) -> None:
        """Write ``path`` whole: a temp file beside it, fsync, ``os.replace``, fsync the folder."""
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            self.step(f"{path.name}.replace")
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- record framing ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Frame:
    """One record as found in a file: where it is and whether it is whole and intact."""

    pos: int  # where the record starts
    end: int  # where the next one would start (the file's end if the record is incomplete)
    status: str  # "ok", "incomplete", "bad-length", "bad-crc"
    seq: int = 0
    offset: int = 0
    body: int = 0  # where the payload starts


def _entry_frames(buf: bytes | mmap.mmap, pos: int, max_bytes: int) -> Iterator[_Frame]:
    size = len(buf)
    head = _ENTRY_HEADER.size
    while pos < size:
        if size - pos < head:
            yield _Frame(pos, size, "incomplete")
            return
        length, seq, offset, crc = _ENTRY_HEADER.unpack_from(buf, pos)
        if length > max_bytes:
            yield _Frame(pos, pos + head, "bad-length", seq, offset)
            return
        end = pos + head + length
        if end > size:
            yield _Frame(pos, size, "incomplete", seq, offset)
            return
        computed = zlib.crc32(buf[pos + head : end], zlib.crc32(buf[pos : pos + head - 4]))
        yield _Frame(pos, end, "ok" if computed == crc else "bad-crc", seq, offset, pos + head)
        pos = end


def _note_frames(buf: bytes | mmap.mmap, pos: int) -> Iterator[_Frame]:
    size = len(buf)
    head = _NOTE_HEADER.size
    while pos < size:
        if size - pos < head:
            yield _Frame(pos, size, "incomplete")
            return
        length, crc = _NOTE_HEADER.unpack_from(buf, pos)
        if length > _MAX_NOTE_BYTES:
            yield _Frame(pos, pos + head, "bad-length")
            return
        end = pos + head + length
        if end > size:
            yield _Frame(pos, size, "incomplete")
            return
        computed = zlib.crc32(buf[pos + head : end], zlib.crc32(buf[pos : pos + 4]))
        yield _Frame(pos, end, "ok" if computed == crc else "bad-crc", body=pos + head)
        pos = end


def _entry_record(seq: int, offset: int, event: bytes) -> bytes:
    head = struct.pack(">IQQ", len(event), seq, offset)
    return head + struct.pack(">I", zlib.crc32(event, zlib.crc32(head))) + event


def _note_record(note: bytes) -> bytes:
    length = struct.pack(">I", len(note))
    return length + struct.pack(">I", zlib.crc32(note, zlib.crc32(length))) + note


def _torn(frame: _Frame, buf: bytes | mmap.mmap) -> bool:
    """A bad record is a torn tail if the file ends inside it or only zero bytes follow it."""
    if frame.status == "incomplete":
        return True
    rest = buf[frame.end :]
    return not rest.strip(b"\0")


# --- results ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One leaf of the log: its index in the tree, its Kafka offset, the event's bytes."""

    index: int
    offset: int
    data: bytes

    @property
    def event(self) -> AuditEvent:
        return AuditEvent.from_canonical(self.data)

    @property
    def leaf_hash(self) -> bytes:
        return leaf_hash(self.data)


@dataclass(frozen=True)
class AppendResult:
    appended: int  # new leaves
    skipped: int  # offsets already stored with the same bytes (Kafka redelivery)
    size: int  # the tree size afterwards


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


@dataclass(frozen=True)
class CheckpointPolicy:
    """When the auditor signs a checkpoint: after ``every_entries`` new leaves or ``every_s``."""

    every_entries: int = 1000  # leaves
    every_s: float = 10.0  # seconds


@dataclass(frozen=True)
class Query:
    """What ``AuditLog.query`` looks for; every field given must match (``None``: any)."""

    subjects: tuple[str, ...] = ()  # pseudonyms; an event about any of them matches
    agency: str | None = None  # as sender, recipient or key owner
    sender: str | None = None
    recipient: str | None = None
    purpose: Purpose | None = None
    lawful_basis: str | None = None  # one code the event names
    override: bool | None = None  # True: consent overridden; False: not overridden
    override_reason: OverrideReason | None = None
    agreement: str | None = None  # the sharing agreement relied on (or changed)
    types: tuple[AuditEventType, ...] = ()
    message_id: UUID | None = None
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive
    limit: int | None = None  # entries, oldest first


# --- the store --------------------------------------------------------------------------------


def _us(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise TypeError("query times must be timezone-aware")
    return (moment - _EPOCH) // _MICROSECOND


_SCHEMA: Final = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE entry(
    seq INTEGER PRIMARY KEY,
    kafka_offset INTEGER NOT NULL,
    leaf_hash BLOB NOT NULL,
    event_id TEXT NOT NULL,
    type TEXT NOT NULL,
    at_us INTEGER NOT NULL,
    message_id TEXT,
    sender TEXT,
    recipient TEXT,
    agency TEXT,
    purpose TEXT,
    consent_state TEXT,
    override_reason TEXT,
    agreement TEXT
);
CREATE INDEX entry_at ON entry(at_us);
CREATE INDEX entry_message ON entry(message_id, recipient);
CREATE INDEX entry_sender ON entry(sender);
CREATE INDEX entry_recipient ON entry(recipient);
CREATE TABLE subject(pseudonym TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (pseudonym, seq))
    WITHOUT ROWID;
CREATE TABLE basis(code TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (code, seq))
    WITHOUT ROWID;
"""


class AuditLog:
    """The durable Merkle log; see the module docstring. Open with ``AuditLog.open``.

    Not thread-safe: one auditor task appends; the HTTP handlers that serve proofs should run
    on the same thread (or behind a lock).
    """

    def __init__(
        self,
        directory: Path,
        *,
        origin: str,
        disk: Disk,
        readonly: bool,
        lock_fd: int | None,
        max_event_bytes: int,
    ) -> None:
        self.directory = directory
        self.origin = origin
        self.readonly = readonly
        self.recovery = Recovery()
        self._disk = disk
        self._lock_fd = lock_fd
        self._max_event_bytes = max_event_bytes
        self._fd = -1
        self._cp_fd = -1
        self._log_id = b""
        self._end = 0  # bytes of entries.log that hold whole, intact records
        self._cp_end = 0
        self._tree = Tree()
        self._offsets = array("Q")
        self._positions = array("Q")  # where each record starts
        self._notes: list[bytes] = []
        self._checkpoints: list[Checkpoint] = []
        self._last_checkpoint_at = time.monotonic()
        self._db: sqlite3.Connection | None = None
        self._index_stale = False
        self._broken: str | None = None

    # -- opening and recovery --

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        origin: str = DEFAULT_ORIGIN,
        readonly: bool = False,
        disk: Disk | None = None,
        max_event_bytes: int = MAX_EVENT_BYTES,
        progress: Progress | None = None,
    ) -> AuditLog:
        """Open (creating if need be) the log in ``directory``, recovering from a crash.

        ``readonly`` opens without writing anything: for the CLI while the auditor runs. It
        ignores a tail being written, and uses the index as the auditor left it.
        """
        lock_fd = None if readonly else _lock(directory)
        store = cls(
            directory,
            origin=origin,
            disk=disk or Disk(),
            readonly=readonly,
            lock_fd=lock_fd,
            max_event_bytes=max_event_bytes,
        )
        try:
            store._open_files()
            store._load_entries(progress)
            store._load_checkpoints()
            store._open_index(progress)
        except OSError as exc:
            store.close()
            raise AuditUnavailable(
                f"cannot open the audit log in {directory}: {exc.strerror}"
            ) from None
        except BaseException:
            store.close()
            raise
        if store.recovery.repaired:
            log.warning("audit.recovered", **vars(store.recovery))
        return store

    def _open_files(self) -> None:
        entries = self.directory / ENTRIES_FILE
        checkpoints = self.directory / CHECKPOINTS_FILE
        try:
            if not self.readonly and not entries.exists():
                # A new log: both files are born whole (temp + rename) with one random id, so
                # an index or a checkpoints file from another log is recognised as foreign.
                # The entries file comes last: its presence marks a complete creation.
                log_id = secrets.token_bytes(_LOG_ID_BYTES)
                self._disk.replace(_FILE_HEADER.pack(_CHECKPOINTS_MAGIC, log_id), checkpoints)
                self._disk.replace(_FILE_HEADER.pack(_ENTRIES_MAGIC, log_id), entries)
            flags = os.O_RDONLY if self.readonly else os.O_RDWR
            self._fd = os.open(entries, flags)
            if not self.readonly and not checkpoints.exists():
                raise TamperDetected(
                    f"{checkpoints} is missing while {entries} exists; restore it from backup "
                    "(checkpoints are also on the cairn.checkpoints topic)"
                )
            self._cp_fd = os.open(checkpoints, flags)
        except FileNotFoundError:
            raise AuditUnavailable(f"no audit log in {self.directory}") from None
        except OSError as exc:
            raise AuditUnavailable(f"cannot open the audit log: {exc.strerror}") from None

    def _header(self, buf: bytes | mmap.mmap, magic: bytes, name: str) -> bytes:
        if len(buf) < _FILE_HEADER.size:
            raise TamperDetected(f"{name} has no header: it is not an audit log file")
        found, log_id = _FILE_HEADER.unpack_from(buf, 0)
        if found != magic:
            raise TamperDetected(f"{name} does not start with {magic!r}: not an audit log file")
        return bytes(log_id)

    def _load_entries(self, progress: Progress | None) -> None:
        with _mapped(self._fd) as buf:
            self._log_id = self._header(buf, _ENTRIES_MAGIC, ENTRIES_FILE)
            leaves: list[bytes] = []
            sha = hashlib.sha256
            end = _FILE_HEADER.size
            last_offset = -1
            total = len(buf)
            for frame in _entry_frames(buf, end, self._max_event_bytes):
                if frame.status != "ok":
                    if self.readonly and frame.status == "incomplete":
                        break  # being written by the auditor right now
                    if not _torn(frame, buf):
                        raise TamperDetected(
                            f"entry {len(leaves)} of {ENTRIES_FILE} is damaged "
                            f"({frame.status}) and valid data follows it: this is not a crash; "
                            "run 'cairn audit verify' and restore from backup"
                        )
                    if self.readonly:
                        break
                    cut = total - frame.pos
                    self._disk.step("entries.truncate")
                    self._disk.truncate(self._fd, frame.pos)
                    self.recovery = _with(self.recovery, truncated_entry_bytes=cut)
                    break
                index = len(leaves)
                if frame.seq != index or frame.offset <= last_offset:
                    raise TamperDetected(
                        f"entry {index} of {ENTRIES_FILE} has sequence {frame.seq} and Kafka "
                        f"offset {frame.offset} after offset {last_offset}: entries were "
                        "removed, inserted or reordered; run 'cairn audit verify'"
                    )
                last_offset = frame.offset
                self._offsets.append(frame.offset)
                self._positions.append(frame.pos)
                leaves.append(sha(b"\x00" + buf[frame.body : frame.end]).digest())
                end = frame.end
                if progress is not None and index % 10_000 == 0:
                    progress(end, total)
            if progress is not None:
                progress(total, total)
        self._end = end
        self._tree = Tree.of(leaves)

    def _load_checkpoints(self) -> None:
        with _mapped(self._cp_fd) as buf:
            if self._header(buf, _CHECKPOINTS_MAGIC, CHECKPOINTS_FILE) != self._log_id:
                raise TamperDetected(
                    f"{CHECKPOINTS_FILE} belongs to another audit log than {ENTRIES_FILE}"
                )
            end = _FILE_HEADER.size
            total = len(buf)
            for frame in _note_frames(buf, end):
                if frame.status != "ok":
                    if not _torn(frame, buf):
                        raise TamperDetected(
                            f"checkpoint {len(self._notes)} of {CHECKPOINTS_FILE} is damaged "
                            "and valid data follows it; run 'cairn audit verify'"
                        )
                    if not self.readonly:
                        self._disk.step("checkpoints.truncate")
                        self._disk.truncate(self._cp_fd, frame.pos)
                        self.recovery = _with(
                            self.recovery, truncated_checkpoint_bytes=total - frame.pos
                        )
                    break
                self._notes.append(bytes(buf[frame.body : frame.end]))
                end = frame.end
        self._cp_end = end
        # Our own checkpoints must describe our own tree: a log that has lost signed entries
        # or holds a checkpoint it could not have signed must not go on signing.
        for i, note in enumerate(self._notes):
            checkpoint = _unverified_checkpoint(note)
            if checkpoint is None or checkpoint.origin != self.origin:
                raise TamperDetected(
                    f"checkpoint {i} is not a checkpoint of {self.origin}; run 'cairn audit verify'"
                )
            if checkpoint.size > self.size and self.readonly:
                # Signed by the running auditor after we read the entries: not ours to see yet.
                del self._notes[i:]
                break
            if checkpoint.size > self.size:
                raise TamperDetected(
                    f"checkpoint {i} covers {checkpoint.size} entries but {ENTRIES_FILE} holds "
                    f"{self.size}: signed entries are missing; run 'cairn audit verify'"
                )
            if self._tree.root(checkpoint.size) != checkpoint.root_hash:
                raise TamperDetected(
                    f"checkpoint {i} (size {checkpoint.size}) does not match {ENTRIES_FILE}; run "
                    "'cairn audit verify'"
                )
            self._checkpoints.append(checkpoint)
        if self.readonly:
            return
        latest = self.directory / LATEST_FILE
        want = self._notes[-1] if self._notes else None
        try:
            have: bytes | None = latest.read_bytes()
        except FileNotFoundError:
            have = None
        if want is not None and have != want:
            self._disk.step("latest.write")
            self._disk.replace(want, latest)
            self.recovery = _with(self.recovery, restored_latest=True)
        for stray in self.directory.glob(".*.tmp"):
            stray.unlink()  # a temp file a crash left before its rename

    # -- the index --

    def _open_index(self, progress: Progress | None) -> None:
        path = self.directory / INDEX_FILE
        if self.readonly:
            if path.exists():
                self._db = sqlite3.connect(_readonly_uri(path), uri=True)
                if self._index_meta().get("log_id") != self._log_id.hex():
                    self._db.close()
                    self._db = None
            if self._db is None or self._indexed() < self.size:
                self._index_stale = True
            return
        try:
            self._db = sqlite3.connect(path)
            self._db.execute("PRAGMA journal_mode=WAL")
            # The index is derived data: losing its last transactions costs a catch-up, never
            # the log, so it need not sync on every commit.
            self._db.execute("PRAGMA synchronous=NORMAL")
            meta = self._index_meta()
            ours = meta.get("format") == _INDEX_FORMAT and meta.get("log_id") == self._log_id.hex()
            if not ours or self._indexed() > self.size:
                self.rebuild_index(progress)
                # A new, empty index is no repair; a foreign, ahead or absent one for an
                # existing log is.
                if meta or self.size:
                    self.recovery = _with(self.recovery, index_rebuilt=True)
            elif self._indexed() < self.size:
                behind = self.size - self._indexed()
                self._catch_up(progress)
                self.recovery = _with(self.recovery, indexed=behind)
        except sqlite3.DatabaseError:
            # A damaged index is rebuilt from the files, which are the truth.
            if self._db is not None:
                self._db.close()
            self._db = None
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    (self.directory / (INDEX_FILE + suffix)).unlink()
            self._db = sqlite3.connect(path)
            self._db.execute("PRAGMA journal_mode=WAL")
            self.rebuild_index(progress)
            self.recovery = _with(self.recovery, index_rebuilt=True)

    def _index_meta(self) -> dict[str, str]:
        assert self._db is not None
        try:
            rows = self._db.execute("SELECT key, value FROM meta").fetchall()
        except sqlite3.OperationalError:
            return {}
        return {str(k): str(v) for k, v in rows}

    def _indexed(self) -> int:
        return int(self._index_meta().get("size", "0"))

    def rebuild_index(self, progress: Progress | None = None) -> int:
        """Recreate the index from the entries file; returns the number of entries indexed."""
        if self.readonly:
            raise RuntimeError("a read-only audit log cannot rebuild its index")
        db = self._require_db()
        with db:
            for table in ("meta", "entry", "subject", "basis"):
                db.execute(f"DROP TABLE IF EXISTS {table}")
            db.executescript(_SCHEMA)
            db.executemany(
                "INSERT INTO meta(key, value) VALUES (?, ?)",
                [("format", _INDEX_FORMAT), ("log_id", self._log_id.hex()), ("size", "0")],
            )
        self._catch_up(progress)
        return self.size

    def _catch_up(self, progress: Progress | None) -> None:
        start = self._indexed()
        step = 5_000
        for lo in range(start, self.size, step):
            hi = min(lo + step, self.size)
            self._index((i, AuditEvent.from_canonical(self._read(i))) for i in range(lo, hi))
            if progress is not None:
                progress(hi - start, self.size - start)
        self._index_stale = False

    def _require_db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the audit log is closed")
        return self._db

    def _index(self, events: Iterable[tuple[int, AuditEvent]]) -> None:
        db = self._require_db()
        entries, subjects, bases = [], [], []
        last = -1
        for i, event in events:
            entries.append(
                (
                    i,
                    self._offsets[i],
                    self._tree.leaf(i),
                    str(event.event_id),
                    event.type.value,
                    _us(event.at),
                    None if event.message_id is None else str(event.message_id),
                    event.sender,
                    event.recipient,
                    event.agency,
                    None if event.purpose is None else event.purpose.value,
                    None if event.consent_state is None else event.consent_state.value,
                    None if event.override_reason is None else event.override_reason.value,
                    event.agreement,
                )
            )
            subjects += [(p, i) for p in event.subjects]
            bases += [(b, i) for b in event.lawful_basis]
            last = i
        if last < 0:
            return
        with db:
            db.executemany(
                "INSERT INTO entry VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", entries
            )
            db.executemany("INSERT INTO subject(pseudonym, seq) VALUES (?, ?)", subjects)
            db.executemany("INSERT INTO basis(code, seq) VALUES (?, ?)", bases)
            db.execute("UPDATE meta SET value = ? WHERE key = 'size'", (str(last + 1),))

    # -- reading --

    @property
    def size(self) -> int:
        """The number of leaves: the tree size."""
        return self._tree.size

    @property
    def last_offset(self) -> int | None:
        """The Kafka offset of the last stored event, if any."""
        return self._offsets[-1] if self._offsets else None

    @property
    def next_offset(self) -> int:
        """Where the auditor's consumer should resume on ``cairn.audit``."""
        return self._offsets[-1] + 1 if self._offsets else 0

    @property
    def tree(self) -> Tree:
        return self._tree

    def _read(self, index: int) -> bytes:
        start = self._positions[index] + _ENTRY_HEADER.size
        end = self._positions[index + 1] if index + 1 < self.size else self._end
        try:
            return os.pread(self._fd, end - start, start)
        except OSError as exc:
            raise AuditUnavailable(f"cannot read the audit log: {exc.strerror}") from None

    def entry(self, index: int) -> Entry:
        """Leaf ``index``: its Kafka offset and event bytes."""
        if not 0 <= index < self.size:
            raise IndexError(f"entry {index} is not in a log of {self.size} entries")
        return Entry(index, self._offsets[index], self._read(index))

    def entries(self, start: int = 0, end: int | None = None) -> Iterator[Entry]:
        for i in range(start, self.size if end is None else min(end, self.size)):
            yield self.entry(i)

    def root(self, size: int | None = None) -> bytes:
        return self._tree.root(size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """RFC 9162 inclusion proof of entry ``index`` at ``size`` (default: the latest)."""
        return self._tree.inclusion_proof(index, size)

    def consistency_proof(self, first: int, second: int | None = None) -> list[bytes]:
        """RFC 9162 consistency proof between two tree sizes (default second: the latest)."""
        return self._tree.consistency_proof(first, second)

    @property
    def checkpoints(self) -> tuple[bytes, ...]:
        """Every signed checkpoint note, oldest first."""
        return tuple(self._notes)

    def latest_checkpoint(self) -> bytes | None:
        """The newest signed checkpoint note, to serve and publish."""
        return self._notes[-1] if self._notes else None

    # -- appending --

    def _writable(self) -> None:
        if self.readonly:
            raise RuntimeError("the audit log was opened read-only")
        if self._broken is not None:
            raise AuditUnavailable(
                f"the audit log stopped after a failed write ({self._broken}); restart the "
                "auditor to recover"
            )

    def _stored_at(self, offset: int) -> bytes | None:
        i = bisect.bisect_left(self._offsets, offset)
        if i < self.size and self._offsets[i] == offset:
            return self._read(i)
        return None

    def append(self, records: Iterable[tuple[int, bytes]]) -> AppendResult:
        """Append ``(Kafka offset, event bytes)`` records durably, in order; idempotent.

        Each event must be a canonical ``AuditEvent`` (else ``SchemaError``: the consumer must
        stop, not skip it, or the log would have a gap). Returns once the records are on disk.
        """
        self._writable()
        batch = bytearray()
        new: list[tuple[int, int, bytes, AuditEvent]] = []  # position, offset, leaf, event
        pending: dict[int, bytes] = {}  # offset -> event bytes, for this batch
        last = self.last_offset
        skipped = 0
        for offset, event in records:
            if last is not None and offset <= last:
                # 1. Redelivery after a crash: the offset must hold these very bytes.
                stored = pending.get(offset)
                if stored is None:
                    stored = self._stored_at(offset)
                if stored is None:
                    raise TamperDetected(
                        f"Kafka offset {offset} is before the last stored offset {last} and "
                        "was never stored: the topic's offsets went backwards (recreated?)"
                    )
                if stored != event:
                    raise TamperDetected(
                        f"Kafka offset {offset} is already in the log with different content"
                    )
                skipped += 1
                continue
            # 2. A new event: valid, canonical, within the size limit.
            if len(event) > self._max_event_bytes:
                raise SchemaError(f"the event at offset {offset} exceeds the size limit")
            parsed = AuditEvent.from_canonical(event)
            position = self._end + len(batch)
            batch += _entry_record(self.size + len(new), offset, event)
            new.append((position, offset, leaf_hash(event), parsed))
            pending[offset] = event
            last = offset
        if not new:
            return AppendResult(0, skipped, self.size)
        # 3. Write and fsync: only then is the batch acknowledged.
        try:
            self._disk.step("entries.write")
            self._disk.write(self._fd, bytes(batch), self._end)
            self._disk.step("entries.fsync")
            self._disk.fsync(self._fd)
        except OSError as exc:
            self._undo_write(exc)
            raise AuditUnavailable(f"cannot write the audit log: {exc.strerror}") from None
        # 4. The in-memory tree follows the file.
        first = self.size
        for position, offset, leaf, _ in new:
            self._positions.append(position)
            self._offsets.append(offset)
            self._tree.append(leaf)
        self._end += len(batch)
        # 5. The index follows; if it fails, the log is still whole and the index catches up.
        self._disk.step("index.commit")
        try:
            if self._index_stale:
                self._catch_up(None)
            else:
                self._index((first + n, e) for n, (_, _, _, e) in enumerate(new))
        except sqlite3.Error as exc:
            self._index_stale = True
            log.warning("audit.index_behind", error=str(exc))
        return AppendResult(len(new), skipped, self.size)

    def _undo_write(self, exc: OSError) -> None:
        try:
            self._disk.truncate(self._fd, self._end)
        except OSError:
            self._broken = exc.strerror or "write failed"

    # -- checkpoints --

    def checkpoint_due(self, policy: CheckpointPolicy, now: float | None = None) -> bool:
        """Whether to sign now: new leaves, and enough of them or enough time (monotonic)."""
        signed = self._checkpoints[-1].size if self._checkpoints else 0
        if self.size == signed:
            return False
        elapsed = (time.monotonic() if now is None else now) - self._last_checkpoint_at
        return self.size - signed >= policy.every_entries or elapsed >= policy.every_s

    def sign_checkpoint(self, key: SigningKey, now: float | None = None) -> bytes:
        """Sign, store and return a checkpoint of the whole tree (the last one if unchanged).

        The key name in the signature line is the origin. A checkpoint is never signed for a
        tree inconsistent with the previous one (RFC 9162 logs must not fork).
        """
        self._writable()
        previous = self._checkpoints[-1] if self._checkpoints else None
        if previous is not None:
            if previous.size == self.size:
                return self._notes[-1]
            if self._tree.root(previous.size) != previous.root_hash:
                raise TamperDetected("the tree no longer matches the last signed checkpoint")
        checkpoint = Checkpoint(self.origin, self.size, self._tree.root())
        note = sign_checkpoint(checkpoint, self.origin, key)
        record = _note_record(note)
        try:
            self._disk.step("checkpoints.write")
            self._disk.write(self._cp_fd, record, self._cp_end)
            self._disk.step("checkpoints.fsync")
            self._disk.fsync(self._cp_fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                self._disk.truncate(self._cp_fd, self._cp_end)
            raise AuditUnavailable(f"cannot write a checkpoint: {exc.strerror}") from None
        self._cp_end += len(record)
        self._notes.append(note)
        self._checkpoints.append(checkpoint)
        self._last_checkpoint_at = time.monotonic() if now is None else now
        try:
            self._disk.step("latest.write")
            self._disk.replace(note, self.directory / LATEST_FILE)
        except OSError as exc:
            # The checkpoint is durable in checkpoints.log; the next open restores the file.
            log.warning("audit.latest_not_written", error=exc.strerror)
        return note

    # -- queries --

    def query(self, query: Query) -> list[Entry]:
        """The entries that match ``query``, oldest first, read from the entries file."""
        if self._index_stale:
            if self.readonly:
                raise AuditUnavailable(
                    "the audit index is behind the log; run a query while the auditor is "
                    "stopped, or 'cairn audit reindex'"
                )
            self._catch_up(None)
        sql, params = _where(query)
        rows = self._require_db().execute(sql, params).fetchall()
        return [self.entry(int(seq)) for (seq,) in rows if int(seq) < self.size]

    def close(self) -> None:
        for fd in (self._fd, self._cp_fd, self._lock_fd):
            if fd is not None and fd >= 0:
                os.close(fd)
        self._fd = self._cp_fd = -1
        self._lock_fd = None
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _readonly_uri(path: Path) -> str:
    """A SQLite URI that opens ``path`` read-only, whatever characters the path holds."""
    return path.resolve().as_uri() + "?mode=ro"


def _with(recovery: Recovery, **changes: Any) -> Recovery:
    return Recovery(**{**vars(recovery), **changes})


def _lock(directory: Path) -> int:
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


@contextlib.contextmanager
def _mapped(fd: int) -> Iterator[bytes | mmap.mmap]:
    size = os.fstat(fd).st_size
    if size == 0:
        yield b""
        return
    mapped = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
    try:
        yield mapped
    finally:
        mapped.close()


def _unverified_checkpoint(note: bytes) -> Checkpoint | None:
    """The checkpoint in a note, signature not checked (the log's own consistency check)."""
    split = note.rfind(b"\n\n")
    if split < 0:
        return None
    try:
        return Checkpoint.parse(note[: split + 1])
    except KeyVerificationError:
        return None


def _where(q: Query) -> tuple[str, list[object]]:
    clauses: list[str] = []
    params: list[object] = []

    def eq(column: str, value: object) -> None:
        clauses.append(f"{column} = ?")
        params.append(value)

    if q.subjects:
        marks = ",".join("?" * len(q.subjects))
        clauses.append(
            f"seq IN (SELECT seq FROM subject WHERE pseudonym IN ({marks}))"  # noqa: S608 - marks
        )
        params += list(q.subjects)
    if q.agency is not None:
        clauses.append("(sender = ? OR recipient = ? OR agency = ?)")
        params += [q.agency] * 3
    if q.sender is not None:
        eq("sender", q.sender)
    if q.recipient is not None:
        eq("recipient", q.recipient)
    if q.purpose is not None:
        eq("purpose", q.purpose.value)
    if q.lawful_basis is not None:
        clauses.append("seq IN (SELECT seq FROM basis WHERE code = ?)")
        params.append(q.lawful_basis)
    if q.override is not None:
        clauses.append("override_reason IS NOT NULL" if q.override else "override_reason IS NULL")
    if q.override_reason is not None:
        eq("override_reason", q.override_reason.value)
    if q.agreement is not None:
        eq("agreement", q.agreement)
    if q.types:
        clauses.append(f"type IN ({','.join('?' * len(q.types))})")
        params += [t.value for t in q.types]
    if q.message_id is not None:
        eq("message_id", str(q.message_id))
    if q.since is not None:
        clauses.append("at_us >= ?")
        params.append(_us(q.since))
    if q.until is not None:
        clauses.append("at_us < ?")
        params.append(_us(q.until))
    sql = "SELECT seq FROM entry"
    if clauses:
        sql += " WHERE " + " AND ".join(clauses)
    sql += " ORDER BY seq"
    if q.limit is not None:
        sql += " LIMIT ?"
        params.append(q.limit)
    return sql, params


# --- subject access: the disclosure report ----------------------------------------------------


@dataclass(frozen=True)
class ReportRow:
    """One line of a disclosure report: one disclosure (or refusal) about the subject."""

    leaf_index: int
    at: str
    type: str
    message_id: str
    sender: str
    recipient: str
    purpose: str
    lawful_basis: str
    consent_state: str
    override_reason: str
    field_groups: str
    reasons: str
    delivered_at: str
    acknowledged_at: str
    acknowledgement: str


REPORT_COLUMNS: Final = tuple(ReportRow.__dataclass_fields__)


def disclosure_report(
    audit: AuditLog,
    subjects: Sequence[str],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    include_refusals: bool = True,
) -> list[ReportRow]:
    """Every disclosure about a person (any of ``subjects``), for a subject access request.

    Each row names when, from whom, to whom, why, on what lawful basis and consent, and which
    field groups, with the delivery and acknowledgement found for it, and its leaf index so an
    inclusion proof can be given.
    """
    if not subjects:
        raise ValueError("a disclosure report is about someone: give their pseudonyms")
    types = (AuditEventType.DISCLOSED,) + ((AuditEventType.REFUSED,) if include_refusals else ())
    found = audit.query(Query(subjects=tuple(subjects), types=types, since=since, until=until))
    rows = []
    for entry in found:
        event = entry.event
        delivered_at = acknowledged_at = acknowledgement = ""
        if event.type is AuditEventType.DISCLOSED and event.message_id is not None:
            follow = audit.query(
                Query(
                    message_id=event.message_id,
                    recipient=event.recipient,
                    types=(AuditEventType.DELIVERED, AuditEventType.ACKNOWLEDGED),
                )
            )
            for later in follow:
                e = later.event
                if e.type is AuditEventType.DELIVERED and not delivered_at:
                    delivered_at = e.at.isoformat()
                elif e.type is AuditEventType.ACKNOWLEDGED and e.status is not None:
                    acknowledged_at = e.at.isoformat()
                    acknowledgement = e.status.value
        rows.append(
            ReportRow(
                leaf_index=entry.index,
                at=event.at.isoformat(),
                type=event.type.value,
                message_id=str(event.message_id),
                sender=event.sender or "",
                recipient=event.recipient or "",
                purpose=event.purpose.value if event.purpose else "",
                lawful_basis=" ".join(event.lawful_basis),
                consent_state=event.consent_state.value if event.consent_state else "",
                override_reason=event.override_reason.value if event.override_reason else "",
                field_groups=" ".join(event.field_groups),
                reasons=" ".join(event.reasons),
                delivered_at=delivered_at,
                acknowledged_at=acknowledged_at,
                acknowledgement=acknowledgement,
            )
        )
    return rows


def report_csv(rows: Sequence[ReportRow]) -> str:
    """The report as CSV with a header line."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(REPORT_COLUMNS)
    for row in rows:
        writer.writerow([getattr(row, c) for c in REPORT_COLUMNS])
    return out.getvalue()


def report_json(rows: Sequence[ReportRow], *, checkpoint: bytes | None = None) -> str:
    """The report as JSON, with the checkpoint its leaf indices can be proven against."""
    document = {
        "format": "cairn-disclosure-report/1",
        "disclosures": [vars(row) for row in rows],
        "checkpoint": None if checkpoint is None else checkpoint.decode("utf-8"),
    }
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


# --- offline verification ---------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One bad place in the files: an entry, a checkpoint, or a file as a whole."""

    where: str  # "entry 17", "checkpoint 3", "entries.log", ...
    message: str
    entry: int | None = None  # the first entry concerned, when one is known
    checkpoint: int | None = None  # the checkpoint concerned, when it is one
    covers: int | None = None  # the tree size that checkpoint claims (signed or not)

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of ``verify``: what was checked, and every problem, first bad place first."""

    entries: int  # whole records read
    checkpoints: int  # checkpoint records read
    verified_size: int  # the largest tree size a valid checkpoint vouches for
    root: bytes  # the recomputed root over every entry read
    problems: tuple[Problem, ...] = ()
    unattested: int = 0  # entries after the last valid checkpoint: checked for form only

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_bad(self) -> Problem | None:
        return self.problems[0] if self.problems else None


def _problem_order(p: Problem) -> int:
    """Position in the log: entry k at 2k, a checkpoint of size n just after entry n - 1."""
    if p.entry is not None:
        return 2 * p.entry
    if p.covers is not None:
        return 2 * p.covers - 1
    return 1 << 62


def verify(
    directory: Path,
    verifiers: Sequence[NoteVerifier],
    *,
    origin: str | None = DEFAULT_ORIGIN,
    check_events: bool = True,
    max_event_bytes: int = MAX_EVENT_BYTES,
    progress: Progress | None = None,
) -> VerifyReport:
    """Verify the audit log in ``directory`` from its files alone. Writes nothing.

    ``verifiers`` are the auditor's note keys (every key it has signed with, retired ones
    included). The steps are numbered in the body. The index, if present, is a witness, never
    the truth: it names the exact entry behind a checkpoint whose root no longer matches only
    when the signed root confirms it, and it is the only witness (so a warning of tampering,
    "the entry or the index changed") for entries no checkpoint covers yet.
    """
    problems: list[Problem] = []
    entries_path = directory / ENTRIES_FILE
    checkpoints_path = directory / CHECKPOINTS_FILE
    tree = Tree()
    offsets: list[int] = []
    try:
        fd = os.open(entries_path, os.O_RDONLY)
    except OSError as exc:
        raise AuditUnavailable(f"cannot read {entries_path}: {exc.strerror}") from None
    log_id = b""
    try:
        with _mapped(fd) as buf:
            # 1. The entries file is an audit log.
            try:
                found, log_id = _FILE_HEADER.unpack_from(buf, 0)
            except struct.error:
                found = b""
            if found != _ENTRIES_MAGIC:
                problems.append(Problem(ENTRIES_FILE, "not an audit entries file (bad header)", 0))
                return VerifyReport(0, 0, 0, tree.root(), tuple(problems))
            total = len(buf)
            last_offset = -1
            # 2. Every record: whole, intact, in sequence, offsets increasing, a canonical
            #    event; its leaf hash goes into the recomputed tree.
            for frame in _entry_frames(buf, _FILE_HEADER.size, max_event_bytes):
                i = tree.size
                where = f"entry {i}"
                if frame.status == "incomplete":
                    problems.append(
                        Problem(
                            where,
                            f"incomplete: {ENTRIES_FILE} ends inside it (truncated, or a crash "
                            "mid-write that the auditor recovers on its next start)",
                            i,
                        )
                    )
                    break
                if frame.status == "bad-length":
                    problems.append(Problem(where, "its length field is impossible (damaged)", i))
                    break
                data = bytes(buf[frame.body : frame.end])
                if frame.status == "bad-crc":
                    problems.append(
                        Problem(where, "its checksum does not match: the record was altered", i)
                    )
                if frame.seq != i:
                    missing = frame.seq > i
                    problems.append(
                        Problem(
                            where,
                            f"it carries sequence number {frame.seq}, expected {i}: "
                            + (
                                "an entry before it is missing, or entries were reordered"
                                if missing
                                else "an entry was inserted before it, or entries were reordered"
                            ),
                            i,
                        )
                    )
                if frame.offset <= last_offset:
                    problems.append(
                        Problem(
                            where,
                            f"its Kafka offset {frame.offset} does not follow {last_offset}: "
                            "entries were reordered or duplicated",
                            i,
                        )
                    )
                if check_events:
                    try:
                        AuditEvent.from_canonical(data)
                    except SchemaError as exc:
                        problems.append(Problem(where, f"not a canonical audit event ({exc})", i))
                last_offset = max(last_offset, frame.offset)
                offsets.append(frame.offset)
                tree.append(leaf_hash(data))
                if progress is not None and i % 10_000 == 0:
                    progress(frame.end, total)
            if progress is not None:
                progress(total, total)
    finally:
        os.close(fd)
    size = tree.size

    # 3. The checkpoints file belongs to this log and its records are whole.
    notes: list[bytes] = []
    try:
        cp = checkpoints_path.read_bytes()
    except FileNotFoundError:
        cp = b""
        problems.append(Problem(CHECKPOINTS_FILE, "missing: nothing in the log is attested"))
    if cp:
        try:
            magic, cp_id = _FILE_HEADER.unpack_from(cp, 0)
        except struct.error:
            magic, cp_id = b"", b""
        if magic != _CHECKPOINTS_MAGIC or cp_id != log_id:
            problems.append(
                Problem(CHECKPOINTS_FILE, "not the checkpoints file of this log (bad header)")
            )
        else:
            for frame in _note_frames(cp, _FILE_HEADER.size):
                where = f"checkpoint {len(notes)}"
                if frame.status != "ok":
                    problems.append(
                        Problem(
                            where, f"the record is {frame.status} (damaged)", checkpoint=len(notes)
                        )
                    )
                    if frame.status != "bad-crc":
                        break
                notes.append(cp[frame.body : frame.end])

    # 4. Each checkpoint: signed by a trusted key, from our origin, within the log, with the
    #    recomputed root at its size, and consistent with the previous valid one.
    previous: Checkpoint | None = None
    verified = 0
    index_hint = _index_leaves(directory, log_id)
    for i, note in enumerate(notes):
        where = f"checkpoint {i}"
        claimed = _unverified_checkpoint(note)
        covers = claimed.size if claimed is not None else None
        try:
            checkpoint = verify_checkpoint(note, verifiers, origin=origin)
        except KeyVerificationError as exc:
            problems.append(Problem(where, f"refused: {exc}", checkpoint=i, covers=covers))
            continue
        # 4a. Within the log.
        low = previous.size if previous is not None else 0
        if checkpoint.size > size:
            truncated = Problem(
                f"entry {size}",
                f"{where} vouches for {checkpoint.size} entries but {ENTRIES_FILE} holds "
                f"{size}: entries {size}..{checkpoint.size - 1} are missing (truncated?)",
                size,
            )
            problems.append(_locate(tree, checkpoint, low, index_hint, where) or truncated)
            continue
        # 4b. The recomputed root at its size is the signed root.
        if tree.root(checkpoint.size) != checkpoint.root_hash:
            changed = Problem(
                f"entry {low}",
                f"{where} (size {checkpoint.size}) does not match the entries: an entry in "
                f"{low}..{checkpoint.size - 1} was changed, removed, inserted or moved after it "
                "was checkpointed",
                low,
            )
            problems.append(_locate(tree, checkpoint, low, index_hint, where) or changed)
            continue
        # 4c. Sizes never go backwards, and the previous tree head is a prefix of this one:
        #     checked with an RFC 9162 consistency proof, as an outside verifier would.
        if previous is not None:
            if checkpoint.size < previous.size:
                problems.append(
                    Problem(
                        where,
                        f"size {checkpoint.size} is smaller than the previous one",
                        checkpoint=i,
                        covers=covers,
                    )
                )
                continue
            try:
                verify_consistency(
                    previous.size,
                    checkpoint.size,
                    tree.consistency_proof(previous.size, checkpoint.size),
                    previous.root_hash,
                    checkpoint.root_hash,
                )
            except InvalidProof as exc:
                problems.append(
                    Problem(
                        where,
                        f"not consistent with the previous one: {exc}",
                        checkpoint=i,
                        covers=covers,
                    )
                )
                continue
        previous = checkpoint
        verified = max(verified, checkpoint.size)

    # 5. Entries no checkpoint covers yet have one witness: the leaf hash the index recorded
    #    when the auditor appended them. A difference means the entry (or the index) changed.
    if index_hint is not None:
        for i in range(verified, min(size, len(index_hint))):
            if tree.leaf(i) != index_hint[i]:
                problems.append(
                    Problem(
                        f"entry {i}",
                        "it is not the entry the auditor appended: its hash differs from the "
                        "one the index recorded, and no checkpoint covers it yet (the entry, "
                        "or the index, was changed)",
                        i,
                    )
                )
                break
    # 6. The index must not know of entries the file has lost.
    if index_hint is not None and len(index_hint) > size:
        problems.append(
            Problem(
                f"entry {size}",
                f"the index records {len(index_hint)} entries but {ENTRIES_FILE} ends after "
                f"{size}: entries {size}..{len(index_hint) - 1} are missing (truncated?)",
                size,
            )
        )
    problems.sort(key=_problem_order)
    return VerifyReport(
        entries=size,
        checkpoints=len(notes),
        verified_size=verified,
        root=tree.root(),
        problems=tuple(problems),
        unattested=size - verified,
    )


def _index_leaves(directory: Path, log_id: bytes) -> list[bytes] | None:
    """The leaf hashes the index recorded at append time, if the index is this log's."""
    path = directory / INDEX_FILE
    if not path.exists():
        return None
    try:
        db = sqlite3.connect(_readonly_uri(path), uri=True)
        try:
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            if meta.get("log_id") != log_id.hex():
                return None
            rows = db.execute("SELECT leaf_hash FROM entry ORDER BY seq").fetchall()
        finally:
            db.close()
    except sqlite3.Error:
        return None
    return [bytes(h) for (h,) in rows]


def _locate(
    tree: Tree, checkpoint: Checkpoint, low: int, hint: list[bytes] | None, where: str
) -> Problem | None:
    """Name the entry that breaks ``checkpoint``'s root, if the index can show which."""
    high = checkpoint.size
    # With leaves [0, low) known good (an earlier checkpoint matched) and the index's record of
    # [low, high), rebuild the root: if it is the signed root, the index remembers the true
    # leaves, and the first place the file differs from them is the bad entry. SHA-256's
    # collision resistance makes that a proof, not a guess.
    if hint is not None and len(hint) >= high:
        remembered = Tree.of([tree.leaf(i) for i in range(low)] + hint[low:high])
        if remembered.root() == checkpoint.root_hash:
            for i in range(low, high):
                if i >= tree.size or tree.leaf(i) != hint[i]:
                    return Problem(
                        f"entry {i}",
                        f"its content is not what {where} signed (size {high}): the entry was "
                        "changed, removed, inserted or moved after it was checkpointed",
                        i,
                    )
    return None
