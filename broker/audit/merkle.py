"""The RFC 9162 Merkle tree: leaf and node hashes, tree heads, inclusion and consistency proofs.

Pure: hashes in, hashes out; no I/O. The hashing is RFC 9162 §2.1.1 (the same as RFC 6962):
``leaf = SHA-256(0x00 || entry)``, ``node = SHA-256(0x01 || left || right)``, and the hash of
the empty tree is ``SHA-256()``. Proof generation follows §2.1.3.1 (PATH) and §2.1.4.1
(PROOF / SUBPROOF); verification follows the numbered steps of §2.1.3.2 and §2.1.4.2, so any
independent RFC 9162 / Certificate Transparency verifier accepts what this module produces.

Proof generation only ever needs the hashes of subtrees over leaf ranges, so the generators take
a ``subtree(start, end)`` callable. ``Tree`` is the efficient one: it keeps the hash of every
complete, aligned subtree (one packed ``bytearray`` per level, 32 bytes a node, about 64 bytes
per leaf in all), so any subtree hash takes O(log n) node hashes and a proof O(log² n) at
worst: microseconds at a million leaves.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Sequence
from typing import Final

from schemas.errors import VerificationError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "InvalidProof",
    "SubtreeHash",
    "Tree",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root",
    "root_from_inclusion_proof",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE: Final = 32  # bytes of SHA-256
EMPTY_ROOT: Final = hashlib.sha256(b"").digest()  # RFC 9162 §2.1.1: MTH({}) = HASH()
_LEAF: Final = b"\x00"
_NODE: Final = b"\x01"

#: ``subtree(start, end)``: the Merkle tree hash of leaves ``start`` (inclusive) to ``end``.
SubtreeHash = Callable[[int, int], bytes]


class InvalidProof(VerificationError):
    """An inclusion or consistency proof does not prove what it was offered for."""


def leaf_hash(entry: bytes) -> bytes:
    """RFC 9162 §2.1.1: the hash of one leaf, SHA-256(0x00 || entry)."""
    return hashlib.sha256(_LEAF + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 §2.1.1: the hash of an interior node, SHA-256(0x01 || left || right)."""
    return hashlib.sha256(_NODE + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n > 1): where RFC 9162 splits a tree."""
    return 1 << ((n - 1).bit_length() - 1)


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """The Merkle tree hash (MTH) of a list of leaf hashes, by the definition in §2.1.1."""
    if not leaf_hashes:
        return EMPTY_ROOT
    level = list(leaf_hashes)
    # Pairing left to right and carrying an odd last node up unchanged gives the same tree as
    # the recursive definition (the left subtree is always the largest power of two).
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def inclusion_proof(index: int, size: int, subtree: SubtreeHash) -> list[bytes]:
    """RFC 9162 §2.1.3.1: the audit path PATH(index, D[0:size]), from the leaf up."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of size {size}")
    path: list[bytes] = []
    lo, hi = 0, size
    # PATH(m, D[n]) = PATH(m, D[0:k]) : MTH(D[k:n]) if m < k, else PATH(m-k, D[k:n]) : MTH(D[0:k]).
    # Walking down from the root collects the siblings outermost first; the proof lists them
    # innermost first, hence the reversal.
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            path.append(subtree(lo + k, hi))
            hi = lo + k
        else:
            path.append(subtree(lo, lo + k))
            lo += k
    path.reverse()
    return path


def consistency_proof(first: int, second: int, subtree: SubtreeHash) -> list[bytes]:
    """RFC 9162 §2.1.4.1: PROOF(first, D[0:second]); empty when first is 0 or equals second."""
    if not 0 <= first <= second:
        raise ValueError(f"no consistency proof from size {first} to size {second}")
    if first in (0, second):
        return []
    proof: list[bytes] = []
    lo, hi, m, complete = 0, second, first, True
    # SUBPROOF(m, D[n], b): {} if m == n and b; {MTH(D[m])} if m == n and not b; otherwise
    # split at k: SUBPROOF(m, D[0:k], b) : MTH(D[k:n]) if m <= k,
    #             SUBPROOF(m-k, D[k:n], false) : MTH(D[0:k]) if m > k.
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            proof.append(subtree(lo + k, hi))
            hi = lo + k
        else:
            proof.append(subtree(lo, lo + k))
            lo += k
            m -= k
            complete = False
    if not complete:
        proof.append(subtree(lo, hi))
    proof.reverse()
    return proof


