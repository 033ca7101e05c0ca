"""Police adapter: from a force's incident export to referrals and Encompass notifications."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from adapters.client import SubmissionRefused, Submitted
from adapters.police import Outgoing, RowError, import_export
from adapters.police.cli import police
from schemas.consent import Consent
from schemas.encompass import STATUTORY_CONTENT, EncompassNotification
from schemas.federation import Federation
from schemas.receipt import Receipt, RecipientReceipt, RecipientStatus
from schemas.referral import Purpose, Referral
from tests.unit.policy.cases import ENCOMPASS_CONSENT, disclosed, one

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


def test_the_override_names_its_decision_maker_by_collar_number_and_role_code() -> None:
    """The authorising officer's collar number is the staff id; the rank title becomes a code."""
    produced, _ = run("police-export.jsonl")
    refused = produced[7].message
    assert isinstance(refused, Referral)
    assert refused.consent is not None
    override = refused.consent.override
    assert override is not None
    assert override.decision_maker_id == "KP-1102"
    assert override.decision_maker_role == "detective_sergeant_public_protection_unit"


def test_a_name_for_the_authorising_officer_is_a_row_error() -> None:
    """A name where the collar number goes is refused at that field, the name not echoed."""
    line = sample_line(4)
    line["sharing"]["override"]["decision_maker"] = "Jane Doe"
    _, errors = imported(line)
    assert errors
    fields = {e.field for e in errors}
    assert "sharing.override.decision_maker" in fields
    assert "Jane Doe" not in str(errors)


def test_message_ids_are_stable_across_imports() -> None:
    """Importing the same export twice yields the same ids, so the broker dedupes resubmission."""
    first, _ = run("police-export.jsonl")
    second, _ = run("police-export.jsonl")
    assert [o.message_id for o in first] == [o.message_id for o in second]
    assert len({o.message_id for o in first}) == len(first)


def test_the_same_export_makes_the_same_messages_whatever_the_clock() -> None:
    """Imported days apart, every message is the same bytes: nothing in it comes from the clock,
    so the broker sees a resubmission, not another referral under a used id."""
    lines = (SAMPLES / "police-export.jsonl").read_text(encoding="utf-8").splitlines()
    first, _ = import_export(lines, federation(), NOW)
    later, _ = import_export(lines, federation(), NOW + timedelta(days=3, seconds=7))
    assert [o.message.model_dump_json() for o in first] == [
        o.message.model_dump_json() for o in later
    ]
    for o in first:  # without recorded_at, the line's occurred_at is the created-at
        occurred = sample_line(o.row)["occurred_at"]
        assert o.message.header.created_at == datetime.fromisoformat(occurred)


def test_recorded_at_is_the_created_at_of_every_message() -> None:
    """A line's recorded_at dates its referrals and its notices alike."""
    line = {**sample_line(1), "recorded_at": "2026-11-26T07:45:00+00:00"}
    produced, errors = import_export([json.dumps(line)], federation(), NOW)
    assert errors == []
    assert {o.message.header.created_at for o in produced} == {
        datetime(2026, 11, 26, 7, 45, tzinfo=UTC)
    }


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"recorded_at": "2026-11-25T20:00:00+00:00"}, "recorded_at", "is before occurred_at"),
        ({"recorded_at": "2026-11-26T09:05:00+00:00"}, "recorded_at", "later than this machine"),
        ({"occurred_at": "2026-11-26T09:05:00+00:00"}, "occurred_at", "later than this machine"),
    ],
)
def test_a_line_dated_impossibly_is_refused_at_its_field(
    change: dict[str, str], field: str, reason: str
) -> None:
    """recorded_at before the incident, or a time past the clock (beyond a minute's skew), is
    the line's problem naming the export field; nothing of the line is made."""
    line = {**sample_line(1), **change}
    produced, errors = import_export([json.dumps(line)], federation(), NOW)
    assert produced == []
    assert [(e.row, e.field) for e in errors] == [(1, field)]
    assert reason in errors[0].reason


def test_a_minute_of_clock_skew_is_allowed() -> None:
    """A line recorded under a minute ahead of the importing machine's clock still imports."""
    line = {**sample_line(1), "recorded_at": "2026-11-26T09:00:50+00:00"}
    produced, errors = import_export([json.dumps(line)], federation(), NOW)
    assert errors == []
    assert produced


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


def with_children(row: int, *children: dict[str, Any]) -> dict[str, Any]:
    """Sample line ``row`` with exactly these children linked (the adults kept)."""
    line = sample_line(row)
    line["persons"] = [p for p in line["persons"] if p["role"] != "child"] + list(children)
    return line


def imported(*lines: dict[str, Any]) -> tuple[list[Outgoing], list[RowError]]:
    return import_export([json.dumps(line) for line in lines], federation(), NOW)


