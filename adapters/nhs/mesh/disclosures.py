"""Disclosures to an NHS trust, delivered into the trust's own MESH mailbox (issue 16, inbound).

The trust's gateway opens each disclosure from Kafka and stores it once (``gateway.service``);
with MESH configured (``CAIRN_MESH_URL`` and ``CAIRN_MESH_TRUST_MAILBOX``) the store also makes
a MESH job for each referral in the same transaction (``gateway.store``, table ``gw_mesh``).
``DisclosureDelivery`` is the gateway's MESH channel: on every pass (``deliver_due``) it takes
the jobs that are due and

1. **sends** a job not yet sent: the disclosure as a FHIR message
   (``adapters.nhs.message.disclosure_message``: MessageHeader, the mapped resources, the
   broker's JWS as a Provenance) from the bridge's mailbox to the trust system's
   (``CAIRN_MESH_TRUST_MAILBOX``) under ``CAIRN_MESH_DISCLOSURE_WORKFLOW``, with MESH's
   ``local_id`` the referral id. The attempt is recorded before the request goes out and the
   MESH message id after MESH answers, so a job with a message id is never sent again, however
   often the gateway restarts. Only an attempt whose outcome is not known (the gateway died
   during the request, or MESH failed to answer) is repeated, with the same ``local_id`` and
   the same message (``Bundle.identifier`` included), so the trust can drop the repeat. A
   failed attempt is retried after a pause doubling from ``CAIRN_MESH_RETRY_INITIAL_S`` to
   ``CAIRN_MESH_RETRY_MAX_S``, and given up (``gateway.mesh_given_up``) after
   ``CAIRN_MESH_GIVE_UP_S``; the disclosure stays in the gateway's API and web inbox.
2. **tracks** a sent job every ``CAIRN_MESH_POLL_EVERY_S`` (MESH's outbox tracking): when MESH
   says the trust's system acknowledged the message (downloaded it and said so), the gateway
   acknowledges the disclosure (status ``filed``, by ``client:mesh``), signed with the trust's
   key, which the broker audits as ``acknowledged``; the job is then done. A message MESH
   reports ``undeliverable`` or in ``error`` is given up with that reason code.

Nothing here logs a body: referral ids, MESH message ids and reason codes only.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol
from uuid import UUID

import structlog

from adapters.nhs.mesh.client import FHIR_JSON, MeshError
from adapters.nhs.mesh.settings import MeshSettings
from adapters.nhs.message import disclosure_message
from gateway.service import Gateway
from gateway.store import GatewayStore, MeshJob
from schemas.receipt import AcknowledgementStatus

__all__ = ["ACKNOWLEDGED_BY", "SUBJECT", "DisclosureDelivery", "Outbox", "attach"]

log = structlog.get_logger(__name__)

Clock = Callable[[], datetime]
Acknowledge = Callable[[UUID], Awaitable[object]]

ACKNOWLEDGED_BY: Final = "client:mesh"  # who the gateway says acknowledged: the trust's MESH
SUBJECT: Final = "Cairn safeguarding disclosure"  # MESH's subject header: never personal data
_FAILED: Final = frozenset({"undeliverable", "error"})  # MESH statuses that will not change


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Outbox(Protocol):
    """What the delivery needs of the bridge's mailbox (``adapters.nhs.mesh.client``)."""

    async def send(
        self,
        recipient: str,
        body: bytes,
        workflow_id: str,
        *,
        local_id: str | None = None,
        subject: str | None = None,
        content_type: str = FHIR_JSON,
    ) -> str: ...

    async def track(self, message_id: str) -> dict[str, Any]: ...


