"""The Operation Encompass notice from the police to the school's DSL, end to end (issue 15,
acceptance 2 and 4): through the real broker and Kafka into the school's gateway (its consumer
on the school's topic, its web inbox over TLS), read in Debian's Chromium, and on the record.

The police submit the notice to the broker of ``stack`` (which follows the receipts topic, as
``cairn serve`` does); the school's gateway stores it; its DSL logs in with password and TOTP
(a wrong password and a wrong code are refused with the same page), sees it in the inbox with
its deadline, opens it (the no-contact banner above everything), tries a forged CSRF token
(403, nothing acknowledged) and marks it read. The auditor then holds one ``viewed`` event by
the DSL's staff id and one ``acknowledged`` (read). The housing service's gateway, run the same
way, does not show it to its own user (not listed, 404), and its session ends when idle.

Every URL the browser asked for, every body it got and every log line written during the test
are scanned for the notice's personal values: only the school's disclosure page holds them.
Screenshots in test-artifacts/ (git-ignored).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import pytest
from structlog.testing import capture_logs

from broker.audit.index import Query
from gateway.settings import GatewaySettings
from gateway.sqlite import SqliteGatewayStore
from gateway.store import deadline_of
from gateway.users import TOTP_STEP_S, Enrolment, totp
from gateway.web.app import SESSIONS, USERS
from gateway.web.security import Sessions, WebSettings
from schemas.audit import AuditEventType
from schemas.encompass import next_school_day_start
from tests.browser.conftest import Stack
from tests.gateway_support import Running, running_gateway, server_certificate, serving_web
from tests.integration.conftest import client
from tests.samples import sample

SCHOOL = "kelder-brook-primary"
HOUSING = "kelder-housing"
WAIT_S = 60.0  # the longest any one thing may take to happen
IDLE_S = 600.0  # the inboxes' session idle limit; the housing inbox's clock jumps past it
REFUSED = "Login refused: check the login, the password and the code."

# The notice's personal values: invented, and unlike anything else a page or a log holds.
CHILD_GIVEN, CHILD_FAMILY, CHILD_BORN = "Wrenna", "Quillfeather", "2017-04-19"
ADDRESS = "14 Larkspur Row, Kelderton KT4 9QZ"
PARENTS = ("Morwenna Quillfeather", "Castor Oakhollow")


@pytest.fixture
def broker_receipts() -> bool:
    """The broker audits the gateways' receipts (views and acknowledgements)."""
    return True


def encompass_notice(now: datetime) -> dict[str, Any]:
    """The police's Encompass notice to the school about last night's incident."""
    data = sample("encompass-notification.json")
    occurred = now - timedelta(hours=2)
    data["header"].update(
        created_at=(now - timedelta(minutes=1)).isoformat(),
        notify_by=next_school_day_start(occurred).astimezone(UTC).isoformat(),
    )
    data["content"].update(
        child_given_name=CHILD_GIVEN,
        child_family_name=CHILD_FAMILY,
        child_date_of_birth=CHILD_BORN,
        occurred_at=occurred.isoformat(),
        location=ADDRESS,
        circumstances=(
            f"Police attended a domestic incident at the home of {PARENTS[0]} and "
            f"{PARENTS[1]} late in the evening. An adult was hurt. The child was safe when "
            "officers left."
        ),
    )
    return data


def personal_values(data: dict[str, Any]) -> tuple[str, ...]:
    """What the notice says about people: the child's name and date of birth, the address,
    the parents' names (as submitted)."""
    content = data["content"]
    return (
        content["child_given_name"],
        content["child_family_name"],
        content["child_date_of_birth"],
        content["location"],
        *PARENTS,
    )


class SessionClock:
    """The inbox's session clock: real time plus a jump a test makes to pass the idle limit."""

    def __init__(self) -> None:
        self.shift_s = 0.0

    def __call__(self) -> float:
        return time.time() + self.shift_s


@dataclass
class AgencyInbox:
    running: Running
    url: str
    enrolment: Enrolment
    clock: SessionClock
    sessions: Sessions


