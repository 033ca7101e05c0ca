"""``cairn audit``: verify, query, prove and export, as an IG officer runs them."""

from __future__ import annotations

import base64
import csv
import io
import json
import shutil
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.audit.checkpoint import NoteVerifier, verify_checkpoint
from broker.audit.cli import audit
from broker.audit.cosign import CosignerVerifier, add_cosignatures, cosign
from broker.audit.files import ENTRIES_FILE, note_text
from broker.audit.merkle import leaf_hash, verify_consistency, verify_inclusion
from broker.audit.proofs import verify_tlog_proof
from broker.audit.pseudonym import load_pseudonym_secret
from broker.audit.store import AuditLog
from broker.policy.decide import Decision
from keys.federation import init_federation, load_registry, load_signing_key
from keys.registry import AUDITOR_ID
from keys.store import FileStore
from schemas.audit import AuditEvent, AuditEventType, submission_events
from schemas.federation import Federation
from schemas.pseudonyms import person_pseudonyms
from tests.unit.audit.conftest import NOW, Message, recipients_of

PASSPHRASE = "audit cli unit-test passphrase 0123456789"
SMALL = Federation.model_validate(
    {
        "name": "Audit CLI test partnership",
        "agencies": [
            {"id": "test-police", "name": "Test Constabulary", "role": "police"},
            {"id": "test-idva", "name": "Test IDVA service", "role": "idva"},
        ],
    }
)
VICTIM_NHS = "999 000 0018"  # the victim of referral-high-risk.json


REASON = "SAR request ref IG-2026-0142"


class CliRunnerCall(Protocol):
    def __call__(self, *args: str) -> Result: ...


class Recorded:
    """The CLI's searches record their events here, not on Kafka (that path:
    tests/integration/test_ig_trail.py)."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    async def record(self, event: AuditEvent) -> None:
        self.events.append(event)


@dataclass(frozen=True)
class Setup:
    state: Path
    keys: Path
    audit: Path
    vkey: str
    size: int


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, messages: list[Message]) -> Setup:
    """A key store with the auditor's key and the pseudonym secret, and a log built with them."""
    state = tmp_path_factory.mktemp("state")
    store = FileStore(state / "keys")
    now = datetime.now(UTC)
    init_federation(store, SMALL, PASSPHRASE.encode(), now=now)
    secret = load_pseudonym_secret(store, PASSPHRASE.encode())
    registry = load_registry(store, now=now)
    key = load_signing_key(store, AUDITOR_ID, PASSPHRASE.encode(), registry, now=now)
    events: list[bytes] = []
    for message in messages:
        decisions = [Decision(r, True, ("rule:a",)) for r in recipients_of(message)]
        events += [
            e.canonical() for e in submission_events(message, decisions, secret=secret, at=NOW)
        ]
    folder = state / "audit"
    with AuditLog.open(folder) as log:
        for start in range(0, len(events), 20):
            log.append([(i, events[i]) for i in range(start, min(start + 20, len(events)))])
            log.sign_checkpoint(key)
    vkey = NoteVerifier(log.origin, key.private_key.public_key()).vkey()
    return Setup(state, state / "keys", folder, vkey, len(events))


@pytest.fixture
def recorded() -> Recorded:
    return Recorded()


@pytest.fixture
def run(setup: Setup, monkeypatch: pytest.MonkeyPatch, recorded: Recorded) -> CliRunnerCall:
    monkeypatch.delenv("CAIRN_CONFIG", raising=False)
    monkeypatch.delenv("CAIRN_KEY_PASSPHRASE_FILE", raising=False)
    monkeypatch.setenv("CAIRN_STATE_DIR", str(setup.state))
    monkeypatch.setenv("CAIRN_KEY_DIR", str(setup.keys))
    monkeypatch.setenv("CAIRN_KEY_PASSPHRASE", PASSPHRASE)
    runner = CliRunner()

    def call(*args: str) -> Result:
        return runner.invoke(audit, list(args), catch_exceptions=False, obj={"recorder": recorded})

    return call


