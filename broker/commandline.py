"""What every ``cairn`` subcommand shares: loading the settings, and errors as one line.

A command never shows a traceback for something the operator can fix: a Cairn error becomes
its message, a configuration fault says the configuration is not valid and why.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import ParamSpec, TypeVar

import click

from broker.config import Settings
from schemas.errors import CairnError

__all__ = ["clean_errors", "settings_or_exit"]

P = ParamSpec("P")
T = TypeVar("T")


def settings_or_exit() -> Settings:
    """The effective settings, or a one-line usage error naming what is wrong with them."""
    try:
        return Settings()
    except Exception as exc:  # pydantic ValidationError, TOML errors: all configuration faults
        raise click.ClickException(f"configuration is not valid: {exc}") from None


def clean_errors(fn: Callable[P, T]) -> Callable[P, T]:
    """Turn Cairn's errors into one-line messages, never a traceback."""

    @wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except CairnError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper
