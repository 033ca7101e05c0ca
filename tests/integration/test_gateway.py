"""The agency gateway through the real broker and the real Kafka (issue 15, acceptance 1 and 3).

A record delivered twice (the consumer stopped after storing it and before committing, so it
restarts and reads it again) is stored and listed once; cursor paging; another agency's client
certificate refused with a problem; webhooks retried until the receiver answers 2xx and not
repeated after a gateway restart; a view through the API reaches the audit log as one
``viewed`` event, and an acknowledgement as one ``acknowledged``.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import ssl
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from aiohttp import web

from adapters.inbox import Delivery
from broker.audit.index import Query
from broker.config import Settings
from broker.kafka.consumer import DLQ_CONSUMER, DLQ_REASON, DLQ_TOPIC, dlq_topic
from broker.kafka.transport import Record
from gateway.service import Gateway
from gateway.settings import GatewaySettings
from gateway.sqlite import SqliteGatewayStore
from gateway.web.app import USERS
from gateway.webhooks import verify
from keys import verify_ack
from keys.store import CA_CERT
from schemas.audit import AuditEventType, disclosure_digest_of
from schemas.federation import Federation
from schemas.receipt import Acknowledgement
from tests.conftest import FederationKeys
from tests.gateway_support import (
    browser_context,
    case_system,
    running_gateway,
    server_certificate,
    serving_web,
    session,
    web_login,
)
from tests.integration.conftest import cairn_env, client, make_settings, running_broker
from tests.integration.test_consumer_faults import FollowingAuditor, produce
from tests.kafka_support import LocalKafka, read_committed
from tests.samples import sample

AGENCY = "kelder-idva"
WAIT_S = 60.0


async def eventually(check: Callable[[], Any], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:g} s: {what}")
        await asyncio.sleep(0.1)


@pytest.fixture
async def settings(
    kafka: LocalKafka, federation: Federation, federation_keys: FederationKeys
) -> Settings:
    from broker.kafka.topics import federation_topics
    from broker.kafka.transport import create_topics

    # Short pauses: a consumer that failed restarts within a second.
    made = make_settings(
        kafka.bootstrap,
        federation_keys.root,
        consumer_retry_initial_s=0.2,
        consumer_retry_max_s=1.0,
    )
    await create_topics(made, federation_topics(federation, made.topic_prefix))
    return made


@pytest.fixture
async def broker(
    settings: Settings, federation: Federation, federation_keys: FederationKeys
) -> AsyncIterator[str]:
    async with running_broker(settings, federation, federation_keys, consume_receipts=True) as url:
        yield url


@pytest.fixture
def gw_files(federation_keys: FederationKeys, tmp_path: Path) -> dict[str, Any]:
    cert, key = server_certificate(federation_keys, tmp_path / "tls", AGENCY)
    return {"tls_cert_file": cert, "tls_key_file": key, "poll_every_s": 0.1}


async def send(keys: FederationKeys, broker: str, n: int = 1) -> list[UUID]:
    """``n`` referrals from the police to the IDVA service alone; their ids, in order sent."""
    ids = []
    async with client(keys, broker) as c:
        for _ in range(n):
            data = sample()
            data["header"]["referral_id"] = str(uuid4())
            data["header"]["recipients"] = [AGENCY]
            receipt = await c.submit(json.dumps(data).encode())
            assert [r.status.value for r in receipt.recipients] == ["queued"]
            ids.append(receipt.referral_id)
    return ids


async def test_a_record_delivered_twice_is_stored_and_listed_once(
    settings: Settings,
    broker: str,
    federation_keys: FederationKeys,
    gw_files: dict[str, Any],
    tmp_path: Path,
) -> None:
    """The consumer stops after the store has the record and before its offset is committed;
    it restarts, Kafka delivers the record again, the store recognises it: one row, one item
    in the API, one row in the web inbox."""
    calls: list[tuple[int, bool]] = []

    async def crash_once(delivery: Delivery, added: bool) -> None:
        calls.append((delivery.offset, added))
        if len(calls) == 1:
            raise RuntimeError("stopped before the commit")

    def prepare(gateway: Gateway) -> None:
        gateway.after_store = crash_once

    gw = GatewaySettings(**gw_files)
    store = SqliteGatewayStore(tmp_path / "gw.sqlite")
    (rid,) = await send(federation_keys, broker)
    async with running_gateway(
        settings, gw, AGENCY, federation_keys, store=store, prepare=prepare
    ) as running:
        await eventually(lambda: len(calls) >= 2, "the record delivered a second time")
        first, second = calls[:2]
        assert first == (second[0], True)  # the same offset: stored the first time
        assert second[1] is False  # recognised the second time
        assert running.service.stored == 1
        page = await store.page(0, 10, unacknowledged=False)
        assert [s.referral_id for s in page.items] == [rid]
        async with (
            session(federation_keys.client_ssl(AGENCY)) as http,
            http.get(f"{running.url}/v1/disclosures?status=all") as answer,
        ):
            assert answer.status == 200
            listed = await answer.json()
        # ... and once in the web inbox its people see.
        enrolment = running.built.web[USERS].add(f"caseworker-{uuid4().hex[:8]}@idva.example")
        browser_ssl = ssl.create_default_context(
            cadata=federation_keys.store.read(CA_CERT).decode()
        )
        async with serving_web(running.built) as inbox:
            cookie = await web_login(browser_ssl, inbox, enrolment)
            async with session(browser_ssl) as http, http.get(f"{inbox}/", headers=cookie) as page:
                assert page.status == 200
                assert (await page.text()).count(f'href="/d/{rid}"') == 1
    assert [item["referral_id"] for item in listed["items"]] == [str(rid)]
    # A fresh gateway on the same store, same group: the offset was committed after the repeat.
    async with running_gateway(
        settings, gw, AGENCY, federation_keys, store=SqliteGatewayStore(tmp_path / "gw.sqlite")
    ) as again:
        await asyncio.sleep(3.0)
        assert again.service.stored == 0
        assert (await again.service.page(None, 10)).items[0].referral_id == rid


async def test_pages_follow_the_cursor_and_other_agencies_are_refused(
    settings: Settings,
    broker: str,
    federation_keys: FederationKeys,
    gw_files: dict[str, Any],
    tmp_path: Path,
) -> None:
    """Five disclosures in pages of two (2, 2, 1), in the order stored, then nothing new; a
    forged cursor is a 400 problem; the housing service's certificate gets a 403 problem; a
    configured case system's certificate is served."""
    cms, fingerprint = case_system(federation_keys, tmp_path / "cms", "idva-case-system")
    gw = GatewaySettings(**gw_files, case_systems={"idva-cms": fingerprint})
    ids = await send(federation_keys, broker, 5)
    async with running_gateway(
        settings, gw, AGENCY, federation_keys, store=SqliteGatewayStore(tmp_path / "gw.sqlite")
    ) as running:
        await eventually(lambda: running.service.stored == 5, "five disclosures stored")
        seen: list[str] = []
        pages: list[int] = []
        cursor = None
        async with session(federation_keys.client_ssl(AGENCY)) as http:
            for _ in range(5):
                query = "limit=2" + (f"&after={cursor}" if cursor else "")
                async with http.get(f"{running.url}/v1/disclosures?{query}") as answer:
                    assert answer.status == 200
                    page = await answer.json()
                seen += [item["referral_id"] for item in page["items"]]
                pages.append(len(page["items"]))
                cursor = page["cursor"]
                if not page["more"]:
                    break
            assert pages == [2, 2, 1]
            assert sorted(seen) == sorted(str(i) for i in ids)
            assert len(set(seen)) == 5
            async with http.get(f"{running.url}/v1/disclosures?after={cursor}") as answer:
                assert (await answer.json())["items"] == []
            async with http.get(f"{running.url}/v1/disclosures?after=forged") as answer:
                assert answer.status == 400
                assert answer.content_type == "application/problem+json"
                assert (await answer.json())["type"] == "urn:cairn:problem:bad-cursor"
        async with session(federation_keys.client_ssl("kelder-housing")) as http:
            for path in ("/v1/disclosures", f"/v1/disclosures/{ids[0]}"):
                async with http.get(running.url + path) as answer:
                    assert answer.status == 403
                    assert answer.content_type == "application/problem+json"
                    problem = await answer.json()
                    assert problem["type"] == "urn:cairn:problem:forbidden-client"
                    assert problem["status"] == 403
        async with (
            session(cms) as http,
            http.get(f"{running.url}/v1/disclosures/{ids[0]}") as answer,
        ):
            assert answer.status == 200
            assert (await answer.json())["referral_id"] == str(ids[0])
        views = await running.service.views(ids[0])
        assert [v.viewer for v in views] == ["client:idva-cms"]  # the 403s viewed nothing


