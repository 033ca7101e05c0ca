"""What the throughput benchmark's processes share: their configuration, the line protocol they
report on, the referrals they send and the throwaway keys they sign and open with.

``bench/throughput.py`` starts every other process of a run (``loadgen.py``, ``recipient.py``,
``bare_server.py`` and ``cairn serve``) with one JSON configuration file each and reads their
standard output, one event a line: whitespace-separated fields, the first naming the event
(``ready``, ``begin``, ``ok``, ``fail``, ``seen``, ``end``). Times are ``time.monotonic()``,
which on Linux is CLOCK_MONOTONIC, one clock for every process on the machine, so a time taken
in the load generator and one taken in a recipient can be subtracted.
"""

from __future__ import annotations

import json
import math
import os
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from broker.trust import TrustStore
from keys import FileStore
from schemas.referral import Referral

__all__ = [
    "LOCAL_HOSTS",
    "BenchError",
    "BenchKeys",
    "Job",
    "check_local",
    "emit",
    "make_job",
    "percentile",
    "read_config",
    "utcnow",
]

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost"})


class BenchError(Exception):
    """The benchmark could not produce a meaningful figure; the message says why."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def emit(*fields: object) -> None:
    """One event line on standard output, flushed at once: the orchestrator times by it."""
    sys.stdout.write(" ".join(str(f) for f in fields) + "\n")
    sys.stdout.flush()


def read_config(argv: Sequence[str]) -> dict[str, Any]:
    """The JSON configuration file named by the only argument."""
    if len(argv) != 1:
        raise BenchError("usage: started by bench/throughput.py with one configuration file")
    config = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    if not isinstance(config, dict):
        raise BenchError(f"{argv[0]}: not a JSON object")
    return config


def check_local(bootstrap: str) -> None:
    for server in bootstrap.split(","):
        host = server.strip().rsplit(":", 1)[0].strip("[]")
        if host not in LOCAL_HOSTS:
            raise BenchError(
                f"--bootstrap {server!r} is not on 127.0.0.1; this benchmark talks to a local "
                "Kafka only (start it with deploy/kafka/kafka-local start)"
            )


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


@dataclass
class Job:
    """One referral to send."""

    referral_id: str
    sender: str
    payload: bytes  # the referral JSON: what the baselines post, and what a sender signs
    signed: bytes | None = None  # its compact JWS, when signed ahead of its turn
    signed_at: float = math.nan  # time.time() just before it was signed


def make_job(sample: dict[str, Any]) -> Job:
    """A fresh copy of the sample (new referral id and creation time, so the broker sees a new
    referral rather than a replay), serialised as its sender would."""
    header = {
        **sample["header"],
        "referral_id": str(uuid.uuid4()),
        "created_at": utcnow().isoformat(),
    }
    referral = Referral.model_validate({**sample, "header": header})
    return Job(
        str(referral.header.referral_id),
        referral.header.sender_agency,
        referral.model_dump_json().encode(),
    )


@dataclass(frozen=True)
class BenchKeys:
    """A throwaway federation's key store and its passphrase, made for one run."""

    store: FileStore
    passphrase: bytes

    @classmethod
    def load(cls, folder: str | os.PathLike[str], passphrase_file: str) -> BenchKeys:
        passphrase = Path(passphrase_file).read_bytes().removesuffix(b"\n")
        return cls(FileStore(Path(folder)), passphrase)

    def trust(self, member: str) -> TrustStore:
        return TrustStore(self.store, self.passphrase, member_id=member, clock=utcnow)
