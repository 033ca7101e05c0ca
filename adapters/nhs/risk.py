"""The risk (G6) of an NHS referral bundle: its RiskAssessment and DASH QuestionnaireResponse."""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B.questionnaireresponse import QuestionnaireResponse
from fhir.resources.R4B.riskassessment import RiskAssessment

from adapters.nhs.codes import (
    DASH_ANSWER_SYSTEM,
    DASH_QUESTIONNAIRE,
    EXT,
    RISK_PROBABILITY,
    RISK_PROBABILITY_SYSTEM,
)
from adapters.nhs.walker import BundleWalker, refuse

__all__ = ["map_risk"]


def map_risk(w: BundleWalker, at: tuple[int, RiskAssessment], patient_index: int) -> dict[str, Any]:
    i, assessment = at
    path = w.path(i)
    w.origins["risk"] = path
    w.check_extensions(assessment, {EXT.dash_score, EXT.incidents_last_12_months}, path)
    w.points_at(assessment.subject, patient_index, f"{path}.subject")
    predictions = assessment.prediction or []
    if len(predictions) != 1:
        refuse(f"{path}.prediction", "needs exactly one prediction with the risk level")
    levels = {v: k.value for k, v in RISK_PROBABILITY.items()}
    code = w.code(
        [predictions[0].qualitativeRisk] if predictions[0].qualitativeRisk else [],
        RISK_PROBABILITY_SYSTEM,
        f"{path}.prediction[0].qualitativeRisk",
        "the risk level",
    )
    if code not in levels:
        refuse(
            f"{path}.prediction[0].qualitativeRisk",
            f"the risk level must be one of {', '.join(levels)}",
        )
    w.origins["risk.level"] = f"{path}.prediction[0].qualitativeRisk"
    risk: dict[str, Any] = {
        "level": levels[code],
        "professional_judgement": predictions[0].rationale,
    }
    w.origins["risk.professional_judgement"] = f"{path}.prediction[0].rationale"
    score = w.extension(assessment, EXT.dash_score, path)
    if score is not None:
        risk["dash_score"] = score[1].valueInteger
        w.origins["risk.dash_score"] = f"{path}.extension[{score[0]}]"
    count = w.extension(assessment, EXT.incidents_last_12_months, path)
    if count is not None:
        risk["incidents_last_12_months"] = count[1].valueInteger
        w.origins["risk.incidents_last_12_months"] = f"{path}.extension[{count[0]}]"
    basis = assessment.basis or []
    dash_at = w.optional(QuestionnaireResponse)
    if dash_at is not None:
        if len(basis) != 1 or w.urls.get(basis[0].reference or "") != dash_at[0]:
            refuse(f"{path}.basis", "must reference the bundle's DASH QuestionnaireResponse")
        risk["dash"] = _dash(w, *dash_at, patient_index)
    elif basis:
        refuse(f"{path}.basis", "references a resource the bundle does not hold")
    return risk


def _dash(
    w: BundleWalker, i: int, response: QuestionnaireResponse, patient_index: int
) -> dict[str, Any]:
    path = w.path(i)
    w.points_at(response.subject, patient_index, f"{path}.subject")
    canonical, _, version = (response.questionnaire or "").partition("|")
    if canonical != DASH_QUESTIONNAIRE or not version:
        refuse(f"{path}.questionnaire", f"must be {DASH_QUESTIONNAIRE}|<question set version>")
    if response.status != "completed":
        refuse(f"{path}.status", "a DASH checklist is sent once completed")
    w.origins["risk.dash"] = path
    w.origins["risk.dash.question_set"] = f"{path}.questionnaire"
    answers: dict[str, Any] = {}
    for j, item in enumerate(response.item or []):
        where = f"{path}.item[{j}]"
        answer = item.answer or []
        coding = answer[0].valueCoding if len(answer) == 1 else None
        if coding is None or coding.system != DASH_ANSWER_SYSTEM:
            refuse(f"{where}.answer", f"needs one valueCoding from {DASH_ANSWER_SYSTEM}")
        answers[str(item.linkId)] = coding.code
        w.origins[f"risk.dash.answers.{item.linkId}"] = f"{where}.answer[0].valueCoding.code"
    w.origins["risk.dash.answers"] = f"{path}.item"
    return {"question_set": version, "answers": answers}
