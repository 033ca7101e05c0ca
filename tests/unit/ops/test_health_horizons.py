"""The broker's health beyond readiness (issue 18): the auditor (its public checkpoint route,
over real TLS), the registry and the first certificate to expire, the school calendar's end;
in the ops view's JSON (valid under its OpenAPI schema) and in ``cairn status``'s Health table.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import web
from jsonschema import Draft202012Validator
from prometheus_client.parser import text_string_to_metric_families

from broker.cli.status import Status, horizon_rows, parse_metrics
from broker.ops.health import (
    CERTIFICATE_KINDS,
    REGISTRY_KINDS,
    AuditorAnswer,
    AuditorProbe,
    calendar_text,
    expiry_text,
    horizons,
    ops_horizons,
    soonest,
)
from broker.ops.metrics import Metrics, ops_snapshot
from broker.state import SqliteStore
from broker.web.dashboard import StoreOpsSource
from broker.web.openapi import _ops_schema
from tests.conftest import FederationKeys
from tests.gateway_support import server_certificate
from tests.unit.conftest import Clock

DAY = 86_400.0
#: What a fake auditor's GET /v1/audit/status says (broker.audit.service.Auditor.status).
STATUS = {
    "size": 42,
    "next_offset": 80,
    "lag": 3,
    "checkpoint": {"size": 42, "age_s": 12},
    "witnesses": {
        "w1.test": {"result": "cosigned", "checkpoint_size": 40, "witness_size": None, "at": 1}
    },
    "cosigned_size": {"w1.test": 40},
    "forks": 1,
}
STATUS_SAID: dict[str, object] = {}
NOW = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)
CHECKPOINT = (
    b"cairn.example/audit\n42\nq2Uo3r0V3Iv6Zb2bZ1zJ3y6k5nHc4mJQm6yq5eWk0xM=\n\n\xe2\x80\x94 x\n"
)
ITEMS = [
    ("signing_key", "kelder-police", 3 * DAY),  # a key: neither registry nor certificate
    ("member_tls", "kelder-idva", 40 * DAY),
    ("ca", "cairn-federation", 300 * DAY),
    ("registry", "cairn-registry", 20 * DAY),
    ("tls_server", "cairn-broker", 10 * DAY),
]


def test_the_soonest_of_each_kind_is_picked_and_said() -> None:
    assert soonest(ITEMS, REGISTRY_KINDS) == ("registry", "cairn-registry", 20 * DAY)
    assert soonest(ITEMS, CERTIFICATE_KINDS) == ("tls_server", "cairn-broker", 10 * DAY)
    assert soonest([], REGISTRY_KINDS) is None
    assert expiry_text(("registry", "cairn-registry", 20 * DAY), 14).endswith(": ok")
    assert expiry_text(("tls_server", "cairn-broker", 10 * DAY), 14) == (
        "in 10 d 0 h (tls_server cairn-broker): renew soon"
    )
    assert expiry_text(("ca", "x", -2.5 * DAY), 14) == "EXPIRED 2 d 12 h ago (ca x)"
    assert expiry_text(None, 14) == "none found"


def test_the_calendar_end_says_when_encompass_deadlines_stop_being_computable() -> None:
    assert calendar_text(date(2027, 7, 23), 232, 30) == "ends 2027-07-23 (in 232 days): ok"
    assert calendar_text(date(2026, 12, 20), 17, 30).endswith("add the next term dates")
    ended = calendar_text(date(2026, 7, 22), -134, 30)
    assert ended.startswith("ENDED 2026-07-22 (134 days ago)")
    assert "conservative" in ended
    assert calendar_text(None, None, 30).startswith("no term dates")


# -- the auditor, over real TLS -----------------------------------------------------------------


@pytest.fixture
async def auditor(
    federation_keys: FederationKeys, tmp_path: Path
) -> AsyncIterator[tuple[Callable[[int, bytes, float], None], str, ssl.SSLContext, list[int]]]:
    """An HTTPS server on 127.0.0.1 answering the checkpoint route as told; its URL, a client
    context trusting the federation CA, and a count of the requests it had."""
    cert, key = server_certificate(federation_keys, tmp_path / "tls", "cairn-auditor")
    server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ssl.load_cert_chain(str(cert), str(key))
    said: dict[str, object] = {"status": 200, "body": CHECKPOINT, "delay": 0.0}
    asked: list[int] = []
    STATUS_SAID.clear()
    STATUS_SAID.update(status=200, body=json.dumps(STATUS).encode())

    async def status(_request: web.Request) -> web.Response:
        return web.Response(status=int(STATUS_SAID["status"]), body=STATUS_SAID["body"])  # type: ignore[call-overload]

    async def checkpoint(_request: web.Request) -> web.Response:
        asked.append(1)
        await asyncio.sleep(float(said["delay"]))  # type: ignore[arg-type]
        return web.Response(status=int(said["status"]), body=said["body"])  # type: ignore[call-overload]

    app = web.Application()
    app.router.add_get("/v1/audit/log/checkpoint", checkpoint)
    app.router.add_get("/v1/audit/status", status)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ssl)
    await site.start()
    port = runner.addresses[0][1]
    client = ssl.create_default_context(cafile=str(federation_keys.store.path("tls/ca.crt")))

    def tell(status: int, body: bytes, delay: float = 0.0) -> None:
        said.update(status=status, body=body, delay=delay)

    try:
        yield tell, f"https://127.0.0.1:{port}", client, asked
    finally:
        await runner.cleanup()


async def test_the_auditor_probe_reads_the_public_checkpoint_and_says_why_not(
    auditor: tuple[Callable[[int, bytes, float], None], str, ssl.SSLContext, list[int]],
) -> None:
    tell, url, context, asked = auditor
    probe = AuditorProbe(url, context, timeout_s=0.5, cache_s=0.0)
    assert await probe.answer() == AuditorAnswer(
        True, 42, lag=3, checkpoint_age_s=12, forks=1, cosigned_size={"w1.test": 40}
    )
    STATUS_SAID.update(status=404)  # an auditor without the status route: no figures
    assert await probe.answer() == AuditorAnswer(True, 42)
    STATUS_SAID.update(status=200, body=b"not json")
    assert await probe.answer() == AuditorAnswer(True, 42)
    STATUS_SAID.update(status=200, body=json.dumps(STATUS).encode())
    assert await probe() is True
    tell(404, b"", 0.0)
    nothing_signed = await probe.answer()  # answering, nothing signed yet: its figures still
    assert (nothing_signed.answering, nothing_signed.size, nothing_signed.lag) == (True, None, 3)
    tell(503, b"", 0.0)
    assert await probe.answer() == AuditorAnswer(False, None, "http_503")
    tell(200, CHECKPOINT, 2.0)
    assert await probe.answer() == AuditorAnswer(False, None, "timeout")
    # Not the federation's CA: refused at the handshake, never trusted.
    stranger = AuditorProbe(url, ssl.create_default_context(), timeout_s=1.0, cache_s=0.0)
    assert (await stranger.answer()).reason == "unreachable"
    assert (await AuditorProbe(url, None).answer()).reason == "no_ca"
    # Nothing listening.
    gone = AuditorProbe("https://127.0.0.1:9", context, timeout_s=1.0, cache_s=0.0)
    assert await gone.answer() == AuditorAnswer(False, None, "unreachable")
    # Cached: one request within cache_s, however often the ops view refreshes.
    tell(200, CHECKPOINT, 0.0)
    cached = AuditorProbe(url, context, timeout_s=1.0, cache_s=60.0)
    before = len(asked)
    for _ in range(5):
        assert (await cached.answer()).size == 42
    assert len(asked) == before + 1


# -- the ops view -------------------------------------------------------------------------------


async def test_the_ops_view_shows_the_auditor_the_first_expiries_and_the_calendar_end(
    auditor: tuple[Callable[[int, bytes, float], None], str, ssl.SSLContext, list[int]],
) -> None:
    _tell, url, context, _asked = auditor
    probe = AuditorProbe(url, context, timeout_s=1.0)
    get = ops_horizons(lambda: ITEMS, lambda: (date(2026, 12, 3), 232), probe, lambda: NOW)
    store = SqliteStore(None)
    await store.open()
    try:
        source = StoreOpsSource(
            store,
            probes={"auditor": probe},
            clock=Clock(NOW),
            horizons=get,
        )
        snapshot = await source.snapshot(timedelta(hours=1))
    finally:
        await store.close()
    Draft202012Validator(_ops_schema()).validate(snapshot)
    assert snapshot["health"] == {"auditor": "up"}
    assert snapshot["horizons"] == {
        "auditor": {"answering": True, "size": 42, "checkpoint_age_s": 12},
        "registry": {
            "kind": "registry",
            "subject": "cairn-registry",
            "expires_at": (NOW + timedelta(days=20)).isoformat(),
            "seconds_left": int(20 * DAY),
        },
        "certificate": {
            "kind": "tls_server",
            "subject": "cairn-broker",
            "expires_at": (NOW + timedelta(days=10)).isoformat(),
            "seconds_left": int(10 * DAY),
        },
        "calendar": {"last_day": "2027-07-23", "days_left": 232},
    }


def test_horizons_without_anything_known_are_nulls_and_valid() -> None:
    got = horizons(
        [],
        now=NOW,
        calendar_today=NOW.date(),
        calendar_days_left=None,
        auditor=None,
        checkpoint_age_s=None,
    )
    assert got == {
        "auditor": {"answering": None, "size": None, "checkpoint_age_s": None},
        "registry": None,
        "certificate": None,
        "calendar": {"last_day": None, "days_left": None},
    }
    Draft202012Validator(_ops_schema()["properties"]["horizons"]).validate(got)


# -- cairn status -------------------------------------------------------------------------------


def test_status_shows_the_first_expiries_and_the_calendar_end() -> None:
    view = Status(warn_days=14)
    metrics = "\n".join(
        [
            "# TYPE cairn_credential_expiry_seconds gauge",
            *(
                f'cairn_credential_expiry_seconds{{kind="{k}",subject="{s}"}} {v}'
                for k, s, v in ITEMS
            ),
            "# TYPE cairn_school_calendar_days_left gauge",
            "cairn_school_calendar_days_left 17.0",
            "",
        ]
    )
    parse_metrics(metrics, view)
    assert view.calendar_days_left == 17
    # The broker's calendar figure wins over the file's (None here: not read).
    horizon_rows(view, today=date(2026, 12, 3), calendar_days_left=None, calendar_warn_days=30)
    assert view.health["registry expires"] == "in 20 d 0 h (registry cairn-registry): ok"
    assert view.health["first certificate expires"] == (
        "in 10 d 0 h (tls_server cairn-broker): renew soon"
    )
    assert view.health["school calendar ends"] == (
        "ends 2026-12-20 (in 17 days): add the next term dates"
    )
    # Offline: no figures from the broker, the calendar file's days left.
    offline = horizon_rows(
        Status(), today=date(2026, 12, 3), calendar_days_left=-3, calendar_warn_days=30
    )
    assert offline.health["registry expires"] == "none found"
    assert offline.health["school calendar ends"].startswith("ENDED 2026-11-30 (3 days ago)")


# -- the broker's /metrics: the auditor's figures from its route, never from files ------------


async def test_the_broker_metrics_show_the_auditors_own_figures_or_none(
    auditor: tuple[Callable[[int, bytes, float], None], str, ssl.SSLContext, list[int]],
) -> None:
    """cairn_auditor_lag, the checkpoint age and the witness gauges are what the auditor's
    status route said; when it does not answer they are absent (not the last numbers) and
    cairn_auditor_up is 0; the ops snapshot says the same."""
    tell, url, context, _asked = auditor
    metrics = Metrics()
    metrics.auditor = AuditorProbe(url, context, timeout_s=0.5, cache_s=0.0)
    await metrics.read_auditor()
    got = _samples(metrics.render().decode())
    assert got["cairn_auditor_up"] == [({}, 1.0)]
    assert got["cairn_auditor_lag"] == [({}, 3.0)]
    assert got["cairn_auditor_checkpoint_age_seconds"] == [({}, 12.0)]
    assert got["cairn_audit_witness_forks"] == [({}, 1.0)]
    assert got["cairn_audit_witness_cosigned_size"] == [({"witness": "w1.test"}, 40.0)]
    health = (await ops_snapshot(metrics))["health"]
    assert (health["auditor_lag"], health["auditor_checkpoint_age_s"]) == (3, 12.0)
    STATUS_SAID.update(body=json.dumps({**STATUS, "lag": 0}).encode())
    await metrics.read_auditor()
    assert _samples(metrics.render().decode())["cairn_auditor_lag"] == [({}, 0.0)]
    tell(503, b"", 0.0)
    await metrics.read_auditor()
    got = _samples(metrics.render().decode())
    assert got["cairn_auditor_up"] == [({}, 0.0)]
    for gone in (
        "cairn_auditor_lag",
        "cairn_auditor_checkpoint_age_seconds",
        "cairn_audit_witness_forks",
        "cairn_audit_witness_cosigned_size",
    ):
        assert gone not in got
    health = (await ops_snapshot(metrics))["health"]
    assert health["auditor_lag"] is None
    assert health["auditor_checkpoint_age_s"] is None


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out
