"""Fixtures for the audit-log tests: a pseudonym secret, an auditor key, events from the samples."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from adapters.nhs.inbound import parse_bundle
from adapters.police.referrals import import_export
from broker.audit.checkpoint import NoteVerifier
from broker.audit.files import DEFAULT_ORIGIN
from broker.audit.store import AuditLog
from broker.policy.decide import Decision
from keys.jwk import SigningKey
from schemas.audit import submission_events
from schemas.encompass import EncompassNotification
from schemas.federation import Federation
from schemas.referral import Referral
from tests.samples import SAMPLES

SECRET = bytes(range(32))  # a fixed, fictional pseudonym secret
NOW = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)

Message = Referral | EncompassNotification


def sample_messages(federation: Federation) -> list[Message]:
    """Every referral and notice the samples folder yields, through the agencies' own adapters."""
    found: list[Message] = []
    for path in sorted(SAMPLES.iterdir()):
        if path.name.endswith(".fhir.json"):
            found.append(parse_bundle(path.read_bytes()))
        elif path.name == "encompass-notification.json":
            found.append(EncompassNotification.model_validate_json(path.read_bytes()))
        elif path.suffix == ".json":
            found.append(Referral.model_validate(json.loads(path.read_text())))
        elif path.suffix == ".jsonl":
            produced, _errors = import_export(path.read_text().splitlines(), federation, NOW)
            found.extend(o.message for o in produced)
    return found


def recipients_of(message: Message) -> tuple[str, ...]:
    if isinstance(message, EncompassNotification):
        return (message.header.recipient,)
    return message.header.recipients


def events_for(message: Message, at: datetime = NOW) -> list[bytes]:
    """The canonical events of one submission: the first recipient refused, the rest allowed."""
    recipients = recipients_of(message)
    decisions = [
        Decision(r, allowed=i > 0 or len(recipients) == 1, reasons=(f"rule:{i}",))
        for i, r in enumerate(recipients)
    ]
    return [e.canonical() for e in submission_events(message, decisions, secret=SECRET, at=at)]


@pytest.fixture(scope="session")
def messages(federation: Federation) -> list[Message]:
    return sample_messages(federation)


@pytest.fixture(scope="session")
def auditor_key() -> SigningKey:
    return SigningKey(Ed25519PrivateKey.generate())


@pytest.fixture(scope="session")
def verifiers(auditor_key: SigningKey) -> list[NoteVerifier]:
    return [NoteVerifier(DEFAULT_ORIGIN, auditor_key.private_key.public_key())]


@pytest.fixture(scope="session")
def feed(messages: list[Message]) -> list[tuple[int, bytes]]:
    """(Kafka offset, event) pairs as the auditor would consume them, with transaction gaps.

    Each submission is one Kafka transaction, whose commit marker takes an offset too.
    """
    out: list[tuple[int, bytes]] = []
    offset = 0
    for n, message in enumerate(messages):
        for event in events_for(message, NOW + timedelta(minutes=n)):
            out.append((offset, event))
            offset += 1
        offset += 1  # the transaction marker
    return out


BuildLog = Callable[..., AuditLog]


@pytest.fixture
def build_log(
    tmp_path: Path, auditor_key: SigningKey, feed: list[tuple[int, bytes]]
) -> Iterator[BuildLog]:
    """Make a log of ``size`` entries of the feed, with a checkpoint after every ``every``."""
    opened: list[AuditLog] = []

    def build(
        size: int = 20, every: int = 5, tail: int = 0, folder: Path | None = None
    ) -> AuditLog:
        log = AuditLog.open(folder or tmp_path / "audit")
        opened.append(log)
        for start in range(0, size, every):
            log.append(feed[start : min(start + every, size)])
            log.sign_checkpoint(auditor_key)
        if tail:
            log.append(feed[size : size + tail])
        return log

    yield build
    for log in opened:
        log.close()
