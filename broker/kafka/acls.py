"""Who may do what in Kafka: the ACL table ``cairn topics create`` applies.

On the mutual-TLS listener every client is the principal its federation certificate names,
``User:<CN>`` (``broker.kafka.tls``, ``deploy/kafka/server-ssl.properties.in``): an agency's
id, ``cairn-broker`` or ``cairn-auditor``. Kafka runs the standard authorizer with
``allow.everyone.if.no.acl.found=false``, so what this table does not allow, Kafka refuses.
It is derived from the code that reads and writes each topic:

- the broker (``broker.kafka.transport``, ``broker.receipts``, ``broker.ops``) writes every
  delivery topic, the audit topic and dead letters, reads and writes the ledger, reads the
  receipts with its own group, and uses transactional ids under its ``transactional_id``
  base (``<base>.<host>.<slot>``, ``.claims``, ``.probe``, eras). It may only *describe* a
  delivery topic and the agencies' inbox groups (their end offsets and the groups' committed
  offsets make the lag metric): it can never read a disclosure;
- the auditor (``broker.audit.service``) reads the audit topic with its group, writes signed
  checkpoints and dead letters, and writes the audit topic too: an IG officer's search is an
  audit event the auditor produces there before answering (``broker.audit.trail``);
- each agency (``adapters.inbox``) reads only its own delivery topic, with its own group
  ``cairn-inbox-<id>`` (or ``cairn-inbox-<id>.<anything>``: a dot cannot occur in an agency
  id, so no agency's groups are a prefix of another's), and writes only receipts and dead
  letters.

Every idempotent producer among them also has ``IDEMPOTENT_WRITE`` on the cluster.
``apply_acls`` creates the bindings over Kafka's admin API (CreateAcls; creating one that
exists changes nothing), so running it again is harmless. ``prune_acls`` deletes the ALLOW
bindings on Cairn's own resources (the topics under the prefix, the inbox and service groups,
the broker's transactional ids) that the table no longer holds: those of an agency that left
the federation. Bindings on anything else are never touched.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError, SecurityDisabled
from aiokafka.protocol.admin import CreateAclsRequest_v1, DeleteAclsRequest, DescribeAclsRequest
from aiokafka.protocol.api import Request

from broker.config import Settings
from broker.kafka.consumer import dlq_topic
from broker.kafka.ledger import ledger_topic
from broker.kafka.topics import delivery_topic
from broker.kafka.transport import admin_client
from schemas.errors import TransportError
from schemas.federation import Federation

__all__ = [
    "AUDITOR_GROUP",
    "AUDITOR_PRINCIPAL",
    "BROKER_PRINCIPAL",
    "RECEIPTS_GROUP",
    "AclBinding",
    "AuthorizerMissing",
    "Operation",
    "PatternType",
    "ResourceType",
    "agency_principal",
    "apply_acls",
    "describe_grant",
    "federation_acls",
    "inbox_group",
    "prune_acls",
    "stale_acls",
]

# The services' principals: the CN of their certificates (keys.registry BROKER_ID, AUDITOR_ID).
BROKER_PRINCIPAL: Final = "User:cairn-broker"
AUDITOR_PRINCIPAL: Final = "User:cairn-auditor"
# The consumer groups of the services (broker.receipts.GROUP_ID, broker.audit.service.GROUP_ID;
# tests/unit hold them equal).
RECEIPTS_GROUP: Final = "cairn-broker-receipts"
AUDITOR_GROUP: Final = "cairn-auditor"
CLUSTER: Final = "kafka-cluster"  # the name of the cluster resource in an ACL


class ResourceType(enum.IntEnum):  # Kafka's wire codes (org.apache.kafka.common.resource)
    TOPIC = 2
    GROUP = 3
    CLUSTER = 4
    TRANSACTIONAL_ID = 5


class PatternType(enum.IntEnum):
    LITERAL = 3
    PREFIXED = 4


class Operation(enum.IntEnum):  # org.apache.kafka.common.acl.AclOperation
    READ = 3
    WRITE = 4
    DESCRIBE = 8
    IDEMPOTENT_WRITE = 12


ALLOW: Final = 3  # AclPermissionType.ALLOW


class AuthorizerMissing(TransportError):
    """Kafka runs no authorizer (``SECURITY_DISABLED``): there are no ACLs to create, and every
    client may do everything."""


@dataclass(frozen=True, order=True)
class AclBinding:
    """One ACL: ``principal`` may do ``operation`` on the resource, from any host."""

    principal: str
    resource_type: ResourceType
    name: str
    pattern: PatternType
    operation: Operation

    def __str__(self) -> str:
        pattern = "" if self.pattern is PatternType.LITERAL else " (prefix)"
        return (
            f"{self.principal:28} {self.operation.name:16} "
            f"{self.resource_type.name.lower()} {self.name}{pattern}"
        )


def agency_principal(agency_id: str) -> str:
    return f"User:{agency_id}"


def inbox_group(agency_id: str) -> str:
    """The agency's consumer group (``adapters.inbox.Inbox``'s default group id)."""
    return f"cairn-inbox-{agency_id}"


def _topic(principal: str, name: str, *ops: Operation) -> list[AclBinding]:
    return [AclBinding(principal, ResourceType.TOPIC, name, PatternType.LITERAL, op) for op in ops]


def _group(
    principal: str, name: str, op: Operation, pattern: PatternType = PatternType.LITERAL
) -> AclBinding:
    return AclBinding(principal, ResourceType.GROUP, name, pattern, op)


def _idempotent(principal: str) -> AclBinding:
    return AclBinding(
        principal, ResourceType.CLUSTER, CLUSTER, PatternType.LITERAL, Operation.IDEMPOTENT_WRITE
    )


def federation_acls(
    federation: Federation, prefix: str, transactional_id: str
) -> tuple[AclBinding, ...]:
    """Every ACL the federation needs on topics ``<prefix>.*``, sorted; see the module
    docstring for who may do what, and why."""
    R, W, D = Operation.READ, Operation.WRITE, Operation.DESCRIBE
    audit, receipts = f"{prefix}.audit", f"{prefix}.receipts"
    checkpoints, dlq, ledger = f"{prefix}.checkpoints", dlq_topic(prefix), ledger_topic(prefix)
    acls: list[AclBinding] = []

    broker = BROKER_PRINCIPAL
    for agency in federation.agencies:
        acls += _topic(broker, delivery_topic(prefix, agency.id), W)
        acls.append(_group(broker, inbox_group(agency.id), D))
    acls += _topic(broker, audit, W)
    acls += _topic(broker, dlq, W)
    acls += _topic(broker, ledger, R, W)
    acls += _topic(broker, receipts, R)
    acls.append(_group(broker, RECEIPTS_GROUP, R))
    acls.append(
        AclBinding(broker, ResourceType.TRANSACTIONAL_ID, transactional_id, PatternType.PREFIXED, W)
    )
    acls.append(_idempotent(broker))

    auditor = AUDITOR_PRINCIPAL
    acls += _topic(auditor, audit, R, W)  # W: IG searches' own events (broker.audit.trail)
    acls.append(_group(auditor, AUDITOR_GROUP, R))
    acls += _topic(auditor, checkpoints, W)
    acls += _topic(auditor, dlq, W)
    acls.append(_idempotent(auditor))

    for agency in federation.agencies:
        who = agency_principal(agency.id)
        acls += _topic(who, delivery_topic(prefix, agency.id), R)
        acls.append(_group(who, inbox_group(agency.id), R))
        acls.append(_group(who, f"{inbox_group(agency.id)}.", R, PatternType.PREFIXED))
        acls += _topic(who, receipts, W)
        acls += _topic(who, dlq, W)
        acls.append(_idempotent(who))
    return tuple(sorted(set(acls)))


class _CreateAcls(Request[CreateAclsRequest_v1]):  # type: ignore[misc]  # untyped aiokafka
    """CreateAcls v1 (Kafka 4 serves v1 and up) with many creations in one request; aiokafka's
    admin client has no ACL call of its own, only the protocol's structures."""

    API_KEY = 30

    def __init__(self, bindings: Sequence[AclBinding]) -> None:
        self._bindings = bindings

    def build(self, request_struct_class: type[CreateAclsRequest_v1]) -> CreateAclsRequest_v1:
        return request_struct_class(
            [
                (b.resource_type, b.name, b.pattern, b.principal, "*", b.operation, ALLOW)
                for b in self._bindings
            ]
        )


