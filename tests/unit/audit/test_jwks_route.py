"""GET /v1/audit/jwks: the registry's keys as a JWK Set (RFC 7517 §5), fetched over real TLS
without a client certificate, read by jwcrypto, revoked keys left out."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from jwcrypto import jwk as jwcrypto_jwk

from broker.audit.service import Auditor, auditor_app, tls_context
from broker.config import Settings
from keys import AUDITOR_ID
from keys.federation import revoke
from keys.registry import KeyStatus, KeyUse, Registry
from keys.store import CA_CERT
from tests.conftest import FederationKeys, make_federation_keys

REVOKED_MEMBER = "kelder-police"


@pytest.fixture(scope="module")
def revoked_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[FederationKeys, str]:
    """A federation of its own (revocation changes the registry) with one agency key revoked."""
    keys = make_federation_keys(tmp_path_factory.mktemp("jwks-keys"))
    registry = keys.trust(AUDITOR_ID).registry()
    member = registry.member(REVOKED_MEMBER)
    assert member is not None
    active = member.active_key(KeyUse.ENCRYPTION)
    assert active is not None
    revoke(keys.store, REVOKED_MEMBER, active.kid, keys.passphrase, now=datetime.now(UTC))
    return keys, active.kid


@pytest.fixture
async def auditor_url(
    settings: Settings, revoked_keys: tuple[FederationKeys, str], tmp_path: Path
) -> AsyncIterator[str]:
    """A real auditor app on a loopback port, with the auditor's real TLS context."""
    keys, _revoked = revoked_keys
    auditor = Auditor(settings, keys.trust(AUDITOR_ID), directory=tmp_path / "audit")
    await auditor.open()
    server = TestServer(auditor_app(auditor), host="127.0.0.1")
    await server.start_server(ssl=tls_context(keys.store, keys.passphrase))
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()
        await auditor.close()


async def _get(url: str, context: ssl.SSLContext) -> tuple[int, str, dict[str, str], Any]:
    connector = aiohttp.TCPConnector(ssl=context)
    async with aiohttp.ClientSession(connector=connector) as session, session.get(url) as reply:
        body = await reply.text()
        return reply.status, reply.content_type, dict(reply.headers), body


def _anonymous(keys: FederationKeys) -> ssl.SSLContext:
    """A client that trusts the federation CA and presents no certificate: any third party."""
    return ssl.create_default_context(cafile=str(keys.store.path(CA_CERT)))


def _registry(keys: FederationKeys) -> Registry:
    return keys.trust(AUDITOR_ID).registry()


async def test_anyone_fetches_the_jwk_set_and_jwcrypto_finds_every_usable_key(
    auditor_url: str, revoked_keys: tuple[FederationKeys, str]
) -> None:
    """Without a client certificate: 200 application/jwk-set+json; jwcrypto loads it, and every
    key the registry does not revoke is there under its kid, with the same public key."""
    keys, revoked = revoked_keys
    status, media, headers, body = await _get(f"{auditor_url}/v1/audit/jwks", _anonymous(keys))
    assert status == 200, body
    assert media == "application/jwk-set+json"
    assert headers["Cache-Control"] == "no-cache"
    theirs = jwcrypto_jwk.JWKSet.from_json(body)
    registry = _registry(keys)
    expected = {
        k.kid: k for m in registry.members for k in m.keys if k.status is not KeyStatus.REVOKED
    }
    assert {k.get("kid") for k in theirs["keys"]} == set(expected)
    for kid, entry in expected.items():
        found = theirs.get_key(kid)
        assert found is not None
        assert found.thumbprint() == kid  # RFC 7638, computed by jwcrypto
        public = json.loads(found.export_public())
        assert {n: public.get(n) for n in entry.as_jwk()} == entry.as_jwk()
        assert not found.has_private
    document = json.loads(body)
    assert document["cairn_registry_serial"] == registry.serial
    assert revoked not in {k["kid"] for k in document["keys"]}


async def test_the_revoked_key_is_left_out_though_the_registry_lists_it(
    auditor_url: str, revoked_keys: tuple[FederationKeys, str]
) -> None:
    """The registry still names the revoked key (status revoked); the JWK Set does not."""
    keys, revoked = revoked_keys
    statuses = {k.kid: k.status for m in _registry(keys).members for k in m.keys}
    assert statuses[revoked] is KeyStatus.REVOKED
    _status, _media, _headers, body = await _get(f"{auditor_url}/v1/audit/jwks", _anonymous(keys))
    assert jwcrypto_jwk.JWKSet.from_json(body).get_key(revoked) is None


async def test_the_rest_of_the_audit_api_still_needs_the_auditors_certificate(
    auditor_url: str, revoked_keys: tuple[FederationKeys, str]
) -> None:
    """The JWK Set being public opens nothing else: the entries are refused without the
    auditor's certificate, and the JWK Set is served to an agency's certificate too."""
    keys, _revoked = revoked_keys
    status, media, _headers, body = await _get(f"{auditor_url}/v1/audit/entries", _anonymous(keys))
    assert status == 403
    assert media == "application/problem+json"
    assert json.loads(body)["type"] == "urn:cairn:problem:unauthenticated"
    status, *_rest = await _get(f"{auditor_url}/v1/audit/jwks", keys.client_ssl("kelder-idva"))
    assert status == 200
