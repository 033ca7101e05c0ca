"""Two brokers side by side through real Kafka: their own transactional ids, neither fenced."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import aiohttp
from structlog.testing import capture_logs

from broker.config import Settings
from broker.instance import acquire_instance
from broker.kafka.topics import delivery_topic
from schemas.federation import Federation
from tests.conftest import FederationKeys
from tests.integration.conftest import client, running_broker
from tests.kafka_support import read_committed
from tests.samples import sample

JOSE = {"Content-Type": "application/jose"}
EACH = 50  # referrals per broker


async def test_two_brokers_on_one_host_are_never_fenced(
    kafka_settings: Settings,
    federation: Federation,
    federation_keys: FederationKeys,
    tmp_path: Path,
) -> None:
    """Two brokers with one base and state folder take two ids; 50 referrals each, sent
    alternately over fresh connections, are all 202 and each recipient has every one once."""
    base = kafka_settings.model_copy(update={"state_dir": tmp_path / "state"})
    police = client(federation_keys, "https://unused")
    sent: list[str] = []
    with (
        capture_logs() as logs,
        acquire_instance(base) as first,
        acquire_instance(base) as second,
    ):
        assert first.transactional_id != second.transactional_id
        assert {first.transactional_id, second.transactional_id} == {
            f"{base.transactional_id}.{first.host}.0",
            f"{base.transactional_id}.{first.host}.1",
        }
        one, two = (
            base.model_copy(update={"transactional_id": i.transactional_id})
            for i in (first, second)
        )
        async with (
            running_broker(one, federation, federation_keys) as url_one,
            running_broker(two, federation, federation_keys) as url_two,
        ):
            statuses: Counter[tuple[str, int]] = Counter()
            for _ in range(EACH):
                for name, url in (("one", url_one), ("two", url_two)):
                    data = sample()
                    connector = aiohttp.TCPConnector(
                        ssl=federation_keys.client_ssl("kelder-police"), force_close=True
                    )
                    async with (
                        aiohttp.ClientSession(connector=connector) as session,
                        session.post(
                            f"{url}/v1/referrals",
                            data=police.sign(json.dumps(data).encode()),
                            headers=JOSE,
                        ) as response,
                    ):
                        await response.read()
                        statuses[(name, response.status)] += 1
                    sent.append(data["header"]["referral_id"])
            assert statuses == {("one", 202): EACH, ("two", 202): EACH}
    # Neither producer was fenced on the way: a shared id shows here even when the retries
    # still got every submission through.
    assert [e["event"] for e in logs if "fenced" in e["event"]] == []
    connected = {e.get("transactional_id") for e in logs if e["event"] == "kafka.connected"}
    assert {one.transactional_id, two.transactional_id} <= connected
    recipients = sample()["header"]["recipients"]
    for agency in recipients:
        records = await read_committed(
            base.kafka_bootstrap_servers, delivery_topic(base.topic_prefix, agency)
        )
        assert Counter(r.key.decode() for r in records) == dict.fromkeys(sent, 1)