_BATCH: Final = 100  # bindings per CreateAcls request
_ANY: Final = 1  # the ANY value of a resource type, pattern, operation, permission filter
_VISIBLE_POLL_S: Final = 0.1  # seconds between looks for the new ACLs in the broker's view


async def _in_force(admin: AIOKafkaAdminClient, node: int) -> set[Grant]:
    """Every ALLOW binding broker ``node``'s authorizer holds now (DescribeAcls)."""
    response: Any = await admin._send_request(  # aiokafka has no public call
        DescribeAclsRequest(_ANY, None, _ANY, None, None, _ANY, _ANY), node
    )
    if response.error_code != 0:
        raise TransportError(
            f"Kafka refused to list ACLs: {response.error_message} (code {response.error_code})"
        )
    return {
        (principal, resource_type, name, pattern, operation)
        for resource_type, name, pattern, entries in response.resources
        for principal, _host, operation, permission in entries
        if permission == ALLOW
    }


async def _wait_visible(
    admin: AIOKafkaAdminClient, bindings: Sequence[AclBinding], timeout_s: float
) -> None:
    """Return once every broker's authorizer holds every binding. Kafka answers CreateAcls
    when the controller has committed them; each broker applies them a moment later, and a
    client connecting in between would be refused what it is about to be allowed."""
    wanted = {_grant(b) for b in bindings}
    deadline = asyncio.get_running_loop().time() + timeout_s
    for broker in admin._client.cluster.brokers():  # aiokafka has no public call
        while not wanted <= await _in_force(admin, broker.nodeId):
            if asyncio.get_running_loop().time() > deadline:
                raise TransportError(
                    f"Kafka accepted the ACLs but broker {broker.nodeId} did not apply them "
                    f"within {timeout_s:g} s"
                )
            await asyncio.sleep(_VISIBLE_POLL_S)


