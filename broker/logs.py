"""Logging, configured once: structlog, JSON off a terminal and readable on one.

A processor drops personal data before anything is rendered: Cairn's own log calls pass ids and
codes only, and ``drop_personal_data`` is the safety net for a field that should not be there.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

__all__ = [
    "PERSONAL_KEYS",
    "RETRIABLE_COORDINATOR_ERRORS",
    "RetriableKafkaNoise",
    "configure_logging",
    "drop_personal_data",
]

# Keys that could carry personal data if a call site got it wrong. Matched on any part of a
# snake_case key, so "victim_name" and "address_lines" are caught too.
PERSONAL_KEYS = frozenset(
    {
        "name",
        "names",
        "given",
        "family",
        "alias",
        "aliases",
        "dob",
        "birth",
        "nhs",
        "address",
        "postcode",
        "phone",
        "email",
        "summary",
        "injuries",
        "body",
        "victim",
        "perpetrator",
        "child",
        "children",
        "text",
        "justification",
    }
)


def drop_personal_data(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Replace the value of any key that names personal data with a marker."""
    for key in list(event_dict):
        if key == "event" or key.endswith(("_id", "_ids")):
            continue  # the event name and ids are written by us and never personal
        parts = set(key.lower().split("_"))
        if parts & PERSONAL_KEYS:
            event_dict[key] = "[dropped: personal data]"
    return event_dict


#: Kafka protocol error codes a group coordinator answers while it is starting or moving:
#: COORDINATOR_LOAD_IN_PROGRESS (14), COORDINATOR_NOT_AVAILABLE (15), NOT_COORDINATOR (16).
#: All three are retriable (the Kafka protocol guide's error codes); aiokafka retries them
#: itself, yet logs each at ERROR, which on a fresh Kafka (``make demo``, before
#: __consumer_offsets exists) reads as a failure that is not one.
RETRIABLE_COORDINATOR_ERRORS = frozenset({14, 15, 16})
#: The warning aiokafka's group coordinator logs when it drops a coordinator to look it up
#: again (what one of those answers leads to); the lookup's own failures are what matter.
_COORDINATOR_DROPPED = "Marking the coordinator dead"


class RetriableKafkaNoise(logging.Filter):
    """Demote to DEBUG aiokafka's records about a group coordinator not ready yet (an error
    among their arguments with a code in ``RETRIABLE_COORDINATOR_ERRORS``, or its warning
    that it marks the coordinator dead to look it up again), and keep them only if DEBUG is
    logged. Nothing else is touched: a Kafka that cannot be reached still
    shows aiokafka's connection errors and Cairn's own (``/readyz``, ``kafka: unreachable``,
    a publish's 503), and a coordinator that never comes is a consumer that never starts,
    reported by the command that waited for it."""

    def __init__(self, level: int) -> None:
        super().__init__("aiokafka")
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("aiokafka") or record.levelno <= logging.DEBUG:
            return True
        args = record.args if isinstance(record.args, tuple) else (record.args,)
        retriable = any(getattr(a, "errno", None) in RETRIABLE_COORDINATOR_ERRORS for a in args)
        dropped = record.levelno == logging.WARNING and str(record.msg).startswith(
            _COORDINATOR_DROPPED
        )
        if not (retriable or dropped):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return self.level <= logging.DEBUG


def configure_logging(fmt: str = "auto", level: str = "info") -> None:
    """Configure structlog and route the standard library's logging (aiokafka, aiohttp) to it."""
    as_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        drop_personal_data,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer()
    )
    numeric = getattr(logging, level.upper(), logging.INFO)
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        )
    )
    handler.addFilter(RetriableKafkaNoise(numeric))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Third-party libraries are chatty at INFO; their warnings still come through.
    root.setLevel(max(numeric, logging.WARNING))
