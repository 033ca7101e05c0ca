"""The ``nhs`` command group: submit an NHS trust's FHIR safeguarding referral through Cairn."""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import click

from adapters.agency import ClientFactory, Submitter, cli_client_factory
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
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@broker_url_option
@click.option("--dry-run", is_flag=True, help="Map and check the bundle; submit nothing.")
def import_(bundle: Path, broker_url: str, dry_run: bool) -> None:
    """Map BUNDLE (a FHIR R4 Bundle, JSON) to a Cairn referral and submit it."""
    try:
        referral = parse_bundle(bundle.read_bytes())
    except InputError as exc:
        for p in exc.problems:
            click.echo(f"  {p.field}: {p.problem}", err=True)
        raise click.ClickException(f"{bundle} was refused: {exc}") from None
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
        for p in getattr(exc, "problems", ()):
            click.echo(f"  {p.field}: {p.problem}", err=True)
        raise click.ClickException(str(exc)) from None


async def _submit(session: AbstractAsyncContextManager[Submitter], referral: Referral) -> str:
    async with session as client:
        receipt = await client.submit(referral)
    return receipt.model_dump_json(indent=2)
