"""The gateway's web inbox for people, at ``/`` (server-rendered HTML; README "Web inbox").

Pages: ``/login`` (password and TOTP code), ``/`` (the inbox: overdue, then due soon, then the
rest, each with its deadline), ``/d/<referral id>`` (one disclosure; opening it records a
signed ``viewed`` receipt with the staff id), ``POST /d/<id>/ack`` (mark it "read" or
"actioned", with an optional note: the first is the signed acknowledgement the broker audits,
with the staff id; the note stays in the gateway's store), ``POST
/search`` (the words searched for travel in the body, never the URL), ``POST /logout``.

No personal data in a URL or a log line: a disclosure is addressed by its referral id (a random
UUID), the search words are posted, and the log holds event names, staff ids and referral ids
only. Every POST carries the session's CSRF token (the login form a per-visit token in its own
cookie); every response the headers of ``gateway.web.security``.
"""

from __future__ import annotations

import asyncio
import hmac
import html
import secrets
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol
from uuid import UUID

import structlog
from aiohttp import web

from gateway.store import NOTE_MAX_CHARS, Action, Stored, deadline_of
from gateway.users import LoginRefused, Outcome, Staff, Users
from gateway.web.security import COOKIE, SECURITY_HEADERS, Sessions, WebSettings, check_csrf
from gateway.web.words import group_title, what_was_shared, why_received
from schemas.disclosure import Disclosure
from schemas.errors import CairnError
from schemas.receipt import AcknowledgementStatus
from schemas.referral import FIELD_GROUPS

__all__ = ["Inbox", "create_web"]

log = structlog.get_logger("gateway.web")

STATIC = Path(__file__).parent / "static"
LOGIN_COOKIE = "__Host-cairn-login"
DUE_SOON = timedelta(hours=24)
LIST_MAX = 500  # disclosures listed on the inbox page at most

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Inbox(Protocol):
    """What the web inbox needs of ``gateway.service.Gateway``."""

    agency: str

    async def page(
        self, cursor: str | None, limit: int, *, unacknowledged: bool = False
    ) -> Any: ...
    async def search(self, text: str, limit: int = 50) -> tuple[Stored, ...]: ...
    async def get(self, referral_id: UUID) -> Stored | None: ...
    async def view(self, referral_id: UUID, viewer: str) -> Stored | None: ...
    async def acknowledge(
        self,
        referral_id: UUID,
        *,
        status: AcknowledgementStatus = ...,
        reasons: Sequence[str] = (),
        by: str | None = None,
        note: str = "",
    ) -> tuple[Stored, bool] | None: ...
    async def actions(self, referral_id: UUID) -> tuple[Action, ...]: ...


USERS = web.AppKey("users", Users)
SESSIONS = web.AppKey("sessions", Sessions)
INBOX = web.AppKey("inbox", object)
CLOCK = web.AppKey("clock", object)


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _page(
    title: str, body: str, *, status: int = 200, staff: Staff | None = None, csrf: str = ""
) -> web.Response:
    logout = (
        f'<form class="inline" method="post" action="/logout">'
        f'<input type="hidden" name="csrf" value="{_e(csrf)}">'
        f'<button type="submit">Log out</button></form>'
        if staff is not None
        else ""
    )
    text = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)} · Cairn</title>"
        '<link rel="stylesheet" href="/static/inbox.css"></head><body>'
        f"<header><h1>{_e(title)}</h1>{logout}</header><main>{body}</main></body></html>"
    )
    return web.Response(text=text, status=status, content_type="text/html")


@web.middleware
async def _headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        for name, value in SECURITY_HEADERS.items():
            exc.headers[name] = value
        raise
    except CairnError:
        log.info("web.refused", path_kind=_kind(request))
        response = _page(
            "Not possible", '<p class="error">That request could not be handled.</p>', status=400
        )
    for name, value in SECURITY_HEADERS.items():
        response.headers[name] = value
    return response


def _kind(request: web.Request) -> str:
    route = request.match_info.route.resource
    return route.canonical if route is not None else "unknown"


def _session(request: web.Request, *, returning: bool = False) -> tuple[Staff, Any]:
    """The request's session and staff, or a redirect to /login. The mark of a just-made
    acknowledgement lasts only to the next request (``returning``: the page it redirects to)."""
    sessions = request.app[SESSIONS]
    session = sessions.get(request.cookies.get(COOKIE))
    if session is None:
        raise web.HTTPSeeOther("/login")
    if not returning:
        session.acknowledged = ""
    staff = request.app[USERS].get(session.staff_id)
    if staff is None or staff.disabled:
        sessions.end_staff(session.staff_id)
        raise web.HTTPSeeOther("/login")
    return staff, session


