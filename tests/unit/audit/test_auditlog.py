"""The durable audit log: appending idempotently, checkpoints, proofs, queries and the report."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import sqlite3
import stat
from datetime import timedelta
from pathlib import Path

import pytest

from broker.audit.checkpoint import NoteVerifier, verify_checkpoint
from broker.audit.errors import AuditBusy, TamperDetected
from broker.audit.files import INDEX_FILE, LATEST_FILE
from broker.audit.index import Query
from broker.audit.merkle import verify_consistency, verify_inclusion
from broker.audit.pseudonym import create_pseudonym_secret, load_pseudonym_secret
from broker.audit.report import (
    OVERRIDE_COLUMNS,
    disclosure_report,
    override_report,
    report_csv,
    report_json,
)
from broker.audit.store import AuditLog, CheckpointPolicy
from broker.audit.verify import verify
from keys.errors import KeyStoreError
from keys.jwk import SigningKey
from keys.store import MemoryStore
from schemas.audit import AuditEventType, acknowledged, delivered
from schemas.consent import OverrideReason
from schemas.errors import SchemaError
from schemas.pseudonyms import person_pseudonyms
from schemas.receipt import Acknowledgement, AcknowledgementStatus
from schemas.referral import Purpose
from tests.unit.audit.conftest import NOW, SECRET, BuildLog

Feed = list[tuple[int, bytes]]


def test_appended_events_survive_reopening(tmp_path: Path, feed: Feed) -> None:
    """What append returned for is there, in order, after the log is closed and reopened."""
    with AuditLog.open(tmp_path) as log:
        result = log.append(feed[:10])
        assert (result.appended, result.skipped, result.size) == (10, 0, 10)
        root = log.root()
    with AuditLog.open(tmp_path) as log:
        assert not log.recovery.repaired
        assert [e.data for e in log.entries()] == [event for _, event in feed[:10]]
        assert log.root() == root
        assert log.next_offset == feed[9][0] + 1


def test_the_index_is_as_private_as_the_entries(tmp_path: Path, feed: Feed) -> None:
    """index.sqlite (agencies, purposes, pseudonyms) and its WAL files are 0600 like the
    entries, also when an index made earlier with a wider mode is reopened."""
    with AuditLog.open(tmp_path) as log:
        log.append(feed[:3])
    (tmp_path / INDEX_FILE).chmod(0o644)
    with AuditLog.open(tmp_path) as log:
        log.append(feed[3:5])
        files = [p for p in tmp_path.iterdir() if p.name.startswith(INDEX_FILE)]
        assert len(files) >= 2  # the database and its write-ahead log at least
        for path in [*files, tmp_path / "entries.log"]:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name


def test_redelivered_offsets_are_skipped_once_stored(tmp_path: Path, feed: Feed) -> None:
    """Kafka redelivery after a crash appends nothing twice: the offset is the key."""
    with AuditLog.open(tmp_path) as log:
        log.append(feed[:8])
        result = log.append(feed[4:12])
        assert (result.appended, result.skipped, log.size) == (4, 4, 12)
        assert log.append(feed[:12]).appended == 0


def test_an_offset_stored_with_other_content_is_tampering(tmp_path: Path, feed: Feed) -> None:
    """Redelivering an offset with different bytes is refused, and nothing is appended."""
    with AuditLog.open(tmp_path) as log:
        log.append(feed[:5])
        with pytest.raises(TamperDetected, match="different content"):
            log.append([(feed[2][0], feed[3][1])])
        assert log.size == 5


def test_offsets_that_go_back_past_the_log_are_refused(tmp_path: Path, feed: Feed) -> None:
    """An offset below the last one that was never stored means the topic was reset."""
    with AuditLog.open(tmp_path) as log:
        log.append(feed[5:8])
        with pytest.raises(TamperDetected, match="went backwards"):
            log.append([(feed[0][0], feed[0][1])])


def test_only_canonical_audit_events_are_appended(tmp_path: Path, feed: Feed) -> None:
    """A payload that is not a canonical event is refused: the consumer must stop on it."""
    with AuditLog.open(tmp_path) as log:
        with pytest.raises(SchemaError):
            log.append([(0, b'{"not": "an event"}')])
        spaced = json.dumps(json.loads(feed[0][1]), indent=2).encode()
        with pytest.raises(SchemaError, match="canonical"):
            log.append([(0, spaced)])
        assert log.size == 0


def test_one_writer_at_a_time_and_readers_beside_it(tmp_path: Path, feed: Feed) -> None:
    """A second writer is refused while the first runs; a read-only open works beside it."""
    with AuditLog.open(tmp_path) as writer:
        writer.append(feed[:3])
        with pytest.raises(AuditBusy):
            AuditLog.open(tmp_path)
        with AuditLog.open(tmp_path, readonly=True) as reader:
            assert reader.size == 3
            assert len(reader.query(Query())) == 3
            with pytest.raises(RuntimeError, match="read-only"):
                reader.append(feed[3:4])


def test_checkpoints_are_signed_stored_and_served(
    build_log: BuildLog, auditor_key: SigningKey, verifiers: list[NoteVerifier]
) -> None:
    """Each checkpoint verifies, the latest is served from its own file, and proofs check."""
    log = build_log(size=20, every=5)
    assert len(log.checkpoints) == 4
    latest = log.latest_checkpoint()
    assert latest is not None
    assert (log.directory / LATEST_FILE).read_bytes() == latest
    head = verify_checkpoint(latest, verifiers, origin=log.origin)
    assert (head.size, head.root_hash) == (20, log.root())
    first = verify_checkpoint(log.checkpoints[0], verifiers)
    verify_consistency(5, 20, log.consistency_proof(5, 20), first.root_hash, head.root_hash)
    entry = log.entry(13)
    verify_inclusion(13, 20, entry.leaf_hash, log.inclusion_proof(13, 20), head.root_hash)
    # Nothing new: the same checkpoint, not a second one.
    assert log.sign_checkpoint(auditor_key) == latest
    assert len(log.checkpoints) == 4


def test_checkpoint_policy_counts_entries_and_time(
    tmp_path: Path, feed: Feed, auditor_key: SigningKey
) -> None:
    """A checkpoint is due after N new entries or T seconds, and never with nothing new."""
    policy = CheckpointPolicy(every_entries=5, every_s=60.0)
    with AuditLog.open(tmp_path) as log:
        assert not log.checkpoint_due(policy, now=0.0)
        log.append(feed[:4])
        log.sign_checkpoint(auditor_key, now=0.0)
        assert not log.checkpoint_due(policy, now=1.0)
        log.append(feed[4:6])
        assert not log.checkpoint_due(policy, now=1.0)
        assert log.checkpoint_due(policy, now=61.0)
        log.append(feed[6:9])
        assert log.checkpoint_due(policy, now=1.0)


def test_a_clean_log_verifies(build_log: BuildLog, verifiers: list[NoteVerifier]) -> None:
    """verify() of an untouched log finds nothing wrong and counts the unattested tail."""
    log = build_log(size=20, every=5, tail=3)
    log.close()
    report = verify(log.directory, verifiers)
    assert report.ok, report.problems
    assert (report.entries, report.checkpoints, report.verified_size) == (23, 4, 20)
    assert report.unattested == 3


def test_a_damaged_index_is_rebuilt_from_the_files(build_log: BuildLog) -> None:
    """The index is derived: garbage in its place is replaced by a rebuilt one on open."""
    log = build_log(size=10, every=10)
    folder = log.directory
    log.close()
    for suffix in ("-wal", "-shm"):
        (folder / (INDEX_FILE + suffix)).unlink(missing_ok=True)
    (folder / INDEX_FILE).write_bytes(b"this is not a database" * 100)
    with AuditLog.open(folder) as reopened:
        assert reopened.recovery.index_rebuilt
        assert len(reopened.query(Query())) == 10


def test_the_index_from_another_log_is_not_used(
    tmp_path: Path, build_log: BuildLog, feed: Feed
) -> None:
    """An index copied in from another log is recognised by the log id and rebuilt."""
    first = build_log(size=10, every=10, folder=tmp_path / "a")
    first.close()
    with AuditLog.open(tmp_path / "b") as other:
        other.append(feed[:3])
    (tmp_path / "b" / INDEX_FILE).write_bytes((tmp_path / "a" / INDEX_FILE).read_bytes())
    with AuditLog.open(tmp_path / "b") as reopened:
        assert reopened.recovery.index_rebuilt
        assert len(reopened.query(Query())) == 3


def test_queries_filter_on_each_field(build_log: BuildLog, feed: Feed) -> None:
    """Agency, purpose, basis, override, type and time each narrow the result correctly."""
    log = build_log(size=len(feed), every=len(feed))
    events = [e.event for e in log.entries()]

    def expect(query: Query, keep: object) -> None:
        want = [i for i, e in enumerate(events) if keep(e)]  # type: ignore[operator]
        assert [x.index for x in log.query(query)] == want

    expect(Query(agency="kelder-idva"), lambda e: "kelder-idva" in (e.sender, e.recipient))
    expect(Query(recipient="kelder-marac"), lambda e: e.recipient == "kelder-marac")
    expect(Query(purpose=Purpose.MARAC), lambda e: e.purpose is Purpose.MARAC)
    expect(Query(lawful_basis="cda1998_s115"), lambda e: "cda1998_s115" in e.lawful_basis)
    expect(Query(override=True), lambda e: e.override_reason is not None)
    expect(Query(override=False), lambda e: e.override_reason is None)
    expect(
        Query(override_reason=OverrideReason.RISK_TO_CHILDREN),
        lambda e: e.override_reason is OverrideReason.RISK_TO_CHILDREN,
    )
    expect(Query(types=(AuditEventType.REFUSED,)), lambda e: e.type is AuditEventType.REFUSED)
    since, until = NOW + timedelta(minutes=3), NOW + timedelta(minutes=7)
    expect(Query(since=since, until=until), lambda e: since <= e.at < until)
    assert len(log.query(Query(limit=4))) == 4


def test_the_index_finds_overrides_by_who_decided_and_the_paragraph(
    build_log: BuildLog, feed: Feed
) -> None:
    """Staff id, role code and legal paragraph each select exactly the overrides they name."""
    log = build_log(size=len(feed), every=len(feed))
    events = [e.event for e in log.entries()]
    who = next(e for e in events if e.override_by_id is not None)
    for query, keep in (
        (Query(override_by=who.override_by_id), lambda e: e.override_by_id == who.override_by_id),
        (
            Query(override_role=who.override_by_role),
            lambda e: e.override_by_role == who.override_by_role,
        ),
        (
            Query(override_paragraph="dpa2018_sch1_para18"),
            lambda e: e.override_paragraph == "dpa2018_sch1_para18",
        ),
    ):
        want = [i for i, e in enumerate(events) if keep(e)]
        assert want
        assert [x.index for x in log.query(query)] == want


def test_the_override_report_lists_who_overrode_consent_why_and_on_what_paragraph(
    build_log: BuildLog, feed: Feed
) -> None:
    """A row per disclosure or refusal under an override, naming role, staff id and paragraph."""
    log = build_log(size=len(feed), every=len(feed))
    outcomes = {AuditEventType.DISCLOSED, AuditEventType.REFUSED}
    want = [
        e.index
        for e in log.entries()
        if e.event.override_reason is not None and e.event.type in outcomes
    ]
    rows = override_report(log)
    assert want
    assert [r.leaf_index for r in rows] == want
    named = ("override_reason", "override_paragraph", "override_by_role", "override_by_id")
    for row in rows:
        assert all(getattr(row, c) for c in (*named, "sender", "recipient", "purpose", "at"))
    nurse = override_report(log, Query(override_by="NHS-SG-0001"))
    assert nurse
    assert {r.override_by_role for r in nurse} == {"named_nurse_safeguarding_adults"}
    table = list(csv.DictReader(io.StringIO(report_csv(rows, OVERRIDE_COLUMNS))))
    assert [r["override_by_id"] for r in table] == [r.override_by_id for r in rows]


def test_an_index_of_the_format_before_overrides_were_indexed_is_rebuilt(
    build_log: BuildLog,
) -> None:
    """An index without the override's decision-maker columns is rebuilt on open, not used."""
    log = build_log(size=10, every=10)
    folder = log.directory
    log.close()
    with contextlib.closing(sqlite3.connect(folder / INDEX_FILE)) as db, db:
        db.execute("UPDATE meta SET value = 'cairn-audit-index/1' WHERE key = 'format'")
    with AuditLog.open(folder) as reopened:
        assert reopened.recovery.index_rebuilt
        assert len(reopened.query(Query(override=True))) == len(
            [e for e in reopened.entries() if e.event.override_reason is not None]
        )


