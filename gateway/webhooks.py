"""Webhooks: each new disclosure POSTed to the agency's case system, signed, until it says 2xx.

The signature is the Standard Webhooks scheme (https://www.standardwebhooks.com/): headers
``webhook-id`` (the referral id: the same on every retry, so a receiver that sees it twice
knows it has it), ``webhook-timestamp`` (Unix seconds) and ``webhook-signature``
(``v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>" under the shared secret>``). Chosen over a
detached JWS because the receiver is the agency's own system, which shares a secret with its own
gateway anyway; the check is a few lines with any HMAC library (or one of the scheme's own
libraries, in a dozen languages), needs no key distribution or JOSE, and the timestamp inside
the MAC bounds replays. The disclosure in the body is still the broker-signed content the
gateway verified.

The body: ``{"type": "disclosure.received", "timestamp": ..., "data": {referral_id,
received_at, sender, purpose, kind, disclosure}}``.

Delivery state lives in the store (``gateway.store``: one job per disclosure, created with it),
so a restart neither loses a delivery nor repeats one already answered 2xx. An attempt that gets
anything but a 2xx (or no answer within ``webhook_timeout_s``) is tried again after a pause
doubling from ``webhook_retry_initial_s`` to ``webhook_retry_max_s``; after
``webhook_give_up_s`` from the first attempt the job is given up (``gateway.webhook_given_up``)
and the disclosure stays in the API for the case system to fetch.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import ssl
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Final

import aiohttp
import structlog

from gateway.store import GatewayStore, Stored, WebhookJob

__all__ = ["Dispatcher", "sign", "verify"]

log = structlog.get_logger(__name__)

Clock = Callable[[], datetime]
BATCH: Final = 50


def _utcnow() -> datetime:
    return datetime.now(UTC)


def sign(secret: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one message."""
    mac = hmac.new(secret, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def verify(
    secret: bytes, headers: dict[str, str], body: bytes, *, now: int, tolerance_s: int = 300
) -> bool:
    """What a receiver checks: a ``v1`` signature over the id, timestamp and body, recent."""
    try:
        msg_id = headers["webhook-id"]
        timestamp = int(headers["webhook-timestamp"])
        given = headers["webhook-signature"].split()
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance_s:
        return False
    expected = sign(secret, msg_id, timestamp, body)
    return any(hmac.compare_digest(expected, g) for g in given)


def body_of(stored: Stored, now: datetime) -> bytes:
    return json.dumps(
        {
            "type": "disclosure.received",
            "timestamp": now.isoformat(),
            "data": {
                "referral_id": str(stored.referral_id),
                "received_at": stored.received_at.isoformat(),
                "sender": stored.sender,
                "purpose": stored.purpose,
                "kind": stored.kind,
                "disclosure": json.loads(stored.body),
            },
        },
        separators=(",", ":"),
    ).encode()


class Dispatcher:
    """Delivers the store's due webhook jobs to one URL; see the module docstring."""

    def __init__(
        self,
        store: GatewayStore,
        url: str,
        secret: bytes,
        *,
        timeout_s: float = 10.0,
        retry_initial_s: float = 1.0,
        retry_max_s: float = 300.0,
        give_up_s: float = 86_400.0,
        ssl_context: ssl.SSLContext | None = None,
        clock: Clock = _utcnow,
    ) -> None:
        self._store = store
        self.url = url
        self._secret = secret
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._initial_s = retry_initial_s
        self._max_s = max(retry_max_s, retry_initial_s)
        self._give_up = timedelta(seconds=give_up_s)
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self.delivered = 0
        self.failed_attempts = 0

    def _pause(self, attempts: int) -> timedelta:
        """The pause after the ``attempts``-th failed attempt (1, 2, ...)."""
        return timedelta(seconds=min(self._initial_s * 2 ** min(attempts - 1, 30), self._max_s))

    async def deliver_due(self) -> int:
        """Attempt every job that is due; how many were delivered."""
        now = self._clock()
        delivered = 0
        for job in await self._store.due_webhooks(now, BATCH):
            if await self._attempt(job):
                delivered += 1
        return delivered

    async def _attempt(self, job: WebhookJob) -> bool:
        stored = await self._store.get(job.referral_id)
        if stored is None:
            return False  # deleted meanwhile (its job went with it)
        now = self._clock()
        body = body_of(stored, now)
        msg_id = str(job.referral_id)
        stamp = int(now.timestamp())
        headers = {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(stamp),
            "webhook-signature": sign(self._secret, msg_id, stamp, body),
        }
        status: int | None = None
        try:
            session = self._session_open()
            async with session.post(self.url, data=body, headers=headers, ssl=self._ssl) as answer:
                status = answer.status
                await answer.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("gateway.webhook_unanswered", referral_id=msg_id, error=type(exc).__name__)
        attempts = job.attempts + 1
        if status is not None and 200 <= status < 300:
            await self._store.webhook_attempted(
                job.referral_id, status=status, at=self._clock(), delivered=True, next_at=None
            )
            self.delivered += 1
            log.info("gateway.webhook_delivered", referral_id=msg_id, attempts=attempts)
            return True
        self.failed_attempts += 1
        later = self._clock() + self._pause(attempts)
        if later - job.first_at > self._give_up:
            log.error(
                "gateway.webhook_given_up", referral_id=msg_id, attempts=attempts, status=status
            )
            next_at = None
        else:
            log.warning(
                "gateway.webhook_retry", referral_id=msg_id, attempts=attempts, status=status
            )
            next_at = later
        await self._store.webhook_attempted(
            job.referral_id, status=status, at=self._clock(), delivered=False, next_at=next_at
        )
        return False

    def _session_open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
