"""What the broker's health shows beyond readiness: the auditor, the registry's and the
certificates' expiry, and the school calendar's end (issue 18).

None of these makes the broker not ready (``/readyz`` gates on what stops it taking referrals:
Kafka, the registry trusted now, its signing key); each says what will stop something soon, or
has: an auditor that does not answer or has not signed a checkpoint lately, a registry or a
certificate about to expire, term dates that run out, after which Operation Encompass
deadlines can no longer be computed from the calendar and follow the conservative rule
(``broker.policy.calendar.CONSERVATIVE_RULE``).

- ``AuditorProbe``: asks the auditor's public checkpoint route (C2SP tlog-tiles, ``GET
  /v1/audit/log/checkpoint``; public, so no client certificate), the same route ``cairn
  status`` asks, and its public status route (``GET /v1/audit/status``,
  ``broker.audit.service.Auditor.status``), bounded in time and cached a few seconds: whether
  it answers, its tree size, and the auditor's own figures (its lag behind the audit topic,
  its latest checkpoint's age, the witnesses' forks and cosigned sizes), which the broker's
  ``/metrics`` shows (``broker.ops.metrics``). Nothing is read from the auditor's files: the
  broker and the auditor need not share a disk. An auditor that does not answer has no figures.
- ``soonest``: of (kind, subject, seconds left) credentials, the one of the given kinds that
  expires first (``REGISTRY_KINDS``, ``CERTIFICATE_KINDS``: ``keys.expiry.CredentialKind``).
- ``horizons``: the ops view's JSON of all four (``broker.web.dashboard``); ``expiry_text``
  and ``calendar_text``: the same as one line each, for ``cairn status``.

Codes, component names, agency ids, times and counts only: nothing here names a person.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Final

from broker.config import Settings, https_url
from broker.policy.calendar import CONSERVATIVE_RULE
from broker.trust import TrustStore
from keys.expiry import CredentialKind
from keys.store import CA_CERT

__all__ = [
    "AUDITOR_CHECKPOINT_PATH",
    "AUDITOR_STATUS_PATH",
    "CERTIFICATE_KINDS",
    "REGISTRY_KINDS",
    "AuditorAnswer",
    "AuditorProbe",
    "auditor_probe",
    "calendar_text",
    "expiry_text",
    "horizons",
    "ops_horizons",
    "soonest",
    "status_answer",
]

AUDITOR_CHECKPOINT_PATH: Final = "/v1/audit/log/checkpoint"
AUDITOR_STATUS_PATH: Final = "/v1/audit/status"
REGISTRY_KINDS: Final = frozenset({CredentialKind.REGISTRY.value})
#: Every X.509 certificate the deployment depends on (keys are not certificates).
CERTIFICATE_KINDS: Final = frozenset(
    k.value
    for k in (
        CredentialKind.CA,
        CredentialKind.TLS_SERVER,
        CredentialKind.MEMBER_TLS,
        CredentialKind.KAFKA_CA,
        CredentialKind.KAFKA_CLIENT,
    )
)
_DAY_S: Final = 86_400
_RULE: Final = CONSERVATIVE_RULE
_MAX_CHECKPOINT_BYTES: Final = 65_536  # a checkpoint note is a few hundred bytes
_MAX_STATUS_BYTES: Final = 262_144  # a few numbers per witness


Expiring = tuple[str, str, float]  # (kind, subject, seconds left; negative: expired)


def soonest(items: Iterable[Expiring], kinds: Collection[str]) -> Expiring | None:
    """The credential of one of ``kinds`` that expires first (or expired longest ago)."""
    found = [i for i in items if i[0] in kinds]
    return min(found, key=lambda i: i[2]) if found else None


def _span(seconds: float) -> str:
    days, rest = divmod(abs(seconds), _DAY_S)
    return f"{int(days)} d {int(rest // 3600)} h"


def expiry_text(item: Expiring | None, warn_days: int) -> str:
    """One line: which credential expires first and when, and whether to act."""
    if item is None:
        return "none found"
    kind, subject, seconds = item
    if seconds <= 0:
        return f"EXPIRED {_span(seconds)} ago ({kind} {subject})"
    state = "renew soon" if seconds <= warn_days * _DAY_S else "ok"
    return f"in {_span(seconds)} ({kind} {subject}): {state}"


def calendar_text(last_day: date | None, days_left: int | None, warn_days: int) -> str:
    """One line: when the school calendar's term dates end, and what happens after."""
    if last_day is None or days_left is None:
        return f"no term dates: Encompass deadlines follow the conservative rule ({_RULE})"
    if days_left < 0:
        return (
            f"ENDED {last_day.isoformat()} ({-days_left} days ago): Encompass deadlines "
            f"follow the conservative rule ({_RULE})"
        )
    state = "add the next term dates" if days_left <= warn_days else "ok"
    return f"ends {last_day.isoformat()} (in {days_left} days): {state}"