def test_verify_passes_a_clean_log_with_the_registry_keys(run: CliRunnerCall, setup: Setup) -> None:
    """With the auditor's keys from the registry, a clean log verifies and exits 0."""
    result = run("verify")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"OK: {setup.size} entries")
    report = json.loads(run("verify", "--json").stdout)
    assert report["ok"] is True
    assert report["verified_size"] == setup.size


def test_verify_fails_and_names_the_first_bad_entry(
    run: CliRunnerCall, setup: Setup, tmp_path: Path
) -> None:
    """A damaged copy of the log fails with exit 1, naming the entry."""
    copy = tmp_path / "copy"
    shutil.copytree(setup.audit, copy)
    data = bytearray((copy / ENTRIES_FILE).read_bytes())
    data[24 + 24 + 3] ^= 0x20
    (copy / ENTRIES_FILE).write_bytes(bytes(data))
    result = run("--dir", str(copy), "verify")
    assert result.exit_code == 1
    assert result.stdout.startswith("FAILED: first bad place: entry 0:")


def test_verify_with_someone_elses_key_refuses_every_checkpoint(
    run: CliRunnerCall, setup: Setup
) -> None:
    """A verifier key that is not the auditor's vouches for nothing."""
    other = NoteVerifier("cairn.local/audit", Ed25519PrivateKey.generate().public_key())
    result = run("verify", "--vkey", other.vkey())
    assert result.exit_code == 1
    assert "checkpoint 0: refused" in result.stdout
    assert run("verify", "--vkey", setup.vkey).exit_code == 0


def test_verify_checks_the_witnesses_cosignatures(
    run: CliRunnerCall, setup: Setup, tmp_path: Path
) -> None:
    """A copy of the log whose latest checkpoint a witness cosigned: verify names the largest
    size that witness cosigned, given its key; without a key (this registry lists no witness)
    it says the cosignatures were not checked; a bad key is a one-line error."""
    copy = tmp_path / "copy"
    shutil.copytree(setup.audit, copy)
    witness = Ed25519PrivateKey.generate()
    verifier = CosignerVerifier("w.example/one", witness.public_key())
    with AuditLog.open(copy, witnesses=[verifier]) as log:
        note = log.published_checkpoint()
        assert note is not None
        line = cosign(note_text(note), verifier.name, witness, 1)
        log.add_cosignatures(add_cosignatures(note, line))
    checked = run("--dir", str(copy), "verify", "--witness-vkey", verifier.vkey())
    assert checked.exit_code == 0, checked.output
    assert f"cosigned: 1 checkpoints; witnesses: w.example/one up to size {setup.size}" in (
        checked.stdout
    )
    report = json.loads(
        run("--dir", str(copy), "verify", "--witness-vkey", verifier.vkey(), "--json").stdout
    )
    assert report["cosigned"] == {"w.example/one": setup.size}
    unchecked = run("--dir", str(copy), "verify")
    assert unchecked.exit_code == 0
    assert "their cosignatures were not checked (give --witness-vkey)" in unchecked.stdout
    bad = run("--dir", str(copy), "verify", "--witness-vkey", "w.example/one+0000+AAAA")
    assert bad.exit_code == 1
    assert "Traceback" not in bad.output
    assert len(bad.output.strip().splitlines()) == 1, bad.output


