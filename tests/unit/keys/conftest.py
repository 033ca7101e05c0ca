"""Keys generated once per session: the Kelder federation in a real on-disk store.

Tests that change the federation (rotate, revoke, refresh) take ``fresh``, a small federation
in a ``MemoryStore`` made per test; key generation is fast, so that costs milliseconds.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from keys.errors import Reason, VerificationError
from keys.federation import (
    init_federation,
    load_decryption_keys,
    load_signing_key,
)
from keys.jwk import DecryptionKey, SigningKey, b64url_decode
from keys.registry import BROKER_ID, Registry
from keys.store import FileStore, MemoryStore
from schemas.federation import Federation

# Real time, not a fixed date: the TLS test handshakes with certificates issued "now".
NOW = datetime.now(UTC).replace(microsecond=0)
PASSPHRASE = b"kelder unit-test passphrase 0123456789"
SMALL = Federation.model_validate(
    {
        "name": "Small test partnership",
        "agencies": [
            {"id": "test-police", "name": "Test Constabulary", "role": "police"},
            {"id": "test-nhs", "name": "Test NHS Trust", "role": "nhs_safeguarding"},
            {"id": "test-idva", "name": "Test IDVA service", "role": "idva"},
        ],
    }
)


@pytest.fixture(autouse=True)
def no_cairn_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from no CAIRN_* variables, whatever the shell running pytest set."""
    for name in [n for n in os.environ if n.startswith("CAIRN_")]:
        monkeypatch.delenv(name)


@dataclass(frozen=True)
class Kelder:
    """The session's federation: its store, registry and the private keys tests use."""

    store: FileStore
    registry: Registry
    broker: SigningKey
    police: SigningKey
    nhs: tuple[DecryptionKey, ...]
    idva: tuple[DecryptionKey, ...]


@pytest.fixture(scope="session")
def kelder(tmp_path_factory: pytest.TempPathFactory, federation: Federation) -> Kelder:
    store = FileStore(tmp_path_factory.mktemp("state") / "keys")
    registry = init_federation(store, federation, PASSPHRASE, now=NOW)
    # Each load decrypts a key file; load the ones the tests share once, here.
    return Kelder(
        store=store,
        registry=registry,
        broker=load_signing_key(store, BROKER_ID, PASSPHRASE, registry, now=NOW),
        police=load_signing_key(store, "kelder-police", PASSPHRASE, registry, now=NOW),
        nhs=load_decryption_keys(store, "kelder-nhs", PASSPHRASE, registry, now=NOW),
        idva=load_decryption_keys(store, "kelder-idva", PASSPHRASE, registry, now=NOW),
    )


@dataclass
class Fresh:
    """A small federation of its own for a test that changes it."""

    store: MemoryStore
    registry: Registry

    def signing_key(self, member: str, registry: Registry | None = None) -> SigningKey:
        reg = registry or self.registry
        return load_signing_key(self.store, member, PASSPHRASE, reg, now=reg.issued_at)

    def decryption_keys(
        self, member: str, registry: Registry | None = None
    ) -> tuple[DecryptionKey, ...]:
        reg = registry or self.registry
        return load_decryption_keys(self.store, member, PASSPHRASE, reg, now=reg.issued_at)


@pytest.fixture
def fresh() -> Fresh:
    store = MemoryStore()
    return Fresh(store, init_federation(store, SMALL, PASSPHRASE, now=NOW))


def header_of(token: bytes) -> dict[str, Any]:
    """The decoded protected header of a compact JWS or JWE."""
    header: dict[str, Any] = json.loads(b64url_decode(token.split(b".")[0]))
    return header


def refusal(call: Callable[..., object], *args: Any, **kwargs: Any) -> Reason:
    """The reason ``call`` refuses with; fails the test if it does not refuse."""
    try:
        call(*args, **kwargs)
    except VerificationError as exc:
        return exc.reason
    raise AssertionError(f"{call.__name__} accepted what it should have refused")