@dataclass(frozen=True)
class AuditorAnswer:
    """What the auditor said: whether it answered, its tree size (the checkpoint route), and
    its own figures (the status route; None where it did not say)."""

    answering: bool
    size: int | None = None  # None: no checkpoint signed yet, or not answering
    reason: str = ""  # why not answering: a code ("timeout", "http_503", "unreachable")
    lag: int | None = None  # offsets behind the audit partition's last stable offset
    checkpoint_age_s: int | None = None  # seconds since its latest checkpoint was written
    forks: int | None = None  # forks its witnesses reported, over the log's life
    cosigned_size: Mapping[str, int] = field(default_factory=dict)  # by witness name


def _count(value: object) -> int | None:
    """A whole number of 0 or more, or None (JSON booleans are not numbers here)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63:
        return value
    return None


def status_answer(document: object, size: int | None = None) -> AuditorAnswer:
    """An answering auditor's figures from its status document (``GET /v1/audit/status``);
    anything of the wrong type is left out, never guessed."""
    doc = document if isinstance(document, dict) else {}
    checkpoint = doc.get("checkpoint")
    sizes = doc.get("cosigned_size")
    cosigned = {
        name: n
        for name, value in (sizes.items() if isinstance(sizes, dict) else ())
        if isinstance(name, str) and (n := _count(value)) is not None
    }
    return AuditorAnswer(
        True,
        size,
        lag=_count(doc.get("lag")),
        checkpoint_age_s=_count(checkpoint.get("age_s")) if isinstance(checkpoint, dict) else None,
        forks=_count(doc.get("forks")),
        cosigned_size=cosigned,
    )


class AuditorProbe:
    """Asks the auditor's public checkpoint at most every ``cache_s``, within ``timeout_s``."""

    def __init__(
        self,
        url: str,
        context: ssl.SSLContext | None,
        *,
        timeout_s: float = 3.0,
        cache_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url.rstrip("/")
        self._context = context
        self._timeout_s = timeout_s
        self._cache_s = cache_s
        self._clock = clock
        self._last: tuple[float, AuditorAnswer] | None = None
        self._lock = asyncio.Lock()

    async def answer(self) -> AuditorAnswer:
        """The auditor's answer, asked now unless one from the last ``cache_s`` is at hand."""
        async with self._lock:
            if self._last is not None and self._clock() - self._last[0] < self._cache_s:
                return self._last[1]
            try:
                got = await self._ask()
            except TimeoutError:
                got = AuditorAnswer(False, reason="timeout")
            self._last = (self._clock(), got)
            return got

    async def __call__(self) -> bool:
        """A probe for the ops view's health: whether the auditor answers."""
        return (await self.answer()).answering

    async def _ask(self) -> AuditorAnswer:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=self._timeout_s)
        if self._context is None:
            return AuditorAnswer(False, reason="no_ca")
        connector = aiohttp.TCPConnector(ssl=self._context)
        size: int | None = None
        try:
            async with aiohttp.ClientSession(
                connector=connector, timeout=timeout, trust_env=False
            ) as session:
                async with session.get(self.url + AUDITOR_CHECKPOINT_PATH) as response:
                    if response.status not in (200, 404):  # 404: answering, nothing signed yet
                        return AuditorAnswer(False, reason=f"http_{response.status}")
                    if response.status == 200:
                        size = _note_size(await response.content.read(_MAX_CHECKPOINT_BYTES))
                async with session.get(self.url + AUDITOR_STATUS_PATH) as response:
                    if response.status != 200:  # an auditor without the route: no figures
                        return AuditorAnswer(True, size)
                    body = await response.content.read(_MAX_STATUS_BYTES)
        except TimeoutError:
            return AuditorAnswer(False, reason="timeout")
        except (aiohttp.ClientError, OSError, ssl.SSLError):
            return AuditorAnswer(False, reason="unreachable")
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return AuditorAnswer(True, size)
        return status_answer(document, size)


