"""The IG page in Chromium: a bad NHS number's error next to its field, and an audited search."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from broker.audit.index import Query
from schemas.audit import AuditEventType
from schemas.federation import Federation
from tests.browser.conftest import Stack
from tests.browser.test_dashboard import submit_police_export

REASON = "SAR request ref IG-2026-0142"
SEARCH = "#subject-form button[type=submit]:not(#export-csv)"


async def test_ig_page_puts_a_bad_nhs_number_next_to_its_field_and_records_the_search(
    stack: Stack, browser: Any, federation: Federation, artifacts: Path
) -> None:
    """A wrong check digit: the server's error for 'nhs_number' is shown under that field
    (aria-invalid set), nothing else is reported and nothing recorded; a good number with a
    reason lists the disclosures with their field groups, says what was searched for, and the
    search is an ig_search event in the log naming the auditor's certificate."""
    await submit_police_export(stack, federation)
    await stack.wait_audited(1)
    ctx = await stack.context(browser, "cairn-auditor", stack.auditor_url)
    page = await ctx.new_page()
    await page.goto(f"{stack.auditor_url}/ui/ig")
    await page.wait_for_selector("body[data-loaded=true]", timeout=15_000)

    await page.fill("#nhs_number", "999 000 0019")
    await page.fill("#reason", REASON)
    await page.click(SEARCH)
    error = page.locator("#nhs_number-error")
    await error.filter(has_text="check digit").wait_for(timeout=15_000)
    assert await page.get_attribute("#nhs_number", "aria-invalid") == "true"
    assert await page.locator("#reason-error").inner_text() == ""
    assert await page.locator("#error").is_hidden()
    searches = Query(types=(AuditEventType.IG_SEARCH,))
    assert await stack.auditor.call(stack.auditor.log.query, searches) == []

    await page.fill("#nhs_number", "9990000018")
    await page.fill("#reason", REASON)
    await page.click(SEARCH)
    summary = page.locator("#subject-summary")
    await summary.filter(has_text="Searched by nhs number").wait_for(timeout=15_000)
    assert await error.inner_text() == ""
    table = await page.locator("#subject-disclosures tbody").inner_text()
    assert "disclosed" in table
    assert "G1" in table
    await page.screenshot(path=str(artifacts / "ig-search.png"), full_page=True)

    for _ in range(100):  # the event comes back through cairn.audit; bounded, 20 s
        found = await stack.auditor.call(stack.auditor.log.query, searches)
        if found:
            break
        await asyncio.sleep(0.2)
    (entry,) = found
    assert entry.event.officer == "cairn-auditor"
    assert entry.event.ig_reason == REASON
    assert b"9990000018" not in entry.data
