"""The ``cairn audit`` commands: verify the log offline, query it, prove entries, export a report.

For the information-governance officer (docs/architecture.md#audit). The log is
``<state_dir>/audit`` unless ``--dir`` says otherwise; ``verify`` needs only the files and the
auditor's public keys (from the federation registry in the key store, or given as ``--vkey``).
``query`` and ``export`` find a person by their identifiers, which are turned into pseudonyms with
the federation's pseudonym secret (so they need the pseudonym store, ``<key_dir>/pseudonym``,
and its passphrase: ``<passphrase_dir>/pseudonym`` or ``CAIRN_KEY_PASSPHRASE[_FILE]``); the
identifiers themselves are never written anywhere. Long runs show progress on stderr; stdout
carries only the result. Errors are one line saying what to do.

A search by subject (``query`` or ``export`` with identifiers) is itself an audit event
(``broker.audit.trail``): it needs ``--reason`` and is made under a certificate, an IG
officer's (``--officer-cert``/``--officer-key``, the key's passphrase in
``CAIRN_OFFICER_PASSPHRASE`` or asked for) or, by default, the auditor's own from the key
store; the certificate must be the federation CA's, valid now, and the key its key. The
``ig_search`` (``ig_export``) event is produced to ``cairn.audit`` before the log is read: with
Kafka unreachable the search is refused. ``cairn audit officer request``/``enrol`` make an
officer's key and request, and issue the certificate from the federation CA.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import click
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from broker.audit.checkpoint import NoteVerifier
from broker.audit.cosign import CosignerVerifier
from broker.audit.errors import AuditBusy
from broker.audit.files import DEFAULT_ORIGIN, ENTRIES_FILE, Progress, checkpoint_size
from broker.audit.index import Query
from broker.audit.proofs import checkpoint_for, consistency_document, inclusion_document
from broker.audit.pseudonym import load_pseudonym_secret
from broker.audit.report import disclosure_report, report_csv, report_json
from broker.audit.store import AuditLog
from broker.audit.verify import verify
from broker.cli.common import clean_errors as _clean_errors
from broker.cli.common import folder_option
from broker.cli.common import settings_or_exit as _settings
from schemas.audit import IG_OFFICER_PREFIX, AuditEvent, AuditEventType
from schemas.consent import OverrideReason
from schemas.errors import SchemaError
from schemas.pseudonyms import person_pseudonyms
from schemas.referral import Purpose

__all__ = ["audit"]

T = TypeVar("T")


def _directory(ctx: click.Context) -> Path:
    given: Path | None = ctx.obj["audit_dir"]
    folder = given if given is not None else _settings().state_dir / "audit"
    if not (folder / ENTRIES_FILE).is_file():
        raise click.ClickException(f"no audit log in {folder}; give its folder with --dir")
    return folder


@contextmanager
def _progress(label: str) -> Iterator[Progress]:
    """A ``progress(done, total)`` callback drawing a bar on stderr."""
    bar: Any = None
    try:

        def update(done: int, total: int) -> None:
            nonlocal bar
            if bar is None:
                bar = click.progressbar(length=max(total, 1), label=label, file=sys.stderr)
                bar.__enter__()
            bar.update(done - bar.pos)

        yield update
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)


@contextmanager
def _open_log(ctx: click.Context) -> Iterator[AuditLog]:
    """The log for reading: opened for writing (so it recovers and catches up its index) when
    the auditor is not running, read-only beside it when it is."""
    folder = _directory(ctx)
    origin: str = ctx.obj["audit_origin"]
    try:
        with _progress("reading the audit log") as progress:
            opened = AuditLog.open(folder, origin=origin, progress=progress)
    except AuditBusy:
        opened = AuditLog.open(folder, origin=origin, readonly=True)
    try:
        yield opened
    finally:
        opened.close()


def _verifiers(vkeys: tuple[str, ...], origin: str) -> list[NoteVerifier]:
    if vkeys:
        return [NoteVerifier.from_vkey(v) for v in vkeys]
    return _registry_keys(origin)[0]


def _registry_keys(origin: str) -> tuple[list[NoteVerifier], list[CosignerVerifier]]:
    """The auditor's note keys and the witnesses' cosigner keys, from the signed registry."""
    # The auditor's keys from the registry, retired ones included: older checkpoints were
    # signed with them. A revoked key is left out, so what it signed is refused.
    from broker.audit.evidence import registry_witnesses
    from broker.trust import custody_of
    from keys.federation import read_root_key
    from keys.registry import AUDITOR_ID, KeyStatus, KeyUse, verify_registry_signature
    from keys.store import REGISTRY

    settings = _settings()
    store = custody_of(settings).public()
    root = read_root_key(store, root_kid=settings.registry_root_kid)
    registry = verify_registry_signature(store.read(REGISTRY), root)
    member = registry.member(AUDITOR_ID)
    keys = [] if member is None else member.keys
    found = []
    for k in keys:
        public = k.jwk.public_key()
        usable = k.use is KeyUse.SIGNING and k.status is not KeyStatus.REVOKED
        if usable and isinstance(public, Ed25519PublicKey):
            found.append(NoteVerifier(origin, public))
    if not found:
        raise click.ClickException(
            f"the registry lists no usable signing key for {AUDITOR_ID}; give --vkey"
        )
    return found, registry_witnesses(registry)


def _subject_pseudonyms(
    nhs_number: str | None,
    given_name: str | None,
    family_name: str | None,
    dob: datetime | None,
    aliases: tuple[str, ...],
) -> tuple[str, ...]:
    if not (nhs_number or given_name or family_name or dob or aliases):
        return ()
    from broker.trust import custody_of
    from keys.custody import PSEUDONYM

    custody = custody_of(_settings())
    secret = load_pseudonym_secret(custody.store(PSEUDONYM), custody.passphrase(PSEUDONYM))
    try:
        return person_pseudonyms(
            secret,
            nhs_number=nhs_number,
            given_name=given_name,
            family_name=family_name,
            date_of_birth=dob.date() if dob is not None else None,
            aliases=aliases,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _searcher(cert_path: Path | None, key_path: Path | None) -> str:
    """Who searches: the CN of the certificate given (the auditor's own by default), once it
    is shown to be the federation CA's, valid now, an IG officer's or the auditor's, and the
    key given is its key (the passphrase opens it)."""
    import os

    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from broker.trust import custody_of
    from keys.custody import AUDITOR
    from keys.pki import agency_of_certificate
    from keys.registry import AUDITOR_ID
    from keys.store import CA_CERT, client_cert, client_key, decrypt_private_key

    custody = custody_of(_settings())
    if cert_path is None:
        if key_path is not None:
            raise click.UsageError("--officer-key goes with --officer-cert")
        store = custody.member_store(AUDITOR_ID)
        cert_pem, key_pem = store.read(client_cert(AUDITOR_ID)), store.read(client_key(AUDITOR_ID))
        passphrase = custody.passphrase(AUDITOR)
    else:
        if key_path is None:
            raise click.UsageError("--officer-cert needs its --officer-key")
        cert_pem, key_pem = cert_path.read_bytes(), key_path.read_bytes()
        given = os.environ.get("CAIRN_OFFICER_PASSPHRASE")
        if given is None:
            given = click.prompt("Passphrase of your officer key", hide_input=True, err=True)
        passphrase = given.encode("utf-8")
    try:
        certificate = x509.load_pem_x509_certificate(cert_pem)
        ca = x509.load_pem_x509_certificate(custody.public().read(CA_CERT))
        certificate.verify_directly_issued_by(ca)
        who = agency_of_certificate(certificate)
    except (ValueError, TypeError, InvalidSignature):
        raise click.ClickException(
            "the certificate is not one the federation CA issued; enrol with "
            "'cairn audit officer request' and 'enrol'"
        ) from None
    now = datetime.now(UTC)
    if not certificate.not_valid_before_utc <= now < certificate.not_valid_after_utc:
        raise click.ClickException(f"the certificate of {who} is not valid now")
    if who != AUDITOR_ID and not who.startswith(IG_OFFICER_PREFIX):
        raise click.ClickException(f"'{who}' is not an IG officer; enrol one")
    key = decrypt_private_key(key_pem, passphrase, name=str(key_path or "the auditor's key"))

    def spki(public: Any) -> bytes:
        return bytes(public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo))

    if spki(key.public_key()) != spki(certificate.public_key()):
        raise click.ClickException("the key is not the certificate's key")
    return who


def _record_search(
    subjects: tuple[str, ...],
    ids: dict[str, Any],
    reason: str | None,
    cert_path: Path | None,
    key_path: Path | None,
    export: str | None,
) -> None:
    """Record the search (``ig_search``, or ``ig_export`` in ``export`` format) before the log
    is read; refused, with nothing read, when the reason or certificate will not do or Kafka
    does not take the event."""
    import asyncio

    from broker.audit.trail import check_reason, identifier_kinds, record_now
    from schemas.audit import ig_searched

    try:
        checked = check_reason(reason, **ids)
        officer = _searcher(cert_path, key_path)
        event = ig_searched(
            officer=officer,
            reason=checked,
            subjects=subjects,
            identifiers=identifier_kinds(**ids),
            export=export,
            at=datetime.now(UTC),
        )
    except SchemaError as exc:
        detail = "; ".join(f"{p.field}: {p.problem}" for p in exc.problems) or str(exc)
        raise click.UsageError(f"--reason: {detail}" if "reason" in detail else detail) from None
    recorder = click.get_current_context().find_object(dict) or {}
    fake = recorder.get("recorder")
    if fake is not None:
        asyncio.run(fake.record(event))
    else:
        asyncio.run(record_now(_settings(), event))
    click.echo(f"search recorded as audit event {event.event_id} ({officer})", err=True)


def _moment(value: datetime | None) -> datetime | None:
    """A date or time from the command line; without a zone it is UTC."""
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _write(output: Path | None, text: str) -> None:
    """Write the result to stdout, or to ``output`` whole (temp file, fsync, rename), 0600."""
    if output is None:
        click.echo(text, nl=False)
        return
    output = output.resolve()
    fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, output)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _subject_options(fn: Callable[..., T]) -> Callable[..., T]:
    """The identifiers a person is found by, handed to the command as ``subjects``: their
    pseudonyms (empty when none is given). None of the identifiers is stored or printed.

    A search by subject is recorded first (``_record_search``): the reason and the officer's
    certificate; the command itself gets the pseudonyms only."""

    @wraps(fn)
    def with_subjects(
        *args: Any,
        nhs_number: str | None,
        given_name: str | None,
        family_name: str | None,
        dob: datetime | None,
        aliases: tuple[str, ...],
        reason: str | None,
        officer_cert: Path | None,
        officer_key: Path | None,
        **kwargs: Any,
    ) -> T:
        subjects = _clean_errors(_subject_pseudonyms)(
            nhs_number, given_name, family_name, dob, aliases
        )
        if subjects:
            ids = {
                "nhs_number": nhs_number,
                "given_name": given_name,
                "family_name": family_name,
                "date_of_birth": dob.date() if dob is not None else None,
                "aliases": aliases,
            }
            # 'cairn audit export' is an ig_export in its format; 'query' an ig_search.
            export = kwargs.get("fmt", "csv") if fn.__name__ == "export_command" else None
            _clean_errors(_record_search)(subjects, ids, reason, officer_cert, officer_key, export)
        return fn(*args, subjects=subjects, **kwargs)

    command: Callable[..., T] = with_subjects
    for option in reversed(
        (
            click.option("--nhs-number", help="The subject's NHS number."),
            click.option("--given-name", help="The subject's given name (the first one counts)."),
            click.option("--family-name", help="The subject's family name."),
            click.option(
                "--dob", type=click.DateTime(["%Y-%m-%d"]), help="Date of birth, YYYY-MM-DD."
            ),
            click.option("--alias", "aliases", multiple=True, help="Another name, 'Given Family'."),
            click.option(
                "--reason",
                help="Why you search (10-500 characters, kept in the audit log): a case or "
                "request reference, never who. Required with identifiers.",
            ),
            click.option(
                "--officer-cert",
                type=click.Path(exists=True, dir_okay=False, path_type=Path),
                help="Your IG officer certificate (cairn audit officer enrol) "
                "[default: the auditor's own, from the key store].",
            ),
            click.option(
                "--officer-key",
                type=click.Path(exists=True, dir_okay=False, path_type=Path),
                help="Its private key (passphrase: CAIRN_OFFICER_PASSPHRASE, or asked for).",
            ),
        )
    ):
        command = option(command)
    return command


_WHEN = click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S%z"])


@click.group("audit")
@folder_option(None, "The audit log folder [default: <state_dir>/audit].")
@click.option(
    "--origin",
    default=DEFAULT_ORIGIN,
    show_default=True,
    help="The log's origin: the name in its checkpoints.",
)
@click.pass_context
def audit(ctx: click.Context, directory: Path | None, origin: str) -> None:
    """The verifiable audit log: verify it, query it, prove entries, export reports."""
    ctx.ensure_object(dict)
    ctx.obj["audit_dir"] = directory
    ctx.obj["audit_origin"] = origin


@audit.command("verify")
@click.option(
    "--vkey",
    "vkeys",
    multiple=True,
    help="An auditor verifier key (name+keyid+base64) [default: the registry's auditor keys].",
)
@click.option(
    "--witness-vkey",
    "witness_vkeys",
    multiple=True,
    help="A witness verifier key (name+keyid+base64, cosignature/v1) whose cosignatures in "
    "cosigned.log are checked [default: the registry's witnesses, unless --vkey is given].",
)
@click.option("--skip-events", is_flag=True, help="Do not check each entry is a valid event.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
@_clean_errors
def verify_command(
    ctx: click.Context,
    vkeys: tuple[str, ...],
    witness_vkeys: tuple[str, ...],
    skip_events: bool,
    as_json: bool,
) -> None:
    """Verify the log offline from its files: recompute the tree, check every checkpoint,
    and check that cosigned.log holds only those checkpoints, each cosignature by a witness
    verifying.

    Exits 1 and names the first bad entry, checkpoint or cosigned record if anything does not
    verify.
    """
    folder = _directory(ctx)
    origin: str = ctx.obj["audit_origin"]
    witnesses = [CosignerVerifier.from_vkey(v) for v in witness_vkeys]
    if vkeys:
        verifiers = _verifiers(vkeys, origin)
    else:
        verifiers, listed = _registry_keys(origin)
        witnesses = witnesses or listed
    with _progress("verifying") as progress:
        report = verify(
            folder,
            verifiers,
            origin=origin,
            check_events=not skip_events,
            progress=progress,
            witnesses=witnesses,
        )
    if as_json:
        click.echo(
            json.dumps(
                {
                    "ok": report.ok,
                    "entries": report.entries,
                    "checkpoints": report.checkpoints,
                    "verified_size": report.verified_size,
                    "unattested": report.unattested,
                    "cosigned_records": report.cosigned_notes,
                    "cosigned": dict(report.cosigned),
                    "uncosigned_records": report.uncosigned_notes,
                    "root": base64.b64encode(report.root).decode("ascii"),
                    "first_bad": str(report.first_bad) if report.first_bad else None,
                    "problems": [str(p) for p in report.problems],
                },
                indent=2,
            )
        )
    elif report.ok:
        click.echo(
            f"OK: {report.entries} entries, {report.checkpoints} checkpoints; signed tree "
            f"heads vouch for {report.verified_size} entries"
        )
    else:
        click.echo(f"FAILED: first bad place: {report.first_bad}")
        for problem in report.problems[1:]:
            click.echo(f"  also: {problem}")
    if report.ok and not as_json and report.cosigned_notes:
        if report.cosigned:
            sizes = ", ".join(f"{name} up to size {size}" for name, size in report.cosigned)
            click.echo(f"cosigned: {report.cosigned_notes} checkpoints; witnesses: {sizes}")
        elif not witnesses:
            click.echo(
                f"cosigned: {report.cosigned_notes} checkpoints, all this log's; their "
                "cosignatures were not checked (give --witness-vkey)"
            )
    if report.uncosigned_notes and not as_json:
        click.echo(
            f"note: {report.uncosigned_notes} cosigned checkpoints carry no cosignature by a "
            "witness given (or listed in the registry)",
            err=True,
        )
    if report.unattested and not as_json:
        click.echo(
            f"note: the last {report.unattested} entries are not covered by a checkpoint yet",
            err=True,
        )
    if not report.ok:
        ctx.exit(1)


@audit.command("query")
@_subject_options
@click.option("--agency", help="Events where this agency sends, receives, or owns the keys.")
@click.option("--sender")
@click.option("--recipient")
@click.option("--purpose", type=click.Choice([p.value for p in Purpose]))
@click.option("--lawful-basis", help="A lawful basis code, e.g. art6_1_e or cda1998_s115.")
@click.option(
    "--override/--no-override",
    default=None,
    help="Only events where consent was (or was not) overridden.",
)
@click.option("--override-reason", type=click.Choice([r.value for r in OverrideReason]))
@click.option("--override-by", help="Overrides decided by this staff or collar number.")
@click.option("--override-role", help="Overrides decided by this role code.")
@click.option("--override-paragraph", help="Overrides relying on this legal paragraph code.")
@click.option("--agreement", help="The sharing agreement relied on, by id.")
@click.option(
    "--type", "types", multiple=True, type=click.Choice([t.value for t in AuditEventType])
)
@click.option("--message-id", type=click.UUID)
@click.option("--since", type=_WHEN, help="From this date or time (UTC unless a zone is given).")
@click.option("--until", type=_WHEN, help="Before this date or time.")
@click.option("--limit", type=click.IntRange(min=1))
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@click.pass_context
@_clean_errors
def query_command(
    ctx: click.Context,
    subjects: tuple[str, ...],
    agency: str | None,
    sender: str | None,
    recipient: str | None,
    purpose: str | None,
    lawful_basis: str | None,
    override: bool | None,
    override_reason: str | None,
    override_by: str | None,
    override_role: str | None,
    override_paragraph: str | None,
    agreement: str | None,
    types: tuple[str, ...],
    message_id: UUID | None,
    since: datetime | None,
    until: datetime | None,
    limit: int | None,
    fmt: str,
) -> None:
    """Find audit events by subject, agency, purpose, lawful basis, consent override, date.

    An event under a consent override shows who decided it (role/staff id) and the legal
    paragraph; 'cairn audit query --override' lists every override.
    """
    query = Query(
        subjects=subjects,
        agency=agency,
        sender=sender,
        recipient=recipient,
        purpose=Purpose(purpose) if purpose else None,
        lawful_basis=lawful_basis,
        override=override,
        override_reason=OverrideReason(override_reason) if override_reason else None,
        override_by=override_by,
        override_role=override_role,
        override_paragraph=override_paragraph,
        agreement=agreement,
        types=tuple(AuditEventType(t) for t in types),
        message_id=message_id,
        since=_moment(since),
        until=_moment(until),
        limit=limit,
    )
    with _open_log(ctx) as log:
        found = log.query(query)
        for entry in found:
            event = entry.event
            if fmt == "json":
                click.echo(json.dumps({"leaf_index": entry.index, "event": event.jsonable()}))
                continue
            parties = " -> ".join(p for p in (event.sender, event.recipient) if p)
            detail = " ".join(
                part
                for part in (
                    event.purpose.value if event.purpose else "",
                    ",".join(event.lawful_basis),
                    event.consent_state.value if event.consent_state else "",
                    event.override_reason.value if event.override_reason else "",
                    _overrider(event),
                    ",".join(event.field_groups),
                    ",".join(event.reasons),
                )
                if part
            )
            click.echo(
                f"{entry.index:>8}  {event.at.isoformat()}  {event.type.value:<17} "
                f"{event.message_id or '-'}  {parties or event.agency or '-'}  {detail}"
            )
    if fmt == "table":
        click.echo(f"{len(found)} events", err=True)


def _overrider(event: AuditEvent) -> str:
    """'by <role>/<staff id> under <paragraph>' for an event under a consent override."""
    if event.override_by_id is None:
        return ""
    return f"by {event.override_by_role}/{event.override_by_id} under {event.override_paragraph}"


def _latest_size(log: AuditLog) -> int:
    note = log.latest_checkpoint()
    if note is None:
        raise click.ClickException(
            "the log has no checkpoint yet: proofs are given against signed tree heads; "
            "give --size to prove against the unsigned current tree"
        )
    return checkpoint_size(note)


@audit.command("prove")
@click.option("--index", type=click.IntRange(min=0), help="Prove this entry is in the log.")
@click.option("--size", type=click.IntRange(min=0), help="At this tree size [default: latest].")
@click.option(
    "--from",
    "first",
    type=click.IntRange(min=0),
    help="Prove the tree at --size extends the tree at this size.",
)
@click.pass_context
@_clean_errors
def prove_command(
    ctx: click.Context, index: int | None, size: int | None, first: int | None
) -> None:
    """Print an RFC 9162 inclusion proof (--index) or consistency proof (--from) as JSON.

    The members are RFC 9162's (leaf_index, tree_size, inclusion_path; tree_size_1/2,
    root_hash_1/2, consistency_path), the same as the auditor API's, plus the logged entry.
    Any RFC 9162 / Certificate Transparency verifier can check the output against the
    signed checkpoint printed with it; an inclusion proof to a checkpoint also comes as
    C2SP tlog-proof text (tlog_proof).
    """
    if (index is None) == (first is None):
        raise click.UsageError("give --index for an inclusion proof or --from for consistency")
    with _open_log(ctx) as log:
        at = _latest_size(log) if size is None else size
        if at > log.size:
            raise click.ClickException(f"the log has {log.size} entries, not {at}")
        if index is not None:
            if index >= at:
                raise click.ClickException(f"entry {index} is not in the tree of size {at}")
            entry = log.entry(index)
            document = inclusion_document(
                index=index,
                size=at,
                leaf=entry.leaf_hash,
                root_hash=log.root(at),
                path=log.inclusion_proof(index, at),
                checkpoint=checkpoint_for(log.checkpoints, at),
                entry=entry.data,
            )
        else:
            assert first is not None
            if first > at:
                raise click.ClickException(f"--from {first} is after --size {at}")
            document = consistency_document(
                size_1=first,
                size_2=at,
                root_hash_1=log.root(first),
                root_hash_2=log.root(at),
                path=log.consistency_proof(first, at),
                checkpoint_1=checkpoint_for(log.checkpoints, first),
                checkpoint_2=checkpoint_for(log.checkpoints, at),
            )
    click.echo(json.dumps(document, indent=2))


@audit.command("export")
@_subject_options
@click.option("--since", type=_WHEN, help="From this date or time (UTC unless a zone is given).")
@click.option("--until", type=_WHEN, help="Before this date or time.")
@click.option("--no-refusals", is_flag=True, help="Leave out recipients that were refused.")
@click.option(
    "--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the report to this file (created 0600) instead of stdout.",
)
@click.pass_context
@_clean_errors
def export_command(
    ctx: click.Context,
    subjects: tuple[str, ...],
    since: datetime | None,
    until: datetime | None,
    no_refusals: bool,
    fmt: str,
    output: Path | None,
) -> None:
    """A disclosure report about one person, for a subject access request (CSV or JSON).

    Every disclosure (and refusal) about the person: when, from and to whom, for what
    purpose, on what lawful basis and consent, which field groups, whether it was delivered
    and acknowledged, and its leaf index for an inclusion proof ('cairn audit prove').
    """
    if not subjects:
        raise click.UsageError("say who the report is about: --nhs-number, or names and --dob")
    with _open_log(ctx) as log:
        rows = disclosure_report(
            log,
            subjects,
            since=_moment(since),
            until=_moment(until),
            include_refusals=not no_refusals,
        )
        checkpoint = log.latest_checkpoint()
    text = report_csv(rows) if fmt == "csv" else report_json(rows, checkpoint=checkpoint)
    _write(output, text)
    click.echo(f"{len(rows)} disclosures", err=True)


@audit.command("reindex")
@click.pass_context
@_clean_errors
def reindex_command(ctx: click.Context) -> None:
    """Rebuild the query index from the entries file (stop the auditor first)."""
    folder = _directory(ctx)
    origin: str = ctx.obj["audit_origin"]
    with AuditLog.open(folder, origin=origin) as log, _progress("indexing") as progress:
        count = log.rebuild_index(progress)
    click.echo(f"indexed {count} entries")


@audit.group("officer")
def officer() -> None:
    """IG officers' own certificates: each search is recorded under the officer's name.

    Enrolled like an agency: the officer makes their key and a request on their own machine
    ('request'); the administrator issues the certificate from the federation CA ('enrol'),
    never seeing the key. The auditor admits it to the IG view (CN ig-officer.<id>).
    """


@officer.command("request")
@click.argument("officer_id")
@click.option(
    "--out",
    "folder",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Where to write ig-officer.<id>.key (0600, encrypted) and ig-officer.<id>.csr.",
)
@_clean_errors
def officer_request(officer_id: str, folder: Path) -> None:
    """Make OFFICER_ID's TLS key (encrypted with CAIRN_OFFICER_PASSPHRASE, or one asked for)
    and a certificate signing request for the administrator."""
    import os

    from cryptography.hazmat.primitives.serialization import Encoding

    from keys.officers import officer_common_name, officer_csr
    from keys.pki import new_tls_key
    from keys.store import FileStore, check_new_passphrase, encrypt_private_key

    try:
        name = officer_common_name(officer_id)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    given = os.environ.get("CAIRN_OFFICER_PASSPHRASE")
    if given is None:
        given = click.prompt(
            "Passphrase for your new key", hide_input=True, confirmation_prompt=True, err=True
        )
    passphrase = given.encode("utf-8")
    check_new_passphrase(passphrase)
    store = FileStore(folder.resolve())
    if store.exists(f"{name}.key"):
        raise click.ClickException(f"{folder / (name + '.key')} exists; it is never overwritten")
    key = new_tls_key()
    store.write(f"{name}.key", encrypt_private_key(key, passphrase), private=True)
    store.write(
        f"{name}.csr", officer_csr(key, officer_id).public_bytes(Encoding.PEM), private=False
    )
    click.echo(f"key: {folder / (name + '.key')}")
    click.echo(f"request: {folder / (name + '.csr')} (give it to the federation administrator)")


@officer.command("enrol")
@click.argument("request", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the certificate [default: the request's name, .crt].",
)
@_clean_errors
def officer_enrol(request: Path, out: Path | None) -> None:
    """Issue the IG officer's certificate for REQUEST from the federation CA (administrator).

    Checks the request's own signature (the officer holds the key), that it is for a P-256 key
    and names only OU=ig-officer, CN=ig-officer.<id>; the CA's key needs its passphrase.
    """
    from cryptography.hazmat.primitives.serialization import Encoding

    from broker.federation import load_federation
    from broker.trust import custody_of
    from keys.custody import CA
    from keys.enrolment import load_ca
    from keys.federation import Lifetimes
    from keys.officers import MAX_CSR_BYTES, issue_officer_certificate
    from keys.pki import agency_of_certificate
    from keys.store import FileStore

    with request.open("rb") as fh:
        pem = fh.read(MAX_CSR_BYTES + 1)
    settings = _settings()
    custody = custody_of(settings)
    federation = load_federation(settings.federation_dir)
    ca = load_ca(custody.store(CA), custody.passphrase(CA))
    certificate = issue_officer_certificate(
        ca, pem, federation.name, now=datetime.now(UTC), validity=Lifetimes().certificate
    )
    target = (out or request.with_suffix(".crt")).resolve()
    FileStore(target.parent).write(
        target.name, certificate.public_bytes(Encoding.PEM), private=False
    )
    until = certificate.not_valid_after_utc.strftime("%Y-%m-%d")
    click.echo(f"{agency_of_certificate(certificate)} enrolled until {until}: {target}")
