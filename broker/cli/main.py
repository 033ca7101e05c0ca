"""The ``cairn`` command line: run the broker, manage topics, act as an agency adapter, demo."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import sys
import tomllib
from collections.abc import Coroutine, Sequence
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from pydantic import ValidationError

from broker.cli.common import (
    announce_serve,
    broker_url_option,
    describe,
    echo_kafka,
    settings_error,
)
from broker.cli.common import settings_or_exit as _settings
from broker.config import ConfigFileMissing, Settings
from schemas.errors import CairnError
from schemas.federation import Federation

if TYPE_CHECKING:  # the commands import what they run lazily, so that the CLI starts quickly
    from aiohttp import web

    from broker.instance import Instance
    from broker.ops.metrics import Metrics
    from broker.trust import TrustStore
    from keys import FileStore

__all__ = ["main"]

T = TypeVar("T")


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except CairnError as exc:
        raise click.ClickException(str(exc)) from None


def _logging(settings: Settings) -> None:
    from broker.logs import configure_logging

    configure_logging(settings.log_format, settings.log_level)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cairn")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Cairn: a secure exchange for domestic-abuse safeguarding referrals.

    Configuration comes from CAIRN_* environment variables over a TOML file ($CAIRN_CONFIG or
    ./cairn.toml) over defaults; see 'cairn config show'.
    """

    def client_factory(agency: str, url: str) -> Any:
        from adapters.agency import client_for

        return client_for(_settings(), agency, url)

    # The police and NHS import commands submit through the agency's own signing client.
    ctx.obj = {"client_factory": client_factory}
    # Log lines go to stderr, so that stdout carries only a command's output.
    from broker.logs import configure_logging

    configure_logging(
        os.environ.get("CAIRN_LOG_FORMAT", "auto"), os.environ.get("CAIRN_LOG_LEVEL", "info")
    )


def _service_trust(
    settings: Settings, store: FileStore, passphrase: bytes, *, member_id: str, room: str
) -> TrustStore:
    """What the service ``member_id`` trusts and holds: its own store (``store``) and the
    pseudonym store, nothing else (``keys.custody``); it keeps the highest registry serial
    it has seen in ``<state_dir>/<room>``, so a restart cannot be handed an older registry."""
    from broker.trust import TrustStore, custody_of
    from keys.custody import PSEUDONYM

    custody = custody_of(settings)
    pseudonym = None
    if not custody.all_in_one:
        pseudonym = (custody.store(PSEUDONYM), custody.passphrase(PSEUDONYM))
    return TrustStore(
        store,
        passphrase,
        root_kid=settings.registry_root_kid,
        member_id=member_id,
        clock=lambda: datetime.now(UTC),
        serial_file=settings.state_dir / room / "registry-serial",
        pseudonym=pseudonym,
    )


def _own_store(settings: Settings, member_id: str) -> tuple[FileStore, bytes]:
    """The service's own key store (over the public one) and its passphrase."""
    from broker.trust import custody_of
    from keys.custody import store_of

    custody = custody_of(settings)
    return custody.member_store(member_id), custody.passphrase(store_of(member_id))


