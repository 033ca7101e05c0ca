"""The gateway's HTTP API against its OpenAPI document, without Kafka: real disclosures (sealed by
the broker over the memory transport, opened with the agency's keys), a real mutual-TLS server.

The document is a valid OpenAPI 3.1 document; every route of the app is documented and every
documented operation is a route; every response the tests provoke has its status documented
and its body validates against the documented schema. Retention deletes with a signed receipt.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from referencing import Registry, Resource

import gateway
from adapters.agency import opener_for
from adapters.inbox import Delivery
from broker.config import Settings
from broker.kafka.transport import MemoryTransport
from gateway.settings import GatewaySettings
from gateway.sqlite import SqliteGatewayStore
from keys import verify_ack
from schemas.decode import decode
from schemas.receipt import RETENTION_EXPIRED, Deletion
from tests.conftest import FederationKeys
from tests.gateway_support import Running, running_gateway, server_certificate, session
from tests.samples import sample
from tests.unit.conftest import AgencyClient

SPEC_PATH = Path(gateway.__file__).with_name("openapi.json")
SPEC: dict[str, Any] = json.loads(SPEC_PATH.read_text(encoding="utf-8"))
REGISTRY: Registry[Any] = Registry().with_resource("urn:spec", Resource.opaque(SPEC))  # type: ignore[call-arg]


def _schema_for(path: str, method: str, status: int, content_type: str) -> dict[str, Any]:
    operation = SPEC["paths"][path][method]
    assert str(status) in operation["responses"], f"{method} {path} {status} is not documented"
    response = operation["responses"][str(status)]
    if "$ref" in response:
        response = SPEC["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    assert content_type in response["content"], f"{content_type} not documented for {status}"
    return response["content"][content_type]["schema"]  # type: ignore[no-any-return]


def check(path: str, method: str, status: int, content_type: str, body: Any) -> None:
    """The response is documented and its body is valid under the documented schema."""
    schema = _schema_for(path, method, status, content_type)
    # The document's own references, resolved in the document (urn:spec).
    root = json.loads(json.dumps(schema).replace('"#/', '"urn:spec#/'))
    Draft202012Validator(root, registry=REGISTRY).validate(body)


async def delivered(
    agency_client: AgencyClient,
    transport: MemoryTransport,
    federation_keys: FederationKeys,
    agency: str,
    n: int,
    *,
    purpose: str | None = None,
) -> list[Delivery]:
    """``n`` referrals sent by the police to ``agency`` and opened as it opens them."""
    async with agency_client("kelder-police") as police:
        for _ in range(n):
            data = sample()
            data["header"]["referral_id"] = str(uuid4())
            data["header"]["recipients"] = [agency]
            if purpose is not None:
                data["header"]["purpose"] = purpose
            receipt = await police.submit(json.dumps(data).encode())
            assert [r.status.value for r in receipt.recipients] == ["queued"]
    opener = opener_for(federation_keys.trust(agency), agency)
    records = transport.read_committed(f"unit.deliver.{agency}")
    return [Delivery(opener(r.value), r.topic, 0, n, {}) for n, r in enumerate(records)]


@pytest.fixture
async def idva(
    settings: Settings,
    federation_keys: FederationKeys,
    agency_client: AgencyClient,
    transport: MemoryTransport,
    tmp_path: Path,
) -> AsyncIterator[tuple[Running, list[UUID]]]:
    cert, key = server_certificate(federation_keys, tmp_path / "tls", "kelder-idva")
    gw = GatewaySettings(tls_cert_file=cert, tls_key_file=key, page_limit_max=3)
    store = SqliteGatewayStore(tmp_path / "gw.sqlite")
    async with running_gateway(
        settings, gw, "kelder-idva", federation_keys, store=store, background=False
    ) as running:
        deliveries = await delivered(agency_client, transport, federation_keys, "kelder-idva", 4)
        for delivery in deliveries:
            await running.service.store_delivery(delivery)
            await running.service.store_delivery(delivery)  # again: recognised
        assert running.service.stored == 4
        assert running.service.repeats == 4
        yield running, [d.disclosure.referral_id for d in deliveries]


def test_the_document_is_valid_openapi_3_1() -> None:
    validate(SPEC)  # raises on an invalid document
    assert SPEC["openapi"].startswith("3.1")


async def test_every_route_is_documented_and_every_documented_route_exists(
    idva: tuple[Running, list[UUID]],
) -> None:
    running, _ = idva
    routes = {
        (route.method.lower(), route.resource.canonical)
        for route in running.built.api.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    documented = {(method, path) for path, item in SPEC["paths"].items() for method in item}
    assert routes == documented


async def test_responses_are_the_documented_ones(
    idva: tuple[Running, list[UUID]], federation_keys: FederationKeys
) -> None:
    running, ids = idva
    base = running.url
    one = "/v1/disclosures/{referral_id}"
    ack = "/v1/disclosures/{referral_id}/acknowledgement"
    async with session(federation_keys.client_ssl("kelder-idva")) as http:

        async def call(method: str, url: str, path: str, **kw: Any) -> tuple[int, Any]:
            async with http.request(method, base + url, **kw) as answer:
                body = await answer.json(content_type=None)
                check(path, method.lower(), answer.status, answer.content_type, body)
                return answer.status, body

        status, page = await call("GET", "/v1/disclosures?limit=3", "/v1/disclosures")
        assert (status, len(page["items"]), page["more"]) == (200, 3, True)
        status, rest = await call(
            "GET", f"/v1/disclosures?after={page['cursor']}", "/v1/disclosures"
        )
        assert [i["referral_id"] for i in page["items"] + rest["items"]] == [str(i) for i in ids]
        assert (await call("GET", "/v1/disclosures?limit=4", "/v1/disclosures"))[0] == 400
        assert (await call("GET", "/v1/disclosures?status=x", "/v1/disclosures"))[0] == 400
        status, body = await call("GET", f"/v1/disclosures/{ids[0]}", one)
        assert (status, body["referral_id"]) == (200, str(ids[0]))
        assert (await call("GET", f"/v1/disclosures/{ids[0]}?format=fhir", one))[0] == 406
        assert (await call("GET", f"/v1/disclosures/{uuid4()}", one))[0] == 404
        assert (await call("GET", "/v1/disclosures/not-a-uuid", one))[0] == 400
        status, body = await call("POST", f"/v1/disclosures/{ids[0]}/acknowledgement", ack)
        assert (status, body["first"], body["status"]) == (201, True, "filed")
        status, body = await call("POST", f"/v1/disclosures/{ids[0]}/acknowledgement", ack)
        assert (status, body["first"]) == (200, False)
        rejected = {"status": "rejected", "reasons": ["not_our_client"]}
        status, body = await call(
            "POST", f"/v1/disclosures/{ids[1]}/acknowledgement", ack, json=rejected
        )
        assert (status, body["status"]) == (201, "rejected")
        for bad in (
            {"status": "rejected"},
            {"status": "filed", "note": "x"},
            [1],
            {"status": 1},
            {"status": "read"},  # a person's, in the web inbox under their staff id
        ):
            status, _ = await call(
                "POST", f"/v1/disclosures/{ids[2]}/acknowledgement", ack, json=bad
            )
            assert status == 400
        assert (await call("POST", f"/v1/disclosures/{uuid4()}/acknowledgement", ack))[0] == 404
        status, page = await call("GET", "/v1/disclosures", "/v1/disclosures")  # new only
        assert [i["referral_id"] for i in page["items"]] == [str(ids[2]), str(ids[3])]
    async with (
        session(federation_keys.client_ssl("kelder-police")) as other,
        other.get(base + "/v1/disclosures") as answer,
    ):
        check("/v1/disclosures", "get", answer.status, answer.content_type, await answer.json())
        assert answer.status == 403
    # Each fetch is one view by this client; the refused and the 404s are none.
    views = await running.service.views(ids[0])
    assert [v.viewer for v in views] == ["client:kelder-idva"]
    kinds = [p.kind for p in await running.service.store.pending_receipts(10)]
    # One signed Delivery per stored disclosure, queued as the store took it.
    assert kinds.count("delivered") == len(ids)
    assert sorted(k for k in kinds if k != "delivered") == [
        "acknowledged",
        "acknowledged",
        "viewed",
    ]


async def test_a_health_recipient_gets_fhir(
    settings: Settings,
    federation_keys: FederationKeys,
    agency_client: AgencyClient,
    transport: MemoryTransport,
    tmp_path: Path,
) -> None:
    cert, key = server_certificate(federation_keys, tmp_path / "tls", "kelder-nhs")
    gw = GatewaySettings(tls_cert_file=cert, tls_key_file=key)
    async with running_gateway(
        settings,
        gw,
        "kelder-nhs",
        federation_keys,
        store=SqliteGatewayStore(tmp_path / "nhs.sqlite"),
        background=False,
    ) as running:
        (delivery,) = await delivered(
            agency_client,
            transport,
            federation_keys,
            "kelder-nhs",
            1,
            purpose="HEALTH_SAFEGUARDING",
        )
        await running.service.store_delivery(delivery)
        rid = delivery.disclosure.referral_id
        one = "/v1/disclosures/{referral_id}"
        async with session(federation_keys.client_ssl("kelder-nhs")) as http:
            for how in (
                {"params": {"format": "fhir"}},
                {"headers": {"Accept": "application/fhir+json"}},
            ):
                async with http.get(f"{running.url}/v1/disclosures/{rid}", **how) as answer:
                    assert answer.status == 200
                    assert answer.content_type == "application/fhir+json"
                    bundle = await answer.json(content_type=None)
                    check(one, "get", 200, answer.content_type, bundle)
                    assert bundle["resourceType"] == "Bundle"
        assert len(await running.service.views(rid)) == 2


async def test_retention_deletes_with_a_signed_receipt_and_a_redelivery_stays_deleted(
    settings: Settings,
    federation_keys: FederationKeys,
    agency_client: AgencyClient,
    transport: MemoryTransport,
    tmp_path: Path,
) -> None:
    """An Encompass notice is kept a year from receipt (kelder-encompass): one received a year
    and a day ago is deleted by the sweep, with a Deletion receipt signed by the school; one
    received now is kept; the deleted one delivered again is not stored again."""
    school = "kelder-brook-primary"
    cert, key = server_certificate(federation_keys, tmp_path / "tls", school)
    gw = GatewaySettings(tls_cert_file=cert, tls_key_file=key)
    async with running_gateway(
        settings,
        gw,
        school,
        federation_keys,
        store=SqliteGatewayStore(tmp_path / "school.sqlite"),
        background=False,
    ) as running:
        async with agency_client("kelder-police") as police:
            for _ in range(2):
                data = sample("encompass-notification.json")
                data["header"]["notification_id"] = str(uuid4())
                await police.submit(json.dumps(data).encode())
        opener = opener_for(federation_keys.trust(school), school)
        records = transport.read_committed(f"unit.deliver.{school}")
        old, new = (Delivery(opener(r.value), r.topic, 0, n, {}) for n, r in enumerate(records))
        service = running.service
        now = datetime.now(UTC)
        service._clock = lambda: now - timedelta(days=367)
        await service.store_delivery(old)
        service._clock = lambda: datetime.now(UTC)
        await service.store_delivery(new)
        kept = await service.get(new.disclosure.referral_id)
        assert kept is not None
        assert kept.delete_after is not None
        assert kept.delete_after.year == now.year + 1
        assert await service.sweep_retention() == 1
        gone = old.disclosure.referral_id
        assert await service.get(gone) is None
        assert [s.referral_id for s in (await service.page(None, 10)).items] == [kept.referral_id]
        await service.store_delivery(old)  # Kafka delivers it again: it stays deleted
        assert await service.get(gone) is None
        owed = await service.store.pending_receipts(10)
        assert sorted(r.kind for r in owed) == ["deleted", "delivered", "delivered"]
        (receipt,) = (r for r in owed if r.kind == "deleted")
        assert (receipt.kind, receipt.referral_id) == ("deleted", gone)
        payload = verify_ack(
            receipt.token,
            federation_keys.trust("cairn-broker").registry(),
            signer=school,
            now=datetime.now(UTC),
        )
        deletion = decode(Deletion, payload)
        assert (deletion.agency, deletion.reason) == (school, RETENTION_EXPIRED)