async def _form(request: web.Request, session: Any) -> Any:
    form = await request.post()
    sent = form.get("csrf")
    if not check_csrf(session, sent if isinstance(sent, str) else None):
        log.warning("web.csrf_refused", staff_id=session.staff_id)
        raise web.HTTPForbidden(text="refused: the form's token is not this session's")
    return form


def _subject(stored: Stored, disclosure: Disclosure) -> str:
    if disclosure.notification is not None:
        return "Operation Encompass notice"
    return f"{disclosure.purpose.value.replace('_', ' ')} referral"


async def _all(inbox: Any) -> list[Stored]:
    found: list[Stored] = []
    cursor = None
    while len(found) < LIST_MAX:
        listing = await inbox.page(cursor, 100)
        found.extend(listing.items)
        if not listing.more:
            break
        cursor = listing.cursor
    return found[:LIST_MAX]


def _rows(items: Iterable[Stored], now: datetime) -> str:
    keyed = []
    for stored in items:
        disclosure = stored.disclosure()
        due = deadline_of(disclosure)
        if stored.acknowledged_at is None and due is not None and due <= now:
            rank, state = 0, ("overdue", "Overdue")
        elif stored.acknowledged_at is None and due is not None and due - now <= DUE_SOON:
            rank, state = 1, ("due-soon", "Due soon")
        elif stored.acknowledged_at is None:
            rank, state = 2, ("", "New")
        else:
            rank, state = 3, ("", f"Acknowledged ({stored.ack_status})")
        deadline = due.astimezone(UTC).strftime("%a %d %b %Y %H:%M UTC") if due else "none set"
        keyed.append(
            (
                rank,
                due or datetime.max.replace(tzinfo=UTC),
                f'<tr><td class="{state[0]}">{_e(state[1])}</td>'
                f'<td><a href="/d/{stored.referral_id}">{_e(_subject(stored, disclosure))}</a></td>'
                f"<td>from {_e(stored.sender)}</td><td>deadline: {_e(deadline)}</td>"
                f"<td>received {stored.received_at.astimezone(UTC):%d %b %Y %H:%M} UTC</td></tr>",
            )
        )
    keyed.sort(key=lambda k: (k[0], k[1]))
    if not keyed:
        return "<p>Nothing received.</p>"
    return "<table><tbody>" + "".join(row for _, _, row in keyed) + "</tbody></table>"


def _search_form(csrf: str) -> str:
    return (
        '<form method="post" action="/search"><label>Search what this agency received '
        '<input name="q" minlength="2" maxlength="200" required></label>'
        f'<input type="hidden" name="csrf" value="{_e(csrf)}">'
        f'<button type="submit">Search</button></form>'
    )


async def inbox_page(request: web.Request) -> web.Response:
    staff, session = _session(request)
    inbox = request.app[INBOX]
    now = request.app[CLOCK]()  # type: ignore[operator]
    items = await _all(inbox)
    return _page(
        f"Inbox of {inbox.agency}",  # type: ignore[attr-defined]
        _search_form(session.csrf) + _rows(items, now),
        staff=staff,
        csrf=session.csrf,
    )


async def search(request: web.Request) -> web.Response:
    staff, session = _session(request)
    form = await _form(request, session)
    text = form.get("q")
    if not isinstance(text, str):
        raise web.HTTPBadRequest(text="search for 2 to 200 characters")
    try:
        found = await request.app[INBOX].search(text)  # type: ignore[attr-defined]
    except CairnError:
        return _page(
            "Search",
            '<p class="error">Search for 2 to 200 characters.</p>' + _search_form(session.csrf),
            status=400,
            staff=staff,
            csrf=session.csrf,
        )
    log.info("web.search", staff_id=staff.staff_id, found=len(found))
    now = request.app[CLOCK]()  # type: ignore[operator]
    return _page(
        "Search results",
        _search_form(session.csrf) + _rows(found, now),
        staff=staff,
        csrf=session.csrf,
    )


def _label(name: str) -> str:
    return name.replace("_", " ").capitalize()


def _value(value: Any) -> str:
    if isinstance(value, dict):
        return (
            "<dl>"
            + "".join(
                f"<dt>{_e(_label(k))}</dt><dd>{_value(v)}</dd>"
                for k, v in value.items()
                if v not in (None, [], {})
            )
            + "</dl>"
        )
    if isinstance(value, list):
        return "<ul>" + "".join(f"<li>{_value(v)}</li>" for v in value) + "</ul>"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return _e(value)


