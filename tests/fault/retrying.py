"""A sender that keeps retrying, as a real agency adapter must when the broker crashes under it.

Each referral is signed once and the very same bytes are posted on every try: that is what a
client does that lost the broker's answer, and the broker's replay rule must turn such a retry
into the first receipt (200) or a first acceptance (202), never a second disclosure. A try is
repeated on what says "nothing happened, or you cannot know": a connection refused or reset, a
timeout, 408, 429, 502, 503, 504. Anything else is final and reported as it came. Every loop is
bounded: tries per referral, seconds per referral, seconds per try.
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

__all__ = ["Attempt", "Outcome", "RetryingClient", "Submission"]

RETRY_STATUSES = frozenset({408, 429, 502, 503, 504})


@dataclass(frozen=True)
class Submission:
    referral_id: str
    sender: str  # the agency whose TLS certificate posts it (and whose key signed it)
    body: bytes  # the compact JWS, identical on every try


@dataclass(frozen=True)
class Attempt:
    """One try, as the client saw it (kept only if the client is given an ``attempt_log``)."""

    referral_id: str
    started: float  # time.monotonic() when the request was sent
    ended: float  # ... and when its answer or error came
    result: str  # the HTTP status ("202", "503") or the exception's class name


@dataclass
class Outcome:
    referral_id: str
    status: int | None = None  # the final HTTP status; None if it never got one
    receipt: dict[str, Any] | None = None  # the body of a 200 or 202
    detail: str = ""  # what a final refusal said (its problem type and title)
    attempts: int = 0
    retried_on: Counter[str] = field(default_factory=Counter)  # why it was tried again

    @property
    def accepted(self) -> bool:
        return self.status in (200, 202) and self.receipt is not None

    @property
    def receipt_for(self) -> str | None:
        """The referral id the final receipt names."""
        return None if self.receipt is None else str(self.receipt.get("referral_id"))

    def queued(self) -> set[str]:
        """The recipients the final receipt says a disclosure was queued for."""
        if self.receipt is None:
            return set()
        return {
            r["agency"] for r in self.receipt.get("recipients", ()) if r.get("status") == "queued"
        }


@dataclass
class RetryingClient:
    base_url: str
    ssl_contexts: dict[str, ssl.SSLContext]  # one client certificate per sending agency
    concurrency: int = 8
    attempt_timeout_s: float = 30.0
    max_attempts: int = 300
    give_up_after_s: float = 180.0  # per referral
    backoff_s: tuple[float, float] = (0.05, 1.0)  # first and largest pause between tries
    accepted: int = 0  # referrals with a final 200/202 so far (the fault injector watches it)
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    attempt_log: list[Attempt] | None = None  # every try, in order, if a list is given

    async def send_all(self, submissions: Sequence[Submission]) -> dict[str, Outcome]:
        queue: asyncio.Queue[Submission] = asyncio.Queue()
        for s in submissions:
            queue.put_nowait(s)
        timeout = aiohttp.ClientTimeout(total=self.attempt_timeout_s)
        sessions = {
            agency: aiohttp.ClientSession(
                timeout=timeout, connector=aiohttp.TCPConnector(ssl=context)
            )
            for agency, context in self.ssl_contexts.items()
        }
        try:
            workers = [
                asyncio.create_task(self._worker(queue, sessions)) for _ in range(self.concurrency)
            ]
            await asyncio.gather(*workers)
        finally:
            for session in sessions.values():
                await session.close()
        return self.outcomes

    async def _worker(
        self, queue: asyncio.Queue[Submission], sessions: dict[str, aiohttp.ClientSession]
    ) -> None:
        while True:
            try:
                submission = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            outcome = await self._send(submission, sessions[submission.sender])
            self.outcomes[submission.referral_id] = outcome
            if outcome.accepted:
                self.accepted += 1

    async def _send(self, submission: Submission, session: aiohttp.ClientSession) -> Outcome:
        outcome = Outcome(submission.referral_id)
        deadline = time.monotonic() + self.give_up_after_s
        pause = self.backoff_s[0]
        while outcome.attempts < self.max_attempts and time.monotonic() < deadline:
            outcome.attempts += 1
            started = time.monotonic()
            try:
                async with session.post(
                    f"{self.base_url}/v1/referrals",
                    data=submission.body,
                    headers={"Content-Type": "application/jose"},
                ) as response:
                    status = response.status
                    text = await response.text()
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                outcome.retried_on[type(exc).__name__] += 1
                self._note(submission, started, type(exc).__name__)
            else:
                self._note(submission, started, str(status))
                outcome.status = status
                if status in (200, 202):
                    outcome.receipt = json.loads(text)
                    return outcome
                if status not in RETRY_STATUSES:
                    outcome.detail = _problem(text)
                    return outcome
                outcome.retried_on[str(status)] += 1
            await asyncio.sleep(pause * random.uniform(0.5, 1.0))  # noqa: S311 - jitter
            pause = min(pause * 2, self.backoff_s[1])
        outcome.detail = f"gave up after {outcome.attempts} tries"
        return outcome

    def _note(self, submission: Submission, started: float, result: str) -> None:
        if self.attempt_log is not None:
            self.attempt_log.append(
                Attempt(submission.referral_id, started, time.monotonic(), result)
            )


def _problem(text: str) -> str:
    try:
        body = json.loads(text)
    except json.JSONDecodeError:
        return text[:200]
    if not isinstance(body, dict):
        return text[:200]
    return f"{body.get('type', '')} {body.get('title', '')}".strip()
