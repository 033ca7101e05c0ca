"""``cairn evidence``: export and verify ``cairn-evidence/1`` packs (broker.audit.evidence).

A pack needs what two parties hold: the auditor has the log (the events and their proofs),
the recipient has the disclosure as delivered (the JWE its gateway received, the JWS inside it,
and its signed acknowledgement). So it is made in two steps (docs/evidence.md):

1. The recipient, on its gateway's machine: ``cairn evidence delivered --referral ID --as
   AGENCY -o delivered.json`` reads the gateway's store (its settings, as ``cairn gateway --as
   AGENCY`` reads them, or ``--gateway-db``) and writes ``cairn-delivered/1``: the compact JWE
   and signed acknowledgement, and the JWS only with ``--with-jws`` (it holds the disclosure's
   content in the clear).
2. The auditor: ``cairn evidence export --referral ID --recipient AGENCY --delivered
   delivered.json -o pack.json`` reads the log files offline (read-only) and the signed
   registry from the key store, and writes the pack. ``--jwe`` / ``--jws`` / ``--ack`` give the
   parts as files instead; ``--gateway-db`` reads them from a gateway store directly (one
   machine holding both, as in ``make demo``).

``cairn evidence verify FILE`` checks a pack offline from the federation root public key (the
key store's, or ``--root-key FILE``) and says what it proves, or one line naming the tampered
part (exit 1).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from uuid import UUID

import click
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from broker.audit.evidence import MAX_PACK_BYTES, EvidenceError, build_pack, logged, verify_pack
from broker.audit.files import DEFAULT_ORIGIN, ENTRIES_FILE, checkpoint_size
from broker.audit.index import Query
from broker.audit.store import AuditLog
from broker.cli.common import clean_errors, folder_option, settings_or_exit
from schemas.audit import AuditEventType

if TYPE_CHECKING:
    from gateway.store import Delivered, GatewayStore

__all__ = ["DELIVERED_FORMAT", "evidence"]

MAX_JOSE_BYTES: Final = 1024 * 1024
#: What ``cairn evidence delivered`` writes: the recipient's part of a pack.
DELIVERED_FORMAT: Final = "cairn-delivered/1"


def _read(path: Path, what: str, limit: int) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise click.ClickException(f"cannot read the {what} {path}: {exc.strerror}") from None
    if len(data) > limit:
        raise click.ClickException(f"the {what} {path} is larger than {limit} bytes")
    return data.strip()


def _registry_jws() -> bytes:
    from broker.trust import custody_of
    from keys.store import REGISTRY

    return custody_of(settings_or_exit()).public().read(REGISTRY)


def _store_root() -> Ed25519PublicKey:
    from broker.trust import custody_of
    from keys.federation import read_root_key

    settings = settings_or_exit()
    store = custody_of(settings).public()
    return read_root_key(store, root_kid=settings.registry_root_kid)


def _root_from_file(path: Path) -> Ed25519PublicKey:
    """An Ed25519 public key: a JWK (RFC 8037, as the key store's root.jwk) or a PEM
    SubjectPublicKeyInfo (as ``openssl pkey -pubout`` writes)."""
    from keys.jwk import public_key_from_jwk

    data = _read(path, "root public key", 64 * 1024)
    try:
        if data.startswith(b"{"):
            key: Any = public_key_from_jwk(json.loads(data))
        else:
            key = load_pem_public_key(data)
    except (ValueError, TypeError, KeyError):
        raise click.ClickException(
            f"{path} is neither an Ed25519 public JWK nor a PEM public key"
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise click.ClickException(f"{path} is not an Ed25519 public key")
    return key


# -- the recipient's gateway store --------------------------------------------------------------


def _gateway_store(database: str | None, agency: str) -> GatewayStore:
    """The store ``database`` names (a PostgreSQL URL, else a SQLite file that must exist), or
    (None) the one ``cairn gateway --as AGENCY`` uses under its settings."""
    if database is None:
        from gateway.cli import open_store
        from gateway.settings import GatewaySettings

        try:
            gw = GatewaySettings()
        except ValueError as exc:
            raise click.ClickException(f"the gateway's settings: {exc}") from None
        return open_store(settings_or_exit(), gw, agency)
    if database.startswith(("postgresql://", "postgres://")):
        from gateway.postgres import PostgresGatewayStore

        return PostgresGatewayStore(database)
    from gateway.sqlite import SqliteGatewayStore

    path = Path(database)
    if not path.is_file():
        raise click.ClickException(f"no gateway store at {path}")
    return SqliteGatewayStore(path)


def _delivered(database: str | None, agency: str, referral: UUID) -> Delivered:
    """What the recipient's gateway kept of the disclosure of ``referral``."""
    store = _gateway_store(database, agency)

    async def read() -> Delivered | None:
        await store.open()
        try:
            return await store.delivered(referral)
        finally:
            await store.close()

    got = asyncio.run(read())
    if got is None:
        raise click.ClickException(
            f"the gateway's store holds no disclosure of referral {referral} (never received, "
            "or deleted under its retention)"
        )
    if got.jwe is None:
        raise click.ClickException(
            f"the gateway stored referral {referral} before it kept the JWE as delivered; give "
            "the JWE with --jwe"
        )
    return got


def _delivered_file(path: Path, referral: UUID, recipient: str) -> dict[str, str]:
    try:
        doc = json.loads(_read(path, "delivered file", 4 * MAX_JOSE_BYTES))
    except ValueError:
        raise click.ClickException(f"{path} is not a {DELIVERED_FORMAT} file") from None
    if not isinstance(doc, dict) or doc.get("format") != DELIVERED_FORMAT:
        raise click.ClickException(f"{path} is not a {DELIVERED_FORMAT} file")
    if (doc.get("referral_id"), doc.get("recipient")) != (str(referral), recipient):
        raise click.ClickException(f"{path} is of another referral or recipient")
    parts = {k: doc[k] for k in ("jwe", "jws", "ack") if doc.get(k) is not None}
    if not isinstance(parts.get("jwe"), str) or not all(isinstance(v, str) for v in parts.values()):
        raise click.ClickException(f"{path}: jwe (and jws, ack if there) are strings")
    return parts


@click.group("evidence")
def evidence() -> None:
    """Evidence packs (cairn-evidence/1): one disclosure, provably, for a third party."""


_referral = click.option(
    "--referral", "referral", type=click.UUID, required=True, help="The referral id."
)
_gateway_db = click.option(
    "--gateway-db",
    "gateway_db",
    metavar="PATH|URL",
    help="The gateway's store: its SQLite file or PostgreSQL URL [default (delivered): the "
    "store 'cairn gateway --as AGENCY' uses, e.g. from CAIRN_GATEWAY_DATABASE_URL_FILE, which "
    "keeps a password off the command line].",
)
_with_jws = click.option(
    "--with-jws",
    is_flag=True,
    help="Include the broker's JWS the recipient decrypted (it holds the disclosure's content "
    "in the clear).",
)
_output = click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write it here [default: stdout].",
)


