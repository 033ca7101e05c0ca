"""Credential expiry in a running broker: the gauge, the `credentials.expiring` line, `cairn
status`, and a renewed TLS server certificate served to new connections without a restart.

The federation here has TLS certificates that expire in 10 days and a registry that expires in
20; `credential_warn_days` is 14 unless a test says otherwise.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from click.testing import CliRunner
from cryptography import x509
from prometheus_client import values
from rich.console import Console
from structlog.testing import capture_logs

from broker.cli.main import cli
from broker.cli.status import Status, credential_warnings, parse_metrics, read_key_store, render
from broker.config import Settings
from broker.ops.credentials import CredentialWatch, ServerCertificate
from broker.ops.metrics import Metrics
from broker.web.server import start_server
from keys import FileStore, Lifetimes
from keys.renewal import renew
from keys.store import PASSPHRASE_ENV, REGISTRY, SERVER_CERT
from tests.conftest import PASSPHRASE, FederationKeys
from tests.samples import FEDERATION_DIR
from tests.unit.conftest import Clock, StartBroker, new_federation_keys

NOW = datetime.now(UTC).replace(microsecond=0)
SHORT = Lifetimes(certificate=timedelta(days=10), registry=timedelta(days=20))
GAUGE = "cairn_credential_expiry_seconds"
DAY = 86_400.0
MEMBERS = (
    "kelder-police",
    "kelder-nhs",
    "kelder-idva",
    "kelder-csc",
    "kelder-brook-primary",
    "kelder-housing",
    "kelder-probation",
    "kelder-marac",
    "cairn-auditor",
)


@pytest.fixture
def keys(tmp_path: Path) -> FederationKeys:
    """A federation whose certificates expire in 10 days and registry in 20."""
    return new_federation_keys(tmp_path / "keys", now=NOW, lifetimes=SHORT)


def watch_of(keys: FederationKeys, clock: Callable[[], datetime], warn_days: int = 14) -> Metrics:
    metrics = Metrics()
    metrics.credential_watch = CredentialWatch(keys.store, clock, warn_days=warn_days)
    metrics.credential_watch.look()
    return metrics


def expiring_lines(logs: list[dict[str, object]]) -> list[tuple[object, ...]]:
    return sorted(
        (e["kind"], e["subject"], e["days_left"])
        for e in logs
        if e["event"] == "credentials.expiring"
    )


def test_the_gauge_gives_seconds_left_per_kind_and_subject(keys: FederationKeys) -> None:
    """10 days for the server and every member certificate, 20 for the registry, five years
    for the CA, a year for the keys; computed at each scrape from the clock."""
    clock = Clock(NOW)
    metrics = watch_of(keys, clock)
    value = metrics.registry.get_sample_value
    assert value(GAUGE, {"kind": "tls_server", "subject": "cairn-broker"}) == 10 * DAY
    for member in MEMBERS:
        assert value(GAUGE, {"kind": "member_tls", "subject": member}) == 10 * DAY
    assert value(GAUGE, {"kind": "registry", "subject": "federation"}) == 20 * DAY
    assert value(GAUGE, {"kind": "ca", "subject": "federation"}) == 5 * 365 * DAY
    assert value(GAUGE, {"kind": "signing_key", "subject": "cairn-broker"}) == 365 * DAY
    assert value(GAUGE, {"kind": "encryption_key", "subject": "kelder-idva"}) == 365 * DAY
    clock.advance(timedelta(days=12, hours=6))
    assert value(GAUGE, {"kind": "tls_server", "subject": "cairn-broker"}) == -2.25 * DAY


def test_the_gauge_is_one_figure_across_workers(
    keys: FederationKeys, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Under `cairn serve --workers`, a deployment fact: one sample per credential from
    whichever worker answers, never summed over workers."""
    folder = tmp_path / "metrics"
    folder.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(folder))
    made = []
    for pid in (4001, 4002):
        value_class = values.MultiProcessValue(lambda pid=pid: pid)  # type: ignore[no-untyped-call]
        monkeypatch.setattr(values, "ValueClass", value_class)
        metrics = Metrics(multiprocess_dir=folder)
        metrics.credential_watch = CredentialWatch(keys.store, Clock(NOW), warn_days=14)
        metrics.credential_watch.look()
        made.append((metrics, value_class))
    try:
        text = made[1][0].render().decode()
        lines = [line for line in text.splitlines() if line.startswith(f"{GAUGE}{{")]
        server = [line for line in lines if 'kind="tls_server"' in line]
        assert server == [f'{GAUGE}{{kind="tls_server",subject="cairn-broker"}} {10 * DAY}']
        assert len(lines) == len({line.split(" ")[0] for line in lines})
    finally:
        for _metrics, value_class in made:
            value_class.close_all_files()  # type: ignore[attr-defined]


