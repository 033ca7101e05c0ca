"""What every page of the gateway's web inbox stands on: sessions, CSRF tokens, headers.

Sessions are held in memory by the gateway process (a restart logs everyone out): the cookie
carries only a random 256-bit id, HttpOnly, Secure, SameSite=Strict, path ``/``. A session ends
after ``idle_s`` without a request or ``absolute_s`` after login, whichever comes first, and on
logout; the id changes at login (no fixation). Each session has its own CSRF token, which every
POST form carries and ``check_csrf`` compares with ``hmac.compare_digest``.

Every response gets the headers of ``SECURITY_HEADERS``: a CSP with ``default-src 'none'``, no
script at all, style only from the gateway's own static file, forms posting only to itself, no
framing (``frame-ancestors 'none'`` and ``X-Frame-Options: DENY``), ``Cache-Control: no-store``
(a disclosure must not stay in a shared computer's cache), no referrer.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "COOKIE",
    "CSP",
    "SECURITY_HEADERS",
    "Session",
    "Sessions",
    "WebSettings",
    "check_csrf",
]

COOKIE = "__Host-cairn-session"  # __Host-: Secure, path /, no Domain (the browser enforces it)

CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)

SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Strict-Transport-Security": "max-age=31536000",
}


class WebSettings(BaseSettings):
    """The web inbox's session and login settings, ``CAIRN_GATEWAY_WEB_*`` (README "Web inbox")."""

    model_config = SettingsConfigDict(
        env_prefix="CAIRN_GATEWAY_WEB_", extra="forbid", frozen=True, hide_input_in_errors=True
    )

    enabled: bool = Field(default=True, description="Serve the web inbox (false: the API only)")
    host: str = Field(default="127.0.0.1", description="Address the web inbox listens on")
    port: int = Field(default=8447, ge=0, le=65535, description="Its port (0: any free one)")
    tls_cert_file: Path | None = Field(
        default=None,
        description="Its PEM certificate chain (default: the API's, CAIRN_GATEWAY_TLS_CERT_FILE)",
    )
    tls_key_file: Path | None = Field(default=None, description="Its PEM private key")
    tls_key_password_file: Path | None = Field(
        default=None, description="A file holding that key's passphrase, if it has one"
    )

    session_idle_s: float = Field(
        default=900.0,
        gt=0,
        le=86_400,
        description="Seconds without a request before a session ends",
    )
    session_absolute_s: float = Field(
        default=28_800.0, gt=0, le=604_800, description="Seconds after login a session ends anyway"
    )
    login_max_failures: int = Field(
        default=5, ge=1, le=100, description="Wrong logins in a row before the account is locked"
    )
    login_lock_s: float = Field(
        default=60.0, gt=0, description="Seconds of the first lock, doubling each further lock"
    )
    login_lock_max_s: float = Field(default=3600.0, gt=0, description="Longest lock (seconds)")
    sessions_max: int = Field(
        default=1000, ge=1, description="Live sessions kept at most (the oldest ends first)"
    )

    @model_validator(mode="after")
    def _pair(self) -> WebSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError(
                "set CAIRN_GATEWAY_WEB_TLS_CERT_FILE and CAIRN_GATEWAY_WEB_TLS_KEY_FILE together"
            )
        return self


@dataclass
class Session:
    staff_id: str
    csrf: str
    started_s: float
    seen_s: float
    id: str = field(repr=False, default="")
    #: The referral id this session has just acknowledged: the page the acknowledgement
    #: redirects to shows it again without recording another view (it was not opened again).
    acknowledged: str = ""


class Sessions:
    """The live sessions of one gateway process."""

    def __init__(self, settings: WebSettings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self._clock = clock
        self._live: dict[str, Session] = {}

    def start(self, staff_id: str) -> Session:
        """A new session for ``staff_id`` (after a right password and code)."""
        self._expire()
        while len(self._live) >= self.settings.sessions_max:
            oldest = min(self._live.values(), key=lambda s: s.started_s)
            del self._live[oldest.id]
        now = self._clock()
        session = Session(staff_id, secrets.token_urlsafe(32), now, now, secrets.token_urlsafe(32))
        self._live[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session of that cookie value, its idle clock restarted; None if there is
        none or it has expired (and then it is gone)."""
        if not session_id:
            return None
        session = self._live.get(session_id)
        if session is None:
            return None
        now = self._clock()
        if self._expired(session, now):
            del self._live[session_id]
            return None
        session.seen_s = now
        return session

    def end(self, session_id: str | None) -> None:
        if session_id:
            self._live.pop(session_id, None)

    def end_staff(self, staff_id: str) -> int:
        """End every session of one account (disabled or reset); how many ended."""
        gone = [sid for sid, s in self._live.items() if s.staff_id == staff_id]
        for sid in gone:
            del self._live[sid]
        return len(gone)

    def __len__(self) -> int:
        return len(self._live)

    def _expired(self, session: Session, now: float) -> bool:
        return (
            now - session.seen_s > self.settings.session_idle_s
            or now - session.started_s > self.settings.session_absolute_s
        )

    def _expire(self) -> None:
        now = self._clock()
        for sid in [sid for sid, s in self._live.items() if self._expired(s, now)]:
            del self._live[sid]


def check_csrf(session: Session, sent: str | None) -> bool:
    """Whether the form's token is the session's own (constant-time comparison)."""
    if not sent:
        return False
    return hmac.compare_digest(session.csrf.encode(), sent.encode())
