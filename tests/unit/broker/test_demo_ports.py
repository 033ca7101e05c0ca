"""``cairn demo`` serves on the configured ports (broker.cli.demo_ports): CAIRN_HTTP_PORT,
CAIRN_AUDITOR_HTTP_PORT, CAIRN_GATEWAY_PORT and CAIRN_GATEWAY_WEB_PORT; 0 is any free port, a
default in use gives way (said), a configured port in use is an error naming its variable."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import click
import pytest

from broker.cli.demo_ports import auditor_port, broker_port, choose_port, gateway_ports
from broker.config import Settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in [n for n in os.environ if n.startswith("CAIRN_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def everything_free(_port: int) -> bool:
    return True


def nothing_free(_port: int) -> bool:
    return False


def test_the_defaults_are_the_settings_own() -> None:
    settings = Settings()
    assert broker_port(settings, free=everything_free) == 8443
    assert auditor_port(settings, free=everything_free) == 8444
    assert gateway_ports(0, {}, free=everything_free) == (8446, 8447)
    assert gateway_ports(1, {}, free=everything_free) == (8448, 8449)


def test_configured_ports_are_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAIRN_HTTP_PORT", "9443")
    monkeypatch.setenv("CAIRN_AUDITOR_HTTP_PORT", "9444")
    settings = Settings()
    assert broker_port(settings, free=everything_free) == 9443
    assert auditor_port(settings, free=everything_free) == 9444
    env = {"CAIRN_GATEWAY_PORT": "9500", "CAIRN_GATEWAY_WEB_PORT": "9600"}
    assert gateway_ports(0, env, free=everything_free) == (9500, 9600)
    assert gateway_ports(1, env, free=everything_free) == (9502, 9602)


def test_port_zero_is_any_free_one() -> None:
    settings = Settings(http_port=0)
    port = broker_port(settings, free=nothing_free)
    assert port > 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # it was free
    api, web = gateway_ports(0, {"CAIRN_GATEWAY_PORT": "0", "CAIRN_GATEWAY_WEB_PORT": "0"})
    assert api > 0
    assert web > 0
    assert api != web


def test_a_configured_port_in_use_is_an_error_naming_its_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CAIRN_HTTP_PORT", "9443")
    with pytest.raises(click.ClickException, match="CAIRN_HTTP_PORT=9443: the port is in use"):
        broker_port(Settings(), free=nothing_free)
    with pytest.raises(click.ClickException, match="CAIRN_GATEWAY_WEB_PORT=9600"):
        gateway_ports(0, {"CAIRN_GATEWAY_WEB_PORT": "9600"}, free=lambda p: p != 9600)
    with pytest.raises(click.ClickException, match="CAIRN_GATEWAY_PORT: 'x' is not a port"):
        gateway_ports(0, {"CAIRN_GATEWAY_PORT": "x"})


def test_a_default_in_use_gives_way_to_a_free_port_and_says_so() -> None:
    said: list[str] = []
    port = auditor_port(Settings(), free=nothing_free, say=said.append)
    assert port != 8444
    assert said == [
        f"    port 8444 (CAIRN_AUDITOR_HTTP_PORT's default) is in use: the auditor takes {port} "
        "instead"
    ]


def test_a_port_really_in_use_is_seen() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        busy = int(held.getsockname()[1])
        with pytest.raises(click.ClickException, match=f"CAIRN_X={busy}"):
            choose_port(busy, "CAIRN_X", explicit=True, what="thing")
        assert choose_port(busy, "CAIRN_X", explicit=False, what="thing", say=print) != busy
