"""RFC 9162 Merkle tree: the public Certificate Transparency test vectors, and tampered proofs.

The vectors are those of the Go reference implementation of RFC 6962 / RFC 9162 proofs,
github.com/transparency-dev/merkle, file proof/verify_test.go (commit
02194e9afb6c1d95b5381350007963aa70fff472): the eight leaves, the roots of the trees of sizes 1
to 8, and the inclusion and consistency proofs, which go back to the Certificate Transparency
C++ and Go test suites. The corruption probes (wrong index, wrong size, flipped bits, extra or
missing elements) are ported from the same file's corruptInclusionProof and
corruptConsistencyProof, and the edge cases from its TestVerifyInclusion and
TestVerifyConsistency tables.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import pytest

from broker.audit.merkle import (
    EMPTY_ROOT,
    InvalidProof,
    Tree,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    root_from_inclusion_proof,
    verify_consistency,
    verify_inclusion,
)

LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
ROOTS = [
    bytes.fromhex(h)
    for h in (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    )
]


def _h(*hexes: str) -> list[bytes]:
    return [bytes.fromhex(h) for h in hexes]


# (leaf index, tree size, proof): the Go file numbers leaves from 1; these are 0-based.
INCLUSION = [
    (0, 1, []),
    (
        0,
        8,
        _h(
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ),
    ),
    (
        5,
        8,
        _h(
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
    (2, 3, _h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")),
    (
        1,
        5,
        _h(
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ),
    ),
]
# (first size, second size, proof)
CONSISTENCY = [
    (1, 1, []),
    (
        1,
        8,
        _h(
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ),
    ),
    (
        6,
        8,
        _h(
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
    (
        2,
        5,
        _h(
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ),
    ),
    (
        6,
        7,
        _h(
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
]
SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")
LEAF_HASHES = [leaf_hash(x) for x in LEAVES]
TREE = Tree.of(LEAF_HASHES)


def _rejects_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], r: bytes
) -> bool:
    try:
        verify_inclusion(index, size, leaf, proof, r)
    except InvalidProof:
        return True
    return False


def _rejects_consistency(m: int, n: int, proof: Sequence[bytes], r1: bytes, r2: bytes) -> bool:
    try:
        verify_consistency(m, n, proof, r1, r2)
    except InvalidProof:
        return True
    return False


def test_empty_tree_hash() -> None:
    """The empty tree's hash is SHA-256 of nothing (RFC 9162 §2.1.1)."""
    assert root([]) == EMPTY_ROOT == Tree().root() == hashlib.sha256(b"").digest()


@pytest.mark.parametrize("size", range(1, 9))
def test_roots_match_the_published_vectors(size: int) -> None:
    """Every way of computing a tree head gives the published root for sizes 1 to 8."""
    appended = Tree()
    for h in LEAF_HASHES[:size]:
        appended.append(h)
    assert root(LEAF_HASHES[:size]) == ROOTS[size - 1]
    assert appended.root() == ROOTS[size - 1]
    assert TREE.root(size) == ROOTS[size - 1]


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION)
def test_inclusion_proofs_match_the_published_vectors(
    index: int, size: int, proof: list[bytes]
) -> None:
    """Generated inclusion proofs equal the published ones, and verify against the roots."""
    assert TREE.inclusion_proof(index, size) == proof
    verify_inclusion(index, size, LEAF_HASHES[index], proof, ROOTS[size - 1])


