"""The audit log's files: their names and formats, record framing, and the durable disk steps.

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
- ``cosigned.log``: the same header, then ``length u32 | CRC-32 u32 | cosigned note`` each
  time witnesses' cosignatures (C2SP tlog-cosignature) are added to one of the checkpoints:
  the checkpoint's signed note with the cosignature lines after the log's own, fsynced; the
  last record for a tree size holds every cosignature collected for it. Made with the first
  cosignature; a log without witnesses has none.
- ``index.sqlite``: the query index (``broker.audit.index``). Derived: it is recreated from the
  entries file whenever it is behind, ahead or foreign.

The store (``broker.audit.store``) writes these files and ``verify`` (``broker.audit.verify``)
reads them; the framing below (``entry_frames``, ``note_frames``, their records, ``torn``) is
the one description of the format both use.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from broker.audit.checkpoint import Checkpoint
from keys.errors import VerificationError as KeyVerificationError
from keys.note import AUDIT_LOG_ORIGIN

__all__ = [
    "CHECKPOINTS_FILE",
    "COSIGNED_FILE",
    "DEFAULT_ORIGIN",
    "ENTRIES_FILE",
    "INDEX_FILE",
    "LATEST_FILE",
    "WITNESS_STATUS_FILE",
    "Disk",
    "Progress",
]

ENTRIES_FILE: Final = "entries.log"
CHECKPOINTS_FILE: Final = "checkpoints.log"
LATEST_FILE: Final = "checkpoint"
COSIGNED_FILE: Final = "cosigned.log"
#: The auditor's report of its witnesses' last answers and the forks they reported (JSON,
#: replaced whole after each checkpoint's collection; not part of the log: nothing verifies it).
WITNESS_STATUS_FILE: Final = "witnesses.json"
INDEX_FILE: Final = "index.sqlite"
#: The log's name in its checkpoints, and the auditor's key name in their signature lines.
DEFAULT_ORIGIN: Final = AUDIT_LOG_ORIGIN  # keys.note: the registry names the log key by it

ENTRIES_MAGIC: Final = b"CAIRN-AE"  # audit entries, format 1
CHECKPOINTS_MAGIC: Final = b"CAIRN-AC"  # audit checkpoints, format 1
COSIGNED_MAGIC: Final = b"CAIRN-AW"  # cosigned checkpoints (witnessed), format 1
LOG_ID_BYTES: Final = 16
FILE_HEADER: Final = struct.Struct(">8s16s")
ENTRY_HEADER: Final = struct.Struct(">IQQI")  # length, sequence, Kafka offset, CRC-32
NOTE_HEADER: Final = struct.Struct(">II")  # length, CRC-32
MAX_NOTE_BYTES: Final = 65_536  # bytes of one signed checkpoint

#: ``progress(done, total)``: called now and then during long runs (units: bytes or entries).
Progress = Callable[[int, int], None]


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


@contextlib.contextmanager
def mapped(fd: int) -> Iterator[bytes | mmap.mmap]:
    """The whole file behind ``fd``, mapped read-only (empty bytes for an empty file)."""
    size = os.fstat(fd).st_size
    if size == 0:
        yield b""
        return
    buf = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
    try:
        yield buf
    finally:
        buf.close()


# --- record framing ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """One record as found in a file: where it is and whether it is whole and intact."""

    pos: int  # where the record starts
    end: int  # where the next one would start (the file's end if the record is incomplete)
    status: str  # "ok", "incomplete", "bad-length", "bad-crc"
    seq: int = 0
    offset: int = 0
    body: int = 0  # where the payload starts


def _frames(
    buf: bytes | mmap.mmap, pos: int, header: struct.Struct, max_bytes: int
) -> Iterator[Frame]:
    """The records from ``pos`` on. Both headers start with the payload's length and end with
    the CRC-32 of everything in the record but the CRC; an entry's carries its sequence and
    Kafka offset between them."""
    size = len(buf)
    head = header.size
    while pos < size:
        if size - pos < head:
            yield Frame(pos, size, "incomplete")
            return
        length, *ids, crc = header.unpack_from(buf, pos)
        seq, offset = ids or (0, 0)
        if length > max_bytes:
            yield Frame(pos, pos + head, "bad-length", seq, offset)
            return
        end = pos + head + length
        if end > size:
            yield Frame(pos, size, "incomplete", seq, offset)
            return
        computed = zlib.crc32(buf[pos + head : end], zlib.crc32(buf[pos : pos + head - 4]))
        yield Frame(pos, end, "ok" if computed == crc else "bad-crc", seq, offset, pos + head)
        pos = end


def entry_frames(buf: bytes | mmap.mmap, pos: int, max_bytes: int) -> Iterator[Frame]:
    """The entry records of an entries file from ``pos`` on."""
    return _frames(buf, pos, ENTRY_HEADER, max_bytes)


def note_frames(buf: bytes | mmap.mmap, pos: int) -> Iterator[Frame]:
    """The checkpoint records of a checkpoints file from ``pos`` on."""
    return _frames(buf, pos, NOTE_HEADER, MAX_NOTE_BYTES)


def _record(head: bytes, payload: bytes) -> bytes:
    return head + struct.pack(">I", zlib.crc32(payload, zlib.crc32(head))) + payload


def entry_record(seq: int, offset: int, event: bytes) -> bytes:
    return _record(struct.pack(">IQQ", len(event), seq, offset), event)


def note_record(note: bytes) -> bytes:
    return _record(struct.pack(">I", len(note)), note)


def torn(frame: Frame, buf: bytes | mmap.mmap) -> bool:
    """A bad record is a torn tail if the file ends inside it or only zero bytes follow it."""
    if frame.status == "incomplete":
        return True
    rest = buf[frame.end :]
    return not rest.strip(b"\0")


def note_text(note: bytes) -> bytes:
    """A signed note's text: up to and including the newline before its last blank line
    (empty if it has none). Nothing is verified."""
    return note[: note.rfind(b"\n\n") + 1]


def checkpoint_size(note: bytes) -> int:
    """The tree size a signed checkpoint note states, signature not checked (a note read back
    from the log's own files); a note that is no checkpoint raises ``VerificationError``."""
    return Checkpoint.parse(note_text(note)).size


def unverified_checkpoint(note: bytes) -> Checkpoint | None:
    """The checkpoint in a note, signature not checked (the log's own consistency check)."""
    text = note_text(note)
    if not text:
        return None
    try:
        return Checkpoint.parse(text)
    except KeyVerificationError:
        return None
