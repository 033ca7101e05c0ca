"""C2SP tlog-witness add-checkpoint: two witnesses follow a growing log; forks are refused."""

from __future__ import annotations

import base64
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.audit.checkpoint import Checkpoint, NoteVerifier, sign_checkpoint
from broker.audit.cosign import add_cosignatures, verify_cosignatures
from broker.audit.merkle import Tree, leaf_hash
from broker.audit.witness import (
    SIZE_MEDIA_TYPE,
    Witness,
    WitnessEndpoint,
    WitnessRefusal,
    WitnessResult,
    cosign_with,
    witness_app,
)

ORIGIN = "auditor.cairn.example/log"
LOG_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
LOGS = {ORIGIN: [NoteVerifier(ORIGIN, LOG_KEY.public_key())]}


def _tree(n: int, tag: bytes = b"entry") -> Tree:
    return Tree.of(leaf_hash(tag + str(i).encode()) for i in range(n))


def _note(tree: Tree, size: int, key: Ed25519PrivateKey = LOG_KEY) -> bytes:
    return sign_checkpoint(Checkpoint(ORIGIN, size, tree.root(size)), ORIGIN, key)


def _body(old: int, proof: list[bytes], note: bytes) -> bytes:
    lines = b"".join(base64.b64encode(p) + b"\n" for p in proof)
    return b"old " + str(old).encode() + b"\n" + lines + b"\n" + note


def _witness(tmp_path: Path, name: str, seed: int) -> Witness:
    key = Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
    return Witness(tmp_path / name, name, key, LOGS, clock=lambda: 1_800_000_000)


async def _client(witness: Witness) -> TestClient[web.Request, web.Application]:
    client = TestClient(TestServer(witness_app(witness)))
    await client.start_server()
    return client


async def test_two_witnesses_cosign_a_growing_log_and_refuse_a_fork(tmp_path: Path) -> None:
    witnesses = [_witness(tmp_path, "w1.example", 7), _witness(tmp_path, "w2.example", 9)]
    clients = [await _client(w) for w in witnesses]
    tree = _tree(13)
    try:
        previous = 0
        for size in (3, 8, 13):
            note = _note(tree, size)
            proof = tree.consistency_proof(previous, size)
            cosigned = note
            for client in clients:
                response = await client.post("/add-checkpoint", data=_body(previous, proof, note))
                assert response.status == 200, await response.text()
                cosigned = add_cosignatures(cosigned, await response.read())
            found = verify_cosignatures(cosigned, [w.verifier for w in witnesses])
            assert sorted(c.name for c in found) == ["w1.example", "w2.example"]
            assert all(c.timestamp == 1_800_000_000 for c in found)
            previous = size
        # Resubmitting the same checkpoint is cosigned again.
        again = await clients[0].post("/add-checkpoint", data=_body(13, [], _note(tree, 13)))
        assert again.status == 200
        # A fork: the same size, another root, signed by the log key. Refused by both and kept.
        forked = _tree(13, b"other")
        for client, witness in zip(clients, witnesses, strict=True):
            fork = _body(13, [], _note(forked, 13))
            response = await client.post("/add-checkpoint", data=fork)
            assert response.status == 409
            assert response.content_type == "application/problem+json"
            assert [p.read_bytes() for p in witness.forks()] == [fork]
            assert witness.state(ORIGIN).root_hash == tree.root(13)
        # An inconsistent growth (size 13 -> 20 of another tree): 422, kept as evidence.
        grown = _tree(20, b"other")
        bad = _body(13, grown.consistency_proof(13, 20), _note(grown, 20))
        response = await clients[0].post("/add-checkpoint", data=bad)
        assert response.status == 422
        assert bad in [p.read_bytes() for p in witnesses[0].forks()]
        assert witnesses[0].state(ORIGIN).size == 13
    finally:
        for client in clients:
            await client.close()


