"""The ingest pipeline: validate → decide → seal → publish, one submission at a time.

Each stage is a separate function so that later capabilities (sender authentication, sharing
agreements, encryption, audit) replace one stage without touching the others. A submission is
accepted only when every record it produced has been committed to Kafka.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from broker.config import Settings
from broker.envelope import seal
from broker.policy import decide
from broker.transport import Transport
from schemas.decode import decode
from schemas.federation import Federation
from schemas.receipt import Receipt, RecipientReceipt, RecipientStatus
from schemas.referral import Referral

__all__ = ["Pipeline"]

log = structlog.get_logger(__name__)


@dataclass
class Pipeline:
    settings: Settings
    federation: Federation
    transport: Transport

    async def submit(self, body: bytes, *, request_id: str) -> Receipt:
        """Run every stage for one submission; raise a CairnError if any stage refuses."""
        referral = decode(Referral, body)  # 1 validate
        header = referral.header
        structlog.contextvars.bind_contextvars(referral_id=str(header.referral_id))
        decisions = decide(  # 2 decide
            referral, self.federation, max_recipients=self.settings.max_recipients
        )
        allowed = [d for d in decisions if d.allowed]
        records = [  # 3 seal
            seal(referral, d, topic_prefix=self.settings.topic_prefix, request_id=request_id)
            for d in allowed
        ]
        await self.transport.publish(records)  # 4 publish: all committed, or TransportError
        log.info(
            "referral.accepted",
            sender=header.sender_agency,
            purpose=header.purpose.value,
            recipients=[d.recipient for d in allowed],
        )
        return Receipt(
            referral_id=header.referral_id,
            accepted_at=datetime.now(UTC),
            recipients=tuple(
                RecipientReceipt(agency=d.recipient, status=RecipientStatus.QUEUED) for d in allowed
            ),
        )
