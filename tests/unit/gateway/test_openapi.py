"""Schemathesis against a real gateway API over mutual TLS: gateway/openapi.json, by calling.

The IDVA service's gateway holds four real disclosures (sealed by the broker over the memory
transport, opened with the agency's keys), its API on a loopback port over mutual TLS, on an
event loop of its own (``tests.openapi_support.LoopThread``). Schemathesis sends requests
generated from the document with the agency's own client certificate; every response must pass
``tests.openapi_support.CHECKS``: no 5xx, documented status, content type, headers and schema,
a 4xx for invalid data, a 405 with Allow for an undeclared method. (The document's validity and
drift: tests/unit/broker/test_openapi.py; its routes: test_api.py.)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings

import gateway
from adapters.client import ReferralClient
from broker.config import Settings
from broker.kafka.transport import MemoryTransport
from broker.state import SqliteStore
from broker.web.app import create_app
from gateway.settings import GatewaySettings
from gateway.sqlite import SqliteGatewayStore
from schemas.federation import Federation
from tests.conftest import FederationKeys
from tests.gateway_support import running_gateway, server_certificate
from tests.openapi_support import CHECKS, LoopThread, serving, tls_session
from tests.samples import FEDERATION_DIR
from tests.unit.gateway.test_api import delivered

GATEWAY = schemathesis.openapi.from_path(Path(gateway.__file__).with_name("openapi.json"))
MAX_EXAMPLES = 25  # generated per operation, beside the coverage phase
AGENCY = "kelder-idva"


@dataclass(frozen=True)
class Live:
    url: str
    session: requests.Session


@pytest.fixture(scope="module")
def live(
    federation: Federation,
    federation_keys: FederationKeys,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Live]:
    """The IDVA gateway's API with four stored disclosures, served on a thread's own loop."""
    keys = federation_keys
    folder = tmp_path_factory.mktemp("gateway")
    settings = Settings(
        max_body_bytes=64_000, topic_prefix="unit", federation_dir=FEDERATION_DIR, key_dir=keys.root
    )
    transport = MemoryTransport()
    thread = LoopThread()
    session = tls_session(keys.client_ssl(AGENCY), keys.store.path("tls/ca.crt"))
    try:
        broker_app = create_app(
            settings, federation, transport, keys.trust(), store=SqliteStore(None)
        )
        broker_url = thread.enter(serving(broker_app, keys.server_ssl()))

        def police(agency: str) -> ReferralClient:
            return ReferralClient(
                broker_url,
                ssl_context=keys.client_ssl(agency),
                signing_key=keys.trust(agency).signing_key(),
                clock=lambda: datetime.now(UTC),
            )

        deliveries = thread.run(delivered(police, transport, keys, AGENCY, 4))  # type: ignore[arg-type]
        cert, key = server_certificate(keys, folder / "tls", AGENCY)
        running = thread.enter(
            running_gateway(
                settings,
                GatewaySettings(tls_cert_file=cert, tls_key_file=key),
                AGENCY,
                keys,
                store=SqliteGatewayStore(folder / "gw.sqlite"),
                background=False,
            )
        )
        for delivery in deliveries:
            thread.run(running.service.store_delivery(delivery))
        yield Live(running.url, session)
    finally:
        session.close()
        thread.close()


@GATEWAY.parametrize()
@settings(
    max_examples=MAX_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)
def test_the_gateway_answers_as_its_document_says(case: schemathesis.Case, live: Live) -> None:
    """Every generated request gets a response the document allows: no 5xx, documented
    status, content type, headers and schema; invalid data refused with a 4xx."""
    case.call_and_validate(base_url=live.url, session=live.session, checks=CHECKS, timeout=15)
