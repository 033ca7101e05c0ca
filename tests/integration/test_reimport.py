"""Import commands run again, against the real broker and the real Kafka (issue 18, acceptance 1).

``cairn police import`` is stopped after the first messages of the export's first line (a
client that dies before the next one, as a killed process would), run again, and run a third
time; ``cairn nhs import`` loses the broker's answer to its submission and is run again. Each
recipient's delivery topic must then hold each message exactly once, and the output must say
what had been sent before, with the time of the original receipt.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from adapters.client import ReferralClient, Submitted
from adapters.nhs.cli import nhs
from adapters.police.cli import police
from broker.config import Settings
from broker.kafka.topics import federation_topics
from schemas.encompass import EncompassNotification
from schemas.errors import TransportError
from schemas.federation import Federation
from schemas.receipt import Receipt
from schemas.referral import Referral
from tests.conftest import FederationKeys
from tests.integration.conftest import client
from tests.kafka_support import read_committed_many
from tests.samples import FEDERATION_DIR, SAMPLES

EXPORT = SAMPLES / "police-export.jsonl"
BUNDLE = SAMPLES / "nhs-referral-medium-risk.fhir.json"
ROW = re.compile(r"^ *[0-9]+  (MARAC|IDVA|ENCOMPASS) ")
Factory = Callable[[str, str], AbstractAsyncContextManager[Any]]


class Interrupted(Exception):
    """The import process dying between two submissions."""


class Recording:
    """A real client that keeps each receipt, stops the import before message number
    ``stop_before`` (from 1), and with ``lose_answer`` loses the broker's answer after the
    broker has committed (a connection dropped on the way back)."""

    def __init__(
        self, real: ReferralClient, log: list[Receipt], *, stop_before: int | None, lose: bool
    ) -> None:
        self.real, self.log, self.stop_before, self.lose = real, log, stop_before, lose

    async def submit(self, message: Referral | EncompassNotification | bytes) -> Receipt:
        return (await self.send(message)).receipt

    async def send(self, message: Referral | EncompassNotification | bytes) -> Submitted:
        if self.stop_before is not None and len(self.log) + 1 >= self.stop_before:
            raise Interrupted(f"stopped before message {len(self.log) + 1}")
        sent = await self.real.send(message)
        self.log.append(sent.receipt)
        if self.lose:
            raise TransportError("cannot reach the broker: the answer was lost")
        return sent


def factory_for(
    keys: FederationKeys,
    log: list[Receipt],
    *,
    stop_before: int | None = None,
    lose: bool = False,
) -> Factory:
    @asynccontextmanager
    async def factory(agency: str, url: str) -> AsyncIterator[Recording]:
        async with client(keys, url, agency) as real:
            yield Recording(real, log, stop_before=stop_before, lose=lose)

    return factory


async def invoke(group: click.Group, args: list[str], factory: Factory) -> Result:
    """The command as ``cairn`` runs it, on a thread of its own (it runs its own event loop,
    while the broker serves on this one)."""
    runner = CliRunner()
    return await asyncio.to_thread(
        runner.invoke, group, args, obj={"client_factory": factory}, catch_exceptions=True
    )


async def deliveries(settings: Settings, federation: Federation) -> Counter[tuple[str, str]]:
    """(recipient, message id) -> how many records of it its delivery topic holds, committed."""
    topics = [
        t.name
        for t in federation_topics(federation, settings.topic_prefix)
        if ".deliver." in t.name
    ]
    found = await read_committed_many(settings.kafka_bootstrap_servers, topics)
    return Counter(
        (topic.split(".deliver.")[1], record.key.decode())
        for topic, records in found.items()
        for record in records
        if record.key is not None
    )


def rows(result: Result) -> list[str]:
    """The lines of the import's table (the broker, on this process, logs to stdout too)."""
    return [line for line in result.stdout.splitlines() if ROW.match(line)]


def queued_to(receipts: list[Receipt]) -> Counter[tuple[str, str]]:
    """What the receipts say was queued: (recipient, message id), once each."""
    return Counter(
        (r.agency, str(receipt.referral_id))
        for receipt in receipts
        for r in receipt.recipients
        if r.status.value == "queued"
    )


@pytest.mark.parametrize("stop_before", [2, 3], ids=["after-first", "after-marac-and-idva"])
async def test_an_interrupted_police_import_completes_on_rerun_with_no_duplicate(
    broker_url: str,
    kafka_settings: Settings,
    federation: Federation,
    federation_keys: FederationKeys,
    stop_before: int,
) -> None:
    """Stopped after line 1's first message (or its MARAC and IDVA referrals), the import run
    again sends the rest and reports the first ones as already sent with their original
    receipts; a third run sends nothing; every recipient holds each message exactly once."""
    args = ["import", "--broker", broker_url, "--federation-dir", str(FEDERATION_DIR)]
    args.append(str(EXPORT))
    first: list[Receipt] = []
    cut = await invoke(police, args, factory_for(federation_keys, first, stop_before=stop_before))
    assert isinstance(cut.exception, Interrupted), cut.output
    assert len(first) == stop_before - 1
    assert await deliveries(kafka_settings, federation) == queued_to(first)

    second: list[Receipt] = []
    rerun = await invoke(police, args, factory_for(federation_keys, second))
    assert rerun.exit_code == 0, rerun.output
    table = rows(rerun)
    for receipt in first:  # the broker's original receipt, printed as such
        (row,) = [line for line in table if str(receipt.referral_id) in line]
        assert f"already sent (receipt of {receipt.accepted_at.isoformat()}: " in row
    assert sum("  queued (" in line for line in table) == len(second) - len(first)
    assert f"{len(first)} of them already sent by an earlier import" in rerun.stdout
    # The first messages' receipts came back unchanged; nothing of theirs was sent again.
    assert [r for r in second if r.referral_id in {f.referral_id for f in first}] == first
    expected = queued_to(second)
    assert len(second) == 10
    assert set(expected.values()) == {1}
    assert await deliveries(kafka_settings, federation) == expected

    third: list[Receipt] = []
    again = await invoke(police, args, factory_for(federation_keys, third))
    assert again.exit_code == 0, again.output
    assert "10 of them already sent by an earlier import" in again.stdout
    assert not any("  queued (" in line for line in rows(again))
    assert len(rows(again)) == 10
    assert third == second
    assert await deliveries(kafka_settings, federation) == expected


async def test_nhs_import_after_a_lost_answer_prints_the_original_receipt(
    broker_url: str,
    kafka_settings: Settings,
    federation: Federation,
    federation_keys: FederationKeys,
) -> None:
    """The broker committed but its answer was lost: the import failed; run again, it prints
    'already sent' with the original receipt, and the IDVA service holds the referral once."""
    args = ["import", "--broker", broker_url, str(BUNDLE)]
    first: list[Receipt] = []
    lost = await invoke(nhs, args, factory_for(federation_keys, first, lose=True))
    assert lost.exit_code == 1
    assert "the answer was lost" in lost.stderr
    (receipt,) = first
    rerun = await invoke(nhs, args, factory_for(federation_keys, []))
    assert rerun.exit_code == 0, rerun.output
    said = rerun.stdout
    assert (
        f"already sent: the broker accepted referral {receipt.referral_id} at "
        f"{receipt.accepted_at.isoformat()} and sent nothing again" in said
    )
    printed = json.loads(said[said.index("{") :])
    assert Receipt.model_validate(printed) == receipt
    assert await deliveries(kafka_settings, federation) == queued_to([receipt])
    assert queued_to([receipt]) == Counter({("kelder-idva", str(receipt.referral_id)): 1})