async def test_refusals_have_the_spec_status(tmp_path: Path) -> None:
    witness = _witness(tmp_path, "w1.example", 7)
    client = await _client(witness)
    tree = _tree(5)
    try:
        ok = await client.post("/add-checkpoint", data=_body(0, [], _note(tree, 4)))
        assert ok.status == 200
        stale = await client.post("/add-checkpoint", data=_body(0, [], _note(tree, 5)))
        assert stale.status == 409
        assert stale.content_type == SIZE_MEDIA_TYPE
        assert await stale.text() == "4\n"
        other_log = sign_checkpoint(Checkpoint("elsewhere", 1, tree.root(1)), "elsewhere", LOG_KEY)
        cases = [
            (_body(4, tree.consistency_proof(4, 5), _note(tree, 5, OTHER_KEY)), 403),
            (_body(0, [], other_log), 404),
            (_body(6, [], _note(tree, 5)), 400),
            (b"old 04\n\n" + _note(tree, 5), 400),
            (b"nonsense", 400),
            (_body(4, [b"\x00" * 32], _note(tree, 5)), 422),
            (b"old 4\n" + b"A" * 200_000, 413),
        ]
        for body, status in cases:
            response = await client.post("/add-checkpoint", data=body)
            assert response.status == status, (status, await response.text())
        assert witness.state(ORIGIN).size == 4
        grow = await client.post(
            "/add-checkpoint", data=_body(4, tree.consistency_proof(4, 5), _note(tree, 5))
        )
        assert grow.status == 200
        assert witness.state(ORIGIN).size == 5
    finally:
        await client.close()


def test_state_persists_across_restarts(tmp_path: Path) -> None:
    tree = _tree(3)
    first = _witness(tmp_path, "w1.example", 7)
    first.add_checkpoint(_body(0, [], _note(tree, 3)))
    second = _witness(tmp_path, "w1.example", 7)
    assert second.state(ORIGIN).size == 3
    assert second.state(ORIGIN).root_hash == tree.root(3)
    assert not list((tmp_path / "w1.example").glob("*.tmp"))


@pytest.mark.parametrize("old", [1, 2])
def test_direct_stale_size(tmp_path: Path, old: int) -> None:
    witness = _witness(tmp_path, "w1.example", 7)
    with pytest.raises(WitnessRefusal) as refused:
        witness.add_checkpoint(_body(old, [], _note(_tree(3), 3)))
    assert (refused.value.status, refused.value.size) == (409, 0)


async def test_cosign_with_two_witnesses(tmp_path: Path) -> None:
    witnesses = [_witness(tmp_path, "w1.example", 7), _witness(tmp_path, "w2.example", 9)]
    clients = [await _client(w) for w in witnesses]
    tree = _tree(8)
    endpoints = [
        WitnessEndpoint(str(c.make_url("/")), w.verifier)
        for c, w in zip(clients, witnesses, strict=True)
    ]
    wrong = WitnessEndpoint(str(clients[0].make_url("/")), witnesses[1].verifier)
    dead = WitnessEndpoint("http://127.0.0.1:9/", witnesses[0].verifier)
    try:
        async with aiohttp.ClientSession() as session:
            for size in (3, 8):  # at 8 each witness answers 409 with 3 first, then cosigns
                note = _note(tree, size)
                cosigned, outcomes = await cosign_with(
                    session,
                    note,
                    size,
                    lambda old, s=size: tree.consistency_proof(old, s),
                    endpoints,
                )
                assert [o.result for o in outcomes] == [WitnessResult.COSIGNED] * 2
                found = verify_cosignatures(cosigned, [w.verifier for w in witnesses])
                assert sorted(c.name for c in found) == ["w1.example", "w2.example"]
            _, (bad, down) = await cosign_with(
                session, note, 8, lambda old: tree.consistency_proof(old, 8), [wrong, dead]
            )
            assert bad.result is WitnessResult.INVALID
            assert bad.detail.endswith("unknown_key")
            assert down.result is WitnessResult.UNREACHABLE
    finally:
        for client in clients:
            await client.close()
