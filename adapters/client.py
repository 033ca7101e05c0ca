"""The sending side of an agency adapter: sign a referral, submit it over mutual TLS, get a receipt.

The adapter signs the referral JSON as a compact JWS with its agency's signing key (the signed
``iat`` header is the time of this submission) and posts it as ``application/jose`` with its TLS
client certificate. Problem details from the broker come back as ``SubmissionRefused`` (the
input must change) or ``TransportError`` (nothing was sent; the same submission may be retried).

``send`` says as well whether the broker had accepted the same referral before (HTTP 200: its
original receipt, and nothing was sent again) or accepted it now (202), which is what lets an
import be run again safely: what went the first time is reported as already sent, with the
receipt it got then.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp

from keys import SigningKey, sign_referral
from schemas.encompass import EncompassNotification
from schemas.errors import InputError, TransportError
from schemas.receipt import Receipt
from schemas.referral import Referral

__all__ = ["ReferralClient", "SubmissionRefused", "Submitted"]


class SubmissionRefused(InputError):
    """The broker refused the referral; ``problem`` is its RFC 9457 body."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        super().__init__(f"{status} {problem.get('title', 'refused')}: {problem.get('detail', '')}")
        self.status = status
        self.problem = problem


@dataclass(frozen=True)
class Submitted:
    """The broker's answer to an accepted submission."""

    receipt: Receipt
    #: True when the broker had accepted this same referral (same id, same content) before:
    #: ``receipt`` is the original one and nothing was sent now (HTTP 200, not 202).
    already_sent: bool


class ReferralClient:
    """Submits signed referrals to one broker over HTTPS with a client certificate."""

    def __init__(
        self,
        base_url: str,
        *,
        ssl_context: ssl.SSLContext | None,
        signing_key: SigningKey | None,
        timeout_s: float = 30.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._ssl = ssl_context
        self._key = signing_key
        self._clock = clock
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ReferralClient:
        connector = aiohttp.TCPConnector(ssl=self._ssl if self._ssl is not None else False)
        self._session = aiohttp.ClientSession(timeout=self._timeout, connector=connector)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    def sign(self, referral: Referral | EncompassNotification | bytes) -> bytes:
        """The referral as the compact JWS this client would send."""
        if self._key is None:
            raise RuntimeError("this client has no signing key")
        payload = referral if isinstance(referral, bytes) else referral.model_dump_json().encode()
        return sign_referral(payload, self._key, issued_at=self._clock())

    async def submit(self, referral: Referral | EncompassNotification | bytes) -> Receipt:
        """Sign and submit; return the receipt, raise SubmissionRefused or TransportError."""
        return (await self.send(referral)).receipt

    async def send(self, referral: Referral | EncompassNotification | bytes) -> Submitted:
        """Sign and submit; the receipt and whether it was sent before (see ``Submitted``)."""
        return await self._post(self.sign(referral), content_type="application/jose")

    async def post_raw(self, body: bytes, *, content_type: str) -> Receipt:
        """Post ``body`` as it is (tests use it to send what a real adapter never would)."""
        return (await self._post(body, content_type=content_type)).receipt

    async def _post(self, body: bytes, *, content_type: str) -> Submitted:
        if self._session is None:
            raise RuntimeError("use ReferralClient as 'async with'")
        try:
            async with self._session.post(
                f"{self._base_url}/v1/referrals",
                data=body,
                headers={"Content-Type": content_type},
            ) as response:
                text = await response.text()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransportError(
                f"cannot reach the broker at {self._base_url}: {type(exc).__name__}"
            ) from exc
        if status in (200, 202):
            return Submitted(Receipt.model_validate_json(text), already_sent=status == 200)
        try:
            problem = json.loads(text)
        except json.JSONDecodeError:
            problem = {"title": "unexpected response", "detail": f"HTTP {status}"}
        if status >= 500:
            raise TransportError(f"{status} {problem.get('title')}: {problem.get('detail')}")
        raise SubmissionRefused(status, problem)
