"""The publication ledger: which referral ids any broker has published, kept in Kafka.

Exactly one disclosure per accepted referral, whatever crashes, and however many brokers run:

* A broker first *claims* the referral id in the shared state store (``broker.state``): one
  row per id, so of two brokers given the same id at once exactly one goes on to publish; the
  other waits for its receipt.
* The claiming broker publishes a ledger record (key: the referral id; value: the digest of the
  signed referral and the receipt it got, ids and codes only) to ``<prefix>.ledger`` in the
  *same* Kafka transaction as the referral's disclosures and audit events. The record exists if
  and only if the disclosures were committed: Kafka, not the store, is the truth about what was
  sent.
* The store's claim is marked published after the commit. A broker that dies between the two
  leaves the claim pending: whoever finds it stale (``Claim.unsettled_by``) first *fences* the
  transactional id that held it, which has Kafka complete or abort whatever that producer left
  open, then reads the id's ledger shard (a partition chosen by a hash of the id), read
  committed, to its end. Found: it was published, and the caller gets ``AlreadyPublished`` with
  what was kept. Not found: it never will be, and the claim can be taken over.

The ledger topic is compacted; its partition count is fixed once created and the same for every
broker (ids map to shards by it).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

__all__ = [
    "AlreadyPublished",
    "Claim",
    "LedgerEntry",
    "ShardView",
    "ledger_topic",
    "shard_of",
]

KIND_HEADER = "cairn-ledger-kind"


def ledger_topic(prefix: str) -> str:
    return f"{prefix}.ledger"


def shard_of(referral_id: str, shards: int) -> int:
    """The shard (ledger partition) of a referral id: stable across brokers and restarts."""
    digest = hashlib.sha256(referral_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % shards


@dataclass(frozen=True)
class Claim:
    """A publish that discloses referral ``referral_id``, which the caller has claimed.

    ``unsettled_by``: the transactional id of a producer that may have published this id and
    died before saying so. The transport then fences it and reads the ledger first: published
    already is ``AlreadyPublished``, and nothing is sent.
    """

    referral_id: str
    value: bytes  # what the ledger keeps for it (LedgerEntry.encode())
    unsettled_by: str | None = None


@dataclass(frozen=True)
class LedgerEntry:
    """What the ledger keeps per published referral: no personal data, ids and codes only."""

    digest: str  # schemas.submission.submission_digest: the referral's content, hex
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
    """What one broker has read of one ledger shard, and up to where (read only to settle
    unsettled claims, so it holds the shards that ever needed settling)."""

    entries: dict[str, bytes] = field(default_factory=dict)
    next_offset: int = 0  # the next offset to read

    def apply(self, key: bytes | None, value: bytes | None, offset: int) -> None:
        self.next_offset = max(self.next_offset, offset + 1)
        if key is None or value is None:
            return
        self.entries[key.decode(errors="replace")] = value