def test_each_credential_within_the_window_is_one_warning_line(keys: FederationKeys) -> None:
    """At 14 days: the server and member certificates (10 days left), not the registry (20);
    each line names kind, subject and days left, and no other field but the dates."""
    watch = CredentialWatch(keys.store, Clock(NOW), warn_days=14)
    with capture_logs() as logs:
        soon = watch.check()
    assert len(soon) == 1 + len(MEMBERS)
    assert expiring_lines(logs) == sorted(
        [("tls_server", "cairn-broker", 10)] + [("member_tls", m, 10) for m in MEMBERS]
    )
    server = next(e for e in logs if e.get("kind") == "tls_server")
    assert server == {
        "event": "credentials.expiring",
        "log_level": "warning",
        "kind": "tls_server",
        "subject": "cairn-broker",
        "days_left": 10,
        "expires_at": (NOW + timedelta(days=10)).isoformat(),
        "warn_days": 14,
    }


def test_the_window_is_the_setting(keys: FederationKeys) -> None:
    """`credential_warn_days` defaults to 14; at 21 the registry's 20 days are warned of too,
    at 9 nothing is."""
    assert Settings().credential_warn_days == 14
    with capture_logs() as logs:
        CredentialWatch(keys.store, Clock(NOW), warn_days=21).check()
    assert ("registry", "federation", 20) in expiring_lines(logs)
    with capture_logs() as logs:
        CredentialWatch(keys.store, Clock(NOW), warn_days=9).check()
    assert logs == []


def test_the_warning_is_logged_once_a_day(keys: FederationKeys) -> None:
    """Checked every minute, the lines come once per day, and again the next day."""
    clock = Clock(NOW)
    watch = CredentialWatch(keys.store, clock, warn_days=14)
    with capture_logs() as logs:
        watch.check()
        watch.check()
        clock.advance(timedelta(days=1))
        watch.check()
    server = [e["days_left"] for e in logs if e.get("kind") == "tls_server"]
    assert server == [10, 9]


def test_an_expired_certificate_has_its_own_line(keys: FederationKeys) -> None:
    """Past its end a certificate is `credentials.expired`, an error with the days since."""
    with capture_logs() as logs:
        CredentialWatch(keys.store, Clock(NOW + timedelta(days=13)), warn_days=14).check()
    server = next(e for e in logs if e.get("kind") == "tls_server")
    assert server["event"] == "credentials.expired"
    assert server["log_level"] == "error"
    assert server["days_ago"] == 3
    assert next(e for e in logs if e.get("kind") == "registry")["days_left"] == 7


def test_a_renewal_is_noticed_on_the_next_look_and_warned_about_no_more(
    keys: FederationKeys,
) -> None:
    """After `renew` (what `cairn keys refresh` runs) the watch rereads the changed files the
    same day: `credentials.renewed` per credential moved later, and no warning is left."""
    clock = Clock(NOW)
    watch = CredentialWatch(keys.store, clock, warn_days=14)
    watch.check()
    renew(keys.store, PASSPHRASE, now=NOW, within=timedelta(days=14))
    with capture_logs() as logs:
        assert watch.check() == []
    renewed = sorted((e["kind"], e["subject"]) for e in logs if e["event"] == "credentials.renewed")
    assert ("tls_server", "cairn-broker") in renewed
    assert ("registry", "federation") in renewed
    assert len(renewed) == 2 + len(MEMBERS)
    assert expiring_lines(logs) == []


