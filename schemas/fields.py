"""The building blocks every Cairn message is made of: the frozen base model and checked values.

Agency ids, bounded text, NHS numbers and postcodes are declared once here so every message
checks them the same way. ``inconsistent`` is how a model names the exact field that disagrees
with another one, so an integrator reads ``risk.level`` rather than just ``risk``.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints
from pydantic_core import PydanticCustomError

__all__ = [
    "INCONSISTENT",
    "AgencyId",
    "Frozen",
    "LongText",
    "NhsNumber",
    "Postcode",
    "ShortText",
    "inconsistent",
]

_AGENCY_ID = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
# UK postcode shape (outward code, optional space, inward code); the Royal Mail's
# fictional ZZ99 postcodes that NHS systems use for "no fixed abode" fit it too.
_POSTCODE = re.compile(r"^[A-Za-z]{1,2}[0-9][A-Za-z0-9]? ?[0-9][A-Za-z]{2}$")
_NHS_NUMBER = r"^[0-9]{3} ?[0-9]{3} ?[0-9]{4}$"

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
