"""DASH: the versioned question set, scoring and the level boundaries."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from schemas.dash import (
    DEFAULT_QUESTION_SET,
    DashAnswer,
    DashAnswers,
    dash_score,
    known_question_sets,
    level_for_score,
    question_set,
)
from schemas.referral import Risk, RiskLevel


def answers(yes: int) -> dict[str, str]:
    """The first ``yes`` questions answered yes, the rest no (one 'not_known' if room)."""
    out = {f"q{i}": "yes" if i <= yes else "no" for i in range(1, 25)}
    if yes < 24:
        out["q24"] = "not_known"
    return out


def test_safelives_set_has_24_numbered_questions() -> None:
    """The shipped SafeLives set is data with 24 questions numbered 1-24 and thresholds 10/14."""
    qset = question_set()
    assert DEFAULT_QUESTION_SET in known_question_sets()
    assert [q.number for q in qset.questions] == list(range(1, 25))
    assert len(set(qset.ids)) == 24
    assert (qset.thresholds.medium, qset.thresholds.high) == (10, 14)
    assert set(qset.answers) == set(DashAnswer)


def test_score_counts_only_yes() -> None:
    """The score is the number of 'yes' answers; 'no' and 'not_known' count nothing."""
    assert dash_score({"q1": DashAnswer.YES, "q2": DashAnswer.NO, "q3": DashAnswer.NOT_KNOWN}) == 1
    assert DashAnswers(answers=answers(13)).score == 13


@pytest.mark.parametrize(
    ("score", "level"),
    [
        (0, RiskLevel.STANDARD),
        (9, RiskLevel.STANDARD),
        (10, RiskLevel.MEDIUM),
        (13, RiskLevel.MEDIUM),
        (14, RiskLevel.HIGH),
        (24, RiskLevel.HIGH),
    ],
)
def test_level_boundaries(score: int, level: RiskLevel) -> None:
    """Below 10 is standard, 10-13 medium, 14 and over high, from answers and from a score."""
    assert level_for_score(score) is level
    assert DashAnswers(answers=answers(score)).level is level


def test_unanswered_question_is_named() -> None:
    """Answers missing a question are refused, naming the question and how to fix it."""
    partial = answers(3)
    del partial["q7"]
    with pytest.raises(ValidationError, match=r"q7 not answered; answer 'not_known'"):
        DashAnswers(answers=partial)


def test_unknown_question_and_set_are_refused() -> None:
    """A question id outside the set, or an unknown set version, is refused."""
    with pytest.raises(ValidationError, match="q25 are not questions of safelives-2009"):
        DashAnswers(answers={**answers(1), "q25": "yes"})
    with pytest.raises(ValidationError, match="unknown DASH question set"):
        DashAnswers(question_set="acpo-1999", answers=answers(1))
    with pytest.raises(LookupError, match="known: safelives-2009"):
        question_set("acpo-1999")


def test_risk_computes_score_from_answers() -> None:
    """A risk with DASH answers and no score gets the score of its answers."""
    risk = Risk.model_validate({"level": "medium", "dash": {"answers": answers(11)}})
    assert risk.dash_score == 11
    assert risk.implied_level is RiskLevel.MEDIUM


def test_risk_score_must_match_answers() -> None:
    """A score that disagrees with the answers is refused at risk.dash_score."""
    with pytest.raises(ValidationError, match="dash_score is 12 but 11 answers are 'yes'"):
        Risk.model_validate({"level": "medium", "dash_score": 12, "dash": {"answers": answers(11)}})


def test_level_may_not_be_lowered_below_the_score() -> None:
    """Professional judgement may raise a level, never lower it below the score's."""
    with pytest.raises(ValidationError, match="below the 'high'"):
        Risk.model_validate(
            {"level": "medium", "dash_score": 15, "professional_judgement": "seems calmer"}
        )


def test_high_below_14_needs_professional_judgement() -> None:
    """Level high with a score under 14 is accepted only with a professional judgement."""
    with pytest.raises(ValidationError, match="record the professional judgement"):
        Risk.model_validate({"level": "high", "dash_score": 12})
    risk = Risk.model_validate(
        {"level": "high", "dash_score": 12, "professional_judgement": "threats to kill"}
    )
    assert risk.implied_level is RiskLevel.MEDIUM
