"""The scripted demo: a police force's incident export becomes referrals and Encompass notices,
and each reaches exactly its recipients through the real broker and the real Kafka.

Steps: create the development federation if there is none, through the real enrolment
procedure (every agency makes its own keys in its own store and is admitted from its request,
``keys.development``), create the topics, start
``cairn serve`` as its own process (mutual TLS), run the police adapter over the sample export
(``deploy/federation/samples/police-export.jsonl``) and submit every message it produces, signed,
as the police force; then each recipient's inbox decrypts and verifies what it consumes and
prints it. Beside them, the school and the IDVA service each run their gateway (``cairn
gateway --as AGENCY`` as its own process, reading its topic with the agency's own Kafka
credentials): the demo makes each a staff account (a one-time password and a TOTP secret, as
``cairn gateway --as AGENCY user add`` does) and a server certificate from the development CA,
checks through each gateway's API that it stored what was sent to its agency, and prints its
web inbox's URL and the login. The NHS trust sends one referral through MESH: the demo starts
NHS England's mesh-sandbox (``adapters.nhs.mesh.sandbox``) and the trust's bridge (``cairn nhs
mesh --as TRUST`` as its own process), sends the sample FHIR referral message from the trust
system's mailbox with NHS's mesh-client, waits for the receipt in that mailbox and counts the
referral among its recipients' expected disclosures. The IDVA service acknowledges one
disclosure through its gateway's API (a signed receipt, audited as ``acknowledged``). Then the
bridge, the sandbox, the gateways and the broker are stopped (with ``--keep``, at Ctrl-C), the
auditor signs its final checkpoint and the log is verified. When the key store holds the
development witnesses (``keys.development.DEV_WITNESSES``; ``cairn keys init`` makes them), each
runs as ``cairn witness serve`` over TLS from before the auditor starts until after it stops,
and the auditor submits every checkpoint to both (C2SP tlog-witness). Last, the evidence step:
``cairn evidence export`` makes the pack of that disclosure from the auditor's log and the IDVA
gateway's store (the JWE as delivered, its signed acknowledgement), ``cairn evidence verify``
checks it from the federation root key alone and prints what it proves, and a copy with one JWE
character changed is refused, naming what was altered (docs/evidence.md). Kafka itself is
started and stopped by ``make demo``. The broker, the auditor and the gateways listen on the
configured ports (CAIRN_HTTP_PORT, CAIRN_AUDITOR_HTTP_PORT, CAIRN_GATEWAY_PORT and
CAIRN_GATEWAY_WEB_PORT; ``broker.cli.demo_ports``), so a kept demo is where ``cairn status``
and ``--broker`` look by default.

The demo broker keeps its replay memory in a folder of its own per run, so running the demo
again submits the same (stable) message ids again and they are delivered again; the gateways
likewise get a folder of their own per run (``<state_dir>/gateways-*/<agency>``: the store, the
staff accounts, the certificate and the log), so each run's inboxes hold that run's
disclosures and each run prints a fresh login. The bridge's log and ledger stay in
``<state_dir>/mesh-*``; the sandbox's mailboxes (they hold the referral as sent) are deleted
when it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import click
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    PrivateFormat,
)

from adapters.agency import client_for, inbox_for
from adapters.inbox import Delivery
from adapters.nhs.mesh.client import FHIR_JSON
from adapters.nhs.mesh.referrals import referral_id_of
from adapters.nhs.mesh.sandbox import BRIDGE, TRUST_SYSTEM, MeshSandbox, referral_message
from adapters.nhs.mesh.settings import RECEIPT_WORKFLOW, REFERRAL_WORKFLOW
from adapters.police import Outgoing, import_export
from broker.cli.demo_ports import auditor_port, broker_port, gateway_ports
from broker.config import Settings
from broker.federation import load_federation
from broker.kafka.acls import apply_acls, federation_acls
from broker.kafka.tls import member_kafka_tls
from broker.kafka.topics import federation_topics
from broker.kafka.transport import create_topics
from broker.trust import custody_of
from gateway.users import Enrolment, Users, users_path
from keys import FileStore, client_context
from keys import custody as stores
from keys.custody import agency_store
from keys.development import init_development
from keys.enrolment import load_ca
from keys.pki import IssuedCertificate, issue_server_certificate
from keys.store import CA_CERT, ROOT_PUBLIC
from schemas.errors import CairnError
from schemas.federation import Agency, AgencyRole, Federation
from schemas.receipt import Receipt, RecipientStatus

if TYPE_CHECKING:
    from mesh_client import MeshClient

SSL_PORT_ENV = "CAIRN_KAFKA_SSL_PORT"  # kafka-local's mutual-TLS listener, as make demo sets it

__all__ = ["DEFAULT_EXPORT", "run_demo"]

DEFAULT_EXPORT = Path("samples") / "police-export.jsonl"


# Whose gateway the demo runs, and the local part of the staff login it makes there.
GATEWAYS = ((AgencyRole.SCHOOL, "dsl"), (AgencyRole.IDVA, "caseworker"))
GATEWAY_CERT_VALIDITY = timedelta(days=30)
GATEWAY_READY_S = 60.0  # seconds for a gateway process to answer on its API
GATEWAY_POLL_S = 0.5  # seconds between looks at a gateway's listing
# The referral the NHS trust's system sends through MESH, and how often the demo (as that
# system) and the bridge look at their mailboxes.
MESH_SAMPLE = Path("samples") / "nhs-referral-medium-risk.fhir.json"
MESH_POLL_S = 0.5  # seconds


def _free_port() -> int:
    return _free_ports(1)[0]


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (all bound at once, so never the same twice)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]


def _kafka_tls() -> str | None:
    """The local Kafka's mutual-TLS listener with the authorizer (``make demo`` starts it with
    ``CAIRN_KAFKA_SSL_PORT``), or None: then every component uses the PLAINTEXT address."""
    port = os.environ.get(SSL_PORT_ENV)
    return f"127.0.0.1:{port}" if port else None


def _member_kafka(settings: Settings, member: str, tls: str | None) -> dict[str, str]:
    """``member``'s own Kafka settings (its certificate and key from its own store) for the
    TLS listener ``tls``, as setting names; empty without one."""
    if tls is None:
        return {}
    files = member_kafka_tls(custody_of(settings), member, os.environ)
    return {
        "kafka_bootstrap_servers": tls,
        "kafka_security_protocol": "SSL",
        **{name: str(path) for name, path in files.items()},
    }


def _as_env(values: dict[str, str]) -> dict[str, str]:
    return {f"CAIRN_{name.upper()}": value for name, value in values.items()}


def _step(text: str) -> None:
    click.secho(f"==> {text}", bold=True)


def run_demo(
    settings: Settings, *, export: Path | None, timeout_s: float, keep: bool = False
) -> bool:
    federation = load_federation(settings.federation_dir)
    _ensure_keys(settings, federation)

    _step(f"creating topics on {settings.kafka_bootstrap_servers}")
    specs = federation_topics(
        federation,
        settings.topic_prefix,
        ledger_partitions=settings.ledger_partitions,
        replication_factor=settings.topic_replication_factor,
        min_insync_replicas=settings.min_insync_replicas,
    )
    result = asyncio.run(create_topics(settings, specs))
    click.echo(
        f"    {sum(v == 'created' for v in result.values())} created, "
        f"{sum(v == 'exists' for v in result.values())} already there"
    )
    tls = _kafka_tls()
    if tls is not None:
        table = federation_acls(federation, settings.topic_prefix, settings.transactional_id)
        applied = asyncio.run(apply_acls(settings, table))
        click.echo(
            f"    {applied} ACLs applied; every component reaches Kafka at {tls} (mutual TLS, "
            "the standard authorizer) as itself, with its own certificate"
        )
    else:
        click.echo(f"    no TLS listener ({SSL_PORT_ENV} unset): every component uses PLAINTEXT")

    path = export or settings.federation_dir / DEFAULT_EXPORT
    _step(f"police adapter reads {path}")
    with path.open(encoding="utf-8") as fh:
        produced, errors = import_export(fh, federation, datetime.now(UTC))
    for e in errors:
        click.secho(f"    line {e.row}: {e.field}: {e.reason}", fg="yellow")
    click.echo(f"    {len(produced)} message(s) from the export, {len(errors)} problem line(s)")
    if not produced:
        return False

    witnesses = _start_witnesses(settings)
    audit_port = auditor_port(settings)  # CAIRN_AUDITOR_HTTP_PORT (broker.cli.demo_ports)
    _step(f"starting the auditor (audit API on https://127.0.0.1:{audit_port})")
    auditor = subprocess.Popen(  # our own CLI, fixed argv
        [sys.executable, "-m", "broker", "auditor"],
        env={
            **os.environ,
            "CAIRN_STATE_DIR": str(settings.state_dir),
            "CAIRN_KEY_DIR": str(settings.keys_path),
            "CAIRN_PASSPHRASE_DIR": str(settings.passphrases_path),
            "CAIRN_AUDITOR_HTTP_PORT": str(audit_port),
            "CAIRN_LOG_LEVEL": os.environ.get("CAIRN_LOG_LEVEL", "warning"),
            **_as_env(_member_kafka(settings, "cairn-auditor", tls)),
            **_witness_env(settings, witnesses),
        },
        stdin=subprocess.DEVNULL,
    )
    urls: list[str] = []
    chosen: list[Evidence] = []
    try:
        ok = _run_broker(
            settings,
            federation,
            produced,
            timeout_s,
            audit_port=audit_port,
            keep=keep,
            urls=urls,
            tls=tls,
            evidence=chosen,
        )
    finally:
        _step("stopping the auditor (SIGTERM: catch up, sign a final checkpoint)")
        _stop(auditor)
        for w in witnesses:
            _stop(w.process, f"witness {w.member_id}: ")
    ok = _audit_summary(settings) and ok
    if chosen:
        ok = _evidence_step(settings, chosen[0]) and ok
    _step("dashboard" + ("" if keep else " (stopped with the demo; make demo KEEP=1 keeps it)"))
    for url in urls:
        click.echo(f"    {url}")
    return ok


def _wait_for_interrupt() -> None:
    stopped = False

    def handle(_signum: int, _frame: object) -> None:
        nonlocal stopped
        stopped = True

    previous = signal.signal(signal.SIGTERM, handle)
    try:
        while not stopped:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stop(process: subprocess.Popen[bytes], label: str = "") -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    click.echo(f"    {label}exited with {process.returncode}")


def _audit_summary(settings: Settings) -> bool:
    """Print the latest signed checkpoint and verify the whole log offline, from its files."""
    from broker.audit.store import AuditLog

    directory = settings.state_dir / "audit"
    log = AuditLog.open(directory, readonly=True)
    try:
        note = log.published_checkpoint()  # with the witnesses' cosignatures, if collected
    finally:
        log.close()
    _step("latest signed checkpoint (C2SP signed note, and the witnesses' cosignatures)")
    click.echo("    " + (note.decode().replace("\n", "\n    ") if note else "(none)"))
    verify = subprocess.run(  # noqa: S603  (our own CLI, fixed argv)
        [sys.executable, "-m", "broker", "audit", "--dir", str(directory), "verify"],
        env={
            **os.environ,
            "CAIRN_KEY_DIR": str(settings.keys_path),
            "CAIRN_PASSPHRASE_DIR": str(settings.passphrases_path),
        },
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    ok = verify.returncode == 0
    said = "; ".join((verify.stdout or verify.stderr).strip().splitlines())
    click.secho(
        f"audit verify: {'OK' if ok else 'FAILED'} ({said})",
        fg="green" if ok else "red",
        bold=True,
    )
    return ok


def _run_broker(
    settings: Settings,
    federation: Federation,
    produced: list[Outgoing],
    timeout_s: float,
    *,
    audit_port: int,
    keep: bool,
    urls: list[str],
    tls: str | None,
    evidence: list[Evidence],
) -> bool:
    port = broker_port(settings)  # CAIRN_HTTP_PORT
    url = f"https://127.0.0.1:{port}"
    urls += [
        f"ops view: {url}/ui/ (any agency's client certificate, e.g. "
        f"{settings.keys_path / 'agencies' / 'kelder-police' / 'tls'}/...)",
        f"IG view:  https://127.0.0.1:{audit_port}/ui/ig (the auditor's client certificate only)",
    ]
    _step(f"starting the broker on {url} (mutual TLS)")
    run_state = Path(tempfile.mkdtemp(prefix="demo-", dir=_state_dir(settings)))
    env = {
        **os.environ,
        "CAIRN_HTTP_HOST": "127.0.0.1",
        "CAIRN_HTTP_PORT": str(port),
        "CAIRN_STATE_DIR": str(run_state),
        "CAIRN_KEY_DIR": str(settings.keys_path),
        "CAIRN_PASSPHRASE_DIR": str(settings.passphrases_path),
        "CAIRN_LOG_LEVEL": os.environ.get("CAIRN_LOG_LEVEL", "warning"),
        **_as_env(_member_kafka(settings, "cairn-broker", tls)),
    }
    broker = subprocess.Popen(
        [sys.executable, "-m", "broker", "serve"], env=env, stdin=subprocess.DEVNULL
    )
    gateways: list[DemoGateway] = []
    mesh: DemoMesh | None = None
    try:
        if not asyncio.run(_wait_ready(settings, url, broker, timeout_s=30.0)):
            click.secho("    the broker did not become ready", fg="red")
            return False
        click.echo("    ready")
        _start_gateways(settings, federation, tls, gateways)

        _step("the police force submits each message, signed with its key")
        receipts = asyncio.run(_submit_all(settings, url, produced))
        expected: dict[str, set[str]] = defaultdict(set)
        for outgoing in produced:
            receipt = receipts.get(str(outgoing.message_id))
            if receipt is None:
                continue
            for r in receipt.recipients:
                if r.status is RecipientStatus.QUEUED:
                    expected[r.agency].add(str(outgoing.message_id))

        mesh = _start_mesh(settings, federation, url)
        if mesh is not None:
            _mesh_referral(mesh, settings.federation_dir / MESH_SAMPLE, timeout_s)
            for agency, status in mesh.recipients:
                if status == RecipientStatus.QUEUED.value and mesh.referral_id is not None:
                    expected[agency].add(mesh.referral_id)

        _step("each recipient reads its own topic (read_committed), decrypts and verifies")
        received = asyncio.run(_receive_all(settings, expected, timeout_s, tls))
        asyncio.run(_check_gateways(settings, gateways, expected, timeout_s))
        _show_gateways(settings, gateways, expected, keep=keep)
        chosen = asyncio.run(_acknowledge_one(settings, gateways, expected, audit_port))
        if chosen is not None:
            evidence.append(chosen)
        if keep:
            _step(
                "kept running (KEEP=1): the broker, the auditor, the dashboard and the gateways; "
                "press Ctrl-C to stop"
            )
            for line in urls:
                click.echo(f"    {line}")
            for gw in gateways:
                click.echo(f"    web inbox of {gw.agency.id}: {gw.web}")
            if mesh is not None:
                click.echo(f"    MESH sandbox of {mesh.trust}: {mesh.sandbox.url}")
            sys.stdout.flush()  # all of it is on screen (or in a log) before the wait
            _wait_for_interrupt()
    finally:
        if mesh is not None:
            _step("stopping the MESH bridge (SIGTERM) and the MESH sandbox")
            _stop(mesh.bridge, f"{mesh.trust} MESH bridge: ")
            mesh.sandbox.stop()  # and deletes its mailboxes (they hold the referral)
        if gateways:
            _step("stopping the gateways (SIGTERM)")
            for gw in gateways:
                _stop(gw.process, f"{gw.agency.id}: ")
        _step("stopping the broker (SIGTERM: drain, flush)")
        _stop(broker)

    return _summary(produced, receipts, expected, received, gateways, mesh)


def _state_dir(settings: Settings) -> Path:
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    return settings.state_dir


def _ensure_keys(settings: Settings, federation: Federation) -> None:
    custody = custody_of(settings)
    if not FileStore(custody.key_dir).is_empty():
        _step(f"using the federation keys in {custody.key_dir}")
        return
    _step(f"creating the development federation in {custody.key_dir}, through enrolment")
    registry, admitted = init_development(custody, federation, now=datetime.now(UTC))
    click.echo(
        "    administrator: root key, CA and pseudonym secret, the broker's and the auditor's "
        "keys, each in its own store with its own passphrase; registry serial 1"
    )
    for done in admitted:
        click.echo(
            f"    {done.agency:22} made its own keys in {custody.folder(agency_store(done.agency))}"
            f"; enrolled from its request alone (registry serial {done.registry.serial})"
        )
    click.echo(f"    registry serial {registry.serial}; passphrases in {custody.passphrase_dir}")


async def _wait_ready(
    settings: Settings, url: str, process: subprocess.Popen[bytes], *, timeout_s: float
) -> bool:
    """Poll /readyz over mutual TLS (as the police force) until the broker is ready."""
    custody = custody_of(settings)
    context = client_context(
        custody.member_store("kelder-police"),
        "kelder-police",
        custody.passphrase(agency_store("kelder-police")),
    )
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=3), connector=aiohttp.TCPConnector(ssl=context)
    ) as session:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            try:
                async with session.get(f"{url}/readyz") as response:
                    if response.status == 200:
                        return True
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.3)
    return False


async def _submit_all(settings: Settings, url: str, produced: list[Outgoing]) -> dict[str, Receipt]:
    receipts: dict[str, Receipt] = {}
    senders = {o.sender for o in produced}
    for sender in sorted(senders):
        async with client_for(settings, sender, url) as client:
            for o in (o for o in produced if o.sender == sender):
                label = f"line {o.row} {o.purpose.value:9} {o.message_id}"
                try:
                    receipt = await client.submit(o.message)
                except CairnError as exc:
                    click.secho(f"    {label}: refused: {exc}", fg="red")
                    continue
                receipts[str(o.message_id)] = receipt
                click.echo(f"    {label}: accepted")
                for r in receipt.recipients:
                    why = ", ".join(r.reasons)
                    click.echo(f"        {r.agency:22} {r.status.value:7} {why}")
    return receipts


async def _receive_all(
    settings: Settings, expected: dict[str, set[str]], timeout_s: float, tls: str | None
) -> dict[str, set[str]]:
    from broker.cli.common import describe

    received: dict[str, set[str]] = defaultdict(set)

    async def one(agency: str) -> None:
        async def show(delivery: Delivery) -> None:
            click.echo(f"    {describe(delivery)}")
            received[agency].add(str(delivery.disclosure.referral_id))

        update = _member_kafka(settings, agency, tls)
        own = settings.model_copy(
            update={k: Path(v) if k.endswith("_file") else v for k, v in update.items()}
        )
        async with inbox_for(own, agency) as box:
            deadline = time.monotonic() + timeout_s
            while not expected[agency] <= received[agency] and time.monotonic() < deadline:
                await box.drain(
                    show,
                    idle_timeout_s=2.0,
                    total_timeout_s=max(0.1, deadline - time.monotonic()),
                )

    await asyncio.gather(*(one(a) for a in sorted(expected)))
    return received


def _summary(
    produced: list[Outgoing],
    receipts: dict[str, Receipt],
    expected: dict[str, set[str]],
    received: dict[str, set[str]],
    gateways: list[DemoGateway],
    mesh: DemoMesh | None,
) -> bool:
    _step("summary")
    ok = len(receipts) == len(produced)
    for o in produced:
        mid = str(o.message_id)
        for agency in o.recipients:
            got = mid in received.get(agency, set())
            wanted = mid in expected.get(agency, set())
            mark = "received" if got else ("MISSING" if wanted else "not sent")
            ok = ok and got
            click.secho(
                f"    line {o.row}  {o.purpose.value:9}  {agency:22} {mark}",
                fg="green" if got else "red",
            )
    if mesh is not None:
        queued = [a for a, status in mesh.recipients if status == RecipientStatus.QUEUED.value]
        if mesh.failure is not None or not queued:
            ok = False
            click.secho(
                f"    NHS trust via MESH  FAILED: {mesh.failure or 'nothing sent'}", fg="red"
            )
        for agency in queued:
            got = mesh.referral_id in received.get(agency, set())
            ok = ok and got
            click.secho(
                f"    NHS trust via MESH  {agency:22} {'received' if got else 'MISSING'}",
                fg="green" if got else "red",
            )
    stray = {a: ids - expected.get(a, set()) for a, ids in received.items()}
    for agency, ids in stray.items():
        if ids:
            click.echo(f"    {agency} also read {len(ids)} earlier message(s) left on its topic")
    for gw in gateways:
        sent = len(expected.get(gw.agency.id, set()))
        stored = gw.failure is None
        ok = ok and stored
        click.secho(
            f"    gateway of {gw.agency.id:22} "
            + (f"stored {sent} of {sent}" if stored else f"FAILED: {gw.failure}"),
            fg="green" if stored else "red",
        )
    click.secho(
        (
            "demo: OK, every message reached exactly its recipients"
            + (", and each gateway stored what was sent to its agency" if gateways else "")
            + (", the NHS trust's referral through MESH included" if mesh else "")
        )
        if ok
        else "demo: FAILED",
        fg="green" if ok else "red",
        bold=True,
    )
    return ok


# -- the agencies' gateways ------------------------------------------------------------------


@dataclass
class DemoGateway:
    """One agency's gateway as the demo runs it: its own process, folder and staff account."""

    agency: Agency
    folder: Path  # its state folder: store, staff accounts, certificate, log
    api: str  # https://127.0.0.1:PORT (mutual TLS)
    web: str  # https://127.0.0.1:PORT/ (the web inbox)
    enrolment: Enrolment
    process: subprocess.Popen[bytes]
    held: set[str] = field(default_factory=set)  # referral ids its API lists
    failure: str | None = None

    @property
    def log(self) -> Path:
        return self.folder / "gateway.log"


