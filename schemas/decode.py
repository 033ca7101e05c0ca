"""Turning untrusted bytes into validated models, with errors an integrator can act on.

Nesting is bounded before any parser sees the bytes: a recursive parser (Python's ``json``,
or pydantic's, which stops at its own depth of 200) would spend its stack on a body of
``[[[[...`` long before the model could refuse it, so ``json_depth`` measures the depth with
one linear scan and no recursion, and ``decode`` refuses anything deeper than ``max_depth``
with the same typed ``SchemaError`` as any other bad field. No Cairn message nests deeper
than a few levels, so the default bound is generous.
"""

from __future__ import annotations

import re
from itertools import accumulate
from typing import Final, TypeVar

from pydantic import BaseModel, ValidationError

from schemas.errors import FieldProblem, SchemaError
from schemas.fields import INCONSISTENT

__all__ = ["MAX_JSON_DEPTH", "decode", "depth_problem", "field_problems", "json_depth"]

M = TypeVar("M", bound=BaseModel)

#: Arrays and objects a message may nest (a referral uses five); ``Settings.max_json_depth``.
MAX_JSON_DEPTH: Final = 16

# pydantic prefixes the messages of ValueError / AssertionError raised in validators; the
# integrator needs only the sentence after it.
_PREFIXES = ("Value error, ", "Assertion failed, ")

# A JSON string, escapes included (the unrolled form: linear, no backtracking).
_STRING: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS: Final = bytes(b for b in range(256) if b not in b"[]{}")
_STEP: Final = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def json_depth(data: bytes) -> int:
    """How deeply arrays and objects nest in the JSON text ``data``, found without recursion.

    Brackets inside strings do not count. On text that is not JSON the answer is only an
    estimate, which is all a bound needs: such text is refused either way.
    """
    brackets = _STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def depth_problem(data: bytes, max_depth: int) -> FieldProblem | None:
    """The problem with ``data`` if it nests deeper than ``max_depth``, else None."""
    if json_depth(data) <= max_depth:
        return None
    return FieldProblem(
        field="(body)", problem=f"arrays and objects nest deeper than {max_depth} levels"
    )


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


def decode(model: type[M], data: bytes, *, max_depth: int = MAX_JSON_DEPTH) -> M:
    """Parse JSON ``data`` as ``model``; raise SchemaError naming every bad field."""
    noun = model.__name__.lower()
    too_deep = depth_problem(data, max_depth)
    if too_deep is not None:
        raise SchemaError(f"the {noun} is not valid: {too_deep.problem}", (too_deep,))
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        problems = field_problems(exc)
        first = problems[0].field if problems else "(body)"
        raise SchemaError(
            f"the {noun} is not valid: {len(problems)} problem(s), "
            f"first at '{first}'; fix the named fields and submit again",
            problems,
        ) from None
