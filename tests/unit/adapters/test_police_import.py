"""Police adapter: from a force's incident export to referrals and Encompass notifications."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from adapters.client import SubmissionRefused
from adapters.police import Outgoing, RowError, import_export
from adapters.police.cli import police
from schemas.encompass import STATUTORY_CONTENT, EncompassNotification
from schemas.federation import Federation
from schemas.receipt import Receipt, RecipientReceipt, RecipientStatus
from schemas.referral import Purpose, Referral

ROOT = Path(__file__).resolve().parents[3]
FEDERATION_DIR = ROOT / "deploy" / "federation"
SAMPLES = FEDERATION_DIR / "samples"
NOW = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)


def federation() -> Federation:
    raw = yaml.safe_load((FEDERATION_DIR / "agencies.yaml").read_text(encoding="utf-8"))
    return Federation.model_validate(raw)


def run(name: str) -> tuple[list[Outgoing], list[RowError]]:
    lines = (SAMPLES / name).read_text(encoding="utf-8").splitlines()
    return import_export(lines, federation(), NOW)


def summary(produced: list[Outgoing]) -> list[tuple[int, str, tuple[str, ...]]]:
    return [(o.row, o.purpose.value, o.recipients) for o in produced]


def sample_line(row: int) -> dict[str, Any]:
    lines = (SAMPLES / "police-export.jsonl").read_text(encoding="utf-8").splitlines()
    return dict(json.loads(lines[row - 1]))


def test_sample_export_produces_the_expected_messages() -> None:
    """The four sample incidents yield exactly the MARAC, IDVA and Encompass messages due."""
    produced, errors = run("police-export.jsonl")
    assert errors == []
    assert summary(produced) == [
        # high risk, two school-age children: one at school, one home-educated
        (1, "MARAC", ("kelder-marac",)),
        (1, "IDVA", ("kelder-idva",)),
        (1, "ENCOMPASS", ("kelder-brook-primary",)),
        (1, "ENCOMPASS", ("kelder-csc",)),
        # medium risk with consent: IDVA only; the 2-year-old gets no notification
        (2, "IDVA", ("kelder-idva",)),
        # professional judgement raised a score of 9 to high
        (3, "MARAC", ("kelder-marac",)),
        (3, "IDVA", ("kelder-idva",)),
        # consent refused, shared under the recorded override; 3 incidents in 12 months
        (4, "MARAC", ("kelder-marac",)),
        (4, "IDVA", ("kelder-idva",)),
        (4, "ENCOMPASS", ("kelder-brook-primary",)),
    ]


def test_referrals_carry_the_incident_and_its_groups() -> None:
    """The MARAC referral holds every group the police record, with police lawful basis."""
    produced, _ = run("police-export.jsonl")
    marac = produced[0].message
    assert isinstance(marac, Referral)
    assert marac.header.purpose is Purpose.MARAC
    assert marac.header.police_reference == "KP/2026/118842"
    assert marac.risk.dash_score == 16
    assert [c.given_name for c in marac.children] == ["Pip", "Robin"]
    assert marac.perpetrator is not None
    assert marac.perpetrator.relationship == "ex_partner"
    assert marac.safe_contact is not None
    assert len(marac.safe_contact.safe_routes()) == 1
    assert marac.consent is not None
    assert marac.consent.statutory_gateway == "cda1998_s115"
    refused = produced[7].message
    assert isinstance(refused, Referral)
    assert refused.consent is not None
    assert refused.consent.state == "refused"
    assert refused.consent.override is not None
    assert refused.consent.override.reason == "risk_to_victim"


def test_message_ids_are_stable_across_imports() -> None:
    """Importing the same export twice yields the same ids, so the broker dedupes resubmission."""
    first, _ = run("police-export.jsonl")
    second, _ = run("police-export.jsonl")
    assert [o.message_id for o in first] == [o.message_id for o in second]
    assert len({o.message_id for o in first}) == len(first)


def _child(pid: str, dob: str, **extra: Any) -> dict[str, Any]:
    return {
        "person_id": pid,
        "role": "child",
        "given_name": f"Kid{pid}",
        "family_name": "Fictitia",
        "date_of_birth": dob,
        "school_agency": "kelder-brook-primary",
        **extra,
    }


def test_encompass_for_each_child_aged_4_to_17_and_no_one_else() -> None:
    """Children aged exactly 4 and 17 are notified; 3, 18, victim and suspect are not."""
    line = sample_line(1)  # incident on 2026-11-25
    line["persons"] = [p for p in line["persons"] if p["role"] != "child"] + [
        _child("C3", "2022-11-26"),  # 3 (4 tomorrow)
        _child("C4", "2022-11-25"),  # 4 today
        _child("C17", "2008-11-26"),  # 17 (18 tomorrow)
        _child("C18", "2008-11-25"),  # 18 today
    ]
    produced, errors = import_export([json.dumps(line)], federation(), NOW)
    assert errors == []
    notes = [o.message for o in produced if isinstance(o.message, EncompassNotification)]
    assert sorted(n.content.child_given_name for n in notes) == ["KidC17", "KidC4"]
    referral = next(o.message for o in produced if isinstance(o.message, Referral))
    assert len(referral.children) == 4  # every child stays in the referral's G4


def test_notification_carries_exactly_the_statutory_content() -> None:
    """Each notification's content is the statutory field set and nothing about the adults."""
    produced, _ = run("police-export.jsonl")
    notes = [o.message for o in produced if isinstance(o.message, EncompassNotification)]
    assert len(notes) == 3
    for note in notes:
        dumped = json.loads(note.model_dump_json())
        assert set(dumped["content"]) == STATUTORY_CONTENT
        assert dumped["content"]["do_not_approach_parents"] is True
        text = json.dumps(dumped)
        for adult in ("Testina", "Fakeley", "Fictiona", "Fauxton", "9990000018", "Imaginary Row"):
            assert adult not in text
    first = notes[0]
    assert first.content.police_reference == "KP/2026/118842"
    assert first.content.child_present is True
    # Incident on Wednesday 25 Nov 2026 at 22:40: due before school starts on Thursday 26th.
    assert first.header.notify_by == datetime(2026, 11, 26, 8, 30, tzinfo=UTC)


