"""The auditor's OpenAPI document against its app: routes, access rule, and a schemathesis run.

Every route of ``auditor_app`` (the IG view included) is documented with its method and every
documented operation is a route; the operations the document marks public (``security: [{}]``)
are exactly those whose handler ``auditor_only`` lets through without the auditor's
certificate; the document is served to the auditor's certificate only. Schemathesis then runs
``broker/audit/openapi.json`` against a real auditor app over TLS, holding the sample feed and a
signed checkpoint, with the auditor's client certificate: no 5xx, every response as documented.
(Its validity and drift: tests/unit/broker/test_openapi.py.)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings

import broker.audit
from broker.audit import service
from broker.audit.service import Auditor, auditor_app, tls_context
from broker.config import Settings
from keys import AUDITOR_ID
from schemas.audit import AuditEvent
from tests.conftest import FederationKeys
from tests.openapi_support import CHECKS, LoopThread, serving, tls_session
from tests.samples import FEDERATION_DIR
from tests.unit.broker.test_openapi import documented, routes

DOC = Path(broker.audit.__file__).with_name("openapi.json")
AUDITOR = schemathesis.openapi.from_path(DOC)
MAX_EXAMPLES = 25  # generated per operation, beside the coverage phase


def _settings(keys: FederationKeys) -> Settings:
    return Settings(
        max_body_bytes=64_000, topic_prefix="unit", federation_dir=FEDERATION_DIR, key_dir=keys.root
    )


def _document() -> dict[str, Any]:
    return json.loads(DOC.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


async def test_the_auditor_routes_are_the_documented_operations(
    federation_keys: FederationKeys, tmp_path: Path
) -> None:
    """auditor_app with the IG view registers exactly the documented (method, path) pairs, and
    the public ones are the handlers auditor_only lets through."""
    auditor = Auditor(
        _settings(federation_keys), federation_keys.trust(AUDITOR_ID), directory=tmp_path
    )
    app = auditor_app(auditor, dashboard=True)
    document = _document()
    assert routes(app) == documented(document)
    public = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None
        and route.handler in service._PUBLIC
        and route.method != "HEAD"
    }
    marked = {
        (method, path)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if {} in operation.get("security", document["security"])
    }
    assert public == marked


async def test_the_document_is_served_to_the_auditor_only(
    federation_keys: FederationKeys, tmp_path: Path
) -> None:
    """GET /openapi.json: the checked-in file for the auditor's certificate, 403 for an
    agency's, as every non-public path."""
    auditor = Auditor(
        _settings(federation_keys), federation_keys.trust(AUDITOR_ID), directory=tmp_path
    )
    await auditor.open()
    try:
        context = tls_context(federation_keys.store, federation_keys.passphrase)
        async with serving(auditor_app(auditor), context) as url:
            for member, status in ((AUDITOR_ID, 200), ("kelder-police", 403)):
                connector = aiohttp.TCPConnector(ssl=federation_keys.client_ssl(member))
                async with (
                    aiohttp.ClientSession(connector=connector) as session,
                    session.get(f"{url}/openapi.json") as answer,
                ):
                    assert answer.status == status
                    if status == 200:
                        assert await answer.read() == DOC.read_bytes()
    finally:
        await auditor.close()


class _Recorded:
    """Where the live auditor's IG searches record their events here: a list (the Kafka path
    is tests/integration/test_ig_trail.py)."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    async def record(self, event: AuditEvent) -> None:
        self.events.append(event)

    async def close(self) -> None:
        return None


@dataclass(frozen=True)
class Live:
    url: str
    session: requests.Session


@pytest.fixture(scope="module")
def live(
    federation_keys: FederationKeys,
    feed: list[tuple[int, bytes]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Live]:
    """A real auditor app over TLS on a loopback port (its own event loop, on a thread), its
    log holding the sample feed under a signed checkpoint, with the IG view."""
    thread = LoopThread()
    auditor = Auditor(
        _settings(federation_keys),
        federation_keys.trust(AUDITOR_ID),
        directory=tmp_path_factory.mktemp("audit"),
        recorder=_Recorded(),
    )

    async def start() -> None:
        await auditor.open()
        await auditor.call(auditor.log.append, feed)
        await auditor.checkpoint()

    session = tls_session(
        federation_keys.client_ssl(AUDITOR_ID), federation_keys.store.path("tls/ca.crt")
    )
    try:
        thread.defer(auditor.close)
        thread.run(start())
        context = tls_context(federation_keys.store, federation_keys.passphrase)
        url = thread.enter(serving(auditor_app(auditor, dashboard=True), context))
        yield Live(url, session)
    finally:
        session.close()
        thread.close()


@AUDITOR.parametrize()
@settings(
    max_examples=MAX_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)
def test_the_auditor_answers_as_its_document_says(case: schemathesis.Case, live: Live) -> None:
    """Every generated request gets a response the document allows: no 5xx, documented
    status, content type, headers and schema; invalid data refused with a 4xx."""
    case.call_and_validate(base_url=live.url, session=live.session, checks=CHECKS, timeout=15)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v1/audit/entries?override=AAA", None),
        ("GET", "/v1/audit/overrides?override=yes", None),
        ("POST", "/v1/audit/subject", {"aliases": [{}], "date_of_birth": "2000-01-01"}),
        ("POST", "/v1/audit/subject", {"nhs_number": 9434765919}),
        ("POST", "/v1/audit/subject", {"aliases": "Tess", "date_of_birth": "2000-01-01"}),
    ],
)
def test_what_schemathesis_found_is_refused_with_a_422(
    live: Live, method: str, path: str, body: object
) -> None:
    """Once a 200 (an unknown override value ignored) or a 500 (an identifier not a string):
    now a 422 naming the field, never echoing the value."""
    answer = live.session.request(method, live.url + path, json=body, timeout=15)
    assert answer.status_code == 422
    problem = answer.json()
    assert problem["type"] == "urn:cairn:problem:invalid-referral"
    assert problem["errors"][0]["field"] in ("override", "aliases", "nhs_number")
    assert "9434765919" not in answer.text
    assert "Tess" not in answer.text