def test_query_by_identifiers_lists_the_persons_events(run: CliRunnerCall) -> None:
    """Querying by NHS number lists events about the person; identifiers are not echoed."""
    result = run(
        "query", "--nhs-number", VICTIM_NHS, "--reason", REASON, "--type", "disclosed",
        "--format", "json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines
    assert {line["event"]["type"] for line in lines} == {"disclosed"}
    assert "9990000018" not in result.output
    table = run("query", "--nhs-number", VICTIM_NHS, "--reason", REASON, "--purpose", "MARAC")
    assert table.exit_code == 0
    assert "disclosed" in table.stdout


def test_query_lists_the_overrides_with_who_decided_and_on_what_paragraph(
    run: CliRunnerCall,
) -> None:
    """'--override' shows each override's role/staff id and paragraph; '--override-by' narrows."""
    table = run("query", "--override", "--type", "disclosed")
    assert table.exit_code == 0, table.output
    rows = table.stdout.splitlines()
    assert rows
    assert all(" by " in row and " under dpa2018_sch1_para18" in row for row in rows)
    assert any("risk_to_children by named_nurse_safeguarding_adults/NHS-SG-0001" in r for r in rows)
    found = run("query", "--override-by", "NHS-SG-0001", "--format", "json")
    events = [json.loads(line)["event"] for line in found.stdout.splitlines()]
    assert events
    assert {e["override_by_id"] for e in events} == {"NHS-SG-0001"}
    assert {e["override_by_role"] for e in events} == {"named_nurse_safeguarding_adults"}


def test_query_needs_identifiers_that_name_someone(run: CliRunnerCall) -> None:
    """A name without a date of birth is refused with a usage message."""
    result = run("query", "--given-name", "Testina", "--family-name", "Fictitia")
    assert result.exit_code == 2
    assert "date of birth" in result.output


def test_prove_inclusion_output_verifies_against_the_signed_checkpoint(
    run: CliRunnerCall, setup: Setup
) -> None:
    """The printed inclusion proof checks against the printed, signed checkpoint."""
    result = run("prove", "--index", "7")
    assert result.exit_code == 0, result.output
    proof = json.loads(result.stdout)
    head = verify_checkpoint(proof["checkpoint"].encode(), [NoteVerifier.from_vkey(setup.vkey)])
    assert head.size == proof["tree_size"] == setup.size
    assert base64.b64decode(proof["leaf_hash"]) == leaf_hash(proof["entry"].encode())
    verify_inclusion(
        7,
        head.size,
        leaf_hash(proof["entry"].encode()),
        [base64.b64decode(p) for p in proof["inclusion_path"]],
        head.root_hash,
    )
    # The same proof as C2SP tlog-proof text, to the same checkpoint.
    proven = verify_tlog_proof(
        proof["tlog_proof"].encode(),
        proof["entry"].encode(),
        [NoteVerifier.from_vkey(setup.vkey)],
        head.origin,
    )
    assert proven == head


def test_prove_consistency_output_verifies(run: CliRunnerCall, setup: Setup) -> None:
    """The printed consistency proof links the two signed checkpoints."""
    result = run("prove", "--from", "20")
    assert result.exit_code == 0, result.output
    proof = json.loads(result.stdout)
    verifiers = [NoteVerifier.from_vkey(setup.vkey)]
    first = verify_checkpoint(proof["checkpoint_1"].encode(), verifiers)
    second = verify_checkpoint(proof["checkpoint_2"].encode(), verifiers)
    assert (proof["tree_size_1"], proof["tree_size_2"]) == (first.size, second.size)
    assert base64.b64decode(proof["root_hash_1"]) == first.root_hash
    assert base64.b64decode(proof["root_hash_2"]) == second.root_hash
    verify_consistency(
        first.size,
        second.size,
        [base64.b64decode(p) for p in proof["consistency_path"]],
        first.root_hash,
        second.root_hash,
    )


def test_export_writes_a_private_csv_and_a_json_report(run: CliRunnerCall, tmp_path: Path) -> None:
    """The SAR export writes CSV to a 0600 file, and JSON with the checkpoint."""
    out = tmp_path / "sar.csv"
    result = run("export", "--nhs-number", VICTIM_NHS, "--reason", REASON, "--output", str(out))
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert rows
    assert {r["type"] for r in rows} == {"disclosed"}
    document = json.loads(
        run("export", "--nhs-number", VICTIM_NHS, "--reason", REASON, "--format", "json").stdout
    )
    assert len(document["disclosures"]) == len(rows)
    assert document["checkpoint"].startswith("cairn.local/audit\n")


def test_a_missing_log_is_a_one_line_error(run: CliRunnerCall, tmp_path: Path) -> None:
    """Pointing at a folder with no log says so and how to fix it."""
    result = run("--dir", str(tmp_path / "nothing"), "verify")
    assert result.exit_code == 1
    assert "no audit log" in result.output


# --- the IG officer's own trail ---------------------------------------------------------------


def test_a_subject_query_without_a_reason_is_refused_and_records_nothing(
    run: CliRunnerCall, recorded: Recorded
) -> None:
    """No --reason, or one naming the person: a one-line usage error, nothing read or recorded."""
    for extra in ((), ("--reason", "looking for 999 000 0018")):
        result = run("query", "--nhs-number", VICTIM_NHS, *extra)
        assert result.exit_code == 2
        assert "reason" in result.output
        assert "Traceback" not in result.output
        assert "0018" not in result.output
    assert recorded.events == []


def test_a_subject_query_and_export_are_recorded_under_the_auditors_certificate(
    run: CliRunnerCall, recorded: Recorded, setup: Setup
) -> None:
    """By default the auditor's own certificate: an ig_search for query and an ig_export (its
    format) for export, each with the reason and the pseudonym, never the NHS number."""
    secret = load_pseudonym_secret(FileStore(setup.keys), PASSPHRASE.encode())
    assert run("query", "--nhs-number", VICTIM_NHS, "--reason", REASON).exit_code == 0
    assert run("export", "--nhs-number", VICTIM_NHS, "--reason", REASON).exit_code == 0
    search, export = recorded.events
    assert search.type is AuditEventType.IG_SEARCH
    assert export.type is AuditEventType.IG_EXPORT
    assert export.reasons == ("csv",)
    for event in recorded.events:
        assert event.officer == AUDITOR_ID
        assert event.ig_reason == REASON
        assert event.subjects == person_pseudonyms(secret, nhs_number=VICTIM_NHS)
        assert b"0018" not in event.canonical()


def test_an_enrolled_officer_searches_under_their_own_certificate(
    run: CliRunnerCall, recorded: Recorded, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """'officer request' then 'officer enrol' (the federation CA): the officer's certificate
    and key make the search theirs; a wrong passphrase or a certificate from another CA is a
    one-line error and nothing is recorded."""
    monkeypatch.setenv("CAIRN_OFFICER_PASSPHRASE", "officer passphrase, long enough")
    made = run("officer", "request", "jsmith", "--out", str(tmp_path))
    assert made.exit_code == 0, made.output
    key = tmp_path / "ig-officer.jsmith.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    enrolled = run("officer", "enrol", str(tmp_path / "ig-officer.jsmith.csr"))
    assert enrolled.exit_code == 0, enrolled.output
    cert = tmp_path / "ig-officer.jsmith.crt"
    mine = ("--officer-cert", str(cert), "--officer-key", str(key))
    assert run("query", "--nhs-number", VICTIM_NHS, "--reason", REASON, *mine).exit_code == 0
    assert [e.officer for e in recorded.events] == ["ig-officer.jsmith"]

    monkeypatch.setenv("CAIRN_OFFICER_PASSPHRASE", "not the passphrase at all")
    wrong = run("query", "--nhs-number", VICTIM_NHS, "--reason", REASON, *mine)
    assert wrong.exit_code == 1
    assert "Traceback" not in wrong.output

    other = tmp_path / "other"
    init_federation(FileStore(other), SMALL, PASSPHRASE.encode(), now=datetime.now(UTC))
    stranger = ("--officer-cert", str(other / "tls/clients/cairn-auditor.crt"))
    monkeypatch.setenv("CAIRN_OFFICER_PASSPHRASE", PASSPHRASE)
    foreign = run(
        "query", "--nhs-number", VICTIM_NHS, "--reason", REASON, *stranger,
        "--officer-key", str(other / "tls/clients/cairn-auditor.key"),
    )  # fmt: skip
    assert foreign.exit_code == 1
    assert "federation CA" in foreign.output
    assert len(recorded.events) == 1


def test_an_officer_request_for_another_name_is_refused(run: CliRunnerCall, tmp_path: Path) -> None:
    """A request whose CN is not ig-officer.<id> (an agency's CSR) gets no certificate."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from keys.pki import client_csr, new_tls_key

    csr = tmp_path / "agency.csr"
    csr.write_bytes(client_csr(new_tls_key(), "test-police", "police").public_bytes(Encoding.PEM))
    result = run("officer", "enrol", str(csr))
    assert result.exit_code == 1
    assert "ig-officer" in result.output
    assert not (tmp_path / "agency.crt").exists()
