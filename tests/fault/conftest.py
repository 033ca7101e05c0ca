"""Fault tests: Cairn's processes killed and restarted under load, against the real local Kafka.

They start ``cairn serve`` and ``cairn auditor`` as subprocesses (tests/fault/processes.py) so
that SIGKILL hits a real process at a real instant; they need Kafka and never skip. The
failover test runs a three-node Kafka cluster of its own (``kafka_cluster``) and SIGKILLs one
of its nodes.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.kafka_support import LocalCluster, local_cluster


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/fault/" in str(item.fspath):
            item.add_marker(pytest.mark.kafka)


@pytest.fixture
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A three-node Kafka cluster on free loopback ports, with its own state folder; every
    node stopped afterwards. If it cannot start, the test errors (it never skips)."""
    try:
        yield from local_cluster(tmp_path_factory.mktemp("kafka-cluster"))
    except RuntimeError as exc:
        pytest.fail(f"the local three-node Kafka cluster could not start: {exc}")
