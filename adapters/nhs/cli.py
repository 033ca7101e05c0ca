"""The ``nhs`` command group: submit an NHS trust's FHIR safeguarding referral through Cairn.

``nhs import`` reports a bundle it cannot use as exactly one line on stderr, ``FILE: FHIRPATH:
REASON`` (the bundle's several problems separated by ``; ``), and exits 1: the bundle is one
record, so one line, whatever is wrong with it (not UTF-8, not JSON, nested too deep, a wrong
JSON type, a date outside the window, a mapping or referral rule). A file that cannot be read
(missing, a directory, over ``MAX_BUNDLE_BYTES``) is ``FILE: (file): REASON``. No value from the
bundle is in the line, and there is never a traceback. A refusal by the broker is one line too.

``nhs import`` is safe to run again on the same bundle (after a lost answer, a crash, or just
twice): the referral is made from the bundle alone (its id, its ``authoredOn`` as created-at),
so the broker recognises it, sends nothing again and answers with its original receipt, which
is printed under ``already sent``.
"""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager, suppress
from pathlib import Path
from typing import NoReturn

import click

from adapters.agency import ClientFactory, Submitter, cli_client_factory
from adapters.importing import (
    MAX_BUNDLE_BYTES,
    FileRefused,
    open_for_import,
    read_bounded,
    record_line,
)
from adapters.nhs.inbound import parse_bundle
from broker.cli.common import broker_url_option
from schemas.errors import CairnError, InputError
from schemas.referral import Referral

__all__ = ["nhs"]


def _client_factory() -> ClientFactory:
    return cli_client_factory("the bundle")


@click.group()
def nhs() -> None:
    """NHS trust adapter: FHIR R4 bundles in and out."""


@nhs.command("import")
# Checked by the command, not by click, so that a missing file is one line like any bad input.
@click.argument("bundle", type=click.Path(path_type=Path))
@broker_url_option
@click.option("--dry-run", is_flag=True, help="Map and check the bundle; submit nothing.")
def import_(bundle: Path, broker_url: str, dry_run: bool) -> None:
    """Map BUNDLE (a FHIR R4 Bundle, JSON) to a Cairn referral and submit it.

    Prints "sent" and the broker's receipt (JSON). A bundle that is refused is one line on
    stderr, FILE: FHIRPATH: REASON; exits 1. Safe to run again on the same BUNDLE: a referral
    the broker accepted before is not sent again; it prints "already sent" and the original
    receipt.
    """
    name = click.format_filename(bundle)
    try:
        with open_for_import(bundle) as fh:
            data = read_bounded(fh, MAX_BUNDLE_BYTES)
    except FileRefused as exc:
        _refused(record_line(name, [("(file)", exc.reason)]))
    try:
        referral = parse_bundle(data)
    except InputError as exc:
        _refused(
            record_line(
                name, [(p.field, p.problem) for p in exc.problems] or [("Bundle", str(exc))]
            )
        )
    header = referral.header
    click.echo(
        f"referral {header.referral_id}: {header.purpose.value} from {header.sender_agency} "
        f"to {', '.join(header.recipients)}"
    )
    if dry_run:
        click.echo("dry run: not submitted")
        return
    try:
        factory = _client_factory()
        click.echo(asyncio.run(_submit(factory(header.sender_agency, broker_url), referral)))
    except CairnError as exc:
        _refused(record_line(name, _submission_problems(exc)))


def _submission_problems(exc: CairnError) -> list[tuple[str, str]]:
    """What the broker (or the way to it) refused, by field of the referral the bundle became."""
    body = getattr(exc, "problem", None)
    errors = body.get("errors", []) if isinstance(body, dict) else []
    found = [(str(e.get("field")), str(e.get("problem"))) for e in errors if isinstance(e, dict)]
    found += [(p.field, p.problem) for p in getattr(exc, "problems", ())]
    return found or [("(submission)", str(exc))]


def _refused(line: str) -> NoReturn:
    click.echo(line, err=True)
    raise SystemExit(1)


async def _submit(session: AbstractAsyncContextManager[Submitter], referral: Referral) -> str:
    async with session as client:
        sent = await client.send(referral)
    receipt = sent.receipt
    if sent.already_sent:
        said = (
            f"already sent: the broker accepted referral {receipt.referral_id} at "
            f"{receipt.accepted_at.isoformat()} and sent nothing again; its original receipt:"
        )
    else:
        said = f"sent: referral {receipt.referral_id} accepted; the broker's receipt:"
    return f"{said}\n{receipt.model_dump_json(indent=2)}"


@nhs.command("mesh")
@click.option("--as", "agency", required=True, help="The NHS trust whose MESH mailbox this is.")
@broker_url_option
@click.option("--once", is_flag=True, help="One pass over the mailbox, then exit.")
def mesh(agency: str, broker_url: str, once: bool) -> None:
    """Run the trust's MESH bridge: referrals from its MESH mailbox to Cairn (CAIRN_MESH_*).

    Polls CAIRN_MESH_MAILBOX every CAIRN_MESH_POLL_EVERY_S for FHIR referral messages under
    CAIRN_MESH_REFERRAL_WORKFLOW, submits each as AGENCY and answers the sender's mailbox with
    the receipt or the refusal. SIGTERM or Ctrl-C stops it after the current pass.
    """
    from pydantic import ValidationError

    from adapters.nhs.mesh.settings import MeshSettings
    from broker.cli.common import settings_or_exit

    settings = settings_or_exit()
    try:
        mesh_settings = MeshSettings()
    except ValidationError as exc:
        raise click.UsageError(
            "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        ) from None
    if not mesh_settings.configured:
        raise click.UsageError("CAIRN_MESH_URL is not set: there is no MESH mailbox to poll")
    factory = _client_factory()
    try:
        asyncio.run(_run_mesh(settings.state_dir, mesh_settings, agency, broker_url, factory, once))
    except (ValueError, CairnError) as exc:
        raise click.ClickException(str(exc)) from None


async def _run_mesh(
    state_dir: Path,
    mesh_settings: object,
    agency: str,
    broker_url: str,
    factory: ClientFactory,
    once: bool,
) -> None:
    import signal

    from adapters.nhs.mesh.bridge import Ledger, ReferralBridge
    from adapters.nhs.mesh.client import MeshError, MeshMailbox
    from adapters.nhs.mesh.settings import MeshSettings

    assert isinstance(mesh_settings, MeshSettings)
    bridge = ReferralBridge(
        MeshMailbox(mesh_settings),
        mesh_settings,
        agency=agency,
        submitter=lambda: factory(agency, broker_url),
        ledger=Ledger(state_dir / "mesh" / f"{agency}.sqlite"),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    click.echo(f"MESH bridge for {agency}: polling mailbox {mesh_settings.mailbox}", err=True)
    try:
        while not stop.is_set():
            try:
                await bridge.deliver_due()
            except MeshError as exc:
                click.echo(f"MESH: {exc}; retrying in {mesh_settings.poll_every_s} s", err=True)
            if once:
                break
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), mesh_settings.poll_every_s)
    finally:
        await bridge.close()
