"""GET /metrics on the unit broker: exact counts, label sets of codes only, no personal data."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from adapters.client import SubmissionRefused
from broker.ops.metrics import STAGES, Metrics, code, ops_snapshot
from broker.state import Delivery, SqliteStore
from tests.samples import all_personal_values, sample
from tests.unit.conftest import AgencyClient

Samples = dict[str, list[tuple[dict[str, str], float]]]
AT = datetime(2026, 11, 26, 6, 0, tzinfo=UTC)
REFERRAL = "00000000-0000-4000-8000-000000000001"


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


async def scripted_flow(agency_client: AgencyClient) -> None:
    """Two accepted referrals (one naming a recipient the policy refuses) and one invalid."""
    async with agency_client("kelder-police") as client:
        await client.submit(json.dumps(sample()).encode())
        data = sample()
        data["header"]["recipients"] = ["kelder-idva", "kelder-marac", "kelder-nhs"]
        await client.submit(json.dumps(data).encode())
        bad = sample()
        bad["victim"]["nhs_number"] = "9990000019"  # wrong check digit
        with pytest.raises(SubmissionRefused):
            await client.submit(json.dumps(bad).encode())


async def scrape(session: aiohttp.ClientSession, url: str) -> str:
    response = await session.get(f"{url}/metrics")
    assert response.status == 200
    assert response.content_type == "text/plain"
    return await response.text()


async def test_metrics_count_a_scripted_flow_exactly(
    agency_client: AgencyClient, police_session: aiohttp.ClientSession, broker_url: str
) -> None:
    """After 3 submissions the counters hold exactly 3 received, 2 accepted, 1 refused, and one
    disclosure series per sender → recipient → purpose."""
    await scripted_flow(agency_client)
    got = parse(await scrape(police_session, broker_url))
    assert got["cairn_referrals_received_total"] == [({}, 3.0)]
    assert got["cairn_referrals_accepted_total"] == [
        ({"sender": "kelder-police", "purpose": "MARAC"}, 2.0)
    ]
    assert got["cairn_referrals_refused_total"] == [({"reason": "invalid-referral"}, 1.0)]
    assert sorted(
        (labels["recipient"], value) for labels, value in got["cairn_disclosures_total"]
    ) == [("kelder-idva", 2.0), ("kelder-marac", 2.0)]
    withheld = got["cairn_disclosures_refused_total"]
    assert {(labels["recipient"], labels["purpose"]) for labels, _ in withheld} == {
        ("kelder-nhs", "MARAC")
    }
    stages = {labels["stage"] for labels, _ in got["cairn_stage_seconds_count"]}
    assert stages == set(STAGES)
    counts = {labels["stage"]: value for labels, value in got["cairn_stage_seconds_count"]}
    assert counts["verify"] == 3.0
    assert counts["publish"] == 2.0
    outcomes = {labels["outcome"]: v for labels, v in got["cairn_submission_seconds_count"]}
    assert outcomes == {"accepted": 2.0, "refused": 1.0}


async def test_no_label_value_holds_personal_data(
    agency_client: AgencyClient, police_session: aiohttp.ClientSession, broker_url: str
) -> None:
    """No personal value of any sample appears anywhere in the /metrics text, labels included."""
    await scripted_flow(agency_client)
    text = await scrape(police_session, broker_url)
    personal = {v for v in all_personal_values() if len(v) >= 3}
    assert personal
    assert [v for v in personal if v in text] == []
    for labels in (lab for series in parse(text).values() for lab, _ in series):
        codes = {k: v for k, v in labels.items() if k != "le"}  # "le": a histogram bound
        assert all(code(v) == v for v in codes.values()), labels


def test_a_label_value_that_is_not_a_code_becomes_other() -> None:
    """Spaces, slashes and overlong values never reach a label: they are replaced by "other"."""
    assert code("kelder-police") == "kelder-police"
    assert code("MARAC") == "MARAC"
    assert code("Jane Doe") == "other"
    assert code("12 High Street") == "other"
    assert code("x" * 65) == "other"


def test_each_metrics_has_its_own_registry() -> None:
    """Two apps in one process count separately: no shared global registry."""
    a, b = Metrics(), Metrics()
    a.received.inc()
    assert a.registry.get_sample_value("cairn_referrals_received_total") == 1.0
    assert b.registry.get_sample_value("cairn_referrals_received_total") == 0.0


async def test_ops_snapshot_is_json_ready_with_flows_and_overdue() -> None:
    """The snapshot lists flows with counts and the overdue list, and serialises as JSON; with
    a store, the flows are the store's (this process's counters start again at a restart)."""
    metrics = Metrics()
    metrics.disclosures.labels(sender="kelder-police", recipient="kelder-idva", purpose="IDVA").inc(
        2
    )
    snap = await ops_snapshot(metrics, kafka_ready=True)
    json.dumps(snap)
    assert snap["flows"] == [
        {"sender": "kelder-police", "recipient": "kelder-idva", "purpose": "IDVA", "count": 2}
    ]
    assert snap["overdue"] == []
    store = SqliteStore(None)
    await store.record_deliveries(
        [Delivery(REFERRAL, "kelder-marac", "MARAC", "kelder-police", AT, AT + timedelta(hours=1))]
    )
    await store.mark_overdue(REFERRAL, "kelder-marac", AT + timedelta(hours=2))
    snap = await ops_snapshot(metrics, store, kafka_ready=True)
    json.dumps(snap)
    assert snap["flows"] == [
        {"sender": "kelder-police", "recipient": "kelder-marac", "purpose": "MARAC", "count": 1}
    ]
    assert [o["referral_id"] for o in snap["overdue"]] == [REFERRAL]
    assert (snap["overdue_total"], snap["overdue_late"]) == (1, 0)
    assert snap["health"]["kafka"] == "reachable"
