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

__all__ = ["PERSONAL_KEYS", "configure_logging", "drop_personal_data"]

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
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Third-party libraries are chatty at INFO; their warnings still come through.
    root.setLevel(max(numeric, logging.WARNING))