@contextlib.asynccontextmanager
async def agency_inbox(
    stack: Stack, agency: str, folder: Path, login: str
) -> AsyncIterator[AgencyInbox]:
    """``agency``'s gateway as ``cairn gateway`` runs it (its consumer, its receipts, its web
    inbox over TLS) with one staff account, ``login``."""
    cert, key = server_certificate(stack.keys, folder / "tls", agency)
    gw = GatewaySettings(tls_cert_file=cert, tls_key_file=key, poll_every_s=0.1)
    web_settings = WebSettings(port=0, session_idle_s=IDLE_S)
    clock = SessionClock()
    async with running_gateway(
        stack.settings,
        gw,
        agency,
        stack.keys,
        store=SqliteGatewayStore(folder / f"{agency}.sqlite"),
        web_settings=web_settings,
    ) as running:
        inbox = running.built.web
        assert inbox is not None
        sessions = inbox[SESSIONS] = Sessions(web_settings, clock=clock)
        enrolment = inbox[USERS].add(login)
        async with serving_web(running.built) as url:
            yield AgencyInbox(running, url, enrolment, clock, sessions)


@dataclass
class Traffic:
    """What a browser context asked for and what it got back."""

    urls: list[str] = field(default_factory=list)
    bodies: list[tuple[str, int, str]] = field(default_factory=list)  # (url, status, body)
    failures: list[str] = field(default_factory=list)
    _reads: list[asyncio.Task[None]] = field(default_factory=list)

    def watch(self, context: Any) -> None:
        context.on("request", lambda request: self.urls.append(request.url))
        context.on("response", lambda r: self._reads.append(asyncio.ensure_future(self._read(r))))

    async def _read(self, response: Any) -> None:
        if 300 <= response.status < 400:  # a redirect has no body; its Location is a URL
            self.bodies.append(
                (response.url, response.status, response.headers.get("location", ""))
            )
            return
        try:
            body = await response.body()
        except Exception as exc:
            self.failures.append(f"{response.url}: {exc}")
            return
        self.bodies.append((response.url, response.status, body.decode("utf-8", "replace")))

    async def settle(self) -> None:
        await asyncio.wait_for(asyncio.gather(*self._reads), WAIT_S)


