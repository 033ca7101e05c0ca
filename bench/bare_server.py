"""The baselines' server of ``bench/throughput.py``, in a process of its own: what the same
Kafka work costs without Cairn.

A bare aiohttp handler over plain HTTP reads the referral JSON, finds its recipients and writes
one record per recipient with the key (the referral id), header names and value size of the
broker's sealed records, then answers 202 after Kafka's acknowledgements. ``transactional``:
both records in one Kafka transaction per request, one transaction at a time (the broker before
group commit); otherwise one idempotent ``acks=all`` ``send_and_wait`` per recipient,
concurrently, no transaction.

Reports ``ready PORT`` once it listens on 127.0.0.1; stops on SIGTERM or after ``timeout_s``.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import uuid
from typing import Any

from aiohttp import web
from aiokafka import AIOKafkaProducer
from common import BenchError, emit, read_config

from broker.config import Settings
from broker.envelope import CONTENT_TYPE
from broker.kafka.topics import delivery_topic
from broker.kafka.transport import kafka_options

CONNECT_TIMEOUT_S = 10.0  # seconds for the producer to start
STOP_TIMEOUT_S = 30.0  # seconds for the producer to flush and stop


def make_app(
    producer: AIOKafkaProducer, prefix: str, padding: dict[str, int], *, transactional: bool
) -> web.Application:
    lock = asyncio.Lock()  # one transaction at a time per transactional id

    async def submit(request: web.Request) -> web.Response:
        body = await request.read()
        header = json.loads(body)["header"]
        referral_id = header["referral_id"]
        request_id = str(uuid.uuid4())
        records = [
            (
                delivery_topic(prefix, r),
                body + b" " * padding.get(r, 0),  # the size of the broker's sealed record
                [
                    ("cairn-referral-id", referral_id.encode()),
                    ("cairn-sender", header["sender_agency"].encode()),
                    ("cairn-recipient", r.encode()),
                    ("cairn-purpose", header["purpose"].encode()),
                    ("cairn-schema-version", header["schema_version"].encode()),
                    ("cairn-request-id", request_id.encode()),
                    ("content-type", CONTENT_TYPE),
                ],
            )
            for r in header["recipients"]
        ]
        key = referral_id.encode()
        if transactional:
            async with lock, producer.transaction():
                for topic, value, headers in records:
                    await producer.send(topic, value, key=key, headers=headers)
        else:
            await asyncio.gather(
                *(
                    producer.send_and_wait(topic, value, key=key, headers=headers)
                    for topic, value, headers in records
                )
            )
        return web.json_response({"referral_id": referral_id, "status": "queued"}, status=202)

    app = web.Application(client_max_size=1_048_576)
    app.router.add_post("/v1/referrals", submit)
    return app


async def main_async(config: dict[str, Any]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    transactional = bool(config["transactional"])
    prefix = str(config["prefix"])
    producer = AIOKafkaProducer(
        **kafka_options(Settings(kafka_bootstrap_servers=config["bootstrap"])),
        acks="all",
        enable_idempotence=True,
        transactional_id=f"{prefix}-producer" if transactional else None,
    )
    await asyncio.wait_for(producer.start(), CONNECT_TIMEOUT_S)
    try:
        app = make_app(producer, prefix, dict(config["padding"]), transactional=transactional)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            emit("ready", runner.addresses[0][1])
            try:
                await asyncio.wait_for(stop.wait(), float(config["timeout_s"]))
            except TimeoutError:
                raise BenchError("the run's timeout passed") from None
        finally:
            await runner.cleanup()
    finally:
        await asyncio.wait_for(producer.stop(), STOP_TIMEOUT_S)


def main() -> int:
    try:
        asyncio.run(main_async(read_config(sys.argv[1:])))
    except (BenchError, OSError) as exc:
        print(f"bare_server: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
