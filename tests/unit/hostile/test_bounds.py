"""The input bounds are settings the broker honours, and one mapping makes every error a problem.

A broker configured tighter than the defaults (``max_json_depth``, ``max_jose_header_bytes``,
``max_json_integer``) refuses at its configured bound, with the bound in the problem. Every
error class any Cairn package defines has a problem type: an input error is a 4xx, an
infrastructure error a 503, so nothing a client sends can reach the 500 branch by its class.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from broker.config import Settings
from broker.kafka.transport import MemoryTransport
from broker.web.problems import PROBLEM_TYPES, REASON_TYPES
from keys.errors import Reason
from schemas.errors import CairnError, InfrastructureError, InputError
from tests.conftest import FederationKeys
from tests.samples import FEDERATION_DIR, sample
from tests.unit.hostile.support import assert_problem, exchange, header_text, signed

POLICE = "kelder-police"


@pytest.fixture
def settings(federation_keys: FederationKeys) -> Settings:
    """The unit broker's settings, with every input bound at its tightest."""
    return Settings(
        max_body_bytes=64_000,
        topic_prefix="unit",
        federation_dir=FEDERATION_DIR,
        key_dir=federation_keys.root,
        max_json_depth=4,
        max_jose_header_bytes=256,
        max_json_integer=2**32,
    )


Post = Callable[[str, bytes], Awaitable[tuple[int, dict[str, Any]]]]


@pytest.fixture
def post(broker_url: str, federation_keys: FederationKeys, transport: MemoryTransport) -> Post:
    """Sign ``payload`` under the header text given, as the police; status and body back."""
    key = federation_keys.trust(POLICE).signing_key()

    async def send(header: str, payload: bytes) -> tuple[int, dict[str, Any]]:
        before = transport.published
        answer = await exchange(
            broker_url, federation_keys.client_ssl(POLICE), body=signed(header, payload, key)
        )
        if answer.status == 202:
            return 202, answer.json()
        return answer.status, assert_problem(
            answer, published_before=before, published_now=transport.published
        )

    return send


@pytest.fixture
def header(federation_keys: FederationKeys) -> Callable[[str], str]:
    key = federation_keys.trust(POLICE).signing_key()
    return lambda extra="": header_text(key, iat=str(int(time.time())), extra=extra)


async def test_a_referral_within_the_tight_bounds_is_accepted(
    post: Post, header: Callable[[str], str]
) -> None:
    status, _ = await post(header(""), json.dumps(sample()).encode())
    assert status == 202


async def test_a_body_deeper_than_max_json_depth_is_refused_at_the_bound(
    post: Post, header: Callable[[str], str]
) -> None:
    data = sample()
    data["wishes"]["support_requested"] = [[["x"]]]  # depth 5: referral, wishes, 3 lists
    status, body = await post(header(""), json.dumps(data).encode())
    assert status == 422
    assert body["errors"] == [
        {"field": "(body)", "problem": "arrays and objects nest deeper than 4 levels"}
    ]


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        (',"x":[[[[1]]]]', "deeper than 4 levels"),
        (f',"x":{2**32 + 1}', "outside ±4294967296"),
        (',"x":"' + "a" * 120 + '"', "larger than 256 bytes"),
    ],
    ids=["depth", "integer", "size"],
)
async def test_a_header_past_a_configured_bound_is_refused_at_the_bound(
    post: Post, header: Callable[[str], str], extra: str, said: str
) -> None:
    status, body = await post(header(extra), json.dumps(sample()).encode())
    assert status == 400
    assert body["type"] == "urn:cairn:problem:malformed-signature"
    assert said in str(body["detail"])


# --- One mapping for every error class ---------------------------------------------------------


def _every_module() -> Iterator[str]:
    for package in ("schemas", "keys", "broker", "adapters"):
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, f"{package}."):
            if not info.name.endswith("__main__"):
                yield info.name


def _subclasses(cls: type[CairnError]) -> Iterator[type[CairnError]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_every_error_class_has_a_problem_type_of_its_family() -> None:
    for name in _every_module():
        importlib.import_module(name)
    classes = set(_subclasses(CairnError))
    assert len(classes) > 10
    for cls in classes:
        status = next((s for mapped, s, _, _ in PROBLEM_TYPES if issubclass(cls, mapped)), None)
        assert status is not None, f"{cls.__module__}.{cls.__name__} has no problem type"
        if issubclass(cls, InputError):
            assert 400 <= status < 500, cls
        else:
            assert issubclass(cls, InfrastructureError), f"{cls.__name__}: input or infrastructure?"
            assert status == 503, cls


def test_every_verification_reason_is_a_4xx() -> None:
    for reason in Reason:
        status = REASON_TYPES.get(reason, (403, "", ""))[0]
        assert 400 <= status < 500, reason
    assert REASON_TYPES[Reason.IAT_INVALID][1] == "signature-time-invalid"
