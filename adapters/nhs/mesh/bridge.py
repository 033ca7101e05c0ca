"""The outbound MESH bridge: referrals from the trust's MESH mailbox, submitted to Cairn.

``ReferralBridge.deliver_due`` is one pass over the bridge's mailbox (``CAIRN_MESH_MAILBOX``):
for each message under ``CAIRN_MESH_REFERRAL_WORKFLOW`` it

1. reads it and maps it (``referrals.read_referral``: a FHIR message, the trust's referral,
   the referral id a name-based UUID of the MESH message id);
2. signs it with the trust's key and submits it to the broker (``adapters.client``);
3. after the broker's 202, records the receipt, sends it back to the sender's mailbox under
   ``CAIRN_MESH_RECEIPT_WORKFLOW`` (MESH ``local_id``: the request's MESH message id) and only
   then acknowledges the request in MESH.

A message Cairn cannot take (not FHIR, not a referral message, wrong resources, no NHS number,
refused by the broker) gets a refusal in the sender's mailbox and is acknowledged; nothing goes
onward. A message the broker could not take for now (unreachable, 5xx, Kafka down) stays
unacknowledged and is retried on later passes after a pause doubling from
``CAIRN_MESH_RETRY_INITIAL_S`` to ``CAIRN_MESH_RETRY_MAX_S``; past ``CAIRN_MESH_GIVE_UP_S`` since
it was first seen it gets a refusal (``not-submitted-in-time``) and is acknowledged.

Exactly once across restarts: the bridge's ledger (SQLite, ``<state_dir>/mesh/<agency>.sqlite``)
keeps each message's first sight, attempts, receipt and reply. A bridge killed after the broker's
202 but before the receipt was recorded resubmits the same referral (the same id and the same
bytes: the broker answers with the original receipt and sends nothing again); one killed after
sending the reply but before the acknowledgement only acknowledges. Log lines carry MESH message
ids, referral ids and counts, never a value of a bundle. A reply MESH will not take is retried
on later passes until the give-up age, then the message is acknowledged unanswered; settled
messages are forgotten by the ledger 60 days (or the give-up age, if longer) after first sight.

Test-only fault injection: with ``CAIRN_TEST_MESH_PAUSE_FILE`` set, the bridge writes that file
after the broker's 202 and before recording or acknowledging anything, then waits (up to 60 s)
so a test can SIGKILL it there.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

from adapters.agency import Submitter
from adapters.client import SubmissionRefused
from adapters.nhs.mesh.client import MeshError, MeshMailbox, MeshMessage
from adapters.nhs.mesh.referrals import (
    GAVE_UP,
    NOT_A_MESSAGE,
    NOT_A_REFERRAL,
    NotAMessage,
    Problem,
    read_referral,
    receipt_message,
    refusal_message,
    request_header_id,
)
from adapters.nhs.mesh.settings import MeshSettings
from schemas.errors import SchemaError, TransportError
from schemas.receipt import Receipt

__all__ = ["PAUSE_FILE_ENV", "Ledger", "ReferralBridge"]

log = structlog.get_logger("cairn.mesh")
Clock = Callable[[], datetime]
PAUSE_FILE_ENV = "CAIRN_TEST_MESH_PAUSE_FILE"
_KEEP = timedelta(days=60)  # how long the ledger remembers a settled message

#: Where in a referral bundle each top-level field of a Cairn referral comes from, so that a
#: broker refusal naming a referral field points the trust at a resource of its message.
_RESOURCE_OF = {
    "header": "ServiceRequest",
    "incident": "ServiceRequest",
    "victim": "Patient",
    "safe_contact": "Patient",
    "children": "RelatedPerson",
    "risk": "RiskAssessment",
    "consent": "Consent",
}
_FIELD_OF = {"header.recipients": "performer", "header.sender_agency": "requester"}


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Entry:
    """What the ledger knows of one MESH message."""

    message_id: str
    first_seen: datetime
    attempts: int = 0
    next_at: datetime | None = None
    receipt: str | None = None  # the broker's receipt JSON, once it answered 202
    reply_id: str | None = None  # the MESH id of the reply sent back, once MESH took it
    done: bool = False  # acknowledged in MESH


class Ledger:
    """The bridge's record of the MESH messages it has seen (SQLite, one writer)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS mesh_outbound (message_id TEXT PRIMARY KEY, "
            "first_seen TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_at TEXT, "
            "receipt TEXT, reply_id TEXT, done INTEGER NOT NULL DEFAULT 0)"
        )

    def get(self, message_id: str, now: datetime) -> Entry:
        row = self._db.execute(
            "SELECT first_seen, attempts, next_at, receipt, reply_id, done FROM mesh_outbound "
            "WHERE message_id = ?",
            (message_id,),
        ).fetchone()
        if row is None:
            self._db.execute(
                "INSERT INTO mesh_outbound (message_id, first_seen) VALUES (?, ?)",
                (message_id, now.isoformat()),
            )
            return Entry(message_id, now)
        return Entry(
            message_id,
            datetime.fromisoformat(row[0]),
            int(row[1]),
            datetime.fromisoformat(row[2]) if row[2] else None,
            row[3],
            row[4],
            bool(row[5]),
        )

    def update(self, entry: Entry) -> None:
        self._db.execute(
            "UPDATE mesh_outbound SET attempts = ?, next_at = ?, receipt = ?, reply_id = ?, "
            "done = ? WHERE message_id = ?",
            (
                entry.attempts,
                entry.next_at.isoformat() if entry.next_at else None,
                entry.receipt,
                entry.reply_id,
                int(entry.done),
                entry.message_id,
            ),
        )

    def prune(self, before: datetime) -> int:
        """Forget the settled messages first seen before ``before``; how many."""
        cursor = self._db.execute(
            "DELETE FROM mesh_outbound WHERE done = 1 AND first_seen < ?", (before.isoformat(),)
        )
        return cursor.rowcount

    def close(self) -> None:
        self._db.close()


