"""The building blocks every Cairn message is made of: the frozen base model and checked values.

Agency ids, bounded text, NHS numbers and postcodes are declared once here so every message
checks them the same way.

So are the wire types whose lax forms pydantic would otherwise coerce: a ``Flag`` is a JSON
boolean and nothing else (never ``"yes"``, ``1`` or ``"true"``), an ``Integer`` a JSON integer
(never ``"16"``, ``16.0`` or ``true``), a ``Day`` a ``YYYY-MM-DD`` string, a ``Moment`` an
RFC 3339 date-time with its offset (never a number, a bare date or a time without seconds) and
a ``MessageId`` a UUID in its 8-4-4-4-12 form (never without hyphens, in braces or as a URN).
Dates and times lie in the years ``MIN_YEAR`` to ``MAX_YEAR``: wide enough for any living
person's birth and any court order's expiry, narrow enough that adding a day or a time zone
can never leave the calendar (year 9999 plus an offset is an ``OverflowError``, not a refusal).
The exported JSON Schema states the same bounds as a ``pattern`` beside the ``format``, so an
adapter that validates against the schema and the broker refuse the same values. Each form
holds in both pydantic modes: what ``model_validate_json`` refuses, ``model_validate`` on the
parsed dict refuses too. ``inconsistent`` is how a model names the exact field that disagrees
with another one, so an integrator reads ``risk.level`` rather than just ``risk``.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Annotated, Final, Literal, TypeVar
from uuid import UUID

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
)
from pydantic_core import PydanticCustomError

__all__ = [
    "DATETIME_PATTERN",
    "DATE_PATTERN",
    "INCONSISTENT",
    "MAX_YEAR",
    "MIN_YEAR",
    "UUID_PATTERN",
    "AgencyId",
    "Day",
    "Flag",
    "Frozen",
    "Integer",
    "LongText",
    "MessageId",
    "Moment",
    "NhsNumber",
    "Postcode",
    "ShortText",
    "Yes",
    "inconsistent",
]

_AGENCY_ID = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
# UK postcode shape (outward code, optional space, inward code); the Royal Mail's
# fictional ZZ99 postcodes that NHS systems use for "no fixed abode" fit it too.
_POSTCODE = re.compile(r"^[A-Za-z]{1,2}[0-9][A-Za-z0-9]? ?[0-9][A-Za-z]{2}$")
_NHS_NUMBER = r"^[0-9]{3} ?[0-9]{3} ?[0-9]{4}$"

#: The plausible years of any date or time in a message (see the module docstring).
MIN_YEAR: Final = 1900
MAX_YEAR: Final = 2099
_YEAR = "(19|20)[0-9]{2}"
_DAY = rf"{_YEAR}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
_TIME = r"([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?"
_OFFSET = r"(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])"
#: A date as the schema and the model accept it: ``YYYY-MM-DD`` within the plausible years.
DATE_PATTERN: Final = f"^{_DAY}$"
#: A date-time as both accept it: RFC 3339 with seconds and an offset, in the plausible years.
DATETIME_PATTERN: Final = f"^{_DAY}T{_TIME}{_OFFSET}$"
#: A UUID as both accept it: 8-4-4-4-12 hexadecimal digits (RFC 9562 §4).
UUID_PATTERN: Final = "^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$"
_UUID_FORM = re.compile(UUID_PATTERN.removeprefix("^").removesuffix("$"))
_DATE_FORM = re.compile(f"{_DAY}")
_DATETIME_FORM = re.compile(f"{_DAY}T{_TIME}{_OFFSET}")
_DATE_PROBLEM = f"Input should be a date from {MIN_YEAR} to {MAX_YEAR} written YYYY-MM-DD"
_DATETIME_PROBLEM = (
    f"Input should be a date and time from {MIN_YEAR} to {MAX_YEAR} with its UTC offset, "
    "written YYYY-MM-DDThh:mm:ss (optionally .fraction) then Z or +hh:mm"
)

#: The pydantic error type of a cross-field check; its context names the offending field.
INCONSISTENT = "cairn_inconsistent"


class Frozen(BaseModel):
    """Base of every message model: immutable, unknown fields refused, strings trimmed."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


def inconsistent(field: str, message: str) -> PydanticCustomError:
    """A cross-field error about ``field`` (dotted, relative to the model raising it).

    Raise it from a model validator; ``schemas.decode.field_problems`` appends ``field`` to the
    error's location so the integrator sees the path of the field to change.
    """
    return PydanticCustomError(INCONSISTENT, message, {"field": field})


