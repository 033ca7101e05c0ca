"""One configuration, visible (issue 18): every command that calls the broker takes its address
from the ``broker_url`` setting (CAIRN_BROKER_URL, else where ``cairn serve`` binds), and every
command that uses Kafka says which Kafka, warning when CAIRN_KAFKA_PORT names another."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from broker.cli import common
from broker.cli.common import broker_url_mismatch, broker_url_option, kafka_line, load_settings
from broker.cli.main import cli
from broker.config import REPO_ROOT, Settings, kafka_origin, local_kafka_bootstrap
from broker.logs import RetriableKafkaNoise


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No CAIRN_* variable from the shell running pytest, and no cairn.toml."""
    for name in [n for n in os.environ if n.startswith("CAIRN_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_the_broker_url_defaults_to_where_cairn_serve_binds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings().broker_client_url == "https://127.0.0.1:8443"
    monkeypatch.setenv("CAIRN_HTTP_PORT", "9443")
    assert Settings().broker_client_url == "https://127.0.0.1:9443"
    monkeypatch.setenv("CAIRN_HTTP_HOST", "0.0.0.0")  # noqa: S104  (a wildcard, read as loopback)
    assert Settings().broker_client_url == "https://127.0.0.1:9443"
    monkeypatch.setenv("CAIRN_HTTP_HOST", "::1")
    assert Settings().served_url == "https://[::1]:9443"
    monkeypatch.setenv("CAIRN_BROKER_URL", "https://cairn-broker.example:8443/")
    settings = Settings()
    assert settings.broker_client_url == "https://cairn-broker.example:8443"
    assert settings.served_url == "https://[::1]:9443"  # what serve binds is unchanged


def test_the_broker_url_in_the_toml_file_counts_too(tmp_path: Path) -> None:
    (tmp_path / "cairn.toml").write_text('broker_url = "https://broker.internal:7443"\n')
    assert Settings().broker_client_url == "https://broker.internal:7443"


@pytest.mark.parametrize(
    "bad", ["http://127.0.0.1:8443", "https://127.0.0.1:8443/v1", "127.0.0.1:8443", "https://:1"]
)
def test_a_broker_url_that_is_not_an_https_base_url_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, bad: str
) -> None:
    monkeypatch.setenv("CAIRN_BROKER_URL", bad)
    with pytest.raises(click.ClickException) as caught:
        load_settings(Settings)
    assert "CAIRN_BROKER_URL" in caught.value.message
    assert bad not in caught.value.message  # no value echoed back


def _commands() -> dict[str, click.Command]:
    found: dict[str, click.Command] = {}

    def walk(command: click.Command, path: str) -> None:
        found[path] = command
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                walk(sub, f"{path} {name}".strip())

    walk(cli, "")
    return found


def test_every_command_that_calls_the_broker_defaults_to_the_setting() -> None:
    """``--broker`` of every command that has one resolves through the setting: no default
    of its own, and none reads CAIRN_BROKER_URL behind the settings' back."""
    commands = _commands()
    callers = {"send", "police import", "nhs import", "nhs mesh"}
    for path in callers:
        (param,) = [p for p in commands[path].params if p.name == "broker_url"]
        assert param.default is None, path
        assert param.callback is common._broker_url, path
        assert not getattr(param, "envvar", None), path
    every = {path for path, c in commands.items() if any(p.name == "broker_url" for p in c.params)}
    assert every == callers
    (url,) = [p for p in commands["status"].params if p.name == "url"]
    assert url.default is None
    assert not getattr(url, "envvar", None)


def test_the_broker_option_resolves_given_then_setting_then_served(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    @click.command()
    @broker_url_option
    def show(broker_url: str) -> None:
        click.echo(broker_url)

    runner = CliRunner()
    monkeypatch.setenv("CAIRN_HTTP_PORT", "9555")
    assert runner.invoke(show, []).output.strip() == "https://127.0.0.1:9555"
    monkeypatch.setenv("CAIRN_BROKER_URL", "https://b.example:1234")
    assert runner.invoke(show, []).output.strip() == "https://b.example:1234"
    given = runner.invoke(show, ["--broker", "https://c.example:1/"]).output.strip()
    assert given == "https://c.example:1"
    monkeypatch.setenv("CAIRN_HTTP_PORT", "not-a-port")
    refused = runner.invoke(show, [])
    assert refused.exit_code == 1
    assert "CAIRN_HTTP_PORT" in refused.output


def test_no_broker_url_is_hard_coded_outside_the_settings() -> None:
    """The development broker's address lives in broker/config.py alone (its http_host and
    http_port defaults); no command carries a URL of its own."""
    literal = re.compile(r"127\.0\.0\.1:8443|localhost:8443|DEFAULT_BROKER_URL")
    offenders = []
    for folder in ("adapters", "broker", "gateway", "keys", "schemas"):
        for path in (REPO_ROOT / folder).rglob("*.py"):
            if path == REPO_ROOT / "broker" / "config.py":
                continue
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if literal.search(line):
                    offenders.append(f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}")
    assert offenders == []


@pytest.mark.parametrize(
    ("url", "port", "warned"),
    [
        ("https://127.0.0.1:8443", 8443, False),
        ("https://127.0.0.1:9443", 8443, True),
        ("https://localhost:9443", 8443, True),
        ("https://this-host:9443", 8443, True),
        ("https://this-host", 8443, True),  # 443
        ("https://other-host:9443", 8443, False),  # another machine's broker: deliberate
        ("https://127.0.0.1:9443", 0, False),  # port 0: chosen at bind, logged
        (None, 8443, False),
    ],
)
def test_serve_warns_when_the_broker_url_names_this_host_on_another_port(
    url: str | None, port: int, warned: bool
) -> None:
    settings = Settings(broker_url=url, http_port=port)
    warning = broker_url_mismatch(settings, hostname="this-host")
    assert bool(warning) is warned
    if warned:
        assert "CAIRN_BROKER_URL" in warning
        assert "CAIRN_HTTP_PORT" in warning


def test_serve_says_where_it_listens_and_which_kafka(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAIRN_BROKER_URL", "https://127.0.0.1:9999")
    runner = CliRunner()

    @click.command()
    def announce() -> None:
        common.announce_serve(Settings(http_port=8443))

    out = runner.invoke(announce, []).output
    assert "listening on https://127.0.0.1:8443" in out
    assert "cairn serve: Kafka: 127.0.0.1:9092 (PLAINTEXT; from the default)" in out
    assert "warning: CAIRN_BROKER_URL (https://127.0.0.1:9999)" in out


def test_the_local_kafka_port_is_the_default_bootstrap(monkeypatch: pytest.MonkeyPatch) -> None:
    """CAIRN_KAFKA_PORT starts local Kafka on a port (deploy/kafka/kafka-local): with no
    bootstrap given anywhere, the commands use that Kafka, and say so."""
    assert local_kafka_bootstrap({}) is None
    assert local_kafka_bootstrap({"CAIRN_KAFKA_PORT": "70000"}) is None
    monkeypatch.setenv("CAIRN_KAFKA_PORT", "45093")
    settings = Settings()
    assert settings.kafka_bootstrap_servers == "127.0.0.1:45093"
    assert kafka_line(settings) == ["Kafka: 127.0.0.1:45093 (PLAINTEXT; from CAIRN_KAFKA_PORT)"]


def test_an_explicit_bootstrap_wins_and_a_disagreeing_local_port_is_said(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CAIRN_KAFKA_PORT", "45093")
    monkeypatch.setenv("CAIRN_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    settings = Settings()
    assert settings.kafka_bootstrap_servers == "127.0.0.1:9092"
    first, warning = kafka_line(settings)
    assert first == "Kafka: 127.0.0.1:9092 (PLAINTEXT; from CAIRN_KAFKA_BOOTSTRAP_SERVERS)"
    assert "CAIRN_KAFKA_PORT=45093" in warning
    assert "not among them" in warning
    # the same Kafka's mutual-TLS listener (make demo) is no disagreement
    monkeypatch.setenv("CAIRN_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:45095")
    monkeypatch.setenv("CAIRN_KAFKA_SSL_PORT", "45095")
    assert kafka_origin(Settings()) == ("CAIRN_KAFKA_BOOTSTRAP_SERVERS", "")
    # from the file: it wins over the local port too, and the disagreement is said
    monkeypatch.delenv("CAIRN_KAFKA_BOOTSTRAP_SERVERS")
    (tmp_path / "cairn.toml").write_text('kafka_bootstrap_servers = "kafka-a:9092"\n')
    origin, warning = kafka_origin(Settings())
    assert origin == "the configuration file"
    assert "CAIRN_KAFKA_PORT=45093" in warning


def _record(level: int, name: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord(
        name, level, __file__, 1, "Group Coordinator Request failed: %s", args, None
    )


class _Err(Exception):
    def __init__(self, errno: int) -> None:
        super().__init__(f"[Error {errno}]")
        self.errno = errno


def test_aiokafka_coordinator_not_ready_is_debug_not_an_error() -> None:
    """The coordinator errors aiokafka logs while a fresh Kafka makes __consumer_offsets
    (codes 14, 15, 16: retriable, retried by aiokafka) are demoted; other errors are not."""
    noise = RetriableKafkaNoise(logging.WARNING)
    group = "aiokafka.consumer.group_coordinator"
    for code in (14, 15, 16):
        record = _record(logging.ERROR, group, _Err(code))
        assert noise.filter(record) is False
        assert record.levelno == logging.DEBUG
        assert record.levelname == "DEBUG"
    dropped = logging.LogRecord(
        group,
        logging.WARNING,
        __file__,
        1,
        "Marking the coordinator dead (node %s)for group %s.",
        (1, "g"),
        None,
    )
    assert noise.filter(dropped) is False
    for kept in (
        _record(logging.ERROR, group, _Err(30)),  # GroupAuthorizationFailed: a real failure
        _record(logging.ERROR, "aiokafka.conn", "connection refused"),  # Kafka down
        _record(logging.ERROR, "broker.kafka", _Err(15)),  # Cairn's own messages: untouched
    ):
        assert noise.filter(kept) is True
        assert kept.levelno == logging.ERROR
    debugging = RetriableKafkaNoise(logging.DEBUG)
    assert debugging.filter(_record(logging.ERROR, group, _Err(15))) is True


def test_the_configured_handler_carries_the_filter() -> None:
    from broker.logs import configure_logging

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("json", "warning")
        assert any(isinstance(f, RetriableKafkaNoise) for f in root.handlers[0].filters)
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