class Receiver:
    """A loopback webhook receiver that answers 500 to the first ``failures`` attempts."""

    def __init__(self, secret: bytes, failures: int) -> None:
        self.secret = secret
        self.failures = failures
        self.attempts: list[tuple[str, int, bool]] = []  # (webhook-id, status answered, valid)
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        valid = verify(self.secret, dict(request.headers), body, now=int(time.time()))
        if not valid:
            status = 401
        elif len([a for a in self.attempts if a[2]]) < self.failures:
            status = 500
        else:
            status = 204
        self.attempts.append((request.headers.get("webhook-id", ""), status, valid))
        return web.Response(status=status)

    def delivered(self) -> list[str]:
        return [i for i, status, _ in self.attempts if status == 204]

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/hook"
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


async def test_a_webhook_is_retried_until_2xx_and_not_repeated_after_a_restart(
    settings: Settings,
    broker: str,
    federation_keys: FederationKeys,
    gw_files: dict[str, Any],
    tmp_path: Path,
) -> None:
    secret = b"a webhook secret of the IDVA service's case system"
    (tmp_path / "secret").write_bytes(secret)
    async with Receiver(secret, failures=2) as receiver:
        gw = GatewaySettings(
            **gw_files,
            webhook_url=receiver.url,
            webhook_secret_file=tmp_path / "secret",
            webhook_retry_initial_s=0.2,
        )
        (rid,) = await send(federation_keys, broker)
        path = tmp_path / "gw.sqlite"
        async with running_gateway(
            settings, gw, AGENCY, federation_keys, store=SqliteGatewayStore(path)
        ) as running:
            await eventually(lambda: receiver.delivered(), "the webhook delivered")
            assert [(i, s) for i, s, _ in receiver.attempts] == [
                (str(rid), 500),
                (str(rid), 500),
                (str(rid), 204),
            ]
            assert all(valid for *_, valid in receiver.attempts)
            assert await running.service.store.webhook_state(rid) == (3, True, False)
        # Restarted on the same store: nothing is delivered again; a new disclosure is, once.
        async with running_gateway(
            settings, gw, AGENCY, federation_keys, store=SqliteGatewayStore(path)
        ):
            (later,) = await send(federation_keys, broker)
            await eventually(lambda: str(later) in receiver.delivered(), "the next one")
            await asyncio.sleep(1.0)
        assert receiver.delivered() == [str(rid), str(later)]
        assert [i for i, _, _ in receiver.attempts].count(str(rid)) == 3


