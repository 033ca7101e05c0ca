"""Acceptance 1 of issue 17 over HTTP: independent Go tiles clients read a live auditor's log.

A real auditor app (``broker.audit.service.auditor_app``) serves its log over real TLS on a
free loopback port; ``tests/interop/go/httptiles`` reads it through the C2SP tlog-tiles
endpoints alone, with two clients that share no code with ours:

* Go's golang.org/x/mod: the checkpoint verified with ``sumdb/note`` and the key fetched from
  ``/v1/audit/verifier-key`` (which must be the registry's key this test passes in); inclusion
  of entries and consistency of an earlier checkpoint with the latest proved with
  ``sumdb/tlog``'s ``TileHashReader`` over an HTTP ``TileReader`` (partial tiles included);
* transparency-dev's tessera client (``HTTPFetcher``, ``ProofBuilder``, ``LogStateTracker``)
  with transparency-dev/merkle's RFC 9162 proof checks.

Entry bundles are read with the auditor's client certificate (the Go client presents it) and
each entry's leaf hash is checked against the tree; without a certificate they are refused.
The log's events are the samples' (canonical audit events), appended straight to the log, so
no Kafka is needed. No Go toolchain fails the test (tests/go_support.py; ``make go``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from broker.audit.checkpoint import Checkpoint, NoteVerifier, sign_checkpoint
from broker.audit.files import DEFAULT_ORIGIN
from broker.audit.service import Auditor, auditor_app, tls_context
from broker.config import Settings
from broker.federation import load_federation
from keys import AUDITOR_ID
from keys.registry import KeyStatus, KeyUse
from keys.store import CA_CERT, client_cert, client_key
from tests.conftest import FederationKeys
from tests.go_support import GO_TIMEOUT_S, go_build, go_env
from tests.openapi_support import serving
from tests.samples import FEDERATION_DIR, REPO
from tests.unit.audit.conftest import NOW, events_for, sample_messages

PROGRAM = REPO / "tests" / "interop" / "go"
ROUNDS = 10  # of the samples' 66 events: 660 entries, two full level-0 tiles and a partial one
FIRST = 300  # the earlier checkpoint's size: a partial tile of width 44 at level 0, index 1
RUN_TIMEOUT_S = 120.0


def _records() -> list[tuple[int, bytes]]:
    """(Kafka offset, canonical event) pairs: the samples' events, ROUNDS times at later times."""
    messages = sample_messages(load_federation(FEDERATION_DIR))
    events = [
        event
        for r in range(ROUNDS)
        for n, message in enumerate(messages)
        for event in events_for(message, NOW + timedelta(days=r, minutes=n))
    ]
    return list(enumerate(events))


def _registry_vkey(keys: FederationKeys) -> str:
    """The auditor's checkpoint verifier key as the verified registry lists it."""
    member = keys.trust(AUDITOR_ID).registry().member(AUDITOR_ID)
    assert member is not None
    public = [
        k.jwk.public_key()
        for k in member.keys
        if k.use is KeyUse.SIGNING and k.status is KeyStatus.ACTIVE
    ]
    assert len(public) == 1
    assert isinstance(public[0], Ed25519PublicKey)
    return NoteVerifier(DEFAULT_ORIGIN, public[0]).vkey()


@dataclass(frozen=True)
class Live:
    url: str
    auditor: Auditor
    binary: Path
    ca: Path
    cert: Path
    key: Path
    old: Path
    vkey: str
    size: int


async def _run(binary: Path, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        str(binary),
        *args,
        env=go_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.fixture
async def live(federation_keys: FederationKeys, tmp_path: Path) -> AsyncIterator[Live]:
    """An auditor over TLS whose log was checkpointed at FIRST entries (that checkpoint fetched
    over HTTP by the Go client and kept) and then at all of them."""
    binary = await asyncio.wait_for(
        asyncio.to_thread(go_build, PROGRAM, "./httptiles", tmp_path / "httptiles"), GO_TIMEOUT_S
    )
    store = federation_keys.store
    key = tmp_path / "auditor.key"  # the Go client's copy, unencrypted, in this test's folder
    private = load_pem_private_key(
        store.read(client_key(AUDITOR_ID)), password=federation_keys.passphrase
    )
    key.touch(mode=0o600)
    key.write_bytes(private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))

    settings = Settings(
        topic_prefix="interop", federation_dir=FEDERATION_DIR, key_dir=federation_keys.root
    )
    auditor = Auditor(settings, federation_keys.trust(AUDITOR_ID), directory=tmp_path / "audit")
    records = _records()
    await auditor.open()
    try:
        await auditor.call(auditor.log.append, records[:FIRST])
        await auditor.checkpoint()
        context = tls_context(store, federation_keys.passphrase)
        async with serving(auditor_app(auditor), context) as url:
            ca = store.path(CA_CERT)
            code, note, err = await _run(binary, "checkpoint", "-base", url, "-ca", str(ca))
            assert code == 0, err
            assert note.splitlines()[1] == str(FIRST)
            old = tmp_path / "old-checkpoint"
            old.write_text(note)
            await auditor.call(auditor.log.append, records[FIRST:])
            await auditor.checkpoint()
            yield Live(
                url,
                auditor,
                binary,
                ca,
                store.path(client_cert(AUDITOR_ID)),
                key,
                old,
                _registry_vkey(federation_keys),
                len(records),
            )
    finally:
        await auditor.close()


def _verify(live: Live, *, vkey: str | None = None, old: Path | None = None) -> list[str]:
    entries = sorted({0, 1, 255, 256, FIRST - 1, FIRST, 511, 512, live.size - 1})
    return [
        "verify",
        "-base",
        live.url,
        "-ca",
        str(live.ca),
        "-vkey",
        vkey or live.vkey,
        "-cert",
        str(live.cert),
        "-key",
        str(live.key),
        "-old",
        str(old or live.old),
        "-entries",
        ",".join(map(str, entries)),
    ]


async def test_go_clients_read_the_log_through_the_tiles_endpoints(live: Live) -> None:
    """x/mod and tessera verify the checkpoint with the published (= registry's) key, prove
    nine entries' inclusion and the earlier checkpoint's consistency, from tiles over HTTP;
    the entries, read with the auditor's certificate, hash to the tree's leaves; without a
    certificate an entry bundle is refused."""
    assert live.size == ROUNDS * 66
    code, out, err = await _run(live.binary, *_verify(live))
    assert code == 0, err
    assert out.split() == ["ok", str(live.size), str(FIRST), "9"]


async def test_go_clients_refuse_a_foreign_key_and_a_forked_checkpoint(
    live: Live, tmp_path: Path
) -> None:
    """The registry naming another key than the one published is refused; so is an earlier
    checkpoint signed by the auditor's own key but for another tree of the same size (a fork
    the log cannot be consistent with)."""
    other = NoteVerifier(DEFAULT_ORIGIN, Ed25519PublicKey.from_public_bytes(bytes(32))).vkey()
    code, out, err = await _run(live.binary, *_verify(live, vkey=other))
    assert code != 0
    assert "not the registry's" in err
    assert "ok" not in out

    forked = tmp_path / "forked-checkpoint"
    signing = live.auditor.trust.signing_key()
    forked.write_bytes(
        sign_checkpoint(Checkpoint(DEFAULT_ORIGIN, FIRST, bytes(32)), DEFAULT_ORIGIN, signing)
    )
    code, out, err = await _run(live.binary, *_verify(live, old=forked))
    assert code != 0
    assert "consistency" in err
    assert "ok" not in out
