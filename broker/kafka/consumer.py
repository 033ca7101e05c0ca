"""What every Cairn consumer does with a record it cannot handle, and when Kafka goes away.

Three consumers follow Kafka topics: the broker's receipts loop (``broker.receipts``), the
auditor (``broker.audit.service``) and each agency's inbox (``adapters.inbox``). They share one
treatment, so that no record can stop a consumer and no outage can leave one stuck:

- **A record the consumer cannot handle is that record's fault.** Any exception raised while
  decoding, verifying or validating it (a ``RecursionError`` from a deeply nested header as
  much as a bad signature) dead-letters it: ``dead_letter`` copies it to ``<prefix>.dlq`` with
  the original bytes as the value (sealed or signed already: never decoded into the clear),
  the record's id headers where they read as ids, and headers naming its source topic,
  partition and offset, the consumer and a reason code (``reason_code``). The consumer then
  commits past it (in the same Kafka transaction where it is transactional), counts it
  (``cairn_consumer_dead_letters{consumer,reason}``) and handles the next record: a poison
  record is never retried, and never stops the records behind it.
- **Kafka failing is no record's fault** (``is_infrastructure``: ``KafkaError``, ``OSError``,
  timeouts, and our own ``InfrastructureError`` such as an unusable registry). The consumer
  drops its clients and reconnects after a pause that doubles from
  ``consumer_retry_initial_s`` up to ``consumer_retry_max_s`` (``Backoff``), then resumes from
  what it last committed.
- **A consumer that Kafka has forgotten is recreated.** ``Watchdog`` notices one that has had
  nothing for ``consumer_stall_s`` while the end of one of its partitions is ahead of it (an
  ``end_offsets`` answer, which for read_committed is the last stable offset, so an open
  transaction is not mistaken for a stall), or while Kafka does not answer at all.
- **Closing a client never stops its owner, and leaves nothing of it behind.** After a Kafka
  restart aiokafka's ``AIOKafkaConsumer.stop()`` can raise ``CancelledError``: its fetcher
  cancels the tasks still backing off from failed fetches and awaits them unguarded
  (aio-libs/aiokafka#647). ``close`` swallows that one unless our own task is being cancelled.
  The auditor used to take it for its own cancellation while reconnecting, and stopped
  following ``cairn.audit`` for good. A ``stop()`` that does not finish in time (its group
  coordinator waiting on a rebalance) has its background tasks cancelled: a consumer whose
  heartbeat outlived it kept partitions of its group that nobody read.
- **A group consumer subscribes after it has started**, so that ``start()`` does not wait for
  the group's rebalance (it can take a session timeout after an unclean stop): a join cut
  short by a timeout leaves a stale member behind, and each retry added another.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import structlog
from aiokafka import TopicPartition
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    KafkaError,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
)

from broker.config import Settings
from broker.kafka.transport import Record
from schemas.errors import InfrastructureError, InputError, SchemaError, TransportError

__all__ = [
    "DLQ_CONSUMER",
    "DLQ_OFFSET",
    "DLQ_PARTITION",
    "DLQ_REASON",
    "DLQ_TOPIC",
    "Backoff",
    "ConsumerStalled",
    "CountDeadLetter",
    "KafkaNotAuthorized",
    "Retry",
    "Watchdog",
    "close",
    "dead_letter",
    "dlq_topic",
    "follow_until_stopped",
    "is_infrastructure",
    "lag",
    "not_authorized",
    "pause",
    "reason_code",
]

log = structlog.get_logger(__name__)

DLQ_REASON: Final = "cairn-dlq-reason"  # why: a reason code
DLQ_CONSUMER: Final = "cairn-dlq-consumer"  # who gave up on it: receipts, auditor, inbox
DLQ_TOPIC: Final = "cairn-dlq-topic"  # where it came from
DLQ_PARTITION: Final = "cairn-dlq-partition"
DLQ_OFFSET: Final = "cairn-dlq-offset"

# The headers of a Cairn record that carry ids and codes (broker.envelope, broker.receipts,
# adapters.inbox); only these are copied to a dead letter, and only when they read as ids.
_ID_HEADERS: Final = (
    "cairn-referral-id",
    "cairn-sender",
    "cairn-recipient",
    "cairn-agency",
    "cairn-purpose",
    "cairn-event-type",
    "cairn-schema-version",
    "cairn-request-id",
)
_ID: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
_CODE: Final = re.compile(r"^[a-z][a-z0-9_.]{0,63}$")

#: Count one dead letter: (consumer name, reason code).
CountDeadLetter = Callable[[str, str], None]


def dlq_topic(prefix: str) -> str:
    """The one dead-letter topic of a federation's topics."""
    return f"{prefix}.dlq"


