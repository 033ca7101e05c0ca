"""The IG officer's own trail: a subject search over mutual TLS is an audit event of its own.

The auditor over real TLS with real certificates (the auditor's, an IG officer's issued from a
request by the federation CA, an agency's); the recorder is a stand-in that appends the event
to the log where the auditor would after consuming it from Kafka (the Kafka path is
tests/integration/test_ig_trail.py).
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.serialization import Encoding

from broker.audit.errors import SearchNotRecorded
from broker.audit.service import Auditor, auditor_app
from broker.audit.trail import KafkaRecorder
from broker.config import Settings
from broker.policy.decide import Decision
from keys import AUDITOR_ID
from keys.enrolment import load_ca
from keys.officers import issue_officer_certificate, officer_csr
from keys.pki import new_tls_key
from keys.store import CA_CERT, encrypt_private_key
from schemas.audit import (
    AuditEvent,
    AuditEventType,
    IdentifierKind,
    acknowledged,
    delivered,
    ig_searched,
    submission_events,
)
from schemas.pseudonyms import person_pseudonyms
from schemas.receipt import Acknowledgement, AcknowledgementStatus
from schemas.referral import Referral
from tests.conftest import FederationKeys
from tests.samples import sample

NHS = "999 000 0018"  # the victim of referral-high-risk.json (fictional)
REASON = "SAR request ref IG-2026-0142 from the data subject"
NOW = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)


@dataclass
class LogRecorder:
    """Appends each event to the log at the next offset, as the auditor would on consuming it."""

    auditor: Auditor
    fail: bool = False
    recorded: list[AuditEvent] = field(default_factory=list)

    async def record(self, event: AuditEvent) -> None:
        if self.fail:
            raise SearchNotRecorded("Kafka did not acknowledge (test)")
        log = self.auditor.log
        await self.auditor.call(log.append, [(log.next_offset, event.canonical())])
        self.recorded.append(event)

    async def close(self) -> None:
        return None


@dataclass
class Served:
    url: str
    auditor: Auditor
    recorder: LogRecorder
    officer_ssl: ssl.SSLContext


def _officer_context(keys: FederationKeys, folder: Path, officer: str) -> ssl.SSLContext:
    """An IG officer's client context: their own key, the CA's certificate for its request."""
    key = new_tls_key()
    csr = officer_csr(key, officer).public_bytes(Encoding.PEM)
    ca = load_ca(keys.store, keys.passphrase)
    cert = issue_officer_certificate(
        ca, csr, "test", now=datetime.now(UTC), validity=timedelta(days=1)
    )
    (folder / "officer.key").write_bytes(encrypt_private_key(key, b"officer pass"))
    (folder / "officer.crt").write_bytes(cert.public_bytes(Encoding.PEM))
    context = ssl.create_default_context(cafile=str(keys.root / CA_CERT))
    context.load_cert_chain(
        folder / "officer.crt",
        folder / "officer.key",
        password="officer pass",  # noqa: S106 (a test key's passphrase)
    )
    return context


@pytest.fixture
async def served(
    settings: Settings, federation_keys: FederationKeys, tmp_path: Path
) -> AsyncIterator[Served]:
    """An auditor whose log holds one referral's events about the sample victim (pseudonyms
    under the federation's secret), its delivery and acknowledgement, with the IG view."""
    trust = federation_keys.trust(AUDITOR_ID)
    auditor = Auditor(settings, trust, directory=tmp_path / "audit")
    recorder = LogRecorder(auditor)
    auditor.recorder = recorder
    await auditor.open()
    referral = Referral.model_validate(sample())
    decisions = [
        Decision(r, allowed=True, reasons=("rule:test",)) for r in referral.header.recipients
    ]
    events = list(submission_events(referral, decisions, secret=trust.pseudonym_secret(), at=NOW))
    first = referral.header.recipients[0]
    events.append(delivered(referral.header.referral_id, recipient=first, at=NOW))
    ack = Acknowledgement(
        referral_id=referral.header.referral_id,
        agency=first,
        status=AcknowledgementStatus.FILED,
        acknowledged_at=NOW + timedelta(minutes=5),
    )
    events.append(acknowledged(ack))
    await auditor.call(auditor.log.append, [(i, e.canonical()) for i, e in enumerate(events)])
    server = TestServer(auditor_app(auditor, dashboard=True), host="127.0.0.1")
    await server.start_server(ssl=federation_keys.server_ssl())
    try:
        yield Served(
            str(server.make_url("")).rstrip("/"),
            auditor,
            recorder,
            _officer_context(federation_keys, tmp_path, "jsmith"),
        )
    finally:
        await server.close()
        await auditor.close()