class DisclosureDelivery:
    """The gateway's MESH channel; see the module docstring."""

    def __init__(
        self,
        store: GatewayStore,
        outbox: Outbox,
        *,
        sender_mailbox: str,
        trust_mailbox: str,
        workflow_id: str,
        acknowledge: Acknowledge,
        retry_initial_s: float = 5.0,
        retry_max_s: float = 300.0,
        give_up_s: float = 86_400.0,
        track_every_s: float = 30.0,
        batch: int = 100,
        clock: Clock = _utcnow,
        close: Callable[[], None] | None = None,
    ) -> None:
        self._store = store
        self._outbox = outbox
        self.sender_mailbox = sender_mailbox
        self.trust_mailbox = trust_mailbox
        self.workflow_id = workflow_id
        self._acknowledge = acknowledge
        self._initial_s = retry_initial_s
        self._max_s = max(retry_max_s, retry_initial_s)
        self._give_up = timedelta(seconds=give_up_s)
        self._track_every = timedelta(seconds=track_every_s)
        self._batch = batch
        self._clock = clock
        self._close = close
        self.sent = 0  # messages MESH took from this process
        self.acknowledged = 0  # disclosures acknowledged because MESH said the trust had
        self.failed_attempts = 0

    def _pause(self, attempts: int) -> timedelta:
        """The pause after the ``attempts``-th failed attempt (1, 2, ...)."""
        return timedelta(seconds=min(self._initial_s * 2 ** min(attempts - 1, 30), self._max_s))

    async def deliver_due(self) -> int:
        """Send or track every job that is due; how many were sent or acknowledged."""
        done = 0
        for job in await self._store.due_mesh(self._clock(), self._batch):
            if job.message_id is None:
                done += await self._send(job)
            else:
                done += await self._track(job, job.message_id)
        return done

    async def _send(self, job: MeshJob) -> int:
        rid = str(job.referral_id)
        stored = await self._store.get(job.referral_id)
        if stored is None:
            return 0  # deleted meanwhile (its job went with it)
        if job.sending_at is not None:
            log.warning("gateway.mesh_resend", referral_id=rid, attempts=job.attempts)
        message = disclosure_message(
            stored.disclosure(),
            signed=await self._store.signed(job.referral_id),
            received_at=stored.received_at,
            source_mailbox=self.sender_mailbox,
            destination_mailbox=self.trust_mailbox,
        )
        body = json.dumps(message, separators=(",", ":")).encode()
        await self._store.mesh_sending(job.referral_id, self._clock())
        try:
            message_id = await self._outbox.send(
                self.trust_mailbox,
                body,
                self.workflow_id,
                local_id=rid,
                subject=SUBJECT,
                content_type=FHIR_JSON,
            )
        except MeshError as exc:
            await self._failed(job, "mesh_send_failed", str(exc))
            return 0
        except Exception as exc:
            # Whatever else failed (mesh-client's own errors among them), the send is not known
            # to have succeeded: retried with backoff like any other failure, never a busy loop.
            await self._failed(job, "mesh_send_failed", type(exc).__name__)
            return 0
        now = self._clock()
        await self._store.mesh_sent(
            job.referral_id, message_id, at=now, next_at=now + self._track_every
        )
        self.sent += 1
        log.info(
            "gateway.mesh_sent", referral_id=rid, message_id=message_id, attempts=job.attempts + 1
        )
        return 1

    async def _failed(self, job: MeshJob, code: str, error: str) -> None:
        self.failed_attempts += 1
        rid = str(job.referral_id)
        now = self._clock()
        later = now + self._pause(job.attempts + 1)
        if later - job.first_at > self._give_up:
            log.error("gateway.mesh_given_up", referral_id=rid, reason=code, error=error)
            await self._store.mesh_later(job.referral_id, at=now, next_at=None, error=code)
        else:
            log.warning("gateway.mesh_retry", referral_id=rid, reason=code, error=error)
            await self._store.mesh_later(job.referral_id, at=now, next_at=later, error=code)

    async def _track(self, job: MeshJob, message_id: str) -> int:
        rid = str(job.referral_id)
        try:
            tracking = await self._outbox.track(message_id)
        except Exception as exc:  # MeshError, or anything else: look again later
            error = str(exc) if isinstance(exc, MeshError) else type(exc).__name__
            log.warning("gateway.mesh_track_failed", referral_id=rid, error=error)
            now = self._clock()
            await self._store.mesh_later(
                job.referral_id, at=now, next_at=now + self._track_every, error="mesh_track_failed"
            )
            return 0
        status = str(tracking.get("status") or "").lower()
        now = self._clock()
        if status == "acknowledged":
            # Acknowledge first: a stop before the job is marked only repeats a no-op.
            if await self._acknowledge(job.referral_id) is None:
                log.info("gateway.mesh_acknowledged_deleted", referral_id=rid)
            await self._store.mesh_acknowledged(job.referral_id, now)
            self.acknowledged += 1
            log.info("gateway.mesh_acknowledged", referral_id=rid, message_id=message_id)
            return 1
        if status in _FAILED:
            code = f"mesh_{status}"
            log.error("gateway.mesh_given_up", referral_id=rid, message_id=message_id, reason=code)
            await self._store.mesh_later(job.referral_id, at=now, next_at=None, error=code)
            return 0
        await self._store.mesh_later(
            job.referral_id, at=now, next_at=now + self._track_every, error=None
        )
        return 0

    async def close(self) -> None:
        if self._close is not None:
            self._close()


def attach(
    gateway: Gateway, settings: MeshSettings, *, clock: Clock = _utcnow
) -> DisclosureDelivery:
    """Make the trust's gateway deliver its referrals into the trust's MESH mailbox: a
    ``DisclosureDelivery`` over the bridge's mailbox, set as the gateway's MESH channel (before
    the gateway runs, so every referral it stores from then gets a job)."""
    from adapters.nhs.mesh.client import MeshMailbox

    if not settings.configured or settings.mailbox is None:
        raise ValueError("CAIRN_MESH_URL is not set")
    if settings.trust_mailbox is None:
        raise ValueError("set CAIRN_MESH_TRUST_MAILBOX: the trust system's mailbox for disclosures")
    mailbox = MeshMailbox(settings)

    async def acknowledge(referral_id: UUID) -> object:
        return await gateway.acknowledge(
            referral_id, status=AcknowledgementStatus.FILED, by=ACKNOWLEDGED_BY
        )

    delivery = DisclosureDelivery(
        gateway.store,
        mailbox,
        sender_mailbox=settings.mailbox,
        trust_mailbox=settings.trust_mailbox,
        workflow_id=settings.disclosure_workflow,
        acknowledge=acknowledge,
        retry_initial_s=settings.retry_initial_s,
        retry_max_s=settings.retry_max_s,
        give_up_s=settings.give_up_s,
        track_every_s=settings.poll_every_s,
        batch=settings.batch_max,
        clock=clock,
        close=mailbox.close,
    )
    gateway.mesh = delivery
    return delivery
