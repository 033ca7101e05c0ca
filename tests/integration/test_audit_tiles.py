"""The audit log through the C2SP tlog-tiles endpoints of a real auditor over real TLS.

The checkpoint is verified with the key published at /v1/audit/verifier-key, and every entry's
inclusion from the tiles alone, by code written here from the specs (C2SP signed-note and
tlog-tiles, RFC 9162 §2.1): hashlib and the bare Ed25519 primitive, nothing from broker.audit.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import ssl
import time
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from broker.audit.service import auditor_app, tls_context
from broker.config import Settings
from keys import AUDITOR_ID
from keys.store import CA_CERT
from tests.conftest import FederationKeys
from tests.integration.conftest import client
from tests.integration.test_audit import committed_audit, running_auditor
from tests.samples import sample


def _leaf(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def _mth(leaves: list[bytes]) -> bytes:
    """RFC 9162 §2.1.1, by the recursive definition."""
    if len(leaves) == 1:
        return leaves[0]
    k = _k(len(leaves))
    return _node(_mth(leaves[:k]), _mth(leaves[k:]))


def _path(m: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 9162 §2.1.3.1 PATH(m, D[n])."""
    if len(leaves) == 1:
        return []
    k = _k(len(leaves))
    if m < k:
        return [*_path(m, leaves[:k]), _mth(leaves[k:])]
    return [*_path(m - k, leaves[k:]), _mth(leaves[:k])]


def _root_from_path(index: int, size: int, leaf: bytes, path: list[bytes]) -> bytes:
    """RFC 9162 §2.1.3.2 steps 2-5."""
    fn, sn, r = index, size - 1, leaf
    for p in path:
        assert sn != 0
        if fn & 1 or fn == sn:
            r = _node(p, r)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn, sn = fn >> 1, sn >> 1
        else:
            r = _node(r, p)
        fn, sn = fn >> 1, sn >> 1
    assert sn == 0
    return r


def _verify_note(note: bytes, vkey: str) -> bytes:
    """C2SP signed-note: the text, checked against a ``name+hash+base64`` verifier key."""
    name, key_hash, key_b64 = vkey.split("+", 2)
    raw = base64.b64decode(key_b64, validate=True)
    assert raw[0] == 0x01
    assert len(raw) == 33
    assert hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4].hex() == key_hash
    text, _, sigs = note.partition(b"\n\n")
    text += b"\n"
    for line in sigs.decode().splitlines():
        signer, _, sig_b64 = line.removeprefix("\u2014 ").partition(" ")
        sig = base64.b64decode(sig_b64, validate=True)
        if signer == name and sig[:4] == bytes.fromhex(key_hash):
            Ed25519PublicKey.from_public_bytes(raw[1:]).verify(sig[4:], text)
            return text
    raise AssertionError("no signature by the published key")


def _index(n: int) -> str:
    groups = [f"{n % 1000:03d}"]
    n //= 1000
    while n:
        groups.append(f"x{n % 1000:03d}")
        n //= 1000
    return "/".join(reversed(groups))


async def test_tiles_are_public_entries_are_the_auditors(
    broker_url: str,
    kafka_settings: Settings,
    federation_keys: FederationKeys,
    tmp_path: Path,
) -> None:
    async with client(federation_keys, broker_url) as police:
        await police.submit(json.dumps(sample()).encode())
    records = await committed_audit(kafka_settings)
    settings = kafka_settings.model_copy(update={"state_dir": tmp_path})
    async with running_auditor(settings, federation_keys) as auditor:
        deadline = time.monotonic() + 30
        while auditor.log.size < len(records) or auditor.appended_since_checkpoint:
            assert time.monotonic() < deadline, "the auditor never checkpointed every event"
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.2)

        server = TestServer(auditor_app(auditor), host="127.0.0.1")
        await server.start_server(
            ssl=tls_context(federation_keys.store, federation_keys.passphrase)
        )
        base = str(server.make_url("")).rstrip("/") + "/v1/audit"
        anonymous = ssl.create_default_context(cafile=str(federation_keys.store.path(CA_CERT)))
        try:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=anonymous)) as s:
                async with s.get(f"{base}/verifier-key") as r:
                    assert r.status == 200
                    assert r.content_type == "text/plain"
                    vkey = (await r.text()).splitlines()[0]
                async with s.get(f"{base}/log/checkpoint") as r:
                    assert r.status == 200, await r.text()
                    assert r.headers["Cache-Control"] == "no-cache"
                    note = await r.read()
                origin, size_text, root_b64 = _verify_note(note, vkey).decode().splitlines()[:3]
                size, root = int(size_text), base64.b64decode(root_b64)
                assert size == auditor.log.size > 0
                assert origin == vkey.split("+", 1)[0]

                leaves: list[bytes] = []
                for n in range((size + 255) // 256):
                    width = min(256, size - n * 256)
                    suffix = "" if width == 256 else f".p/{width}"
                    async with s.get(f"{base}/log/tile/0/{_index(n)}{suffix}") as r:
                        assert r.status == 200, await r.text()
                        assert r.content_type == "application/octet-stream"
                        assert ("immutable" in r.headers["Cache-Control"]) == (width == 256)
                        body = await r.read()
                    assert len(body) == 32 * width
                    leaves += [body[i : i + 32] for i in range(0, len(body), 32)]
                assert _mth(leaves) == root
                for i, leaf in enumerate(leaves):
                    assert _root_from_path(i, size, leaf, _path(i, leaves)) == root

                # Entries stay behind the auditor's certificate; bad paths are problems.
                bundle = f"{base}/log/tile/entries/000" + ("" if size >= 256 else f".p/{size}")
                for url in (bundle, f"{base}/entries", f"{base}/checkpoint"):
                    async with s.get(url) as r:
                        assert r.status in (401, 403), (url, r.status)
                        assert r.content_type == "application/problem+json"
                for path, status in (
                    ("tile/0/x000/000", 400),
                    ("tile/00/000", 400),
                    ("tile/0/000.p/0", 400),
                    ("tile/0/000.p/300", 400),
                    (f"tile/0/{_index(size // 256 + 1)}", 404),
                    (f"tile/0/000.p/{min(size + 1, 255)}", 404 if size < 255 else 200),
                ):
                    async with s.get(f"{base}/log/{path}") as r:
                        assert r.status == status, (path, r.status, await r.text())
                        if status != 200:
                            assert r.content_type == "application/problem+json"

            police = aiohttp.TCPConnector(ssl=federation_keys.client_ssl("kelder-police"))
            async with aiohttp.ClientSession(connector=police) as s, s.get(bundle) as r:
                assert r.status == 403, r.status

            ig = aiohttp.TCPConnector(ssl=federation_keys.client_ssl(AUDITOR_ID))
            async with aiohttp.ClientSession(connector=ig) as s, s.get(bundle) as r:
                assert r.status == 200, await r.text()
                data = await r.read()
            entries, pos = [], 0
            while pos < len(data):
                length = int.from_bytes(data[pos : pos + 2], "big")
                entries.append(data[pos + 2 : pos + 2 + length])
                pos += 2 + length
            assert [_leaf(e) for e in entries] == leaves[: len(entries)]
            assert len(entries) == min(size, 256)
        finally:
            await server.close()
