"""Ops metrics after a scripted flow through the real broker and the real Kafka."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client.parser import text_string_to_metric_families

from adapters.agency import inbox_for
from adapters.client import SubmissionRefused
from adapters.inbox import Delivery
from broker.config import Settings
from tests.conftest import FederationKeys
from tests.integration.conftest import client
from tests.samples import all_personal_values, sample

Samples = dict[str, list[tuple[dict[str, str], float]]]


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


async def scrape(keys: FederationKeys, url: str) -> str:
    connector = aiohttp.TCPConnector(ssl=keys.client_ssl("kelder-police"))
    async with aiohttp.ClientSession(connector=connector) as session:
        response = await session.get(f"{url}/metrics")
        assert response.status == 200
        return await response.text()


async def test_scripted_flow_gives_exact_counts_labels_and_lag(
    broker_url: str, federation_keys: FederationKeys
) -> None:
    """3 referrals (one naming a recipient the policy refuses, one invalid) give exact counters,
    label sets of codes only, consumer lag on exactly the topics written, and no personal data."""
    async with client(federation_keys, broker_url) as c:
        await c.submit(json.dumps(sample()).encode())
        data = sample()
        data["header"]["recipients"] = ["kelder-idva", "kelder-marac", "kelder-nhs"]
        await c.submit(json.dumps(data).encode())
        bad = sample()
        bad["victim"]["nhs_number"] = "9990000019"  # wrong check digit
        with pytest.raises(SubmissionRefused):
            await c.submit(json.dumps(bad).encode())
    text = await scrape(federation_keys, broker_url)
    for _ in range(50):  # the Kafka probe answers in the background, within seconds
        if "cairn_consumer_lag{" in text:
            break
        await asyncio.sleep(0.2)
        text = await scrape(federation_keys, broker_url)
    got = parse(text)
    assert got["cairn_referrals_received_total"] == [({}, 3.0)]
    assert got["cairn_referrals_accepted_total"] == [
        ({"sender": "kelder-police", "purpose": "MARAC"}, 2.0)
    ]
    assert got["cairn_referrals_refused_total"] == [({"reason": "invalid-referral"}, 1.0)]
    assert sorted(
        (tuple(sorted(labels.items())), v) for labels, v in got["cairn_disclosures_total"]
    ) == [
        ((("purpose", "MARAC"), ("recipient", "kelder-idva"), ("sender", "kelder-police")), 2.0),
        ((("purpose", "MARAC"), ("recipient", "kelder-marac"), ("sender", "kelder-police")), 2.0),
    ]
    assert {frozenset(labels) for labels, _ in got["cairn_disclosures_refused_total"]} == {
        frozenset({"sender", "recipient", "purpose", "reason"})
    }
    assert got.get("cairn_kafka_produce_errors_total", []) == []
    assert got["cairn_kafka_produce_retries_total"] == [({}, 0.0)]
    assert got["cairn_kafka_probe_up"] == [({}, 1.0)]
    lag = {labels["agency"]: v for labels, v in got["cairn_consumer_lag"]}
    assert {a for a, v in lag.items() if v > 0} == {"kelder-idva", "kelder-marac"}
    assert lag["kelder-idva"] >= 2  # two records, plus transaction markers
    personal = {v for v in all_personal_values() if len(v) >= 3}
    assert [v for v in personal if v in text] == []


async def test_a_caught_up_inbox_shows_lag_zero(
    broker_url: str, kafka_settings: Settings, federation_keys: FederationKeys
) -> None:
    """Each referral is a Kafka transaction whose commit marker takes an offset; an inbox that
    has handled everything commits past the markers, so Kafka's own figure (committed offset
    against the end) and the broker's cairn_consumer_lag are 0, not 1 (issue 18)."""
    async with client(federation_keys, broker_url) as c:
        for _ in range(3):
            await c.submit(json.dumps(sample()).encode())
    handled: list[str] = []

    async def handler(delivery: Delivery) -> None:
        handled.append(str(delivery.disclosure.referral_id))

    passphrase = federation_keys.passphrase
    async with inbox_for(kafka_settings, "kelder-idva", passphrase=passphrase) as inbox:
        await inbox.drain(handler, idle_timeout_s=2, total_timeout_s=60)
    assert len(handled) == 3
    topic = f"{kafka_settings.topic_prefix}.deliver.kelder-idva"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_settings.kafka_bootstrap_servers)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka_settings.kafka_bootstrap_servers, isolation_level="read_committed"
    )
    await admin.start()
    await consumer.start()
    try:
        (described,) = await admin.describe_topics([topic])
        partitions = [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
        assert partitions
        committed = await admin.list_consumer_group_offsets("cairn-inbox-kelder-idva")
        end = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
        await admin.close()
    # Every partition: three records in all, each partition written also holding commit
    # markers, and the group's commit at each partition's end (none written: nothing to do).
    assert sum(end.values()) > 3
    for tp in partitions:
        if end[tp]:
            assert committed[tp].offset == end[tp], tp
    lag: dict[str, float] = {}
    for _ in range(100):  # the broker's probe refreshes in the background (ops_refresh_s)
        got = parse(await scrape(federation_keys, broker_url))
        lag = {labels["agency"]: v for labels, v in got.get("cairn_consumer_lag", [])}
        if lag.get("kelder-idva") == 0:
            break
        await asyncio.sleep(0.2)
    assert lag["kelder-idva"] == 0
    assert lag["kelder-marac"] > 0  # nobody read the MARAC coordinator's: records and markers