@cli.command()
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    metavar="N",
    help="Worker processes serving the one port [default: CAIRN_BROKER_WORKERS, 1]. With N > 1 "
    "this process binds the port (0: any free one, logged once), starts N workers, each a "
    "whole broker with its own Kafka producers and transactional id, restarts one that dies, "
    "and on SIGTERM has them drain; it exits 3 if a worker keeps failing to start. /metrics "
    "from any worker shows all workers' counts.",
)
@click.option("--worker-index", type=click.IntRange(0, 63), default=None, hidden=True)
@click.option("--listen-fd", type=int, multiple=True, hidden=True)
@click.option("--control-fd", type=int, default=None, hidden=True)
def serve(
    workers: int | None,
    worker_index: int | None,
    listen_fd: tuple[int, ...],
    control_fd: int | None,
) -> None:
    """Run the broker over mutual TLS until SIGTERM (then it drains and flushes).

    Needs the broker's key store (<key_dir>/broker), the pseudonym store and the published
    registry ('cairn keys init' makes them on one machine), each store's passphrase in
    <passphrase_dir>/<store> or CAIRN_KEY_PASSPHRASE[_FILE]. Each broker process takes a
    transactional id of its own, <CAIRN_TRANSACTIONAL_ID>.<host>.<slot>, with the lowest slot
    no running broker on this host holds, so brokers side by side never fence each other.
    It prints the URL it listens on (the commands that call the broker use CAIRN_BROKER_URL,
    else that URL; a warning if CAIRN_BROKER_URL names this host on another port) and the
    Kafka it uses.
    With CAIRN_HEALTH_PORT set it also answers GET /livez and GET /readyz over plain HTTP
    there (codes only; with --workers, the first worker).
    """
    if worker_index is not None:
        # A terminal's Ctrl-C reaches every process of the group: the supervisor decides.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    settings = _settings()
    _logging(settings)
    if worker_index is not None:
        if control_fd is None or not listen_fd:
            raise click.UsageError("--worker-index is for 'cairn serve --workers' only")
        _serve_worker(settings, worker_index, listen_fd, control_fd)
        return
    announce_serve(settings)  # the URL the commands reach it at (CAIRN_BROKER_URL), its Kafka
    count = workers if workers is not None else settings.broker_workers
    if count == 1:
        _run(_serve_one(settings))
        return
    from broker.web.workers import Supervisor

    _run(_broker_app(settings))  # refuse to start here, once, on what every worker would
    base = [sys.executable, "-m", "broker", "serve"]

    def command(index: int, fds: Sequence[int], control: int) -> list[str]:
        return [
            *base,
            "--worker-index",
            str(index),
            *[f"--listen-fd={fd}" for fd in fds],
            f"--control-fd={control}",
        ]

    try:
        code = _run(Supervisor(settings, count, command).run())
    except OSError as exc:
        raise click.ClickException(
            f"cannot listen on {settings.http_host}:{settings.http_port}: {exc.strerror}"
        ) from None
    if code != 0:
        raise SystemExit(code)


async def _broker_app(
    settings: Settings,
    metrics: Metrics | None = None,
    *,
    check_only: bool = True,
    worker: int | None = None,
) -> tuple[web.Application, ssl.SSLContext] | None:
    """The broker's app and TLS context; with ``check_only``, only refuse what it would.
    Of several workers only the first (``worker`` 0) runs the overdue sweep."""
    from broker.federation import load_federation
    from broker.kafka.transport import KafkaTransport
    from broker.ops.credentials import ServerCertificate
    from broker.web.app import create_app
    from keys import BROKER_ID, server_context

    federation = load_federation(settings.federation_dir)
    store, passphrase = _own_store(settings, BROKER_ID)
    trust = _service_trust(settings, store, passphrase, member_id=BROKER_ID, room="broker")
    trust.registry()  # refuse to start on an untrusted registry
    trust.signing_key()
    if check_only:
        return None
    context = server_context(store, passphrase)  # reloaded when renewed (broker.ops.credentials)
    app = create_app(
        settings,
        federation,
        KafkaTransport(settings),
        trust,
        consume_receipts=True,
        dashboard=True,
        metrics=metrics,
        sweep_overdue=worker in (None, 0),
        server_certificate=ServerCertificate(context, store, passphrase),
    )
    return app, context


def _instance_settings(settings: Settings, worker: int | None) -> tuple[Instance, Settings]:
    from broker.instance import acquire_instance

    try:
        instance = acquire_instance(settings, worker)
    except CairnError as exc:
        raise click.ClickException(str(exc)) from None
    return instance, settings.model_copy(update={"transactional_id": instance.transactional_id})


async def _serve_one(settings: Settings) -> None:
    from broker.web.app import readiness
    from broker.web.app import serve as serve_app
    from broker.web.health import health_port

    instance, settings = _instance_settings(settings, None)
    with instance:
        built = await _broker_app(settings, check_only=False)
        assert built is not None
        app, context = built
        async with health_port(settings, lambda: readiness(app)):  # CAIRN_HEALTH_PORT
            await serve_app(app, settings, context)