def _start_gateways(
    settings: Settings, federation: Federation, tls: str | None, started: list[DemoGateway]
) -> None:
    """Start the gateways of the federation's first school and first IDVA service (appended to
    ``started`` as each starts, so that the caller stops whatever did) and wait until each
    answers on its API."""
    wanted: list[tuple[Agency, str]] = []
    for role, login in GATEWAYS:
        first = next((a for a in federation.agencies if a.role is role), None)
        if first is not None:
            wanted.append((first, login))
    if not wanted:
        return
    _step("starting a gateway for " + " and ".join(a.id for a, _ in wanted))
    run = Path(tempfile.mkdtemp(prefix="gateways-", dir=_state_dir(settings)))
    custody = custody_of(settings)
    ca = load_ca(custody.store(stores.CA), custody.passphrase(stores.CA))
    now = datetime.now(UTC)
    for index, (agency, login) in enumerate(wanted):
        folder = run / agency.id
        users = Users(users_path(folder, agency.id), agency.id)  # as 'user add' opens them
        try:
            enrolment = users.add(f"{login}@{agency.id}.example")
        finally:
            users.close()
        api_port, web_port = gateway_ports(index)  # CAIRN_GATEWAY_PORT, CAIRN_GATEWAY_WEB_PORT
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("CAIRN_GATEWAY_")},
            "CAIRN_STATE_DIR": str(folder),
            "CAIRN_KEY_DIR": str(settings.keys_path),
            "CAIRN_PASSPHRASE_DIR": str(settings.passphrases_path),
            "CAIRN_LOG_LEVEL": os.environ.get("CAIRN_LOG_LEVEL", "warning"),
            "CAIRN_GATEWAY_HOST": "127.0.0.1",
            "CAIRN_GATEWAY_PORT": str(api_port),
            "CAIRN_GATEWAY_WEB_HOST": "127.0.0.1",
            "CAIRN_GATEWAY_WEB_PORT": str(web_port),
            **_gateway_certificate(ca, federation.name, folder / "tls", agency.id, now),
            **_as_env(_member_kafka(settings, agency.id, tls)),
        }
        with (folder / "gateway.log").open("wb") as log:
            process = subprocess.Popen(  # noqa: S603  (our own CLI; an id of the federation file)
                [sys.executable, "-m", "broker", "gateway", "--as", agency.id],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        started.append(
            DemoGateway(
                agency,
                folder,
                f"https://127.0.0.1:{api_port}",
                f"https://127.0.0.1:{web_port}/",
                enrolment,
                process,
            )
        )
    asyncio.run(_wait_gateways(settings, started))
    for gw in started:
        if gw.failure is None:
            click.echo(
                f"    {gw.agency.id:22} ready: its API at {gw.api}, its web inbox at {gw.web}"
            )
        else:
            _gateway_failed(gw)


def _gateway_certificate(
    ca: IssuedCertificate, federation_name: str, folder: Path, agency: str, now: datetime
) -> dict[str, str]:
    """A server certificate for ``agency``'s gateway on 127.0.0.1 from the development CA, its
    key encrypted under a random password kept beside it (each file 0600), as the gateway's
    settings. (A real agency's certificate comes from whatever CA its case systems trust.)"""
    issued = issue_server_certificate(
        ca,
        federation_name,
        now=now,
        validity=GATEWAY_CERT_VALIDITY,
        common_name=f"{agency}-gateway",
        hosts=("127.0.0.1", "localhost"),
    )
    password = secrets.token_urlsafe(24)
    out = FileStore(folder)
    key = issued.key.private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(password.encode())
    )
    out.write("gateway.key", key, private=True)
    out.write("gateway.key.password", password.encode() + b"\n", private=True)
    out.write("gateway.crt", issued.certificate_pem(), private=False)
    return {
        "CAIRN_GATEWAY_TLS_CERT_FILE": str(out.path("gateway.crt")),
        "CAIRN_GATEWAY_TLS_KEY_FILE": str(out.path("gateway.key")),
        "CAIRN_GATEWAY_TLS_KEY_PASSWORD_FILE": str(out.path("gateway.key.password")),
    }


