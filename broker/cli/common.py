"""What every ``cairn`` subcommand shares: the settings, errors as one line, delivery summaries.

A command never shows a traceback for something the operator can fix: a Cairn error becomes
its message, a configuration fault says the configuration is not valid and why. The command
groups of ``keys`` and of the agency adapters use it too, so it imports only ``broker.config``
and ``schemas`` (an import contract in pyproject.toml keeps it so).
"""

from __future__ import annotations

import socket
import tomllib
from collections.abc import Callable, Mapping
from functools import wraps
from pathlib import Path
from typing import Any, Final, ParamSpec, TypeVar
from urllib.parse import urlsplit

import click
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from broker.config import Settings, config_file, kafka_origin
from schemas.errors import CairnError

__all__ = [
    "announce_serve",
    "broker_url_mismatch",
    "broker_url_option",
    "clean_errors",
    "describe",
    "echo_kafka",
    "folder_option",
    "kafka_line",
    "load_settings",
    "settings_error",
    "settings_or_exit",
]

P = ParamSpec("P")
T = TypeVar("T")
S = TypeVar("S", bound=BaseSettings)


def _broker_url(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str:
    if value is not None:
        return value.rstrip("/")
    return settings_or_exit().broker_client_url


#: ``--broker URL`` for a command that calls the broker; without it, the ``broker_url``
#: setting (CAIRN_BROKER_URL), else https://HTTP_HOST:HTTP_PORT, where ``cairn serve`` listens.
broker_url_option: Final = click.option(
    "--broker",
    "broker_url",
    default=None,
    callback=_broker_url,
    metavar="URL",
    help="Broker base URL [default: CAIRN_BROKER_URL, else https://HTTP_HOST:HTTP_PORT, "
    "where cairn serve listens].",
)


def kafka_line(
    settings: Settings, environ: Mapping[str, str] | None = None, *, who: str = ""
) -> list[str]:
    """What ``echo_kafka`` prints: the Kafka in use (``who`` uses it) and where that came
    from, and a warning line when CAIRN_KAFKA_PORT (the local Kafka) is not among them."""
    origin, warning = kafka_origin(settings, environ)
    head = f"{who}: " if who else ""
    lines = [
        f"{head}Kafka: {settings.kafka_bootstrap_servers} ({settings.kafka_security_protocol}; "
        f"{origin if origin.startswith('from') else 'from ' + origin})"
    ]
    return [*lines, f"{head}warning: {warning}"] if warning else lines


def broker_url_mismatch(settings: Settings, hostname: str | None = None) -> str:
    """A warning when CAIRN_BROKER_URL names this host (loopback, its name, HTTP_HOST) on a
    port other than HTTP_PORT, so the commands would call another broker than this one; ''
    otherwise (another host's URL is a deliberate choice, and port 0 is chosen at bind)."""
    if settings.broker_url is None or settings.http_port == 0:
        return ""
    parts = urlsplit(settings.broker_url)
    here = {"127.0.0.1", "localhost", "::1", settings.http_host.lower()}
    here.add((hostname if hostname is not None else socket.gethostname()).lower())
    if settings.http_host in ("0.0.0.0", "::"):  # noqa: S104  (the wildcard: any local name)
        here.add("0.0.0.0")  # noqa: S104
    port = parts.port or 443
    if (parts.hostname or "").lower() not in here or port == settings.http_port:
        return ""
    return (
        f"CAIRN_BROKER_URL ({settings.broker_url}) names this host on port {port}, but this "
        f"broker listens on {settings.http_port} (CAIRN_HTTP_PORT): the commands would call "
        "another broker"
    )


def announce_serve(settings: Settings, what: str = "cairn serve") -> None:
    """Say on stderr where ``cairn serve`` listens and which Kafka it uses, and warn when
    CAIRN_BROKER_URL points the commands elsewhere on this host."""
    where = settings.served_url
    if settings.http_port == 0:
        where += " (port 0: the port chosen is logged as broker.listening)"
    click.echo(f"{what}: listening on {where}", err=True)
    echo_kafka(settings, who=what)
    if warning := broker_url_mismatch(settings):
        click.secho(f"warning: {warning}", fg="yellow", err=True)


def echo_kafka(settings: Settings, *, who: str = "") -> None:
    """Say on stderr (stdout stays the command's output) which Kafka this command uses."""
    first, *rest = kafka_line(settings, who=who)
    click.echo(first, err=True)
    for line in rest:
        click.secho(line, fg="yellow", err=True)


def _problem(message: str) -> str:
    # pydantic prefixes a validator's own ValueError; the message after it is ours.
    return message.removeprefix("Value error, ")


def settings_error(exc: Exception, cls: type[BaseSettings] = Settings) -> str:
    """What is wrong with the configuration, in the operator's terms: one line per fault, each
    naming the environment variable (and the TOML key, when a file is in force), never the
    value given (it may be a password) nor a link to a library's documentation."""
    path = config_file(must_exist=False) if issubclass(cls, Settings) else None  # TOML: Settings
    if isinstance(exc, tomllib.TOMLDecodeError):
        return f"{path} is not valid TOML: {exc}"
    if isinstance(exc, OSError):
        return f"cannot read the configuration file {path}: {exc.strerror}"
    if not isinstance(exc, ValidationError):
        return str(exc)
    prefix = str(cls.model_config.get("env_prefix", ""))
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = [str(part) for part in error["loc"]]
        name = loc[0] if loc else ""
        if error["type"] == "extra_forbidden":
            where = f"in {path}" if path is not None else "given"
            lines.append(f"{name} ({where}) is not a setting; see the README's settings table")
            continue
        if name not in cls.model_fields:  # a model-wide check: its message names the settings
            lines.append(_problem(error["msg"]))
            continue
        variable = (prefix + name).upper()
        also = f" (or {name} in {path})" if path is not None else ""
        detail = ".".join(loc[1:])
        lines.append(f"{variable}{also}{' ' + detail if detail else ''}: {_problem(error['msg'])}")
    return "; ".join(lines)


def load_settings(cls: type[S]) -> S:
    """``cls()`` (environment over the TOML file over defaults), or a ``click.ClickException``
    saying what is wrong with the configuration (``settings_error``)."""
    try:
        return cls()
    except (ValidationError, tomllib.TOMLDecodeError, OSError, ValueError, CairnError) as exc:
        raise click.ClickException(
            f"configuration is not valid: {settings_error(exc, cls)}"
        ) from None


def settings_or_exit() -> Settings:
    """The effective settings, or a one-line usage error naming what is wrong with them."""
    return load_settings(Settings)


def clean_errors(fn: Callable[P, T]) -> Callable[P, T]:
    """Turn Cairn's errors into one-line messages, never a traceback."""

    @wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except CairnError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


def describe(delivery: Any) -> str:
    """A short human summary of one delivery for a terminal: only what this recipient got."""
    d = delivery.disclosure
    head = f"[{d.recipient_agency}] {d.purpose.value} {d.referral_id} from {d.sender_agency}"
    groups = ",".join(g.label for g in d.groups)
    if d.notification is not None:
        c = d.notification.content
        return (
            f"{head}: Operation Encompass notice for {c.child_given_name} {c.child_family_name}"
            f" (born {c.child_date_of_birth}); incident {c.occurred_at:%Y-%m-%d %H:%M} "
            f"[{d.agreement}; {groups}]"
        )
    r = d.referral
    parts = [f"priority {r.header.priority.value}"]
    if r.risk is not None:
        parts.append(f"risk {r.risk.level.value}")
    if r.victim is not None:
        parts.append(f"victim {r.victim.given_name} {r.victim.family_name}")
    if r.incident is not None:
        parts.append(f"incident {r.incident.occurred_at:%Y-%m-%d %H:%M}")
    return f"{head}: {'; '.join(parts)} [{d.agreement}; {groups}]"


def folder_option(
    default: Path | None, help: str, *, show_default: bool = False
) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """``--dir``: a folder (not a file), handed to the command as ``directory``."""
    return click.option(
        "--dir",
        "directory",
        type=click.Path(file_okay=False, path_type=Path),
        default=default,
        show_default=show_default,
        help=help,
    )
