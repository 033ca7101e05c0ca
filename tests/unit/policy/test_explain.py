"""``cairn policy explain`` and ``cairn policy check``, and explain agreeing with what is sent."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from broker.envelope import open_record, seal
from schemas.disclosure import DisclosedReferral
from schemas.referral import FieldGroup
from schemas.submission import decode_submission
from tests.conftest import FederationKeys
from tests.samples import FEDERATION_DIR, SAMPLES, personal_values
from tests.unit.policy.cases import decisions, full_referral_data, sample_dict

MESSAGES = sorted(p for p in SAMPLES.glob("*.json") if not p.name.endswith(".fhir.json"))


#: The keys explain adds to each decision record.
WORDS = frozenset({"explanation", "shares", "deadline_reason"})


def codes(record: dict[str, Any]) -> dict[str, Any]:
    """The keys of ``Decision.as_record`` in an explain record (which adds the words)."""
    return {
        k: v for k, v in record.items() if k not in {"explanation", "shares", "deadline_reason"}
    }


def test_explain_prints_each_recipients_decision_basis_and_rules(run: Any) -> None:
    """Per recipient: the decision, groups, lawful and consent basis, and the rules fired."""
    result = run("explain", str(SAMPLES / "referral-high-risk.json"), "--now", "2026-11-26T09:00Z")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "2 of 2 allowed" in out
    assert "kelder-idva (idva): ALLOWED under kelder-marac-isa" in out
    assert "groups:        G0 G1 G2 G3 G4.children_basic G5 G6 G7.access_needs G8 G9 G10" in out
    assert "lawful basis:  art6_1_e + art9_2_g + dpa2018_sch1_para18 + cda1998_s115" in out
    assert "consent basis: obtained" in out
    assert "    marac.criterion.visible_high_risk" in out
    assert "    safe_contact.unsafe_routes_removed" in out
    assert "Testina" not in out  # codes and ids only


def test_explain_shows_refused_recipients_and_why(run: Any, tmp_path: Path) -> None:
    """A recipient the agreements do not cover is shown refused, with its reasons."""
    data = full_referral_data()
    data["header"]["recipients"] = ["kelder-marac", "kelder-housing"]
    path = tmp_path / "referral.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    result = run("explain", str(path), "--now", "2026-11-26T09:00Z")
    assert result.exit_code == 0, result.output
    assert "kelder-housing (housing): REFUSED: nothing is sent" in result.output
    assert "reasons:       role.not_granted" in result.output


def test_explain_json_is_what_the_engine_decides(run: Any) -> None:
    """--json prints exactly the engine's decisions as records."""
    path = SAMPLES / "referral-professional-judgement.json"
    result = run("explain", str(path), "--now", "2026-11-26T09:00:00+00:00", "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    message = decode_submission(path.read_bytes())
    expected = decisions(message, now=datetime(2026, 11, 26, 9, tzinfo=UTC))
    assert [codes(r) for r in shown["decisions"]] == [d.as_record() for d in expected]
    assert shown["refused"] is None
    assert shown["purpose"] == "MARAC"


def test_explain_a_referral_refused_as_a_whole_exits_1(run: Any, tmp_path: Path) -> None:
    """No lawful basis: explain says nothing is sent to anyone, why, and exits 1."""
    data = full_referral_data()
    del data["consent"]
    path = tmp_path / "referral.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    result = run("explain", str(path))
    assert result.exit_code == 1
    assert "REFUSED as a whole" in result.output
    assert "lawful_basis.missing" in result.output
    assert "fix:      consent:" in result.output
    as_json = json.loads(run("explain", str(path), "--json").output)
    assert as_json["refused"]["reasons"] == ["lawful_basis.missing"]
    assert as_json["decisions"] == []


def test_explain_an_invalid_file_names_the_fields(run: Any, tmp_path: Path) -> None:
    """A file that is not a valid referral fails with the fields to fix."""
    data = full_referral_data()
    data["risk"]["level"] = "extreme"
    path = tmp_path / "referral.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    result = run("explain", str(path))
    assert result.exit_code == 1
    assert "risk.level" in result.output


def test_explain_needs_an_aware_time(run: Any) -> None:
    """--now without an offset is a usage error."""
    result = run("explain", str(MESSAGES[0]), "--now", "2026-11-26T09:00")
    assert result.exit_code == 2
    assert "offset" in result.output


def test_check_passes_on_the_development_federation(run: Any) -> None:
    """The development agreements and calendar lint clean: exit 0."""
    result = run("check")
    assert result.exit_code == 0, result.output
    assert "7 agreement(s) and the school calendar" in result.output
    assert "no problems" in result.output


def test_check_fails_on_problems_and_lists_them(run: Any, tmp_path: Path) -> None:
    """Broken agreements and calendar: every problem is listed and the exit code is 1."""
    folder = tmp_path / "federation"
    shutil.copytree(FEDERATION_DIR, folder, ignore=shutil.ignore_patterns("samples"))
    marac = folder / "agreements" / "kelder-marac-isa.yaml"
    marac.write_text(
        marac.read_text(encoding="utf-8").replace(
            "marac_criterion_required: true", "marac_criterion_required: false"
        ),
        encoding="utf-8",
    )
    idva = folder / "agreements" / "kelder-idva-isa.yaml"
    idva.write_text(
        idva.read_text(encoding="utf-8").replace("G7: access_needs", "G7: most_things"),
        encoding="utf-8",
    )
    (folder / "school-calendar.yaml").write_text("timezone: Mars/Olympus\n", encoding="utf-8")
    result = run("check", folder=folder)
    assert result.exit_code == 1
    assert "kelder-marac-isa: purposes.0.marac_criterion_required" in result.output
    assert "[marac.criterion_not_required]" in result.output
    assert "kelder-idva-isa.yaml: purposes.0.recipients.idva.G7" in result.output
    assert "school-calendar.yaml: timezone" in result.output
    assert "3 problem(s)" in result.output


@pytest.mark.parametrize("path", MESSAGES, ids=lambda p: p.name)
def test_explain_agrees_with_what_each_recipient_decrypts(
    run: Any, path: Path, federation_keys: FederationKeys
) -> None:
    """For every sample, each recipient decrypts exactly what explain says it gets."""
    now = datetime.now(UTC)
    shown = json.loads(run("explain", str(path), "--now", now.isoformat(), "--json").output)
    message = decode_submission(path.read_bytes())
    broker = federation_keys.trust()
    for decision, record in zip(decisions(message, now=now), shown["decisions"], strict=True):
        assert decision.as_record() == codes(record)
        if not decision.allowed:
            with pytest.raises(RuntimeError):
                seal(
                    message,
                    decision,
                    topic_prefix="t",
                    request_id="r",
                    broker_key=broker.signing_key(),
                    registry=broker.registry(),
                    now=now,
                )
            continue
        sealed = seal(
            message,
            decision,
            topic_prefix="t",
            request_id="r",
            broker_key=broker.signing_key(),
            registry=broker.registry(),
            now=now,
        )
        recipient = federation_keys.trust(decision.recipient)
        got = open_record(
            sealed.value,
            recipient=decision.recipient,
            keys=recipient.decryption_keys(),
            registry=recipient.registry(),
            now=now,
        )
        assert [g.label for g in got.groups] == record["groups"]
        assert got.agreement == record["agreement"]
        assert got.lawful_basis.label == record["lawful_basis"]
        assert got.consent_basis.label == record["consent_basis"]
        assert got.retention.label == record["retention"]
        if isinstance(got.referral, DisclosedReferral):
            held = [g.value for g in FieldGroup if got.referral.group(g) not in (None, ())]
            assert held == [label.split(".")[0] for label in record["groups"]]
        else:
            assert got.notification == message


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("path", MESSAGES, ids=lambda p: p.name)
def test_explain_prints_each_recipients_decision_in_sentences_with_citations(
    run: Any, path: Path
) -> None:
    """For every sample, each recipient's every rule is printed as a sentence with its citation."""
    now = "2026-11-26T09:00:00+00:00"
    shown = json.loads(run("explain", str(path), "--now", now, "--json").stdout)
    out = run("explain", str(path), "--now", now).stdout
    blocks = _flat(out).split(" rules: ")
    assert len(blocks) == len(shown["decisions"]) + 1
    for record, block in zip(shown["decisions"], blocks[1:], strict=True):
        words = {e["code"]: e for e in record["explanation"]}
        assert list(words) == list(dict.fromkeys([*record["reasons"], *record["rules"]]))
        for code in record["rules"]:
            assert _flat(f"{code} {words[code]['text']} cites: {words[code]['citation']}") in block
        for share, label in zip(record["shares"], record["groups"], strict=True):
            assert share["label"] == label
            assert share["fields"]
        if record["deadline"] is not None:
            assert record["deadline_reason"].startswith("next school day is ")
            assert _flat(f"because: {record['deadline_reason']}") in _flat(out)
    data = sample_dict(path.name)
    if "victim" in data:  # a notification's only personal data is the child's
        assert [v for v in personal_values(data) if v in out] == []
    else:
        assert data["content"]["child_family_name"] not in out


def test_explain_spells_out_what_each_subset_holds(run: Any) -> None:
    """A subset is listed with its fields, scope and the agreement's note, in text and JSON."""
    path = SAMPLES / "encompass-notification.json"
    out = run("explain", str(path), "--now", "2026-11-26T09:00Z").stdout
    assert "G4.own_pupil (children and dependants):" in out
    assert "scope: only the children who are pupils of the receiving school" in _flat(out)
    shown = json.loads(run("explain", str(path), "--now", "2026-11-26T09:00Z", "--json").stdout)
    (record,) = shown["decisions"]
    pupil = next(s for s in record["shares"] if s["label"] == "G4.own_pupil")
    assert pupil["scope"] == "own_pupil"
    assert "voice_of_child" in pupil["fields"]
    assert pupil["note"]
