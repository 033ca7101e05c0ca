"""Cairn's message contracts: pydantic v2 models of every message the partnership exchanges.

Every model is frozen and forbids unknown fields, so a model instance that exists has been
validated. A referral is a set of field groups G0-G10 (``schemas.referral``); the DASH checklist
is versioned data (``schemas.dash``); MARAC eligibility (``schemas.marac``) and the Operation
Encompass notification (``schemas.encompass``) are built on them; the fields holding
special-category or criminal-offence data are marked as such (``schemas.classes``). The JSON
Schema files
other-language adapters build against are exported from here (``schemas.export``).
"""

from schemas.classes import DataClass
from schemas.consent import (
    Art6Basis,
    Art9Condition,
    Art10Condition,
    Consent,
    ConsentOverride,
    ConsentState,
    DpaCondition,
    OverrideReason,
    StatutoryGateway,
)
from schemas.dash import (
    DashAnswer,
    DashAnswers,
    dash_question_classes,
    dash_score,
    level_for_score,
    question_set,
)
from schemas.encompass import EncompassContent, EncompassHeader, EncompassNotification
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
from schemas.marac import MaracCriterion, MaracEligibility, marac_eligibility
from schemas.receipt import Acknowledgement, Receipt, RecipientStatus
from schemas.referral import (
    FIELD_GROUPS,
    Address,
    AgenciesActions,
    Child,
    Classification,
    FieldGroup,
    Header,
    Incident,
    Perpetrator,
    Priority,
    Purpose,
    Referral,
    Risk,
    RiskLevel,
    SafeContact,
    SpecialCategory,
    Victim,
    Wishes,
    field_classes,
)

__all__ = [
    "FIELD_GROUPS",
    "Acknowledgement",
    "Address",
    "AgenciesActions",
    "Agency",
    "AgencyRole",
    "Art6Basis",
    "Art9Condition",
    "Art10Condition",
    "CairnError",
    "Child",
    "Classification",
    "Consent",
    "ConsentOverride",
    "ConsentState",
    "DashAnswer",
    "DashAnswers",
    "DataClass",
    "DpaCondition",
    "EncompassContent",
    "EncompassHeader",
    "EncompassNotification",
    "Federation",
    "FieldGroup",
    "FieldProblem",
    "Header",
    "Incident",
    "InfrastructureError",
    "InputError",
    "MaracCriterion",
    "MaracEligibility",
    "OverrideReason",
    "PayloadTooLarge",
    "Perpetrator",
    "Priority",
    "Purpose",
    "Receipt",
    "RecipientStatus",
    "Referral",
    "Risk",
    "RiskLevel",
    "SafeContact",
    "SchemaError",
    "SpecialCategory",
    "StatutoryGateway",
    "TransportError",
    "UnknownAgency",
    "UnsupportedMediaType",
    "VerificationError",
    "Victim",
    "Wishes",
    "dash_question_classes",
    "dash_score",
    "field_classes",
    "level_for_score",
    "marac_eligibility",
    "question_set",
]
