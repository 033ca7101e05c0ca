"""One proof JSON shape (RFC 9162 §4 names) and the C2SP tlog-proof text: built, parsed, refused.

The inclusion check at the end is an independent RFC 9162 §2.1.3.2 computation written here
(hashlib only), so a proof our merkle module accepted by mistake would still fail it.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.audit.checkpoint import Checkpoint, NoteVerifier, sign_checkpoint
from broker.audit.merkle import InvalidProof, Tree, leaf_hash
from broker.audit.proofs import (
    TLOG_PROOF_HEADER,
    TlogProof,
    checkpoint_for,
    consistency_document,
    inclusion_document,
    parse_tlog_proof,
    tlog_proof,
    verify_tlog_proof,
)
from keys.errors import Reason, VerificationError

ORIGIN = "audit.cairn.test/log"
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
VERIFIERS = [NoteVerifier(ORIGIN, KEY.public_key())]
ENTRIES = [f'{{"n":{i}}}'.encode() for i in range(13)]
TREE = Tree.of(leaf_hash(e) for e in ENTRIES)
SIZE = len(ENTRIES)
NOTE = sign_checkpoint(Checkpoint(ORIGIN, SIZE, TREE.root()), ORIGIN, KEY)


def _proof(index: int, extra: bytes | None = None) -> bytes:
    return tlog_proof(index, TREE.inclusion_proof(index), NOTE, extra)


def _independent_root(index: int, size: int, entry: bytes, path: list[bytes]) -> bytes:
    """RFC 9162 §2.1.3.2, written again from the text."""

    def h(data: bytes) -> bytes:
        return hashlib.sha256(data).digest()

    fn, sn, r = index, size - 1, h(b"\x00" + entry)
    for p in path:
        assert sn != 0
        if fn % 2 == 1 or fn == sn:
            r = h(b"\x01" + p + r)
            while fn % 2 == 0 and fn != 0:
                fn //= 2
                sn //= 2
        else:
            r = h(b"\x01" + r + p)
        fn //= 2
        sn //= 2
    assert sn == 0
    return r


def _malformed(data: bytes) -> Reason:
    with pytest.raises(VerificationError) as exc:
        parse_tlog_proof(data)
    return exc.value.reason


@pytest.mark.parametrize("index", [0, 1, 6, 11, 12])
def test_round_trip_and_an_independent_rfc9162_check(index: int) -> None:
    """Built, parsed back to the same fields, verified, and checked by the code above."""
    data = _proof(index, extra=b"context")
    parsed = parse_tlog_proof(data)
    assert parsed == TlogProof(index, tuple(TREE.inclusion_proof(index)), NOTE, b"context")
    assert tlog_proof(parsed.index, parsed.path, parsed.checkpoint, parsed.extra) == data
    assert verify_tlog_proof(data, ENTRIES[index], VERIFIERS, ORIGIN).size == SIZE
    root = _independent_root(index, SIZE, ENTRIES[index], list(parsed.path))
    assert base64.b64encode(root).decode() == NOTE.decode().split("\n")[2]


def test_the_text_is_the_spec_layout() -> None:
    """Header, optional extra, index, one hash a line, an empty line, the note verbatim."""
    lines = _proof(6).decode().split("\n")
    path = TREE.inclusion_proof(6)
    assert lines[0] == TLOG_PROOF_HEADER
    assert lines[1] == "index 6"
    assert lines[2 : 2 + len(path)] == [base64.b64encode(p).decode() for p in path]
    assert lines[2 + len(path)] == ""
    assert "\n".join(lines[3 + len(path) :]).encode() == NOTE
    assert _proof(6, extra=b"x").decode().split("\n")[1] == "extra eA=="


def test_a_tampered_path_line_is_refused() -> None:
    """A hash changed (still valid base64 of 32 bytes) no longer leads to the root."""
    lines = _proof(6).split(b"\n")
    lines[2] = base64.b64encode(bytes(32))
    with pytest.raises(InvalidProof):
        verify_tlog_proof(b"\n".join(lines), ENTRIES[6], VERIFIERS, ORIGIN)


def test_a_tampered_index_or_entry_is_refused() -> None:
    """The path of entry 6 does not prove entry 7, nor another entry at 6."""
    with pytest.raises(InvalidProof):
        verify_tlog_proof(_proof(6).replace(b"index 6", b"index 7"), ENTRIES[6], VERIFIERS, ORIGIN)
    with pytest.raises(InvalidProof):
        verify_tlog_proof(_proof(6), ENTRIES[7], VERIFIERS, ORIGIN)
    with pytest.raises(InvalidProof):  # an index past the checkpoint's tree
        verify_tlog_proof(_proof(6).replace(b"index 6", b"index 13"), ENTRIES[6], VERIFIERS, ORIGIN)


def test_a_tampered_or_foreign_checkpoint_is_refused() -> None:
    """Another root under the old signature, another key, another origin: each its reason."""
    data = _proof(3)
    forged_root = base64.b64encode(bytes(32))
    forged = data.replace(base64.b64encode(TREE.root()), forged_root)
    with pytest.raises(VerificationError) as exc:
        verify_tlog_proof(forged, ENTRIES[3], VERIFIERS, ORIGIN)
    assert exc.value.reason is Reason.BAD_SIGNATURE
    stranger = [NoteVerifier(ORIGIN, Ed25519PrivateKey.generate().public_key())]
    with pytest.raises(VerificationError) as exc:
        verify_tlog_proof(data, ENTRIES[3], stranger, ORIGIN)
    assert exc.value.reason is Reason.UNKNOWN_KEY
    with pytest.raises(VerificationError) as exc:
        verify_tlog_proof(data, ENTRIES[3], VERIFIERS, "another.example/log")
    assert exc.value.reason is Reason.MALFORMED


@pytest.mark.parametrize(
    "mangle",
    [
        lambda d: d.replace(TLOG_PROOF_HEADER.encode(), b"c2sp.org/tlog-proof@v2"),
        lambda d: d.replace(b"index 6", b"index 06"),
        lambda d: d.replace(b"index 6", b"index -6"),
        lambda d: d.replace(b"index 6", b"index  6"),
        lambda d: d.replace(b"index 6\n", b""),
        lambda d: d.replace(b"index 6", b"index 99999999999999999999"),
        lambda d: d.replace(b"\n\n", b"\n", 1),  # no empty line before the checkpoint
        lambda d: d.split(b"\n\n", 1)[0] + b"\n\n",  # no checkpoint
        lambda d: d.replace(b"=\n", b"\n", 1),  # unpadded base64
        lambda d: d.replace(b"index 6\n", b"index 6\nAAAA\n"),  # a 3-byte hash
        lambda d: d.replace(b"index 6\n", b"index 6\n" + b"\xff\n"),
        lambda d: d.replace(b"index 6\n", b"extra !!\nindex 6\n"),
        lambda d: b"",
        lambda d: d.split(b"\n\n", 1)[0] + b"\n\nnot a note\n",
    ],
)
def test_malformed_proofs_are_refused(mangle: Callable[[bytes], bytes]) -> None:
    """Anything but the spec's layout is one ``malformed`` refusal, never a crash."""
    assert _malformed(mangle(_proof(6))) is Reason.MALFORMED