def _serve_worker(
    settings: Settings, index: int, listen_fds: Sequence[int], control_fd: int
) -> None:
    import socket

    import structlog

    from broker.ops.metrics import Metrics
    from broker.web.app import readiness
    from broker.web.health import health_port
    from broker.web.workers import label_logs, run_worker

    label_logs(index)
    instance, settings = _instance_settings(settings, index)
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not folder:
        raise click.UsageError("a worker needs PROMETHEUS_MULTIPROC_DIR from its supervisor")
    structlog.get_logger(__name__).info(
        "broker.worker_started",
        pid=os.getpid(),
        instance=instance.name,
        transactional_id=instance.transactional_id,
    )
    sockets = [socket.socket(fileno=fd) for fd in listen_fds]
    control = socket.socket(fileno=control_fd)

    async def main() -> None:
        with instance:
            metrics = Metrics(Path(folder))
            built = await _broker_app(settings, metrics, check_only=False, worker=index)
            assert built is not None
            app, context = built
            # The first worker alone opens the health port (CAIRN_HEALTH_PORT): one port, and
            # an orchestrator scales pods, not workers (README "Deploying").
            health = settings if index == 0 else settings.model_copy(update={"health_port": None})
            async with health_port(health, lambda: readiness(app)):
                await run_worker(app, settings, context, sockets, control)

    _run(main())


@cli.command()
def auditor() -> None:
    """Run the auditor: append cairn.audit to the verifiable log, sign checkpoints, serve proofs.

    A process of its own (its own key and files; the broker cannot rewrite the log). The audit
    API listens on CAIRN_AUDITOR_HTTP_PORT over TLS for the auditor's certificate only, but for
    the public C2SP tlog-tiles paths (/v1/audit/log/checkpoint, /v1/audit/log/tile/<L>/...,
    /v1/audit/verifier-key) and the registry's JWK Set (/v1/audit/jwks), which hold no personal
    data and need no client certificate; entry bundles stay behind the auditor's certificate.
    Stops on SIGTERM after catching up and signing a final checkpoint. With CAIRN_HEALTH_PORT
    set it also answers GET /livez and GET /readyz (Kafka, registry, signing key) over plain
    HTTP there.
    """
    from broker.audit.service import Auditor, auditor_app, tls_context
    from broker.ops.credentials import CredentialWatch, ServerCertificate
    from broker.web.app import serve as serve_app
    from broker.web.health import health_port, service_readiness
    from keys import AUDITOR_ID

    settings = _settings()
    _logging(settings)
    echo_kafka(settings, who="cairn auditor")  # the Kafka it reads cairn.audit from

    async def main() -> None:
        store, passphrase = _own_store(settings, AUDITOR_ID)
        trust = _service_trust(settings, store, passphrase, member_id=AUDITOR_ID, room="audit")
        trust.signing_key()  # refuse to start without a usable key
        trust.pseudonym_secret()
        worker = Auditor(settings, trust)
        await worker.open()
        # A client certificate is optional at TLS level: the tiles paths are public; the
        # auditor_only middleware requires the auditor's certificate for everything else.
        context = tls_context(store, passphrase)
        # The auditor's API serves the same TLS certificate: warned about and reloaded alike.
        watch = CredentialWatch.for_settings(
            store,
            lambda: datetime.now(UTC),
            settings,
            server=ServerCertificate(context, store, passphrase),
        )
        watch.check()
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        watching = asyncio.create_task(watch.run(stop))
        http = settings.model_copy(update={"http_port": settings.auditor_http_port})
        try:
            async with health_port(settings, service_readiness(settings, trust)):
                await serve_app(auditor_app(worker, dashboard=True), http, context)
        finally:
            stop.set()
            await asyncio.wait_for(task, settings.shutdown_timeout_s + 15)
            await asyncio.wait_for(watching, 15)
            await worker.close()

    _run(main())


def _federation(settings: Settings) -> Federation:
    """The federation's agencies, or a one-line error saying what is wrong with the file."""
    from broker.federation import load_federation

    try:
        return load_federation(settings.federation_dir)
    except CairnError as exc:
        raise click.ClickException(str(exc)) from None


@cli.group()
def topics() -> None:
    """Kafka topics: Cairn creates every topic explicitly (auto-create stays off)."""