def _agency_tls(settings: Settings, agency: str) -> ssl.SSLContext:
    """``agency``'s own client context (its certificate names it: its gateway's API serves it)."""
    custody = custody_of(settings)
    return client_context(
        custody.member_store(agency), agency, custody.passphrase(agency_store(agency))
    )


async def _listing(session: aiohttp.ClientSession, api: str) -> set[str]:
    """The referral ids the gateway's API lists (every page, acknowledged ones included)."""
    held: set[str] = set()
    params = {"status": "all", "limit": "100"}
    for _ in range(1000):  # pages; the demo's gateways hold a handful
        async with session.get(f"{api}/v1/disclosures", params=params) as response:
            if response.status != 200:
                raise aiohttp.ClientResponseError(response.request_info, (), status=response.status)
            page = await response.json()
        held |= {str(item["referral_id"]) for item in page["items"]}
        if not page["more"]:
            break
        params = {**params, "after": str(page["cursor"])}
    return held


async def _wait_gateways(settings: Settings, gateways: list[DemoGateway]) -> None:
    """Wait until each gateway lists over its API (as its agency), or mark it failed."""

    async def one(gw: DemoGateway) -> None:
        connector = aiohttp.TCPConnector(ssl=_agency_tls(settings, gw.agency.id))
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            deadline = time.monotonic() + GATEWAY_READY_S
            for _ in range(int(GATEWAY_READY_S / 0.3) + 1):
                if gw.process.poll() is not None:
                    gw.failure = f"its process exited with {gw.process.returncode}"
                    return
                try:
                    gw.held = await _listing(session, gw.api)
                    return
                except (aiohttp.ClientError, TimeoutError, ValueError, KeyError):
                    pass
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.3)
            gw.failure = f"its API did not answer within {GATEWAY_READY_S:g} s"

    await asyncio.gather(*(one(gw) for gw in gateways))


