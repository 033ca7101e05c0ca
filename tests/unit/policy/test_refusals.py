"""A message refused as a whole explains itself: the same codes from explain and in the 422 body."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from broker.policy.admission import OVERRIDE_ITEMS
from broker.policy.refusals import refusal
from broker.web.problems import problem_for
from schemas.errors import FieldProblem, SchemaError, UnknownAgency
from tests.samples import personal_values, sample
from tests.unit.conftest import Broker
from tests.unit.policy.conftest import Run, assert_explained

POLICE = "kelder-police"
OVERRIDE = {
    "decision_maker_id": "KP-4471",
    "decision_maker_role": "detective_sergeant",
    "reason": "risk_to_victim",
    "justification": "High risk; asking would alert the suspect (fictional).",
    "subject_told": False,
    "subject_not_told_reason": "Telling her now would put her at risk (fictional).",
    "legal_paragraph": "dpa2018_sch1_para18",
}


@dataclass(frozen=True)
class RefusalPath:
    """One way a message is refused as a whole, and what both outputs must say."""

    name: str
    change: Callable[[dict[str, Any]], None]
    problem: str  # the 422 problem type's slug
    reasons: tuple[str, ...]
    missing: tuple[str, ...] = ()
    sender: str = POLICE


def _refused_no_override(data: dict[str, Any]) -> None:
    data["consent"]["state"] = "refused"


def _override_without(item: str) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        data["consent"]["state"] = "refused"
        data["consent"]["override"] = {k: v for k, v in OVERRIDE.items() if k != item}

    return change


def _set(section: str, **values: Any) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        data[section].update(values)

    return change


def _drop(section: str, key: str | None = None) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        if key is None:
            del data[section]
        else:
            del data[section][key]

    return change


def _from(sender: str, purpose: str, recipients: list[str]) -> Callable[[dict[str, Any]], None]:
    return _set("header", sender_agency=sender, purpose=purpose, recipients=recipients)


PATHS = (
    RefusalPath(
        "not valid", _set("risk", level="extreme"), "invalid-referral", ("schema.invalid",)
    ),
    RefusalPath(
        "consent refused, no override",
        _refused_no_override,
        "invalid-referral",
        ("consent.override.missing",),
        tuple(f"consent.override.{item}" for item in OVERRIDE_ITEMS),
    ),
    RefusalPath(
        "an override item missing",
        _override_without("justification"),
        "invalid-referral",
        ("consent.override.incomplete",),
        ("consent.override.justification",),
    ),
    RefusalPath(
        "no lawful basis",
        _drop("consent"),
        "policy-refusal",
        ("lawful_basis.missing",),
        ("consent",),
    ),
    RefusalPath(
        "no Art 6 basis",
        _drop("consent", "art6_basis"),
        "invalid-referral",
        ("lawful_basis.invalid",),
    ),
    RefusalPath(
        "a basis no agreement accepts",
        _set("consent", art6_basis="art6_1_c", art9_condition=None, dpa_condition=None),
        "policy-refusal",
        ("lawful_basis.not_accepted",),
    ),
    RefusalPath(
        "no agreement for the purpose",
        _from("kelder-probation", "IDVA", ["kelder-idva"]),
        "policy-refusal",
        ("agreement.none_for_purpose",),
        sender="kelder-probation",
    ),
    RefusalPath(
        "an unknown recipient",
        _set("header", recipients=["kelder-idva", "nowhere-council"]),
        "unknown-agency",
        ("recipient.unknown",),
    ),
    RefusalPath(
        "a self-referral",
        _set("header", recipients=[POLICE]),
        "unknown-agency",
        ("recipient.self",),
    ),
    RefusalPath(
        "too many recipients",
        _set("header", recipients=[f"agency-{i:02}" for i in range(17)]),
        "invalid-referral",
        ("fan_out.exceeded",),
    ),
    RefusalPath(
        "Encompass from the NHS",
        _from("kelder-nhs", "ENCOMPASS", ["kelder-brook-primary"]),
        "unknown-agency",
        ("encompass.sender_not_police",),
        sender="kelder-nhs",
    ),
    RefusalPath(
        "Encompass to an IDVA",
        _from(POLICE, "ENCOMPASS", ["kelder-idva"]),
        "unknown-agency",
        ("encompass.recipient_role",),
    ),
)


def message(path: RefusalPath) -> dict[str, Any]:
    data = sample()
    path.change(data)
    return data


def assert_words(explanation: list[dict[str, str]], reasons: tuple[str, ...]) -> None:
    """One sentence and one citation per rule code, in the codes' order."""
    assert [e["code"] for e in explanation] == list(reasons)
    assert_explained(reasons)
    for e in explanation:
        assert e["text"].endswith(".")
        assert e["citation"]


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
async def test_each_refusal_path_says_the_same_from_explain_and_the_broker(
    path: RefusalPath, run: Run, broker: Broker, tmp_path: Path
) -> None:
    """Explain --json (stdout, exit 1) and the 422 body carry the same codes and missing items."""
    data = message(path)
    file = tmp_path / "message.json"
    file.write_text(json.dumps(data), encoding="utf-8")
    result = run("explain", str(file), "--now", "2026-11-26T09:00Z", "--json")
    assert result.exit_code == 1, result.output
    shown = json.loads(result.stdout)
    refused = shown["refused"]
    assert shown["decisions"] == []
    assert tuple(refused["reasons"]) == path.reasons
    assert tuple(refused["missing"]) == path.missing
    assert_words(refused["explanation"], path.reasons)
    reply = await broker.submit(path.sender, data)
    assert reply.status == 422
    body = reply.body
    assert body["type"] == f"urn:cairn:problem:{path.problem}"
    assert tuple(body["reasons"]) == path.reasons
    assert tuple(body["missing"]) == path.missing
    assert body["explanation"] == refused["explanation"]
    assert body["errors"] == refused["problems"]
    said = json.dumps(body) + result.stdout
    assert [v for v in personal_values(data) if v in said] == []
    assert broker.transport.published == 0


