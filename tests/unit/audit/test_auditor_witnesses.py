"""The auditor's witness collection against in-process witnesses: results, storage, serving."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from structlog.testing import capture_logs

from broker.audit.checkpoint import Checkpoint, NoteVerifier, sign_checkpoint
from broker.audit.cosign import add_cosignatures, cosign, verify_cosignatures
from broker.audit.files import DEFAULT_ORIGIN, WITNESS_STATUS_FILE
from broker.audit.merkle import Tree, leaf_hash
from broker.audit.service import Auditor, auditor_app
from broker.audit.witness import (
    Witness,
    WitnessEndpoint,
    WitnessResult,
    submit_checkpoint,
    witness_app,
)
from broker.config import Settings, WitnessSetting
from broker.ops.health import AuditorAnswer, status_answer
from broker.ops.metrics import Metrics, ops_snapshot
from keys import AUDITOR_ID
from tests.conftest import FederationKeys

Feed = list[tuple[int, bytes]]


def _witness(tmp_path: Path, name: str, seed: int, keys: FederationKeys) -> Witness:
    log_key = keys.trust(AUDITOR_ID).signing_key().private_key.public_key()
    key = Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
    return Witness(
        tmp_path / name, name, key, {DEFAULT_ORIGIN: [NoteVerifier(DEFAULT_ORIGIN, log_key)]}
    )


@pytest.fixture
async def servers(
    tmp_path: Path, federation_keys: FederationKeys
) -> AsyncIterator[list[tuple[Witness, str]]]:
    """Two witnesses of the auditor's log on loopback HTTP ports."""
    made = []
    for name, seed in (("w1.test", 7), ("w2.test", 9)):
        witness = _witness(tmp_path, name, seed, federation_keys)
        server = TestServer(witness_app(witness), host="127.0.0.1")
        await server.start_server()
        made.append((witness, server))
    try:
        yield [(w, str(s.make_url("/"))) for w, s in made]
    finally:
        for _, server in made:
            await server.close()


def _settings(settings: Settings, witnesses: list[WitnessSetting], quorum: int = 1) -> Settings:
    values = {
        **settings.model_dump(),
        "auditor_witnesses": witnesses,
        "auditor_witness_quorum": quorum,
        "auditor_witness_timeout_s": 2.0,
    }
    return Settings(**values)


async def test_a_witness_ahead_is_a_fork_a_wrong_key_is_invalid_and_the_other_cosigns(
    settings: Settings,
    federation_keys: FederationKeys,
    feed: Feed,
    servers: list[tuple[Witness, str]],
    tmp_path: Path,
) -> None:
    """w1 was shown a larger tree signed with our key (a fork: it holds size 40, we have 6);
    an endpoint configured with w1's URL but w2's key gives an invalid cosignature; w2 cosigns.
    Only w2's cosignature is kept and served; each answer is counted and in witnesses.json."""
    (w1, url1), (w2, url2) = servers
    key = federation_keys.trust(AUDITOR_ID).signing_key()
    other = Tree.of(leaf_hash(b"another %d" % i) for i in range(40))
    shown = sign_checkpoint(Checkpoint(DEFAULT_ORIGIN, 40, other.root()), DEFAULT_ORIGIN, key)
    w1.add_checkpoint(b"old 0\n\n" + shown)
    configured = [
        WitnessSetting(vkey=w1.verifier.vkey(), url=url1),
        WitnessSetting(vkey=w2.verifier.vkey(), url=url2),
    ]
    metrics = Metrics()
    auditor = Auditor(
        _settings(settings, configured, quorum=2),
        federation_keys.trust(AUDITOR_ID),
        directory=tmp_path / "audit",
        metrics=metrics,
    )
    await auditor.open()
    try:
        await auditor.call(auditor.log.append, feed[:6])
        with capture_logs() as logs:
            note = await auditor.checkpoint()
        assert [c.name for c in verify_cosignatures(note, [w1.verifier, w2.verifier])] == [
            "w2.test"
        ]
        assert await auditor.call(auditor.log.cosigned_checkpoint, 6) == note
        assert auditor.witness_status["w1.test"]["result"] == "fork"
        assert auditor.witness_status["w1.test"]["witness_size"] == 40
        assert auditor.forks == 1
        fork = next(e for e in logs if e["event"] == "auditor.witness_fork")
        assert (fork["witness"], fork["size"], fork["witness_size"]) == ("w1.test", 6, 40)
        assert any(e["event"] == "auditor.witness_quorum_missed" for e in logs)
        value = metrics.witness_results.labels(witness="w1.test", result="fork")._value.get()
        assert value == 1
        status = json.loads((tmp_path / "audit" / WITNESS_STATUS_FILE).read_text())
        assert status["cosigned_size"] == {"w1.test": 0, "w2.test": 6}
        # What the auditor serves (GET /v1/audit/status) is what the broker shows.
        metrics.auditor_now = status_answer(await auditor.call(auditor.status))
        assert metrics.auditor_now.cosigned_size == {"w1.test": 0, "w2.test": 6}
        assert (await ops_snapshot(metrics))["health"]["auditor_witness_forks"] == 1
        # The public tlog-tiles checkpoint serves the note with what was collected.
        client = TestClient(TestServer(auditor_app(auditor)))
        await client.start_server()
        try:
            reply = await client.get("/v1/audit/log/checkpoint")
            assert reply.status == 200
            assert await reply.read() == note
        finally:
            await client.close()
    finally:
        await auditor.close()

    # w2's URL configured with w1's key: w2 cosigns (from the size it holds), and its answer
    # does not verify as w1's, so nothing is kept.
    wrong = [WitnessSetting(vkey=w1.verifier.vkey(), url=url2)]
    auditor = Auditor(
        _settings(settings, wrong), federation_keys.trust(AUDITOR_ID), directory=tmp_path / "audit"
    )
    await auditor.open()
    try:
        await auditor.call(auditor.log.append, feed[:8])
        note = await auditor.checkpoint()
        assert auditor.witness_status["w1.test"]["result"] == "invalid"
        assert await auditor.call(auditor.log.cosigned_checkpoint, 8) is None
        assert w2.state(DEFAULT_ORIGIN).size == 8  # it did cosign; we could not verify it
        assert not note.count("\N{EM DASH}".encode()) > 1
    finally:
        await auditor.close()