async def _search(
    context: ssl.SSLContext, url: str, body: Any, query: str = ""
) -> tuple[int, str, str]:
    connector = aiohttp.TCPConnector(ssl=context)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(f"{url}/v1/audit/subject{query}", json=body) as reply,
    ):
        return reply.status, reply.headers.get("Content-Type", ""), await reply.text()


def _log_bytes(auditor: Auditor) -> bytes:
    return b"".join(f.read_bytes() for f in auditor.directory.rglob("*") if f.is_file())


async def test_an_officers_search_is_an_event_of_its_own_with_no_identifier_in_it(
    served: Served, federation_keys: FederationKeys
) -> None:
    """An IG officer's search answers with what was searched, field groups and the
    acknowledgement, and appends one ig_search event: the officer, the reason, the pseudonym;
    the log's files hold neither the NHS number (spaced or not) nor the names typed."""
    size = served.auditor.log.size
    body = {"nhs_number": NHS, "reason": REASON}
    status, _type, text = await _search(served.officer_ssl, served.url, body)
    assert status == 200, text
    answer = json.loads(text)
    secret = federation_keys.trust(AUDITOR_ID).pseudonym_secret()
    wanted = list(person_pseudonyms(secret, nhs_number=NHS))
    assert answer["searched"]["identifiers"] == ["nhs_number"]
    assert answer["searched"]["pseudonyms"] == wanted
    assert answer["searched"]["officer"] == "ig-officer.jsmith"
    disclosures = answer["disclosures"]
    assert disclosures
    assert all(d["field_groups"] for d in disclosures)
    assert {d["acknowledgement"] for d in disclosures} >= {"filed"}
    assert served.auditor.log.size == size + 1
    (event,) = served.recorder.recorded
    stored = served.auditor.log.entry(size).event
    assert stored == event
    assert stored.type is AuditEventType.IG_SEARCH
    assert stored.officer == "ig-officer.jsmith"
    assert stored.ig_reason == REASON
    assert list(stored.subjects) == wanted
    assert answer["searched"]["audit_event"] == str(stored.event_id)
    files = _log_bytes(served.auditor)
    assert NHS.encode() not in files
    assert NHS.replace(" ", "").encode() not in files


async def test_a_search_without_a_reason_is_refused_and_appends_nothing(served: Served) -> None:
    """No reason (or a blank one): a 422 problem naming the 'reason' field, nothing recorded."""
    size = served.auditor.log.size
    for body in ({"nhs_number": NHS}, {"nhs_number": NHS, "reason": "   "}):
        status, ctype, text = await _search(served.officer_ssl, served.url, body)
        assert status == 422, text
        assert ctype.startswith("application/problem+json")
        assert [e["field"] for e in json.loads(text)["errors"]] == ["reason"]
    assert served.auditor.log.size == size
    assert served.recorder.recorded == []


@pytest.mark.parametrize(
    "reason",
    [
        "short",  # under 10 characters
        "x" * 501,  # over 500
        "looking up Testina for the MARAC",  # the given name typed
        "case of 9990000018 for review",  # the NHS number typed
        "SAR, subject born 1991-04-17",  # the date of birth typed
        "call back on 07700 900123 today",  # a phone number's shape
    ],
)
async def test_a_reason_that_is_out_of_bounds_or_names_the_person_is_refused(
    served: Served, reason: str
) -> None:
    """The reason is bounded (10-500) and never holds an identifier: a 422 naming 'reason'
    whose text does not repeat the reason, nothing recorded."""
    body = {
        "given_name": "Testina",
        "family_name": "Fictitia",
        "date_of_birth": "1991-04-17",
        "nhs_number": NHS,
        "reason": reason,
    }
    status, _type, text = await _search(served.officer_ssl, served.url, body)
    assert status == 422, text
    problem = json.loads(text)
    assert [e["field"] for e in problem["errors"]] == ["reason"]
    assert reason not in text
    assert served.recorder.recorded == []


