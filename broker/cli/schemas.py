"""The ``schemas`` command group: the JSON Schema files and the OpenAPI documents, written from
the code or checked against it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import click

import broker.audit
import broker.web
import gateway
from broker.audit.openapi import auditor_document
from broker.cli.common import folder_option
from broker.cli.settings_doc import reference, replaced
from broker.config import REPO_ROOT
from broker.web.openapi import DOCUMENT_NAME, broker_document
from gateway.openapi import gateway_document
from schemas.export import JSON_DIR, drifted, write_json_schemas
from schemas.openapi import document_drifted, write_document

__all__ = ["OPENAPI_DOCUMENTS", "openapi_documents", "schemas"]

README: Final = REPO_ROOT / "README.md"

#: Each checked-in OpenAPI document and the function that builds it from the code.
OPENAPI_DOCUMENTS: Final[dict[Path, Callable[[], dict[str, Any]]]] = {
    Path(broker.web.__file__).with_name(DOCUMENT_NAME): broker_document,
    Path(broker.audit.__file__).with_name(DOCUMENT_NAME): auditor_document,
    Path(gateway.__file__).with_name(DOCUMENT_NAME): gateway_document,
}


def openapi_documents() -> dict[Path, dict[str, Any]]:
    """Each checked-in document's path and the document the code generates for it now."""
    return {path: build() for path, build in OPENAPI_DOCUMENTS.items()}


@click.group()
def schemas() -> None:
    """Message schemas and HTTP contracts: the JSON Schema files other-language adapters build
    against, and the OpenAPI documents of the broker, the auditor and the gateway."""


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


@schemas.command("openapi")
@click.option("--check", is_flag=True, help="Write nothing; fail if any document is out of date.")
def openapi(check: bool) -> None:
    """Write the OpenAPI 3.1 documents (broker/web, broker/audit, gateway: openapi.json) from
    the code, or with --check report the ones that differ from it."""
    documents = openapi_documents()
    if check:
        stale = [str(p) for p, doc in documents.items() if document_drifted(p, doc)]
        if stale:
            raise click.ClickException(
                f"out of date: {', '.join(stale)}; run 'cairn schemas openapi' and commit"
            )
        click.echo(f"{len(documents)} OpenAPI documents are up to date")
        return
    for path, document in documents.items():
        write_document(path, document)
        click.echo(f"wrote {path}")


@schemas.command("settings")
@click.option(
    "--readme",
    type=click.Path(dir_okay=False, path_type=Path),
    default=README,
    show_default=True,
    help="The README whose settings section to write.",
)
@click.option("--check", is_flag=True, help="Write nothing; fail if the section is out of date.")
def settings(readme: Path, check: bool) -> None:
    """Write the README's settings reference (every CAIRN_* variable, its default and what it
    does) from the settings models, or with --check report whether it differs from them."""
    try:
        text = readme.read_text(encoding="utf-8")
        updated = replaced(text, reference())
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"cannot update {readme}: {exc}") from None
    if check:
        if updated != text:
            raise click.ClickException(
                f"out of date: the settings section of {readme}; run 'cairn schemas settings' "
                "and commit"
            )
        click.echo(f"the settings section of {readme} is up to date")
        return
    if updated != text:
        readme.write_text(updated, encoding="utf-8")
    click.echo(f"wrote the settings section of {readme}")
