"""The Kafka topics Cairn uses, and creating them explicitly (auto-create is off everywhere)."""

from __future__ import annotations

from dataclasses import dataclass, field

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
    federation: Federation, prefix: str, *, ledger_partitions: int = 6
) -> tuple[TopicSpec, ...]:
    """Every topic the federation needs, in a stable order."""
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
    return tuple(specs)
