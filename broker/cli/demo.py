"""The scripted demo: a police force's incident export becomes referrals and Encompass notices,
and each reaches exactly its recipients through the real broker and the real Kafka.

Steps: create the development federation if there is none, through the real enrolment
procedure (every agency makes its own keys in its own store and is admitted from its request,
``keys.development``), create the topics, start
``cairn serve`` as its own process (mutual TLS), run the police adapter over the sample export
(``deploy/federation/samples/police-export.jsonl``) and submit every message it produces, signed,
as the police force; then each recipient's inbox decrypts and verifies what it consumes and
prints it; finally the broker is stopped with SIGTERM. Kafka itself is started and stopped by
``make demo``.

The demo broker keeps its replay memory in a folder of its own per run, so running the demo
again submits the same (stable) message ids again and they are delivered again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import click

from adapters.agency import client_for, inbox_for
from adapters.inbox import Delivery
from adapters.police import Outgoing, import_export
from broker.config import Settings
from broker.federation import load_federation
from broker.kafka.acls import apply_acls, federation_acls
from broker.kafka.tls import member_kafka_tls
from broker.kafka.topics import federation_topics
from broker.kafka.transport import create_topics
from broker.trust import custody_of
from keys import FileStore, client_context
from keys.custody import agency_store
from keys.development import init_development
from schemas.errors import CairnError
from schemas.federation import Federation
from schemas.receipt import Receipt, RecipientStatus

SSL_PORT_ENV = "CAIRN_KAFKA_SSL_PORT"  # kafka-local's mutual-TLS listener, as make demo sets it

__all__ = ["DEFAULT_EXPORT", "run_demo"]

DEFAULT_EXPORT = Path("samples") / "police-export.jsonl"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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

    audit_port = _free_port()
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
        },
        stdin=subprocess.DEVNULL,
    )
    urls: list[str] = []
    try:
        ok = _run_broker(
            settings, produced, timeout_s, audit_port=audit_port, keep=keep, urls=urls, tls=tls
        )
    finally:
        _step("stopping the auditor (SIGTERM: catch up, sign a final checkpoint)")
        _stop(auditor)
    ok = _audit_summary(settings) and ok
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


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    click.echo(f"    exited with {process.returncode}")


def _audit_summary(settings: Settings) -> bool:
    """Print the latest signed checkpoint and verify the whole log offline, from its files."""
    from broker.audit.store import AuditLog

    directory = settings.state_dir / "audit"
    log = AuditLog.open(directory, readonly=True)
    try:
        note = log.latest_checkpoint()
    finally:
        log.close()
    _step("latest signed checkpoint (C2SP signed note)")
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
    click.secho(
        f"audit verify: {'OK' if ok else 'FAILED'} ({(verify.stdout or verify.stderr).strip()})",
        fg="green" if ok else "red",
        bold=True,
    )
    return ok


def _run_broker(
    settings: Settings,
    produced: list[Outgoing],
    timeout_s: float,
    *,
    audit_port: int,
    keep: bool,
    urls: list[str],
    tls: str | None,
) -> bool:
    port = _free_port()
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
    try:
        if not asyncio.run(_wait_ready(settings, url, broker, timeout_s=30.0)):
            click.secho("    the broker did not become ready", fg="red")
            return False
        click.echo("    ready")

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

        _step("each recipient reads its own topic (read_committed), decrypts and verifies")
        received = asyncio.run(_receive_all(settings, expected, timeout_s, tls))
        if keep:
            _step("kept running (KEEP=1): press Ctrl-C to stop")
            for line in urls:
                click.echo(f"    {line}")
            _wait_for_interrupt()
    finally:
        _step("stopping the broker (SIGTERM: drain, flush)")
        _stop(broker)

    return _summary(produced, receipts, expected, received)


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
    stray = {a: ids - expected.get(a, set()) for a, ids in received.items()}
    for agency, ids in stray.items():
        if ids:
            click.echo(f"    {agency} also read {len(ids)} earlier message(s) left on its topic")
    click.secho(
        "demo: OK, every message reached exactly its recipients" if ok else "demo: FAILED",
        fg="green" if ok else "red",
        bold=True,
    )
    return ok
