"""The ports ``cairn demo`` serves on: the configured ones, so that what runs is where the
settings say (``cairn status``, ``--broker`` and a browser find a demo kept with ``KEEP=1``).

The broker takes CAIRN_HTTP_PORT, the auditor CAIRN_AUDITOR_HTTP_PORT, the demo's gateways
CAIRN_GATEWAY_PORT and CAIRN_GATEWAY_WEB_PORT (the first gateway those, the next each two
above: 8446/8447, 8448/8449 by default). A port of 0 is any free one. A configured port in use
stops the demo with a one-line error naming its variable; a default in use (a development
broker already running on 8443, another demo) gives way to a free port, and the demo says so.
The witnesses, the MESH sandbox and the bridge have no port setting: they take free ones.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Collection, Mapping

import click

from broker.config import Settings

__all__ = [
    "GATEWAY_PORT_ENV",
    "GATEWAY_WEB_PORT_ENV",
    "auditor_port",
    "broker_port",
    "choose_port",
    "gateway_ports",
]

GATEWAY_PORT_ENV = "CAIRN_GATEWAY_PORT"
GATEWAY_WEB_PORT_ENV = "CAIRN_GATEWAY_WEB_PORT"


def _free(port: int) -> bool:
    """Whether ``port`` can be bound on the loopback address now."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


_TRIES = 64  # free ports asked of the kernel before giving up (each held until the end)


def _any_free(taken: Collection[int]) -> int:
    """A free loopback port not in ``taken``."""
    with contextlib.ExitStack() as stack:
        for _ in range(_TRIES):  # distinct ports, as each is held until the stack closes
            s = stack.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
            if port not in taken:
                return port
    raise click.ClickException("no free loopback port for the demo")


Free = Callable[[int], bool]
Say = Callable[[str], None]


def choose_port(
    port: int,
    variable: str,
    *,
    explicit: bool,
    what: str,
    taken: Collection[int] = (),
    free: Free = _free,
    say: Say = click.echo,
) -> int:
    """``port`` if it can be used, a free one for 0 or for a default in use (said), else a
    ``click.ClickException`` naming ``variable``."""
    if port == 0:
        return _any_free(taken)
    if port not in taken and free(port):
        return port
    if explicit:
        raise click.ClickException(
            f"{variable}={port}: the port is in use, so the demo's {what} cannot listen there; "
            f"stop what holds it or set {variable} to another port (0: any free one)"
        )
    chosen = _any_free(taken)
    say(f"    port {port} ({variable}'s default) is in use: the {what} takes {chosen} instead")
    return chosen


def broker_port(settings: Settings, *, free: Free = _free, say: Say = click.echo) -> int:
    """The demo broker's port: CAIRN_HTTP_PORT (default 8443)."""
    explicit = "http_port" in settings.model_fields_set
    return choose_port(
        settings.http_port, "CAIRN_HTTP_PORT", explicit=explicit, what="broker", free=free, say=say
    )


def auditor_port(settings: Settings, *, free: Free = _free, say: Say = click.echo) -> int:
    """The demo auditor's port: CAIRN_AUDITOR_HTTP_PORT (default 8444)."""
    explicit = "auditor_http_port" in settings.model_fields_set
    variable = "CAIRN_AUDITOR_HTTP_PORT"
    port = settings.auditor_http_port
    return choose_port(port, variable, explicit=explicit, what="auditor", free=free, say=say)


def _configured(environ: Mapping[str, str], variable: str, default: int) -> tuple[int, bool]:
    text = environ.get(variable)
    if text is None:
        return default, False
    if not text.strip().isdigit() or int(text) > 65535:
        raise click.ClickException(f"{variable}: {text!r} is not a port number (0-65535)")
    return int(text), True


def gateway_ports(
    index: int,
    environ: Mapping[str, str] | None = None,
    *,
    free: Free = _free,
    say: Say = click.echo,
) -> tuple[int, int]:
    """The API and web inbox ports of the demo's gateway ``index`` (0, 1): CAIRN_GATEWAY_PORT
    and CAIRN_GATEWAY_WEB_PORT (defaults 8446, 8447, the gateway settings' own), each plus
    ``2 * index`` (a configured 0 stays 0: any free port)."""
    from gateway.settings import GatewaySettings
    from gateway.web.security import WebSettings

    env = os.environ if environ is None else environ
    api, api_set = _configured(env, GATEWAY_PORT_ENV, GatewaySettings.model_fields["port"].default)
    web, web_set = _configured(env, GATEWAY_WEB_PORT_ENV, WebSettings.model_fields["port"].default)
    api = choose_port(
        api + 2 * index if api else 0,
        GATEWAY_PORT_ENV,
        explicit=api_set,
        what=f"gateway {index + 1}'s API",
        free=free,
        say=say,
    )
    web = choose_port(
        web + 2 * index if web else 0,
        GATEWAY_WEB_PORT_ENV,
        explicit=web_set,
        what=f"gateway {index + 1}'s web inbox",
        taken={api},
        free=free,
        say=say,
    )
    return api, web
