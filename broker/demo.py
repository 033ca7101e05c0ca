"""The scripted demo: a police referral reaches two partner agencies through the real broker.

Steps: create the topics, start ``cairn serve`` as its own process, submit the sample referral
as the police adapter would, have each recipient's inbox consume its topic, print what each got,
stop the broker with SIGTERM. Kafka itself is started and stopped by ``make demo``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import click

from adapters.client import ReferralClient
from adapters.inbox import Delivery, Inbox
from broker.config import Settings
from broker.federation import load_federation
from broker.topics import delivery_topic, federation_topics
from broker.transport import create_topics, kafka_options
from schemas.errors import CairnError
from schemas.referral import Referral

__all__ = ["fresh_copy", "run_demo"]

DEFAULT_SAMPLE = Path("samples") / "referral-high-risk.json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fresh_copy(sample: dict[str, Any]) -> Referral:
    """The sample with a new referral id and creation time, so every run is a new referral."""
    header = {
        **sample["header"],
        "referral_id": str(uuid.uuid4()),
        "created_at": datetime.now(UTC).isoformat(),
    }
    return Referral.model_validate({**sample, "header": header})


def _step(text: str) -> None:
    click.secho(f"==> {text}", bold=True)


def run_demo(settings: Settings, *, sample: Path | None, timeout_s: float) -> bool:
    federation = load_federation(settings.federation_dir)
    path = sample or settings.federation_dir / DEFAULT_SAMPLE
    referral = fresh_copy(json.loads(path.read_text(encoding="utf-8")))
    header = referral.header

    _step(f"creating topics on {settings.kafka_bootstrap_servers}")
    specs = federation_topics(federation, settings.topic_prefix)
    result = asyncio.run(create_topics(settings, specs))
    click.echo(
        f"    {sum(v == 'created' for v in result.values())} created, "
        f"{sum(v == 'exists' for v in result.values())} already there"
    )

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    _step(f"starting the broker on {url}")
    env = {
        **os.environ,
        "CAIRN_HTTP_HOST": "127.0.0.1",
        "CAIRN_HTTP_PORT": str(port),
        "CAIRN_LOG_LEVEL": os.environ.get("CAIRN_LOG_LEVEL", "warning"),
    }
    broker = subprocess.Popen(
        [sys.executable, "-m", "broker", "serve"], env=env, stdin=subprocess.DEVNULL
    )
    try:
        if not asyncio.run(_wait_ready(url, broker, timeout_s=30.0)):
            click.secho("    the broker did not become ready", fg="red")
            return False
        click.echo("    ready")

        _step(
            f"{header.sender_agency} submits referral {header.referral_id} "
            f"({header.purpose.value}) to {', '.join(header.recipients)}"
        )
        try:
            receipt = asyncio.run(_submit(url, referral))
        except CairnError as exc:
            click.secho(f"    refused: {exc}", fg="red")
            return False
        click.echo(
            f"    202 accepted at {receipt.accepted_at:%H:%M:%S}: "
            + ", ".join(f"{r.agency}={r.status.value}" for r in receipt.recipients)
        )

        _step("recipients read their own topics (read_committed)")
        received = asyncio.run(_receive_all(settings, header, timeout_s))
    finally:
        _step("stopping the broker (SIGTERM: drain, flush)")
        broker.send_signal(signal.SIGTERM)
        try:
            broker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            broker.kill()
            broker.wait()
        click.echo(f"    broker exited with {broker.returncode}")

    _step("summary")
    ok = True
    for agency in header.recipients:
        got = received.get(agency)
        mark = "received" if got else "MISSING"
        ok = ok and bool(got)
        click.secho(f"    {agency:24} {mark}", fg="green" if got else "red")
    others = sorted(set(received) - set(header.recipients))
    if others:
        ok = False
        click.secho(f"    unexpected recipients: {', '.join(others)}", fg="red")
    click.secho(
        "demo: OK, every recipient received the referral" if ok else "demo: FAILED",
        fg="green" if ok else "red",
        bold=True,
    )
    return ok


async def _wait_ready(url: str, process: subprocess.Popen[bytes], *, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            try:
                async with session.get(f"{url}/readyz") as response:
                    if response.status == 200:
                        return True
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.3)
    return False


async def _submit(url: str, referral: Referral) -> Any:
    async with ReferralClient(url) as client:
        return await client.submit(referral)


async def _receive_all(settings: Settings, header: Any, timeout_s: float) -> dict[str, bool]:
    from broker.cli import describe

    received: dict[str, bool] = {}

    async def one(agency: str) -> None:
        async def show(delivery: Delivery) -> None:
            click.echo(f"    {describe(delivery)}")
            if delivery.disclosure.referral_id == header.referral_id:
                received[agency] = True

        async with Inbox(
            kafka_options(settings),
            agency=agency,
            topic=delivery_topic(settings.topic_prefix, agency),
            dlq_topic=f"{settings.topic_prefix}.dlq",
        ) as box:
            deadline = time.monotonic() + timeout_s
            while agency not in received and time.monotonic() < deadline:
                await box.drain(
                    show, idle_timeout_s=2.0, total_timeout_s=max(0.1, deadline - time.monotonic())
                )

    await asyncio.gather(*(one(a) for a in header.recipients))
    return received
