"""The safeguarding referral: field groups a sender fills in and the broker shares per recipient.

Need-to-know works on field groups (DESIGN §3), so the referral is a set of named groups rather
than a flat record. This first version carries G0 (header), G1 (victim identity), G5 (incident)
and G6 (risk level); the remaining groups arrive with the full schema work.
"""

from __future__ import annotations

import re
from datetime import date
from enum import StrEnum
from typing import Annotated, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)

__all__ = [
    "SCHEMA_VERSION",
    "Address",
    "AgencyId",
    "Classification",
    "Header",
    "Incident",
    "Priority",
    "Purpose",
    "Referral",
    "Risk",
    "RiskLevel",
    "Victim",
]

SCHEMA_VERSION = "1.0"

_AGENCY_ID = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")


class Frozen(BaseModel):
    """Base of every message model: immutable, unknown fields refused, strings trimmed."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


AgencyId = Annotated[
    str,
    StringConstraints(pattern=_AGENCY_ID.pattern),
    Field(description="Federation agency id: lower-case letters, digits and hyphens"),
]
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=200)]
LongText = Annotated[str, StringConstraints(min_length=1, max_length=4000)]


def _nhs_number_checksum(value: str) -> str:
    """Check an NHS number's modulus-11 check digit (NHS Data Dictionary)."""
    digits = value.replace(" ", "")
    if not (len(digits) == 10 and digits.isdigit()):
        raise ValueError("an NHS number is 10 digits")
    total = sum(int(d) * w for d, w in zip(digits[:9], range(10, 1, -1), strict=True))
    check = 11 - total % 11
    check = 0 if check == 11 else check
    if check == 10 or check != int(digits[9]):
        raise ValueError("the NHS number's check digit is wrong")
    return digits


NhsNumber = Annotated[str, AfterValidator(_nhs_number_checksum)]


class Purpose(StrEnum):
    """Why a referral is made; sharing agreements are written per purpose."""

    MARAC = "MARAC"
    IDVA = "IDVA"
    ENCOMPASS = "ENCOMPASS"
    CHILD_SAFEGUARDING = "CHILD_SAFEGUARDING"
    HEALTH_SAFEGUARDING = "HEALTH_SAFEGUARDING"
    HOUSING = "HOUSING"
    PERPETRATOR_MANAGEMENT = "PERPETRATOR_MANAGEMENT"


class Priority(StrEnum):
    ROUTINE = "routine"
    URGENT = "urgent"
    IMMEDIATE = "immediate"


class Classification(StrEnum):
    OFFICIAL_SENSITIVE = "OFFICIAL-SENSITIVE"


class RiskLevel(StrEnum):
    """DASH risk level: standard (<10 ticks), medium (10-13), high (14+ or judgement)."""

    STANDARD = "standard"
    MEDIUM = "medium"
    HIGH = "high"


class Header(Frozen):
    """G0: who sends, to whom, why and how urgently. Holds no personal data of the subjects."""

    referral_id: UUID
    schema_version: Literal["1.0"] = SCHEMA_VERSION
    sender_agency: AgencyId
    sender_officer: Annotated[str, StringConstraints(min_length=1, max_length=64)] = Field(
        description="The sending professional's staff or collar number, not their name"
    )
    recipients: tuple[AgencyId, ...] = Field(min_length=1)
    purpose: Purpose
    priority: Priority = Priority.ROUTINE
    classification: Classification = Classification.OFFICIAL_SENSITIVE
    police_reference: Annotated[str, StringConstraints(max_length=64)] | None = None
    marac_reference: Annotated[str, StringConstraints(max_length=64)] | None = None
    created_at: AwareDatetime

    @field_validator("recipients")
    @classmethod
    def _distinct_recipients(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("each recipient may be named only once")
        return value


class Address(Frozen):
    lines: tuple[ShortText, ...] = Field(min_length=1, max_length=6)
    postcode: Annotated[str, StringConstraints(min_length=5, max_length=8)]


class Victim(Frozen):
    """G1: the person at risk."""

    given_name: ShortText
    family_name: ShortText
    aliases: tuple[ShortText, ...] = ()
    date_of_birth: date
    nhs_number: NhsNumber | None = None
    address: Address | None = None


class Incident(Frozen):
    """G5: what happened, when and where."""

    occurred_at: AwareDatetime
    location: ShortText
    summary: LongText
    injuries: LongText | None = None
    reported_to_police: bool


class Risk(Frozen):
    """G6 (first part): the assessed risk level and, where a DASH was done, its score."""

    level: RiskLevel
    dash_score: int | None = Field(default=None, ge=0, le=24)


class Referral(Frozen):
    """A safeguarding referral as submitted by an agency adapter."""

    header: Header
    victim: Victim
    incident: Incident
    risk: Risk
