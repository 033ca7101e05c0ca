"""The checked-in JSON Schema files: current with the models, and right about the samples."""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from jsonschema import Draft202012Validator

from broker.cli.schemas import schemas
from schemas.export import JSON_DIR, MESSAGES, drifted, json_schemas, write_json_schemas

SAMPLES = Path(__file__).resolve().parents[3] / "deploy" / "federation" / "samples"


@functools.cache
def validator(stem: str) -> Draft202012Validator:
    schema = json.loads((JSON_DIR / f"{stem}.schema.json").read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def load(name: str) -> dict[str, Any]:
    return dict(json.loads((SAMPLES / name).read_text(encoding="utf-8")))


def test_checked_in_schemas_match_the_models() -> None:
    """Every schema file under schemas/json equals what the models export now."""
    assert drifted() == [], "run 'cairn schemas export' and commit schemas/json"
    assert sorted(p.name for p in JSON_DIR.glob("*.schema.json")) == sorted(
        f"{stem}.schema.json" for stem in MESSAGES
    )


def test_export_command_writes_and_checks(tmp_path: Path) -> None:
    """'schemas export' writes one file per message; '--check' fails on a stale file."""
    runner = CliRunner()
    result = runner.invoke(schemas, ["export", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert len(list(tmp_path.glob("*.schema.json"))) == len(MESSAGES)
    assert runner.invoke(schemas, ["export", "--dir", str(tmp_path), "--check"]).exit_code == 0
    (tmp_path / "referral.schema.json").write_text("{}\n", encoding="utf-8")
    stale = runner.invoke(schemas, ["export", "--dir", str(tmp_path), "--check"])
    assert stale.exit_code == 1
    assert "referral.schema.json" in stale.output


def test_write_is_atomic_and_readable(tmp_path: Path) -> None:
    """Written files are world-readable and no temp files are left behind."""
    paths = write_json_schemas(tmp_path)
    assert all(p.stat().st_mode & 0o044 == 0o044 for p in paths)
    assert sorted(tmp_path.iterdir()) == sorted(paths)


def test_every_schema_is_a_valid_2020_12_schema() -> None:
    """Each exported schema is itself valid JSON Schema draft 2020-12."""
    for schema in json_schemas().values():
        Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("name", sorted(p.name for p in SAMPLES.glob("referral-*.json")), ids=str)
def test_referral_samples_validate(name: str) -> None:
    """Every referral sample validates against referral.schema.json."""
    validator("referral").validate(load(name))


def test_encompass_sample_validates() -> None:
    """The notification sample validates against encompass-notification.schema.json."""
    validator("encompass-notification").validate(load("encompass-notification.json"))


def _mutate(path: tuple[str | int, ...], value: Any) -> Any:
    def apply(doc: dict[str, Any]) -> dict[str, Any]:
        doc = copy.deepcopy(doc)
        target: Any = doc
        for key in path[:-1]:
            target = target[key]
        if value is _DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value
        return doc

    return apply


_DELETE = object()

INVALID_REFERRALS = {
    "missing victim": _mutate(("victim",), _DELETE),
    "unknown top-level group": _mutate(("victim_notes",), "free text"),
    "unknown field in a group": _mutate(("victim", "shoe_size"), 6),
    "bad purpose": _mutate(("header", "purpose"), "GOSSIP"),
    "bad risk level": _mutate(("risk", "level"), "extreme"),
    "bad DASH answer": _mutate(("risk", "dash", "answers", "q1"), "maybe"),
    "DASH question id shape": _mutate(("risk", "dash", "answers", "question1"), "yes"),
    "score above 24": _mutate(("risk", "dash_score"), 25),
    "agency id with capitals": _mutate(("header", "sender_agency"), "Kelder Police"),
    "no recipients": _mutate(("header", "recipients"), []),
    "nhs number letters": _mutate(("victim", "nhs_number"), "99900000AB"),
    "postcode shape": _mutate(("victim", "address", "postcode"), "NOT A PC"),
    "bad consent state": _mutate(("consent", "state"), "implied"),
    "override reason outside list": _mutate(("consent", "override"), {"reason": "hunch"}),
    "unsafe flag missing": _mutate(("safe_contact", "routes", 0, "safe"), _DELETE),
    "referral id not a uuid": _mutate(("header", "referral_id"), "not-a-uuid"),
}


@pytest.mark.parametrize("case", sorted(INVALID_REFERRALS), ids=str)
def test_invalid_referrals_are_rejected(case: str) -> None:
    """The referral schema rejects each invalid variant of the high-risk sample."""
    bad = INVALID_REFERRALS[case](load("referral-high-risk.json"))
    assert list(validator("referral").iter_errors(bad)), case


INVALID_NOTIFICATIONS = {
    "victim name added": _mutate(("content", "victim_name"), "Testina"),
    "parents flag false": _mutate(("content", "do_not_approach_parents"), False),
    "two recipients": _mutate(("header", "recipient"), ["a-school", "b-school"]),
    "wrong purpose": _mutate(("header", "purpose"), "MARAC"),
    "circumstances too long": _mutate(("content", "circumstances"), "x" * 1001),
}


@pytest.mark.parametrize("case", sorted(INVALID_NOTIFICATIONS), ids=str)
def test_invalid_notifications_are_rejected(case: str) -> None:
    """The notification schema rejects each invalid variant of the sample."""
    bad = INVALID_NOTIFICATIONS[case](load("encompass-notification.json"))
    assert list(validator("encompass-notification").iter_errors(bad)), case
