"""gateway.web.app: the web inbox over a real gateway (its store and signer), in memory.

Login with password and TOTP; wrong password, wrong code, a forged CSRF token and an expired
session refused; the inbox lists what was received; opening a disclosure records one view by
the staff id; acknowledging records it once; search posts its words; no page but the
disclosure page holds the sample's personal data, nor any URL or log line.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from structlog.testing import capture_logs

from adapters.agency import opener_for
from adapters.inbox import Delivery
from broker.config import Settings
from broker.kafka.transport import MemoryTransport
from gateway.settings import GatewaySettings
from gateway.sqlite import SqliteGatewayStore
from gateway.store import deadline_of
from gateway.users import Enrolment, Users, totp
from gateway.web.app import _rows, create_web
from gateway.web.security import COOKIE, CSP, Sessions, WebSettings
from gateway.web.words import group_title, what_was_shared
from schemas.legal import LEGAL_CODES, PURPOSE_WORDS, STATE_WORDS
from schemas.receipt import AcknowledgementStatus
from schemas.referral import FieldGroup
from tests.conftest import FederationKeys
from tests.gateway_support import running_gateway, server_certificate
from tests.samples import all_personal_values, sample
from tests.unit.conftest import AgencyClient
from tests.unit.gateway.test_api import delivered


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@dataclass
class Web:
    client: TestClient[Any, Any]
    users: Users
    enrolment: Enrolment
    ids: list[UUID]
    service: Any
    clock: Clock

    async def login(
        self, password: str | None = None, code: str | None = None
    ) -> aiohttp.ClientResponse:
        page = await self.client.get("/login")
        token = re.search(r'name="csrf" value="([^"]+)"', await page.text())
        assert token is not None
        login_cookie = page.cookies["__Host-cairn-login"].value
        if code is None:
            self.clock.now += 30  # each code is accepted once: a fresh step
            code = totp(self.enrolment.totp_secret, self.clock.now)
        return await self.client.post(
            "/login",
            data={
                "login": self.enrolment.staff.login,
                "password": self.enrolment.password if password is None else password,
                "code": code,
                "csrf": token.group(1),
            },
            headers={"Cookie": f"__Host-cairn-login={login_cookie}"},
            allow_redirects=False,
        )

    async def session(self) -> tuple[dict[str, str], str]:
        answer = await self.login()
        assert answer.status == 303, await answer.text()
        cookie = {"Cookie": f"{COOKIE}={answer.cookies[COOKIE].value}"}
        inbox = await self.client.get("/", headers=cookie)
        csrf = re.search(r'name="csrf" value="([^"]+)"', await inbox.text())
        assert csrf is not None
        return cookie, csrf.group(1)


@pytest.fixture
async def web_inbox(
    settings: Settings,
    federation_keys: FederationKeys,
    agency_client: AgencyClient,
    transport: MemoryTransport,
    tmp_path: Path,
) -> AsyncIterator[Web]:
    cert, key = server_certificate(federation_keys, tmp_path / "tls", "kelder-idva")
    gw = GatewaySettings(tls_cert_file=cert, tls_key_file=key)
    store = SqliteGatewayStore(tmp_path / "gw.sqlite")
    clock = Clock()
    users = Users(tmp_path / "users.sqlite", "kelder-idva", clock=clock)
    enrolment = users.add("caseworker@idva.example")
    sessions = Sessions(WebSettings(session_idle_s=600, session_absolute_s=3600), clock=clock)
    async with running_gateway(
        settings, gw, "kelder-idva", federation_keys, store=store, background=False
    ) as running:
        deliveries = await delivered(agency_client, transport, federation_keys, "kelder-idva", 2)
        for delivery in deliveries:
            await running.service.store_delivery(delivery)
        app = create_web(running.service, users, sessions=sessions)
        async with TestClient(TestServer(app), cookie_jar=aiohttp.DummyCookieJar()) as client:
            yield Web(
                client,
                users,
                enrolment,
                [d.disclosure.referral_id for d in deliveries],
                running.service,
                clock,
            )
    users.close()


def personal(data: dict[str, Any]) -> list[str]:
    victim = data["victim"]
    found = [victim["given_name"], victim["family_name"]]
    return [v for v in found if v]


async def test_login_needs_the_password_and_the_code(web_inbox: Web) -> None:
    wrong_password = await web_inbox.login(password="not-the-password")  # noqa: S106
    assert wrong_password.status == 401
    assert COOKIE not in wrong_password.cookies
    wrong_code = await web_inbox.login(
        code="000000"
        if totp(web_inbox.enrolment.totp_secret, web_inbox.clock.now) != "000000"
        else "111111"
    )
    assert wrong_code.status == 401
    answer = await web_inbox.login()
    assert answer.status == 303
    cookie = answer.headers["Set-Cookie"]
    for flag in ("HttpOnly", "Secure", "SameSite=Strict", "Path=/"):
        assert flag in cookie
    assert answer.headers["Content-Security-Policy"] == CSP
    assert answer.headers["X-Frame-Options"] == "DENY"


async def test_the_login_form_needs_its_own_token(web_inbox: Web) -> None:
    answer = await web_inbox.client.post(
        "/login",
        data={"login": "x", "password": "y", "code": "123456", "csrf": "forged"},
        headers={"Cookie": "__Host-cairn-login=other"},
        allow_redirects=False,
    )
    assert answer.status == 403


async def test_without_a_session_every_page_goes_to_login(web_inbox: Web) -> None:
    for path in ("/", f"/d/{web_inbox.ids[0]}"):
        answer = await web_inbox.client.get(path, allow_redirects=False)
        assert answer.status == 303
        assert answer.headers["Location"] == "/login"
    answer = await web_inbox.client.get(
        "/", headers={"Cookie": f"{COOKIE}=made-up"}, allow_redirects=False
    )
    assert answer.status == 303


async def test_a_session_expires(web_inbox: Web) -> None:
    cookie, _ = await web_inbox.session()
    assert (await web_inbox.client.get("/", headers=cookie, allow_redirects=False)).status == 200
    web_inbox.clock.now += 601
    answer = await web_inbox.client.get("/", headers=cookie, allow_redirects=False)
    assert answer.status == 303
    assert answer.headers["Location"] == "/login"


async def test_a_forged_csrf_token_is_refused_and_nothing_acknowledged(web_inbox: Web) -> None:
    cookie, csrf = await web_inbox.session()
    referral = web_inbox.ids[0]
    forged = await web_inbox.client.post(
        f"/d/{referral}/ack", data={"csrf": csrf[:-2] + "xx"}, headers=cookie, allow_redirects=False
    )
    assert forged.status == 403
    missing = await web_inbox.client.post(
        f"/d/{referral}/ack", headers=cookie, allow_redirects=False
    )
    assert missing.status == 403
    assert (await web_inbox.service.get(referral)).acknowledged_at is None


async def test_view_and_acknowledge_are_recorded_once_each(web_inbox: Web) -> None:
    cookie, csrf = await web_inbox.session()
    referral = web_inbox.ids[0]
    names = personal(sample())
    with capture_logs() as logs:
        inbox = await web_inbox.client.get("/", headers=cookie)
        listing = await inbox.text()
        assert f"/d/{referral}" in listing
        assert (await web_inbox.service.views(referral)) == ()
        page = await web_inbox.client.get(f"/d/{referral}", headers=cookie)
        text = await page.text()
        assert page.status == 200
        assert page.headers["Cache-Control"] == "no-store"
        assert "Why you received this" in text
        assert all(name in text for name in names)
        views = await web_inbox.service.views(referral)
        assert [v.viewer for v in views] == [f"staff:{web_inbox.enrolment.staff.staff_id}"]
        assert "Mark as read" in text
        assert "Mark as actioned" in text
        note = "Spoke to the class teacher"
        for status, words in (("read", note), ("read", "again"), ("actioned", "")):
            done = await web_inbox.client.post(
                f"/d/{referral}/ack",
                data={"csrf": csrf, "status": status, "note": words},
                headers=cookie,
                allow_redirects=False,
            )
            assert done.status == 303
        stored = await web_inbox.service.get(referral)
        assert stored.acknowledged_at is not None
        assert stored.ack_status == "read"  # the first acknowledgement is the signed one
        staff_id = f"staff:{web_inbox.enrolment.staff.staff_id}"
        actions = await web_inbox.service.actions(referral)
        assert [(a.status, a.by, a.note) for a in actions] == [
            ("read", staff_id, note),
            ("actioned", staff_id, ""),
        ]
        owed = await web_inbox.service.store.pending_receipts(10)
        assert [o.kind for o in owed].count("acknowledged") == 1
        shown = await (await web_inbox.client.get(f"/d/{referral}", headers=cookie)).text()
        assert note in shown
        assert "Mark as" not in shown  # read and actioned: nothing left to do
        # The page an acknowledgement redirects to is the same opening: no second view. The
        # next opening is a view again.
        assert len(await web_inbox.service.views(referral)) == 1
        await web_inbox.client.get(f"/d/{referral}", headers=cookie)
        assert len(await web_inbox.service.views(referral)) == 2
        assert note not in str(logs)  # the note stays in the store and on the page
        for bad in ({"status": "filed"}, {"status": "read", "note": "x" * 2001}, {}):
            refused = await web_inbox.client.post(
                f"/d/{referral}/ack", data={"csrf": csrf, **bad}, headers=cookie
            )
            assert refused.status == 400
        found = await web_inbox.client.post(
            "/search", data={"q": names[-1], "csrf": csrf}, headers=cookie
        )
        results = await found.text()
        assert f"/d/{referral}" in results
    for name in names:
        assert name not in listing
        assert name not in results
        assert name not in str(logs)
        assert name not in str(found.url)


async def test_bad_ids_and_bad_searches_are_plain_refusals(web_inbox: Web) -> None:
    cookie, csrf = await web_inbox.session()
    for path in ("/d/not-a-uuid", f"/d/{UUID(int=1)}"):
        answer = await web_inbox.client.get(path, headers=cookie)
        assert answer.status == 404
    short = await web_inbox.client.post("/search", data={"q": "x", "csrf": csrf}, headers=cookie)
    assert short.status == 400
    assert "Traceback" not in await short.text()


async def test_an_encompass_notice_opens_with_the_no_contact_banner_and_its_deadline(
    settings: Settings,
    federation_keys: FederationKeys,
    agency_client: AgencyClient,
    transport: MemoryTransport,
    tmp_path: Path,
    web_inbox: Web,
) -> None:
    school = "kelder-brook-primary"
    cert, key = server_certificate(federation_keys, tmp_path / "school-tls", school)
    gw = GatewaySettings(tls_cert_file=cert, tls_key_file=key)
    data = sample("encompass-notification.json")
    data["header"]["notification_id"] = str(uuid4())
    async with running_gateway(
        settings,
        gw,
        school,
        federation_keys,
        store=SqliteGatewayStore(tmp_path / "school.sqlite"),
        background=False,
    ) as running:
        async with agency_client("kelder-police") as police:
            await police.submit(json.dumps(data).encode())
        opener = opener_for(federation_keys.trust(school), school)
        (record,) = transport.read_committed(f"unit.deliver.{school}")
        delivery = Delivery(opener(record.value), record.topic, 0, 0, {})
        await running.service.store_delivery(delivery)
        notice = delivery.disclosure.referral_id
        clock = Clock()
        users = Users(tmp_path / "school-users.sqlite", school, clock=clock)
        try:
            dsl = users.add("dsl@brook.example")
            app = create_web(running.service, users, sessions=Sessions(WebSettings(), clock=clock))
            async with TestClient(TestServer(app), cookie_jar=aiohttp.DummyCookieJar()) as client:
                web = Web(client, users, dsl, [notice], running.service, clock)
                cookie, _ = await web.session()
                with capture_logs() as logs:
                    listing = await (await client.get("/", headers=cookie)).text()
                    page = await (await client.get(f"/d/{notice}", headers=cookie)).text()
                assert "Operation Encompass notice" in listing
                assert "deadline:" in listing
                assert "none set" not in listing
                main = page[page.index("<main>") :]
                assert main.index("do NOT contact the parents") < main.index("Deadline:")
                assert main.index("Deadline:") < main.index("Why you received this")
                content = data["content"]
                child = [content[k] for k in ("child_given_name", "child_family_name")]
                assert all(v in page for v in child)
                for value in sorted(all_personal_values()):
                    assert value not in listing
                    assert value not in str(logs)
                # The IDVA service's gateway knows neither the notice nor the school's session.
                other = await web_inbox.client.get(
                    f"/d/{notice}", headers=cookie, allow_redirects=False
                )
                assert other.status == 303
                idva_cookie, _ = await web_inbox.session()
                assert (
                    await web_inbox.client.get(f"/d/{notice}", headers=idva_cookie)
                ).status == 404
        finally:
            users.close()


async def test_the_inbox_puts_what_is_due_first_by_the_brokers_deadline(web_inbox: Web) -> None:
    """A high-risk IDVA referral comes with the broker's acknowledgement deadline (24 hours by
    default): due soon now, overdue once past it, and no longer either once acknowledged."""
    items = (await web_inbox.service.page(None, 10)).items
    due = [deadline_of(s.disclosure()) for s in items]
    assert all(d is not None for d in due)
    now = datetime.now(UTC)
    assert _rows(items, now).count(">Due soon<") == 2
    later = _rows(items, now + timedelta(days=2))
    assert later.count(">Overdue<") == 2
    assert f"deadline: {due[0]:%a %d %b %Y %H:%M} UTC" in later  # type: ignore[str-format]
    staff = f"staff:{web_inbox.enrolment.staff.staff_id}"
    await web_inbox.service.acknowledge(
        items[0].referral_id, status=AcknowledgementStatus.READ, by=staff
    )
    items = (await web_inbox.service.page(None, 10)).items
    shown = _rows(items, now + timedelta(days=2))
    assert shown.count(">Overdue<") == 1
    assert shown.index(">Overdue<") < shown.index("Acknowledged (read)")


async def test_a_disclosure_says_why_in_plain_words_with_its_citations(web_inbox: Web) -> None:
    """The disclosure page gives each legal code as its citation and meaning (not the code),
    the consent in words, the retention, the deadline, and per field group what was shared
    and which groups were not."""
    cookie, _ = await web_inbox.session()
    referral = web_inbox.ids[0]
    disclosure = (await web_inbox.service.get(referral)).disclosure()
    text = await (await web_inbox.client.get(f"/d/{referral}", headers=cookie)).text()
    why = text[text.index("Why you received this") : text.index("What was shared")]
    for code in disclosure.lawful_basis.codes:
        cite, words = LEGAL_CODES[code]
        assert f"{cite}: {words}" in why
        assert code not in why
    assert STATE_WORDS[disclosure.consent_basis.state] in why
    assert PURPOSE_WORDS[disclosure.purpose] in why
    assert disclosure.retention.label in why
    assert "Acknowledge by" in why
    for share in disclosure.groups:
        assert f"<strong>{group_title(share.group)}</strong>" in text
    # A recipient given fewer groups is told which it was not given.
    fewer = disclosure.model_copy(update={"groups": disclosure.groups[:3]})
    missing = [g for g in FieldGroup if g not in {s.group for s in fewer.groups}]
    assert "Not shared with you: " + ", ".join(group_title(g) for g in missing) in (
        what_was_shared(fewer)
    )
