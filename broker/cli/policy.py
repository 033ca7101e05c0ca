"""The ``policy`` command group: explain a referral's decisions, and lint the sharing agreements.

``cairn policy explain REFERRAL`` runs the same engine the broker runs, over the federation
folder's agencies, agreements and school calendar, and prints per recipient the decision, the
groups and what each subset holds, the lawful and consent basis, the deadline with its reason,
and every rule that fired as a sentence with its citation (``broker.policy.rules``), so an IG
officer can see why. A message refused as a whole is printed the same way on stdout, with its
codes and missing items (``broker.policy.refusals``), and exits 1. It cannot see the key
registry, so it assumes every recipient has a usable encryption key.
``cairn policy check`` lints the agreements and the calendar and exits non-zero on problems;
term dates that run out within ``calendar_warn_days`` days, or have, are a warning only.
Nothing printed holds personal data: codes, agency and agreement ids only.
"""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import click

from broker.cli.common import settings_or_exit as _settings
from broker.federation import load_federation
from broker.policy.agreements import AGREEMENTS_DIR, Agreement, load_agreements
from broker.policy.calendar import CALENDAR_FILE, SchoolCalendar, explain_deadline, load_calendar
from broker.policy.decide import Decision, decide, routing
from broker.policy.lint import lint_directory
from broker.policy.refusals import Refusal, refusal
from broker.policy.rules import RuleText, explain_all
from broker.policy.subsets import explain_share
from schemas.encompass import EncompassNotification
from schemas.errors import CairnError, InputError, SchemaError
from schemas.federation import AgencyRole, Federation
from schemas.referral import Referral
from schemas.submission import decode_submission

__all__ = ["policy"]

_WIDTH: Final = 100  # columns the sentences are wrapped to


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
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the decisions as JSON: per recipient the codes, and 'explanation' (each code "
    "with its sentence and citation), 'shares' (each group or subset spelt out) and "
    "'deadline_reason'; a refusal as 'refused' with its codes, sentences and missing items.",
)
def explain(referral: Path, now_text: str | None, as_json: bool) -> None:
    """Explain, per recipient, what REFERRAL (a referral or Encompass notice, JSON) would share.

    For each recipient: allowed or refused, under which agreement, the groups and what each
    subset holds, the lawful and consent basis, the retention, the Operation Encompass
    deadline with its reason, and every rule that fired, each in a sentence with the statute,
    schedule paragraph or agreement clause it rests on.

    A message refused as a whole (not valid, an unknown recipient, too many recipients, no
    lawful basis, consent not obtained without a complete override record) is a decision too:
    it is printed on stdout with its rule codes, sentences, citations and the missing items,
    and the exit code is 1.
    """
    settings = _settings()
    now = _parse_now(now_text)
    try:
        federation = load_federation(settings.federation_dir)
        agreements = load_agreements(settings.federation_dir / AGREEMENTS_DIR)
        calendar = load_calendar(settings.federation_dir / CALENDAR_FILE)
    except CairnError as exc:  # the federation folder, not the message: the operator's to fix
        raise _fail(exc) from None
    head: dict[str, Any] = {
        "message_id": None,
        "sender": None,
        "purpose": None,
        "decided_at": now.isoformat(),
    }
    try:
        message = decode_submission(referral.read_bytes())
        route = routing(message)
        head.update(
            message_id=str(route.message_id), sender=route.sender, purpose=route.purpose.value
        )
        decisions = decide(
            message,
            federation,
            agreements=agreements,
            now=now,
            max_recipients=settings.max_recipients,
            calendar=calendar,
        )
    except InputError as exc:  # not valid, membership, fan-out, or no basis for the whole
        _print_refusal(head, refusal(exc), as_json)
        sys.exit(1)
    by_id = {a.id: a for a in agreements}
    explained = [_Explained(d, message, federation, by_id, calendar) for d in decisions]
    if as_json:
        records = [e.as_record() for e in explained]
        click.echo(json.dumps({**head, "refused": None, "decisions": records}, indent=2))
        return
    click.echo(
        f"{route.purpose.value} {route.message_id} from {route.sender}, decided at "
        f"{now.isoformat()}: {sum(d.allowed for d in decisions)} of {len(decisions)} allowed"
    )
    for e in explained:
        click.echo(e.describe())


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


