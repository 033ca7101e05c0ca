"""The ``nhs`` command group: submit an NHS trust's FHIR safeguarding referral through Cairn.

``nhs import`` reports a bundle it cannot use as exactly one line on stderr, ``FILE: FHIRPATH:
REASON`` (the bundle's several problems separated by ``; ``), and exits 1: the bundle is one
record, so one line, whatever is wrong with it (not UTF-8, not JSON, nested too deep, a wrong
JSON type, a date outside the window, a mapping or referral rule). A file that cannot be read
(missing, a directory, over ``MAX_BUNDLE_BYTES``) is ``FILE: (file): REASON``. No value from the
bundle is in the line, and there is never a traceback. A refusal by the broker is one line too.
"""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager
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

    A bundle that is refused is one line on stderr, FILE: FHIRPATH: REASON; exits 1.
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
        receipt = await client.submit(referral)
    return receipt.model_dump_json(indent=2)
