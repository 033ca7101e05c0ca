"""What the shared state holds, and the one interface every store implements.

The broker's state is shared by every broker process that serves the same federation (issue 13):
the claims on referral ids (single use across brokers) with the receipt each published id got,
the brokers' heartbeats, recipients' acknowledgements, committed deliveries with their deadlines
(the overdue sweep reads them) and the flow facts the ops view counts. ``StateStore`` is the
interface; ``broker.state.sqlite`` (one machine, any number of processes) and
``broker.state.postgres`` (many machines) implement it and are held to the same contract tests
(``tests/contracts/state.py``). Every method is async; every time goes in and comes out
timezone-aware, stored as UTC. Ids, agency ids, codes and times only: no personal data.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

__all__ = [
    "FACT_TYPES",
    "OVERDUE_LATE",
    "OVERDUE_NEVER",
    "ClaimState",
    "Claimed",
    "Delivery",
    "Fact",
    "Published",
    "Seen",
    "StateStore",
    "utc",
]

FACT_TYPES = ("disclosed", "refused", "acknowledged")  # the audit event types the ops view counts
OVERDUE_LATE = "late"  # an overdue delivery the recipient acknowledged after its deadline
OVERDUE_NEVER = "never"  # an overdue delivery not acknowledged (yet)

Published = tuple[str, str, str]  # (referral_id, digest, receipt JSON) of a committed referral


def utc(moment: datetime) -> datetime:
    """``moment`` in UTC; a naive datetime is a programming mistake."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise TypeError("the state store takes timezone-aware datetimes only")
    return moment.astimezone(UTC)


@dataclass(frozen=True)
class Seen:
    digest: str  # schemas.submission.submission_digest: the referral's content, hex
    receipt: str  # the receipt JSON as first returned


class ClaimState(enum.Enum):
    """What ``claim`` found for a referral id."""

    NEW = "new"  # no row: we inserted a pending claim, owned by us; go ahead and publish
    PUBLISHED = "published"  # a receipt is recorded: a retry (or a reuse) of a committed id
    BUSY = "busy"  # pending, owned by another broker whose heartbeat is within the lease
    STALE = "stale"  # pending, and its owner's heartbeat is older than the lease (or missing),
    # or the owner is ourselves: a leftover of our own earlier life (take_over decides)


@dataclass(frozen=True)
class Claimed:
    state: ClaimState
    seen: Seen | None  # PUBLISHED only: the digest and receipt recorded
    owner: str | None  # who owns the row (us for NEW)
    digest: str | None = None  # the row's digest (pending rows too: tells a reuse from a retry)


@dataclass(frozen=True)
class Delivery:
    """One disclosure committed to a recipient's topic: ids, codes and times only."""

    referral_id: str
    agency: str  # the recipient
    purpose: str
    sender: str
    delivered_at: datetime
    due_at: datetime | None = None  # None: this purpose sets no acknowledgement deadline
    overdue_at: datetime | None = None  # when the sweep found it overdue (once)
    # ``StateStore.overdue`` only: when the recipient acknowledged it after all (late), if it has
    acknowledged_at: datetime | None = None


@dataclass(frozen=True)
class Fact:
    """One audit fact the ops view counts: a disclosure, refusal or acknowledgement."""

    type: str  # one of FACT_TYPES (the audit event's type)
    at: datetime
    message_id: str
    recipient: str
    sender: str | None = None
    purpose: str | None = None
    due_at: datetime | None = None
    acknowledged: bool = False  # on reading: an acknowledged fact exists for (message, recipient)