async def test_a_malformed_nhs_number_is_a_problem_naming_the_field(served: Served) -> None:
    """A wrong check digit or a short number: 422 with the error on 'nhs_number', the number
    itself not repeated, nothing recorded."""
    for bad in ("999 000 0019", "12345"):
        status, _type, text = await _search(
            served.officer_ssl, served.url, {"nhs_number": bad, "reason": REASON}
        )
        assert status == 422, text
        errors = json.loads(text)["errors"]
        assert [e["field"] for e in errors] == ["nhs_number"]
        assert bad not in text
    assert served.recorder.recorded == []


async def test_the_csv_export_is_rfc_4180_and_an_ig_export_event(served: Served) -> None:
    """?format=csv: text/csv, a header row, CRLF line ends, one row per disclosure with its
    field groups and acknowledgement; the export is an ig_export event."""
    status, ctype, text = await _search(
        served.officer_ssl, served.url, {"nhs_number": NHS, "reason": REASON}, "?format=csv"
    )
    assert status == 200, text
    assert ctype.split(";")[0] == "text/csv"
    assert text.endswith("\r\n")
    assert "\n" not in text.replace("\r\n", "")
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert rows
    assert {"field_groups", "acknowledgement", "recipient"} <= set(rows[0])
    assert "filed" in {r["acknowledgement"] for r in rows}
    (event,) = served.recorder.recorded
    assert event.type is AuditEventType.IG_EXPORT
    assert event.reasons == ("csv",)


async def test_a_search_kafka_does_not_record_is_not_run(served: Served) -> None:
    """The recorder failing: a 503 problem and no results; the log unchanged."""
    served.recorder.fail = True
    size = served.auditor.log.size
    status, ctype, text = await _search(
        served.officer_ssl, served.url, {"nhs_number": NHS, "reason": REASON}
    )
    assert status == 503
    assert ctype.startswith("application/problem+json")
    assert "disclosed" not in text
    assert served.auditor.log.size == size


async def test_an_agencys_certificate_may_not_search_and_the_auditors_is_recorded_as_itself(
    served: Served, federation_keys: FederationKeys
) -> None:
    """An agency's certificate gets a 403 from the IG routes; the auditor's own certificate
    searches as 'cairn-auditor'. An officer may not read the raw entries API."""
    police = federation_keys.client_ssl("kelder-police")
    body = {"nhs_number": NHS, "reason": REASON}
    status, _type, _text = await _search(police, served.url, body)
    assert status == 403
    assert served.recorder.recorded == []
    status, _type, text = await _search(federation_keys.client_ssl(AUDITOR_ID), served.url, body)
    assert status == 200, text
    assert served.recorder.recorded[-1].officer == AUDITOR_ID
    connector = aiohttp.TCPConnector(ssl=served.officer_ssl)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(f"{served.url}/v1/audit/entries") as reply,
    ):
        assert reply.status == 403
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=served.officer_ssl)) as s,
        s.get(f"{served.url}/ui/ig") as page,
    ):
        assert page.status == 200


async def test_the_kafka_recorder_refuses_in_bounded_time_when_kafka_is_not_there(
    settings: Settings,
) -> None:
    """With nothing listening at the bootstrap address, KafkaRecorder.record raises
    SearchNotRecorded within the connect timeout (aiokafka for real, a closed loopback port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nobody listens there
    closed = settings.model_copy(
        update={"kafka_bootstrap_servers": f"127.0.0.1:{port}", "kafka_connect_timeout_s": 2.0}
    )
    recorder = KafkaRecorder(closed)
    event = ig_searched(
        officer=AUDITOR_ID,
        reason=REASON,
        subjects=("A" * 43,),
        identifiers=(IdentifierKind.NHS_NUMBER,),
        at=datetime.now(UTC),
    )
    started = asyncio.get_running_loop().time()
    try:
        with pytest.raises(SearchNotRecorded):
            await recorder.record(event)
    finally:
        await recorder.close()
    assert asyncio.get_running_loop().time() - started < 15
