"""MARAC eligibility: which of the three referral criteria a risk assessment meets.

A case goes to the Multi-Agency Risk Assessment Conference when any criterion is met:

1. visible high risk: a DASH score at or above the question set's high threshold (14);
2. professional judgement: the level is high because a professional judged it so, with the
   reason recorded;
3. potential escalation: the number of domestic-abuse incidents in the last 12 months (the
   current one included) reaches the area's threshold, 3 unless the partnership sets another.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from schemas.dash import DEFAULT_QUESTION_SET, RiskLevel, question_set
from schemas.fields import Frozen
from schemas.referral import Risk

__all__ = [
    "DEFAULT_ESCALATION_THRESHOLD",
    "MaracCriterion",
    "MaracEligibility",
    "marac_eligibility",
]

#: Incidents in 12 months that make a case eligible by potential escalation (SafeLives default).
DEFAULT_ESCALATION_THRESHOLD = 3


class MaracCriterion(StrEnum):
    VISIBLE_HIGH_RISK = "visible_high_risk"
    PROFESSIONAL_JUDGEMENT = "professional_judgement"
    POTENTIAL_ESCALATION = "potential_escalation"


class MaracEligibility(Frozen):
    """The criteria met, in the order above; eligible when there is at least one."""

    criteria: tuple[MaracCriterion, ...]
    escalation_threshold: int = Field(ge=1)

    @property
    def eligible(self) -> bool:
        return bool(self.criteria)


def marac_eligibility(
    risk: Risk, *, escalation_threshold: int = DEFAULT_ESCALATION_THRESHOLD
) -> MaracEligibility:
    """Which MARAC criteria ``risk`` meets; ``escalation_threshold`` is the area's setting."""
    if escalation_threshold < 1:
        raise ValueError("escalation_threshold must be at least 1")
    criteria: list[MaracCriterion] = []
    version = risk.dash.question_set if risk.dash is not None else DEFAULT_QUESTION_SET
    if risk.dash_score is not None and risk.dash_score >= question_set(version).thresholds.high:
        criteria.append(MaracCriterion.VISIBLE_HIGH_RISK)
    if risk.level is RiskLevel.HIGH and risk.professional_judgement is not None:
        criteria.append(MaracCriterion.PROFESSIONAL_JUDGEMENT)
    incidents = risk.incidents_last_12_months
    if incidents is not None and incidents >= escalation_threshold:
        criteria.append(MaracCriterion.POTENTIAL_ESCALATION)
    return MaracEligibility(criteria=tuple(criteria), escalation_threshold=escalation_threshold)