def _nhs_number_checksum(value: str) -> str:
    """Check an NHS number's modulus-11 check digit (NHS Data Dictionary); return 10 digits."""
    digits = value.replace(" ", "")
    if not (len(digits) == 10 and digits.isdigit()):
        raise ValueError("an NHS number is 10 digits")
    total = sum(int(d) * w for d, w in zip(digits[:9], range(10, 1, -1), strict=True))
    check = 11 - total % 11
    check = 0 if check == 11 else check
    if check == 10 or check != int(digits[9]):
        raise ValueError("the NHS number's check digit is wrong")
    return digits


def _postcode(value: str) -> str:
    if not _POSTCODE.match(value):
        raise ValueError("not a UK postcode (for example 'ZZ99 3WZ')")
    return value.upper()


def _day_form(value: object) -> object:
    # A datetime is a date subclass: refuse it here, or pydantic would truncate it to a day.
    if isinstance(value, datetime) or not isinstance(value, date | str):
        raise PydanticCustomError("cairn_date_form", _DATE_PROBLEM)
    if isinstance(value, str) and not _DATE_FORM.fullmatch(value):
        raise PydanticCustomError("cairn_date_form", _DATE_PROBLEM)
    return value


def _datetime_form(value: object) -> object:
    if not isinstance(value, datetime | str):
        raise PydanticCustomError("cairn_datetime_form", _DATETIME_PROBLEM)
    if isinstance(value, str) and not _DATETIME_FORM.fullmatch(value):
        raise PydanticCustomError("cairn_datetime_form", _DATETIME_PROBLEM)
    return value


def _uuid_form(value: object) -> object:
    if isinstance(value, UUID) or (isinstance(value, str) and _UUID_FORM.fullmatch(value)):
        return value
    raise PydanticCustomError(
        "cairn_uuid_form", "Input should be a UUID written as 8-4-4-4-12 hexadecimal digits"
    )


def _exactly_true(value: object) -> object:
    # pydantic compares a literal by equality, and 1 == 1.0 == True.
    if value is not True:
        raise PydanticCustomError("literal_error", "Input should be true")
    return value


D = TypeVar("D", bound=date)


def _in_years(problem: str) -> AfterValidator:
    # Strings were checked by the pattern; this catches the date objects Python callers pass.
    def check(value: D) -> D:
        if not MIN_YEAR <= value.year <= MAX_YEAR:
            raise PydanticCustomError("cairn_year_window", problem)
        return value

    return AfterValidator(check)


#: A JSON boolean: ``true`` or ``false``, never a string or a number.
Flag = Annotated[bool, Strict()]
#: The constant ``true`` (a statutory flag), refusing ``1`` and ``1.0`` as ``Flag`` does.
Yes = Annotated[Literal[True], BeforeValidator(_exactly_true)]
#: A JSON integer: never a string, a float with a zero fraction, or a boolean. Bound it per field.
Integer = Annotated[int, Strict()]
#: A message's id: a UUID written 8-4-4-4-12, so that every reader keys it the same way.
MessageId = Annotated[
    UUID, BeforeValidator(_uuid_form), Field(json_schema_extra={"pattern": UUID_PATTERN})
]
#: A calendar date, ``YYYY-MM-DD``, in the plausible years.
Day = Annotated[
    date,
    BeforeValidator(_day_form),
    _in_years(_DATE_PROBLEM),
    Field(json_schema_extra={"pattern": DATE_PATTERN}),
]
#: A moment with its UTC offset, RFC 3339 (``2026-11-26T09:15:00Z``), in the plausible years.
Moment = Annotated[
    AwareDatetime,
    BeforeValidator(_datetime_form),
    _in_years(_DATETIME_PROBLEM),
    Field(json_schema_extra={"pattern": DATETIME_PATTERN}),
]

AgencyId = Annotated[
    str,
    StringConstraints(pattern=_AGENCY_ID.pattern),
    Field(description="Federation agency id: lower-case letters, digits and hyphens"),
]
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=200)]
LongText = Annotated[str, StringConstraints(min_length=1, max_length=4000)]
NhsNumber = Annotated[
    str,
    AfterValidator(_nhs_number_checksum),
    Field(
        description="NHS number: 10 digits with a valid modulus-11 check digit",
        json_schema_extra={"pattern": _NHS_NUMBER},
    ),
]
Postcode = Annotated[
    str,
    StringConstraints(min_length=5, max_length=8),
    AfterValidator(_postcode),
    Field(json_schema_extra={"pattern": _POSTCODE.pattern}),
]