def _write(data: bytes, output: Path | None) -> None:
    if output is None:
        sys.stdout.buffer.write(data)
    else:
        output.write_bytes(data)
        click.echo(f"wrote {output}", err=True)


@evidence.command("delivered")
@_referral
@click.option("--as", "agency", required=True, help="The recipient agency (this gateway's).")
@_gateway_db
@_with_jws
@_output
@clean_errors
def delivered_command(
    referral: UUID, agency: str, gateway_db: str | None, with_jws: bool, output: Path | None
) -> None:
    """Step 1, by the recipient: write what its gateway kept of the disclosure of REFERRAL.

    The compact JWE exactly as delivered and the signed acknowledgement this agency sent (if
    any), as cairn-delivered/1 for 'cairn evidence export --delivered'.
    """
    got = _delivered(gateway_db, agency, referral)
    doc: dict[str, str] = {
        "format": DELIVERED_FORMAT,
        "referral_id": str(referral),
        "recipient": agency,
        "jwe": str(got.jwe),
    }
    if with_jws and got.jws is not None:
        doc["jws"] = got.jws
    if got.ack is not None:
        doc["ack"] = got.ack
    _write((json.dumps(doc, sort_keys=True, indent=2) + "\n").encode(), output)


_jwe_file = click.option(
    "--jwe",
    "jwe_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The compact JWE as delivered (the record value on the recipient's topic).",
)
_jws_file = click.option(
    "--jws",
    "jws_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The broker-signed JWS the recipient decrypted from it (optional).",
)
_ack_file = click.option(
    "--ack",
    "ack_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The recipient's signed acknowledgement, a compact JWS (optional).",
)


