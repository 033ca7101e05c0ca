"""Proofs as a third party reads them: one JSON shape, and the C2SP tlog-proof text.

``cairn audit prove`` and the auditor's ``/v1/audit/proof/*`` routes build their JSON with the
same two functions here, so the CLI and the API cannot drift. The member names are RFC 9162's
(§4.11 ``inclusion_path``/``leaf_index``/``tree_size``, §4.12 ``consistency_path``, §4.10
``tree_size_1``/``tree_size_2``); every hash is standard base64 (RFC 4648 §4)::

    {"type": "inclusion", "leaf_index", "tree_size", "leaf_hash", "root_hash",
     "inclusion_path": [...], "checkpoint": <signed note> | null,
     "tlog_proof": <c2sp.org/tlog-proof@v1 text>      (only when a checkpoint is given),
     "entry": <the logged event>                       (the CLI only)}
    {"type": "consistency", "tree_size_1", "tree_size_2", "root_hash_1", "root_hash_2",
     "consistency_path": [...], "checkpoint_1", "checkpoint_2"}

The tlog-proof (https://c2sp.org/tlog-proof) is an offline-verifiable inclusion proof: the
line ``c2sp.org/tlog-proof@v1``, an optional ``extra <base64>`` line, ``index <n>``, one base64
hash per line from the leaf's sibling up (RFC 6962 §2.1.1 / RFC 9162 §2.1.3), an empty line, and
the checkpoint signed note verbatim.

Pure. ``parse_tlog_proof`` refuses anything else with ``keys.errors.VerificationError``
(reason ``malformed`` or ``too_large``); ``verify_tlog_proof`` adds the checkpoint's refusals
(``broker.audit.checkpoint.verify_checkpoint``) and ``broker.audit.merkle.InvalidProof`` when the
path does not lead from the entry to the checkpoint's root.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from broker.audit.checkpoint import (
    MAX_NOTE_BYTES,
    Checkpoint,
    NoteVerifier,
    b64decode_strict,
    verify_checkpoint,
)
from broker.audit.merkle import HASH_SIZE, leaf_hash, verify_inclusion
from keys.errors import Reason, VerificationError

__all__ = [
    "MAX_PATH",
    "MAX_TLOG_PROOF_BYTES",
    "TLOG_PROOF_HEADER",
    "TlogProof",
    "checkpoint_for",
    "consistency_document",
    "inclusion_document",
    "parse_tlog_proof",
    "tlog_proof",
    "verify_tlog_proof",
]

TLOG_PROOF_HEADER: Final = "c2sp.org/tlog-proof@v1"
MAX_PATH: Final = 64  # hashes: a tree of 2**64 leaves has 64 levels
MAX_EXTRA_BYTES: Final = 4096
MAX_TLOG_PROOF_BYTES: Final = MAX_NOTE_BYTES + 8192  # the note, the path, the index, some extra
_INDEX: Final = re.compile(r"^index (0|[1-9][0-9]{0,19})$")


def _b64(hashes: Sequence[bytes]) -> list[str]:
    return [base64.b64encode(h).decode("ascii") for h in hashes]


def _malformed(message: str) -> VerificationError:
    return VerificationError(Reason.MALFORMED, message)


def _note_size(note: bytes) -> int:
    """The tree size a signed checkpoint note states (its signature is not checked here)."""
    split = note.rfind(b"\n\n")
    if split < 0:
        raise _malformed("a signed note is text, a blank line, then signature lines")
    return Checkpoint.parse(note[: split + 1]).size


def checkpoint_for(notes: Sequence[bytes], size: int) -> bytes | None:
    """The newest signed checkpoint note in ``notes`` (oldest first) for tree size ``size``."""
    for note in reversed(notes):
        if _note_size(note) == size:
            return note
    return None


# -- the JSON shape (RFC 9162 §4 names) --


def inclusion_document(
    *,
    index: int,
    size: int,
    leaf: bytes,
    root_hash: bytes,
    path: Sequence[bytes],
    checkpoint: bytes | None,
    entry: bytes | None = None,
) -> dict[str, Any]:
    """The inclusion proof of leaf hash ``leaf`` at ``index`` in the tree of ``size``.

    ``checkpoint`` is the signed note for ``size`` if there is one; with it the document also
    carries the same proof as C2SP tlog-proof text. ``entry`` (the logged bytes, UTF-8 JSON)
    is added as ``entry`` when given.
    """
    document: dict[str, Any] = {
        "type": "inclusion",
        "leaf_index": index,
        "tree_size": size,
        "leaf_hash": _b64([leaf])[0],
        "root_hash": _b64([root_hash])[0],
        "inclusion_path": _b64(path),
        "checkpoint": None if checkpoint is None else checkpoint.decode("utf-8"),
    }
    if checkpoint is not None:
        document["tlog_proof"] = tlog_proof(index, path, checkpoint).decode("utf-8")
    if entry is not None:
        document["entry"] = entry.decode("utf-8")
    return document


def consistency_document(
    *,
    size_1: int,
    size_2: int,
    root_hash_1: bytes,
    root_hash_2: bytes,
    path: Sequence[bytes],
    checkpoint_1: bytes | None,
    checkpoint_2: bytes | None,
) -> dict[str, Any]:
    """The consistency proof that the tree of ``size_2`` extends the tree of ``size_1``."""
    return {
        "type": "consistency",
        "tree_size_1": size_1,
        "tree_size_2": size_2,
        "root_hash_1": _b64([root_hash_1])[0],
        "root_hash_2": _b64([root_hash_2])[0],
        "consistency_path": _b64(path),
        "checkpoint_1": None if checkpoint_1 is None else checkpoint_1.decode("utf-8"),
        "checkpoint_2": None if checkpoint_2 is None else checkpoint_2.decode("utf-8"),
    }


# -- c2sp.org/tlog-proof@v1 --


@dataclass(frozen=True)
class TlogProof:
    """A parsed tlog-proof: entry ``index``, its inclusion ``path``, the ``checkpoint`` note.

    ``extra`` is opaque and NOT authenticated (the spec: never trust it implicitly).
    """

    index: int
    path: tuple[bytes, ...]
    checkpoint: bytes
    extra: bytes | None = None


def tlog_proof(index: int, path: Sequence[bytes], note: bytes, extra: bytes | None = None) -> bytes:
    """The C2SP tlog-proof text for entry ``index`` with inclusion ``path`` to ``note``."""
    if index < 0:
        raise ValueError("an entry index is not negative")
    if len(path) > MAX_PATH or any(len(h) != HASH_SIZE for h in path):
        raise ValueError(f"an inclusion path is at most {MAX_PATH} {HASH_SIZE}-byte hashes")
    if not note.endswith(b"\n") or b"\n\n" not in note:
        raise ValueError("the checkpoint is a signed note")
    lines = [TLOG_PROOF_HEADER]
    if extra is not None:
        lines.append("extra " + base64.b64encode(extra).decode("ascii"))
    lines.append(f"index {index}")
    lines.extend(_b64(path))
    return ("\n".join(lines) + "\n\n").encode("ascii") + note


def parse_tlog_proof(data: bytes) -> TlogProof:
    """The tlog-proof in ``data``, strictly: anything else is a ``malformed`` refusal."""
    if len(data) > MAX_TLOG_PROOF_BYTES:
        raise VerificationError(
            Reason.TOO_LARGE, f"a tlog-proof is at most {MAX_TLOG_PROOF_BYTES} bytes"
        )
    head, sep, note = data.partition(b"\n\n")
    if not sep or not note:
        raise _malformed("a tlog-proof is the proof lines, an empty line, then the checkpoint")
    try:
        lines = head.decode("ascii").split("\n")
    except UnicodeDecodeError:
        raise _malformed("the proof lines of a tlog-proof are ASCII") from None
    # 1. The header line.
    if lines[0] != TLOG_PROOF_HEADER:
        raise _malformed(f"a tlog-proof starts with the line {TLOG_PROOF_HEADER}")
    rest = lines[1:]
    # 2. The optional extra line.
    extra: bytes | None = None
    if rest and rest[0].startswith("extra "):
        extra = b64decode_strict(rest[0][len("extra ") :])
        if len(extra) > MAX_EXTRA_BYTES:
            raise _malformed(f"the extra data is at most {MAX_EXTRA_BYTES} bytes")
        rest = rest[1:]
    # 3. The index line: ASCII decimal, no leading zeros.
    match = _INDEX.match(rest[0]) if rest else None
    if match is None:
        raise _malformed("a tlog-proof has the line 'index <n>' (decimal, no leading zeros)")
    index = int(match.group(1))
    if index >= 2**63:
        raise _malformed("the index is too large")
    # 4. Zero or more SHA-256 hashes, one a line.
    hashes = rest[1:]
    if len(hashes) > MAX_PATH:
        raise _malformed(f"an inclusion path is at most {MAX_PATH} hashes")
    path: list[bytes] = []
    for line in hashes:
        value = b64decode_strict(line)
        if len(value) != HASH_SIZE:
            raise _malformed(f"an inclusion path hash is {HASH_SIZE} bytes")
        path.append(value)
    # 5. The checkpoint, verbatim: a signed note (its signature is checked on verify).
    if not note.endswith(b"\n") or b"\n\n" not in note:
        raise _malformed("the checkpoint of a tlog-proof is a signed note")
    _note_size(note)
    return TlogProof(index, tuple(path), note, extra)


def verify_tlog_proof(
    proof: TlogProof | bytes,
    leaf_data: bytes,
    verifiers: Sequence[NoteVerifier],
    origin: str,
) -> Checkpoint:
    """The checkpoint ``proof`` proves ``leaf_data`` (the logged entry's bytes) is in.

    The checkpoint must be signed by one of ``verifiers`` and be from ``origin``
    (``verify_checkpoint``); then the path must lead from ``leaf_hash(leaf_data)`` at the index
    to the checkpoint's root (RFC 9162 §2.1.3.2), else ``merkle.InvalidProof``.
    """
    parsed = parse_tlog_proof(proof) if isinstance(proof, bytes) else proof
    checkpoint = verify_checkpoint(parsed.checkpoint, verifiers, origin=origin)
    verify_inclusion(
        parsed.index, checkpoint.size, leaf_hash(leaf_data), parsed.path, checkpoint.root_hash
    )
    return checkpoint
