"""Schemathesis against a live ``cairn serve``: the broker's OpenAPI document, checked by calling.

The broker runs as its own process, as an operator starts it (``cairn serve``, the ops view
on), over mutual TLS with the development federation's certificates and on the real local
Kafka. Schemathesis generates requests from ``broker/web/openapi.json`` (valid ones and, for
the negative phase, invalid ones) and sends them with a police force's real client
certificate; every response must pass ``tests.openapi_support.CHECKS``: no 5xx, a documented
status code, the documented content type, headers and body schema, a 4xx for data the document
rules out, a 405 with Allow for a method it does not list. A signed referral accepted (202),
replayed (200) and refused as a whole (422) checks the answers random bodies cannot reach.
Examples are bounded (``MAX_EXAMPLES`` per operation) so that the run takes seconds.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings

import broker.web
from keys.envelope import sign_referral
from tests.conftest import FederationKeys
from tests.kafka_support import LocalKafka
from tests.openapi_support import CHECKS, tls_session
from tests.samples import REPO, sample

CAIRN = [sys.executable, "-m", "broker"]
JOSE = "application/jose"
MAX_EXAMPLES = 50  # generated per operation (beside the coverage phase): the run takes seconds
BROKER = schemathesis.openapi.from_path(Path(broker.web.__file__).with_name("openapi.json"))


@schemathesis.serializer(JOSE)
def _jose(_ctx: schemathesis.SerializationContext, value: object) -> bytes:
    """A compact JWS goes on the wire as its ASCII text; anything else as its JSON."""
    return value.encode() if isinstance(value, str) else json.dumps(value).encode()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Live:
    """A running broker and a session presenting a police force's client certificate."""

    url: str
    session: requests.Session
    keys: FederationKeys


@pytest.fixture(scope="module")
def live(
    kafka: LocalKafka, federation_keys: FederationKeys, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    """``cairn serve`` on a free loopback port, its topics created, ready (bounded wait)."""
    tag = uuid.uuid4().hex[:8]
    port = _free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CAIRN_")}
    env = {
        **environ,
        "CAIRN_STATE_DIR": str(tmp_path_factory.mktemp("openapi-state")),
        "CAIRN_KEY_DIR": str(federation_keys.root),
        "CAIRN_KEY_PASSPHRASE": federation_keys.passphrase.decode(),
        "CAIRN_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
        "CAIRN_TOPIC_PREFIX": f"oa{tag}",
        "CAIRN_TRANSACTIONAL_ID": f"cairn-oa-{tag}",
        "CAIRN_HTTP_PORT": str(port),
        "CAIRN_LOG_FORMAT": "json",
    }
    created = subprocess.run(
        [*CAIRN, "topics", "create"], env=env, cwd=REPO, capture_output=True, timeout=90
    )
    assert created.returncode == 0, created.stderr
    log = tmp_path_factory.mktemp("openapi-log") / "serve.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen([*CAIRN, "serve"], env=env, cwd=REPO, stdout=sink, stderr=sink)
    url = f"https://127.0.0.1:{port}"
    session = tls_session(
        federation_keys.client_ssl("kelder-police"), federation_keys.store.path("tls/ca.crt")
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if session.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"cairn serve never became ready: {log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield Live(url, session, federation_keys)
    finally:
        session.close()
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        failed = [
            line
            for line in log.read_text(errors="replace").splitlines()
            if "request.failed" in line
        ]
        assert failed == [], f"the broker logged a 500: {failed[:3]}"


@BROKER.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_the_live_broker_answers_as_its_document_says(case: schemathesis.Case, live: Live) -> None:
    """Every generated request gets a response the document allows: no 5xx, documented
    status, content type, headers and schema; invalid data refused with a 4xx."""
    case.call_and_validate(base_url=live.url, session=live.session, checks=CHECKS, timeout=15)


def test_a_signed_referral_accepted_replayed_and_refused_conforms(live: Live) -> None:
    """A real signed referral: 202 with a receipt, the same again 200 with the first receipt,
    one without its consent and lawful basis 422, each as the document states it."""
    signing = live.keys.trust("kelder-police").signing_key()
    token = sign_referral(json.dumps(sample()).encode(), signing, issued_at=datetime.now(UTC))
    operation = BROKER["/v1/referrals"]["POST"]
    statuses = []
    for _ in range(2):
        case = operation.Case(body=token.decode(), media_type=JOSE)
        response = case.call_and_validate(
            base_url=live.url, session=live.session, checks=CHECKS, timeout=30
        )
        statuses.append(response.status_code)
        assert response.status_code in (200, 202), response.text
    refused = sample()
    refused["header"]["referral_id"] = str(uuid.uuid4())
    del refused["consent"]  # no consent state, no lawful basis: refused as a whole
    token = sign_referral(json.dumps(refused).encode(), signing, issued_at=datetime.now(UTC))
    case = operation.Case(body=token.decode(), media_type=JOSE)
    response = case.call_and_validate(
        base_url=live.url, session=live.session, checks=CHECKS, timeout=30
    )
    assert response.status_code == 422
    assert response.json()["type"].startswith("urn:cairn:problem:")
