"""The ``police`` command group: import a force's incident export and submit what it calls for."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import click

from adapters.agency import ClientFactory, Submitter, cli_client_factory
from adapters.client import SubmissionRefused
from adapters.police.referrals import Outgoing, RowError, import_export
from broker.cli.common import broker_url_option
from schemas.errors import CairnError, TransportError
from schemas.federation import Federation
from schemas.referral import Referral

__all__ = ["police", "render_table"]


def _client_factory() -> ClientFactory:
    return cli_client_factory("the file")


_DEFAULT_FEDERATION_DIR = Path("deploy") / "federation"


@click.group()
def police() -> None:
    """Police force adapter: turn incident exports into referrals and Encompass notifications."""


def load_federation_dir(directory: Path) -> Federation:
    """The federation in ``directory/agencies.yaml``, as the broker loads it."""
    from broker.federation import load_federation

    try:
        return load_federation(directory)
    except CairnError as exc:
        raise click.ClickException(str(exc)) from None


@police.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@broker_url_option
@click.option(
    "--federation-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="CAIRN_FEDERATION_DIR",
    default=_DEFAULT_FEDERATION_DIR,
    show_default=True,
    help="Folder holding agencies.yaml.",
)
@click.option("--dry-run", is_flag=True, help="Build and check everything; submit nothing.")
def import_(file: Path, broker_url: str, federation_dir: Path, dry_run: bool) -> None:
    """Import FILE (JSON lines, one incident a line) and submit what each incident calls for.

    Prints one line per message and per problem, with the line of FILE it came from. Exits 1
    when any line had a problem or any submission was refused.
    """
    federation = load_federation_dir(federation_dir)
    with file.open(encoding="utf-8") as fh:
        produced, errors = import_export(fh, federation, datetime.now(UTC))
    if dry_run:
        results = {o.message_id: "ready (dry run)" for o in produced}
    else:
        results = asyncio.run(_submit(_client_factory(), broker_url, produced))
    click.echo(render_table(produced, errors, results))
    failed = bool(errors) or any(not r.startswith(("queued", "ready")) for r in results.values())
    if failed:
        raise SystemExit(1)


async def _submit(
    factory: ClientFactory, broker_url: str, produced: list[Outgoing]
) -> dict[UUID, str]:
    """Submit each message, signed as its sending force; one client per force."""
    results: dict[UUID, str] = {}
    for sender in sorted({o.sender for o in produced}):
        async with factory(sender, broker_url) as client:
            for item in (o for o in produced if o.sender == sender):
                results[item.message_id] = await _submit_one(client, item)
    return results


async def _submit_one(client: Submitter, item: Outgoing) -> str:
    """Submit one message; say what happened in a few words (ids and codes only)."""
    # The client posts bytes as they are (signed); a notification is not a Referral model.
    body = item.message if isinstance(item.message, Referral) else item.message.model_dump_json()
    try:
        receipt = await client.submit(body if isinstance(body, Referral) else body.encode())
    except SubmissionRefused as exc:
        return f"refused: {exc}"
    except TransportError as exc:
        return f"failed: {exc}"
    statuses = ", ".join(f"{r.agency} {r.status.value}" for r in receipt.recipients)
    return f"queued ({statuses})" if statuses else "queued"


def render_table(produced: list[Outgoing], errors: list[RowError], results: dict[UUID, str]) -> str:
    """One line per message and per problem, ordered by line: ids and codes, no personal data."""
    rows: list[tuple[int, str, str, str]] = []
    for o in produced:
        rows.append(
            (o.row, o.purpose.value, ", ".join(o.recipients), results.get(o.message_id, ""))
        )
    for e in errors:
        rows.append((e.row, "error", e.field, e.reason))
    rows.sort(key=lambda r: r[0])
    header = ("line", "message", "recipient / field", "result")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(3)]
    lines = [
        f"{h[0]:>{widths[0]}}  {h[1]:<{widths[1]}}  {h[2]:<{widths[2]}}  {h[3]}"
        for h in [header, *((str(r[0]), r[1], r[2], r[3]) for r in rows)]
    ]
    ok = sum(1 for o in produced if results.get(o.message_id, "").startswith(("queued", "ready")))
    lines.append(f"{ok} of {len(produced)} message(s) ok, {len(errors)} problem(s)")
    return "\n".join(lines)
