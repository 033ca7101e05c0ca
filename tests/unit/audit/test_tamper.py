"""Tampering with the audit files: verify fails and names the first bad place, every time.

One pristine log (22 entries, checkpoints at sizes 5, 10, 15 and 20, two entries after the last
checkpoint) is copied for each test and changed in one way: an entry modified (with and without
fixing its checksum), deleted, moved, inserted; the file truncated inside a record or between
records; a checkpoint's signature replaced. Each change is made at many positions, on both
sides of checkpoint boundaries and in the unattested tail.
"""

from __future__ import annotations

import base64
import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.audit.checkpoint import NoteVerifier
from broker.audit.files import CHECKPOINTS_FILE, ENTRIES_FILE, INDEX_FILE
from broker.audit.store import AuditLog
from broker.audit.verify import verify
from keys.jwk import SigningKey

FILE_HEADER = 24
ENTRY_HEADER = 24
SIZE, EVERY, TAIL = 20, 5, 2
POSITIONS = [0, 1, 4, 5, 9, 13, 19, 20, 21]

Span = tuple[int, int]


@pytest.fixture(scope="module")
def pristine(
    tmp_path_factory: pytest.TempPathFactory,
    auditor_key: SigningKey,
    feed: list[tuple[int, bytes]],
) -> Path:
    folder = tmp_path_factory.mktemp("pristine") / "audit"
    with AuditLog.open(folder) as log:
        for start in range(0, SIZE, EVERY):
            log.append(feed[start : start + EVERY])
            log.sign_checkpoint(auditor_key)
        log.append(feed[SIZE : SIZE + TAIL])
    return folder


@pytest.fixture
def copy(pristine: Path, tmp_path: Path) -> Path:
    target = tmp_path / "audit"
    shutil.copytree(pristine, target)
    return target


def _spans(data: bytes) -> list[Span]:
    spans, pos = [], FILE_HEADER
    while pos < len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        spans.append((pos, pos + ENTRY_HEADER + length))
        pos += ENTRY_HEADER + length
    return spans


def _record(seq: int, offset: int, event: bytes) -> bytes:
    head = struct.pack(">IQQ", len(event), seq, offset)
    return head + struct.pack(">I", zlib.crc32(event, zlib.crc32(head))) + event


def _parts(record: bytes) -> tuple[int, int, bytes]:
    _, seq, offset, _ = struct.unpack_from(">IQQI", record)
    return seq, offset, record[ENTRY_HEADER:]


def _edit(folder: Path, change: Callable[[list[bytes]], list[bytes]]) -> None:
    path = folder / ENTRIES_FILE
    data = path.read_bytes()
    records = [data[a:b] for a, b in _spans(data)]
    path.write_bytes(data[:FILE_HEADER] + b"".join(change(records)))


def _first_bad(folder: Path, verifiers: list[NoteVerifier]) -> str:
    report = verify(folder, verifiers)
    assert not report.ok
    assert report.first_bad is not None
    return str(report.first_bad)


@pytest.mark.parametrize("k", POSITIONS)
def test_modified_entry_is_named_by_its_checksum(
    copy: Path, verifiers: list[NoteVerifier], k: int
) -> None:
    """Changing one byte of entry k (checksum left alone) fails verify at entry k."""

    def change(records: list[bytes]) -> list[bytes]:
        r = bytearray(records[k])
        r[ENTRY_HEADER + 10] ^= 0x01
        records[k] = bytes(r)
        return records

    _edit(copy, change)
    assert _first_bad(copy, verifiers).startswith(f"entry {k}: its checksum")


@pytest.mark.parametrize("k", POSITIONS)
def test_modified_entry_with_a_fixed_checksum_is_named(
    copy: Path, verifiers: list[NoteVerifier], feed: list[tuple[int, bytes]], k: int
) -> None:
    """Replacing entry k with another valid event, checksum recomputed, fails at entry k."""

    def change(records: list[bytes]) -> list[bytes]:
        seq, offset, _ = _parts(records[k])
        records[k] = _record(seq, offset, feed[-1][1])
        return records

    _edit(copy, change)
    assert _first_bad(copy, verifiers).startswith(f"entry {k}:")


@pytest.mark.parametrize("k", POSITIONS)
def test_deleted_entry_is_named(copy: Path, verifiers: list[NoteVerifier], k: int) -> None:
    """Removing entry k fails verify at entry k."""
    _edit(copy, lambda records: records[:k] + records[k + 1 :])
    assert _first_bad(copy, verifiers).startswith(f"entry {k}:")


@pytest.mark.parametrize("k", POSITIONS)
def test_deleted_entry_with_renumbered_records_is_named(
    copy: Path, verifiers: list[NoteVerifier], k: int
) -> None:
    """Removing entry k and renumbering the rest, checksums fixed, still fails at entry k."""

    def change(records: list[bytes]) -> list[bytes]:
        kept = records[:k] + records[k + 1 :]
        return [_record(i, *_parts(r)[1:]) for i, r in enumerate(kept)]

    _edit(copy, change)
    assert _first_bad(copy, verifiers).startswith(f"entry {k}:")


@pytest.mark.parametrize("k", [p for p in POSITIONS if p < SIZE + TAIL - 1])
def test_reordered_entries_are_named(copy: Path, verifiers: list[NoteVerifier], k: int) -> None:
    """Swapping entries k and k+1 fails verify at entry k."""

    def change(records: list[bytes]) -> list[bytes]:
        records[k], records[k + 1] = records[k + 1], records[k]
        return records

    _edit(copy, change)
    assert _first_bad(copy, verifiers).startswith(f"entry {k}:")