def test_no_notification_when_police_did_not_attend() -> None:
    """Encompass follows police-attended incidents only."""
    line = sample_line(1)
    line["attended"] = False
    produced, errors = import_export([json.dumps(line)], federation(), NOW)
    assert errors == []
    assert {o.purpose for o in produced} == {Purpose.MARAC, Purpose.IDVA}


def test_standard_risk_without_consent_yields_no_referral() -> None:
    """A standard-risk victim who refused gets no MARAC or IDVA referral; children still count."""
    line = sample_line(4)
    line["risk_level"] = "standard"
    line["incidents_last_12_months"] = 1
    line["dash"]["answers"] = {f"q{i}": "no" for i in range(1, 25)}
    produced, errors = import_export([json.dumps(line)], federation(), NOW)
    assert errors == []
    assert [o.purpose for o in produced] == [Purpose.ENCOMPASS]


def test_mixed_file_yields_good_rows_and_reports_each_bad_one() -> None:
    """Bad lines are reported by line, field and reason; the good lines around them still go."""
    produced, errors = run("police-export-with-errors.jsonl")
    assert summary(produced) == [
        (1, "IDVA", ("kelder-idva",)),
        (7, "MARAC", ("kelder-marac",)),
        (7, "IDVA", ("kelder-idva",)),
    ]
    got = [(e.row, e.field) for e in errors]
    assert got == [
        (2, "(line)"),
        (3, "persons.0.nhs_number"),
        (4, "risk_level"),
        (5, "professional_judgement"),
        (7, "persons.2.school_agency"),
        (8, "force"),
    ]
    reasons = {e.row: e.reason for e in errors}
    assert reasons[2].startswith("not valid JSON")
    assert reasons[3] == "the NHS number's check digit is wrong"
    assert reasons[4] == "Field required"
    assert "record the professional judgement" in reasons[5]
    assert "federation id of their school" in reasons[7]
    assert reasons[8] == "not a police force of this federation"
    assert not any("999000001" in e.reason for e in errors)  # values are never echoed


def test_naive_now_is_a_programming_error() -> None:
    """Passing a naive 'now' is a TypeError, not a row error."""
    with pytest.raises(TypeError):
        import_export([], federation(), datetime(2026, 11, 26))


def test_cli_dry_run_prints_a_row_table() -> None:
    """'police import --dry-run' prints one line per message and problem and exits 1 on problems."""
    runner = CliRunner()
    args = ["import", "--dry-run", "--federation-dir", str(FEDERATION_DIR)]
    ok = runner.invoke(police, [*args, str(SAMPLES / "police-export.jsonl")])
    assert ok.exit_code == 0, ok.output
    assert "10 of 10 message(s) ok, 0 problem(s)" in ok.output
    mixed = runner.invoke(police, [*args, str(SAMPLES / "police-export-with-errors.jsonl")])
    assert mixed.exit_code == 1
    assert "persons.0.nhs_number" in mixed.output
    assert "Testina" not in ok.output + mixed.output


class FakeClient:
    """Stands in for ReferralClient: records submissions, refuses notifications like today."""

    def __init__(self) -> None:
        self.sent: list[Referral | bytes] = []

    async def submit(self, referral: Referral | bytes) -> Receipt:
        self.sent.append(referral)
        if isinstance(referral, bytes):
            raise SubmissionRefused(400, {"title": "schema", "detail": "not a referral"})
        return Receipt(
            referral_id=referral.header.referral_id,
            accepted_at=NOW,
            recipients=tuple(
                RecipientReceipt(agency=a, status=RecipientStatus.QUEUED)
                for a in referral.header.recipients
            ),
        )


def test_cli_submits_each_message_and_reports_each_result() -> None:
    """'police import' submits every message through the client and prints each outcome."""
    client = FakeClient()

    @asynccontextmanager
    async def factory(agency: str, url: str) -> AsyncIterator[FakeClient]:
        assert (agency, url) == ("kelder-police", "https://broker.test")
        yield client

    result = CliRunner().invoke(
        police,
        [
            "import",
            "--broker",
            "https://broker.test",
            "--federation-dir",
            str(FEDERATION_DIR),
            str(SAMPLES / "police-export.jsonl"),
        ],
        obj={"client_factory": factory},
    )
    assert len(client.sent) == 10
    assert result.output.count("queued (kelder-") == 7
    assert result.output.count("refused: 400 schema") == 3
    assert result.exit_code == 1  # the refusals are failures the operator must see


def test_cli_without_credentials_refuses_to_submit() -> None:
    """Without a client factory from the cairn CLI, import says to use it or --dry-run."""
    result = CliRunner().invoke(
        police,
        ["import", "--federation-dir", str(FEDERATION_DIR), str(SAMPLES / "police-export.jsonl")],
    )
    assert result.exit_code == 1
    assert "--dry-run" in result.output