async def test_a_view_and_an_acknowledgement_through_the_api_are_audited_once_each(
    settings: Settings,
    broker: str,
    federation_keys: FederationKeys,
    gw_files: dict[str, Any],
    tmp_path: Path,
) -> None:
    gw = GatewaySettings(**gw_files)
    (rid,) = await send(federation_keys, broker)
    async with (
        FollowingAuditor(settings, federation_keys, tmp_path / "audit") as auditor,
        running_gateway(
            settings, gw, AGENCY, federation_keys, store=SqliteGatewayStore(tmp_path / "gw.sqlite")
        ) as running,
    ):
        await eventually(lambda: running.service.stored == 1, "the disclosure stored")
        async with session(federation_keys.client_ssl(AGENCY)) as http:
            async with http.get(f"{running.url}/v1/disclosures/{rid}") as answer:
                assert answer.status == 200
                disclosure = await answer.json()
            assert disclosure["referral_id"] == str(rid)
            assert disclosure["recipient_agency"] == AGENCY
            url = f"{running.url}/v1/disclosures/{rid}/acknowledgement"
            async with http.post(url, json={"status": "filed"}) as answer:
                assert answer.status == 201
                assert (await answer.json())["first"] is True
            async with http.post(url) as answer:
                assert answer.status == 200
                assert (await answer.json())["first"] is False

        async def of(kind: AuditEventType) -> list[Any]:
            return await auditor.call(auditor.log.query, Query(types=(kind,), message_id=rid))

        async def both() -> bool:
            return bool(await of(AuditEventType.VIEWED)) and bool(
                await of(AuditEventType.ACKNOWLEDGED)
            )

        await eventually(both, "viewed and acknowledged in the audit log")
        await asyncio.sleep(1.0)  # anything repeated would arrive by now
        viewed = await of(AuditEventType.VIEWED)
        assert [(e.event.recipient, e.event.viewer) for e in viewed] == [
            (AGENCY, f"client:{AGENCY}")
        ]
        assert len(await of(AuditEventType.ACKNOWLEDGED)) == 1
        assert running.service.receipts_sent == 3  # the delivery, the view, the acknowledgement
        assert await running.service.store.pending_receipts(10) == ()
        # For evidence the store kept the JWE exactly as delivered (the bytes the disclosed
        # event's digest names), the JWS inside it, and the signed first acknowledgement.
        kept = await running.service.store.delivered(rid)
        assert kept is not None
        assert kept.jwe is not None
        assert kept.ack is not None
        (disclosed,) = await of(AuditEventType.DISCLOSED)
        assert disclosed.event.disclosure_digest == disclosure_digest_of(kept.jwe.encode())
        assert kept.jws == await running.service.store.signed(rid)
        registry = federation_keys.trust().registry()
        ack = Acknowledgement.model_validate_json(
            verify_ack(kept.ack, registry, signer=AGENCY, now=datetime.now(UTC))
        )
        assert (ack.referral_id, ack.agency, ack.status.value) == (rid, AGENCY, "filed")