def test_a_tampered_registry_is_said_and_gives_no_figure(keys: FederationKeys) -> None:
    """A registry that fails its signature: `credentials.unreadable` names the file and the
    reason, and the gauge has no registry sample (the trust store refuses it meanwhile)."""
    token = keys.store.read(REGISTRY)
    keys.store.write(REGISTRY, token.replace(b".", b".x", 1), private=False)
    metrics = Metrics()
    metrics.credential_watch = CredentialWatch(keys.store, Clock(NOW), warn_days=14)
    with capture_logs() as logs:
        metrics.credential_watch.check()
    problems = [e for e in logs if e["event"] == "credentials.unreadable"]
    assert [(e["file"], e["log_level"]) for e in problems] == [(REGISTRY, "error")]
    assert (
        metrics.registry.get_sample_value(GAUGE, {"kind": "registry", "subject": "federation"})
        is None
    )


async def test_the_broker_warns_at_start_up_and_serves_the_gauge(
    start_broker: StartBroker, keys: FederationKeys
) -> None:
    """A broker started on those keys logs each `credentials.expiring` line before any
    request, and its GET /metrics carries the gauge."""
    with capture_logs() as logs:
        broker = await start_broker(keys, clock=Clock(NOW))
    assert ("tls_server", "cairn-broker", 10) in expiring_lines(logs)
    assert len(expiring_lines(logs)) == 1 + len(MEMBERS)
    connector = aiohttp.TCPConnector(ssl=keys.client_ssl("kelder-police"))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(f"{broker.url}/metrics") as response,
    ):
        text = await response.text()
    line = next(x for x in text.splitlines() if x.startswith(f'{GAUGE}{{kind="tls_server"'))
    assert float(line.split()[1]) == 10 * DAY


def test_status_shows_the_credentials_and_warns(keys: FederationKeys) -> None:
    """From the broker's /metrics: a credentials table soonest first and one `warning:` line
    per credential within the window, naming the command that renews it."""
    view = parse_metrics(watch_of(keys, Clock(NOW)).render().decode(), Status())
    assert view.credentials[("tls_server", "cairn-broker")] == 10 * DAY
    assert view.credentials[("registry", "federation")] == 20 * DAY
    warnings = credential_warnings(view)
    assert len(warnings) == 1 + len(MEMBERS)
    assert (
        "warning: tls_server cairn-broker expires in 10 days (credential_warn_days 14); "
        "run 'cairn keys refresh'"
    ) in warnings
    assert not any("registry" in w for w in warnings)
    console = Console(record=True, width=120)
    render(view, console)
    text = console.export_text()
    assert "Credentials (soonest to expire first)" in text
    assert "renew soon" in text
    assert text.rstrip().endswith("run 'cairn keys refresh'")
    view.warn_days = 21
    assert any(
        w.startswith("warning: registry federation expires in 20 days")
        for w in credential_warnings(view)
    )


def test_status_reads_the_key_store_offline(keys: FederationKeys) -> None:
    """Without the broker, the same figures from the key store's public files."""
    view = read_key_store(keys.root, Status(), now=NOW)
    assert view.credentials[("member_tls", "kelder-police")] == 10 * DAY
    assert view.health["credentials"] == f"read from {keys.root}"
    expired = read_key_store(keys.root, Status(), now=NOW + timedelta(days=11))
    assert credential_warnings(expired)[0].startswith("warning: ")
    assert "expired 1 days ago" in credential_warnings(expired)[0]


