"""Acceptance 1 of issue 17 with a reference implementation: Go's golang.org/x/mod reads our
log in the C2SP tlog-tiles layout (tests/interop/go), verifies the checkpoint with sumdb/note
and the verifier key we publish, and proves every entry with sumdb/tlog from the tiles alone.

The files are what the auditor serves (broker.audit.tiles, the same functions as its routes).
No Go toolchain fails the test rather than skipping it.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.audit.checkpoint import Checkpoint, NoteVerifier, sign_checkpoint
from broker.audit.files import DEFAULT_ORIGIN
from broker.audit.merkle import Tree, leaf_hash
from broker.audit.tiles import (
    TILE_WIDTH,
    TileCoord,
    bundle_range,
    encode_bundle,
    hash_tile,
    tile_path,
)
from tests.go_support import go_run
from tests.samples import REPO

PROGRAM = REPO / "tests" / "interop" / "go"
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
SIZE = 2 * TILE_WIDTH + 45  # full and partial level-0 tiles, a partial level-1 tile
ENTRIES = [b'{"n":%d,"pad":"%s"}' % (i, b"x" * (i % 7)) for i in range(SIZE)]


def _write(root: Path, path: str, data: bytes) -> None:
    target = root / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)


def _publish(root: Path) -> str:
    tree = Tree.of(leaf_hash(e) for e in ENTRIES)
    _write(
        root,
        "checkpoint",
        sign_checkpoint(Checkpoint(DEFAULT_ORIGIN, SIZE, tree.root()), DEFAULT_ORIGIN, KEY),
    )
    for level in range(3):
        available = SIZE >> (8 * level)
        for index in range((available + TILE_WIDTH - 1) // TILE_WIDTH):
            width = min(TILE_WIDTH, available - index * TILE_WIDTH)
            coord = TileCoord(level, index, width)
            _write(root, tile_path(coord), hash_tile(tree, SIZE, coord))
    for index in range((SIZE + TILE_WIDTH - 1) // TILE_WIDTH):
        coord = TileCoord(None, index, min(TILE_WIDTH, SIZE - index * TILE_WIDTH))
        entries = encode_bundle(ENTRIES[i] for i in bundle_range(SIZE, coord))
        _write(root, tile_path(coord), entries)
    return NoteVerifier(DEFAULT_ORIGIN, KEY.public_key()).vkey()


def test_go_reads_and_verifies_the_tiles(tmp_path: Path) -> None:
    vkey = _publish(tmp_path)
    result = go_run(PROGRAM, str(tmp_path), vkey)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"ok {SIZE}"


def test_go_refuses_a_tampered_tile_and_a_foreign_key(tmp_path: Path) -> None:
    vkey = _publish(tmp_path)
    other = NoteVerifier(DEFAULT_ORIGIN, Ed25519PrivateKey.generate().public_key()).vkey()
    assert go_run(PROGRAM, str(tmp_path), other).returncode != 0
    tile = tmp_path / tile_path(TileCoord(0, 1))
    data = bytearray(tile.read_bytes())
    data[40] ^= 1
    tile.write_bytes(bytes(data))
    result = go_run(PROGRAM, str(tmp_path), vkey)
    assert result.returncode != 0
    assert "ok" not in result.stdout