async def eventually(check: Callable[[], Any], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    for _ in range(int(WAIT_S / 0.1) + 1):
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {WAIT_S:g} s: {what}")


def codes_now(enrolment: Enrolment) -> tuple[str, str]:
    """The right TOTP code now, and a wrong one (accepted at no step the gateway allows)."""
    now = time.time()
    right = totp(enrolment.totp_secret, now)
    valid = {totp(enrolment.totp_secret, now + k * TOTP_STEP_S) for k in (-2, -1, 0, 1, 2)}
    wrong = next(
        c for c in (f"{(int(right) + k) % 1_000_000:06d}" for k in range(1, 9)) if c not in valid
    )
    return right, wrong


async def log_in(page: Any, enrolment: Enrolment, password: str, code: str) -> int:
    """Fill and send the login form; the status of the answer to the POST."""
    await page.fill("input[name=login]", enrolment.staff.login)
    await page.fill("input[name=password]", password)
    await page.fill("input[name=code]", code)
    async with page.expect_response(
        lambda r: urlsplit(r.url).path == "/login" and r.request.method == "POST",
        timeout=WAIT_S * 1000,
    ) as answer:
        await page.click("button[type=submit]")
    await page.wait_for_load_state()
    status: int = (await answer.value).status
    return status


def without_token(html: str) -> str:
    """A login page without its per-visit token (the one part two refusals may differ in)."""
    start = html.index('name="csrf" value="') + len('name="csrf" value="')
    return html[:start] + html[html.index('"', start) :]


async def test_the_dsl_reads_the_encompass_notice_through_the_broker_and_it_is_audited(
    stack: Stack,
    browser: Any,
    artifacts: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Police to school through real Kafka: the DSL logs in (password and TOTP), sees the
    notice with its deadline, opens it (no-contact banner first), a forged CSRF token is
    refused, it is marked read; the audit holds one viewed (the DSL) and one acknowledged
    (read); housing cannot see it; an idle session goes back to /login; no URL, other page or
    log line holds the notice's personal values."""
    caplog.set_level(logging.INFO)
    data = encompass_notice(datetime.now(UTC))
    rid = UUID(data["header"]["notification_id"])
    values = personal_values(data)
    pages: list[tuple[str, str]] = []  # (url, page.content()) at each step
    traffic = Traffic()

    async def snapshot(page: Any, name: str) -> str:
        html: str = await page.content()
        pages.append((page.url, html))
        await page.screenshot(path=str(artifacts / f"gateway-e2e-{name}.png"), full_page=True)
        return html

    with capture_logs() as events:
        async with client(stack.keys, stack.broker_url, "kelder-police") as police:
            receipt = await police.submit(json.dumps(data).encode())
        assert receipt.referral_id == rid
        sent = {r.agency: r.status.value for r in receipt.recipients}
        assert sent[SCHOOL] == "queued"
        assert HOUSING not in sent

        async with (
            agency_inbox(stack, SCHOOL, tmp_path / "school", "dsl@brook.example") as school,
            agency_inbox(stack, HOUSING, tmp_path / "housing", "officer@homes.example") as housing,
        ):
            gateway = school.running.service
            await eventually(lambda: gateway.stored == 1, "the notice in the school's store")
            stored = await gateway.get(rid)
            assert stored is not None
            deadline = deadline_of(stored.disclosure())
            assert deadline is not None
            notify_by = datetime.fromisoformat(data["header"]["notify_by"])

            # -- the school's DSL -----------------------------------------------------------
            dsl = school.enrolment
            context = await browser.new_context(ignore_https_errors=True)
            stack.contexts.append(context)
            traffic.watch(context)
            page = await context.new_page()
            await page.goto(school.url + "/", timeout=WAIT_S * 1000)
            assert urlsplit(page.url).path == "/login"
            await snapshot(page, "login")
            right, wrong = codes_now(dsl)
            assert await log_in(page, dsl, "not the password at all", right) == 401
            bad_password = await snapshot(page, "refused-password")
            assert await log_in(page, dsl, dsl.password, wrong) == 401
            bad_code = await snapshot(page, "refused-code")
            assert await page.inner_text(".error") == REFUSED
            # One page for both: nothing says whether the password or the code was wrong.
            assert without_token(bad_password) == without_token(bad_code)
            assert await log_in(page, dsl, dsl.password, codes_now(dsl)[0]) == 303
            assert urlsplit(page.url).path == "/"
            row = page.locator("tr", has=page.locator(f'a[href="/d/{rid}"]'))
            assert await row.count() == 1
            text = await row.inner_text()
            assert "Operation Encompass notice" in text
            assert f"deadline: {deadline.astimezone(UTC):%a %d %b %Y %H:%M} UTC" in text
            assert await gateway.views(rid) == ()  # listed, not opened
            await snapshot(page, "inbox")

            await page.click(f'a[href="/d/{rid}"]')
            await page.wait_for_selector(".banner", timeout=WAIT_S * 1000)
            assert urlsplit(page.url).path == f"/d/{rid}"
            first = await page.evaluate(
                "document.querySelector('main').firstElementChild.className"
            )
            assert first == "banner"  # above everything
            assert "do NOT contact the parents" in await page.inner_text(".banner")
            body = await page.inner_text("main")
            assert f"read before {notify_by.astimezone(UTC):%a %d %b %Y %H:%M} UTC" in body
            notice_html = await snapshot(page, "notice")
            assert all(v in notice_html for v in values)

            # A forged token, sent from the real form (in a new tab, so that the page the DSL
            # holds is not loaded again: each load is a view on the record).
            form = f'form[action="/d/{rid}/ack"]'
            token = await page.get_attribute(f"{form} input[name=csrf]", "value")
            assert token
            await page.evaluate(
                """([form, forged]) => {
                    const f = document.querySelector(form);
                    f.target = "_blank";
                    f.querySelector("input[name=csrf]").value = forged;
                }""",
                [form, token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")],
            )
            async with (
                context.expect_page(timeout=WAIT_S * 1000) as tab,
                context.expect_event(
                    "response",
                    lambda r: urlsplit(r.url).path == f"/d/{rid}/ack",
                    timeout=WAIT_S * 1000,
                ) as forged_answer,
            ):
                await page.click(f"{form} button[value=read]")
            assert (await forged_answer.value).status == 403
            refused = await tab.value
            await refused.wait_for_load_state()
            assert "refused" in await refused.content()
            await snapshot(refused, "forged-csrf")
            await refused.close()
            after_forgery = await gateway.get(rid)
            assert after_forgery is not None
            assert after_forgery.acknowledged_at is None
            assert await gateway.actions(rid) == ()
            pending = await gateway.store.pending_receipts(10)
            assert "acknowledged" not in [p.kind for p in pending]

            await page.evaluate(
                """([form, token]) => {
                    const f = document.querySelector(form);
                    f.removeAttribute("target");
                    f.querySelector("input[name=csrf]").value = token;
                }""",
                [form, token],
            )
            await page.fill(f"{form} textarea[name=note]", "Told the class teacher")
            await page.click(f"{form} button[value=read]")
            await page.wait_for_selector("text=Read by", timeout=WAIT_S * 1000)
            assert urlsplit(page.url).path == f"/d/{rid}"
            await snapshot(page, "acknowledged")
            done = await gateway.get(rid)
            assert done is not None
            assert done.ack_status == "read"
            staff = f"staff:{dsl.staff.staff_id}"
            assert [(a.status, a.by) for a in await gateway.actions(rid)] == [("read", staff)]

            # -- the housing service's officer ----------------------------------------------
            officer = housing.enrolment
            other = await browser.new_context(ignore_https_errors=True)
            stack.contexts.append(other)
            traffic.watch(other)
            elsewhere = await other.new_page()
            await elsewhere.goto(housing.url + "/", timeout=WAIT_S * 1000)
            assert await log_in(elsewhere, officer, officer.password, codes_now(officer)[0]) == 303
            assert urlsplit(elsewhere.url).path == "/"
            listing = await snapshot(elsewhere, "housing-inbox")
            assert "Nothing received." in listing
            assert str(rid) not in listing
            missing = await elsewhere.goto(f"{housing.url}/d/{rid}", timeout=WAIT_S * 1000)
            assert missing is not None
            assert missing.status == 404
            await snapshot(elsewhere, "housing-not-found")
            assert await housing.running.service.get(rid) is None
            # Idle past the limit: the next page is the login page, and the session is gone.
            housing.clock.shift_s = IDLE_S + 1
            await elsewhere.goto(housing.url + "/", timeout=WAIT_S * 1000)
            assert urlsplit(elsewhere.url).path == "/login"
            await snapshot(elsewhere, "session-expired")
            assert len(housing.sessions) == 0

            # -- on the record --------------------------------------------------------------
            auditor = stack.auditor

            async def audited(kind: AuditEventType) -> list[Any]:
                query = Query(types=(kind,), message_id=rid)
                return await auditor.call(auditor.log.query, query)

            async def all_sent() -> bool:
                return bool(await gateway.store.pending_receipts(10) == ())

            await eventually(all_sent, "the school's receipts sent to the broker")
            owed: int = gateway.receipts_sent

            kinds = (AuditEventType.DELIVERED, AuditEventType.VIEWED, AuditEventType.ACKNOWLEDGED)

            async def all_audited() -> bool:
                return sum([len(await audited(kind)) for kind in kinds]) >= owed

            await eventually(all_audited, "every receipt the school sent in the audit log")
            await asyncio.sleep(1.0)  # a repeat, if the broker made one, would be here by now
            delivered = await audited(AuditEventType.DELIVERED)
            viewed = await audited(AuditEventType.VIEWED)
            acknowledged = await audited(AuditEventType.ACKNOWLEDGED)
            # The gateway's signed receipt that it stored the notice, then the DSL's view and read.
            assert [e.event.recipient for e in delivered] == [SCHOOL]
            assert [(e.event.recipient, e.event.viewer) for e in viewed] == [(SCHOOL, staff)]
            assert [(e.event.recipient, e.event.viewer) for e in acknowledged] == [(SCHOOL, staff)]
            assert acknowledged[0].event.status is not None
            assert acknowledged[0].event.status.value == "read"
            for entry in (*delivered, *viewed, *acknowledged):
                assert not [v for v in values if v in entry.event.model_dump_json()]

            await traffic.settle()

    # -- no personal data anywhere but the school's disclosure page -------------------------
    disclosure_page = f"{school.url}/d/{rid}"
    assert traffic.failures == []
    assert traffic.urls
    assert all(not [v for v in values if v in u] for u in traffic.urls)
    shown = [url for url, status, body in traffic.bodies if url == disclosure_page]
    assert shown
    for url, status, body in traffic.bodies:
        found = [v for v in values if v in body]
        if url == disclosure_page and status == 200:
            assert found == list(values), url
        else:
            assert found == [], (url, status, found)
    for url, html in pages:
        found = [v for v in values if v in html]
        assert found == (list(values) if url == disclosure_page else []), (url, found)
    kinds = {e["event"] for e in events}
    assert {"gateway.stored", "web.login", "web.viewed", "web.acknowledged"} <= kinds
    assert "web.csrf_refused" in kinds
    assert "web.login_refused" in kinds
    lines = [repr(e) for e in events]
    lines += [r.getMessage() for r in caplog.records]
    out, err = capfd.readouterr()
    lines += (out + err).splitlines()
    leaked = [(v, line) for line in lines for v in values if v in line]
    assert leaked == []
