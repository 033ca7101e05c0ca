"""Fault tests: Cairn's processes killed and restarted under load, against the real local Kafka.

They start ``cairn serve`` and ``cairn auditor`` as subprocesses (tests/fault/processes.py) so
that SIGKILL hits a real process at a real instant; they need Kafka and never skip.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/fault/" in str(item.fspath):
            item.add_marker(pytest.mark.kafka)