def test_disclosure_report_lists_each_disclosure_with_its_follow_up(
    build_log: BuildLog, tmp_path: Path, feed: Feed
) -> None:
    """The SAR report has a row per disclosure or refusal, with delivery and acknowledgement."""
    log = build_log(size=len(feed), every=len(feed))
    subject = person_pseudonyms(SECRET, nhs_number="999 000 0018")
    shared = [
        e.event for e in log.query(Query(subjects=subject, types=(AuditEventType.DISCLOSED,)))
    ]
    assert shared
    target = shared[0]
    assert target.message_id is not None
    assert target.recipient is not None
    follow = [
        delivered(target.message_id, recipient=target.recipient, at=NOW + timedelta(hours=1)),
        acknowledged(
            Acknowledgement(
                referral_id=target.message_id,
                agency=target.recipient,
                status=AcknowledgementStatus.FILED,
                acknowledged_at=NOW + timedelta(hours=2),
            )
        ),
    ]
    log.append([(log.next_offset + i, e.canonical()) for i, e in enumerate(follow)])
    rows = disclosure_report(log, subject)
    assert {r.type for r in rows} <= {"disclosed", "refused"}
    assert len([r for r in rows if r.type == "disclosed"]) == len(shared)
    first = next(
        r for r in rows if r.message_id == str(target.message_id) and r.type == "disclosed"
    )
    assert first.acknowledgement == "filed"
    assert first.delivered_at.startswith("2026-11-26T10:00")
    table = list(csv.DictReader(io.StringIO(report_csv(rows))))
    assert len(table) == len(rows)
    assert table[0]["leaf_index"] == str(rows[0].leaf_index)
    document = json.loads(report_json(rows, checkpoint=log.latest_checkpoint()))
    assert len(document["disclosures"]) == len(rows)
    assert document["checkpoint"].startswith(log.origin)