def _wrapped(text: str, indent: int) -> list[str]:
    return textwrap.wrap(text, _WIDTH, initial_indent=" " * indent, subsequent_indent=" " * indent)


def _in_words(rules: tuple[RuleText, ...], indent: int) -> list[str]:
    """Each code, then its sentence and citation below it."""
    lines = []
    for r in rules:
        lines.append(" " * indent + r.code)
        lines.extend(_wrapped(r.text, indent + 2))
        lines.extend(_wrapped(f"cites: {r.citation}", indent + 2))
    return lines


def _print_refusal(head: dict[str, Any], refused: Refusal, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({**head, "refused": refused.as_record(), "decisions": []}, indent=2))
        return
    what = (
        f"{head['purpose']} {head['message_id']} from {head['sender']}"
        if head["purpose"] is not None
        else "the message"
    )
    click.echo(f"{what}: REFUSED as a whole, nothing is sent to anyone")
    click.echo(f"  why:      {refused.message}")
    click.echo(f"  reasons:  {' '.join(refused.reasons)}")
    for p in refused.problems:
        click.echo(f"  fix:      {p.field}: {p.problem}")
    if refused.missing:
        click.echo(f"  missing:  {' '.join(refused.missing)}")
    click.echo("  in words:")
    click.echo("\n".join(_in_words(refused.explanation, 4)))


class _Explained:
    """One recipient's decision with its words: sentences, subsets, and the deadline's reason."""

    def __init__(
        self,
        decision: Decision,
        message: Referral | EncompassNotification,
        federation: Federation,
        agreements: Mapping[str, Agreement],
        calendar: SchoolCalendar,
    ) -> None:
        self.decision = decision
        agency = federation.get(decision.recipient)
        self.role = agency.role if agency is not None else None
        agreement = agreements.get(decision.agreement) if decision.agreement else None
        self.shares = tuple(explain_share(g, agreement) for g in decision.groups)
        self.reasons = explain_all(decision.reasons)
        self.rules = explain_all(decision.rules)
        self.deadline_reason = None
        if decision.deadline is not None:
            occurred = (
                message.content.occurred_at
                if isinstance(message, EncompassNotification)
                else message.incident.occurred_at
            )
            school = decision.recipient if self.role is AgencyRole.SCHOOL else None
            self.deadline_reason = explain_deadline(occurred, calendar, school=school).text

    def as_record(self) -> dict[str, Any]:
        """The engine's record, every key and code kept, with the words added."""
        return {
            **self.decision.as_record(),
            "explanation": [
                r.as_record() for r in explain_all((*self.decision.reasons, *self.decision.rules))
            ],
            "shares": [s.as_record() for s in self.shares],
            "deadline_reason": self.deadline_reason,
        }

    def describe(self) -> str:
        d = self.decision
        role = self.role.value if self.role is not None else "?"
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
                if self.deadline_reason is not None:
                    lines.extend(_wrapped(f"because: {self.deadline_reason}", 17))
            lines.append(f"  reasons:       {' '.join(d.reasons)}")
            lines.extend(self._subsets())
        if not d.allowed:  # an allowed one's reasons are its agreement and consent, above
            lines.append("  why:")
            for r in self.reasons:
                lines.extend(_wrapped(f"{r.text} [{r.citation}]", 4))
        lines.append("  rules:")
        lines.extend(_in_words(self.rules, 4))
        return "\n".join(lines)

    def _subsets(self) -> list[str]:
        """What each subset holds; whole groups need no spelling out."""
        lines: list[str] = []
        for s in self.shares:
            if s.subset is None:
                continue
            if not lines:
                lines.append("  subsets:")
            lines.append(f"    {s.label} ({s.group_name}):")
            lines.extend(_wrapped(f"fields: {', '.join(s.fields)}", 6))
            if s.scope_text:
                lines.extend(_wrapped(f"scope: {s.scope_text}", 6))
            if s.dash_topics:
                lines.extend(_wrapped(f"DASH answers on: {', '.join(s.dash_topics)}", 6))
            if s.note:
                lines.extend(_wrapped(s.note, 6))
        return lines


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
