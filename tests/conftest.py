"""Session-wide fixtures: the development federation's keys, generated once per test session."""

from __future__ import annotations

import os
import ssl
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from broker.federation import load_federation
from broker.trust import TrustStore
from keys import FileStore, client_context, init_federation, server_context
from schemas.federation import Federation
from tests.kafka_support import LocalKafka
from tests.mesh_support import LocalMesh, mesh_folder
from tests.pg_support import LocalPostgres
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
def kafka() -> LocalKafka:
    """The local Kafka, started if it is not running. If it cannot start, every test that
    needs it errors: Kafka-backed tests fail, they never skip."""
    local = LocalKafka(int(os.environ.get("CAIRN_KAFKA_PORT", "9092")))
    if not local.answers():
        try:
            local.start()
        except RuntimeError as exc:
            pytest.fail(f"local Kafka could not start, so Kafka-backed tests cannot run: {exc}")
    return local


@pytest.fixture(scope="session")
def federation() -> Federation:
    return load_federation(FEDERATION_DIR)


@pytest.fixture(scope="session")
def federation_keys(tmp_path_factory: pytest.TempPathFactory) -> FederationKeys:
    """The Kelder federation's keys, PKI and registry, created once for the session."""
    return make_federation_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="session")
def postgres() -> Iterator[LocalPostgres]:
    """A throwaway PostgreSQL cluster (tests/pg_support.py), started only for the tests that
    ask for it, stopped and deleted at the end. If it cannot start, those tests fail."""
    cluster = LocalPostgres()
    try:
        cluster.start()
    except Exception as exc:
        cluster.stop()
        pytest.fail(f"PostgreSQL could not start, so the PostgreSQL-backed tests cannot run: {exc}")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(postgres: LocalPostgres) -> Iterator[str]:
    """The URL of a database of this test's own in the session's cluster, dropped after it."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres.url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    yield postgres.url(name)
    with psycopg.connect(postgres.url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


@pytest.fixture
def mesh() -> Iterator[LocalMesh]:
    """NHS England's mesh-sandbox (tests/mesh_support.py) on a free loopback port with full
    MESH authentication, fresh for each test, stopped and deleted after it. If it cannot start,
    the test fails (make venv installs it)."""
    sandbox = LocalMesh(mesh_folder())
    try:
        sandbox.start()
    except Exception as exc:
        pytest.fail(f"mesh-sandbox could not start: {exc}")
    try:
        yield sandbox
    finally:
        sandbox.stop()


@pytest.fixture
def mesh_tls() -> Iterator[LocalMesh]:
    """The same mesh-sandbox over https with a client certificate required (mutual TLS, as a
    real MESH), its throwaway CA and certificates in its folder."""
    sandbox = LocalMesh(mesh_folder(), tls=True)
    try:
        sandbox.start()
    except Exception as exc:
        pytest.fail(f"mesh-sandbox could not start over TLS: {exc}")
    try:
        yield sandbox
    finally:
        sandbox.stop()
