"""The state every broker shares: claims on referral ids, acknowledgements, deliveries and
their deadlines, heartbeats and the ops view's flow facts (``broker.state.records`` has the
interface, ``StateStore``).

``store_for(settings)`` picks the store: PostgreSQL when ``CAIRN_DATABASE_URL`` (or
``CAIRN_DATABASE_URL_FILE``) is set, for brokers on many machines; otherwise SQLite at
``<state_dir>/broker/state.sqlite``, for the processes of one machine. ``open_store`` also
connects and creates the schema.
"""

from __future__ import annotations

from pathlib import Path

from broker.config import Settings
from broker.state.postgres import PostgresStore, describe_url
from broker.state.records import (
    FACT_TYPES,
    OVERDUE_LATE,
    OVERDUE_NEVER,
    Claimed,
    ClaimState,
    Delivery,
    Fact,
    Published,
    Seen,
    StateStore,
)
from broker.state.sqlite import LEGACY_FILE, STATE_FILE, SqliteStore
from schemas.errors import StateUnavailable

__all__ = [
    "FACT_TYPES",
    "LEGACY_FILE",
    "OVERDUE_LATE",
    "OVERDUE_NEVER",
    "STATE_FILE",
    "ClaimState",
    "Claimed",
    "Delivery",
    "Fact",
    "PostgresStore",
    "Published",
    "Seen",
    "SqliteStore",
    "StateStore",
    "database_url",
    "describe_url",
    "open_store",
    "sqlite_path",
    "store_for",
]


def sqlite_path(settings: Settings) -> Path:
    """Where the embedded store lives."""
    return settings.state_dir / "broker" / STATE_FILE


def database_url(settings: Settings) -> str | None:
    """The PostgreSQL URL from ``database_url`` or the file ``database_url_file`` names."""
    direct = settings.database_url.get_secret_value() if settings.database_url else None
    file_name = settings.database_url_file
    if direct and file_name is not None:
        raise StateUnavailable(
            "both CAIRN_DATABASE_URL and CAIRN_DATABASE_URL_FILE are set; set only one"
        )
    if file_name is not None:
        try:
            text = file_name.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise StateUnavailable(
                f"cannot read the file named by CAIRN_DATABASE_URL_FILE ({file_name}): {reason}"
            ) from None
        url = text.strip()
        if not url:
            raise StateUnavailable(
                f"the file named by CAIRN_DATABASE_URL_FILE ({file_name}) is empty"
            )
        return url
    return direct or None


def store_for(settings: Settings, *, read_only: bool = False) -> StateStore:
    """The store the settings name, not yet connected (``open`` connects, as does any call).

    ``read_only`` opens an existing SQLite file read-only (``cairn status``); PostgreSQL is
    only read by such a caller anyway."""
    url = database_url(settings)
    if url is not None:
        return PostgresStore(
            url, pool_size=settings.database_pool_size, timeout_s=settings.database_timeout_s
        )
    return SqliteStore(
        sqlite_path(settings), busy_timeout_s=settings.sqlite_busy_timeout_s, read_only=read_only
    )


async def open_store(settings: Settings) -> StateStore:
    """The store the settings name, connected, its schema in place."""
    store = store_for(settings)
    await store.open()
    return store