def test_cairn_status_offline_prints_the_warnings(keys: FederationKeys, tmp_path: Path) -> None:
    """`cairn status --offline` on that key store prints the table and the warning lines."""
    env = {
        "CAIRN_KEY_DIR": str(keys.root),
        "CAIRN_STATE_DIR": str(tmp_path / "state"),
        "CAIRN_FEDERATION_DIR": str(FEDERATION_DIR),
        "CAIRN_CREDENTIAL_WARN_DAYS": "14",
        "COLUMNS": "200",
    }
    result = CliRunner().invoke(cli, ["status", "--offline"], env=env)
    # No broker has run here, so there is no state store to read: the tables and warnings are
    # printed all the same, and the exit status says the store could not be read.
    assert result.exit_code == 1, result.output
    assert "status: not healthy: state store" in result.output
    assert "Credentials (soonest to expire first)" in result.output
    assert "warning: tls_server cairn-broker expires in" in result.output
    assert "warning: registry" not in result.output


# --- a renewed server certificate, over real TLS on loopback ----------------------------------


async def _peer_certificate(
    port: int, context: ssl.SSLContext
) -> tuple[x509.Certificate, asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="localhost"), 10
    )
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der), reader, writer


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    writer.write(b"GET /ping HTTP/1.1\r\nHost: localhost\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.split(b"\r\n")
    length = next(
        int(line.split(b":", 1)[1]) for line in lines if line.lower().startswith(b"content-length:")
    )
    await asyncio.wait_for(reader.readexactly(length), 10)  # the body: the next answer is clean
    return lines[0]


@pytest.fixture
def server_settings(keys: FederationKeys) -> Settings:
    return Settings(
        http_host="127.0.0.1", http_port=0, key_dir=keys.root, federation_dir=FEDERATION_DIR
    )


async def test_a_renewed_server_certificate_is_served_without_a_restart(
    keys: FederationKeys, server_settings: Settings
) -> None:
    """The server keeps listening while its certificate is renewed: after the watch's next
    look, a new connection is handed the renewed certificate (and verifies it against the
    CA), while a connection opened before keeps working; until that look, the old one."""

    async def ping(_request: web.Request) -> web.Response:
        return web.Response(text="pong")

    app = web.Application()
    app.router.add_get("/ping", ping)
    context = keys.server_ssl()
    watch = CredentialWatch(
        keys.store,
        Clock(NOW),
        warn_days=14,
        server=ServerCertificate(context, keys.store, PASSPHRASE),
    )
    watch.check()
    listening = await start_server(app, server_settings, context)
    client = keys.client_ssl("kelder-police")
    try:
        first, reader, writer = await _peer_certificate(listening.port, client)
        assert first.not_valid_after_utc == NOW + timedelta(days=10)
        assert await _get(reader, writer) == b"HTTP/1.1 200 OK"
        renew(keys.store, PASSPHRASE, now=NOW, within=timedelta(days=14))
        on_disk = x509.load_pem_x509_certificate(keys.store.read(SERVER_CERT))
        assert on_disk.not_valid_after_utc == NOW + timedelta(days=365)
        before, _r, w = await _peer_certificate(listening.port, client)
        assert before.serial_number == first.serial_number  # not reloaded yet
        w.close()
        with capture_logs() as logs:
            watch.check()
        assert "tls.server_certificate_reloaded" in [e["event"] for e in logs]
        # The renewed client certificate (same key) is accepted too.
        renewed_client = keys.client_ssl("kelder-police")
        after, reader2, writer2 = await _peer_certificate(listening.port, renewed_client)
        assert after.serial_number == on_disk.serial_number
        assert after.not_valid_after_utc == NOW + timedelta(days=365)
        assert await _get(reader2, writer2) == b"HTTP/1.1 200 OK"
        assert await _get(reader, writer) == b"HTTP/1.1 200 OK"  # the old connection goes on
        writer.close()
        writer2.close()
    finally:
        await listening.close()


async def test_a_mismatched_certificate_and_key_leave_the_served_one_in_place(
    keys: FederationKeys, server_settings: Settings
) -> None:
    """A certificate for another key (a rotation half written) is not loaded: the error is
    logged, and new connections still get the certificate that works."""
    context = keys.server_ssl()
    server = ServerCertificate(context, keys.store, PASSPHRASE)
    working = x509.load_pem_x509_certificate(keys.store.read(SERVER_CERT))
    other = keys.store.read("tls/clients/kelder-police.crt")
    keys.store.write(SERVER_CERT, other, private=False)
    with capture_logs() as logs:
        assert server.reload_if_changed() is False
    assert [e["event"] for e in logs] == ["tls.server_certificate_reload_failed"]
    listening = await start_server(web.Application(), server_settings, context)
    try:
        served, _r, writer = await _peer_certificate(listening.port, keys.client_ssl("kelder-nhs"))
        assert served.serial_number == working.serial_number
        writer.close()
    finally:
        await listening.close()


@pytest.fixture(autouse=True)
def _no_passphrase_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """`cairn status --offline` needs no passphrase: none is set."""
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)


