"""The dashboard in a real browser: the ops view after a scripted police run, the IG view's
certificate rule, and a subject search in the IG view."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from adapters.police import Outgoing, import_export
from schemas.federation import Federation
from tests.browser.conftest import Stack
from tests.integration.conftest import client
from tests.samples import SAMPLES, all_personal_values

ENCOMPASS = "ENCOMPASS"


async def submit_police_export(stack: Stack, federation: Federation) -> list[Outgoing]:
    """Run the police adapter over the sample export and submit every message, as the demo does."""
    with (SAMPLES / "police-export.jsonl").open(encoding="utf-8") as fh:
        produced, errors = import_export(fh, federation, datetime.now(UTC))
    assert errors == []
    async with client(stack.keys, stack.broker_url, "kelder-police") as police:
        for outgoing in produced:
            await police.submit(outgoing.message)
    return produced


async def test_ops_view_shows_police_flows_and_an_overdue_item(
    stack: Stack, browser: Any, federation: Federation, artifacts: Path
) -> None:
    """After a police run the ops view draws police → recipient flows and lists an overdue
    Encompass notice by id and purpose, with no personal data anywhere on the page."""
    produced = await submit_police_export(stack, federation)
    # Nobody acknowledges; a week later every Encompass deadline (next school day) has passed,
    # and the overdue sweep has found them (the ops view shows what the sweep found).
    stack.ops_clock.shift = timedelta(days=8)
    assert await stack.sweep.sweep()
    ctx = await stack.context(browser, "kelder-police", stack.broker_url)
    page = await ctx.new_page()
    response = await page.goto(f"{stack.broker_url}/ui/")
    assert response is not None
    assert response.status == 200
    await page.wait_for_selector("body[data-loaded=true]", timeout=15_000)
    # The ops clock is a week ahead, so widen the window to take in the run.
    await page.select_option("#window", "2592000")
    await page.locator("#flows tbody tr").first.wait_for(timeout=15_000)

    recipients = {r for o in produced for r in o.recipients}
    for recipient in recipients:
        edge = page.locator(f'#graph path[data-from="kelder-police"][data-to="{recipient}"]')
        assert await edge.count() == 1, recipient
    flows = await page.locator("#flows tbody").inner_text()
    assert "kelder-police" in flows
    assert all(r in flows for r in recipients)

    overdue_text = await page.locator("#overdue tbody").inner_text()
    encompass_ids = {str(o.message_id) for o in produced if o.purpose.value == ENCOMPASS}
    assert encompass_ids
    assert any(i in overdue_text for i in encompass_ids)
    assert ENCOMPASS in overdue_text
    assert await page.locator("#health li[data-component=kafka]").inner_text() == "kafka: up"

    await page.screenshot(path=str(artifacts / "ops-view.png"), full_page=True)
    text = await page.locator("body").inner_text()
    html = await page.content()
    api = await (await page.request.get(f"{stack.broker_url}/ui/api/ops")).text()
    leaked = [v for v in all_personal_values() if v in text or v in html or v in api]
    assert leaked == []


async def test_ig_view_refuses_a_non_auditor_certificate(stack: Stack, browser: Any) -> None:
    """The police force's certificate gets 403 problem+json from the IG page and its API."""
    ctx = await stack.context(browser, "kelder-police", stack.auditor_url)
    page = await ctx.new_page()
    response = await page.goto(f"{stack.auditor_url}/ui/ig")
    assert response is not None
    assert response.status == 403
    assert response.headers["content-type"].startswith("application/problem+json")
    body = json.loads(await response.text())
    assert body["type"] == "urn:cairn:problem:unauthenticated"
    verify = await page.request.post(f"{stack.auditor_url}/ui/ig/api/verify")
    assert verify.status == 403


async def test_ig_view_finds_a_subjects_disclosures_and_verifies_the_log(
    stack: Stack, browser: Any, federation: Federation, artifacts: Path
) -> None:
    """With the auditor's certificate, the consent overrides are listed with who made them, a
    search by NHS number lists that person's disclosures, the latest checkpoint is shown and a
    verification run reports OK."""
    await submit_police_export(stack, federation)
    await stack.wait_audited(1)
    ctx = await stack.context(browser, "cairn-auditor", stack.auditor_url)
    page = await ctx.new_page()
    response = await page.goto(f"{stack.auditor_url}/ui/ig")
    assert response is not None
    assert response.status == 200
    await page.wait_for_selector("body[data-loaded=true]", timeout=15_000)

    # Who overrode consent: the export's override record names a collar number and a role.
    overrides = page.locator("#overrides tbody")
    for _ in range(30):  # the auditor may still be catching up; the page loads them once
        if "KP-1102" in await overrides.inner_text():
            break
        await asyncio.sleep(0.5)
        await page.reload()
        await page.wait_for_selector("body[data-loaded=true]", timeout=15_000)
    listed = await overrides.inner_text()
    assert "KP-1102" in listed
    assert "detective_sergeant" in listed

    await page.fill("#nhs_number", "9990000018")
    await page.fill("#reason", "SAR request ref IG-2026-0142")  # every search says why
    await page.click("#subject-form button[type=submit]:not(#export-csv)")
    summary = page.locator("#subject-summary")
    await summary.filter(has_text="disclosure").wait_for(timeout=15_000)
    results = await page.locator("#subject-results tbody").inner_text()
    assert "disclosed" in results
    assert "kelder-police" in results

    await page.click("#verify")
    await page.wait_for_selector("#verify-result[data-ok]", timeout=30_000)
    assert await page.get_attribute("#verify-result", "data-ok") == "true"
    assert "cairn.local/audit" in await page.locator("#checkpoint").inner_text()
    await page.screenshot(path=str(artifacts / "ig-view.png"), full_page=True)
