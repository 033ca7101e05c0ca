"""The ``policy`` command group: explain a referral's decisions, and lint the sharing agreements.

``cairn policy explain REFERRAL`` runs the same engine the broker runs, over the federation
folder's agencies, agreements and school calendar, and prints per recipient the decision, the
groups, the lawful and consent basis and every rule that fired, so an IG officer can see why.
It cannot see the key registry, so it assumes every recipient has a usable encryption key.
``cairn policy check`` lints the agreements and the calendar and exits non-zero on problems;
term dates that run out within ``calendar_warn_days`` days, or have, are a warning only.
Nothing printed holds personal data: codes, agency and agreement ids only.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from broker.cli.common import settings_or_exit as _settings
from broker.federation import load_federation
from broker.policy.agreements import AGREEMENTS_DIR, lint_directory, load_agreements
from broker.policy.calendar import CALENDAR_FILE, load_calendar
from broker.policy.decide import Decision, PolicyRefusal, decide, routing
from schemas.errors import CairnError, SchemaError
from schemas.federation import Federation
from schemas.submission import decode_submission

__all__ = ["policy"]


def _fail(exc: CairnError) -> click.ClickException:
    lines = [str(exc), *(f"  {p.field}: {p.problem}" for p in getattr(exc, "problems", ()))]
    return click.ClickException("\n".join(lines))


@click.group()
def policy() -> None:
    """Sharing policy: why each recipient gets what it gets, and whether the agreements hold."""


@policy.command()
@click.argument("referral", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--now",
    "now_text",
    help="Decide as at this ISO 8601 time (with its offset) [default: the current time].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the decisions as JSON.")
def explain(referral: Path, now_text: str | None, as_json: bool) -> None:
    """Explain, per recipient, what REFERRAL (a referral or Encompass notice, JSON) would share.

    Exits 1 when the referral would be refused as a whole (no lawful or consent basis).
    """
    settings = _settings()
    now = _parse_now(now_text)
    try:
        federation = load_federation(settings.federation_dir)
        agreements = load_agreements(settings.federation_dir / AGREEMENTS_DIR)
        calendar = load_calendar(settings.federation_dir / CALENDAR_FILE)
        message = decode_submission(referral.read_bytes())
    except CairnError as exc:
        raise _fail(exc) from None
    route = routing(message)
    head: dict[str, Any] = {
        "message_id": str(route.message_id),
        "sender": route.sender,
        "purpose": route.purpose.value,
        "decided_at": now.isoformat(),
    }
    try:
        decisions = decide(
            message,
            federation,
            agreements=agreements,
            now=now,
            max_recipients=settings.max_recipients,
            calendar=calendar,
        )
    except PolicyRefusal as exc:
        _print_refusal(head, exc, as_json)
        sys.exit(1)
    except CairnError as exc:  # membership or fan-out: the referral is not valid here
        raise _fail(exc) from None
    if as_json:
        records = [d.as_record() for d in decisions]
        click.echo(json.dumps({**head, "refused": None, "decisions": records}, indent=2))
        return
    click.echo(
        f"{route.purpose.value} {route.message_id} from {route.sender}, decided at "
        f"{now.isoformat()}: {sum(d.allowed for d in decisions)} of {len(decisions)} allowed"
    )
    for decision in decisions:
        click.echo(_describe(decision, federation))


def _parse_now(text: str | None) -> datetime:
    if text is None:
        return datetime.now(UTC)
    try:
        now = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter("not an ISO 8601 time", param_hint="--now") from None
    if now.tzinfo is None:
        raise click.BadParameter("give the offset, e.g. 2026-11-26T09:00+00:00", param_hint="--now")
    return now


def _print_refusal(head: dict[str, Any], exc: PolicyRefusal, as_json: bool) -> None:
    if as_json:
        refused = {
            "message": str(exc),
            "reasons": list(exc.reasons),
            "problems": [{"field": p.field, "problem": p.problem} for p in exc.problems],
        }
        click.echo(json.dumps({**head, "refused": refused, "decisions": []}, indent=2))
        return
    click.echo(
        f"{head['purpose']} {head['message_id']} from {head['sender']}: REFUSED as a whole, "
        "nothing is sent to anyone"
    )
    click.echo(f"  why:      {exc}")
    click.echo(f"  reasons:  {' '.join(exc.reasons)}")
    for p in exc.problems:
        click.echo(f"  fix:      {p.field}: {p.problem}")


def _describe(d: Decision, federation: Federation) -> str:
    agency = federation.get(d.recipient)
    role = agency.role.value if agency is not None else "?"
    if not d.allowed:
        lines = [f"\n{d.recipient} ({role}): REFUSED: nothing is sent"]
        lines.append(f"  reasons:       {' '.join(d.reasons)}")
    else:
        assert d.lawful_basis is not None  # an allowed decision names its basis
        assert d.consent_basis is not None
        lines = [f"\n{d.recipient} ({role}): ALLOWED under {d.agreement}"]
        lines.append(f"  groups:        {' '.join(g.label for g in d.groups)}")
        lines.append(f"  lawful basis:  {' + '.join(d.lawful_basis.codes)}")
        lines.append(f"  consent basis: {d.consent_basis.label}")
        if d.retention is not None:
            lines.append(f"  retention:     {d.retention.label}")
        if d.deadline is not None:
            lines.append(f"  deliver by:    {d.deadline.isoformat()}")
        lines.append(f"  reasons:       {' '.join(d.reasons)}")
    lines.append("  rules:")
    lines.extend(f"    {rule}" for rule in d.rules)
    return "\n".join(lines)


@policy.command()
@click.option(
    "--today",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    help="Judge how soon the term dates run out as at this date [default: today].",
)
def check(today: datetime | None) -> None:
    """Lint the sharing agreements and the school calendar; exit 1 if anything needs fixing.

    Term dates that end within calendar_warn_days (60) days, or have ended, are a warning,
    not a failure: past them deadlines follow the conservative rule (the next weekday that is
    not a bank holiday).
    """
    settings = _settings()
    folder = settings.federation_dir
    try:
        federation = load_federation(folder)
    except CairnError as exc:
        raise _fail(exc) from None
    problems = [str(p) for p in lint_directory(folder / AGREEMENTS_DIR, federation)]
    warnings = []
    try:
        calendar = load_calendar(folder / CALENDAR_FILE)
    except SchemaError as exc:
        problems.extend(f"{CALENDAR_FILE}: {p.field}: {p.problem}" for p in exc.problems)
        if not exc.problems:  # missing or not YAML: the message says which
            problems.append(f"{CALENDAR_FILE}: {exc}")
    else:
        day = today.date() if today is not None else datetime.now(calendar.zone).date()
        warning = calendar.horizon_warning(day, settings.calendar_warn_days)
        if warning is not None:
            warnings.append(f"warning: {CALENDAR_FILE}: {warning}")
    for line in [*problems, *warnings]:
        click.echo(line)
    if problems:
        raise click.ClickException(f"{len(problems)} problem(s) in {folder}")
    count = len(list((folder / AGREEMENTS_DIR).glob("*.yaml")))
    noted = f" ({len(warnings)} warning(s))" if warnings else ""
    click.echo(f"{count} agreement(s) and the school calendar in {folder}: no problems{noted}")
