"""The audit log in the C2SP tlog-tiles layout: tile paths, hash tiles and entry bundles.

Pure: a ``Tree`` (and the entries) in, bytes out; no I/O. It follows https://c2sp.org/tlog-tiles
(the layout Go's ``golang.org/x/mod/sumdb/tlog`` and the transparency-dev clients read):

* Hash tiles, ``tile/<L>/<N>[.p/<W>]``, have height 8: the tile at level ``L`` and index ``N``
  lists ``W`` consecutive hashes of the Merkle tree at level ``8*L`` (level 0: the RFC 9162 leaf
  hashes), starting at hash ``N*256``. A full tile lists 256 hashes; a partial tile (``.p/<W>``,
  ``1 <= W <= 255``) lists fewer, because the tree does not yet fill it.
* ``<L>`` is decimal with no leading zeroes; ``<N>`` is split into 3-digit path elements, every
  element but the last prefixed with ``x`` (index 1234067 is ``x001/x234/067``), with no
  superfluous leading ``x000`` element.
* Entry bundles, ``tile/entries/<N>[.p/<W>]``, hold entries ``N*256`` to ``N*256+W-1``, each
  as a big-endian uint16 length followed by the entry bytes. So an entry of more than 65,535
  bytes cannot be in a bundle: ``MAX_EVENT_BYTES`` allows one byte more (65,536), so such an
  entry makes its bundle :class:`EntryTooLarge` (refused, never truncated or wrapped). Real
  events are under 2 KB.
* Only what the latest checkpoint commits to is served: a tile or bundle that reaches past its
  tree size is :class:`TileNotFound`, even if the log has grown since.

Cache policy (tlog-tiles: full tiles and bundles never change; partial ones and the checkpoint
do): :func:`cache_control` gives the header value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from broker.audit.merkle import HASH_SIZE, Tree
from schemas.errors import InputError

__all__ = [
    "BUNDLE_ENTRY_MAX",
    "CACHE_FULL",
    "CACHE_PARTIAL",
    "TILE_HEIGHT",
    "TILE_WIDTH",
    "EntryTooLarge",
    "MalformedTilePath",
    "TileCoord",
    "TileNotFound",
    "bundle_range",
    "cache_control",
    "encode_bundle",
    "encode_index",
    "hash_tile",
    "parse_tile_path",
    "tile_path",
]

TILE_HEIGHT: Final = 8
TILE_WIDTH: Final = 1 << TILE_HEIGHT  # 256 hashes or entries in a full tile
MAX_LEVEL: Final = 63
BUNDLE_ENTRY_MAX: Final = 0xFFFF  # the uint16 length prefix of an entry in a bundle
CACHE_FULL: Final = "public, max-age=31536000, immutable"
CACHE_PARTIAL: Final = "no-cache"

_LEVEL = r"(0|[1-9][0-9]?)"
_INDEX = r"((?:x[0-9]{3}/)*[0-9]{3})"
_WIDTH = r"(?:\.p/([1-9][0-9]{0,2}))?"
_PATH = re.compile(rf"tile/(?:(entries)|{_LEVEL})/{_INDEX}{_WIDTH}")


class MalformedTilePath(InputError):
    """The path is not a tlog-tiles tile or bundle path in canonical form."""


class TileNotFound(InputError):
    """The tile or bundle reaches past what the latest checkpoint commits to."""


class EntryTooLarge(InputError):
    """An entry in the bundle is longer than a uint16 length prefix can say (65,535 bytes)."""


@dataclass(frozen=True)
class TileCoord:
    """One tile: ``level`` is None for an entry bundle; ``width`` is 1..256 (256: full)."""

    level: int | None
    index: int
    width: int = TILE_WIDTH

    @property
    def partial(self) -> bool:
        return self.width < TILE_WIDTH


def encode_index(index: int) -> str:
    """tlog-tiles ``<N>``: 3-digit elements, all but the last prefixed with ``x``."""
    if index < 0:
        raise ValueError("a tile index is not negative")
    groups = [f"{index % 1000:03d}"]
    index //= 1000
    while index:
        groups.append(f"x{index % 1000:03d}")
        index //= 1000
    return "/".join(reversed(groups))


def tile_path(coord: TileCoord) -> str:
    """The path of ``coord``: ``tile/<L>/<N>[.p/<W>]`` or ``tile/entries/<N>[.p/<W>]``."""
    kind = "entries" if coord.level is None else str(coord.level)
    suffix = f".p/{coord.width}" if coord.partial else ""
    return f"tile/{kind}/{encode_index(coord.index)}{suffix}"


def parse_tile_path(path: str) -> TileCoord:
    """Parse a tile or bundle path; anything not in canonical form is :class:`MalformedTilePath`."""
    match = _PATH.fullmatch(path)
    if match is None:
        raise MalformedTilePath("not a tlog-tiles path: tile/<L>/<N>[.p/<W>] or tile/entries/...")
    entries, level_text, index_text, width_text = match.groups()
    level = None if entries else int(level_text)
    if level is not None and level > MAX_LEVEL:
        raise MalformedTilePath(f"a tile level is 0 to {MAX_LEVEL}")
    width = int(width_text) if width_text else TILE_WIDTH
    if width_text and width >= TILE_WIDTH:
        raise MalformedTilePath(f"a partial tile width is 1 to {TILE_WIDTH - 1}")
    index = int(index_text.replace("x", "").replace("/", ""))
    coord = TileCoord(level, index, width)
    if tile_path(coord) != path:  # e.g. a superfluous leading x000 element
        raise MalformedTilePath("the tile index is not in canonical form")
    return coord


def _available(size: int, level: int) -> int:
    """How many hashes of tree level ``level * TILE_HEIGHT`` a tree of ``size`` leaves has."""
    return size >> (level * TILE_HEIGHT)


def hash_tile(tree: Tree, size: int, coord: TileCoord) -> bytes:
    """The hash tile ``coord`` of the tree at ``size`` (the latest checkpoint's size).

    Hash ``i`` of tree level ``h = 8*L`` is MTH of leaves ``[i * 2**h, (i+1) * 2**h)``, a
    complete aligned subtree that ``Tree`` keeps, so a tile is 256 stored hashes at most.
    """
    if coord.level is None:
        raise ValueError("an entry bundle is not a hash tile")
    if not 0 <= size <= tree.size:
        raise ValueError(f"size {size} is not within a tree of {tree.size} leaves")
    first = coord.index * TILE_WIDTH
    if first + coord.width > _available(size, coord.level):
        raise TileNotFound("that tile is beyond the latest checkpoint")
    span = 1 << (coord.level * TILE_HEIGHT)
    out = b"".join(
        tree.subtree(i * span, (i + 1) * span) for i in range(first, first + coord.width)
    )
    assert len(out) == coord.width * HASH_SIZE
    return out


def bundle_range(size: int, coord: TileCoord) -> range:
    """The entry indices of bundle ``coord``; :class:`TileNotFound` if past ``size``."""
    if coord.level is not None:
        raise ValueError("a hash tile is not an entry bundle")
    first = coord.index * TILE_WIDTH
    if first + coord.width > size:
        raise TileNotFound("that entry bundle is beyond the latest checkpoint")
    return range(first, first + coord.width)


def encode_bundle(entries: Iterable[bytes]) -> bytes:
    """tlog-tiles entry bundle: each entry as a big-endian uint16 length, then its bytes."""
    parts: list[bytes] = []
    for entry in entries:
        if len(entry) > BUNDLE_ENTRY_MAX:
            raise EntryTooLarge(
                f"an entry of {len(entry)} bytes cannot be in a tlog-tiles bundle "
                f"(at most {BUNDLE_ENTRY_MAX})"
            )
        parts.append(len(entry).to_bytes(2, "big") + entry)
    return b"".join(parts)


def cache_control(coord: TileCoord) -> str:
    """Full tiles and bundles never change (cache for a year); partial ones are replaced."""
    return CACHE_PARTIAL if coord.partial else CACHE_FULL
