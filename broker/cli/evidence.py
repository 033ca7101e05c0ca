"""``cairn evidence``: export and verify ``cairn-evidence/1`` packs (broker.audit.evidence).

``cairn evidence export`` reads the auditor's log files offline (read-only) and the signed
registry from the key store, and writes the pack for one disclosure; ``cairn evidence verify``
checks a pack from the federation root public key alone and says what it proves
(docs/evidence.md).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from uuid import UUID

import click
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from broker.audit.checkpoint import Checkpoint
from broker.audit.evidence import MAX_PACK_BYTES, EvidenceError, build_pack, logged, verify_pack
from broker.audit.files import DEFAULT_ORIGIN, ENTRIES_FILE
from broker.audit.index import Query
from broker.audit.store import AuditLog
from broker.cli.common import clean_errors, folder_option, settings_or_exit
from schemas.audit import AuditEventType

__all__ = ["evidence"]

MAX_JOSE_BYTES = 1024 * 1024


def _read(path: Path, what: str, limit: int) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise click.ClickException(f"cannot read the {what} {path}: {exc.strerror}") from None
    if len(data) > limit:
        raise click.ClickException(f"the {what} {path} is larger than {limit} bytes")
    return data.strip()


def _registry_and_root() -> tuple[bytes, Ed25519PublicKey]:
    from broker.trust import custody_of
    from keys.federation import read_root_key
    from keys.store import REGISTRY

    settings = settings_or_exit()
    store = custody_of(settings).public()
    return store.read(REGISTRY), read_root_key(store, root_kid=settings.registry_root_kid)


@click.group("evidence")
def evidence() -> None:
    """Evidence packs (cairn-evidence/1): one disclosure, provably, for a third party."""


@evidence.command("export")
@click.option("--referral", "referral", type=click.UUID, required=True, help="The referral id.")
@click.option("--recipient", required=True, help="The agency the disclosure was sent to.")
@click.option(
    "--jwe",
    "jwe_file",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The compact JWE as delivered (the record value on the recipient's topic).",
)
@click.option(
    "--jws",
    "jws_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The broker-signed JWS the recipient decrypted from it (optional).",
)
@folder_option(None, "The audit log folder [default: <state_dir>/audit].")
@click.option("--origin", default=DEFAULT_ORIGIN, show_default=True, help="The log's origin.")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the pack here [default: stdout].",
)
@clean_errors
def export_command(
    referral: UUID,
    recipient: str,
    jwe_file: Path,
    jws_file: Path | None,
    directory: Path | None,
    origin: str,
    output: Path | None,
) -> None:
    """Write the evidence pack of the disclosure of REFERRAL to RECIPIENT.

    The disclosed event (and the acknowledgement, if logged) come with their C2SP
    tlog-proofs to the latest signed checkpoint that covers them.
    """
    jwe = _read(jwe_file, "JWE", MAX_JOSE_BYTES)
    jws = _read(jws_file, "JWS", MAX_JOSE_BYTES) if jws_file is not None else None
    registry_jws, _root = _registry_and_root()
    folder = directory if directory is not None else settings_or_exit().state_dir / "audit"
    if not (folder / ENTRIES_FILE).is_file():
        raise click.ClickException(f"no audit log in {folder}; give its folder with --dir")
    types = (AuditEventType.DISCLOSED, AuditEventType.ACKNOWLEDGED)
    with AuditLog.open(folder, origin=origin, readonly=True) as log:
        note = log.latest_checkpoint()
        if note is None:
            raise click.ClickException("the log has no signed checkpoint yet")
        size = Checkpoint.parse(note[: note.rfind(b"\n\n") + 1]).size
        found: dict[str, dict[str, str]] = {}
        for entry in log.query(Query(recipient=recipient, types=types)):
            event = json.loads(entry.data)
            if event.get("message_id") != str(referral) or entry.index >= size:
                continue
            path = log.inclusion_proof(entry.index, size)
            found[event["type"]] = logged(entry.data, entry.index, path, note)
    if "disclosed" not in found:
        raise click.ClickException(
            f"no disclosed event of referral {referral} to {recipient} under the latest "
            "checkpoint; wait for the next checkpoint, or check the ids"
        )
    pack = build_pack(
        origin=origin,
        registry_jws=registry_jws,
        jwe=jwe,
        jws=jws,
        disclosed=found["disclosed"],
        acknowledged=found.get("acknowledged"),
    )
    if output is None:
        sys.stdout.buffer.write(pack)
    else:
        output.write_bytes(pack)
        click.echo(f"wrote {output}", err=True)


@evidence.command("verify")
@click.argument("pack_file", type=click.Path(dir_okay=False, path_type=Path))
@clean_errors
def verify_command(pack_file: Path) -> None:
    """Verify the pack in PACK_FILE from the federation root key and say what it proves."""
    pack = _read(pack_file, "evidence pack", MAX_PACK_BYTES)
    _registry, root = _registry_and_root()
    try:
        report = verify_pack(pack, root)
    except EvidenceError as exc:
        raise click.ClickException(f"the evidence does not verify: {exc}") from None
    for line in report.statement:
        click.echo(line)
