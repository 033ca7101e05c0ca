"""Offline verification of the audit log from its files and the auditor's public key(s) alone.

``verify`` recomputes the RFC 9162 tree from the entries file, checks every checkpoint's
signature and root and that each is consistent with the one before, and names the first bad
place. It writes nothing and trusts nothing but the keys: the index, if present, is a witness
that can name the exact entry behind a broken checkpoint, never the truth. ``cosigned.log``,
if present, must hold only checkpoints that verified against the entries, and, given the
witnesses' keys, each cosignature by one of them must verify; the report says the largest size
each witness cosigned.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from broker.audit.checkpoint import Checkpoint, NoteVerifier, verify_checkpoint
from broker.audit.cosign import CosignerVerifier, verify_cosignatures
from broker.audit.errors import AuditUnavailable
from broker.audit.files import (
    CHECKPOINTS_FILE,
    CHECKPOINTS_MAGIC,
    COSIGNED_FILE,
    COSIGNED_MAGIC,
    DEFAULT_ORIGIN,
    ENTRIES_FILE,
    ENTRIES_MAGIC,
    FILE_HEADER,
    Progress,
    entry_frames,
    mapped,
    note_frames,
    note_text,
    torn,
    unverified_checkpoint,
)
from broker.audit.index import recorded_leaves
from broker.audit.merkle import InvalidProof, Tree, leaf_hash, verify_consistency
from keys.errors import Reason
from keys.errors import VerificationError as KeyVerificationError
from schemas.audit import MAX_EVENT_BYTES, AuditEvent
from schemas.errors import SchemaError

__all__ = ["Problem", "VerifyReport", "verify"]


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
    cosigned_notes: int = 0  # whole records of cosigned.log read
    #: (witness name, the largest tree size it cosigned), for each witness given whose
    #: cosignature verified on a record of cosigned.log, by name.
    cosigned: tuple[tuple[str, int], ...] = ()
    #: records of cosigned.log that no witness given has cosigned (a witness the registry no
    #: longer lists, say): not a fault in the log, but nothing this check vouches for.
    uncosigned_notes: int = 0

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
    witnesses: Sequence[CosignerVerifier] = (),
) -> VerifyReport:
    """Verify the audit log in ``directory`` from its files alone. Writes nothing.

    ``verifiers`` are the auditor's note keys (every key it has signed with, retired ones
    included); ``witnesses`` the witnesses whose cosignatures in ``cosigned.log`` are checked
    (none: its records are checked to be this log's checkpoints, and nothing more). The steps
    are numbered in the body. The index, if present, is a witness, never the truth: it names
    the exact entry behind a checkpoint whose root no longer matches only when the signed root
    confirms it, and it is the only witness (so a warning of tampering, "the entry or the
    index changed") for entries no checkpoint covers yet.
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
        with mapped(fd) as buf:
            # 1. The entries file is an audit log.
            try:
                found, log_id = FILE_HEADER.unpack_from(buf, 0)
            except struct.error:
                found = b""
            if found != ENTRIES_MAGIC:
                problems.append(Problem(ENTRIES_FILE, "not an audit entries file (bad header)", 0))
                return VerifyReport(0, 0, 0, tree.root(), tuple(problems))
            total = len(buf)
            last_offset = -1
            # 2. Every record: whole, intact, in sequence, offsets increasing, a canonical
            #    event; its leaf hash goes into the recomputed tree.
            for frame in entry_frames(buf, FILE_HEADER.size, max_event_bytes):
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
            magic, cp_id = FILE_HEADER.unpack_from(cp, 0)
        except struct.error:
            magic, cp_id = b"", b""
        if magic != CHECKPOINTS_MAGIC or cp_id != log_id:
            problems.append(
                Problem(CHECKPOINTS_FILE, "not the checkpoints file of this log (bad header)")
            )
        else:
            for frame in note_frames(cp, FILE_HEADER.size):
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
    attested: dict[int, bytes] = {}  # size -> text of each checkpoint that verified
    index_hint = recorded_leaves(directory, log_id)
    for i, note in enumerate(notes):
        where = f"checkpoint {i}"
        claimed = unverified_checkpoint(note)
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
        attested[checkpoint.size] = note_text(note)

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
    # 7. Each record of cosigned.log is a checkpoint that verified in step 4, and each
    #    cosignature on it by a given witness verifies.
    witnessed = _check_cosigned(directory, log_id, attested, witnesses, problems)
    problems.sort(key=_problem_order)
    return VerifyReport(
        entries=size,
        checkpoints=len(notes),
        verified_size=verified,
        root=tree.root(),
        problems=tuple(problems),
        unattested=size - verified,
        cosigned_notes=witnessed.notes,
        cosigned=tuple(sorted(witnessed.best.items())),
        uncosigned_notes=witnessed.uncosigned,
    )


@dataclass
class _Witnessed:
    notes: int = 0
    uncosigned: int = 0
    best: dict[str, int] = field(default_factory=dict)


def _check_cosigned(
    directory: Path,
    log_id: bytes,
    attested: dict[int, bytes],
    witnesses: Sequence[CosignerVerifier],
    problems: list[Problem],
) -> _Witnessed:
    out = _Witnessed()
    try:
        data = (directory / COSIGNED_FILE).read_bytes()
    except FileNotFoundError:
        return out  # never cosigned (no witnesses configured, or none answered yet)
    except OSError as exc:
        raise AuditUnavailable(f"cannot read {directory / COSIGNED_FILE}: {exc.strerror}") from None
    try:
        magic, found_id = FILE_HEADER.unpack_from(data, 0)
    except struct.error:
        magic, found_id = b"", b""
    if magic != COSIGNED_MAGIC or found_id != log_id:
        problems.append(Problem(COSIGNED_FILE, "not the cosigned file of this log (bad header)"))
        return out
    for frame in note_frames(data, FILE_HEADER.size):
        where = f"record {out.notes} of {COSIGNED_FILE}"
        if frame.status != "ok":
            if not torn(frame, data):  # a torn tail is what a crash mid-write leaves
                problems.append(Problem(where, f"the record is {frame.status} (damaged)"))
            break
        out.notes += 1
        note = data[frame.body : frame.end]
        claimed = unverified_checkpoint(note)
        if claimed is None or attested.get(claimed.size) != note_text(note):
            problems.append(
                Problem(
                    where,
                    "not a checkpoint of this log that matches its entries: altered, another "
                    "log's, or a fork",
                    covers=claimed.size if claimed is not None else None,
                )
            )
            continue
        if not witnesses:
            continue
        try:
            cosignatures = verify_cosignatures(note, witnesses)
        except KeyVerificationError as exc:
            if exc.reason is Reason.UNKNOWN_KEY:
                out.uncosigned += 1
                continue
            problems.append(Problem(where, f"refused: {exc}", covers=claimed.size))
            continue
        for c in cosignatures:
            out.best[c.name] = max(out.best.get(c.name, 0), claimed.size)
    return out


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
