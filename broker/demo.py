"""The scripted demo: a police referral reaches two partner agencies through the real broker.

Steps: create the development federation's keys if there are none, create the topics, start
``cairn serve`` as its own process (mutual TLS), submit the sample referral signed as the police
adapter would, have each recipient's inbox decrypt and verify what it consumes, print what each
got, stop the broker with SIGTERM. Kafka itself is started and stopped by ``make demo``.
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

from adapters.agency import client_for, inbox_for
from adapters.inbox import Delivery
from broker.config import Settings
from broker.federation import load_federation
from broker.topics import federation_topics
from broker.transport import create_topics
from keys import FileStore, init_federation, passphrase_from_env
from schemas.errors import CairnError
from schemas.federation import Federation
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

    _ensure_keys(settings, federation)

    _step(f"creating topics on {settings.kafka_bootstrap_servers}")
    specs = federation_topics(federation, settings.topic_prefix)
    result = asyncio.run(create_topics(settings, specs))
    click.echo(
        f"    {sum(v == 'created' for v in result.values())} created, "
        f"{sum(v == 'exists' for v in result.values())} already there"
    )

    port = _free_port()
    url = f"https://127.0.0.1:{port}"
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
        if not asyncio.run(_wait_ready(settings, url, broker, timeout_s=30.0)):
            click.secho("    the broker did not become ready", fg="red")
            return False
        click.echo("    ready")

        _step(
            f"{header.sender_agency} submits referral {header.referral_id} "
            f"({header.purpose.value}) to {', '.join(header.recipients)}"
        )
        try:
            receipt = asyncio.run(_submit(settings, url, referral))
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


def _ensure_keys(settings: Settings, federation: Federation) -> None:
    store = FileStore(settings.keys_path)
    if not store.is_empty():
        _step(f"using the federation keys in {store.root}")
        return
    _step(f"creating the development federation's keys in {store.root}")
    registry = init_federation(store, federation, passphrase_from_env(), now=datetime.now(UTC))
    click.echo(
        f"    root key, CA, broker and auditor keys, {len(federation.agencies)} agencies "
        f"(signing key, encryption key, TLS client certificate each); "
        f"registry serial {registry.serial}"
    )


async def _wait_ready(
    settings: Settings, url: str, process: subprocess.Popen[bytes], *, timeout_s: float
) -> bool:
    """Poll /readyz over mutual TLS (as the police adapter) until the broker is ready."""
    from keys import client_context

    context = client_context(FileStore(settings.keys_path), "kelder-police", passphrase_from_env())
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=3), connector=aiohttp.TCPConnector(ssl=context)
    ) as session:
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


async def _submit(settings: Settings, url: str, referral: Referral) -> Any:
    async with client_for(settings, referral.header.sender_agency, url) as client:
        return await client.submit(referral)


async def _receive_all(settings: Settings, header: Any, timeout_s: float) -> dict[str, bool]:
    from broker.cli import describe

    received: dict[str, bool] = {}

    async def one(agency: str) -> None:
        async def show(delivery: Delivery) -> None:
            click.echo(f"    {describe(delivery)}")
            if delivery.disclosure.referral_id == header.referral_id:
                received[agency] = True

        async with inbox_for(settings, agency) as box:
            deadline = time.monotonic() + timeout_s
            while agency not in received and time.monotonic() < deadline:
                await box.drain(
                    show, idle_timeout_s=2.0, total_timeout_s=max(0.1, deadline - time.monotonic())
                )

    await asyncio.gather(*(one(a) for a in header.recipients))
    return received