async def test_the_ops_view_lists_what_expires_soon(keys: FederationKeys) -> None:
    """The ops JSON carries the credentials within the window, soonest first, as codes and
    times only; the registry (20 days) is not among them at 14."""
    from broker.state import SqliteStore
    from broker.web.dashboard import StoreOpsSource

    watch = CredentialWatch(keys.store, Clock(NOW), warn_days=14)
    watch.look()
    store = SqliteStore(None)
    await store.open()
    try:
        source = StoreOpsSource(store, clock=Clock(NOW), credentials=watch.summary)
        snapshot = await source.snapshot(timedelta(hours=1))
    finally:
        await store.close()
    listed = snapshot["credentials"]
    assert len(listed) == 1 + len(MEMBERS)
    assert set(listed[0]) == {"kind", "subject", "expires_at", "seconds_left"}
    assert {c["kind"] for c in listed} == {"tls_server", "member_tls"}
    assert all(c["seconds_left"] == 10 * DAY for c in listed)


async def test_a_members_certificate_is_known_from_what_it_presents(
    keys: FederationKeys, server_settings: Settings, tmp_path: Path
) -> None:
    """A broker whose own store holds no member certificate (split custody: they are in the
    agencies' stores) learns each agency's certificate expiry from its verified handshake."""
    import shutil

    own = tmp_path / "broker-store"
    shutil.copytree(keys.root, own)
    shutil.rmtree(own / "tls" / "clients")
    metrics = Metrics()
    metrics.credential_watch = CredentialWatch(FileStore(own), Clock(NOW), warn_days=14)
    metrics.credential_watch.look()
    police = {"kind": "member_tls", "subject": "kelder-police"}
    assert metrics.registry.get_sample_value(GAUGE, police) is None
    listening = await start_server(
        web.Application(), server_settings, keys.server_ssl(), metrics=metrics
    )
    try:
        _cert, _r, writer = await _peer_certificate(
            listening.port, keys.client_ssl("kelder-police")
        )
        writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")  # the server has the handshake
        await writer.drain()
        deadline = asyncio.get_running_loop().time() + 10
        while metrics.registry.get_sample_value(GAUGE, police) is None:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        writer.close()
    finally:
        await listening.close()
    assert metrics.registry.get_sample_value(GAUGE, police) == 10 * DAY
    assert metrics.registry.get_sample_value(GAUGE, {**police, "subject": "kelder-nhs"}) is None