@pytest.mark.parametrize(("first", "second", "proof"), CONSISTENCY)
def test_consistency_proofs_match_the_published_vectors(
    first: int, second: int, proof: list[bytes]
) -> None:
    """Generated consistency proofs equal the published ones, and verify against the roots."""
    assert TREE.consistency_proof(first, second) == proof
    verify_consistency(first, second, proof, ROOTS[first - 1], ROOTS[second - 1])


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION[1:])
def test_corrupted_inclusion_proofs_are_refused(index: int, size: int, proof: list[bytes]) -> None:
    """Every corruption probe of the reference suite fails to verify."""
    r, leaf = ROOTS[size - 1], LEAF_HASHES[index]
    probes = [
        (index - 1, size, leaf, proof, r),
        (index + 1, size, leaf, proof, r),
        (index ^ 2, size, leaf, proof, r),
        (index, size * 2, leaf, proof, r),
        (index, size // 2, leaf, proof, r),
        (index, size, b"WrongLeaf", proof, r),
        (index, size, leaf, proof, EMPTY_ROOT),
        (index, size, leaf, proof, SOME_HASH),
        (index, size, leaf, [*proof, b""], r),
        (index, size, leaf, [*proof, r], r),
        (index, size, leaf, [b"", *proof], r),
        (index, size, leaf, [r, *proof], r),
        (index, size, leaf, proof[:-1], r),
        (index, size, leaf, [proof[0], SOME_HASH, *proof[1:]], r),
    ]
    for i in range(len(proof)):
        flipped = [bytearray(p) for p in proof]
        flipped[i][0] ^= 8
        probes.append((index, size, leaf, [bytes(p) for p in flipped], r))
    wrongly_accepted = [p for p in probes if not _rejects_inclusion(*p)]
    assert wrongly_accepted == []


@pytest.mark.parametrize(("first", "second", "proof"), CONSISTENCY[1:])
def test_corrupted_consistency_proofs_are_refused(
    first: int, second: int, proof: list[bytes]
) -> None:
    """Every corruption probe of the reference suite fails to verify."""
    r1, r2 = ROOTS[first - 1], ROOTS[second - 1]
    probes = [
        (first - 1, second, proof, r1, r2),
        (first + 1, second, proof, r1, r2),
        (first ^ 2, second, proof, r1, r2),
        (first, second * 2, proof, r1, r2),
        (first, second // 2, proof, r1, r2),
        (first, second, proof, b"WrongRoot", r2),
        (first, second, proof, r1, b"WrongRoot"),
        (first, second, proof, r2, r1),
        (first, second, [], r1, r2),
        (first, second, [*proof, b""], r1, r2),
        (first, second, [*proof, r1], r1, r2),
        (first, second, [*proof, r2], r1, r2),
        (first, second, [b"", *proof], r1, r2),
        (first, second, [r1, *proof], r1, r2),
        (first, second, [r2, *proof], r1, r2),
        (first, second, [proof[0], *proof], r1, r2),
        (first, second, proof[:-1], r1, r2),
    ]
    for i in range(len(proof)):
        flipped = [bytearray(p) for p in proof]
        flipped[i][0] ^= 16
        probes.append((first, second, [bytes(p) for p in flipped], r1, r2))
    wrongly_accepted = [p for p in probes if not _rejects_consistency(*p)]
    assert wrongly_accepted == []


def test_inclusion_edge_cases_of_the_reference_suite() -> None:
    """Empty proofs for impossible index/size pairs, or with mismatched hashes, are refused."""
    for index, size in ((0, 0), (0, 1), (1, 0), (2, 1)):
        assert _rejects_inclusion(index, size, SOME_HASH, [], b"")
        assert _rejects_inclusion(index, size, b"", [], EMPTY_ROOT)
        assert _rejects_inclusion(index, size, SOME_HASH, [], EMPTY_ROOT)
    single = leaf_hash(b"data")
    verify_inclusion(0, 1, single, [], single)
    assert _rejects_inclusion(0, 1, b"", [], single)
    assert _rejects_inclusion(0, 1, single, [], b"")


def test_consistency_edge_cases_of_the_reference_suite() -> None:
    """Trivial sizes verify only with an empty proof and, at equal sizes, equal roots."""
    r1, r2 = hashlib.sha256(b"1").digest(), hashlib.sha256(b"2").digest()
    accepted = [(0, 0, [], r1, r1), (0, 1, [], r1, r2), (1, 1, [], r2, r2)]
    refused = [
        (0, 0, [], r1, r2),
        (1, 1, [], r1, r2),
        (1, 0, [], r1, r2),
        (2, 1, [], r1, r2),
        (1, 2, [], r1, r2),
        (0, 0, [EMPTY_ROOT], EMPTY_ROOT, EMPTY_ROOT),
        (0, 1, [EMPTY_ROOT], EMPTY_ROOT, EMPTY_ROOT),
        (1, 1, [EMPTY_ROOT], EMPTY_ROOT, EMPTY_ROOT),
    ]
    for case in accepted:
        verify_consistency(*case)
    assert [c for c in refused if not _rejects_consistency(*c)] == []


def _reference_mth(hashes: Sequence[bytes]) -> bytes:
    """MTH exactly as RFC 9162 §2.1.1 defines it, recursively: the oracle for the tree."""
    if len(hashes) == 1:
        return hashes[0]
    k = 1 << ((len(hashes) - 1).bit_length() - 1)
    return node_hash(_reference_mth(hashes[:k]), _reference_mth(hashes[k:]))


def test_every_proof_of_small_trees_verifies() -> None:
    """For every size to 33, every inclusion and consistency proof verifies; roots match MTH."""
    hashes = [leaf_hash(i.to_bytes(2, "big")) for i in range(33)]
    tree = Tree.of(hashes)
    for size in range(1, 34):
        head = _reference_mth(hashes[:size])
        assert tree.root(size) == head
        for index in range(size):
            proof = tree.inclusion_proof(index, size)
            assert proof == inclusion_proof(index, size, lambda a, b: _reference_mth(hashes[a:b]))
            assert root_from_inclusion_proof(index, size, hashes[index], proof) == head
        for first in range(1, size + 1):
            proof = consistency_proof(first, size, tree.subtree)
            verify_consistency(first, size, proof, tree.root(first), head)


def test_appending_matches_bulk_building_and_truncation_undoes_appends() -> None:
    """A tree grown leaf by leaf equals one built at once; truncating gives the shorter tree."""
    hashes = [leaf_hash(bytes([i])) for i in range(77)]
    grown = Tree()
    for h in hashes:
        grown.append(h)
    assert grown.root() == Tree.of(hashes).root()
    grown.truncate(40)
    assert grown.size == 40
    assert grown.root() == Tree.of(hashes[:40]).root()
    grown.append(hashes[40])
    assert grown.root() == Tree.of(hashes[:41]).root()
