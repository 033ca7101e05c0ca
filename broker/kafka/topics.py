"""The Kafka topics Cairn uses, and creating them explicitly (auto-create is off everywhere)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from schemas.federation import Federation

__all__ = ["TopicSpec", "delivery_topic", "federation_topics"]


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    purpose: str
    config: dict[str, str] = field(default_factory=dict)  # topic-level Kafka settings


def delivery_topic(prefix: str, agency_id: str) -> str:
    """The topic an agency reads its disclosures from; the key of each record is the referral id."""
    return f"{prefix}.deliver.{agency_id}"


def federation_topics(
    federation: Federation,
    prefix: str,
    *,
    ledger_partitions: int = 6,
    replication_factor: int = 1,
    min_insync_replicas: int = 1,
) -> tuple[TopicSpec, ...]:
    """Every topic the federation needs, in a stable order. With ``replication_factor`` over 1
    each carries ``min.insync.replicas``: how many replicas must hold a record before Kafka
    acknowledges it (and so before the broker answers 202)."""
    if not 1 <= min_insync_replicas <= replication_factor:
        raise ValueError(
            f"min.insync.replicas {min_insync_replicas} is outside 1..{replication_factor}"
        )
    specs = [
        TopicSpec(delivery_topic(prefix, a.id), 3, f"disclosures for {a.id}")
        for a in federation.agencies
    ]
    specs += [
        # One partition: the audit log needs a total order.
        TopicSpec(f"{prefix}.audit", 1, "audit events, in order"),
        TopicSpec(f"{prefix}.receipts", 3, "recipient acknowledgements"),
        TopicSpec(f"{prefix}.checkpoints", 1, "signed audit checkpoints"),
        TopicSpec(f"{prefix}.dlq", 1, "messages a consumer could not handle"),
        # Compacted: the newest record per referral id is kept for good (broker.kafka.ledger).
        TopicSpec(
            f"{prefix}.ledger",
            ledger_partitions,
            "referral ids published, with digest and receipt",
            {"cleanup.policy": "compact"},
        ),
    ]
    if replication_factor > 1:
        insync = {"min.insync.replicas": str(min_insync_replicas)}
        specs = [replace(s, config={**s.config, **insync}) for s in specs]
    return tuple(specs)