async def _check_gateways(
    settings: Settings,
    gateways: list[DemoGateway],
    expected: dict[str, set[str]],
    timeout_s: float,
) -> None:
    """Wait until each gateway's API lists every disclosure sent to its agency in this run;
    a gateway that does not within ``timeout_s`` is marked failed, saying how far it got."""

    async def one(gw: DemoGateway) -> None:
        if gw.failure is not None:
            return
        wanted = expected.get(gw.agency.id, set())
        connector = aiohttp.TCPConnector(ssl=_agency_tls(settings, gw.agency.id))
        timeout = aiohttp.ClientTimeout(total=5)
        problem = ""
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            deadline = time.monotonic() + timeout_s
            for _ in range(int(timeout_s / GATEWAY_POLL_S) + 2):
                if gw.process.poll() is not None:
                    gw.failure = f"its process exited with {gw.process.returncode}"
                    return
                try:
                    gw.held = await _listing(session, gw.api)
                    problem = ""
                except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
                    problem = f"; its API last answered {type(exc).__name__}"
                if wanted <= gw.held or time.monotonic() > deadline:
                    break
                await asyncio.sleep(GATEWAY_POLL_S)
        if not wanted <= gw.held:
            gw.failure = (
                f"it stored {len(wanted & gw.held)} of the {len(wanted)} disclosure(s) sent to "
                f"{gw.agency.id} within {timeout_s:g} s{problem}"
            )

    _step("each gateway stores what was sent to its agency (checked through its API)")
    await asyncio.gather(*(one(gw) for gw in gateways))
    for gw in gateways:
        if gw.failure is None:
            n = len(expected.get(gw.agency.id, set()))
            click.echo(f"    {gw.agency.id:22} stored all {n} sent to it")
        else:
            _gateway_failed(gw)


