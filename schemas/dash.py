"""The DASH risk identification checklist: versioned question sets, answers, score and level.

Question sets are data (``schemas/data/dash-<version>.json``, shipped as package data) so a new
version of the checklist is a new file, not a code change, and a referral names the version its
answers belong to. The score is the number of "yes" answers; the set's thresholds turn it into
a level (SafeLives: standard below 10, medium 10-13, high 14 and over).

Each question that asks about special-category or criminal-offence data carries its class in
the data (``data_class``: injury, depression, pregnancy, the abuser's substance use, mental
health and suicide threats are data concerning health, UK GDPR Art 4(15); breached bail or
orders and criminal history are criminal-offence data, Art 10), so its answer leaves only with
a matching condition; ``dash_question_classes`` lists them per version.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from enum import StrEnum
from importlib import resources
from types import MappingProxyType
from typing import Annotated

from pydantic import Field, StringConstraints, field_validator, model_validator

from schemas.classes import DataClass
from schemas.fields import Frozen, Integer, LongText, ShortText, inconsistent

__all__ = [
    "DEFAULT_QUESTION_SET",
    "DashAnswer",
    "DashAnswers",
    "DashQuestion",
    "DashQuestionSet",
    "DashThresholds",
    "QuestionId",
    "RiskLevel",
    "dash_question_classes",
    "dash_score",
    "known_question_sets",
    "level_for_score",
    "question_set",
]

#: The question set assumed when a referral does not name one.
DEFAULT_QUESTION_SET = "safelives-2009"

QuestionId = Annotated[str, StringConstraints(pattern=r"^q[1-9][0-9]?$")]
QuestionSetVersion = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9.-]{1,62}$")]


class DashAnswer(StrEnum):
    YES = "yes"
    NO = "no"
    NOT_KNOWN = "not_known"


class RiskLevel(StrEnum):
    """DASH risk level: standard (<10 "yes"), medium (10-13), high (14+ or judgement)."""

    STANDARD = "standard"
    MEDIUM = "medium"
    HIGH = "high"

    @property
    def rank(self) -> int:
        """Order of severity, so levels compare: standard 0 < medium 1 < high 2."""
        return _RANK[self]


_RANK = {RiskLevel.STANDARD: 0, RiskLevel.MEDIUM: 1, RiskLevel.HIGH: 2}


class DashQuestion(Frozen):
    id: QuestionId
    number: Integer = Field(ge=1)
    topic: ShortText
    text: LongText
    data_class: DataClass | None = Field(
        default=None,
        description="The class of data the answer is (special_category, criminal_offence), "
        "or null: it leaves only with a matching condition",
    )


class DashThresholds(Frozen):
    """The lowest score of each level above standard."""

    medium: Integer = Field(ge=1)
    high: Integer = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> DashThresholds:
        if self.medium >= self.high:
            raise inconsistent("high", "the high threshold must be above the medium one")
        return self


class DashQuestionSet(Frozen):
    """One published version of the checklist."""

    version: QuestionSetVersion
    title: ShortText
    source: LongText
    answers: tuple[DashAnswer, ...]
    thresholds: DashThresholds
    questions: tuple[DashQuestion, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _numbered(self) -> DashQuestionSet:
        if [q.number for q in self.questions] != list(range(1, len(self.questions) + 1)):
            raise inconsistent("questions", "questions must be numbered 1, 2, 3 ... in order")
        if len({q.id for q in self.questions}) != len(self.questions):
            raise inconsistent("questions", "question ids must be unique")
        if self.thresholds.high > len(self.questions):
            raise inconsistent("thresholds.high", "the high threshold exceeds the question count")
        return self

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(q.id for q in self.questions)

    def level_for(self, score: int) -> RiskLevel:
        """The level a score reaches in this set."""
        if score >= self.thresholds.high:
            return RiskLevel.HIGH
        if score >= self.thresholds.medium:
            return RiskLevel.MEDIUM
        return RiskLevel.STANDARD


def known_question_sets() -> tuple[str, ...]:
    """Versions of every question set shipped with this package, sorted."""
    data = resources.files("schemas") / "data"
    return tuple(
        sorted(
            p.name.removeprefix("dash-").removesuffix(".json")
            for p in data.iterdir()
            if p.name.startswith("dash-") and p.name.endswith(".json")
        )
    )


@functools.cache
def question_set(version: str = DEFAULT_QUESTION_SET) -> DashQuestionSet:
    """Load a question set by version; raise LookupError naming the known versions."""
    if version not in known_question_sets():
        raise LookupError(
            f"unknown DASH question set '{version}'; known: {', '.join(known_question_sets())}"
        )
    text = (resources.files("schemas") / "data" / f"dash-{version}.json").read_text("utf-8")
    qset = DashQuestionSet.model_validate(json.loads(text))
    if qset.version != version:
        raise RuntimeError(f"dash-{version}.json declares version '{qset.version}'")
    return qset


@functools.cache
def dash_question_classes(version: str = DEFAULT_QUESTION_SET) -> Mapping[str, DataClass]:
    """Question id -> class, for the classified questions of a set (LookupError if unknown)."""
    return MappingProxyType(
        {q.id: q.data_class for q in question_set(version).questions if q.data_class is not None}
    )


def dash_score(answers: Mapping[str, DashAnswer | str]) -> int:
    """The DASH score: how many questions were answered "yes"."""
    return sum(1 for a in answers.values() if a == DashAnswer.YES)


def level_for_score(score: int, *, version: str = DEFAULT_QUESTION_SET) -> RiskLevel:
    """The level a score reaches: standard below 10, medium 10-13, high 14 and over (SafeLives)."""
    return question_set(version).level_for(score)


class DashAnswers(Frozen):
    """A completed checklist: every question of the named set answered yes, no or not known."""

    question_set: QuestionSetVersion = Field(
        default=DEFAULT_QUESTION_SET,
        description="Version of the question set the answers belong to",
    )
    answers: dict[QuestionId, DashAnswer] = Field(
        description="One answer per question id of the set; 'not_known' where the victim did "
        "not say or was not asked",
        json_schema_extra={"additionalProperties": False},  # only keys matching the id pattern
    )

    @field_validator("question_set")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in known_question_sets():
            raise ValueError(
                f"unknown DASH question set; known: {', '.join(known_question_sets())}"
            )
        return value

    @model_validator(mode="after")
    def _complete(self) -> DashAnswers:
        ids = question_set(self.question_set).ids
        unknown = sorted(set(self.answers) - set(ids), key=_question_order)
        if unknown:
            raise inconsistent(
                "answers",
                f"{', '.join(unknown)} are not questions of {self.question_set} "
                f"(it has {ids[0]} to {ids[-1]})",
            )
        missing = [i for i in ids if i not in self.answers]
        if missing:
            raise inconsistent(
                "answers",
                f"{', '.join(missing)} not answered; answer 'not_known' where the victim "
                "did not say",
            )
        return self

    @property
    def score(self) -> int:
        return dash_score(self.answers)

    @property
    def level(self) -> RiskLevel:
        return question_set(self.question_set).level_for(self.score)


def _question_order(qid: str) -> tuple[int, str]:
    digits = qid[1:]
    return (int(digits), qid) if digits.isdigit() else (10_000, qid)