def reason_code(exc: BaseException) -> str:
    """A short code for why a record could not be handled; never the exception's message.

    A verification error names its own code (``bad_signature``, ``malformed``, ...); an input
    error a rule code where it carries one; anything else that escaped decoding is
    ``unreadable``.
    """
    reason = getattr(exc, "reason", None)
    if reason is not None and _CODE.fullmatch(str(reason)):
        return str(reason)
    if isinstance(exc, InputError):
        if exc.reasons and _CODE.fullmatch(exc.reasons[0]):
            return exc.reasons[0]
        return "schema_invalid" if isinstance(exc, SchemaError) else "refused"
    return "unreadable"


# Kafka's authorizer said no (broker.kafka.acls): reconnecting cannot change that.
_AUTHORIZATION_ERRORS: Final = (
    TopicAuthorizationFailedError,
    GroupAuthorizationFailedError,
    ClusterAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
)


class KafkaNotAuthorized(TransportError):
    """Kafka refused this principal (its certificate's CN, or its SASL user) what it asked:
    the credentials are another principal's, or the ACLs were not created."""


def not_authorized(exc: BaseException, what: str) -> KafkaNotAuthorized | None:
    """A ``KafkaNotAuthorized`` saying what was refused, if ``exc`` is Kafka's authorizer
    refusing ``what`` (a topic, a group); None for any other error."""
    if not isinstance(exc, _AUTHORIZATION_ERRORS):
        return None
    return KafkaNotAuthorized(
        f"Kafka refused these credentials {what} ({type(exc).__name__}): check that "
        "CAIRN_KAFKA_SSL_CERT_FILE (or CAIRN_KAFKA_SASL_USERNAME) is this agency's or "
        "service's own, and that 'cairn topics create' has applied the ACLs"
    )


def is_infrastructure(exc: BaseException) -> bool:
    """Whether ``exc`` is Kafka, the network or our own dependencies failing (not the record)."""
    return isinstance(exc, KafkaError | OSError | TimeoutError | InfrastructureError)


def dead_letter(
    topic: str,
    consumer: str,
    msg: Any,
    reason: str,
    ids: Mapping[str, str] | None = None,
) -> Record:
    """The dead letter, for ``topic`` (``dlq_topic``), of the consumed record ``msg``: its
    bytes, its ids, where it came from, which consumer gave up on it and why.

    ``ids`` adds id headers the consumer has read from the record (they override the record's
    own); values that do not read as ids are left out, so a hostile producer's header cannot
    carry free text into the dead-letter topic.
    """
    found: dict[str, str] = {}
    for name, raw in msg.headers or ():
        if name in _ID_HEADERS and name not in found and isinstance(raw, bytes):
            text = raw.decode("ascii", "replace")
            if _ID.fullmatch(text):
                found[name] = text
    for name, text in (ids or {}).items():
        if name in _ID_HEADERS and _ID.fullmatch(text):
            found[name] = text
    headers = [(name, text.encode()) for name, text in found.items()]
    headers += [
        (DLQ_REASON, (reason if _CODE.fullmatch(reason) else "unreadable").encode()),
        (DLQ_CONSUMER, consumer.encode()),
        (DLQ_TOPIC, str(msg.topic).encode()),
        (DLQ_PARTITION, str(int(msg.partition)).encode()),
        (DLQ_OFFSET, str(int(msg.offset)).encode()),
    ]
    key = msg.key if isinstance(msg.key, bytes) else b""
    value = msg.value if isinstance(msg.value, bytes) else b""
    return Record(topic=topic, key=key, value=value, headers=tuple(headers))