@pytest.mark.parametrize("k", POSITIONS)
def test_inserted_entry_is_named(
    copy: Path, verifiers: list[NoteVerifier], feed: list[tuple[int, bytes]], k: int
) -> None:
    """Inserting a well-formed record as entry k fails verify at entry k."""

    def change(records: list[bytes]) -> list[bytes]:
        before = _parts(records[k - 1])[1] if k else 0
        forged = _record(k, before + 1 if k else 0, feed[-1][1])
        return [*records[:k], forged, *records[k:]]

    _edit(copy, change)
    assert _first_bad(copy, verifiers).startswith(f"entry {k}:")


@pytest.mark.parametrize("k", POSITIONS)
def test_file_truncated_inside_an_entry_is_named(
    copy: Path, verifiers: list[NoteVerifier], k: int
) -> None:
    """Cutting the file in the middle of entry k fails verify at entry k."""
    path = copy / ENTRIES_FILE
    data = path.read_bytes()
    start, end = _spans(data)[k]
    path.write_bytes(data[: (start + end) // 2])
    assert _first_bad(copy, verifiers).startswith(f"entry {k}: incomplete")


@pytest.mark.parametrize("k", POSITIONS)
def test_file_truncated_between_entries_is_named(
    copy: Path, verifiers: list[NoteVerifier], k: int
) -> None:
    """Cutting the file just before entry k fails verify at entry k (entries missing)."""
    path = copy / ENTRIES_FILE
    data = path.read_bytes()
    path.write_bytes(data[: _spans(data)[k][0]])
    assert _first_bad(copy, verifiers).startswith(f"entry {k}:")


def test_without_the_index_the_bad_range_is_named(
    copy: Path, verifiers: list[NoteVerifier], feed: list[tuple[int, bytes]]
) -> None:
    """With no index to witness, a fixed-checksum change names the checkpoint range."""
    for name in (INDEX_FILE, INDEX_FILE + "-wal", INDEX_FILE + "-shm"):
        (copy / name).unlink(missing_ok=True)

    def change(records: list[bytes]) -> list[bytes]:
        seq, offset, _ = _parts(records[12])
        records[12] = _record(seq, offset, feed[-1][1])
        return records

    _edit(copy, change)
    first = _first_bad(copy, verifiers)
    assert first.startswith("entry 10:")
    assert "10..14" in first


def _edit_checkpoint(folder: Path, j: int, change: Callable[[bytes], bytes]) -> None:
    path = folder / CHECKPOINTS_FILE
    data = path.read_bytes()
    notes, pos = [], FILE_HEADER
    while pos < len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        notes.append(data[pos + 8 : pos + 8 + length])
        pos += 8 + length
    notes[j] = change(notes[j])
    out = bytearray(data[:FILE_HEADER])
    for note in notes:
        size = struct.pack(">I", len(note))
        out += size + struct.pack(">I", zlib.crc32(note, zlib.crc32(size))) + note
    path.write_bytes(bytes(out))


def _with_signature(note: bytes, blob: bytes) -> bytes:
    body, _, line = note.rstrip(b"\n").rpartition(b"\n")
    name = line.split(b" ")[1]
    return body + b"\n\xe2\x80\x94 " + name + b" " + base64.b64encode(blob) + b"\n"


@pytest.mark.parametrize("j", range(4))
def test_replaced_checkpoint_signature_is_named(
    copy: Path, verifiers: list[NoteVerifier], j: int
) -> None:
    """A checkpoint's signature replaced (same key id, other bytes) fails at that checkpoint."""

    def change(note: bytes) -> bytes:
        line = note.rstrip(b"\n").rpartition(b"\n")[2]
        blob = bytearray(base64.b64decode(line.split(b" ")[2]))
        blob[10] ^= 0xFF
        return _with_signature(note, bytes(blob))

    _edit_checkpoint(copy, j, change)
    first = _first_bad(copy, verifiers)
    assert first.startswith(f"checkpoint {j}: refused")
    assert "bad_signature" in first


@pytest.mark.parametrize("j", range(4))
def test_checkpoint_resigned_by_another_key_is_named(
    copy: Path, verifiers: list[NoteVerifier], j: int
) -> None:
    """A checkpoint re-signed by a key that is not the auditor's fails at that checkpoint."""
    forger = Ed25519PrivateKey.generate()

    def change(note: bytes) -> bytes:
        body = note[: note.rfind(b"\n\n") + 1]
        forged = NoteVerifier(verifiers[0].name, forger.public_key()).key_id + forger.sign(body)
        return _with_signature(note, forged)

    _edit_checkpoint(copy, j, change)
    first = _first_bad(copy, verifiers)
    assert first.startswith(f"checkpoint {j}: refused")
    assert "unknown_key" in first


def test_the_first_of_two_bad_places_is_named_first(
    copy: Path, verifiers: list[NoteVerifier]
) -> None:
    """With a bad checkpoint signature and a later damaged entry, the checkpoint comes first."""

    def change(records: list[bytes]) -> list[bytes]:
        r = bytearray(records[17])
        r[-3] ^= 0x01
        records[17] = bytes(r)
        return records

    _edit(copy, change)

    def resign(note: bytes) -> bytes:
        line = note.rstrip(b"\n").rpartition(b"\n")[2]
        blob = bytearray(base64.b64decode(line.split(b" ")[2]))
        blob[-1] ^= 0x01
        return _with_signature(note, bytes(blob))

    _edit_checkpoint(copy, 1, resign)
    report = verify(copy, verifiers)
    assert [p.where for p in report.problems][:2] == ["checkpoint 1", "entry 17"]
