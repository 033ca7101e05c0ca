"""Wiring an agency adapter to its credentials: TLS certificate, signing key, decryption keys.

Each agency reads its own key store only, ``<key_dir>/agencies/<id>`` over the published
registry (``keys.custody``), opened with that store's own passphrase
(``<passphrase_dir>/agencies/<id>``, else CAIRN_KEY_PASSPHRASE[_FILE]). On an agency's machine
that is the only store there is; in the development federation every agency's store sits side
by side under one folder, and the same calls work unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Protocol

import click

from adapters.client import ReferralClient, Submitted
from adapters.inbox import Inbox, Progress
from broker.config import Settings
from broker.envelope import open_record
from broker.kafka.consumer import Retry, dlq_topic
from broker.kafka.topics import delivery_topic
from broker.kafka.transport import kafka_options
from broker.trust import TrustStore, custody_of, member_trust
from keys import client_context, sign_ack
from keys.custody import store_of
from schemas.disclosure import Disclosure
from schemas.encompass import EncompassNotification
from schemas.receipt import Acknowledgement, AcknowledgementStatus, Receipt
from schemas.receipt import Delivery as DeliveryReceipt
from schemas.referral import Referral

__all__ = [
    "ClientFactory",
    "Submitter",
    "acknowledger_for",
    "agency_trust",
    "cli_client_factory",
    "client_for",
    "delivery_receipt_for",
    "inbox_for",
    "opener_for",
]

Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def agency_trust(
    settings: Settings, agency: str, *, clock: Clock = _utcnow, passphrase: bytes | None = None
) -> TrustStore:
    """The agency's view of the federation: verified registry and its own keys.

    The passphrase is its store's (see the module docstring) unless given.
    """
    return member_trust(settings, agency, clock=clock, passphrase=passphrase)


def client_for(
    settings: Settings,
    agency: str,
    base_url: str,
    *,
    clock: Clock = _utcnow,
    passphrase: bytes | None = None,
) -> ReferralClient:
    """A client that signs as ``agency`` and connects with its TLS client certificate."""
    if passphrase is None:
        passphrase = custody_of(settings).passphrase(store_of(agency))
    trust = agency_trust(settings, agency, clock=clock, passphrase=passphrase)
    context = client_context(trust.store, agency, passphrase)
    return ReferralClient(
        base_url, ssl_context=context, signing_key=trust.signing_key(), clock=clock
    )


def opener_for(
    trust: TrustStore, agency: str, *, clock: Clock = _utcnow
) -> Callable[[bytes], Disclosure]:
    """Decrypt and verify one delivered record as ``agency``, against the current registry."""

    def open_value(value: bytes) -> Disclosure:
        return open_record(
            value,
            recipient=agency,
            keys=trust.decryption_keys(),
            registry=trust.registry(),
            now=clock(),
        )

    return open_value


def acknowledger_for(
    trust: TrustStore, agency: str, *, clock: Clock = _utcnow
) -> Callable[[Disclosure], bytes]:
    """Sign an acknowledgement that ``agency`` has filed a disclosure."""

    def acknowledge(disclosure: Disclosure) -> bytes:
        now = clock()
        ack = Acknowledgement(
            referral_id=disclosure.referral_id,
            agency=agency,
            status=AcknowledgementStatus.FILED,
            acknowledged_at=now,
        )
        return sign_ack(ack.model_dump_json().encode(), trust.signing_key(), issued_at=now)

    return acknowledge


def delivery_receipt_for(
    trust: TrustStore, agency: str, *, clock: Clock = _utcnow
) -> Callable[[Disclosure], bytes]:
    """Sign a ``Delivery`` receipt: ``agency`` has durably stored a disclosure (``cairn-ack+jws``,
    as an acknowledgement is signed; the broker audits it as ``delivered``)."""

    def confirm(disclosure: Disclosure) -> bytes:
        now = clock()
        receipt = DeliveryReceipt(
            referral_id=disclosure.referral_id, agency=agency, delivered_at=now
        )
        return sign_ack(receipt.model_dump_json().encode(), trust.signing_key(), issued_at=now)

    return confirm


def inbox_for(
    settings: Settings,
    agency: str,
    *,
    group_id: str | None = None,
    clock: Clock = _utcnow,
    passphrase: bytes | None = None,
    progress: Progress | None = None,
) -> Inbox:
    """The agency's consumer of its own delivery topic, opening records with its own keys;
    ``progress`` hears, in one line each, while it waits for Kafka."""
    trust = agency_trust(settings, agency, clock=clock, passphrase=passphrase)
    trust.decryption_keys()  # fail now, not at the first record, if the keys cannot be loaded
    return Inbox(
        kafka_options(settings),
        agency=agency,
        topic=delivery_topic(settings.topic_prefix, agency),
        dlq_topic=dlq_topic(settings.topic_prefix),
        open_value=opener_for(trust, agency, clock=clock),
        acknowledge=acknowledger_for(trust, agency, clock=clock),
        confirm_delivery=delivery_receipt_for(trust, agency, clock=clock),
        receipts_topic=f"{settings.topic_prefix}.receipts",
        group_id=group_id,
        retry=Retry.from_settings(settings),
        progress=progress,
    )


class Submitter(Protocol):
    """What an import command needs of ``adapters.client.ReferralClient``."""

    async def submit(self, referral: Referral | EncompassNotification | bytes) -> Receipt: ...

    async def send(self, referral: Referral | EncompassNotification | bytes) -> Submitted:
        """The receipt and whether the broker had it before (the import commands use this)."""
        ...


#: (sending agency id, broker URL) -> a client signing as that agency, used as ``async with``.
#: The ``cairn`` CLI puts one in ``ctx.obj["client_factory"]``: ``client_for`` with its settings.
ClientFactory = Callable[[str, str], AbstractAsyncContextManager[Submitter]]


def cli_client_factory(checked: str) -> ClientFactory:
    """The client factory the ``cairn`` root command provides to its import subcommands.

    ``checked`` names what ``--dry-run`` would check instead ("the file", "the bundle").
    """
    obj = click.get_current_context().find_root().obj
    factory = obj.get("client_factory") if isinstance(obj, dict) else None
    if factory is None:
        raise click.ClickException(
            "no submission credentials: run this through the cairn CLI, which provides the "
            f"agency's signing key and TLS identity, or use --dry-run to check {checked}"
        )
    return factory  # type: ignore[no-any-return]  # ctx.obj is untyped by click's design
