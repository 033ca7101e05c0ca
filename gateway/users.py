"""Staff accounts of one agency's gateway web inbox: password (argon2id) and TOTP (RFC 6238).

The accounts live in their own SQLite file beside the gateway's store (``<state_dir>/gateway/
<agency>.users.sqlite`` by default), never in the broker's. ``add`` and ``reset`` return a
one-time ``Enrolment``: a random password and the TOTP secret as an ``otpauth://`` URI, shown
once and stored only as an argon2 hash and the secret the gateway needs to check codes.

A staff id is the account's opaque handle (``staff-<hex>``): it is what a ``viewed`` receipt
carries, so the audit says who read a notice without the audit holding a name or an address.
The login name is the agency's choice (an e-mail address is usual) and never leaves this file.

Login throttling: after ``max_failures`` wrong passwords or codes in a row an account is locked
for ``lock_s`` seconds (doubling on each further lock, at most ``lock_max_s``); a right
password and code resets the count. A TOTP code is accepted once: the step it belongs to is
remembered, so a code seen over a shoulder cannot be replayed in the same 30 seconds.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import secrets
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import quote, urlencode

import click
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

if TYPE_CHECKING:
    from gateway.web.security import WebSettings

__all__ = [
    "TOTP_DIGITS",
    "TOTP_STEP_S",
    "Enrolment",
    "LoginRefused",
    "Outcome",
    "Staff",
    "UserError",
    "Users",
    "open_users",
    "totp",
    "totp_uri",
    "user",
    "users_path",
]

T = TypeVar("T")

TOTP_STEP_S = 30  # RFC 6238's default time step (seconds)
TOTP_DIGITS = 6
TOTP_SKEW_STEPS = 1  # a code of the step before or after is accepted (clock drift)
PASSWORD_MIN_CHARS = 12

_LOGIN_MAX_CHARS = 254
_HASHER = PasswordHasher()  # argon2id, the library's RFC 9106 low-memory profile


class UserError(ValueError):
    """A bad account operation (unknown login, a login already taken, a bad name)."""


class Outcome(StrEnum):
    """Why a login was refused; the page shows one message for all of them."""

    BAD_CREDENTIALS = "bad_credentials"
    LOCKED = "locked"
    DISABLED = "disabled"


class LoginRefused(Exception):
    def __init__(self, outcome: Outcome, retry_after_s: float = 0.0) -> None:
        super().__init__(outcome.value)
        self.outcome = outcome
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class Staff:
    staff_id: str
    login: str
    agency: str
    disabled: bool


@dataclass(frozen=True, slots=True)
class Enrolment:
    """Shown once by ``add`` and ``reset``; nothing here is kept in the clear except the TOTP
    secret the gateway needs to check codes."""

    staff: Staff
    password: str
    totp_secret: str  # base32, no padding
    otpauth_uri: str


def totp(
    secret_b32: str, at_s: float, *, step_s: int = TOTP_STEP_S, digits: int = TOTP_DIGITS
) -> str:
    """RFC 6238 TOTP (HMAC-SHA-1, as authenticator apps use) of ``secret_b32`` at ``at_s``."""
    return _hotp(_secret_bytes(secret_b32), int(at_s // step_s), digits)


def _hotp(key: bytes, counter: int, digits: int) -> str:
    mac = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    code = (struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFFFFFF) % 10**digits
    return str(code).zfill(digits)


def _secret_bytes(secret_b32: str) -> bytes:
    text = secret_b32.strip().replace(" ", "").upper()
    return base64.b32decode(text + "=" * (-len(text) % 8))


def totp_uri(secret_b32: str, login: str, issuer: str) -> str:
    """The ``otpauth://`` URI an authenticator app reads (Key Uri Format)."""
    label = quote(f"{issuer}:{login}", safe="@:")
    query = urlencode(
        {
            "secret": secret_b32,
            "issuer": issuer,
            "algorithm": "SHA1",
            "digits": TOTP_DIGITS,
            "period": TOTP_STEP_S,
        }
    )
    return f"otpauth://totp/{label}?{query}"


def _new_secret() -> str:
    return base64.b32encode(secrets.token_bytes(20)).decode().rstrip("=")