def test_split_custody_the_broker_watches_its_own_store_and_renewal_reaches_every_store(
    tmp_path: Path,
) -> None:
    """With each party in its own store (`keys.custody`), the broker's watch reads its own
    store over the published one (registry, CA, its server certificate; no agency's), and
    `renew_federation` with the CA's store re-certifies the broker's, the auditor's and each
    agency's certificates in place and publishes the registry: the watch sees it all renewed."""
    from broker.federation import load_federation
    from broker.trust import custody_of
    from keys import custody as names
    from keys.development import init_development
    from keys.federation import Admin, refresh_registry
    from keys.registry import BROKER_ID
    from keys.renewal import renew_federation

    settings = Settings(
        state_dir=tmp_path / "state",
        key_dir=tmp_path / "state" / "keys",
        passphrase_dir=tmp_path / "state" / "passphrases",
        federation_dir=FEDERATION_DIR,
    )
    custody = custody_of(settings)
    federation = load_federation(FEDERATION_DIR)
    init_development(custody, federation, now=NOW, lifetimes=SHORT)
    watch = CredentialWatch(custody.member_store(BROKER_ID), Clock(NOW), warn_days=14)
    with capture_logs() as logs:
        soon = watch.check()
    assert [(c.kind.value, c.subject) for c in soon] == [("tls_server", "cairn-broker")]
    assert [e["event"] for e in logs] == ["credentials.expiring"]
    kinds = {(c.kind.value, c.subject) for c in watch.credentials}
    assert {("registry", "federation"), ("ca", "federation")} <= kinds
    assert not any(kind == "member_tls" and s.startswith("kelder-") for kind, s in kinds)

    admin = Admin(custody.store(names.ROOT), custody.passphrase(names.ROOT), custody.public())
    holders = [custody.store(names.BROKER), custody.store(names.AUDITOR)]
    holders += [custody.store(names.agency_store(a)) for a in federation.ids]
    renewal = renew_federation(
        custody.store(names.CA),
        custody.passphrase(names.CA),
        holders,
        lambda: refresh_registry(admin, now=NOW),
        now=NOW,
        within=timedelta(days=14),
        publish_to=(custody.public(),),
    )
    renewed = {(c.kind.value, c.subject) for c in renewal.renewed}
    assert ("tls_server", "cairn-broker") in renewed
    assert ("member_tls", "kelder-police") in renewed
    assert ("registry", "federation") in renewed
    with capture_logs() as logs:
        assert watch.check() == []
    assert ("credentials.renewed", "tls_server") in [(e["event"], e.get("kind")) for e in logs]
    police = read_key_store(settings.keys_path, Status(), now=NOW)
    assert police.credentials[("member_tls", "kelder-police")] == 365 * DAY


def test_the_kafka_clients_certificates_are_watched_too(
    keys: FederationKeys, tmp_path: Path
) -> None:
    """The CA file and client certificate the Kafka clients use (`kafka_ssl_ca_file`,
    `kafka_ssl_cert_file`) expire too: gauged and warned of like the rest; a file that has
    gone is named, not a traceback."""
    from keys.store import CA_CERT, client_cert

    cert_file = tmp_path / "kafka-client.crt"
    cert_file.write_bytes(keys.store.read(client_cert("kelder-police")))
    ca_file = tmp_path / "kafka-ca.crt"
    ca_file.write_bytes(keys.store.read(CA_CERT))
    key_file = keys.store.path("tls/clients/kelder-police.key")
    password = tmp_path / "password"
    password.write_bytes(PASSPHRASE)
    settings = Settings(
        kafka_security_protocol="SSL",
        kafka_ssl_ca_file=ca_file,
        kafka_ssl_cert_file=cert_file,
        kafka_ssl_key_file=key_file,
        kafka_ssl_key_password_file=password,
        credential_warn_days=14,
    )
    metrics = Metrics()
    metrics.credential_watch = CredentialWatch.for_settings(keys.store, Clock(NOW), settings)
    with capture_logs() as logs:
        metrics.credential_watch.check()
    value = metrics.registry.get_sample_value
    assert value(GAUGE, {"kind": "kafka_client", "subject": "kelder-police"}) == 10 * DAY
    assert value(GAUGE, {"kind": "kafka_ca", "subject": "kafka"}) == 5 * 365 * DAY
    assert ("kafka_client", "kelder-police", 10) in expiring_lines(logs)
    view = parse_metrics(metrics.render().decode(), Status())
    assert (
        "warning: kafka_client kelder-police expires in 10 days (credential_warn_days 14); "
        "renew the file CAIRN_KAFKA_SSL_CERT_FILE names"
    ) in credential_warnings(view)
    cert_file.unlink()
    with capture_logs() as logs:
        metrics.credential_watch.check()
    assert [(e["event"], e["file"], e["reason"]) for e in logs] == [
        ("credentials.unreadable", "kafka_client", "missing")
    ]
    assert value(GAUGE, {"kind": "kafka_client", "subject": "kelder-police"}) is None
