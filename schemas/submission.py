"""What a sender may submit: a referral or an Operation Encompass notification.

The two travel to the same broker, so an ingest endpoint that takes both decodes the body as a
``Submission``. The kind is told by the body's shape (a notification has ``content``, a referral
has ``victim``), so neither message needs a field that exists only to say what it is.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Discriminator, Tag, TypeAdapter, ValidationError

from schemas.decode import field_problems
from schemas.encompass import EncompassNotification
from schemas.errors import FieldProblem, SchemaError
from schemas.referral import Referral

__all__ = ["Submission", "decode_submission"]


def _kind(value: Any) -> str:
    if isinstance(value, EncompassNotification):
        return "encompass"
    if isinstance(value, dict) and "content" in value and "victim" not in value:
        return "encompass"
    return "referral"


Submission = Annotated[
    Annotated[Referral, Tag("referral")] | Annotated[EncompassNotification, Tag("encompass")],
    Discriminator(_kind),
]

_ADAPTER: TypeAdapter[Referral | EncompassNotification] = TypeAdapter(Submission)


def _untagged(problem: FieldProblem) -> FieldProblem:
    """Drop the union tag pydantic puts first in a location, so paths read as in the model."""
    tag, _, rest = problem.field.partition(".")
    if tag in {"referral", "encompass"} and rest:
        return FieldProblem(field=rest, problem=problem.problem)
    return problem


def decode_submission(data: bytes) -> Referral | EncompassNotification:
    """Parse JSON ``data`` as a referral or a notification; raise SchemaError naming each field."""
    try:
        return _ADAPTER.validate_json(data)
    except ValidationError as exc:
        problems = tuple(_untagged(p) for p in field_problems(exc))
        first = problems[0].field if problems else "(body)"
        raise SchemaError(
            f"the submission is not valid: {len(problems)} problem(s), first at '{first}'; "
            "fix the named fields and submit again",
            problems,
        ) from None