_GROUP_OF = {name: group for group, name in FIELD_GROUPS.items()}


_DONE = {"read": "Read", "actioned": "Actioned"}


def _acknowledge_section(stored: Stored, actions: Sequence[Action], csrf: str) -> str:
    """Who marked it read or actioned (with their notes), and the form for what is left: both
    buttons until someone acknowledges it, then "actioned" until someone has."""
    done = {a.status for a in actions}
    history = "".join(
        f"<li>{_e(_DONE.get(a.status, a.status))} by {_e(a.by)} at "
        f"{a.at.astimezone(UTC):%d %b %Y %H:%M} UTC"
        + (f"<blockquote>{_e(a.note)}</blockquote>" if a.note else "")
        + "</li>"
        for a in actions
    )
    if stored.acknowledged_at is not None and not actions:
        history = (
            f"<li>Acknowledged ({_e(stored.ack_status)}) at "
            f"{stored.acknowledged_at.astimezone(UTC):%d %b %Y %H:%M} UTC</li>"
        )
    buttons = []
    if stored.acknowledged_at is None:
        buttons.append('<button type="submit" name="status" value="read">Mark as read</button>')
    if stored.acknowledged_at is None or (stored.ack_status == "read" and "actioned" not in done):
        buttons.append(
            '<button type="submit" name="status" value="actioned">Mark as actioned</button>'
        )
    form = (
        f'<form method="post" action="/d/{stored.referral_id}/ack">'
        f'<input type="hidden" name="csrf" value="{_e(csrf)}">'
        "<p><label>Note (optional; kept in this gateway, not sent to the broker) "
        f'<textarea name="note" rows="3" maxlength="{NOTE_MAX_CHARS}"></textarea></label></p>'
        f"<p>{''.join(buttons)}</p></form>"
        if buttons
        else ""
    )
    listed = f"<ul>{history}</ul>" if history else "<p>Not acknowledged yet.</p>"
    return f"<section><h2>Acknowledge</h2>{listed}{form}</section>"


def _disclosure_body(
    stored: Stored, disclosure: Disclosure, csrf: str, actions: Sequence[Action] = ()
) -> str:
    parts: list[str] = []
    note = disclosure.notification
    if note is not None:
        parts.append(
            '<p class="banner" role="alert">Operation Encompass: do NOT contact the parents or '
            "carers about this notice. It is for the school's designated safeguarding lead, "
            "to support the child in school.</p>"
        )
        parts.append(
            "<p><strong>Deadline:</strong> read before "
            f"{note.header.notify_by.astimezone(UTC):%a %d %b %Y %H:%M} UTC"
            " (the start of the school day)</p>"
        )
    parts.append(why_received(disclosure))
    parts.append(what_was_shared(disclosure))
    content = (
        note.model_dump(mode="json")
        if note is not None
        else disclosure.referral.model_dump(mode="json", exclude_none=True)
        if disclosure.referral is not None
        else {}
    )
    for name, value in content.items():
        group = _GROUP_OF.get(name)
        title = group_title(group) if group is not None and note is None else _label(name)
        parts.append(f"<section><h2>{_e(title)}</h2>{_value(value)}</section>")
    parts.append(_acknowledge_section(stored, actions, csrf))
    return "".join(parts)


def _referral_id(request: web.Request) -> UUID:
    try:
        return UUID(request.match_info["referral_id"])
    except ValueError:
        raise web.HTTPNotFound(text="no such disclosure") from None


async def disclosure_page(request: web.Request) -> web.Response:
    staff, session = _session(request, returning=True)
    referral_id = _referral_id(request)
    inbox = request.app[INBOX]
    if session.acknowledged == str(referral_id):
        # Back from this session's own acknowledgement (its redirect): the same opening.
        session.acknowledged = ""
        stored = await inbox.get(referral_id)  # type: ignore[attr-defined]
    else:
        stored = await inbox.view(referral_id, f"staff:{staff.staff_id}")  # type: ignore[attr-defined]
        if stored is not None:
            log.info("web.viewed", staff_id=staff.staff_id, referral_id=str(referral_id))
    if stored is None:
        raise web.HTTPNotFound(text="no such disclosure")
    disclosure = stored.disclosure()
    actions = await request.app[INBOX].actions(referral_id)  # type: ignore[attr-defined]
    return _page(
        _subject(stored, disclosure),
        _disclosure_body(stored, disclosure, session.csrf, actions),
        staff=staff,
        csrf=session.csrf,
    )


