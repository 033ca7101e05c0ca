"""The development federation: the agencies of a local partnership, their roles, area settings."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field, StringConstraints, model_validator

from schemas.referral import AgencyId, Frozen, ShortText

__all__ = ["Agency", "AgencyRole", "Federation"]


class AgencyRole(StrEnum):
    POLICE = "police"
    NHS_SAFEGUARDING = "nhs_safeguarding"
    IDVA = "idva"
    CHILDRENS_SOCIAL_CARE = "childrens_social_care"
    SCHOOL = "school"
    HOUSING = "housing"
    PROBATION = "probation"
    MARAC_COORDINATOR = "marac_coordinator"


class Agency(Frozen):
    id: AgencyId
    name: ShortText
    role: AgencyRole
    trusted_ca: (
        Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-][A-Za-z0-9._/-]{0,199}$")] | None
    ) = Field(
        default=None,
        description="A CA certificate (PEM, path relative to the federation folder) trusted to "
        "certify this agency's own TLS certificate at enrolment, instead of the federation CA",
    )

    @model_validator(mode="after")
    def _ca_inside_the_folder(self) -> Agency:
        if self.trusted_ca is not None and ".." in self.trusted_ca.split("/"):
            raise ValueError("trusted_ca must be a path inside the federation folder")
        return self


class Federation(Frozen):
    """The partnership: a name and its member agencies, each id unique."""

    name: ShortText
    agencies: tuple[Agency, ...] = Field(min_length=1)
    marac_escalation_threshold: int = Field(
        default=3,
        ge=1,
        description="Incidents in 12 months that make a case MARAC-eligible by potential "
        "escalation; each area sets its own",
    )

    @model_validator(mode="after")
    def _unique_ids(self) -> Federation:
        ids = [a.id for a in self.agencies]
        if len(ids) != len(set(ids)):
            raise ValueError("agency ids must be unique")
        return self

    def get(self, agency_id: str) -> Agency | None:
        return next((a for a in self.agencies if a.id == agency_id), None)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(a.id for a in self.agencies)

    def with_role(self, role: AgencyRole) -> tuple[Agency, ...]:
        """The member agencies that have ``role``, in file order."""
        return tuple(a for a in self.agencies if a.role is role)