def test_an_oversized_proof_is_refused_unparsed() -> None:
    with pytest.raises(VerificationError) as exc:
        parse_tlog_proof(b"x" * 200_000)
    assert exc.value.reason is Reason.TOO_LARGE


def test_the_json_documents_use_rfc9162_names() -> None:
    """Inclusion and consistency in RFC 9162 §4 names, base64 hashes, the tlog-proof too."""
    document = inclusion_document(
        index=6,
        size=SIZE,
        leaf=TREE.leaf(6),
        root_hash=TREE.root(),
        path=TREE.inclusion_proof(6),
        checkpoint=checkpoint_for([NOTE], SIZE),
        entry=ENTRIES[6],
    )
    assert set(document) == {
        "type",
        "leaf_index",
        "tree_size",
        "leaf_hash",
        "root_hash",
        "inclusion_path",
        "checkpoint",
        "tlog_proof",
        "entry",
    }
    assert document["type"] == "inclusion"
    assert (document["leaf_index"], document["tree_size"]) == (6, SIZE)
    assert document["inclusion_path"] == [
        base64.b64encode(p).decode() for p in TREE.inclusion_proof(6)
    ]
    assert document["tlog_proof"] == _proof(6).decode()
    unsigned = inclusion_document(
        index=6,
        size=10,
        leaf=TREE.leaf(6),
        root_hash=TREE.root(10),
        path=TREE.inclusion_proof(6, 10),
        checkpoint=checkpoint_for([NOTE], 10),
    )
    assert unsigned["checkpoint"] is None
    assert "tlog_proof" not in unsigned
    assert "entry" not in unsigned
    consistency = consistency_document(
        size_1=4,
        size_2=SIZE,
        root_hash_1=TREE.root(4),
        root_hash_2=TREE.root(),
        path=TREE.consistency_proof(4, SIZE),
        checkpoint_1=None,
        checkpoint_2=NOTE,
    )
    assert consistency == {
        "type": "consistency",
        "tree_size_1": 4,
        "tree_size_2": SIZE,
        "root_hash_1": base64.b64encode(TREE.root(4)).decode(),
        "root_hash_2": base64.b64encode(TREE.root()).decode(),
        "consistency_path": [base64.b64encode(p).decode() for p in TREE.consistency_proof(4)],
        "checkpoint_1": None,
        "checkpoint_2": NOTE.decode(),
    }