def _gateway_failed(gw: DemoGateway) -> None:
    click.secho(f"    {gw.agency.id:22} gateway FAILED: {gw.failure}", fg="red")
    with contextlib.suppress(OSError):
        tail = gw.log.read_text(encoding="utf-8", errors="replace").splitlines()[-10:]
        for line in tail:
            click.echo(f"        | {line}")
    click.echo(f"        (its log: {gw.log})")


def _show_gateways(
    settings: Settings,
    gateways: list[DemoGateway],
    expected: dict[str, set[str]],
    *,
    keep: bool,
) -> None:
    """A short section per gateway: where its web inbox is, how to log in, what it holds."""
    if not gateways:
        return
    ca = custody_of(settings).public().path(CA_CERT)
    _step(
        "the gateways' web inboxes"
        + ("" if keep else " (stopped with the demo; make demo KEEP=1 keeps them running)")
    )
    click.echo(
        "    Development accounts on your own machine, so printed here; a real agency makes\n"
        "    them with 'cairn gateway --as AGENCY user add LOGIN' and hands them over safely.\n"
        "    Log in with the login, the password and the 6-digit code of an authenticator app\n"
        "    given the TOTP URI or secret (or of: .venv/bin/python -c 'import time; from\n"
        '    gateway.users import totp; print(totp("SECRET", time.time()))\'). Their\n'
        "    certificates are the development CA's, which a browser does not know, so it warns\n"
        f"    (the CA certificate: {ca})."
    )
    for gw in gateways:
        e = gw.enrolment
        sent = expected.get(gw.agency.id, set())
        earlier = len(gw.held - sent)
        click.secho(f"    {gw.agency.name} ({gw.agency.id})", bold=True)
        click.echo(f"      web inbox  {gw.web}")
        click.echo(
            f"      API        {gw.api}/v1/disclosures (mutual TLS: the agency's own certificate)"
        )
        click.echo(f"      login      {e.staff.login}")
        click.echo(f"      password   {e.password}  (one-time: shown only here)")
        click.echo(f"      TOTP       {e.otpauth_uri}")
        click.echo(f"      secret     {e.totp_secret}")
        if gw.failure is None:
            click.echo(
                f"      holds      {len(gw.held)} disclosure(s): the {len(sent)} sent to it in "
                "this run"
                + (f", and {earlier} earlier one(s) left on its topic" if earlier else "")
            )
        else:
            click.secho(f"      FAILED     {gw.failure}", fg="red")
        click.echo(f"      files      {gw.folder} (store, accounts, certificate, log)")