def notices(produced: list[Outgoing]) -> list[tuple[str, str]]:
    """(child's given name, recipient) of each Encompass notice produced."""
    return [
        (o.message.content.child_given_name, o.message.header.recipient)
        for o in produced
        if isinstance(o.message, EncompassNotification)
    ]


def test_encompass_for_every_child_under_18_on_a_school_roll() -> None:
    """DAA 2021 s49A, s3: every linked child under 18 at the incident who is a registered pupil
    is notified, a 3-year-old in a nursery class included; 18 that day, and a 3-year-old at
    home with no school (nobody's pupil), are not, and neither is reported as a problem."""
    line = with_children(
        1,  # incident on 2026-11-25
        _child("C3", "2023-09-01"),  # 3, in the school's nursery class
        _child("C17", "2008-11-26"),  # 17 (18 tomorrow)
        _child("C18", "2008-11-25"),  # 18 today
        _child("H3", "2023-09-01", school_agency=None),  # 3, at home, no school
    )
    produced, errors = imported(line)
    assert errors == []
    assert sorted(notices(produced)) == [
        ("KidC17", "kelder-brook-primary"),
        ("KidC3", "kelder-brook-primary"),
    ]
    referral = next(o.message for o in produced if isinstance(o.message, Referral))
    assert len(referral.children) == 4  # every child stays in the referral's G4


def test_a_child_of_school_age_with_no_school_recorded_is_reported() -> None:
    """DAA 2021 s49A: a child of school age with neither a school nor 'no school roll' recorded
    cannot be routed; the gap is reported against that child, and the rest still goes."""
    line = with_children(
        1, _child("C10", "2016-01-15", school_agency=None), _child("C8", "2018-09-03")
    )
    produced, errors = imported(line)
    assert notices(produced) == [("KidC8", "kelder-brook-primary")]
    assert [(e.field, "federation id of their school" in e.reason) for e in errors] == [
        ("persons.2.school_agency", True)
    ]


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


def test_notices_do_not_depend_on_attendance() -> None:
    """DAA 2021 s49A: the duty arises from reasonable grounds to believe a child may be a victim,
    whether or not officers attended: an incident reported without attendance still notifies."""
    attended, _ = imported(sample_line(1))
    line = sample_line(1)
    line["attended"] = False
    produced, errors = imported(line)
    assert errors == []
    assert (
        notices(produced)
        == notices(attended)
        == [
            ("Pip", "kelder-brook-primary"),
            ("Robin", "kelder-csc"),
        ]
    )


def test_the_officers_judgement_decides_each_childs_notice() -> None:
    """DAA 2021 s3, s49A: a child is notified when there are reasonable grounds to believe they
    may be a victim (may_be_victim); false makes no notice; not recorded (an older export)
    counts as true, so the school is told rather than silently not told."""
    line = with_children(
        1,
        _child("C8", "2018-09-03", may_be_victim=True),
        _child("C9", "2017-09-03", may_be_victim=False),
        _child("C10", "2016-09-03"),  # an export written before the field existed
    )
    produced, errors = imported(line)
    assert errors == []
    assert [name for name, _ in notices(produced)] == ["KidC8", "KidC10"]
    victim = with_children(1)
    victim["persons"][0]["may_be_victim"] = True
    _, problems = imported(victim)
    assert [(e.field, e.reason) for e in problems] == [
        ("persons.0.may_be_victim", "recorded for a child only")
    ]


def _no_override(line: dict[str, Any]) -> None:
    del line["sharing"]["override"]


def _incomplete_override(line: dict[str, Any]) -> None:
    del line["sharing"]["override"]["justification"]


def _no_sharing(line: dict[str, Any]) -> None:
    del line["sharing"]


@pytest.mark.parametrize(
    "break_consent",
    [_no_override, _incomplete_override, _no_sharing],
    ids=["refused-no-override", "override-incomplete", "no-sharing-record"],
)
def test_the_duty_does_not_depend_on_the_adult_victims_consent(
    break_consent: Callable[[dict[str, Any]], None],
) -> None:
    """DAA 2021 s49A: a line whose victim consent record gives no basis (refused, no complete
    override) still notifies the school; the problem holds back the MARAC and IDVA referrals
    only, and is reported against them."""
    line = sample_line(4)  # consent refused, high risk, a pupil at Brookside
    break_consent(line)
    produced, errors = imported(line)
    assert summary(produced) == [(1, "ENCOMPASS", ("kelder-brook-primary",))]
    assert errors
    for error in errors:
        assert error.field.startswith("sharing")
        assert error.reason.startswith("MARAC and IDVA referrals not made: ")
    # ... and the notice it made is one the engine allows, on the statutory basis.
    note = produced[0].message
    decision = one(note)
    assert decision.allowed
    assert decision.consent_basis is not None
    assert decision.consent_basis.label == "not_required_statutory"