def _check_hash(name: str, value: bytes) -> None:
    if len(value) != HASH_SIZE:
        raise InvalidProof(f"the {name} is {len(value)} bytes, not a {HASH_SIZE}-byte SHA-256")


def root_from_inclusion_proof(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root that ``proof`` leads to from ``leaf`` at ``index`` (§2.1.3.2 steps 1-4)."""
    _check_hash("leaf hash", leaf)
    for p in proof:
        _check_hash("proof element", p)
    # 1. The leaf must be in the tree.
    if not 0 <= index < size:
        raise InvalidProof(f"leaf {index} is not in a tree of size {size}")
    # 2. fn is the leaf index, sn the last index in the tree.
    fn, sn = index, size - 1
    # 3. r starts as the leaf hash.
    r = leaf
    # 4. For each p in the path:
    for p in proof:
        # 4a. If sn is 0, the proof is too long.
        if sn == 0:
            raise InvalidProof("the inclusion proof has more elements than the tree has levels")
        # 4b. p is a left sibling when fn is a right child, or fn is the last node of its level.
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            # 4b.ii. Skip the levels where fn is the last node and has no sibling.
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        # 4c. Up one level.
        fn >>= 1
        sn >>= 1
    # 5 (first half). sn must have reached 0: otherwise the proof is too short.
    if sn != 0:
        raise InvalidProof("the inclusion proof has fewer elements than the tree has levels")
    return r


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], root_hash: bytes
) -> None:
    """RFC 9162 §2.1.3.2: raise ``InvalidProof`` unless ``leaf`` is entry ``index`` of the tree.

    ``leaf`` is the leaf *hash*; ``root_hash`` the tree head at ``size``.
    """
    _check_hash("root hash", root_hash)
    computed = root_from_inclusion_proof(index, size, leaf, proof)
    # 5 (second half). The computed root must be the tree head.
    if not hmac.compare_digest(computed, root_hash):
        raise InvalidProof(f"the inclusion proof for leaf {index} does not lead to the root")


def verify_consistency(
    first: int, second: int, proof: Sequence[bytes], first_root: bytes, second_root: bytes
) -> None:
    """RFC 9162 §2.1.4.2: raise ``InvalidProof`` unless the tree at ``second`` extends ``first``."""
    _check_hash("first root", first_root)
    _check_hash("second root", second_root)
    for p in proof:
        _check_hash("proof element", p)
    if not 0 <= first <= second:
        raise InvalidProof(f"a tree of size {second} cannot extend one of size {first}")
    # Sizes the algorithm does not cover (§2.1.4.1 defines proofs for 0 < first < second):
    # equal sizes need equal roots, and every tree extends the empty one; either way the proof
    # is empty.
    if first == second:
        if proof:
            raise InvalidProof("a consistency proof between equal sizes is empty")
        if not hmac.compare_digest(first_root, second_root):
            raise InvalidProof(f"two different roots for the same size {first}")
        return
    if first == 0:
        if proof:
            raise InvalidProof("a consistency proof from the empty tree is empty")
        return
    # 1. An empty path cannot prove anything.
    if not proof:
        raise InvalidProof("the consistency proof is empty")
    path = list(proof)
    # 2. If first is an exact power of 2, its root is the first node of the path.
    if first & (first - 1) == 0:
        path.insert(0, first_root)
    # 3. fn is the last index of the first tree, sn of the second.
    fn, sn = first - 1, second - 1
    # 4. Skip the levels where fn is a right child: the path starts above them.
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # 5. Both running hashes start from the first element.
    fr = sr = path[0]
    # 6. For each subsequent element c:
    for c in path[1:]:
        # 6a. If sn is 0, the proof is too long.
        if sn == 0:
            raise InvalidProof("the consistency proof has more elements than the tree needs")
        # 6b. c is a left sibling of both trees' paths, or a right sibling of the second's only.
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            # 6b.ii. Skip the levels where fn is the last node and has no sibling.
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        # 6c. Up one level.
        fn >>= 1
        sn >>= 1
    # 7. Both roots reproduced, and the whole second tree climbed.
    if sn != 0:
        raise InvalidProof("the consistency proof has fewer elements than the tree needs")
    if not hmac.compare_digest(fr, first_root):
        raise InvalidProof(f"the consistency proof does not reproduce the root at size {first}")
    if not hmac.compare_digest(sr, second_root):
        raise InvalidProof(f"the consistency proof does not reproduce the root at size {second}")


class Tree:
    """An append-only Merkle tree over leaf hashes, with every complete subtree hash kept.

    ``_levels[h]`` packs, 32 bytes each, the hashes of the complete subtrees of 2**h leaves
    aligned on multiples of 2**h (level 0: the leaf hashes). Appending a leaf adds at most one
    node per level; any subtree hash, root or proof is then a few dozen SHA-256 calls.
    """

    def __init__(self) -> None:
        self._levels: list[bytearray] = [bytearray()]

    @classmethod
    def of(cls, leaf_hashes: Iterable[bytes]) -> Tree:
        """A tree over ``leaf_hashes``, built level by level (faster than appending one by one)."""
        tree = cls()
        base = bytearray(b"".join(leaf_hashes))
        if len(base) % HASH_SIZE:
            raise ValueError(f"leaf hashes are {HASH_SIZE} bytes each")
        tree._levels = [base]
        below = base
        while len(below) >= 2 * HASH_SIZE:
            pairs = len(below) // (2 * HASH_SIZE)
            view = memoryview(below)
            sha = hashlib.sha256
            above = bytearray(
                b"".join(sha(_NODE + view[i * 64 : i * 64 + 64]).digest() for i in range(pairs))
            )
            tree._levels.append(above)
            below = above
        return tree

    @property
    def size(self) -> int:
        return len(self._levels[0]) // HASH_SIZE

    def __len__(self) -> int:
        return self.size

    def append(self, leaf: bytes) -> None:
        """Add one leaf hash (not the entry: ``leaf_hash(entry)``)."""
        if len(leaf) != HASH_SIZE:
            raise ValueError(f"a leaf hash is {HASH_SIZE} bytes")
        levels = self._levels
        levels[0] += leaf
        index = self.size - 1
        height = 0
        # A right child completes its parent: hash the pair into the level above, and so on up.
        while index & 1:
            below = levels[height]
            parent = node_hash(
                bytes(below[(index - 1) * HASH_SIZE : index * HASH_SIZE]),
                bytes(below[index * HASH_SIZE : (index + 1) * HASH_SIZE]),
            )
            height += 1
            if height == len(levels):
                levels.append(bytearray())
            levels[height] += parent
            index >>= 1

    def truncate(self, size: int) -> None:
        """Forget every leaf from ``size`` on (crash recovery drops a torn tail this way)."""
        if not 0 <= size <= self.size:
            raise ValueError(f"cannot truncate a tree of size {self.size} to {size}")
        for height, level in enumerate(self._levels):
            del level[(size >> height) * HASH_SIZE :]
        while len(self._levels) > 1 and not self._levels[-1]:
            self._levels.pop()

    def leaf(self, index: int) -> bytes:
        """The leaf hash at ``index``."""
        if not 0 <= index < self.size:
            raise IndexError(f"leaf {index} is not in a tree of size {self.size}")
        return bytes(self._levels[0][index * HASH_SIZE : (index + 1) * HASH_SIZE])

    def subtree(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]) over this tree's leaves."""
        if not 0 <= start < end <= self.size:
            raise ValueError(f"leaves {start}..{end} are not a range of a tree of {self.size}")
        n = end - start
        if n & (n - 1) == 0 and start % n == 0:
            # A complete aligned subtree: stored.
            height = n.bit_length() - 1
            i = start >> height
            return bytes(self._levels[height][i * HASH_SIZE : (i + 1) * HASH_SIZE])
        k = _split(n)
        return node_hash(self.subtree(start, start + k), self.subtree(start + k, end))

    def root(self, size: int | None = None) -> bytes:
        """The tree head at ``size`` (default: the whole tree); ``EMPTY_ROOT`` at size 0."""
        size = self.size if size is None else size
        if not 0 <= size <= self.size:
            raise ValueError(f"no tree head at size {size}: the tree has {self.size} leaves")
        return EMPTY_ROOT if size == 0 else self.subtree(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """RFC 9162 §2.1.3.1 inclusion proof of leaf ``index`` in the tree at ``size``."""
        size = self.size if size is None else size
        if size > self.size:
            raise ValueError(f"no tree of size {size}: the tree has {self.size} leaves")
        return inclusion_proof(index, size, self.subtree)

    def consistency_proof(self, first: int, second: int | None = None) -> list[bytes]:
        """RFC 9162 §2.1.4.1 consistency proof from size ``first`` to ``second``."""
        second = self.size if second is None else second
        if second > self.size:
            raise ValueError(f"no tree of size {second}: the tree has {self.size} leaves")
        return consistency_proof(first, second, self.subtree)
