"""The ``police`` command group: import a force's incident export and submit what it calls for.

``police import`` writes the table of messages to stdout and each bad line of the export to
stderr as one line, ``FILE:LINE: FIELD: REASON`` (a line's several problems separated by
``; ``), with no value from the file in it and never a traceback. A file that cannot be read as
a whole (missing, a directory, empty, over ``MAX_EXPORT_LINES`` lines or ``MAX_EXPORT_BYTES``)
is one line ``FILE: (file): REASON`` and nothing is submitted.

The good lines of an export with bad ones are still submitted (and the summary says it was a
partial import; the exit status is 1). That is the contract ``referrals`` is built on, and the
safer one here: holding back every other victim's referral, and Operation Encompass notices
due before the next school day, because one line has a typo delays protection for people the
bad line says nothing about, while messages made from the export alone make importing the
corrected file again send each message once.

Importing an export again is safe, and is how an interrupted import is finished: every message
is made from its line alone (``adapters.police.referrals``), so the broker recognises what it
accepted before and answers with the original receipt without sending anything; the table says
``already sent`` for those, with the time of the original receipt, and ``queued`` for what
went now (a line cut short after its first messages is completed, and no recipient gets any
message twice).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from itertools import groupby
from pathlib import Path
from typing import IO, Final
from uuid import UUID

import click

from adapters.agency import ClientFactory, Submitter, cli_client_factory
from adapters.client import SubmissionRefused
from adapters.importing import (
    MAX_EXPORT_LINES,
    MAX_LINE_BYTES,
    FileRefused,
    bounded_lines,
    open_for_import,
    record_line,
)
from adapters.police.referrals import Outgoing, RowError, import_export
from broker.cli.common import broker_url_option
from schemas.errors import CairnError, TransportError
from schemas.federation import Federation
from schemas.referral import Referral

__all__ = ["police", "render_table"]


def _client_factory() -> ClientFactory:
    return cli_client_factory("the file")


_DEFAULT_FEDERATION_DIR = Path("deploy") / "federation"
#: Bytes in one export file: 50,000 incidents of 5 KB each, about a large force's year.
MAX_EXPORT_BYTES: Final = 256 * 1_048_576


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
# Checked by the command, not by click, so that a missing file is one line like any bad input.
@click.argument("file", type=click.Path(path_type=Path))
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

    Prints one line per message (the line of FILE it came from, its purpose, its id, its
    recipient and the result), and one line on stderr per bad line of FILE:
    FILE:LINE: FIELD: REASON. The good lines are still submitted (a partial import, said in the
    summary). Exits 1 when any line had a problem or any submission was refused or failed.

    Safe to run again on the same FILE, e.g. after an interrupted import: a message the broker
    accepted before is not sent again and shows as "already sent" with the time of its
    original receipt; the rest are sent.
    """
    federation = load_federation_dir(federation_dir)
    name = click.format_filename(file)
    try:
        with open_for_import(file) as fh:
            lines = _ExportLines(fh)
            # The clock only bounds the export's times; no message holds it.
            produced, errors = import_export(lines, federation, datetime.now(UTC))
        if not lines.content:
            raise FileRefused("empty: no incidents to import")
    except FileRefused as exc:
        click.echo(record_line(name, [("(file)", exc.reason)]), err=True)
        raise SystemExit(1) from None
    for row, problems in groupby(errors, key=lambda e: e.row):
        click.echo(record_line(f"{name}:{row}", [(e.field, e.reason) for e in problems]), err=True)
    if dry_run:
        results = {o.message_id: "ready (dry run)" for o in produced}
    else:
        results = asyncio.run(_submit(_client_factory(), broker_url, produced))
    click.echo(render_table(produced, errors, results, dry_run=dry_run))
    failed = bool(errors) or any(not r.startswith(_OK) for r in results.values())
    if failed:
        raise SystemExit(1)


class _ExportLines:
    """The lines of an export file, within the file's bounds; FileRefused past them.

    Read lazily, so memory holds one line at a time; ``content`` says whether any line held more
    than white space (and a byte order mark).
    """

    def __init__(self, fh: IO[bytes]) -> None:
        self._fh = fh
        self.content = False

    def __iter__(self) -> Iterator[bytes]:
        total = 0
        for count, line in enumerate(bounded_lines(self._fh, MAX_LINE_BYTES), start=1):
            if count > MAX_EXPORT_LINES:
                raise FileRefused(f"more than {MAX_EXPORT_LINES} lines: split the export")
            total += len(line)
            if total > MAX_EXPORT_BYTES:
                raise FileRefused(f"larger than {MAX_EXPORT_BYTES} bytes: split the export")
            self.content = self.content or bool(line.strip().removeprefix(b"\xef\xbb\xbf"))
            yield line


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


#: The start of a result that counts as done: sent now, sent by an earlier import, or checked.
_OK = ("queued", "already sent", "ready")


async def _submit_one(client: Submitter, item: Outgoing) -> str:
    """Submit one message; say what happened in a few words (ids, codes and times only)."""
    # The client posts bytes as they are (signed); a notification is not a Referral model.
    body = item.message if isinstance(item.message, Referral) else item.message.model_dump_json()
    try:
        sent = await client.send(body if isinstance(body, Referral) else body.encode())
    except SubmissionRefused as exc:
        return f"refused: {exc}"
    except TransportError as exc:
        return f"failed: {exc}"
    receipt = sent.receipt
    if receipt.referral_id != item.message_id:
        return f"failed: the broker's receipt names another message ({receipt.referral_id})"
    statuses = ", ".join(f"{r.agency} {r.status.value}" for r in receipt.recipients)
    said = f"receipt of {receipt.accepted_at.isoformat()}: {statuses}"
    # Already sent: the broker's original receipt, for a message an earlier import sent.
    return f"already sent ({said})" if sent.already_sent else f"queued ({said})"


def render_table(
    produced: list[Outgoing],
    errors: list[RowError],
    results: dict[UUID, str],
    *,
    dry_run: bool = False,
) -> str:
    """One line per message, ordered by line, and a summary: ids and codes, no personal data.

    The problems themselves are on stderr, one line per bad line of the export.
    """
    rows = [
        (
            str(o.row),
            o.purpose.value,
            str(o.message_id),
            ", ".join(o.recipients),
            results.get(o.message_id, ""),
        )
        for o in sorted(produced, key=lambda o: o.row)
    ]
    header = ("line", "message", "id", "recipient", "result")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    lines = [
        f"{r[0]:>{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]:<{widths[3]}}  "
        f"{r[4]}"
        for r in [header, *rows]
    ]
    said = [results.get(o.message_id, "") for o in produced]
    ok = sum(1 for r in said if r.startswith(_OK))
    summary = f"{ok} of {len(produced)} message(s) ok, {len(errors)} problem(s)"
    before = sum(1 for r in said if r.startswith("already sent"))
    if before:
        summary += (
            f"; {before} of them already sent by an earlier import (the broker's original "
            "receipts; nothing was sent again)"
        )
    if errors:
        summary += f" on {len({e.row for e in errors})} line(s), each reported on stderr"
    if errors and produced:
        done = "would be submitted" if dry_run else "were submitted"
        summary += (
            f"; a partial import: the other lines' messages {done}; correct the bad lines and "
            "import the file again (message ids are stable, so none is sent twice)"
        )
    lines.append(summary)
    return "\n".join(lines)