def test_an_encompass_referral_from_the_export_never_gives_a_school_an_adult() -> None:
    """DAA 2021 s3, s49A: the import notifies no one 18 or over, and the same line's referral
    sent for ENCOMPASS gives the school only its pupils who were under 18 at the incident."""
    line = with_children(1, _child("C18", "2008-11-25"), _child("C8", "2018-09-03"))
    produced, _ = imported(line)
    assert [name for name, _ in notices(produced)] == ["KidC8"]
    base = next(o.message for o in produced if isinstance(o.message, Referral))
    header = base.header.model_copy(
        update={"purpose": Purpose.ENCOMPASS, "recipients": ("kelder-brook-primary",)}
    )
    source = base.model_copy(
        update={"header": header, "consent": Consent.model_validate(ENCOMPASS_CONSENT)}
    )
    got = disclosed(source, one(source))
    assert [c.given_name for c in got.children] == ["KidC8"]


def test_an_off_roll_child_is_notified_to_csc_on_the_safeguarding_basis() -> None:
    """s49A names schools: the import sends a home-educated or off-roll child's notice to
    children's social care, which the engine decides on UK GDPR Art 6(1)(e), Art 9(2)(g),
    DPA 2018 Sch 1 para 18 and Children Act 2004 s11, and the school's on Art 6(1)(c) s49A."""
    produced, _ = imported(sample_line(1))
    bases: dict[str, str] = {}
    for o in produced:
        if isinstance(o.message, EncompassNotification):
            decision = one(o.message)
            assert decision.allowed
            assert decision.lawful_basis is not None
            bases[o.message.header.recipient] = decision.lawful_basis.label
    assert bases == {
        "kelder-brook-primary": "art6_1_c+daa2021_s49a",
        "kelder-csc": "art6_1_e+art9_2_g+dpa2018_sch1_para18+ca2004_s11",
    }


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

    async def send(self, referral: Referral | bytes) -> Submitted:
        return Submitted(await self.submit(referral), already_sent=False)


class RememberingBroker:
    """Answers as the broker does: the first submission of an id is queued (202), the same
    content again gets the original receipt (200), other content under the id a 409."""

    def __init__(self) -> None:
        self.kept: dict[str, tuple[bytes, Receipt]] = {}
        self.clock = NOW
        self.accepted = 0

    async def submit(self, referral: Referral | bytes) -> Receipt:
        return (await self.send(referral)).receipt

    async def send(self, referral: Referral | bytes) -> Submitted:
        body = referral.model_dump_json().encode() if isinstance(referral, Referral) else referral
        data = json.loads(body)
        header = data["header"]
        message_id = header.get("referral_id") or header["notification_id"]
        recipients = header.get("recipients") or [header["recipient"]]
        if message_id in self.kept:
            first, receipt = self.kept[message_id]
            if first != body:
                raise SubmissionRefused(409, {"title": "replay-conflict", "detail": "content"})
            return Submitted(receipt, already_sent=True)
        receipt = Receipt(
            referral_id=message_id,
            accepted_at=self.clock,
            recipients=tuple(
                RecipientReceipt(agency=a, status=RecipientStatus.QUEUED) for a in recipients
            ),
        )
        self.kept[message_id] = (body, receipt)
        self.accepted += 1
        return Submitted(receipt, already_sent=False)


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
    assert result.output.count(f"queued (receipt of {NOW.isoformat()}: kelder-") == 7
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


def test_importing_the_same_export_again_prints_the_original_receipts() -> None:
    """The second import of an export, a day later, sends nothing new: each message is 'already
    sent' with the time of its first receipt and its id, the summary says so, and it exits 0."""
    broker = RememberingBroker()

    @asynccontextmanager
    async def factory(agency: str, url: str) -> AsyncIterator[RememberingBroker]:
        yield broker

    args = ["import", "--federation-dir", str(FEDERATION_DIR), str(SAMPLES / "police-export.jsonl")]
    first = CliRunner().invoke(police, args, obj={"client_factory": factory})
    assert first.exit_code == 0, first.output
    assert first.output.count(f"  queued (receipt of {NOW.isoformat()}: kelder-") == 10
    assert broker.accepted == 10
    broker.clock = NOW + timedelta(days=1)
    again = CliRunner().invoke(police, args, obj={"client_factory": factory})
    assert again.exit_code == 0, again.output
    assert broker.accepted == 10  # nothing was accepted anew
    assert again.output.count(f"already sent (receipt of {NOW.isoformat()}: kelder-") == 10
    for message_id in broker.kept:
        assert message_id in again.output
    assert "10 of 10 message(s) ok" in again.output
    assert "10 of them already sent by an earlier import" in again.output
    assert "refused" not in again.output
