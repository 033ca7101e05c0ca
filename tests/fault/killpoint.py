"""A test-only kill point: the broker process SIGKILLs itself just after Kafka committed a
submission and before it could answer or remember it.

That instant cannot be hit reliably from outside (it lasts microseconds), yet it is the one
that decides whether a crash duplicates a disclosure: the records are visible to recipients,
the sender never heard "accepted", so it retries. The crash test starts ``cairn serve`` as

    python -c "import tests.fault.killpoint; from broker.cli.main import main; main()" serve

and this module, imported first, wraps the public ``publish`` method of the transport class
the broker's web app uses, so that after a publish that carried a disclosure returns, the
process kills itself with probability ``KILLPOINT_AFTER_COMMIT`` (0 to 1; unset or 0: never).
Before dying it appends the referral ids it had just committed to ``KILLPOINT_LOG`` (if set),
one line per kill, fsynced, so the test can name the referrals a kill left unanswered.

The variables are not ``CAIRN_*``: the broker's settings refuse names they do not know.
Nothing in the broker imports this module; it lives under tests/ and is loaded only by the
crash test's command line.
"""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Callable, Sequence
from typing import Any

import broker.kafka.transport as transport_module
import broker.web.app as app_module

__all__ = ["ENV_LOG", "ENV_PROBABILITY", "install"]

ENV_PROBABILITY = "KILLPOINT_AFTER_COMMIT"
ENV_LOG = "KILLPOINT_LOG"
DELIVERY_MARK = ".deliver."  # a delivery topic is <prefix>.deliver.<agency>
REFERRAL_HEADER = "cairn-referral-id"


def _transport_class() -> type[Any]:
    """The class whose instances the broker publishes through (KafkaTransport today)."""
    cls = getattr(app_module, "KafkaTransport", None) or transport_module.KafkaTransport
    if not callable(getattr(cls, "publish", None)):
        raise RuntimeError(f"{cls!r} has no publish method to put a kill point on")
    return cls


def _referral_ids(records: Sequence[Any]) -> list[str]:
    ids: set[str] = set()
    for record in records:
        if DELIVERY_MARK not in str(getattr(record, "topic", "")):
            continue
        for name, value in getattr(record, "headers", ()):
            if name == REFERRAL_HEADER:
                ids.add(bytes(value).decode("ascii", "replace"))
    return sorted(ids)


def _note(path: str, ids: list[str]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (" ".join(ids) + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)


def install(probability: float, log_path: str | None) -> None:
    cls = _transport_class()
    original: Callable[..., Any] = cls.publish
    chance = random.Random(os.urandom(16))  # noqa: S311 - a test's dice, not a secret

    async def publish(self: Any, records: Sequence[Any], *args: Any, **kwargs: Any) -> Any:
        result = await original(self, records, *args, **kwargs)
        ids = _referral_ids(records)
        if ids and chance.random() < probability:
            if log_path:
                _note(log_path, ids)
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    publish.__wrapped__ = original  # type: ignore[attr-defined]
    cls.publish = publish


_probability = float(os.environ.get(ENV_PROBABILITY) or 0)
if not 0 <= _probability <= 1:
    raise ValueError(f"{ENV_PROBABILITY} must be between 0 and 1, not {_probability}")
if _probability > 0:
    install(_probability, os.environ.get(ENV_LOG))