def test_pseudonym_secret_is_created_once_and_loaded(tmp_path: Path) -> None:
    """The secret is made once (never overwritten), encrypted, and loads as 32 bytes."""
    store = MemoryStore()
    passphrase = b"audit unit-test passphrase 0123456789"
    create_pseudonym_secret(store, passphrase)
    secret = load_pseudonym_secret(store, passphrase)
    assert len(secret) == 32
    assert secret not in store.read("private/pseudonym.key")
    assert store.files["private/pseudonym.key"][1] is True  # private: 0600 in a FileStore
    with pytest.raises(KeyStoreError, match="already exists"):
        create_pseudonym_secret(store, passphrase)
    assert load_pseudonym_secret(store, passphrase) == secret


def test_a_reader_ignores_what_the_writer_added_after_its_scan(
    tmp_path: Path, feed: Feed, auditor_key: SigningKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint signed between a reader's two file scans is not mistaken for tampering."""
    with AuditLog.open(tmp_path) as writer:
        writer.append(feed[:4])
        writer.sign_checkpoint(auditor_key)
        original = AuditLog._load_entries

        def scan_then_writer_moves_on(self: AuditLog, progress: object) -> None:
            original(self, None)
            writer.append(feed[4:8])
            writer.sign_checkpoint(auditor_key)

        monkeypatch.setattr(AuditLog, "_load_entries", scan_then_writer_moves_on)
        with AuditLog.open(tmp_path, readonly=True) as reader:
            assert reader.size == 4
            assert len(reader.checkpoints) == 1
