"""``cairn evidence export`` and ``verify`` over a real key store and audit log files."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from broker.audit.store import AuditLog
from broker.cli.evidence import evidence
from broker.policy.decide import Decision
from keys.envelope import seal_disclosure
from keys.federation import init_federation, load_registry, load_signing_key
from keys.registry import AUDITOR_ID, BROKER_ID
from keys.store import FileStore
from schemas.audit import disclosure_digest_of, submission_events
from schemas.referral import Referral
from tests.samples import sample
from tests.unit.audit.conftest import SECRET
from tests.unit.keys.conftest import SMALL

PASSPHRASE = "evidence cli test passphrase 0123456789"
RECIPIENT = "test-idva"


@dataclass(frozen=True)
class Setup:
    state: Path
    jwe: Path
    referral_id: str


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    state = tmp_path_factory.mktemp("state")
    store = FileStore(state / "keys")
    now = datetime.now(UTC).replace(microsecond=0)
    init_federation(store, SMALL, PASSPHRASE.encode(), now=now)
    registry = load_registry(store, now=now)
    broker = load_signing_key(store, BROKER_ID, PASSPHRASE.encode(), registry, now=now)
    auditor = load_signing_key(store, AUDITOR_ID, PASSPHRASE.encode(), registry, now=now)
    data = sample()
    data["header"]["sender_agency"] = "test-police"
    data["header"]["recipients"] = [RECIPIENT]
    referral = Referral.model_validate(data)
    rid = str(referral.header.referral_id)
    payload = json.dumps({"referral_id": rid, "recipient_agency": RECIPIENT}).encode()
    jwe = seal_disclosure(payload, broker, registry, recipient=RECIPIENT, now=now)
    events = submission_events(
        referral,
        [Decision(RECIPIENT, allowed=True, reasons=("rule:1",))],
        secret=SECRET,
        at=now,
        disclosure_digests={RECIPIENT: disclosure_digest_of(jwe)},
    )
    with AuditLog.open(state / "audit") as log:
        log.append([(i, e.canonical()) for i, e in enumerate(events)])
        log.sign_checkpoint(auditor)
    (state / "d.jwe").write_bytes(jwe + b"\n")
    return Setup(state, state / "d.jwe", rid)


@pytest.fixture
def run(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CAIRN_CONFIG", "CAIRN_KEY_PASSPHRASE_FILE", "CAIRN_REGISTRY_ROOT_KID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CAIRN_STATE_DIR", str(setup.state))
    monkeypatch.setenv("CAIRN_KEY_DIR", str(setup.state / "keys"))
    monkeypatch.setenv("CAIRN_KEY_PASSPHRASE", PASSPHRASE)


def call(*args: str) -> Result:
    return CliRunner().invoke(evidence, list(args), catch_exceptions=False)


@pytest.mark.usefixtures("run")
def test_export_then_verify_says_what_the_pack_proves(setup: Setup, tmp_path: Path) -> None:
    out = tmp_path / "pack.json"
    args = ["--referral", setup.referral_id, "--recipient", RECIPIENT, "--jwe", str(setup.jwe)]
    result = call("export", *args, "-o", str(out))
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_bytes())["format"] == "cairn-evidence/1"
    result = call("verify", str(out))
    assert result.exit_code == 0, result.output
    assert f"referral {setup.referral_id} was disclosed to {RECIPIENT}" in result.stdout
    # A JWE that is not the one delivered: refused in one line, naming the kind.
    doc = json.loads(out.read_bytes())
    doc["jwe"] = doc["jwe"][:-1] + ("A" if doc["jwe"][-1] != "A" else "B")
    out.write_text(json.dumps(doc))
    result = call("verify", str(out))
    assert result.exit_code == 1
    assert "the evidence does not verify: disclosure:" in result.output
    assert "Traceback" not in result.output


@pytest.mark.usefixtures("run")
def test_export_of_an_unknown_disclosure_is_a_one_line_error(setup: Setup) -> None:
    result = call(
        "export",
        "--referral",
        "00000000-0000-4000-8000-000000000000",
        "--recipient",
        RECIPIENT,
        "--jwe",
        str(setup.jwe),
    )
    assert result.exit_code == 1
    assert "no disclosed event of referral" in result.output