Grant = tuple[str, int, str, int, int]  # principal, resource type, name, pattern, operation


def _grant(b: AclBinding) -> Grant:
    return (b.principal, int(b.resource_type), b.name, int(b.pattern), int(b.operation))


def describe_grant(grant: Grant) -> str:
    """One line for a person: who, what, on what."""
    principal, resource_type, name, pattern, operation = grant
    kinds = {t.value: t.name.lower() for t in ResourceType}
    operations = {o.value: o.name for o in Operation}
    kind = kinds.get(resource_type, f"resource type {resource_type}")
    op = operations.get(operation, f"operation {operation}")
    return f"{principal} {op} {kind} {name}{' (prefix)' if pattern == PatternType.PREFIXED else ''}"


def _cairns(prefix: str, transactional_id: str, grant: Grant) -> bool:
    """Whether the resource of ``grant`` is one of Cairn's (see ``prune_acls``)."""
    _principal, resource_type, name, _pattern, _operation = grant
    if resource_type == ResourceType.TOPIC:
        return name.startswith(f"{prefix}.")
    if resource_type == ResourceType.GROUP:
        return name.startswith("cairn-inbox-") or name in (RECEIPTS_GROUP, AUDITOR_GROUP)
    if resource_type == ResourceType.TRANSACTIONAL_ID:
        return name == transactional_id
    return False


def stale_acls(
    in_force: set[Grant], table: Sequence[AclBinding], prefix: str, transactional_id: str
) -> list[Grant]:
    """The grants in force on Cairn's resources that ``table`` does not hold, sorted."""
    wanted = {_grant(b) for b in table}
    return sorted(g for g in in_force - wanted if _cairns(prefix, transactional_id, g))


async def prune_acls(settings: Settings, table: Sequence[AclBinding]) -> list[Grant]:
    """Delete the ALLOW grants on Cairn's resources (``<prefix>.*`` topics, the inbox and
    service groups, the broker's transactional-id prefix) that ``table`` does not hold; return
    them. ``TransportError`` if Kafka refuses."""
    prefix = settings.topic_prefix
    async with admin_client(settings, "prune ACLs") as admin:
        node = admin._client.get_random_node()  # aiokafka has no public call
        stale = stale_acls(await _in_force(admin, node), table, prefix, settings.transactional_id)
        for principal, resource_type, name, pattern, operation in stale:
            response: Any = await asyncio.wait_for(
                admin._send_request(
                    DeleteAclsRequest(
                        resource_type, name, pattern, principal, "*", operation, ALLOW
                    )
                ),
                settings.kafka_connect_timeout_s,
            )
            ((code, message, _matching),) = response.filter_responses
            if code != 0:
                raise TransportError(
                    f"Kafka refused to delete the ACL of {principal} on {name}: "
                    f"{message or 'no reason given'} (error code {code})"
                )
        return stale


async def apply_acls(settings: Settings, bindings: Sequence[AclBinding]) -> int:
    """Create every binding in Kafka (those that exist stay as they are); return how many were
    sent. ``TransportError`` if Kafka cannot be reached or refuses one (for instance a cluster
    without an authorizer: ``SECURITY_DISABLED``), naming the binding and Kafka's reason."""
    async with admin_client(settings, "create ACLs") as admin:
        for start in range(0, len(bindings), _BATCH):
            batch = bindings[start : start + _BATCH]
            try:
                response: Any = await asyncio.wait_for(
                    admin._send_request(_CreateAcls(batch)),  # aiokafka has no public call
                    settings.kafka_connect_timeout_s,
                )
            except (KafkaError, OSError, TimeoutError) as exc:
                raise TransportError(
                    f"Kafka at {settings.kafka_bootstrap_servers} did not answer CreateAcls"
                ) from exc
            for binding, (code, message) in zip(batch, response.creation_responses, strict=True):
                if code == SecurityDisabled.errno:
                    raise AuthorizerMissing(
                        f"Kafka at {settings.kafka_bootstrap_servers} runs no authorizer, so it "
                        "keeps no ACLs: every client may read every topic"
                    )
                if code != 0:
                    raise TransportError(
                        f"Kafka refused the ACL '{binding}': {message or 'no reason given'} "
                        f"(error code {code}); does the cluster run an authorizer "
                        "(authorizer.class.name)?"
                    )
        await _wait_visible(admin, bindings, settings.kafka_connect_timeout_s)
        return len(bindings)
