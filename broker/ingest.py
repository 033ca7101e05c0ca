"""The ingest pipeline: authenticate → validate → replay → decide → seal → audit → publish.

Each stage is a separate step so that later capabilities (sharing agreements, audit) replace one
stage without touching the others. A submission is accepted only when every record it produced
has been committed to Kafka; only then is its referral id remembered as used.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from uuid import UUID

import structlog

from broker.config import Settings
from broker.envelope import seal
from broker.kafka.ledger import AlreadyPublished, Claim, LedgerEntry
from broker.kafka.transport import OutcomeUnknown, Transport
from broker.ops.metrics import Metrics, code
from broker.policy.agreements import Agreement
from broker.policy.calendar import WEEKDAYS, SchoolCalendar
from broker.policy.deadlines import deadline_for
from broker.policy.decide import decide
from broker.policy.decision import Decision, Routing, routing
from broker.receipts import audit_record
from broker.state import ClaimState, Delivery, StateStore
from broker.trust import TrustStore
from keys import Registry, verify_referral
from keys import VerificationError as KeyVerificationError
from keys.jose import HeaderBounds
from schemas.audit import disclosure_digest_of, submission_events
from schemas.encompass import EncompassNotification
from schemas.errors import (
    ReplayError,
    SenderMismatch,
    SigningUnavailable,
    TransportError,
    UnknownSender,
)
from schemas.federation import Federation
from schemas.receipt import Receipt, RecipientReceipt, RecipientStatus
from schemas.referral import Referral
from schemas.submission import check_not_future, decode_submission, submission_digest

__all__ = ["Outcome", "Pipeline", "receipt_for"]

log = structlog.get_logger(__name__)

_MAX_CLAIM_ROUNDS = 1000  # claim attempts per submission (the deadline usually ends it first)
_BUSY_POLL_S = 0.05  # seconds between looks at a claim another broker is publishing


def receipt_for(message_id: UUID, accepted_at: datetime, decisions: Iterable[Decision]) -> Receipt:
    """The broker's receipt for an accepted submission: each recipient queued or refused, with
    the policy's reason codes (never its words: a receipt goes back to the sender)."""
    return Receipt(
        referral_id=message_id,
        accepted_at=accepted_at,
        recipients=tuple(
            RecipientReceipt(
                agency=d.recipient,
                status=RecipientStatus.QUEUED if d.allowed else RecipientStatus.REFUSED,
                reasons=d.reasons,
            )
            for d in decisions
        ),
    )


@dataclass(frozen=True)
class Outcome:
    receipt: Receipt
    replayed: bool  # True: an earlier identical submission's receipt; nothing was sent now