class ReferralBridge:
    """Polls the bridge's mailbox and submits the trust's referrals (see the module)."""

    def __init__(
        self,
        mesh: MeshMailbox,
        settings: MeshSettings,
        *,
        agency: str,
        submitter: Callable[[], AbstractAsyncContextManager[Submitter]],
        ledger: Ledger,
        clock: Clock = _utcnow,
    ) -> None:
        self.mesh = mesh
        self.settings = settings
        self.agency = agency
        self._submitter = submitter
        self.ledger = ledger
        self._clock = clock
        self.submitted = 0
        self.refused = 0

    async def deliver_due(self) -> int:
        """One pass over the mailbox; how many messages were settled (acknowledged)."""
        # MESH keeps a message at most days; a settled one's row is kept well past that, then
        # forgotten, so the ledger does not grow without end.
        self.ledger.prune(self._clock() - max(_KEEP, timedelta(seconds=self.settings.give_up_s)))
        ids = await self.mesh.list(self.settings.referral_workflow, self.settings.batch_max)
        settled = 0
        for message_id in ids:
            try:
                settled += await self._one(message_id)
            except MeshError as exc:  # MESH itself failed: the message stays, next pass retries
                log.warning("mesh.message_deferred", message_id=message_id, error=str(exc))
        return settled

    async def _one(self, message_id: str) -> int:
        now = self._clock()
        entry = self.ledger.get(message_id, now)
        if entry.done or entry.reply_id is not None:
            return await self._acknowledge(entry)
        if entry.next_at is not None and entry.next_at > now:
            return 0
        message = await self.mesh.fetch(message_id)
        if message.workflow_id != self.settings.referral_workflow:
            return 0  # not ours (the list's filter is a prefix match)
        request_id = request_header_id(message.body) or message_id
        if entry.receipt is not None:
            return await self._reply_receipt(entry, message, request_id)
        try:
            referral = read_referral(
                message.body,
                message_id=message_id,
                mailbox=self.mesh.mailbox,
                agency=self.agency,
            )
        except SchemaError as exc:
            kind = NOT_A_MESSAGE if isinstance(exc, NotAMessage) else NOT_A_REFERRAL
            problems = [(p.field, p.problem) for p in exc.problems] or [("(message)", str(exc))]
            return await self._refuse(entry, message, request_id, kind, str(exc), problems)
        try:
            async with self._submitter() as client:
                receipt = await client.submit(referral)
        except SubmissionRefused as exc:
            return await self._refuse(
                entry,
                message,
                request_id,
                str(exc.problem.get("type") or NOT_A_REFERRAL),
                str(exc.problem.get("title") or "refused by Cairn"),
                _broker_problems(exc.problem, message.body),
            )
        except (TransportError, OSError) as exc:
            return await self._defer(entry, message, request_id, str(exc))
        self._pause_for_tests()
        entry.receipt = receipt.model_dump_json()
        self.ledger.update(entry)
        self.submitted += 1
        log.info(
            "mesh.referral_submitted",
            message_id=message_id,
            referral_id=str(receipt.referral_id),
            attempts=entry.attempts + 1,
        )
        return await self._reply_receipt(entry, message, request_id)

    async def _reply_receipt(self, entry: Entry, message: MeshMessage, request_id: str) -> int:
        assert entry.receipt is not None
        receipt = Receipt.model_validate_json(entry.receipt)
        reply = receipt_message(
            receipt,
            request_id=request_id,
            source_mailbox=self.mesh.mailbox,
            destination_mailbox=message.sender or "",
            now=self._clock(),
        )
        return await self._reply(entry, message, reply, f"referral {receipt.referral_id}")

    async def _refuse(
        self,
        entry: Entry,
        message: MeshMessage,
        request_id: str,
        problem_type: str,
        title: str,
        problems: list[Problem],
    ) -> int:
        reply = refusal_message(
            problems,
            problem_type=problem_type,
            title=title,
            request_id=request_id,
            source_mailbox=self.mesh.mailbox,
            destination_mailbox=message.sender or "",
            now=self._clock(),
        )
        self.refused += 1
        log.info(
            "mesh.message_refused",
            message_id=message.message_id,
            problem_type=problem_type,
            problems=len(problems),
        )
        return await self._reply(entry, message, reply, "refused")

    async def _defer(self, entry: Entry, message: MeshMessage, request_id: str, why: str) -> int:
        now = self._clock()
        if now - entry.first_seen >= timedelta(seconds=self.settings.give_up_s):
            return await self._refuse(
                entry,
                message,
                request_id,
                GAVE_UP,
                "Cairn could not take the referral in time; send it again",
                [("(submission)", f"not accepted after {entry.attempts + 1} attempts")],
            )
        pause = min(
            self.settings.retry_initial_s * 2 ** min(entry.attempts, 30), self.settings.retry_max_s
        )
        entry.attempts += 1
        entry.next_at = now + timedelta(seconds=pause)
        self.ledger.update(entry)
        log.warning(
            "mesh.submission_deferred",
            message_id=message.message_id,
            attempts=entry.attempts,
            retry_in_s=pause,
            error=why,
        )
        return 0

    async def _reply(
        self, entry: Entry, message: MeshMessage, reply: dict[str, Any], what: str
    ) -> int:
        if message.sender:
            try:
                entry.reply_id = await self.mesh.send(
                    message.sender,
                    json.dumps(reply).encode(),
                    self.settings.receipt_workflow,
                    local_id=message.message_id,
                    subject=what,
                )
            except MeshError:
                # MESH will not take the reply (the sender's mailbox gone?): retried on later
                # passes, and past the give-up age the message is acknowledged unanswered.
                if self._clock() - entry.first_seen < timedelta(seconds=self.settings.give_up_s):
                    raise
                log.warning("mesh.reply_given_up", message_id=message.message_id)
                entry.reply_id = ""
        else:
            entry.reply_id = ""  # nobody to answer: the message is still acknowledged
        self.ledger.update(entry)
        return await self._acknowledge(entry)

    async def _acknowledge(self, entry: Entry) -> int:
        await self.mesh.acknowledge(entry.message_id)
        entry.done = True
        self.ledger.update(entry)
        log.info("mesh.message_acknowledged", message_id=entry.message_id)
        return 1

    def _pause_for_tests(self) -> None:
        marker = os.environ.get(PAUSE_FILE_ENV)
        if not marker:
            return
        Path(marker).write_text(str(os.getpid()))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the test kills the process here
            time.sleep(0.1)

    async def close(self) -> None:
        self.mesh.close()
        self.ledger.close()


def _broker_problems(problem: dict[str, Any], body: bytes) -> list[Problem]:
    """The broker's problems, each at the resource of the message its referral field came from."""
    try:
        raw = json.loads(body)
        kinds = [e["resource"]["resourceType"] for e in raw["entry"]]
    except (ValueError, KeyError, TypeError):
        kinds = []
    found: list[Problem] = []
    for error in problem.get("errors", []) or []:
        if not isinstance(error, dict):
            continue
        field, text = str(error.get("field", "")), str(error.get("problem", ""))
        kind = _RESOURCE_OF.get(field.split(".")[0])
        path = "Bundle"
        if kind is not None and kind in kinds:
            path = f"Bundle.entry[{kinds.index(kind)}].resource"
            sub = next((v for k, v in _FIELD_OF.items() if field.startswith(k)), None)
            if sub is not None:
                path += f".{sub}"
        found.append((path, f"{field}: {text}" if field else text))
    if not found:
        found.append(("Bundle", str(problem.get("detail") or problem.get("title") or "refused")))
    return found
