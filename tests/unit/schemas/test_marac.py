"""MARAC eligibility: each criterion on its own, none, and the area's escalation threshold."""

from __future__ import annotations

import pytest

from schemas.marac import MaracCriterion, marac_eligibility
from schemas.referral import Risk


def risk(**fields: object) -> Risk:
    return Risk.model_validate(fields)


def test_visible_high_risk_alone() -> None:
    """A score of 14 with no judgement and no escalation meets visible high risk only."""
    result = marac_eligibility(risk(level="high", dash_score=14, incidents_last_12_months=1))
    assert result.criteria == (MaracCriterion.VISIBLE_HIGH_RISK,)
    assert result.eligible


def test_professional_judgement_alone() -> None:
    """A high level raised by recorded judgement from a score of 5 meets judgement only."""
    result = marac_eligibility(
        risk(level="high", dash_score=5, professional_judgement="recent release from prison")
    )
    assert result.criteria == (MaracCriterion.PROFESSIONAL_JUDGEMENT,)


def test_potential_escalation_alone() -> None:
    """Three incidents in 12 months at standard risk meet potential escalation only."""
    result = marac_eligibility(risk(level="standard", dash_score=4, incidents_last_12_months=3))
    assert result.criteria == (MaracCriterion.POTENTIAL_ESCALATION,)


def test_no_criterion() -> None:
    """Medium risk, no judgement, two incidents: not eligible."""
    result = marac_eligibility(risk(level="medium", dash_score=13, incidents_last_12_months=2))
    assert result.criteria == ()
    assert not result.eligible


def test_escalation_threshold_is_configurable() -> None:
    """An area with a threshold of 4 does not count 3 incidents; one with 2 counts 2."""
    three = risk(level="standard", dash_score=0, incidents_last_12_months=3)
    assert not marac_eligibility(three, escalation_threshold=4).eligible
    two = risk(level="standard", dash_score=0, incidents_last_12_months=2)
    assert marac_eligibility(two, escalation_threshold=2).criteria == (
        MaracCriterion.POTENTIAL_ESCALATION,
    )
    with pytest.raises(ValueError, match="at least 1"):
        marac_eligibility(two, escalation_threshold=0)


def test_all_criteria_listed_in_order() -> None:
    """A case meeting every criterion lists all three, in the order of the guidance."""
    result = marac_eligibility(
        risk(level="high", dash_score=16, professional_judgement="also", incidents_last_12_months=5)
    )
    assert result.criteria == tuple(MaracCriterion)