def _check_login(login: str) -> str:
    login = login.strip()
    if not login or len(login) > _LOGIN_MAX_CHARS or any(c.isspace() or ord(c) < 32 for c in login):
        raise UserError("a login is 1 to 254 visible characters without spaces")
    return login.lower()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS staff (
    staff_id TEXT PRIMARY KEY,
    login TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    totp_secret TEXT NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    locks INTEGER NOT NULL DEFAULT 0,
    locked_until REAL NOT NULL DEFAULT 0,
    last_step INTEGER NOT NULL DEFAULT -1,
    created_s REAL NOT NULL
)
"""


class Users:
    """One agency's staff accounts (synchronous SQLite; the web layer calls it in a thread)."""

    def __init__(
        self,
        path: Path,
        agency: str,
        *,
        max_failures: int = 5,
        lock_s: float = 60.0,
        lock_max_s: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.agency = agency
        self.max_failures = max_failures
        self.lock_s = lock_s
        self.lock_max_s = lock_max_s
        self._clock = clock
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        path.chmod(0o600)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def _tx(self, work: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = work(self._db)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return result

    def _enrol(self, staff: Staff) -> tuple[Enrolment, str, str]:
        password = secrets.token_urlsafe(15)  # 20 characters, 120 bits
        secret = _new_secret()
        uri = totp_uri(secret, staff.login, f"Cairn {self.agency}")
        return Enrolment(staff, password, secret, uri), _HASHER.hash(password), secret

    def add(self, login: str) -> Enrolment:
        login = _check_login(login)
        staff = Staff(f"staff-{secrets.token_hex(8)}", login, self.agency, False)
        enrolment, pw_hash, secret = self._enrol(staff)

        def work(db: sqlite3.Connection) -> None:
            if db.execute("SELECT 1 FROM staff WHERE login = ?", (login,)).fetchone():
                raise UserError(f"the login {login!r} is taken")
            db.execute(
                "INSERT INTO staff (staff_id, login, password_hash, totp_secret, created_s)"
                " VALUES (?, ?, ?, ?, ?)",
                (staff.staff_id, login, pw_hash, secret, self._clock()),
            )

        self._tx(work)
        return enrolment

    def reset(self, login: str) -> Enrolment:
        """A new password and TOTP secret, the account re-enabled and unlocked."""
        found = self._staff(_check_login(login))
        staff = Staff(found.staff_id, found.login, self.agency, False)
        enrolment, pw_hash, secret = self._enrol(staff)
        self._tx(
            lambda db: db.execute(
                "UPDATE staff SET password_hash = ?, totp_secret = ?, disabled = 0, failures = 0,"
                " locks = 0, locked_until = 0, last_step = -1 WHERE staff_id = ?",
                (pw_hash, secret, staff.staff_id),
            )
        )
        return enrolment

    def disable(self, login: str) -> Staff:
        found = self._staff(_check_login(login))
        self._tx(
            lambda db: db.execute(
                "UPDATE staff SET disabled = 1 WHERE staff_id = ?", (found.staff_id,)
            )
        )
        return Staff(found.staff_id, found.login, self.agency, True)

    def _staff(self, login: str) -> Staff:
        with self._lock:
            row = self._db.execute(
                "SELECT staff_id, login, disabled FROM staff WHERE login = ?", (login,)
            ).fetchone()
        if row is None:
            raise UserError(f"no account {login!r}")
        return Staff(row[0], row[1], self.agency, bool(row[2]))

    def get(self, staff_id: str) -> Staff | None:
        """The account behind a session, or None if it is gone."""
        with self._lock:
            row = self._db.execute(
                "SELECT staff_id, login, disabled FROM staff WHERE staff_id = ?", (staff_id,)
            ).fetchone()
        return None if row is None else Staff(row[0], row[1], self.agency, bool(row[2]))

    def all(self) -> tuple[Staff, ...]:
        with self._lock:
            rows = self._db.execute(
                "SELECT staff_id, login, disabled FROM staff ORDER BY login"
            ).fetchall()
        return tuple(Staff(r[0], r[1], self.agency, bool(r[2])) for r in rows)

    def authenticate(self, login: str, password: str, code: str) -> Staff:
        """The account if the password and the TOTP code are right; else ``LoginRefused``.

        An unknown login costs one argon2 verification too, so timing does not tell which
        logins exist; every refusal counts towards the account's lock."""
        try:
            login = _check_login(login)
        except UserError:
            raise LoginRefused(Outcome.BAD_CREDENTIALS) from None
        now = self._clock()

        def work(db: sqlite3.Connection) -> Staff | Outcome:
            row = db.execute(
                "SELECT staff_id, password_hash, totp_secret, disabled, failures, locks,"
                " locked_until, last_step FROM staff WHERE login = ?",
                (login,),
            ).fetchone()
            if row is None:
                _verify(_DUMMY_HASH, password)
                raise LoginRefused(Outcome.BAD_CREDENTIALS)
            staff_id, pw_hash, secret, disabled, failures, locks, locked_until, last_step = row
            if locked_until > now:
                raise LoginRefused(Outcome.LOCKED, locked_until - now)
            step = _matching_step(secret, code, now)
            ok = _verify(pw_hash, password) and step is not None and step > last_step
            if not ok:
                failures += 1
                if failures >= self.max_failures:
                    pause = min(self.lock_s * 2**locks, self.lock_max_s)
                    db.execute(
                        "UPDATE staff SET failures = 0, locks = ?, locked_until = ?"
                        " WHERE staff_id = ?",
                        (locks + 1, now + pause, staff_id),
                    )
                else:
                    db.execute(
                        "UPDATE staff SET failures = ? WHERE staff_id = ?", (failures, staff_id)
                    )
                return Outcome.BAD_CREDENTIALS  # the count committed, then raised
            if disabled:
                return Outcome.DISABLED
            update = "UPDATE staff SET failures = 0, locks = 0, last_step = ?"
            params: tuple[object, ...] = (step, staff_id)
            if _HASHER.check_needs_rehash(pw_hash):
                update += ", password_hash = ?"
                params = (step, _HASHER.hash(password), staff_id)
            db.execute(update + " WHERE staff_id = ?", params)
            return Staff(staff_id, login, self.agency, False)

        result = self._tx(work)
        if isinstance(result, Outcome):
            raise LoginRefused(result)
        return result


def _verify(pw_hash: str, password: str) -> bool:
    try:
        return _HASHER.verify(pw_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def _matching_step(secret: str, code: str, now: float) -> int | None:
    code = code.strip().replace(" ", "")
    if len(code) != TOTP_DIGITS or not code.isascii() or not code.isdigit():
        return None
    key = _secret_bytes(secret)
    here = int(now // TOTP_STEP_S)
    for step in range(here - TOTP_SKEW_STEPS, here + TOTP_SKEW_STEPS + 1):
        if hmac.compare_digest(_hotp(key, step, TOTP_DIGITS), code):
            return step
    return None


_DUMMY_HASH = _HASHER.hash(secrets.token_urlsafe(16))


# -- cairn gateway --as AGENCY user add|disable|reset|list ---------------------------------------


def open_users(state_dir: Path, agency: str, settings: WebSettings | None = None) -> Users:
    """The agency's accounts with the login settings (``CAIRN_GATEWAY_WEB_LOGIN_*``)."""
    from gateway.web.security import WebSettings

    web = settings if settings is not None else WebSettings()
    return Users(
        users_path(state_dir, agency),
        agency,
        max_failures=web.login_max_failures,
        lock_s=web.login_lock_s,
        lock_max_s=web.login_lock_max_s,
    )


def users_path(state_dir: Path, agency: str) -> Path:
    """Where an agency's staff accounts live: beside its gateway store's default SQLite file."""
    return state_dir / "gateway" / f"{agency}.users.sqlite"


@contextlib.contextmanager
def _accounts(ctx: click.Context) -> Iterator[Users]:
    """The ``--as`` agency's accounts for one command: a bad operation is a one-line error, and
    the file is closed after."""
    from broker.cli.common import load_settings
    from broker.config import Settings
    from gateway.web.security import WebSettings

    agency = ctx.find_root().find_object(dict)
    name = (agency or {}).get("gateway_agency")
    if not isinstance(name, str):
        raise click.UsageError("use: cairn gateway --as AGENCY user ...")
    # with the CAIRN_GATEWAY_WEB_* login lock
    users = open_users(load_settings(Settings).state_dir, name, load_settings(WebSettings))
    try:
        yield users
    except UserError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        users.close()


def _show(enrolment: Enrolment, what: str) -> None:
    click.echo(
        f"{what} {enrolment.staff.login} ({enrolment.staff.staff_id}) for {enrolment.staff.agency}."
    )
    click.echo("Give these to the person once, by a safe channel; they are not shown again:")
    click.echo(f"  password: {enrolment.password}")
    click.echo(f"  TOTP:     {enrolment.otpauth_uri}")
    click.echo(f"  (secret to type in an authenticator app: {enrolment.totp_secret})")


@click.group("user")
def user() -> None:
    """Staff accounts of this agency's web inbox (README "Web inbox")."""


@user.command("add")
@click.argument("login")
@click.pass_context
def user_add(ctx: click.Context, login: str) -> None:
    """Add LOGIN; prints a one-time password and TOTP enrolment URI."""
    with _accounts(ctx) as users:
        _show(users.add(login), "Added")


@user.command("reset")
@click.argument("login")
@click.pass_context
def user_reset(ctx: click.Context, login: str) -> None:
    """Give LOGIN a new password and TOTP secret (and re-enable it); prints them once."""
    with _accounts(ctx) as users:
        _show(users.reset(login), "Reset")


@user.command("disable")
@click.argument("login")
@click.pass_context
def user_disable(ctx: click.Context, login: str) -> None:
    """Disable LOGIN: it can no longer log in (a running gateway ends its sessions at the next
    request)."""
    with _accounts(ctx) as users:
        staff = users.disable(login)
    click.echo(f"Disabled {staff.login} ({staff.staff_id}).")


@user.command("list")
@click.pass_context
def user_list(ctx: click.Context) -> None:
    """The accounts, their staff ids and whether they are disabled."""
    with _accounts(ctx) as users:
        for staff in users.all():
            click.echo(
                f"{staff.staff_id}\t{staff.login}\t{'disabled' if staff.disabled else 'active'}"
            )