# -- the witnesses -------------------------------------------------------------------------------

WITNESS_READY_S = 30.0  # seconds for a witness to listen


@dataclass
class DemoWitness:
    """A development witness (``keys.development.DEV_WITNESSES``) as the demo runs it: ``cairn
    witness serve`` over TLS on a free port, cosigning the auditor's checkpoints."""

    member_id: str
    vkey: str  # its cosignature/v1 verifier key, as the registry lists it
    url: str
    process: subprocess.Popen[bytes]


def _start_witnesses(settings: Settings) -> list[DemoWitness]:
    """Start the development witnesses the key store holds and the registry lists (none for a
    federation made without them: the checkpoints are then not cosigned)."""
    from broker.audit.checkpoint import NoteVerifier
    from broker.audit.files import DEFAULT_ORIGIN
    from keys.development import DEV_WITNESSES, WITNESS_KEY, witness_store
    from keys.federation import load_registry
    from keys.registry import AUDITOR_ID, KeyUse
    from keys.store import SERVER_CERT, SERVER_KEY

    custody = custody_of(settings)
    registry = load_registry(
        custody.public(), now=datetime.now(UTC), root_kid=settings.registry_root_kid
    )
    auditor = registry.member(AUDITOR_ID)
    log_key = auditor.active_key(KeyUse.SIGNING) if auditor is not None else None
    wanted = []
    for member_id, _display, name in DEV_WITNESSES:
        member = registry.member(member_id)
        active = member.active_key(KeyUse.SIGNING) if member is not None else None
        store = custody.store(witness_store(member_id))
        if active is None or active.vkey is None or not store.exists(WITNESS_KEY):
            continue
        wanted.append((member_id, name, active.vkey, store))
    if not wanted or log_key is None:
        _step("no development witnesses in the key store: the checkpoints are not cosigned")
        return []
    public = log_key.jwk.public_key()
    if not isinstance(public, Ed25519PublicKey):
        return []
    log_vkey = NoteVerifier(DEFAULT_ORIGIN, public).vkey()
    _step(
        "starting the witnesses "
        + " and ".join(m for m, _, _, _ in wanted)
        + " (C2SP tlog-witness: each cosigns every checkpoint consistent with the last it saw)"
    )
    run = Path(tempfile.mkdtemp(prefix="witnesses-", dir=_state_dir(settings)))
    started: list[DemoWitness] = []
    for member_id, name, vkey, store in wanted:
        port = _free_port()
        env = {
            **os.environ,
            "CAIRN_WITNESS_PASSPHRASE": custody.passphrase(witness_store(member_id)).decode(),
            "CAIRN_LOG_LEVEL": os.environ.get("CAIRN_LOG_LEVEL", "warning"),
        }
        with (run / f"{member_id}.log").open("wb") as log:
            process = subprocess.Popen(  # noqa: S603  (our own CLI, fixed argv)
                [sys.executable, "-m", "broker", "witness", "serve",
                 "--key", str(store.path(WITNESS_KEY)), "--name", name,
                 "--state", str(run / member_id), "--log", log_vkey,
                 "--tls-cert", str(store.path(SERVER_CERT)),
                 "--tls-key", str(store.path(SERVER_KEY)), "--port", str(port)],
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        started.append(DemoWitness(member_id, vkey, f"https://127.0.0.1:{port}/", process))
    deadline = time.monotonic() + WITNESS_READY_S
    for w in started:
        port = int(w.url.rsplit(":", 1)[1].rstrip("/"))
        for _ in range(int(WITNESS_READY_S / 0.2) + 1):
            if w.process.poll() is not None or time.monotonic() > deadline:
                break
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            time.sleep(0.2)
        state = "listening" if w.process.poll() is None else f"exited ({w.process.returncode})"
        click.echo(f"    {w.member_id:22} {state} on {w.url}")
    return started


def _witness_env(settings: Settings, witnesses: list[DemoWitness]) -> dict[str, str]:
    """The auditor's settings for ``witnesses`` (their TLS certificates are the federation
    CA's)."""
    if not witnesses:
        return {}
    listed = [{"vkey": w.vkey, "url": w.url} for w in witnesses]
    return {
        "CAIRN_AUDITOR_WITNESSES": json.dumps(listed),
        "CAIRN_AUDITOR_WITNESS_CA_FILE": str(custody_of(settings).public().path(CA_CERT)),
    }


# -- the evidence pack --------------------------------------------------------------------------


EVIDENCE_ACK_S = 30.0  # seconds for the acknowledgement to reach the audit log
EVIDENCE_POLL_S = 0.5


@dataclass(frozen=True)
class Evidence:
    """The disclosure the demo makes an evidence pack of: to whom, and where its gateway keeps
    it (the store of ``cairn gateway --as AGENCY`` under the gateway's folder)."""

    agency: str
    referral_id: str
    gateway_db: Path
    folder: Path


async def _acknowledge_one(
    settings: Settings,
    gateways: list[DemoGateway],
    expected: dict[str, set[str]],
    audit_port: int,
) -> Evidence | None:
    """The IDVA service (else the first gateway that stored everything) acknowledges one
    disclosure it holds through its API, and the demo waits (bounded) until the auditor logged
    the acknowledgement, so the evidence pack can show it; None if no gateway holds one."""
    from keys.custody import store_of
    from keys.registry import AUDITOR_ID

    ready = [gw for gw in gateways if gw.failure is None and expected.get(gw.agency.id)]
    ready.sort(key=lambda gw: gw.agency.role is not AgencyRole.IDVA)
    if not ready:
        return None
    gw = ready[0]
    referral = sorted(expected[gw.agency.id] & gw.held)[0]
    _step(f"{gw.agency.id} acknowledges disclosure {referral} through its gateway's API")
    connector = aiohttp.TCPConnector(ssl=_agency_tls(settings, gw.agency.id))
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        url = f"{gw.api}/v1/disclosures/{referral}/acknowledgement"
        async with session.post(url, json={"status": "filed"}) as response:
            click.echo(f"    {response.status}: signed, queued for the broker")
    custody = custody_of(settings)
    auditor = client_context(
        custody.member_store(AUDITOR_ID), AUDITOR_ID, custody.passphrase(store_of(AUDITOR_ID))
    )
    audit = f"https://127.0.0.1:{audit_port}/v1/audit/entries"
    params = {"recipient": gw.agency.id}
    connector = aiohttp.TCPConnector(ssl=auditor)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        deadline = time.monotonic() + EVIDENCE_ACK_S
        for _ in range(int(EVIDENCE_ACK_S / EVIDENCE_POLL_S) + 1):
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError, KeyError):
                async with session.get(audit, params=params) as response:
                    found = (await response.json())["entries"]
                if any(
                    e["event"].get("type") == "acknowledged"
                    and e["event"].get("message_id") == referral
                    for e in found
                ):
                    click.echo("    the auditor logged it (acknowledged)")
                    break
            if time.monotonic() > deadline:
                click.echo("    not in the audit log yet: the pack shows the signed receipt only")
                break
            await asyncio.sleep(EVIDENCE_POLL_S)
    return Evidence(
        gw.agency.id, referral, gw.folder / "gateway" / f"{gw.agency.id}.sqlite", gw.folder
    )


