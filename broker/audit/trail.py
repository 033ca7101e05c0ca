"""The IG officer's own trail: every subject search and export is itself an audit event.

An IG officer finds a person's disclosures by typing their identifiers; the search is then a
fact the log must hold like any other (``schemas.audit.ig_searched``: the officer, the time, the
reason they typed, the pseudonyms searched and the kinds of identifier, never the identifiers).
The event goes where every other event goes, to ``cairn.audit``, and the auditor appends it in
the topic's order, so the auditor stays the log's only writer and the log's offsets stay Kafka's
(appending beside the consumer would take an offset Kafka gives to another record). The search
is answered only once Kafka has acknowledged its event (acks=all): a search the log cannot
record is refused (``SearchNotRecorded``, a 503 over HTTP, a one-line error on the CLI), as a
referral whose audit event cannot be written is never sent.

``check_reason`` refuses a reason that repeats what was typed (a name, the NHS number's digits,
the date of birth), on top of the shapes ``schemas.audit.IgReason`` refuses for every event.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from datetime import date
from typing import Final, Protocol

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from broker.audit.errors import SearchNotRecorded
from broker.config import Settings
from broker.kafka.transport import kafka_options
from broker.receipts import audit_record
from schemas.audit import AuditEvent, IdentifierKind
from schemas.errors import FieldProblem, SchemaError

__all__ = [
    "KafkaRecorder",
    "Recorder",
    "check_reason",
    "identifier_kinds",
    "record_now",
]

log = structlog.get_logger(__name__)

_NON_DIGIT: Final = re.compile(r"\D")
_WORD: Final = re.compile(r"\w+")


class Recorder(Protocol):
    """Where an IG search's event goes; ``record`` returns once it is durable."""

    async def record(self, event: AuditEvent) -> None: ...

    async def close(self) -> None: ...


class KafkaRecorder:
    """Produces IG events to ``<prefix>.audit`` (idempotent, acks=all), one at a time."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def record(self, event: AuditEvent) -> None:
        """Send ``event`` and wait for Kafka's acknowledgement, bounded by the connect and
        publish timeouts; ``SearchNotRecorded`` if it did not come."""
        r = audit_record(self._settings.topic_prefix, event)
        async with self._lock:
            try:
                if self._producer is None:
                    producer = AIOKafkaProducer(
                        **kafka_options(self._settings), acks="all", enable_idempotence=True
                    )
                    try:
                        await asyncio.wait_for(
                            producer.start(), self._settings.kafka_connect_timeout_s
                        )
                    except BaseException:
                        await _stop(producer)
                        raise
                    self._producer = producer
                await asyncio.wait_for(
                    self._producer.send_and_wait(
                        r.topic, r.value, key=r.key, headers=list(r.headers)
                    ),
                    self._settings.publish_timeout_s,
                )
            except (KafkaError, OSError, TimeoutError) as exc:
                log.warning("audit.ig_event_unrecorded", error=type(exc).__name__)
                if self._producer is not None:
                    await _stop(self._producer)
                    self._producer = None
                raise SearchNotRecorded(
                    "the search could not be recorded in the audit log (Kafka did not "
                    "acknowledge its event), so it was not run; try again when Kafka is back"
                ) from None
        log.info("audit.ig_event_recorded", type=event.type.value, event_id=str(event.event_id))

    async def close(self) -> None:
        if self._producer is not None:
            await _stop(self._producer)
            self._producer = None


async def _stop(producer: AIOKafkaProducer) -> None:
    try:
        await asyncio.wait_for(producer.stop(), 10)
    except (KafkaError, OSError, TimeoutError):
        log.debug("audit.ig_producer_stop_failed")


async def record_now(settings: Settings, event: AuditEvent) -> None:
    """Record one event with a producer of its own (the CLI's one search)."""
    recorder = KafkaRecorder(settings)
    try:
        await recorder.record(event)
    finally:
        await recorder.close()


def identifier_kinds(
    *,
    nhs_number: str | None,
    given_name: str | None,
    family_name: str | None,
    date_of_birth: date | None,
    aliases: Sequence[str],
) -> tuple[IdentifierKind, ...]:
    """The kinds of identifier a search was given that find anyone (as ``person_pseudonyms``
    uses them): what the event and the results say was searched for."""
    kinds = []
    if nhs_number:
        kinds.append(IdentifierKind.NHS_NUMBER)
    if date_of_birth is not None and given_name and family_name:
        kinds.append(IdentifierKind.NAME_AND_DATE_OF_BIRTH)
    if date_of_birth is not None and any(a.strip() for a in aliases):
        kinds.append(IdentifierKind.ALIAS_AND_DATE_OF_BIRTH)
    return tuple(kinds)


def check_reason(
    reason: object,
    *,
    nhs_number: str | None,
    given_name: str | None,
    family_name: str | None,
    date_of_birth: date | None,
    aliases: Sequence[str],
) -> str:
    """The reason typed for a search, refused (``SchemaError`` naming ``reason``, which never
    repeats it) when missing or when it holds any identifier typed for the same search: a
    name or alias word (of 3 letters or more), the NHS number's digits or the date of birth."""
    if not isinstance(reason, str) or not reason.strip():
        raise SchemaError(
            "say why you search: a reason is recorded with every search",
            (FieldProblem("reason", "required: why you search (a case or request reference)"),),
        )
    folded = reason.casefold()
    words = set(_WORD.findall(folded))
    typed = [given_name or "", family_name or "", *aliases]
    names = {w for t in typed for w in _WORD.findall(t.casefold()) if len(w) >= 3}
    digits = _NON_DIGIT.sub("", nhs_number or "")
    repeats = bool(names & words) or (len(digits) >= 6 and digits in _NON_DIGIT.sub("", reason))
    if date_of_birth is not None:
        d = date_of_birth
        repeats = repeats or any(
            form in folded for form in (d.isoformat(), d.strftime("%d/%m/%Y"), d.strftime("%d%m%Y"))
        )
    if repeats:
        raise SchemaError(
            "the reason repeats an identifier you searched by; the log keeps the reason, so "
            "give why you search (a case or request reference), not who",
            (FieldProblem("reason", "holds an identifier typed for this search"),),
        )
    return reason.strip()