@evidence.command("export")
@_referral
@click.option("--recipient", required=True, help="The agency the disclosure was sent to.")
@click.option(
    "--delivered",
    "delivered_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The recipient's part, from 'cairn evidence delivered'.",
)
@_jwe_file
@_jws_file
@_ack_file
@_gateway_db
@_with_jws
@folder_option(None, "The audit log folder [default: <state_dir>/audit].")
@click.option("--origin", default=DEFAULT_ORIGIN, show_default=True, help="The log's origin.")
@_output
@clean_errors
def export_command(
    referral: UUID,
    recipient: str,
    delivered_file: Path | None,
    jwe_file: Path | None,
    jws_file: Path | None,
    ack_file: Path | None,
    gateway_db: str | None,
    with_jws: bool,
    directory: Path | None,
    origin: str,
    output: Path | None,
) -> None:
    """Step 2, by the auditor: write the evidence pack of the disclosure of REFERRAL to
    RECIPIENT.

    The disclosure as delivered comes from exactly one of --delivered (the recipient's file),
    --jwe (with --jws and --ack if held) or --gateway-db (a gateway store on this machine).
    The disclosed event (and the acknowledgement, if logged) come with their C2SP tlog-proofs
    to the latest checkpoint (its cosigned note when witnesses cosigned it).
    """
    sources = [s for s in (delivered_file, jwe_file, gateway_db) if s is not None]
    if len(sources) != 1:
        raise click.UsageError("give exactly one of --delivered, --jwe or --gateway-db")
    if jwe_file is None and (jws_file is not None or ack_file is not None):
        raise click.UsageError("--jws and --ack go with --jwe")
    parts: dict[str, bytes] = {}
    if delivered_file is not None:
        parts = {
            k: v.encode("ascii", "replace")
            for k, v in _delivered_file(delivered_file, referral, recipient).items()
        }
    elif jwe_file is not None:
        parts["jwe"] = _read(jwe_file, "JWE", MAX_JOSE_BYTES)
        for name, path in (("jws", jws_file), ("ack", ack_file)):
            if path is not None:
                parts[name] = _read(path, name.upper(), MAX_JOSE_BYTES)
    else:
        got = _delivered(gateway_db, recipient, referral)
        parts["jwe"] = str(got.jwe).encode("ascii", "replace")
        if with_jws and got.jws is not None:
            parts["jws"] = got.jws.encode("ascii", "replace")
        if got.ack is not None:
            parts["ack"] = got.ack.encode("ascii", "replace")
    registry_jws = _registry_jws()
    folder = directory if directory is not None else settings_or_exit().state_dir / "audit"
    if not (folder / ENTRIES_FILE).is_file():
        raise click.ClickException(f"no audit log in {folder}; give its folder with --dir")
    found = _logged(folder, origin, referral, recipient)
    if "disclosed" not in found:
        raise click.ClickException(
            f"no disclosed event of referral {referral} to {recipient} under the latest "
            "checkpoint; wait for the next checkpoint, or check the ids"
        )
    pack = build_pack(
        origin=origin,
        registry_jws=registry_jws,
        jwe=parts["jwe"],
        jws=parts.get("jws"),
        ack=parts.get("ack"),
        disclosed=found["disclosed"],
        acknowledged=found.get("acknowledged"),
    )
    _write(pack, output)


def _logged(folder: Path, origin: str, referral: UUID, recipient: str) -> dict[str, dict[str, str]]:
    """The disclosed and acknowledged events of ``referral`` to ``recipient``, each with its
    tlog-proof to one checkpoint: the latest one's cosigned note, else the latest cosigned
    checkpoint (``AuditLog.cosigned_checkpoint``) if it covers the disclosed event, else the
    latest signed one."""
    types = (AuditEventType.DISCLOSED, AuditEventType.ACKNOWLEDGED)
    with AuditLog.open(folder, origin=origin, readonly=True) as log:
        latest = log.latest_checkpoint()
        if latest is None:
            raise click.ClickException("the log has no signed checkpoint yet")
        entries = [
            entry
            for entry in log.query(Query(recipient=recipient, types=types))
            if json.loads(entry.data).get("message_id") == str(referral)
        ]
        disclosed = [e.index for e in entries if json.loads(e.data)["type"] == "disclosed"]
        note = latest
        if disclosed:
            for candidate in (
                log.cosigned_checkpoint(checkpoint_size(latest)),
                log.cosigned_checkpoint(),
            ):
                if candidate is not None and checkpoint_size(candidate) > disclosed[0]:
                    note = candidate
                    break
        size = checkpoint_size(note)
        found: dict[str, dict[str, str]] = {}
        for entry in entries:
            if entry.index < size:
                kind = json.loads(entry.data)["type"]
                path = log.inclusion_proof(entry.index, size)
                found[kind] = logged(entry.data, entry.index, path, note)
    return found


@evidence.command("verify")
@click.argument("pack_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--root-key",
    "root_key",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The federation root public key (JWK or PEM) [default: the key store's root.jwk].",
)
@clean_errors
def verify_command(pack_file: Path, root_key: Path | None) -> None:
    """Verify the pack in PACK_FILE from the federation root key and say what it proves."""
    from keys.jwk import kid_of

    pack = _read(pack_file, "evidence pack", MAX_PACK_BYTES)
    root = _root_from_file(root_key) if root_key is not None else _store_root()
    try:
        report = verify_pack(pack, root)
    except EvidenceError as exc:
        raise click.ClickException(f"the evidence does not verify: {exc}") from None
    click.echo(f"Checked from the federation root key {kid_of(root)}:")
    for line in report.statement:
        click.echo(line)
