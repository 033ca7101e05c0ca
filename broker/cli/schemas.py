"""The ``schemas`` command group: export the JSON Schema files, or check they are current."""

from __future__ import annotations

from pathlib import Path

import click

from broker.cli.common import folder_option
from schemas.export import JSON_DIR, drifted, write_json_schemas

__all__ = ["schemas"]


@click.group()
def schemas() -> None:
    """Message schemas: the JSON Schema files other-language adapters build against."""


@schemas.command("export")
@folder_option(JSON_DIR, "Where to write <message>.schema.json.", show_default=True)
@click.option("--check", is_flag=True, help="Write nothing; fail if any file is out of date.")
def export(directory: Path, check: bool) -> None:
    """Write the JSON Schema of every message, or with --check report the stale files."""
    if check:
        stale = drifted(directory)
        if stale:
            raise click.ClickException(
                f"out of date: {', '.join(stale)}; run 'cairn schemas export' and commit"
            )
        click.echo(f"schemas in {directory} are up to date")
        return
    for path in write_json_schemas(directory):
        click.echo(f"wrote {path}")
