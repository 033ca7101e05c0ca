"""The auditor's durable store: an append-only Merkle log of audit events, and its checkpoints.

The files and their formats are described in ``broker.audit.files``; the query index in
``broker.audit.index``; offline verification is ``broker.audit.verify``.

Crash safety. Writes happen in this order: entries (write, fsync), index (commit), checkpoint
record (write, fsync), latest file (temp, fsync, replace), so ``AuditLog.open`` can recover from
a stop at any point (``broker.audit.recovery`` says what it repairs and what it refuses). The
Kafka offset is the idempotency key: ``append`` skips an event whose offset is already stored
with the same bytes, refuses one stored with different bytes, and refuses an offset that goes
backwards past what is stored. (Offsets on a transactional topic are increasing but not
contiguous: commit markers take offsets too. The consumer seeks to ``next_offset``.)

Some facts happen once per (message, recipient) whatever Kafka delivers: a recipient stores a
disclosure once, acknowledges it once, and deletes its copy once (``ONCE_PER_RECIPIENT``); each view
is its own fact, under the view's own id as the event id, kept once per id (``ONCE_PER_EVENT``:
a gateway that stopped between sending a view and noting it sent sends it again). A second such
event, under another offset (the same acknowledgement produced twice, or by two brokers), is
not a new entry: ``append`` counts it as a duplicate and stores nothing. The index answers
whether one is already in the log; it is rebuilt from the entries whenever it is in doubt, so
the answer is the entries' own.

Witnesses' cosignatures (C2SP tlog-cosignature) are kept beside the checkpoints, in
``cosigned.log``: ``add_cosignatures`` takes a cosigned note only if its text is a checkpoint
this log signed and every line beyond the log's own signature is a cosignature that verifies
against a configured witness (else ``keys.errors.VerificationError``, nothing written);
``cosigned_checkpoint`` gives the note with every cosignature collected for a size.

Errors (``broker.audit.errors``): ``TamperDetected`` (the files contradict themselves or their
signatures: refuse, tell the operator) is a ``VerificationError``; ``AuditUnavailable`` (the
disk failed, or another process holds the log) is an ``InfrastructureError``: nothing was
appended and the same batch may be appended again.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import time
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final
from uuid import UUID

import structlog

from broker.audit.checkpoint import Checkpoint, sign_checkpoint
from broker.audit.cosign import (
    CosignerVerifier,
    add_cosignatures,
    parse_cosignature_lines,
    verify_cosignatures,
)
from broker.audit.errors import AuditUnavailable, TamperDetected
from broker.audit.files import (
    COSIGNED_FILE,
    COSIGNED_MAGIC,
    DEFAULT_ORIGIN,
    ENTRY_HEADER,
    FILE_HEADER,
    LATEST_FILE,
    Disk,
    Progress,
    entry_record,
    mapped,
    note_frames,
    note_record,
    torn,
)
from broker.audit.index import Index, Query, Row
from broker.audit.merkle import Tree, leaf_hash
from broker.audit.recovery import (
    Recovery,
    lock,
    open_files,
    restore_latest,
    scan_checkpoints,
    scan_entries,
)
from keys.errors import Reason
from keys.errors import VerificationError as NoteRefused
from keys.jwk import SigningKey
from schemas.audit import MAX_EVENT_BYTES, AuditEvent, AuditEventType
from schemas.errors import SchemaError

__all__ = [
    "ONCE_PER_EVENT",
    "ONCE_PER_RECIPIENT",
    "AppendResult",
    "AuditLog",
    "CheckpointPolicy",
    "Entry",
    "Record",
]

log = structlog.get_logger(__name__)

#: Event types the log keeps once per (message, recipient): a repeat is a counted duplicate.
ONCE_PER_RECIPIENT: Final = frozenset(
    {AuditEventType.DELIVERED, AuditEventType.ACKNOWLEDGED, AuditEventType.DELETED}
)
#: Event types the log keeps once per (message, recipient, event id): each is its own fact.
ONCE_PER_EVENT: Final = frozenset({AuditEventType.VIEWED})
#: A once-only fact: (type, message, recipient, and the event id for ONCE_PER_EVENT types).
Fact = tuple[AuditEventType, UUID, str, UUID | None]

#: What ``append`` takes: (Kafka offset, event bytes), optionally with the event those bytes
#: hold, when the caller has already read it with ``AuditEvent.from_canonical``.
Record = tuple[int, bytes] | tuple[int, bytes, AuditEvent]


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
    duplicates: tuple[int, ...] = ()  # offsets of once-per-recipient facts already logged


@dataclass(frozen=True)
class CheckpointPolicy:
    """When the auditor signs a checkpoint: after ``every_entries`` new leaves or ``every_s``."""

    every_entries: int = 1000  # leaves
    every_s: float = 10.0  # seconds


# --- the store --------------------------------------------------------------------------------


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
        self._signed_at: dict[int, int] = {}  # tree size -> its checkpoint's place in _notes
        self.witnesses: tuple[CosignerVerifier, ...] = ()  # whose cosignatures are accepted
        self._cw_fd = -1  # cosigned.log, once it exists
        self._cw_end = 0
        self._cosigned: dict[int, bytes] = {}  # tree size -> its note with every cosignature
        self._last_checkpoint_at = time.monotonic()
        self._index = Index(directory, readonly=readonly, size=lambda: self.size, rows=self._rows)
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
        witnesses: Sequence[CosignerVerifier] = (),
    ) -> AuditLog:
        """Open (creating if need be) the log in ``directory``, recovering from a crash.

        ``readonly`` opens without writing anything: for the CLI while the auditor runs. It
        ignores a tail being written, and uses the index as the auditor left it.
        ``witnesses`` are the cosigners whose cosignatures ``add_cosignatures`` accepts.
        """
        lock_fd = None if readonly else lock(directory)
        store = cls(
            directory,
            origin=origin,
            disk=disk or Disk(),
            readonly=readonly,
            lock_fd=lock_fd,
            max_event_bytes=max_event_bytes,
        )
        store.witnesses = tuple(witnesses)
        try:
            store._open_files()
            store._load_entries(progress)
            store._load_checkpoints()
            store._load_cosigned()
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
        self._fd, self._cp_fd = open_files(self.directory, self._disk, readonly=self.readonly)

    def _load_entries(self, progress: Progress | None) -> None:
        found = scan_entries(
            self._fd,
            self._disk,
            readonly=self.readonly,
            max_event_bytes=self._max_event_bytes,
            progress=progress,
        )
        self._log_id = found.log_id
        self._end = found.end
        self._offsets = found.offsets
        self._positions = found.positions
        self._tree = Tree.of(found.leaves)
        if found.truncated:
            self.recovery = replace(self.recovery, truncated_entry_bytes=found.truncated)

    def _load_checkpoints(self) -> None:
        found = scan_checkpoints(
            self._cp_fd,
            self._disk,
            log_id=self._log_id,
            origin=self.origin,
            tree=self._tree,
            readonly=self.readonly,
        )
        self._cp_end = found.end
        self._notes = found.notes
        self._checkpoints = found.checkpoints
        self._signed_at = {c.size: i for i, c in enumerate(self._checkpoints)}
        if found.truncated:
            self.recovery = replace(self.recovery, truncated_checkpoint_bytes=found.truncated)
        if not self.readonly and restore_latest(
            self.directory, self.latest_checkpoint(), self._disk
        ):
            self.recovery = replace(self.recovery, restored_latest=True)

    def _load_cosigned(self) -> None:
        """Read ``cosigned.log`` (if any), cutting off a torn tail; every record must be a
        checkpoint this log signed, with cosignature lines after the log's own."""
        path = self.directory / COSIGNED_FILE
        if not path.exists():
            return
        self._cw_fd = os.open(path, os.O_RDONLY if self.readonly else os.O_RDWR)
        with mapped(self._cw_fd) as buf:
            if len(buf) < FILE_HEADER.size:
                raise TamperDetected(f"{COSIGNED_FILE} has no header: not an audit log file")
            magic, log_id = FILE_HEADER.unpack_from(buf, 0)
            if magic != COSIGNED_MAGIC or bytes(log_id) != self._log_id:
                raise TamperDetected(f"{COSIGNED_FILE} belongs to another audit log")
            end = FILE_HEADER.size
            for n, frame in enumerate(note_frames(buf, end)):
                if frame.status != "ok":
                    if not torn(frame, buf):
                        raise TamperDetected(
                            f"record {n} of {COSIGNED_FILE} is damaged and valid data follows "
                            "it; run 'cairn audit verify'"
                        )
                    if not self.readonly:
                        self._disk.step("cosigned.truncate")
                        self._disk.truncate(self._cw_fd, frame.pos)
                    break
                note = bytes(buf[frame.body : frame.end])
                try:
                    size, _ours = self._own_checkpoint(_text_of(note))
                except NoteRefused:
                    if self.readonly:
                        break  # cosigned by the running auditor after we read its checkpoints
                    raise TamperDetected(
                        f"record {n} of {COSIGNED_FILE} is not a checkpoint this log signed; "
                        "run 'cairn audit verify'"
                    ) from None
                self._cosigned[size] = note
                end = frame.end
        self._cw_end = end

    # -- the index --

    def _open_index(self, progress: Progress | None) -> None:
        repair = self._index.open(self._log_id, progress)
        if repair.rebuilt:
            self.recovery = replace(self.recovery, index_rebuilt=True)
        elif repair.indexed:
            self.recovery = replace(self.recovery, indexed=repair.indexed)

    def _rows(self, start: int, end: int) -> Iterator[Row]:
        """Entries ``start..end - 1`` as the index records them, read back from the file."""
        for i in range(start, end):
            yield i, self._offsets[i], self._tree.leaf(i), AuditEvent.from_canonical(self._read(i))

    def rebuild_index(self, progress: Progress | None = None) -> int:
        """Recreate the index from the entries file; returns the number of entries indexed."""
        return self._index.rebuild(progress)

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
    def max_event_bytes(self) -> int:
        """The largest event ``append`` takes; the consumer dead-letters a larger record."""
        return self._max_event_bytes

    @property
    def tree(self) -> Tree:
        return self._tree

    def _read(self, index: int) -> bytes:
        start = self._positions[index] + ENTRY_HEADER.size
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

    # -- witnesses' cosignatures --

    def cosigned_checkpoint(self, size: int | None = None) -> bytes | None:
        """The note of the checkpoint for ``size`` with every cosignature collected for it,
        or the latest cosigned checkpoint (``size`` None); None if it has none."""
        if size is None:
            return self._cosigned[max(self._cosigned)] if self._cosigned else None
        return self._cosigned.get(size)

    def published_checkpoint(self) -> bytes | None:
        """The newest checkpoint with the cosignatures collected for it so far (its bare
        signed note while it has none): what the tlog-tiles checkpoint serves."""
        if not self._checkpoints:
            return None
        return self._cosigned.get(self._checkpoints[-1].size, self._notes[-1])

    def cosigned_size(self, witness: CosignerVerifier) -> int:
        """The largest tree size ``witness`` has cosigned in this log (0 if none)."""
        for size in sorted(self._cosigned, reverse=True):
            _text, block = _split(self._cosigned[size])
            if any(
                (name, kid) == (witness.name, witness.key_id)
                for name, kid, _ in parse_cosignature_lines(block)
            ):
                return size
        return 0

    def _own_checkpoint(self, text: bytes) -> tuple[int, bytes]:
        """The size and signed note of the checkpoint whose body is ``text``, if we signed it."""
        try:
            size = Checkpoint.parse(text).size
        except NoteRefused:
            raise NoteRefused(Reason.MALFORMED, "the note is not a checkpoint") from None
        at = self._signed_at.get(size)
        if at is None or _text_of(self._notes[at]) != text:
            raise NoteRefused(
                Reason.MALFORMED,
                f"the note is not a checkpoint this log signed (origin {self.origin}, size "
                f"{size}): another log's, or a fork of this one",
            )
        return size, self._notes[at]

    def add_cosignatures(
        self, note: bytes, witnesses: Sequence[CosignerVerifier] | None = None
    ) -> bytes:
        """Keep the cosignatures in ``note`` (a checkpoint of this log, cosigned) durably.

        Accepted only if the note's text is a checkpoint this log signed, and every signature
        line beyond the log's own is a cosignature (C2SP tlog-cosignature, cosignature/v1)
        that verifies against one of ``witnesses`` (default: the log's configured
        ``witnesses``); else ``keys.errors.VerificationError`` and nothing is written. One
        cosignature per witness key and size is kept (the first). Returns the checkpoint's
        note with every cosignature kept for its size.
        """
        self._writable()
        trusted = tuple(self.witnesses if witnesses is None else witnesses)
        text, block = _split(note)
        size, ours = self._own_checkpoint(text)
        own_lines = set(_split(ours)[1].splitlines(keepends=True))
        lines = [line for line in block.splitlines(keepends=True) if line not in own_lines]
        if not lines:
            raise NoteRefused(Reason.UNKNOWN_KEY, "the note carries no cosignature")
        base = self._cosigned.get(size, ours)
        have = {(name, kid) for name, kid, _ in parse_cosignature_lines(_split(base)[1])}
        fresh: list[bytes] = []
        for line in lines:
            # 1. Each line alone is a cosignature by a configured witness, and verifies.
            found = verify_cosignatures(text + b"\n" + line, trusted)
            # 2. One per witness key: a later cosignature of the same size adds nothing.
            key = (found[0].name, found[0].key_id)
            if key not in have:
                have.add(key)
                fresh.append(line)
        if not fresh:
            return base
        merged = add_cosignatures(base, b"".join(fresh))
        self._write_cosigned(merged)
        self._cosigned[size] = merged
        return merged

    def _write_cosigned(self, note: bytes) -> None:
        if self._cw_fd < 0:
            path = self.directory / COSIGNED_FILE
            try:
                self._disk.step("cosigned.create")
                self._disk.replace(FILE_HEADER.pack(COSIGNED_MAGIC, self._log_id), path)
                self._cw_fd = os.open(path, os.O_RDWR)
            except OSError as exc:
                raise AuditUnavailable(f"cannot create {COSIGNED_FILE}: {exc.strerror}") from None
            self._cw_end = FILE_HEADER.size
        record = note_record(note)
        try:
            self._disk.step("cosigned.write")
            self._disk.write(self._cw_fd, record, self._cw_end)
            self._disk.step("cosigned.fsync")
            self._disk.fsync(self._cw_fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                self._disk.truncate(self._cw_fd, self._cw_end)
            raise AuditUnavailable(f"cannot write cosignatures: {exc.strerror}") from None
        self._cw_end += len(record)

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

    def append(self, records: Iterable[Record]) -> AppendResult:
        """Append ``(Kafka offset, event bytes)`` records durably, in order; idempotent.

        Each event must be a canonical ``AuditEvent`` (else ``SchemaError``: the consumer must
        check each record first and dead-letter what is not one, or the batch is refused).
        A record may carry its event as read by ``AuditEvent.from_canonical``, which saves
        reading it again. Returns once the records are on disk.
        """
        self._writable()
        batch = bytearray()
        new: list[tuple[int, int, bytes, AuditEvent]] = []  # position, offset, leaf, event
        pending: dict[int, bytes] = {}  # offset -> event bytes, for this batch
        facts: set[Fact] = set()  # once-only facts in this batch
        last = self.last_offset
        skipped = 0
        duplicates: list[int] = []
        for record in records:
            offset, event = record[0], record[1]
            if last is not None and offset <= last:
                # 1. Redelivery after a crash: the offset must hold these very bytes (or be a
                # duplicate fact, which was never stored).
                stored = pending.get(offset)
                if stored is None:
                    stored = self._stored_at(offset)
                if stored is None and self._recorded(_fact(_parsed(record)), facts):
                    duplicates.append(offset)
                    continue
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
            # 2. A new event: valid, canonical, within the size limit, not a repeated fact.
            if len(event) > self._max_event_bytes:
                raise SchemaError(f"the event at offset {offset} exceeds the size limit")
            parsed = _parsed(record)
            fact = _fact(parsed)
            if self._recorded(fact, facts):
                duplicates.append(offset)
                continue
            if fact is not None:
                facts.add(fact)
            position = self._end + len(batch)
            batch += entry_record(self.size + len(new), offset, event)
            new.append((position, offset, leaf_hash(event), parsed))
            pending[offset] = event
            last = offset
        if not new:
            return AppendResult(0, skipped, self.size, tuple(duplicates))
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
        self._index.follow((first + n, o, leaf, e) for n, (_, o, leaf, e) in enumerate(new))
        return AppendResult(len(new), skipped, self.size, tuple(duplicates))

    def _recorded(self, fact: Fact | None, batch: set[Fact]) -> bool:
        """Whether a once-per-recipient ``fact`` is in this batch or in the log already."""
        if fact is None:
            return False
        return fact in batch or self._index.recorded(*fact)

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
        record = note_record(note)
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
        self._signed_at[checkpoint.size] = len(self._notes) - 1
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
        return [self.entry(seq) for seq in self._index.select(query) if seq < self.size]

    def close(self) -> None:
        for fd in (self._fd, self._cp_fd, self._cw_fd, self._lock_fd):
            if fd is not None and fd >= 0:
                os.close(fd)
        self._fd = self._cp_fd = self._cw_fd = -1
        self._lock_fd = None
        self._index.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _split(note: bytes) -> tuple[bytes, bytes]:
    """A signed note's text (with its final newline) and its signature lines."""
    at = note.rfind(b"\n\n")
    if at < 0 or not note.endswith(b"\n"):
        raise NoteRefused(Reason.MALFORMED, "a signed note is text, a blank line, signatures")
    return note[: at + 1], note[at + 2 :]


def _text_of(note: bytes) -> bytes:
    return _split(note)[0]


def _parsed(record: Record) -> AuditEvent:
    return record[2] if len(record) == 3 else AuditEvent.from_canonical(record[1])


def _fact(event: AuditEvent) -> Fact | None:
    """The fact a once-only event records (see ``Fact``); None for any other event."""
    if event.message_id is None or not event.recipient:
        return None
    if event.type in ONCE_PER_RECIPIENT:
        return event.type, event.message_id, event.recipient, None
    if event.type in ONCE_PER_EVENT:
        return event.type, event.message_id, event.recipient, event.event_id
    return None