async def test_a_record_it_cannot_open_is_dead_lettered_and_the_next_one_stored(
    settings: Settings,
    broker: str,
    federation_keys: FederationKeys,
    gw_files: dict[str, Any],
    tmp_path: Path,
) -> None:
    """A forged record on the agency's topic goes to the dead-letter topic with its reason
    code and source; the disclosure after it is stored."""
    topic = f"{settings.topic_prefix}.deliver.{AGENCY}"
    forged = uuid4()
    await produce(settings, [Record(topic, str(forged).encode(), b"not a JWE", ())])
    (rid,) = await send(federation_keys, broker)
    gw = GatewaySettings(**gw_files)
    async with running_gateway(
        settings, gw, AGENCY, federation_keys, store=SqliteGatewayStore(tmp_path / "gw.sqlite")
    ) as running:
        await eventually(lambda: running.service.stored == 1, "the real disclosure stored")
        assert [s.referral_id for s in (await running.service.page(None, 10)).items] == [rid]
    (dead,) = await read_committed(
        settings.kafka_bootstrap_servers, dlq_topic(settings.topic_prefix)
    )
    headers = dict(dead.headers)
    assert dead.value == b"not a JWE"
    assert headers[DLQ_TOPIC] == topic.encode()
    assert headers[DLQ_CONSUMER] == b"inbox"
    assert headers[DLQ_REASON]