class StateStore(Protocol):
    """The broker's shared state; see the module docstring.

    Infrastructure failures raise ``schemas.errors.StateUnavailable`` (the web layer's 503),
    whose message names the store but never a password.
    """

    def describe(self) -> str:
        """Where the state lives, for ``cairn status`` and errors: a path, or PostgreSQL's
        user@host:port/database. Never a password."""
        ...

    async def open(self) -> None:
        """Connect and create or migrate the schema (idempotent, safe when several processes
        start at once). Every other method opens the store first if needed."""

    async def close(self) -> None: ...

    # --- claims: single use of referral ids across brokers -------------------------------

    async def claim(
        self, referral_id: str, digest: str, owner: str, now: datetime, lease: timedelta
    ) -> Claimed:
        """Insert a pending claim for ``referral_id`` unless a row exists, atomically across
        processes and machines; say what was found (``ClaimState``)."""
        ...

    async def take_over(
        self,
        referral_id: str,
        old_owner: str,
        new_owner: str,
        now: datetime,
        *,
        digest: str | None = None,
    ) -> bool:
        """Make a pending claim of ``old_owner`` ours (and its digest ``digest`` if given);
        False if it is no longer pending under ``old_owner`` (someone else won)."""
        ...

    async def published(self, items: Sequence[Published], owner: str, now: datetime) -> None:
        """Record that Kafka committed each referral, in one database transaction: a pending
        row gets its digest and receipt (and ``owner``); a missing row (learnt from Kafka's
        ledger) is inserted; a row that already has a receipt keeps its first one."""

    async def release(self, referral_ids: Sequence[str], owner: str) -> None:
        """Forget our own pending claims of these ids (the publish failed); others' rows and
        published rows are left alone."""

    async def lookup(self, referral_id: str) -> Seen | None:
        """The digest and receipt of a published referral id; None if unknown or pending."""
        ...

    async def heartbeat(self, owner: str, transactional_id: str, now: datetime) -> None:
        """Say ``owner`` (a broker instance) is alive at ``now`` with this transactional id."""

    async def holder(self, owner: str) -> tuple[str, datetime] | None:
        """``owner``'s transactional id and last heartbeat, if it ever beat."""
        ...

    async def lease(self, name: str, holder: str, now: datetime, ttl: timedelta) -> bool:
        """Hold the lease ``name`` (work one broker of the deployment does at a time, such as
        the overdue sweep) until ``now + ttl``: True if ``holder`` has it now (it was free,
        expired, or ``holder``'s already, then renewed), atomically across processes and
        machines; False while another holder's lease runs."""
        ...

    async def prune(self, now: datetime, window: timedelta) -> int:
        """Forget claims first seen, flow facts and heartbeats older than ``now - window``;
        return how many claims went."""
        ...

    # --- acknowledgements -----------------------------------------------------------------

    async def acknowledged(self, referral_id: str, agency: str) -> bool: ...

    async def remember_ack(self, referral_id: str, agency: str, at: datetime) -> bool:
        """Remember an acknowledgement; True if it is new (exactly one caller wins)."""
        ...

    async def acks(
        self, referral_ids: Sequence[str] | None = None
    ) -> dict[tuple[str, str], datetime]:
        """When each (referral, agency) was acknowledged; all of them, or those of some ids."""
        ...

    # --- deliveries and their deadlines ---------------------------------------------------

    async def record_deliveries(self, deliveries: Sequence[Delivery]) -> None:
        """Remember committed disclosures in one transaction; a repeat of the same (referral,
        agency) is ignored."""

    async def was_delivered(self, referral_id: str, agency: str) -> bool:
        """Whether a disclosure of ``referral_id`` to ``agency`` was committed (deliveries are
        kept when claims are pruned, so a view or deletion a year on still finds it)."""
        ...

    async def open_deliveries(self) -> list[Delivery]:
        """Deliveries with a deadline not marked overdue yet, earliest deadline first."""
        ...

    async def deliveries(self) -> list[Delivery]:
        """Every remembered delivery, oldest first."""
        ...

    async def delivery_counts(self) -> dict[tuple[str, str, str], int]:
        """Deliveries per (sender, recipient, purpose)."""
        ...

    async def delivery(self, referral_id: str, agency: str) -> Delivery | None:
        """The delivery of ``referral_id`` to ``agency``, if it was committed."""
        ...

    async def overdue(self, limit: int = 100) -> list[Delivery]:
        """Deliveries marked overdue, newest first, each with ``acknowledged_at`` set if the
        recipient acknowledged it late."""
        ...

    async def overdue_counts(self) -> dict[tuple[str, str, str], int]:
        """Deliveries marked overdue per (purpose, recipient, acknowledged), where acknowledged
        is ``OVERDUE_LATE`` (acknowledged after its deadline) or ``OVERDUE_NEVER`` (not yet).
        The one count of overdue disclosures: ``/metrics``, ``/ui/`` and ``cairn status`` all
        show this, and it matches the ``overdue`` audit events (``broker.ops.overdue``)."""
        ...

    async def mark_overdue(self, referral_id: str, agency: str, at: datetime) -> bool:
        """Mark a delivery overdue; False if it already was (so it is reported once)."""
        ...

    # --- flow facts for the ops view ------------------------------------------------------

    async def record_facts(self, facts: Sequence[Fact]) -> None:
        """Remember what a successful publish committed (one transaction)."""

    async def facts(self, since: datetime, limit: int) -> list[Fact]:
        """Disclosed and refused facts at or after ``since``, newest first, at most ``limit``,
        each with ``acknowledged`` set from the acknowledged facts of any time."""
        ...


def lease_expired(beat_at: datetime | None, now: datetime, lease: timedelta) -> bool:
    """True if a heartbeat at ``beat_at`` (None: never) is older than ``lease`` at ``now``."""
    return beat_at is None or beat_at < now - lease


def judge(
    row_owner: str | None,
    digest: str,
    receipt: str | None,
    beat_at: datetime | None,
    owner: str,
    now: datetime,
    lease: timedelta,
    *,
    claimed_at: datetime | None = None,
) -> Claimed:
    """The ``ClaimState`` of an existing row, the same for every store.

    A pending claim is STALE (to be settled against Kafka's ledger) when it is our own (no
    publish of ours is in flight for it: the pipeline holds the id's lock), when its owner's
    heartbeat is older than ``lease``, or when the claim itself is older than ``lease``: no
    publish takes that long, so its owner lives but lost track of it (Kafka never answered its
    commit).
    """
    if receipt is not None:
        return Claimed(ClaimState.PUBLISHED, Seen(digest, receipt), row_owner, digest)
    if (
        row_owner == owner
        or row_owner is None
        or lease_expired(beat_at, now, lease)
        or (claimed_at is not None and lease_expired(claimed_at, now, lease))
    ):
        return Claimed(ClaimState.STALE, None, row_owner, digest)
    return Claimed(ClaimState.BUSY, None, row_owner, digest)
