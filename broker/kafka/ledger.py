"""The publication ledger: which referral ids any broker has ever published, kept in Kafka.

Exactly one disclosure per accepted referral, whatever crashes, and however many brokers run:

* Every publish of a referral writes a ledger record (key: the referral id; value: the digest of
  the signed referral and the receipt it got, ids and codes only) to ``<prefix>.ledger`` in the
  *same* Kafka transaction as its disclosures and audit events. The record exists if and only if
  the disclosures were committed: there is no window between "sent" and "remembered as sent".
* The ledger topic is compacted and split into shards (its partitions); a referral's shard is a
  hash of its id. Every broker publishes a shard's referrals with the same transactional id,
  ``<prefix>.ledger.<shard>``, so one broker's producer for a shard fences every other's: a
  broker's view of a shard is only acted on while its producer is the shard's current one.
* After (re)initialising a shard's producer, which fences and aborts whatever another producer
  left open, the broker reads that ledger partition, read_committed, to its end. A referral id
  found there is never published again: the caller gets ``AlreadyPublished`` with what was kept.
  If another broker fences us after that read and publishes the id, our commit fails (fenced),
  nothing of ours is visible, and the next attempt re-reads the shard.

A transactional id can be wedged (Kafka cannot write a transaction marker, so initialising the
id waits forever). The broker then moves the shard to a fresh id, ``<prefix>.ledger.<shard>.e<N>``
(its *era*), and writes an era record to the shard in its next transaction so every broker that
reads the shard moves to the same era; see ``broker.kafka.transport``.

``MemoryLedger`` is the in-process twin the fake transport uses.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass, field

__all__ = [
    "ERA_KEY",
    "AlreadyPublished",
    "Claim",
    "LedgerEntry",
    "ShardView",
    "ledger_topic",
    "shard_of",
    "shard_tid",
]

ERA_KEY = b"~era"  # never a referral id (those are UUIDs)
KIND_HEADER = "cairn-ledger-kind"


def ledger_topic(prefix: str) -> str:
    return f"{prefix}.ledger"


def shard_of(referral_id: str, shards: int) -> int:
    """The shard (ledger partition) of a referral id: stable across brokers and restarts."""
    digest = hashlib.sha256(referral_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % shards


def shard_tid(prefix: str, shard: int, era: int) -> str:
    """The transactional id every broker uses for ``shard`` in ``era``."""
    base = f"{prefix}.ledger.{shard}"
    return base if era == 0 else f"{base}.e{era}"


@dataclass(frozen=True)
class Claim:
    """A publish that discloses referral ``referral_id``: only if no broker ever published it."""

    referral_id: str
    value: bytes  # what the ledger keeps for it (LedgerEntry.encode())


@dataclass(frozen=True)
class LedgerEntry:
    """What the ledger keeps per published referral: no personal data, ids and codes only."""

    digest: str  # sha256 of the signed referral's payload
    receipt: str  # the receipt JSON the sender got

    def encode(self) -> bytes:
        return json.dumps({"digest": self.digest, "receipt": self.receipt}).encode()

    @classmethod
    def decode(cls, value: bytes) -> LedgerEntry:
        data = json.loads(value)
        return cls(digest=str(data["digest"]), receipt=str(data["receipt"]))


class AlreadyPublished(Exception):  # an outcome the pipeline turns into a replay
    """The ledger says this referral id was published (by any broker); nothing was sent now."""

    def __init__(self, referral_id: str, value: bytes) -> None:
        super().__init__(f"referral {referral_id} was already published")
        self.referral_id = referral_id
        self.value = value


@dataclass
class ShardView:
    """What one broker has read of one ledger shard, and up to where."""

    entries: dict[str, bytes] = field(default_factory=dict)
    next_offset: int = 0  # the next offset to read
    era: int = 0  # the highest era record seen

    def apply(self, key: bytes | None, value: bytes | None, offset: int) -> None:
        self.next_offset = max(self.next_offset, offset + 1)
        if key is None or value is None:
            return
        if key == ERA_KEY:
            # An unreadable era record moves nothing.
            with contextlib.suppress(ValueError, KeyError, TypeError):
                self.era = max(self.era, int(json.loads(value)["era"]))
            return
        self.entries[key.decode(errors="replace")] = value


def era_value(era: int) -> bytes:
    return json.dumps({"era": era}).encode()
