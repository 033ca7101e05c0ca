"""The sending side of an agency adapter: submit a referral to the broker, get a receipt.

Problem details from the broker come back as ``SubmissionRefused`` (the input must change) or
``TransportError`` (nothing was sent; the same submission may be retried).
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from schemas.errors import InputError, TransportError
from schemas.receipt import Receipt
from schemas.referral import Referral

__all__ = ["ReferralClient", "SubmissionRefused"]


class SubmissionRefused(InputError):
    """The broker refused the referral; ``problem`` is its RFC 9457 body."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        super().__init__(f"{status} {problem.get('title', 'refused')}: {problem.get('detail', '')}")
        self.status = status
        self.problem = problem


class ReferralClient:
    """Submits referrals to one broker over HTTP(S)."""

    def __init__(self, base_url: str, *, timeout_s: float = 30.0) -> None:
        self._base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ReferralClient:
        self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def submit(self, referral: Referral | bytes) -> Receipt:
        """Submit; return the receipt on 202, raise SubmissionRefused or TransportError."""
        if self._session is None:
            raise RuntimeError("use ReferralClient as 'async with'")
        body = referral if isinstance(referral, bytes) else referral.model_dump_json().encode()
        try:
            async with self._session.post(
                f"{self._base_url}/v1/referrals",
                data=body,
                headers={"Content-Type": "application/json"},
            ) as response:
                text = await response.text()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransportError(
                f"cannot reach the broker at {self._base_url}: {type(exc).__name__}"
            ) from exc
        if status == 202:
            return Receipt.model_validate_json(text)
        try:
            problem = json.loads(text)
        except json.JSONDecodeError:
            problem = {"title": "unexpected response", "detail": f"HTTP {status}"}
        if status >= 500:
            raise TransportError(f"{status} {problem.get('title')}: {problem.get('detail')}")
        raise SubmissionRefused(status, problem)