# --- reconnection -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Retry:
    """How a consumer waits for Kafka (the ``consumer_*`` settings, in seconds)."""

    initial_s: float = 0.5  # the first pause before reconnecting
    max_s: float = 30.0  # the longest pause
    stall_s: float = 30.0  # nothing read while behind (or Kafka silent) for this long: recreate
    wait_s: float = 900.0  # how long a consumer with a caller waiting (cairn inbox) waits
    connect_s: float = 10.0  # one connection attempt or Kafka request

    @classmethod
    def from_settings(cls, settings: Settings) -> Retry:
        return cls(
            initial_s=settings.consumer_retry_initial_s,
            max_s=max(settings.consumer_retry_max_s, settings.consumer_retry_initial_s),
            stall_s=settings.consumer_stall_s,
            wait_s=settings.consumer_kafka_wait_s,
            connect_s=settings.kafka_connect_timeout_s,
        )


class Backoff:
    """Pauses between reconnection attempts: ``initial_s``, doubling, at most ``max_s``."""

    def __init__(self, retry: Retry) -> None:
        self._retry = retry
        self._next = retry.initial_s

    def next(self) -> float:
        """The pause before the next attempt; the one after it is twice as long (bounded)."""
        delay = self._next
        self._next = min(self._next * 2, self._retry.max_s)
        return min(delay, self._retry.max_s)

    def reset(self) -> None:
        """Connected again: the next failure starts over from the shortest pause."""
        self._next = self._retry.initial_s


