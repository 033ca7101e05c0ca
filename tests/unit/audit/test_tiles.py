"""C2SP tlog-tiles: paths, hash tiles, partial tiles and entry bundles.

The expected tiles are computed here independently from the spec and RFC 9162 §2.1.1
(hashlib only, the recursive MTH definition), never through broker.audit.merkle's Tree.
"""

from __future__ import annotations

import hashlib

import pytest

from broker.audit.merkle import Tree, leaf_hash
from broker.audit.tiles import (
    EntryTooLarge,
    MalformedTilePath,
    TileCoord,
    TileNotFound,
    bundle_range,
    cache_control,
    encode_bundle,
    hash_tile,
    parse_tile_path,
    tile_path,
)


def _mth(entries: list[bytes]) -> bytes:
    """RFC 9162 §2.1.1, recursively: MTH(D[n]) = H(0x01 || MTH(D[0:k]) || MTH(D[k:n]))."""
    if len(entries) == 1:
        return hashlib.sha256(b"\x00" + entries[0]).digest()
    k = 1
    while k * 2 < len(entries):
        k *= 2
    return hashlib.sha256(b"\x01" + _mth(entries[:k]) + _mth(entries[k:])).digest()


def _expected_tile(entries: list[bytes], level: int, index: int, width: int) -> bytes:
    span = 256**level
    return b"".join(
        _mth(entries[i * span : (i + 1) * span]) for i in range(index * 256, index * 256 + width)
    )


ENTRIES = [b"e%d" % i for i in range(256 * 3 + 17)]  # 785 leaves: 3 full level-0 tiles
TREE = Tree.of(leaf_hash(e) for e in ENTRIES)


@pytest.mark.parametrize(
    ("path", "coord"),
    [
        ("tile/0/000", TileCoord(0, 0)),
        ("tile/0/001.p/17", TileCoord(0, 1, 17)),
        ("tile/2/x001/x234/067", TileCoord(2, 1234067)),
        ("tile/entries/x001/000.p/255", TileCoord(None, 1000, 255)),
        ("tile/63/999", TileCoord(63, 999)),
    ],
)
def test_paths_round_trip(path: str, coord: TileCoord) -> None:
    assert parse_tile_path(path) == coord
    assert tile_path(coord) == path


@pytest.mark.parametrize(
    "path",
    [
        "tile/00/000",  # leading zero in the level
        "tile/64/000",  # level out of range
        "tile/0/1",  # not 3 digits
        "tile/0/x000/001",  # superfluous leading x000
        "tile/0/001/002",  # non-final element without x
        "tile/0/000.p/0",
        "tile/0/000.p/256",
        "tile/0/000.p/017",
        "tile/0/000.p/",
        "tile/entries/abc",
        "tile/0/000/",
        "/tile/0/000",
        "tile/-1/000",
        "tile/0/\u0661\u0662\u0663",  # non-ASCII digits
    ],
)
def test_malformed_paths_refused(path: str) -> None:
    with pytest.raises(MalformedTilePath):
        parse_tile_path(path)


def test_level0_full_and_partial_tiles_match_the_spec() -> None:
    size = len(ENTRIES)
    for n in range(3):
        assert hash_tile(TREE, size, TileCoord(0, n)) == _expected_tile(ENTRIES, 0, n, 256)
    assert hash_tile(TREE, size, TileCoord(0, 3, 17)) == _expected_tile(ENTRIES, 0, 3, 17)
    # A narrower partial tile is the same prefix.
    assert hash_tile(TREE, size, TileCoord(0, 3, 5)) == _expected_tile(ENTRIES, 0, 3, 5)


def test_level1_partial_tile_holds_the_complete_256_leaf_subtrees() -> None:
    size = len(ENTRIES)
    assert hash_tile(TREE, size, TileCoord(1, 0, 3)) == _expected_tile(ENTRIES, 1, 0, 3)
    with pytest.raises(TileNotFound):
        hash_tile(TREE, size, TileCoord(1, 0, 4))


def test_nothing_past_the_checkpoint_size_is_served() -> None:
    # The tree has grown to 785 but the checkpoint says 700: tile 2 is then partial (188).
    with pytest.raises(TileNotFound):
        hash_tile(TREE, 700, TileCoord(0, 2))
    with pytest.raises(TileNotFound):
        hash_tile(TREE, 700, TileCoord(0, 2, 189))
    assert hash_tile(TREE, 700, TileCoord(0, 2, 188)) == _expected_tile(ENTRIES, 0, 2, 188)
    with pytest.raises(TileNotFound):
        bundle_range(700, TileCoord(None, 2))
    with pytest.raises(TileNotFound):
        hash_tile(TREE, len(ENTRIES), TileCoord(0, 4, 1))


def test_bundle_is_uint16_length_prefixed() -> None:
    r = bundle_range(len(ENTRIES), TileCoord(None, 3, 17))
    assert r == range(768, 785)
    bundle = encode_bundle(ENTRIES[i] for i in r)
    expected = b"".join(len(e).to_bytes(2, "big") + e for e in ENTRIES[768:785])
    assert bundle == expected
    # Parse it back as a client would, and check each entry hashes to the level-0 tile.
    out, pos = [], 0
    while pos < len(bundle):
        n = int.from_bytes(bundle[pos : pos + 2], "big")
        out.append(bundle[pos + 2 : pos + 2 + n])
        pos += 2 + n
    tile = hash_tile(TREE, len(ENTRIES), TileCoord(0, 3, 17))
    assert b"".join(hashlib.sha256(b"\x00" + e).digest() for e in out) == tile


def test_entry_too_large_for_a_bundle_is_refused() -> None:
    assert encode_bundle([b"a" * 65_535])[:2] == b"\xff\xff"
    with pytest.raises(EntryTooLarge):
        encode_bundle([b"ok", b"a" * 65_536])


def test_cache_control() -> None:
    assert "immutable" in cache_control(TileCoord(0, 0))
    assert cache_control(TileCoord(0, 0, 3)) == "no-cache"
