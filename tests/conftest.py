"""Session-wide fixtures: the development federation's keys, generated once per test session."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from broker.federation import load_federation
from broker.trust import TrustStore
from keys import FileStore, client_context, init_federation, server_context
from tests.samples import FEDERATION_DIR

PASSPHRASE = b"cairn test-session passphrase 0123456789"


@dataclass(frozen=True)
class FederationKeys:
    """A key store holding the whole development federation, and shortcuts into it."""

    root: Path  # the key store folder (Settings.key_dir)
    store: FileStore
    passphrase: bytes

    def trust(self, member: str = "cairn-broker") -> TrustStore:
        return TrustStore(
            self.store, self.passphrase, member_id=member, clock=lambda: datetime.now(UTC)
        )

    def server_ssl(self) -> ssl.SSLContext:
        return server_context(self.store, self.passphrase)

    def client_ssl(self, agency: str) -> ssl.SSLContext:
        return client_context(self.store, agency, self.passphrase)


def make_federation_keys(root: Path) -> FederationKeys:
    store = FileStore(root)
    init_federation(store, load_federation(FEDERATION_DIR), PASSPHRASE, now=datetime.now(UTC))
    return FederationKeys(root, store, PASSPHRASE)


@pytest.fixture(scope="session")
def federation_keys(tmp_path_factory: pytest.TempPathFactory) -> FederationKeys:
    """The Kelder federation's keys, PKI and registry, created once for the session."""
    return make_federation_keys(tmp_path_factory.mktemp("keys"))
