"""The gateway's web inbox in Debian's Chromium: the school's DSL logs in with password and
TOTP, sees the Encompass notice with its deadline, opens it (the no-contact banner first) and
acknowledges it; a wrong code is refused. Screenshots in test-artifacts/ (git-ignored).

The gateway here is fed from the in-memory broker of the unit fixtures; the audit of the
viewed and acknowledged receipts through real Kafka is covered by G1's gateway tests.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from aiohttp import web

from adapters.agency import opener_for
from adapters.inbox import Delivery
from broker.config import Settings
from broker.kafka.transport import MemoryTransport
from gateway.settings import GatewaySettings
from gateway.sqlite import SqliteGatewayStore
from gateway.users import Users, totp
from gateway.web.app import create_web
from tests.conftest import FederationKeys
from tests.gateway_support import running_gateway, server_certificate
from tests.samples import sample
from tests.unit.conftest import (  # noqa: F401  (fixtures)
    AgencyClient,
    agency_client,
    broker_url,
    settings,
    transport,
)

SCHOOL = "kelder-brook-primary"


@pytest.fixture
async def school_web(
    settings: Settings,  # noqa: F811
    federation_keys: FederationKeys,
    agency_client: AgencyClient,  # noqa: F811
    transport: MemoryTransport,  # noqa: F811
    tmp_path: Path,
) -> AsyncIterator[tuple[str, Users, Any, Any]]:
    cert, key = server_certificate(federation_keys, tmp_path / "tls", SCHOOL)
    gw = GatewaySettings(tls_cert_file=cert, tls_key_file=key)
    async with running_gateway(
        settings,
        gw,
        SCHOOL,
        federation_keys,
        store=SqliteGatewayStore(tmp_path / "school.sqlite"),
        background=False,
    ) as running:
        data = sample("encompass-notification.json")
        data["header"]["notification_id"] = str(uuid4())
        async with agency_client("kelder-police") as police:
            await police.submit(json.dumps(data).encode())
        opener = opener_for(federation_keys.trust(SCHOOL), SCHOOL)
        (record,) = transport.read_committed(f"unit.deliver.{SCHOOL}")
        delivery = Delivery(opener(record.value), record.topic, 0, 0, {})
        await running.service.store_delivery(delivery)
        users = Users(tmp_path / "users.sqlite", SCHOOL)
        enrolment = users.add("dsl@brook.example")
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)  # the inbox: no client cert
        tls.load_cert_chain(str(cert), str(key))
        runner = web.AppRunner(create_web(running.service, users), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
        await site.start()
        port = runner.addresses[0][1]
        try:
            yield f"https://127.0.0.1:{port}", users, enrolment, (running.service, delivery)
        finally:
            await runner.cleanup()
            users.close()


async def test_the_dsl_reads_and_acknowledges_the_notice(
    school_web: tuple[str, Users, Any, Any], browser: Any, artifacts: Path
) -> None:
    url, _, enrolment, (service, delivery) = school_web
    context = await browser.new_context(ignore_https_errors=True)
    page = await context.new_page()
    seen: list[str] = []
    page.on("request", lambda request: seen.append(request.url))
    await page.goto(url + "/")
    assert page.url.endswith("/login")
    wrong = f"{(int(totp(enrolment.totp_secret, time.time())) + 1) % 1_000_000:06d}"
    await page.fill("input[name=login]", enrolment.staff.login)
    await page.fill("input[name=password]", enrolment.password)
    await page.fill("input[name=code]", wrong)
    await page.click("button[type=submit]")
    assert "Login refused" in await page.content()
    await page.fill("input[name=login]", enrolment.staff.login)
    await page.fill("input[name=password]", enrolment.password)
    await page.fill("input[name=code]", totp(enrolment.totp_secret, time.time()))
    await page.click("button[type=submit]")
    await page.wait_for_selector("text=Operation Encompass notice")
    listing = await page.content()
    assert "deadline:" in listing
    await page.screenshot(path=str(artifacts / "gateway-inbox.png"), full_page=True)
    await page.click("text=Operation Encompass notice")
    await page.wait_for_selector(".banner")
    banner = await page.inner_text(".banner")
    assert "do NOT contact the parents" in banner
    await page.screenshot(path=str(artifacts / "gateway-notice.png"), full_page=True)
    notice = delivery.disclosure.referral_id
    assert [v.viewer for v in await service.views(notice)] == [f"staff:{enrolment.staff.staff_id}"]
    await page.fill("textarea[name=note]", "Class teacher told")
    await page.click("text=Mark as read")
    await page.wait_for_selector("text=Read by")
    assert (await service.get(notice)).ack_status == "read"
    await page.click("text=Mark as actioned")
    await page.wait_for_selector("text=Actioned by")
    assert [a.status for a in await service.actions(notice)] == ["read", "actioned"]
    content = delivery.disclosure.notification.content
    for value in (content.child_given_name, content.child_family_name):
        assert value not in listing
        assert all(value not in u for u in seen)
    await context.close()
