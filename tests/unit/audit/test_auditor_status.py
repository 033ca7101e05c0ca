"""The auditor's own figures (issue 18): ``Auditor.status``, its lag measure, and the public
``GET /v1/audit/status`` route (numbers and codes only, valid under the OpenAPI schema)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from aiokafka import TopicPartition
from jsonschema import Draft202012Validator

from broker.audit.openapi import auditor_document
from broker.audit.service import Auditor, auditor_app
from broker.config import Settings
from keys import AUDITOR_ID
from tests.conftest import FederationKeys
from tests.samples import all_personal_values

Feed = list[tuple[int, bytes]]
TP = TopicPartition("cairn.audit", 0)


class FakeConsumer:
    """What ``broker.kafka.consumer.lag`` asks of a consumer, counted."""

    def __init__(self, end: int, position: int) -> None:
        self.end, self.at, self.asked = end, position, 0

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        self.asked += 1
        return {tp: self.end for tp in tps}

    async def position(self, _tp: TopicPartition) -> int:
        return self.at


def _schema() -> dict[str, Any]:
    get = auditor_document()["paths"]["/v1/audit/status"]["get"]
    schema: dict[str, Any] = get["responses"]["200"]["content"]["application/json"]["schema"]
    assert get["security"] == [{}]  # public: no credentials
    return schema


async def test_the_snapshot_holds_the_logs_figures_and_the_measured_lag(
    settings: Settings, federation_keys: FederationKeys, feed: Feed, tmp_path: Path
) -> None:
    auditor = Auditor(settings, federation_keys.trust(AUDITOR_ID), directory=tmp_path / "audit")
    await auditor.open()
    try:
        empty = await auditor.call(auditor.status)
        assert empty == {
            "size": 0,
            "next_offset": 0,
            "lag": None,  # not measured: not following Kafka
            "checkpoint": {"size": None, "age_s": None},
            "witnesses": {},
            "cosigned_size": {},
            "forks": 0,
        }
        await auditor.call(auditor.log.append, feed)
        await auditor.checkpoint()
        consumer = FakeConsumer(end=feed[-1][0] + 2, position=feed[-1][0] + 2)
        await auditor._measure_lag(consumer, TP)
        status = await auditor.call(auditor.status)
        assert status["size"] == len(feed)
        assert status["next_offset"] == feed[-1][0] + 1
        assert status["checkpoint"]["size"] == len(feed)
        assert 0 <= status["checkpoint"]["age_s"] <= 5
        assert status["lag"] == 0  # at the last stable offset: nothing subtracted
        Draft202012Validator(_schema()).validate(status)
        # Bounded: asked again only after LAG_EVERY_S, whatever the number of steps.
        consumer.end = consumer.at + 7
        for _ in range(20):
            await auditor._measure_lag(consumer, TP)
        assert consumer.asked == 1
        assert (await auditor.call(auditor.status))["lag"] == 0
        auditor._lag_at = float("-inf")  # LAG_EVERY_S later
        await auditor._measure_lag(consumer, TP)
        assert (await auditor.call(auditor.status))["lag"] == 7
    finally:
        await auditor.close()


async def test_the_status_route_is_public_json_and_holds_no_personal_data(
    settings: Settings, federation_keys: FederationKeys, feed: Feed, tmp_path: Path
) -> None:
    """No client certificate at all (plain HTTP here): the status answers, the events do not."""
    auditor = Auditor(settings, federation_keys.trust(AUDITOR_ID), directory=tmp_path / "audit")
    await auditor.open()
    client = TestClient(TestServer(auditor_app(auditor)))
    await client.start_server()
    try:
        await auditor.call(auditor.log.append, feed)
        await auditor.checkpoint()
        response = await client.get("/v1/audit/status")
        assert response.status == 200
        assert response.content_type == "application/json"
        assert response.headers["Cache-Control"] == "no-cache"
        text = await response.text()
        Draft202012Validator(_schema()).validate(json.loads(text))
        assert json.loads(text)["size"] == len(feed)
        personal = {v for v in all_personal_values() if len(v) >= 3}
        assert [v for v in personal if v in text] == []
        # The same figures for Prometheus, under the broker's names, also without a certificate.
        await auditor._measure_lag(FakeConsumer(end=feed[-1][0] + 5, position=feed[-1][0] + 2), TP)
        exposed = await client.get("/metrics")
        assert exposed.status == 200
        assert exposed.headers["Cache-Control"] == "no-cache"
        text = await exposed.text()
        assert "cairn_auditor_up 1.0" in text
        assert "cairn_auditor_lag 3.0" in text
        assert "cairn_audit_witness_forks 0.0" in text
        assert "cairn_auditor_checkpoint_age_seconds " in text
        assert [v for v in personal if v in text] == []
        assert (await client.get("/v1/audit/entries")).status == 403  # the events are not public
    finally:
        await client.close()
        await auditor.close()