@dataclass
class Pipeline:
    settings: Settings
    federation: Federation
    transport: Transport
    trust: TrustStore
    store: StateStore
    clock: Callable[[], datetime]
    agreements: tuple[Agreement, ...] = ()
    calendar: SchoolCalendar = WEEKDAYS
    metrics: Metrics = field(default_factory=Metrics)
    # One submission of an id at a time in this process, with how many wait for it.
    _locks: dict[str, tuple[asyncio.Lock, int]] = field(
        default_factory=dict, init=False, repr=False
    )
    _beat_at: float = field(default=float("-inf"), init=False, repr=False)

    async def submit(self, body: bytes, *, sender: str, request_id: str) -> Outcome:
        """Run every stage for one signed submission from the TLS-authenticated ``sender``."""
        now = self.clock()
        # 1 authenticate: the TLS identity is a member, and it signed this referral recently.
        with self.metrics.stage("verify"):
            registry = self.trust.registry()
            if registry.member(sender) is None:
                raise UnknownSender(f"'{sender}' is not a member of the federation registry")
            payload = verify_referral(
                body,
                registry,
                sender=sender,
                now=now,
                max_bytes=self.settings.max_body_bytes,
                max_age=timedelta(seconds=self.settings.max_signature_age_s),
                clock_skew=timedelta(seconds=self.settings.max_clock_skew_s),
                bounds=HeaderBounds(
                    max_bytes=self.settings.max_jose_header_bytes,
                    max_depth=self.settings.max_json_depth,
                    max_integer=self.settings.max_json_integer,
                ),
            )
        # 2 validate: a well-formed referral (or Encompass notice), dated no later than our
        #   clock allows, whose sender is the authenticated one.
        with self.metrics.stage("validate"):
            message = decode_submission(payload, max_depth=self.settings.max_json_depth)
            check_not_future(message, now + timedelta(seconds=self.settings.max_clock_skew_s))
            route = routing(message)
        referral_id = str(route.message_id)
        structlog.contextvars.bind_contextvars(referral_id=referral_id)
        if route.sender != sender:
            raise SenderMismatch(
                f"the message names '{route.sender}' as sender but was sent and "
                f"signed by '{sender}'"
            )
        # 3 replay: the id is single-use across every broker. The shared store's claim says
        #   whether it is new, published (an identical resubmission gets its first receipt),
        #   being published by another broker (wait for it), or left unsettled by a broker that
        #   died or lost Kafka's answer (settle it against Kafka's ledger, broker.kafka.ledger).
        #   "Identical" is the content (schemas.submission.submission_digest), never the JWS:
        #   the same referral signed again later (another iat, another signature) is a retry.
        digest = submission_digest(message)
        lock, users = self._locks.get(referral_id, (asyncio.Lock(), 0))
        self._locks[referral_id] = (lock, users + 1)
        try:
            async with lock:
                return await self._claimed(
                    _Submission(message, route, registry, request_id, now, digest)
                )
        finally:
            lock, users = self._locks[referral_id]
            if users == 1:
                del self._locks[referral_id]
            else:
                self._locks[referral_id] = (lock, users - 1)

    async def _claimed(self, sub: _Submission) -> Outcome:
        """Claim the referral id in the shared store, then publish, replay or wait."""
        referral_id, digest = sub.referral_id, sub.digest
        owner = self.settings.transactional_id
        lease = timedelta(seconds=self.settings.claim_lease_s)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.publish_timeout_s
        for _ in range(_MAX_CLAIM_ROUNDS):  # bounded in count, and by the deadline below
            await self._beat(owner)
            claimed = await self.store.claim(referral_id, digest, owner, self.clock(), lease)
            if claimed.seen is not None:  # published: a retry (or a reuse) of a committed id
                first = claimed.seen
                return self._replayed(referral_id, digest, first.digest, first.receipt)
            if claimed.state is not ClaimState.NEW and claimed.digest not in (None, digest):
                raise _reused(referral_id)
            if claimed.state is ClaimState.BUSY:
                # Another broker is publishing this id now: its receipt is ours to return.
                if loop.time() > deadline:
                    raise TransportError(
                        "another broker is still publishing this referral id; nothing was "
                        "sent by this one, retry the same submission later"
                    )
                await asyncio.sleep(_BUSY_POLL_S)
                continue
            unsettled_by = None
            if claimed.state is ClaimState.STALE:
                previous = claimed.owner or owner
                unsettled_by = await self._publisher_of(previous)
                if not await self.store.take_over(
                    referral_id, previous, owner, self.clock(), digest=digest
                ):
                    continue  # another broker took it over first: ask again
            return await self._publish_claimed(sub, unsettled_by)
        raise TransportError(
            "the referral id's claim kept changing hands; nothing was sent, retry later"
        )

    async def _publish_claimed(self, sub: _Submission, unsettled_by: str | None) -> Outcome:
        referral_id, digest, now = sub.referral_id, sub.digest, sub.now
        owner = self.settings.transactional_id
        try:
            receipt, receipt_json = await self._deliver(sub, unsettled_by)
        except AlreadyPublished as exc:
            # Published before, by a broker that died (or lost Kafka's answer) before saying so.
            entry = LedgerEntry.decode(exc.value)
            await self.store.published([(referral_id, entry.digest, entry.receipt)], owner, now)
            return self._replayed(referral_id, digest, entry.digest, entry.receipt)
        except OutcomeUnknown:
            # The records may be visible: the claim stays ours, pending, for the retry to
            # settle against the ledger.
            raise
        except BaseException:
            # Nothing was sent: the id is free again for the sender's retry, on any broker.
            with contextlib.suppress(Exception):
                await self.store.release([referral_id], owner)
            raise
        await self.store.published([(referral_id, digest, receipt_json)], owner, now)
        return Outcome(receipt, replayed=False)

    async def _beat(self, owner: str) -> None:
        """Tell the other brokers we live (at most every third of the lease), so that our
        pending claims are waited for rather than settled."""
        loop = asyncio.get_running_loop()
        if loop.time() - self._beat_at < self.settings.claim_lease_s / 3:
            return
        await self.store.heartbeat(owner, self.transport.publisher_id(), self.clock())
        self._beat_at = loop.time()

    async def _publisher_of(self, owner: str) -> str:
        """The transactional id ``owner`` publishes claimed referrals with (its last
        heartbeat says; ours we know)."""
        if owner == self.settings.transactional_id:
            return self.transport.publisher_id()
        held = await self.store.holder(owner)
        return held[0] if held is not None else f"{owner}.claims"

    def _replayed(self, referral_id: str, digest: str, first: str, receipt: str) -> Outcome:
        if first != digest:
            raise _reused(referral_id)
        log.info("referral.replayed")
        self.metrics.replayed.inc()
        return Outcome(Receipt.model_validate_json(receipt), replayed=True)

    async def _deliver(
        self, sub: _Submission, unsettled_by: str | None = None
    ) -> tuple[Receipt, str]:
        """Decide, seal, audit and publish; the receipt, and its JSON as the ledger keeps it."""
        message, route, registry, now = sub.message, sub.route, sub.registry, sub.now
        request_id, digest = sub.request_id, sub.digest
        # 4 decide
        with self.metrics.stage("decide"):
            decisions = decide(
                message,
                self.federation,
                agreements=self.agreements,
                now=now,
                max_recipients=self.settings.max_recipients,
                can_receive=lambda agency: _can_receive(registry, agency, now),
                calendar=self.calendar,
                route=route,
            )
        allowed = [d for d in decisions if d.allowed]
        # 5 seal: sign with the broker's key, encrypt to each recipient's key.
        broker_key = self.trust.signing_key()  # SigningUnavailable (503) if ours is unusable
        try:
            with self.metrics.stage("seal"):
                records = [
                    seal(
                        message,
                        d,
                        topic_prefix=self.settings.topic_prefix,
                        request_id=request_id,
                        broker_key=broker_key,
                        registry=registry,
                        now=now,
                        route=route,
                        acknowledge_by=deadline_for(message, d, self.settings, now),
                    )
                    for d in allowed
                ]
        except KeyVerificationError as exc:
            # Recipients were checked in decide; what fails here is ours, never the sender's.
            log.error("seal.failed", reason=exc.reason.value)
            raise SigningUnavailable(
                f"the broker could not seal the disclosures ({exc.reason.value}); "
                "nothing was sent, retry later"
            ) from None
        # 6 audit: received, decided, then disclosed or refused per recipient, in the same
        #   Kafka transaction as the disclosures: no disclosure without its audit event.
        events = submission_events(
            message,
            decisions,
            secret=self.trust.pseudonym_secret(),
            at=now,
            request_id=request_id,
            # Each disclosed event names the SHA-256 of the JWE bytes its recipient is sent.
            disclosure_digests={
                d.recipient: disclosure_digest_of(r.value)
                for d, r in zip(allowed, records, strict=True)
            },
        )
        records += [audit_record(self.settings.topic_prefix, e) for e in events]
        receipt = receipt_for(route.message_id, now, decisions)
        # 7 publish: every record and the ledger's "published" in one transaction, unless the
        #   ledger already has this id (AlreadyPublished); else TransportError.
        receipt_json = receipt.model_dump_json()  # the ledger's and the store's, made once
        kept = LedgerEntry(digest, receipt_json).encode()
        claim = Claim(str(route.message_id), kept, unsettled_by=unsettled_by)
        with self.metrics.stage("publish"):
            await self.transport.publish(records, claim=claim)
        await self._committed(message, route, decisions, now)
        log.info(
            "referral.accepted",
            sender=route.sender,
            purpose=route.purpose.value,
            recipients=[d.recipient for d in allowed],
            refused=[d.recipient for d in decisions if not d.allowed],
        )
        return receipt, receipt_json

    async def _committed(
        self,
        message: Referral | EncompassNotification,
        route: Routing,
        decisions: list[Decision],
        now: datetime,
    ) -> None:
        """Count what Kafka committed, and remember each disclosure with its deadline."""
        sender, purpose = route.sender, route.purpose.value
        delivered = []
        self.metrics.accepted.labels(sender=sender, purpose=purpose).inc()
        for d in decisions:
            if not d.allowed:
                for reason in d.reasons or ("unspecified",):
                    self.metrics.withheld.labels(
                        sender=sender, recipient=d.recipient, purpose=purpose, reason=code(reason)
                    ).inc()
                continue
            self.metrics.disclosures.labels(
                sender=sender, recipient=d.recipient, purpose=purpose
            ).inc()
            delivered.append(
                Delivery(
                    referral_id=str(route.message_id),
                    agency=d.recipient,
                    purpose=purpose,
                    sender=sender,
                    delivered_at=now,
                    due_at=deadline_for(message, d, self.settings, now),
                )
            )
        await self.store.record_deliveries(delivered)


