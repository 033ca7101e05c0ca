"""The agency gateway with the agency's own Kafka credentials, on a Kafka whose authorizer
allows only what the ACL table grants (tests/integration/test_kafka_acls.py's private Kafka):
the gateway's group (``cairn-inbox-<agency>.gateway``), its read of its own topic, and its
receipts are all allowed, so a view through its API reaches the audit log; the gateway of one
agency run with another agency's credentials gets nothing from Kafka."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.audit.index import Query
from gateway.settings import GatewaySettings
from gateway.sqlite import SqliteGatewayStore
from keys import AUDITOR_ID, BROKER_ID
from schemas.audit import AuditEventType
from schemas.federation import Federation
from tests.conftest import FederationKeys
from tests.gateway_support import running_gateway, server_certificate, session
from tests.integration.conftest import client, running_broker
from tests.integration.test_consumer_faults import FollowingAuditor, eventually
from tests.integration.test_kafka_acls import AclKafka, start_acl_kafka, with_acls
from tests.samples import sample

A, B = "kelder-idva", "kelder-police"


@pytest.fixture(scope="module")
def acl_kafka(
    tmp_path_factory: pytest.TempPathFactory,
    federation: Federation,
    federation_keys: FederationKeys,
) -> Iterator[AclKafka]:
    started = start_acl_kafka(
        tmp_path_factory.mktemp("gw-acl-kafka"), federation, federation_keys, acls=True
    )
    try:
        yield started
    finally:
        started.kafka.stop()


async def test_the_gateway_runs_on_its_own_credentials_under_the_acls(
    acl_kafka: AclKafka,
    federation: Federation,
    federation_keys: FederationKeys,
    tmp_path: Path,
) -> None:
    admin = await with_acls(acl_kafka, federation)
    broker = acl_kafka.as_principal(BROKER_ID, admin)
    auditor_settings = acl_kafka.as_principal(AUDITOR_ID, admin)
    cert, key = server_certificate(federation_keys, tmp_path / "tls", A)
    gw = GatewaySettings(tls_cert_file=cert, tls_key_file=key, poll_every_s=0.1)
    data = sample()
    data["header"]["referral_id"] = rid = str(uuid.uuid4())
    data["header"]["recipients"] = [A]
    async with (
        FollowingAuditor(auditor_settings, federation_keys, tmp_path / "audit") as auditor,
        running_broker(broker, federation, federation_keys, consume_receipts=True) as url,
    ):
        async with client(federation_keys, url) as police:
            await police.submit(json.dumps(data).encode())
        # The police force's credentials, for the IDVA service's gateway: Kafka refuses them.
        async with running_gateway(
            acl_kafka.as_principal(B, admin),
            gw,
            A,
            federation_keys,
            store=SqliteGatewayStore(tmp_path / "wrong.sqlite"),
        ) as wrong:
            await asyncio.sleep(5.0)
            assert wrong.service.stored == 0
        async with running_gateway(
            acl_kafka.as_principal(A, admin),
            gw,
            A,
            federation_keys,
            store=SqliteGatewayStore(tmp_path / "gw.sqlite"),
        ) as running:
            await eventually(lambda: running.service.stored == 1, "stored with its own rights")
            async with (
                session(federation_keys.client_ssl(A)) as http,
                http.get(f"{running.url}/v1/disclosures/{rid}") as answer,
            ):
                assert answer.status == 200

            async def viewed() -> list[Any]:
                return await auditor.call(
                    auditor.log.query,
                    Query(types=(AuditEventType.VIEWED,), message_id=uuid.UUID(rid)),
                )

            await eventually(viewed, "the view in the audit log")
            assert len(await viewed()) == 1
