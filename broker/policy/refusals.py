"""A message refused as a whole, in codes and words: the same for the CLI and the 422 body.

Pure. ``refusal`` turns an input error met while validating or deciding a message
(``PolicyRefusal``, ``UnknownAgency``, ``SchemaError``) into a ``Refusal``: its rule codes, their
sentences and citations (``broker.policy.rules``), the field problems, and the missing items (the
field paths a sender must add). ``cairn policy explain --json`` prints it as ``refused``;
``broker.web.problems`` puts the same codes, sentences and missing items in the problem body.
Errors that carry no rule codes (a message that does not decode) get codes from the fields
their problems name. Nothing here holds personal data: codes, field paths and fixed sentences.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from broker.policy.admission import OVERRIDE_ITEMS
from broker.policy.rules import RuleText, explain_all
from schemas.errors import FieldProblem, InputError

__all__ = ["OVERRIDE_RECORD_ITEMS", "Refusal", "refusal"]

#: What a complete override record holds, as paths in the referral
#: (docs/domain.md#consent-and-overrides).
OVERRIDE_RECORD_ITEMS: Final = tuple(f"consent.override.{item}" for item in OVERRIDE_ITEMS)
_BASIS_FIELDS: Final = frozenset(
    f"consent.{f}" for f in ("art6_basis", "art9_condition", "dpa_condition", "statutory_gateway")
)
_REQUIRED = "Field required"


def _problem_code(problem: FieldProblem) -> str:
    """The rule code of one schema problem, by the field it is about."""
    path = problem.field
    if path == "consent.override":
        return "consent.override.missing"
    if path.startswith("consent.override."):
        return "consent.override.incomplete"
    if path in _BASIS_FIELDS:
        return "lawful_basis.invalid"
    if path.startswith("consent.") or path == "consent":
        return "consent.invalid"
    return "schema.invalid"


def _missing(problems: Iterable[FieldProblem]) -> tuple[str, ...]:
    """The field paths a sender must add: required fields, or a whole missing override."""
    out: list[str] = []
    for p in problems:
        if p.field == "consent.override" and p.problem != _REQUIRED:
            out.extend(OVERRIDE_RECORD_ITEMS)
        elif p.problem == _REQUIRED:
            out.append(p.field)
    return tuple(dict.fromkeys(out))


@dataclass(frozen=True)
class Refusal:
    """A message refused as a whole, as codes, sentences, field problems and missing items."""

    message: str
    reasons: tuple[str, ...]
    problems: tuple[FieldProblem, ...]
    missing: tuple[str, ...]

    @property
    def explanation(self) -> tuple[RuleText, ...]:
        return explain_all(self.reasons)

    def as_record(self) -> dict[str, Any]:
        """The refusal as JSON-ready data: what ``policy explain --json`` prints as ``refused``."""
        return {
            "message": self.message,
            "reasons": list(self.reasons),
            "problems": [{"field": p.field, "problem": p.problem} for p in self.problems],
            "missing": list(self.missing),
            "explanation": [t.as_record() for t in self.explanation],
        }


def refusal(exc: InputError) -> Refusal:
    """The structured refusal for an input error met while validating or deciding a message.

    The error's own rule codes when it carries them (``PolicyRefusal``, and the membership and
    fan-out errors of ``decide``); otherwise codes read from the fields its problems name.
    """
    problems = tuple(exc.problems)
    reasons = (
        tuple(exc.reasons)
        or tuple(dict.fromkeys(_problem_code(p) for p in problems))
        or ("schema.invalid",)
    )
    missing = tuple(getattr(exc, "missing", ())) or _missing(problems)
    return Refusal(str(exc), reasons, problems, missing)