@dataclass(frozen=True)
class _Submission:
    """One verified, validated submission on its way through the claim and publish stages."""

    message: Referral | EncompassNotification
    route: Routing
    registry: Registry
    request_id: str
    now: datetime
    digest: str  # schemas.submission.submission_digest: the message's content, not its JWS

    @property
    def referral_id(self) -> str:
        return str(self.route.message_id)


def _reused(referral_id: str) -> ReplayError:
    # Said to an integrator whose system re-sent an id it sent before: the usual cause is a
    # source record changed since, or content built from the clock. A new id would make a
    # second referral about the same incident, so the message never advises one.
    return ReplayError(
        f"referral id {referral_id} was accepted before with different content, and one id "
        "cannot carry two versions of a referral; nothing was sent now. If this is a resend of "
        "that referral, it must carry exactly what was first sent: check whether the source "
        "record (or what your system builds from it, such as a time of sending) has changed "
        "since, and tell the recipients of a correction through the partnership's agreed "
        "contact. If it is another referral, your system has given it an id already used: "
        "check how it makes ids"
    )


def _can_receive(registry: Registry, agency: str, now: datetime) -> bool:
    """True if the registry has an encryption key for ``agency`` that we may use now."""
    try:
        registry.encryption_key(agency, now=now)
    except KeyVerificationError:
        return False
    return True