@topics.command("create")
@click.option(
    "--acls",
    "acl_mode",
    type=click.Choice(["auto", "require", "skip"]),
    default="auto",
    show_default=True,
    help="Also create the ACLs (cairn kafka acls): auto skips them, saying so, on a Kafka "
    "without an authorizer; require fails there.",
)
def topics_create(acl_mode: str) -> None:
    """Create every topic the federation needs (topics that exist are left as they are), and
    the ACLs that let each principal do only its part (README "Local Kafka")."""
    from broker.kafka.acls import AuthorizerMissing, apply_acls, federation_acls
    from broker.kafka.topics import federation_topics
    from broker.kafka.transport import create_topics

    settings = _settings()
    echo_kafka(settings)
    federation = _federation(settings)
    specs = federation_topics(
        federation,
        settings.topic_prefix,
        ledger_partitions=settings.ledger_partitions,
        replication_factor=settings.topic_replication_factor,
        min_insync_replicas=settings.min_insync_replicas,
    )
    result = _run(create_topics(settings, specs))
    for spec in specs:
        click.echo(f"{result[spec.name]:8}  {spec.name}  ({spec.partitions} partitions)")
    if acl_mode == "skip":
        return
    table = federation_acls(federation, settings.topic_prefix, settings.transactional_id)
    try:
        count = asyncio.run(apply_acls(settings, table))
    except AuthorizerMissing as exc:
        if acl_mode == "require":
            raise click.ClickException(str(exc)) from None
        click.secho(f"ACLs not applied: {exc}", fg="yellow", err=True)
        return
    except CairnError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"acls      {count} ACLs in force (cairn kafka acls lists them)")


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--as", "agency", required=True, help="The sending agency's id.")
@broker_url_option
def send(file: Path, agency: str, broker_url: str) -> None:
    """Submit the referral in FILE (JSON) as AGENCY and print the receipt."""
    from adapters.agency import client_for
    from schemas.decode import decode
    from schemas.referral import Referral

    settings = _settings()
    body = file.read_bytes()
    try:
        referral = decode(Referral, body)
    except CairnError as exc:
        _print_problems(exc)
        raise click.ClickException(f"{file} is not a valid referral") from None
    if referral.header.sender_agency != agency:
        raise click.ClickException(
            f"{file} names '{referral.header.sender_agency}' as sender, but you are sending as "
            f"'{agency}'"
        )

    async def go() -> str:
        async with client_for(settings, agency, broker_url) as client:
            receipt = await client.submit(referral)
        return receipt.model_dump_json(indent=2)

    try:
        click.echo(asyncio.run(go()))
    except CairnError as exc:
        _print_problems(exc)
        raise click.ClickException(str(exc)) from None


def _print_problems(exc: CairnError) -> None:
    problem = getattr(exc, "problem", None)
    errors = problem.get("errors", []) if isinstance(problem, dict) else []
    errors = errors or [
        {"field": p.field, "problem": p.problem} for p in getattr(exc, "problems", ())
    ]
    for e in errors:
        click.echo(f"  {e['field']}: {e['problem']}", err=True)


@cli.command()
@click.option("--as", "agency", required=True, help="The receiving agency's id.")
@click.option("--max", "max_messages", type=click.IntRange(min=1), help="Stop after N deliveries.")
@click.option(
    "--idle",
    "idle_s",
    default=5.0,
    show_default=True,
    help="Stop after this many seconds without a delivery.",
)
@click.option(
    "--timeout",
    "timeout_s",
    default=60.0,
    show_default=True,
    help="Stop after this many seconds in all.",
)
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "fhir"]),
    default="text",
    show_default=True,
    help="text: a summary line; json: the disclosure; fhir: an HL7 FHIR R4 Bundle (NHS systems).",
)
def inbox(
    agency: str,
    max_messages: int | None,
    idle_s: float,
    timeout_s: float,
    as_json: bool,
    fmt: str,
) -> None:
    """Consume AGENCY's delivery topic and print each disclosure received."""
    from adapters.agency import inbox_for
    from adapters.inbox import Delivery

    settings = _settings()
    federation = _federation(settings)
    if federation.get(agency) is None:
        raise click.ClickException(f"'{agency}' is not an agency of {federation.name}")
    echo_kafka(settings)

    fmt = "json" if as_json else fmt

    async def show(delivery: Delivery) -> None:
        if fmt == "json":
            click.echo(delivery.disclosure.model_dump_json())
        elif fmt == "fhir":
            from adapters.nhs import disclosure_to_bundle

            click.echo(json.dumps(disclosure_to_bundle(delivery.disclosure)))
        else:
            click.echo(describe(delivery))

    def say(line: str) -> None:
        click.echo(line, err=True)

    async def go() -> tuple[int, int]:
        # Waits for Kafka (saying so on stderr) rather than failing while it is down.
        async with inbox_for(settings, agency, progress=say) as box:
            count = await box.drain(
                show, max_messages=max_messages, idle_timeout_s=idle_s, total_timeout_s=timeout_s
            )
            return count, box.quarantined

    count, dead = _run(go())
    kept = f", {dead} dead-lettered (see {settings.topic_prefix}.dlq)" if dead else ""
    click.echo(f"{count} disclosure(s) received by {agency}{kept}", err=True)