def _evidence_step(settings: Settings, chosen: Evidence) -> bool:
    """Export the evidence pack of ``chosen`` (the auditor's log and the recipient's gateway
    store, on this one machine), verify it from the root public key file alone and print what
    it proves; then show a copy with one JWE character changed refused, naming the part."""
    pack = chosen.folder / f"evidence-{chosen.referral_id}.json"
    root = custody_of(settings).public().path(ROOT_PUBLIC)
    env = {
        **os.environ,
        "CAIRN_STATE_DIR": str(settings.state_dir),
        "CAIRN_KEY_DIR": str(settings.keys_path),
        "CAIRN_PASSPHRASE_DIR": str(settings.passphrases_path),
    }

    def cairn(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603  (our own CLI, fixed argv)
            [sys.executable, "-m", "broker", "evidence", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    _step(f"evidence pack of the disclosure of {chosen.referral_id} to {chosen.agency}")
    export = cairn(
        "export",
        "--referral",
        chosen.referral_id,
        "--recipient",
        chosen.agency,
        "--gateway-db",
        str(chosen.gateway_db),
        "--dir",
        str(settings.state_dir / "audit"),
        "-o",
        str(pack),
    )
    if export.returncode != 0:
        click.secho(f"evidence export: FAILED ({export.stderr.strip()})", fg="red", bold=True)
        return False
    click.echo(f"    cairn evidence export ... -o {pack}")
    click.echo(f"    cairn evidence verify {pack.name} --root-key {root}:")
    verify = cairn("verify", str(pack), "--root-key", str(root))
    for line in verify.stdout.splitlines():
        click.echo(f"      {line}")
    ok = verify.returncode == 0
    tampered = pack.with_name(f"tampered-{pack.name}")
    doc = json.loads(pack.read_bytes())
    doc["jwe"] = doc["jwe"][:-1] + ("A" if doc["jwe"][-1] != "A" else "B")
    tampered.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    refused = cairn("verify", str(tampered), "--root-key", str(root))
    click.echo("    the same pack with one JWE character changed:")
    click.echo(f"      {(refused.stderr or refused.stdout).strip()}")
    ok = ok and refused.returncode != 0
    click.secho(
        f"evidence verify: {'OK' if ok else 'FAILED'} (the pack proves the disclosure; the "
        "altered copy is refused)"
        if ok
        else f"evidence verify: FAILED ({verify.stderr.strip()})",
        fg="green" if ok else "red",
        bold=True,
    )
    return ok


# -- the NHS trust's MESH mailbox ------------------------------------------------------------


@dataclass
class DemoMesh:
    """The NHS trust's MESH as the demo runs it: mesh-sandbox, the trust's bridge (``cairn nhs
    mesh``, its own process) and what came of the one referral its system sends."""

    trust: str
    sandbox: MeshSandbox
    bridge: subprocess.Popen[bytes]
    log: Path  # the bridge's (its ledger is beside it; the sandbox's folder goes when it stops)
    message_id: str | None = None  # MESH's id of the referral message
    referral_id: str | None = None  # the Cairn referral id the bridge makes of it
    outcome: str | None = None  # the receipt's MessageHeader.response.code ("ok")
    recipients: list[tuple[str, str]] = field(default_factory=list)  # (agency, status)
    failure: str | None = None


def _start_mesh(settings: Settings, federation: Federation, url: str) -> DemoMesh | None:
    """Start mesh-sandbox and the bridge of the federation's first NHS trust (None without
    one); a sandbox that does not start raises ``click.ClickException``."""
    trust = next((a for a in federation.agencies if a.role is AgencyRole.NHS_SAFEGUARDING), None)
    if trust is None:
        return None
    folder = Path(tempfile.mkdtemp(prefix="mesh-", dir=_state_dir(settings)))
    sandbox = MeshSandbox(folder / "sandbox")
    _step(f"starting NHS England's mesh-sandbox and the MESH bridge of {trust.id}")
    try:
        sandbox.start()
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CAIRN_MESH_")},
        "CAIRN_STATE_DIR": str(folder / "bridge"),
        "CAIRN_KEY_DIR": str(settings.keys_path),
        "CAIRN_PASSPHRASE_DIR": str(settings.passphrases_path),
        "CAIRN_LOG_LEVEL": os.environ.get("CAIRN_LOG_LEVEL", "warning"),
        "CAIRN_MESH_POLL_EVERY_S": str(MESH_POLL_S),
        **sandbox.env(BRIDGE, TRUST_SYSTEM),
    }
    log = folder / "bridge.log"
    with log.open("wb") as out:
        bridge = subprocess.Popen(  # noqa: S603  (our own CLI; an id of the federation file)
            [sys.executable, "-m", "broker", "nhs", "mesh", "--as", trust.id, "--broker", url],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    mesh = DemoMesh(trust.id, sandbox, bridge, log)
    click.echo(
        f"    mesh-sandbox on {sandbox.url}: the trust's system's mailbox {TRUST_SYSTEM}, its "
        f"Cairn mailbox {BRIDGE} (read by 'cairn nhs mesh --as {trust.id}', log {log})"
    )
    return mesh


def _mesh_referral(mesh: DemoMesh, sample: Path, timeout_s: float) -> None:
    """As the trust's system: send the sample referral to the Cairn mailbox with NHS's
    mesh-client, then wait (at most ``timeout_s``) for the bridge's reply in its own mailbox
    and read the receipt (or refusal) from it. Prints no value of the referral."""
    import requests
    from mesh_client import MeshError

    _step(f"NHS trust via MESH: {mesh.trust}'s system sends one FHIR referral message")
    body = json.dumps(referral_message(sample)).encode()
    try:
        with mesh.sandbox.client(TRUST_SYSTEM) as system:
            mesh.message_id = str(
                system.send_message(
                    BRIDGE, body, workflow_id=REFERRAL_WORKFLOW, content_type=FHIR_JSON
                )
            )
            mesh.referral_id = str(referral_id_of(BRIDGE, mesh.message_id))
            reply = _await_reply(mesh, system, timeout_s)
    except (requests.RequestException, MeshError, ValueError) as exc:
        mesh.failure = f"MESH answered {type(exc).__name__}"
        reply = None
    if reply is not None:
        _read_reply(mesh, reply)
    click.echo(f"    MESH message id  {mesh.message_id}")
    click.echo(f"    referral id      {mesh.referral_id}")
    if mesh.failure is None:
        click.echo(f"    receipt          {mesh.outcome} (in {TRUST_SYSTEM}, {RECEIPT_WORKFLOW})")
        for agency, status in mesh.recipients:
            click.echo(f"        {agency:22} {status}")
    else:
        click.secho(f"    FAILED: {mesh.failure}", fg="red")
        with contextlib.suppress(OSError):
            for line in mesh.log.read_text(encoding="utf-8", errors="replace").splitlines()[-10:]:
                click.echo(f"        | {line}")
        click.echo(f"        (the bridge's log: {mesh.log})")


def _await_reply(mesh: DemoMesh, system: MeshClient, timeout_s: float) -> dict[str, Any] | None:
    """The bridge's reply to the referral from the trust system's inbox (acknowledged there),
    or None (``mesh.failure`` says why) if none came within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    for _ in range(int(timeout_s / MESH_POLL_S) + 2):
        for message_id in system.list_messages():
            message = system.retrieve_message(message_id)
            try:
                mine = (message.workflow_id, message.local_id) == (
                    RECEIPT_WORKFLOW,
                    mesh.message_id,
                )
                body = message.read()
            finally:
                message.close()  # type: ignore[no-untyped-call]  # mesh-client leaves it unannotated
            system.acknowledge_message(message_id)
            if mine:
                reply: dict[str, Any] = json.loads(body)
                return reply
        if mesh.bridge.poll() is not None:
            mesh.failure = f"the bridge exited with {mesh.bridge.returncode}"
            return None
        if time.monotonic() > deadline:
            break
        time.sleep(MESH_POLL_S)
    mesh.failure = f"no receipt in {TRUST_SYSTEM} within {timeout_s:g} s"
    return None


def _read_reply(mesh: DemoMesh, reply: dict[str, Any]) -> None:
    """The outcome and the recipients' statuses from the reply (a FHIR message: MessageHeader,
    then an OperationOutcome whose first issue is the referral and each further one
    ``AGENCY: STATUS (reasons)``); a refusal becomes ``mesh.failure`` with its problems' titles."""
    try:
        header, outcome = (e["resource"] for e in reply["entry"])
        mesh.outcome = str(header["response"]["code"])
        issues = list(outcome["issue"])
    except (KeyError, TypeError, ValueError):
        mesh.failure = "the reply in the trust's mailbox is not a receipt"
        return
    if mesh.outcome != "ok":
        titles = "; ".join(str(i.get("details", {}).get("text", "")) for i in issues)
        mesh.failure = f"the referral was refused ({mesh.outcome}): {titles}"
        return
    for issue in issues[1:]:
        agency, _, rest = str(issue.get("details", {}).get("text", "")).partition(": ")
        mesh.recipients.append((agency, rest.split(" ")[0]))
    if not mesh.recipients:
        mesh.failure = "the receipt names no recipient"