def test_an_unknown_sender_is_a_structured_refusal_from_explain(run: Run, tmp_path: Path) -> None:
    """A sender outside the federation (the broker 403s it first) is refused with its code."""
    data = sample()
    data["header"]["sender_agency"] = "nowhere-police"
    file = tmp_path / "message.json"
    file.write_text(json.dumps(data), encoding="utf-8")
    result = run("explain", str(file), "--json")
    assert result.exit_code == 1
    refused = json.loads(result.stdout)["refused"]
    assert refused["reasons"] == ["sender.unknown"]
    assert refused["problems"] == [
        {"field": "header.sender_agency", "problem": "not a member of this federation"}
    ]


def test_a_file_that_is_not_json_is_a_structured_refusal(run: Run, tmp_path: Path) -> None:
    """Bytes that are not JSON: a schema refusal on stdout, with no message id, exit 1."""
    file = tmp_path / "message.json"
    file.write_text("{not json", encoding="utf-8")
    result = run("explain", str(file), "--json")
    assert result.exit_code == 1
    shown = json.loads(result.stdout)
    assert shown["message_id"] is None
    assert shown["refused"]["reasons"] == ["schema.invalid"]


def test_a_refusal_reads_in_sentences_without_json(run: Run, tmp_path: Path) -> None:
    """Without --json the refusal is printed on stdout: codes, fixes, missing items, words."""
    data = message(PATHS[1])
    file = tmp_path / "message.json"
    file.write_text(json.dumps(data), encoding="utf-8")
    result = run("explain", str(file))
    assert result.exit_code == 1
    out = result.stdout
    assert "REFUSED as a whole" in out
    assert "reasons:  consent.override.missing" in out
    missing = "consent.override.decision_maker_id consent.override.decision_maker_role"
    assert f"missing:  {missing}" in out
    assert "Consent was not obtained and the referral has no override record" in out
    assert "cites: UK GDPR Art 5(2) (accountability)" in out


def test_the_refusal_record_has_a_stable_key_set() -> None:
    """Every refusal record holds the same keys, whichever error it came from."""
    errors = [
        SchemaError("bad", (FieldProblem("risk.level", "not a level"),)),
        UnknownAgency(
            "who", (FieldProblem("header.recipients.0", "x"),), reasons=("recipient.unknown",)
        ),
    ]
    keys = {frozenset(refusal(e).as_record()) for e in errors}
    assert keys == {frozenset({"message", "reasons", "problems", "missing", "explanation"})}


def test_a_422_body_keeps_its_type_and_adds_the_codes() -> None:
    """The problem types stay as they were; every 422 adds reasons, explanation and missing."""
    status, body = problem_for(
        UnknownAgency(
            "who", (FieldProblem("header.recipients.1", "x"),), reasons=("recipient.unknown",)
        )
    )
    assert (status, body["type"]) == (422, "urn:cairn:problem:unknown-agency")
    assert body["reasons"] == ["recipient.unknown"]
    assert body["missing"] == []
    assert body["explanation"][0]["code"] == "recipient.unknown"
    status, body = problem_for(SchemaError("bad"))
    assert (status, body["reasons"]) == (422, ["schema.invalid"])
    assert "errors" not in body  # no fields named, as before
