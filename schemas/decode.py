"""Turning untrusted bytes into validated models, with errors an integrator can act on."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError

from schemas.errors import FieldProblem, SchemaError
from schemas.fields import INCONSISTENT

__all__ = ["decode", "field_problems"]

M = TypeVar("M", bound=BaseModel)

# pydantic prefixes the messages of ValueError / AssertionError raised in validators; the
# integrator needs only the sentence after it.
_PREFIXES = ("Value error, ", "Assertion failed, ")


def field_problems(exc: ValidationError) -> tuple[FieldProblem, ...]:
    """Name each bad field by its dotted path and say what is wrong, never echoing the value."""
    problems = []
    for err in exc.errors(include_input=False, include_url=False):
        loc = [str(p) for p in err["loc"]]
        ctx = err.get("ctx") or {}
        if err["type"] == INCONSISTENT and ctx.get("field"):
            loc.extend(str(ctx["field"]).split("."))
        message = err["msg"]
        for prefix in _PREFIXES:
            message = message.removeprefix(prefix)
        problems.append(FieldProblem(field=".".join(loc) or "(body)", problem=message))
    return tuple(problems)


def decode(model: type[M], data: bytes) -> M:
    """Parse JSON ``data`` as ``model``; raise SchemaError naming every bad field."""
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        problems = field_problems(exc)
        first = problems[0].field if problems else "(body)"
        raise SchemaError(
            f"the {model.__name__.lower()} is not valid: {len(problems)} problem(s), "
            f"first at '{first}'; fix the named fields and submit again",
            problems,
        ) from None