def _note_size(body: bytes) -> int | None:
    """C2SP tlog-checkpoint: origin line, then the tree size in decimal, then the root hash."""
    lines = body.decode("utf-8", "replace").split("\n")
    size = lines[1] if len(lines) > 1 else ""
    return int(size) if size.isdigit() and len(size) < 20 else None


def _credential(item: Expiring | None, now: datetime) -> dict[str, Any] | None:
    if item is None:
        return None
    kind, subject, seconds = item
    return {
        "kind": kind,
        "subject": subject,
        "expires_at": (now + timedelta(seconds=seconds)).isoformat(),
        "seconds_left": int(seconds),
    }


def horizons(
    credentials: Iterable[Expiring],
    *,
    now: datetime,
    calendar_today: date,
    calendar_days_left: int | None,
    auditor: AuditorAnswer | None,
    checkpoint_age_s: float | None,
) -> dict[str, Any]:
    """The ops view's ``horizons``: the auditor (answering, tree size, checkpoint age), the
    registry and the certificate that expire first, and the calendar's last covered day."""
    items = list(credentials)
    return {
        "auditor": {
            "answering": None if auditor is None else auditor.answering,
            "size": None if auditor is None else auditor.size,
            "checkpoint_age_s": None if checkpoint_age_s is None else int(checkpoint_age_s),
        },
        "registry": _credential(soonest(items, REGISTRY_KINDS), now),
        "certificate": _credential(soonest(items, CERTIFICATE_KINDS), now),
        "calendar": {
            "last_day": (
                None
                if calendar_days_left is None
                else (calendar_today + timedelta(days=calendar_days_left)).isoformat()
            ),
            "days_left": calendar_days_left,
        },
    }


def ops_horizons(
    credentials: Callable[[], Iterable[Expiring]],
    calendar: Callable[[], tuple[date, int | None]],
    auditor: AuditorProbe | None,
    clock: Callable[[], datetime],
) -> Callable[[], Awaitable[dict[str, Any]]]:
    """The ops view's ``horizons``, read from the broker's own watches and the auditor's
    answer (its checkpoint's age is the auditor's own figure) when asked."""

    async def now() -> dict[str, Any]:
        today, left = calendar()
        answer = None if auditor is None else await auditor.answer()
        return horizons(
            credentials(),
            now=clock(),
            calendar_today=today,
            calendar_days_left=left,
            auditor=answer,
            checkpoint_age_s=None if answer is None else answer.checkpoint_age_s,
        )

    return now


def auditor_probe(settings: Settings, trust: TrustStore) -> AuditorProbe:
    """The probe of this deployment's auditor: ``https://HTTP_HOST:AUDITOR_HTTP_PORT``, its
    server certificate checked against the federation CA of the broker's key store."""
    try:
        context: ssl.SSLContext | None = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(trust.store.path(CA_CERT))
        )
    except (OSError, ssl.SSLError):
        context = None  # no CA to check it with: the probe says 'unreachable', never insecure
    return AuditorProbe(
        https_url(settings.http_host, settings.auditor_http_port),
        context,
        timeout_s=settings.readiness_timeout_s,
    )