@cli.command()
@click.option(
    "--export",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Police incident export (JSON lines) [default: the federation's sample export].",
)
@click.option(
    "--timeout",
    "timeout_s",
    default=60.0,
    show_default=True,
    help="Seconds to wait for each recipient.",
)
@click.option(
    "--keep",
    is_flag=True,
    help="Keep the broker, the auditor, the dashboard and the gateways running until Ctrl-C.",
)
def demo(export: Path | None, timeout_s: float, keep: bool) -> None:
    """Run the scripted scenario: keys, topics, broker, police import, recipients receive.

    The school and the IDVA service each run a gateway (cairn gateway --as AGENCY): the demo
    prints its web inbox's URL and a one-time development login (password and TOTP secret).
    An NHS trust sends one referral through MESH (NHS England's mesh-sandbox and cairn nhs
    mesh). Needs a running Kafka (make demo starts one). The broker, the auditor and the
    gateways listen on CAIRN_HTTP_PORT, CAIRN_AUDITOR_HTTP_PORT and CAIRN_GATEWAY_PORT /
    CAIRN_GATEWAY_WEB_PORT (the second gateway two above; 0: any free port; a default in use
    gives way to a free one, said). Exits 0 only if every message reached
    exactly its recipients, each gateway stored what was sent to its agency and the trust's
    receipt came back through MESH.
    """
    from broker.cli.demo import run_demo
    from broker.logs import configure_logging

    settings = _settings()
    configure_logging(settings.log_format, os.environ.get("CAIRN_LOG_LEVEL", "warning"))
    try:
        ok = run_demo(settings, export=export, timeout_s=timeout_s, keep=keep)
    except CairnError as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(0 if ok else 1)


@cli.group()
def config() -> None:
    """Inspect configuration."""


@config.command("show")
def config_show() -> None:
    """Print the effective configuration, secrets masked.

    Environment (CAIRN_*) over TOML file over defaults."""
    from broker.config import config_file

    settings = _settings()
    path = config_file()
    click.echo(f"# config file: {path if path else '(none)'}")
    click.echo(json.dumps(settings.shown(), indent=2))


def _attach() -> None:
    from adapters.nhs.cli import nhs
    from adapters.police.cli import police
    from broker.audit.cli import audit
    from broker.cli.evidence import evidence
    from broker.cli.kafka import kafka
    from broker.cli.policy import policy
    from broker.cli.schemas import schemas
    from broker.cli.status import status
    from broker.cli.witness import witness
    from gateway.cli import gateway
    from keys.cli import agency, federation, keys

    groups = (agency, audit, federation, gateway, kafka, keys, nhs, police, policy, schemas, status)
    for group in (*groups, evidence, witness):
        cli.add_command(group)


_attach()


@wraps(cli)
def main() -> None:
    try:
        cli(prog_name="cairn")
    except (ValidationError, tomllib.TOMLDecodeError, ConfigFileMissing) as exc:
        # A command that read its settings itself: the same one line as settings_or_exit.
        click.echo(f"Error: configuration is not valid: {settings_error(exc)}", err=True)
        sys.exit(1)
