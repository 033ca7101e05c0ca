"""One recipient agency of ``bench/throughput.py``, in a process of its own.

``inbox`` (the broker's recipients): ``adapters.inbox.Inbox`` with ``adapters.agency.opener_for``,
as ``cairn inbox`` reads: a read_committed consumer group, each record decrypted with the agency's
own keys and the broker's signature verified, one commit per batch. ``plain`` (the baselines'
recipients, or every path with ``--recipient plain``): a bare read_committed consumer that, like
``Inbox.drain``, commits once per batch when it has a group, and opens nothing.

Reports ``ready`` once its consumer has started, then ``seen ID T`` for each referral handed to
its handler (after decryption and verification, for ``inbox``). Stops on SIGTERM or after the
configured ``timeout_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from common import BenchError, BenchKeys, emit, read_config

from adapters.agency import opener_for
from adapters.inbox import Delivery, Inbox
from broker.config import Settings
from broker.kafka.transport import kafka_options
from schemas.errors import CairnError

CONNECT_TIMEOUT_S = 10.0  # seconds for the consumer to start
STOP_TIMEOUT_S = 20.0  # seconds for the consumer to leave its group
DRAIN_SLICE_S = 1.0  # seconds per Inbox.drain call, so a SIGTERM is seen within about this


async def run_inbox(
    config: dict[str, Any], kafka: dict[str, Any], stop: asyncio.Event, deadline: float
) -> None:
    agency = str(config["agency"])
    trust = BenchKeys.load(config["keys"], config["passphrase_file"]).trust(agency)
    trust.decryption_keys()  # decrypt the private keys now, not in the first measured record

    def dead_lettered(reason: str) -> None:
        # Inbox dead-letters a record it cannot open and goes on, leaving the run to wait for
        # its timeout; a benchmark stops at once instead.
        raise BenchError(f"{agency}'s inbox could not open a record ({reason})")

    async with Inbox(
        kafka,
        agency=agency,
        topic=config["topic"],
        dlq_topic=config["dlq_topic"],
        open_value=opener_for(trust, agency),
        group_id=config["group_id"],
        connect_timeout_s=CONNECT_TIMEOUT_S,
        on_dead_letter=dead_lettered,
    ) as inbox:

        async def handle(delivery: Delivery) -> None:
            emit("seen", delivery.disclosure.referral_id, f"{time.monotonic():.6f}")

        emit("ready")
        while not stop.is_set() and time.monotonic() < deadline:
            await inbox.drain(
                handle,
                idle_timeout_s=DRAIN_SLICE_S,
                total_timeout_s=max(0.1, min(DRAIN_SLICE_S, deadline - time.monotonic())),
            )


async def run_plain(
    config: dict[str, Any], kafka: dict[str, Any], stop: asyncio.Event, deadline: float
) -> None:
    group_id = config.get("group_id")
    consumer = AIOKafkaConsumer(
        config["topic"],
        **kafka,
        group_id=group_id,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await asyncio.wait_for(consumer.start(), CONNECT_TIMEOUT_S)
    try:
        emit("ready")
        while not stop.is_set() and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500, max_records=100)
            done: dict[TopicPartition, int] = {}
            for tp, messages in batches.items():
                for msg in messages:
                    emit("seen", msg.key.decode(), f"{time.monotonic():.6f}")
                    done[tp] = msg.offset + 1
            if group_id is not None and done:
                await consumer.commit(done)  # one commit per batch, as Inbox.drain
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(consumer.stop(), STOP_TIMEOUT_S)


async def main_async(config: dict[str, Any]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    deadline = time.monotonic() + float(config["timeout_s"])
    kafka = kafka_options(Settings(kafka_bootstrap_servers=config["bootstrap"]))
    if config["mode"] == "inbox":
        await run_inbox(config, kafka, stop, deadline)
    else:
        await run_plain(config, kafka, stop, deadline)


def main() -> int:
    try:
        asyncio.run(main_async(read_config(sys.argv[1:])))
    except (BenchError, CairnError, OSError) as exc:
        print(f"recipient: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