async def test_an_unchanged_checkpoint_is_not_submitted_again_and_sizes_survive_a_restart(
    settings: Settings,
    federation_keys: FederationKeys,
    feed: Feed,
    servers: list[tuple[Witness, str]],
    tmp_path: Path,
) -> None:
    """A witness that cosigned a size is not asked again for it; after a restart the auditor
    knows each witness's size from the log, and the next checkpoint carries a proof from it."""
    configured = [WitnessSetting(vkey=w.verifier.vkey(), url=u) for w, u in servers]
    trust = federation_keys.trust(AUDITOR_ID)
    auditor = Auditor(_settings(settings, configured), trust, directory=tmp_path / "audit")
    await auditor.open()
    try:
        await auditor.call(auditor.log.append, feed[:4])
        first = await auditor.checkpoint()
        with capture_logs() as logs:
            assert await auditor.checkpoint() == first
        assert not [e for e in logs if e["event"] == "auditor.cosigned"]
    finally:
        await auditor.close()
    auditor = Auditor(_settings(settings, configured), trust, directory=tmp_path / "audit")
    await auditor.open()
    try:
        await auditor.call(auditor.log.append, feed[:9])
        with capture_logs() as logs:
            note = await auditor.checkpoint()
        assert len(verify_cosignatures(note, [w.verifier for w, _ in servers])) == 2
        assert [w.state(DEFAULT_ORIGIN).size for w, _ in servers] == [9, 9]
        assert {e["event"] for e in logs} >= {"auditor.cosigned"}
        assert not [e for e in logs if e["log_level"] in ("warning", "error")]
    finally:
        await auditor.close()


def test_the_witness_gauges_are_the_auditors_answer_and_absent_without_one() -> None:
    """The broker's /metrics shows the auditor's forks and each witness's cosigned size as its
    status route said them; an auditor that does not answer leaves them out."""
    metrics = Metrics()
    assert b"cairn_audit_witness_forks" not in metrics.render()
    metrics.auditor_now = status_answer({"forks": 3, "cosigned_size": {"w1.test": 12}})
    text = metrics.render()
    assert b"cairn_audit_witness_forks 3.0" in text
    assert b'cairn_audit_witness_cosigned_size{witness="w1.test"} 12.0' in text
    metrics.auditor_now = AuditorAnswer(False, reason="timeout")
    text = metrics.render()
    assert b"cairn_audit_witness_forks" not in text
    assert b"cairn_auditor_up 0.0" in text
    metrics.auditor_now = status_answer({"forks": "3", "cosigned_size": {"w1.test": True}})
    assert b"cairn_audit_witness_forks" not in metrics.render()  # wrong types: not guessed


async def test_only_the_witnesss_own_line_is_kept_from_its_answer(
    federation_keys: FederationKeys, tmp_path: Path
) -> None:
    """A witness answering its cosignature and a line by some other key: its own line is
    taken, the other is not (it could not be verified, and would spoil the stored note)."""
    witness = _witness(tmp_path, "w1.test", 7, federation_keys)
    stranger = Ed25519PrivateKey.from_private_bytes(b"\x0b" * 32)

    async def add_checkpoint(request: web.Request) -> web.Response:
        body = await request.read()
        line = witness.add_checkpoint(body)
        note = body[body.index(b"\n\n") + 2 :]
        extra = cosign(note[: note.rfind(b"\n\n") + 1], "stranger.test", stranger, 1)
        return web.Response(body=line + extra, content_type="text/plain")

    app = web.Application()
    app.router.add_post("/add-checkpoint", add_checkpoint)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    key = federation_keys.trust(AUDITOR_ID).signing_key()
    tree = Tree.of(leaf_hash(b"%d" % i) for i in range(5))
    note = sign_checkpoint(Checkpoint(DEFAULT_ORIGIN, 5, tree.root()), DEFAULT_ORIGIN, key)
    endpoint = WitnessEndpoint(str(server.make_url("/")), witness.verifier)
    try:
        async with aiohttp.ClientSession() as session:
            outcome = await submit_checkpoint(session, note, 5, tree.consistency_proof, endpoint)
    finally:
        await server.close()
    assert outcome.result is WitnessResult.COSIGNED
    assert outcome.cosignature.count(b"\n") == 1
    assert b"stranger.test" not in outcome.cosignature
    found = verify_cosignatures(add_cosignatures(note, outcome.cosignature), [witness.verifier])
    assert [c.name for c in found] == ["w1.test"]