async def test_retention_deletes_the_copy_and_the_deletion_is_audited_once(
    settings: Settings,
    broker: str,
    federation_keys: FederationKeys,
    tmp_path: Path,
) -> None:
    """An Encompass notice (kept a year from receipt) whose year has run out: the sweep
    deletes it, the API no longer has it, and the audit log holds one ``deleted`` event."""
    school = "kelder-brook-primary"
    cert, key = server_certificate(federation_keys, tmp_path / "tls", school)
    gw = GatewaySettings(tls_cert_file=cert, tls_key_file=key, poll_every_s=0.1)
    data = sample("encompass-notification.json")
    rid = uuid4()
    data["header"]["notification_id"] = str(rid)
    async with client(federation_keys, broker) as c:
        await c.submit(json.dumps(data).encode())
    path = tmp_path / "school.sqlite"
    async with (
        FollowingAuditor(settings, federation_keys, tmp_path / "audit") as auditor,
        running_gateway(
            settings, gw, school, federation_keys, store=SqliteGatewayStore(path)
        ) as running,
    ):
        await eventually(lambda: running.service.stored == 1, "the notice stored")
        stored = await running.service.get(rid)
        assert stored is not None
        assert stored.delete_after is not None
        assert stored.delete_after > stored.received_at + timedelta(days=364)
        assert await running.service.sweep_retention() == 0  # not yet
        # A year passes for this row (the keys and the registry stay current).
        with sqlite3.connect(path) as db:
            db.execute("UPDATE gw_disclosures SET delete_after_us = 1")
        assert await running.service.sweep_retention() == 1
        async with (
            session(federation_keys.client_ssl(school)) as http,
            http.get(f"{running.url}/v1/disclosures/{rid}") as answer,
        ):
            assert answer.status == 404

        async def deleted() -> list[Any]:
            return await auditor.call(
                auditor.log.query, Query(types=(AuditEventType.DELETED,), message_id=rid)
            )

        await eventually(deleted, "the deletion in the audit log")
        await asyncio.sleep(1.0)
        (entry,) = await deleted()
        assert (entry.event.recipient, entry.event.reasons) == (school, ("retention-expired",))


async def test_cairn_gateway_runs_as_a_command_and_stops_on_sigterm(
    settings: Settings,
    broker: str,
    federation_keys: FederationKeys,
    gw_files: dict[str, Any],
    tmp_path: Path,
) -> None:
    """``cairn gateway --as AGENCY`` as an operator starts it: it says where its API and its web
    inbox listen, stores what the agency's topic holds, serves it over mutual TLS, shows the
    web inbox's login page over TLS without a client certificate, and exits 0 on SIGTERM."""
    (rid,) = await send(federation_keys, broker)
    env = cairn_env(
        settings,
        federation_keys,
        tmp_path / "state",
        CAIRN_GATEWAY_PORT="0",
        CAIRN_GATEWAY_WEB_PORT="0",
        CAIRN_GATEWAY_TLS_CERT_FILE=str(gw_files["tls_cert_file"]),
        CAIRN_GATEWAY_TLS_KEY_FILE=str(gw_files["tls_key_file"]),
        CAIRN_LOG_FORMAT="json",
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broker", "gateway", "--as", AGENCY,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        url = inbox = ""
        deadline = time.monotonic() + WAIT_S
        while not (url and inbox) and time.monotonic() < deadline:
            line = (await asyncio.wait_for(process.stderr.readline(), WAIT_S)).decode()
            assert line, "the gateway ended before it listened"
            if "listening on " in line:
                found = line.split("listening on ")[1].split()[0]
                if "web inbox" in line:
                    inbox = found
                else:
                    url = found
        assert url.startswith("https://127.0.0.1:")
        assert inbox.startswith("https://127.0.0.1:")
        assert inbox != url + "/"
        async with (
            session(browser_context(federation_keys)) as browser,
            browser.get(f"{inbox}login") as page,
        ):
            assert page.status == 200
            assert "Log in" in await page.text()
        async with session(federation_keys.client_ssl(AGENCY)) as http:

            async def listed() -> bool:
                async with http.get(f"{url}/v1/disclosures") as answer:
                    return [i["referral_id"] for i in (await answer.json())["items"]] == [str(rid)]

            await eventually(listed, "the disclosure listed by the command's API")
        assert (tmp_path / "state" / "gateway" / f"{AGENCY}.sqlite").is_file()
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), WAIT_S)
    assert code == 0