async def pause(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` or until ``stop`` is set; True if it was set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


async def follow_until_stopped(
    stop: asyncio.Event,
    follow: Callable[[Backoff], Awaitable[None]],
    retry: Retry,
    *,
    event: str,
    reconnected: Callable[[], None],
) -> None:
    """Run ``follow`` until ``stop``; after any failure pause (bounded, doubling) and run it
    again, calling ``reconnected`` and logging ``event`` each time. Kafka failing is expected
    (a warning); anything else (the disk, a bug) is an error, retried the same bounded way
    rather than ending the consumer. ``follow`` resets the backoff once it is connected."""
    backoff = Backoff(retry)
    while not stop.is_set():
        try:
            await follow(backoff)
        except Exception as exc:
            delay = backoff.next()
            reconnected()
            report = log.warning if is_infrastructure(exc) else log.error
            report(event, error=type(exc).__name__, retry_in_s=delay)
            await pause(stop, delay)


async def close(client: Any, timeout_s: float = 5.0) -> None:
    """Stop an aiokafka client within ``timeout_s``, whatever it raises (see the module
    docstring); only our own task's cancellation goes through."""
    try:
        await asyncio.wait_for(client.stop(), timeout_s)
        return
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        log.info("kafka.close_interrupted", client=type(client).__name__)
    except Exception as exc:
        log.info("kafka.close_failed", client=type(client).__name__, error=type(exc).__name__)
    # stop() did not finish: end what the client still runs, then close its connections
    # (briefly: an owner stopping waits for this, and a socket close needs no answer).
    _abandon(client)
    connections = getattr(client, "_client", None) or getattr(client, "client", None)
    if connections is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(connections.close(), min(timeout_s, 2.0))


# A consumer's background tasks (aiokafka 0.14): the group coordinator's and the fetcher's.
_COORDINATOR_TASKS: Final = (
    "_coordination_task",
    "_heartbeat_task",
    "_commit_refresh_task",
    "_reset_committed_task",
)


def _abandon(client: Any) -> None:
    """Cancel the background tasks of a consumer whose ``stop()`` did not finish.

    Left running, its heartbeat keeps it a member of its group (reconnecting as it needs):
    Kafka goes on assigning it partitions that nobody reads, and the consumer that replaces
    it waits on them for ever, caught up on the partitions it got and never told of the rest.
    """
    if hasattr(client, "_closed"):
        client._closed = True  # a later stop() is then a no-op, not a second wait
    coordinator = getattr(client, "_coordinator", None)
    fetcher = getattr(client, "_fetcher", None)
    tasks = [getattr(coordinator, name, None) for name in _COORDINATOR_TASKS]
    tasks += [getattr(fetcher, "_fetch_task", None), *getattr(fetcher, "_pending_tasks", ())]
    for task in tasks:
        if isinstance(task, asyncio.Task) and not task.done():
            task.cancel()


class ConsumerStalled(KafkaError):  # type: ignore[misc]  # aiokafka ships no types
    """The consumer read nothing for ``stall_s`` although Kafka has more (or is silent)."""


async def lag(consumer: Any, partitions: Iterable[TopicPartition], timeout_s: float) -> int:
    """How many offsets the consumer is behind the (last stable) end of ``partitions``; raises
    ``ConsumerStalled`` if Kafka does not answer within ``timeout_s``."""
    tps = list(partitions)
    if not tps:
        return 0
    try:
        async with asyncio.timeout(timeout_s):
            ends = await consumer.end_offsets(tps)
            positions = {tp: await consumer.position(tp) for tp in tps}
    except (KafkaError, OSError, TimeoutError) as exc:
        raise ConsumerStalled(f"Kafka did not answer ({type(exc).__name__})") from exc
    return sum(max(0, ends.get(tp, 0) - positions[tp]) for tp in tps)


class Watchdog:
    """Notices a consumer that reads nothing although its partitions have more to read.

    Call ``progressed`` after every non-empty fetch and ``check`` after every empty one.
    ``check`` asks Kafka at most once every ``stall_s``; a consumer found behind is looked at
    again shortly after, and called stalled only if it is still behind at the same position
    (records produced a moment ago are not a stall).
    """

    def __init__(self, retry: Retry, clock: Callable[[], float] = time.monotonic) -> None:
        self._retry = retry
        self._clock = clock
        self._since = clock()
        self._suspect: dict[TopicPartition, int] = {}  # behind at these positions, last time

    def progressed(self) -> None:
        self._since = self._clock()
        self._suspect = {}

    def due(self) -> bool:
        wait = min(self._retry.stall_s, 2.0) if self._suspect else self._retry.stall_s
        return self._clock() - self._since >= wait

    async def check(self, consumer: Any, partitions: Iterable[TopicPartition]) -> None:
        """Raise ``ConsumerStalled`` if the consumer is behind and not moving, or Kafka is
        silent; return quietly when it is simply caught up."""
        if not self.due():
            return
        tps = list(partitions)
        self._since = self._clock()
        if not tps:
            return
        try:
            async with asyncio.timeout(self._retry.connect_s):
                ends = await consumer.end_offsets(tps)
                positions = {tp: await consumer.position(tp) for tp in tps}
        except (KafkaError, OSError, TimeoutError) as exc:
            raise ConsumerStalled(f"Kafka did not answer ({type(exc).__name__})") from exc
        behind = {tp: pos for tp, pos in positions.items() if ends.get(tp, 0) > pos}
        stuck = {tp for tp, pos in behind.items() if self._suspect.get(tp) == pos}
        self._suspect = behind
        if stuck:
            self._suspect = {}
            lag = sum(ends[tp] - positions[tp] for tp in stuck)
            raise ConsumerStalled(f"{lag} offset(s) behind and not moving")