async def acknowledge(request: web.Request) -> web.Response:
    staff, session = _session(request)
    form = await _form(request, session)
    referral_id = _referral_id(request)
    status, note = form.get("status"), form.get("note", "")
    if status not in _DONE or not isinstance(note, str) or len(note) > NOTE_MAX_CHARS:
        raise web.HTTPBadRequest(
            text=f"choose read or actioned; a note is at most {NOTE_MAX_CHARS} characters"
        )
    done = await request.app[INBOX].acknowledge(  # type: ignore[attr-defined]
        referral_id,
        status=AcknowledgementStatus(status),
        by=f"staff:{staff.staff_id}",
        note=note.strip(),
    )
    if done is None:
        raise web.HTTPNotFound(text="no such disclosure")
    session.acknowledged = str(referral_id)
    log.info(
        "web.acknowledged",
        staff_id=staff.staff_id,
        referral_id=str(referral_id),
        status=status,
        first=done[1],
    )
    raise web.HTTPSeeOther(f"/d/{referral_id}")


def _login_form(token: str, error: str = "") -> str:
    shown = f'<p class="error" role="alert">{_e(error)}</p>' if error else ""
    return (
        f'{shown}<form method="post" action="/login">'
        '<p><label>Login <input name="login" autocomplete="username" required></label></p>'
        '<p><label>Password <input name="password" type="password" '
        'autocomplete="current-password" required>'
        "</label></p>"
        '<p><label>Code from your authenticator app <input name="code" inputmode="numeric" '
        'autocomplete="one-time-code" pattern="[0-9]{6}" required>'
        "</label></p>"
        f'<input type="hidden" name="csrf" value="{_e(token)}">'
        f'<button type="submit">Log in</button></form>'
    )


def _with_login_cookie(response: web.Response, token: str) -> web.Response:
    response.set_cookie(
        LOGIN_COOKIE, token, max_age=900, path="/", secure=True, httponly=True, samesite="Strict"
    )
    return response


async def login_page(request: web.Request) -> web.Response:
    token = secrets.token_urlsafe(32)
    return _with_login_cookie(_page("Log in", _login_form(token)), token)


async def login(request: web.Request) -> web.Response:
    form = await request.post()
    sent, cookie = form.get("csrf"), request.cookies.get(LOGIN_COOKIE)
    if not (
        isinstance(sent, str) and cookie and hmac.compare_digest(sent.encode(), cookie.encode())
    ):
        log.warning("web.login_csrf_refused")
        raise web.HTTPForbidden(text="refused: reload the login page")
    fields = [form.get(k) for k in ("login", "password", "code")]
    if not all(isinstance(f, str) for f in fields):
        raise web.HTTPBadRequest(text="login, password and code are required")
    name, password, code = (str(f) for f in fields)
    try:
        staff = await asyncio.to_thread(request.app[USERS].authenticate, name, password, code)
    except LoginRefused as refused:
        log.info("web.login_refused", outcome=refused.outcome.value)
        token = secrets.token_urlsafe(32)
        message = (
            "Too many attempts: try again later."
            if refused.outcome is Outcome.LOCKED
            else "Login refused: check the login, the password and the code."
        )
        return _with_login_cookie(_page("Log in", _login_form(token, message), status=401), token)
    session = request.app[SESSIONS].start(staff.staff_id)
    log.info("web.login", staff_id=staff.staff_id)
    response = web.HTTPSeeOther("/")
    response.set_cookie(COOKIE, session.id, path="/", secure=True, httponly=True, samesite="Strict")
    response.del_cookie(LOGIN_COOKIE, path="/")
    raise response


async def logout(request: web.Request) -> web.Response:
    staff, session = _session(request)
    await _form(request, session)
    request.app[SESSIONS].end(session.id)
    log.info("web.logout", staff_id=staff.staff_id)
    response = web.HTTPSeeOther("/login")
    response.del_cookie(COOKIE, path="/")
    raise response


def create_web(
    inbox: Inbox,
    users: Users,
    settings: WebSettings | None = None,
    *,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    sessions: Sessions | None = None,
) -> web.Application:
    """The web inbox as an aiohttp application (mount it at ``/`` of the gateway)."""
    settings = settings or WebSettings()
    app = web.Application(middlewares=[_headers], client_max_size=64 * 1024)
    app[USERS] = users
    app[SESSIONS] = sessions if sessions is not None else Sessions(settings)
    app[INBOX] = inbox
    app[CLOCK] = clock
    app.router.add_get("/", inbox_page)
    app.router.add_get("/login", login_page)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_post("/search", search)
    app.router.add_get(r"/d/{referral_id}", disclosure_page)
    app.router.add_post(r"/d/{referral_id}/ack", acknowledge)
    app.router.add_static("/static/", STATIC, show_index=False)
    return app
