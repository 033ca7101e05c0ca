"""FHIR's JSON types, held strictly: what ``fhir.resources`` coerces, Cairn refuses.

FHIR JSON writes a boolean as ``true`` / ``false``, an integer as a JSON number and every date
and time as a string. ``fhir.resources`` (on pydantic, in lax mode even when asked for strict)
reads ``"yes"`` and ``1`` as true, ``"16"`` as the integer 16 and a Unix time as a date, so a
bundle that is not valid FHIR would map to a referral with facts nobody recorded: a DASH score
typed as text, a contact route marked safe by a ``1``. ``wrong_types`` walks the validated
model beside the JSON it came from and names, by FHIRPath, every element whose JSON type is
not its FHIR type.

It also refuses every date and date-time outside ``adapters.importing.DATE_WINDOW`` wherever it
is in the bundle (``birthDate``, ``authoredOn``, the incident's ``occurredAt``, a due date),
on the date as written, before any arithmetic: a referral authored in 9999, or
9999-12-31T23:59:59-01:00 (which has no UTC in Python), is a data error of the sending system.
The Cairn referral model enforces its own window on the referral this bundle maps to; this one
names the FHIR element.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

from pydantic import BaseModel

from adapters.importing import DATE_WINDOW, in_window
from schemas.errors import FieldProblem

__all__ = ["wrong_types"]


def wrong_types(model: BaseModel, raw: Mapping[str, Any], path: str) -> list[FieldProblem]:
    """Every element of ``model`` whose JSON in ``raw`` is not of its FHIR type, or out of window.

    ``path`` is the FHIRPath of ``model`` (``Bundle``). Recursion follows the model, whose
    nesting the import bounded before parsing.
    """
    problems: list[FieldProblem] = []
    _model(model, raw, path, problems)
    return problems


def _model(model: BaseModel, raw: Mapping[str, Any], path: str, out: list[FieldProblem]) -> None:
    for name, field in type(model).model_fields.items():
        key = field.alias or name
        if key in raw:
            _value(getattr(model, name), raw[key], f"{path}.{key}", out)


def _value(value: Any, given: Any, path: str, out: list[FieldProblem]) -> None:
    if isinstance(value, BaseModel):
        if isinstance(given, Mapping):
            _model(value, given, path, out)
    elif isinstance(value, list):
        if isinstance(given, list):
            for i, (item, raw_item) in enumerate(zip(value, given, strict=False)):
                _value(item, raw_item, f"{path}[{i}]", out)
    elif isinstance(value, bool):
        if not isinstance(given, bool):
            out.append(FieldProblem(path, "must be a JSON boolean, true or false"))
    elif isinstance(value, int):
        if isinstance(given, bool) or not isinstance(given, int):
            out.append(FieldProblem(path, "must be a JSON integer, not text or a decimal"))
    elif isinstance(value, float | Decimal):
        if isinstance(given, bool) or not isinstance(given, int | float):
            out.append(FieldProblem(path, "must be a JSON number, not text"))
    elif isinstance(value, date | datetime | time):
        if not isinstance(given, str):
            out.append(FieldProblem(path, "must be a date or time written as text (ISO 8601)"))
        elif not isinstance(value, time) and not in_window(value):
            out.append(FieldProblem(path, f"a date outside {DATE_WINDOW}"))
