"""Cairn's message contracts: pydantic v2 models of every message the partnership exchanges.

Every model is frozen and forbids unknown fields, so a model instance that exists has been
validated. The JSON Schema files other-language adapters build against are exported from here.
"""

from schemas.errors import (
    CairnError,
    FieldProblem,
    InfrastructureError,
    InputError,
    PayloadTooLarge,
    SchemaError,
    TransportError,
    UnknownAgency,
    UnsupportedMediaType,
    VerificationError,
)
from schemas.federation import Agency, AgencyRole, Federation
from schemas.receipt import Receipt, RecipientStatus
from schemas.referral import (
    Address,
    Classification,
    Header,
    Incident,
    Priority,
    Purpose,
    Referral,
    Risk,
    RiskLevel,
    Victim,
)

__all__ = [
    "Address",
    "Agency",
    "AgencyRole",
    "CairnError",
    "Classification",
    "Federation",
    "FieldProblem",
    "Header",
    "Incident",
    "InfrastructureError",
    "InputError",
    "PayloadTooLarge",
    "Priority",
    "Purpose",
    "Receipt",
    "RecipientStatus",
    "Referral",
    "Risk",
    "RiskLevel",
    "SchemaError",
    "TransportError",
    "UnknownAgency",
    "UnsupportedMediaType",
    "VerificationError",
    "Victim",
]
