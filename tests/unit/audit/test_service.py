"""The auditor's HTTP face for the IG officer: the consent overrides, over mutual TLS."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from broker.audit.service import Auditor, auditor_app
from broker.config import Settings
from keys import AUDITOR_ID
from tests.conftest import FederationKeys

Feed = list[tuple[int, bytes]]


@pytest.fixture
async def auditor_url(
    settings: Settings, federation_keys: FederationKeys, feed: Feed, tmp_path: Path
) -> AsyncIterator[str]:
    """An auditor holding the sample feed, with the IG view, on a loopback mutual-TLS port."""
    auditor = Auditor(settings, federation_keys.trust(AUDITOR_ID), directory=tmp_path / "audit")
    await auditor.open()
    await auditor.call(auditor.log.append, feed)
    server = TestServer(auditor_app(auditor, dashboard=True), host="127.0.0.1")
    await server.start_server(ssl=federation_keys.server_ssl())
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()
        await auditor.close()


async def _get(keys: FederationKeys, url: str, agency: str = AUDITOR_ID) -> tuple[int, Any]:
    connector = aiohttp.TCPConnector(ssl=keys.client_ssl(agency))
    async with aiohttp.ClientSession(connector=connector) as session, session.get(url) as reply:
        return reply.status, await reply.json(content_type=None)


async def test_the_ig_api_lists_who_overrode_consent_why_and_on_what_paragraph(
    auditor_url: str, federation_keys: FederationKeys
) -> None:
    """/v1/audit/overrides gives role, staff id, reason and paragraph; filters narrow it."""
    status, body = await _get(federation_keys, f"{auditor_url}/v1/audit/overrides")
    assert status == 200
    rows = body["overrides"]
    assert rows
    assert {r["type"] for r in rows} <= {"disclosed", "refused"}
    for row in rows:
        assert row["override_by_role"]
        assert row["override_by_id"]
        assert row["override_reason"]
        assert row["override_paragraph"]
        assert row["sender"]
        assert row["at"]
    query = "override_by=KP-1102&override_paragraph=dpa2018_sch1_para18"
    url = f"{auditor_url}/v1/audit/overrides?{query}"
    status, body = await _get(federation_keys, url)
    assert status == 200
    assert body["overrides"]
    assert {r["override_by_id"] for r in body["overrides"]} == {"KP-1102"}
    assert {r["sender"] for r in body["overrides"]} == {"kelder-police"}


@pytest.mark.parametrize(
    "query",
    [
        "purpose=Tessina%20Smith",
        "override_reason=Tessina",
        "since=Tessina",
        "limit=Tessina",
        "purpose=%00Tessina",
    ],
)
@pytest.mark.parametrize("path", ["/v1/audit/entries", "/v1/audit/overrides"])
async def test_a_bad_query_parameter_is_a_problem_that_repeats_nothing(
    auditor_url: str, federation_keys: FederationKeys, path: str, query: str
) -> None:
    """A parameter outside its codes is a 4xx naming the parameter, never what was sent."""
    status, body = await _get(federation_keys, f"{auditor_url}{path}?{query}")
    assert 400 <= status < 500
    assert str(body["type"]).startswith("urn:cairn:problem:")
    assert "Tess" not in json.dumps(body)


async def test_only_the_auditors_certificate_reads_the_overrides(
    auditor_url: str, federation_keys: FederationKeys
) -> None:
    """An agency's certificate is refused: staff ids are for the IG officer's eyes."""
    status, body = await _get(federation_keys, f"{auditor_url}/v1/audit/overrides", "kelder-police")
    assert status == 403
    assert "KP-1102" not in str(body)


async def test_the_ig_page_shows_the_overrides_table_from_the_api(
    auditor_url: str, federation_keys: FederationKeys
) -> None:
    """The IG page's overrides table has who decided and the paragraph, filled from the API."""
    connector = aiohttp.TCPConnector(ssl=federation_keys.client_ssl(AUDITOR_ID))
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(f"{auditor_url}/ui/ig") as page:
            html = await page.text()
        async with session.get(f"{auditor_url}/ui/static/ig.js") as script:
            js = await script.text()
    assert "Decided by (role)" in html
    assert "Staff id" in html
    assert "Legal paragraph" in html
    assert "/v1/audit/overrides" in js
    assert "o.override_by_id" in js
