"""Topics for a replicated Kafka: min.insync.replicas from the settings, refused when impossible."""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from broker.cli.main import cli
from broker.config import Settings
from broker.kafka.topics import federation_topics
from schemas.federation import Federation


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from no CAIRN_* variables, whatever the shell running pytest set."""
    for name in [n for n in os.environ if n.startswith("CAIRN_")]:
        monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("replication", "setting", "effective"),
    [(1, None, 1), (2, None, 1), (3, None, 2), (5, None, 4), (3, 3, 3), (3, 1, 1), (1, 1, 1)],
)
def test_min_insync_is_the_setting_or_one_less_than_replication(
    replication: int, setting: int | None, effective: int
) -> None:
    """Unset, min.insync.replicas lets one replica be lost without stopping writes."""
    s = Settings(topic_replication_factor=replication, topic_min_insync_replicas=setting)
    assert s.min_insync_replicas == effective


@pytest.mark.parametrize(("replication", "insync"), [(1, 2), (3, 4), (2, 5)])
def test_min_insync_above_replication_is_refused(replication: int, insync: int) -> None:
    """More in-sync replicas than replicas could never be met: the settings say so."""
    with pytest.raises(ValidationError, match="topic_min_insync_replicas") as caught:
        Settings(topic_replication_factor=replication, topic_min_insync_replicas=insync)
    assert f"({insync}) is more than topic_replication_factor ({replication})" in str(caught.value)


def test_min_insync_above_replication_is_a_one_line_cli_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """'cairn topics create' with an impossible pair stops before Kafka, without a traceback."""
    monkeypatch.setenv("CAIRN_TOPIC_REPLICATION_FACTOR", "1")
    monkeypatch.setenv("CAIRN_TOPIC_MIN_INSYNC_REPLICAS", "2")
    result = CliRunner().invoke(cli, ["topics", "create"])
    assert result.exit_code == 1
    assert "configuration is not valid" in result.output
    assert "topic_min_insync_replicas (2) is more than" in result.output
    assert "Traceback" not in result.output


def test_replicated_topics_carry_min_insync(federation: Federation) -> None:
    """With replication over 1 every topic gets min.insync.replicas, beside its own config."""
    specs = federation_topics(federation, "p", replication_factor=3, min_insync_replicas=2)
    assert specs
    assert all(s.config["min.insync.replicas"] == "2" for s in specs)
    ledger = next(s for s in specs if s.name == "p.ledger")
    assert ledger.config["cleanup.policy"] == "compact"


def test_unreplicated_topics_leave_min_insync_to_kafka(federation: Federation) -> None:
    """With one replica no topic names min.insync.replicas (a single node's default is 1)."""
    specs = federation_topics(federation, "p")
    assert all("min.insync.replicas" not in s.config for s in specs)


@pytest.mark.parametrize(("replication", "insync"), [(1, 2), (3, 0), (3, 4)])
def test_impossible_min_insync_is_refused_by_the_topics_too(
    federation: Federation, replication: int, insync: int
) -> None:
    """Called directly with a pair no settings allow, federation_topics refuses it."""
    with pytest.raises(ValueError, match=r"min\.insync\.replicas"):
        federation_topics(
            federation, "p", replication_factor=replication, min_insync_replicas=insync
        )
