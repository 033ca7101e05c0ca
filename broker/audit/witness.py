"""A transparency-log witness, per C2SP tlog-witness (https://c2sp.org/tlog-witness).

The witness is configured with the logs it follows (origin -> the log's note verifier keys)
and keeps, per origin, the size and root hash of the latest checkpoint it cosigned. A log
submits ``POST <prefix>/add-checkpoint`` with the body (tlog-witness, "add-checkpoint")::

    old <size>\\n
    <zero to 63 base64 consistency proof lines>\\n
    \\n
    <signed checkpoint note>

and the witness answers, in the spec's order of checks:

- 400 for a malformed body, or an old size above the checkpoint's;
- 404 when the checkpoint's origin is not a log it follows;
- 403 when no signature by a trusted log key verifies;
- 409 with ``Content-Type: text/x.tlog.size`` and its size (``<size>\\n``) when ``old`` is not
  the size it last cosigned;
- 422 when the RFC 6962/9162 consistency proof from its size does not verify;
- 409 when the size is the one it holds but the root hash differs;
- 200 with its cosignature line (``broker.audit.cosign``) otherwise, after persisting the new
  size and root durably (temporary file, fsync, ``os.replace``, fsync of the folder), the
  check and the update being atomic under one lock.

A proof that does not verify, or a different root for the same size, is a fork: the witness
refuses it and keeps the whole submission under ``forks/`` as evidence of log misbehaviour
(tlog-witness allows logging it; it never cosigns it). Error bodies other than the 409 size are
RFC 9457 problems.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import inspect
import json
import os
import re
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Final

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.audit.checkpoint import MAX_NOTE_BYTES, Checkpoint, NoteVerifier, verify_checkpoint
from broker.audit.cosign import (
    CosignerVerifier,
    add_cosignatures,
    cosign,
    parse_cosignature_lines,
    verify_cosignatures,
)
from broker.audit.merkle import HASH_SIZE, InvalidProof, verify_consistency
from broker.web.problems import http_problem, problem_response
from keys.errors import Reason, VerificationError
from keys.jwk import SigningKey

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_PROOF_LINES",
    "SIZE_MEDIA_TYPE",
    "ProofFrom",
    "Witness",
    "WitnessEndpoint",
    "WitnessOutcome",
    "WitnessRefusal",
    "WitnessResult",
    "WitnessState",
    "cosign_with",
    "submit_checkpoint",
    "witness_app",
]

MAX_PROOF_LINES: Final = 63  # tlog-witness: a client MUST NOT send more
MAX_BODY_BYTES: Final = 64 * 64 + MAX_NOTE_BYTES  # the old line, the proof, and one note
SIZE_MEDIA_TYPE: Final = "text/x.tlog.size"
_OLD: Final = re.compile(rb"^old (0|[1-9][0-9]*)$")


class WitnessRefusal(Exception):
    """A submission the witness does not cosign: the HTTP status, a problem slug and detail."""

    def __init__(self, status: int, slug: str, detail: str, *, size: int | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.detail = detail
        self.size = size  # for the 409 on a stale old size: the size the witness holds


@dataclass(frozen=True)
class WitnessState:
    """The latest checkpoint cosigned for one origin: its size and root hash."""

    origin: str
    size: int
    root_hash: bytes


def _bad_request(detail: str) -> WitnessRefusal:
    return WitnessRefusal(400, "witness-malformed", detail)


def _parse_body(body: bytes) -> tuple[int, list[bytes], bytes]:
    """tlog-witness "add-checkpoint": the old size, the proof hashes, and the signed note."""
    if len(body) > MAX_BODY_BYTES:
        raise WitnessRefusal(413, "witness-too-large", f"the body is over {MAX_BODY_BYTES} bytes")
    blank = body.find(b"\n\n")
    if blank < 0:
        raise _bad_request("the body is an old line, proof lines, a blank line, a checkpoint")
    head, note = body[:blank].split(b"\n"), body[blank + 2 :]
    match = _OLD.match(head[0])
    if match is None:
        raise _bad_request("the first line is 'old <size>' in decimal without leading zeros")
    proof_lines = head[1:]
    if len(proof_lines) > MAX_PROOF_LINES:
        raise _bad_request(f"at most {MAX_PROOF_LINES} consistency proof lines")
    proof: list[bytes] = []
    for line in proof_lines:
        try:
            raw = base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError):
            raise _bad_request("a proof line is one base64 hash") from None
        if len(raw) != HASH_SIZE or base64.b64encode(raw) != line:
            raise _bad_request(f"a proof line is one canonical base64 {HASH_SIZE}-byte hash")
        proof.append(raw)
    return int(match.group(1)), proof, note


def _origin_of(note: bytes) -> str:
    line, sep, _ = note.partition(b"\n")
    if not sep or not line:
        raise _bad_request("the checkpoint starts with its origin line")
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad_request("the checkpoint is UTF-8") from None


def _write_durably(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class Witness:
    """The witness over a state folder: one JSON file per origin, and ``forks/`` evidence."""

    def __init__(
        self,
        state_dir: Path,
        name: str,
        key: SigningKey | Ed25519PrivateKey,
        logs: Mapping[str, Sequence[NoteVerifier]],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state_dir = state_dir
        self.name = name
        self._key = key.private_key if isinstance(key, SigningKey) else key
        self.verifier = CosignerVerifier(name, self._key.public_key())
        self._logs = {origin: tuple(v) for origin, v in logs.items()}
        self._clock = clock
        self._lock = threading.Lock()
        (state_dir / "forks").mkdir(parents=True, exist_ok=True, mode=0o700)

    def _path(self, origin: str) -> Path:
        return self.state_dir / f"{hashlib.sha256(origin.encode()).hexdigest()}.json"

    def state(self, origin: str) -> WitnessState:
        """The latest cosigned size and root for ``origin`` (size 0 if never cosigned)."""
        path = self._path(origin)
        if not path.exists():
            return WitnessState(origin, 0, b"")
        doc = json.loads(path.read_bytes())
        return WitnessState(origin, int(doc["size"]), base64.b64decode(doc["root_hash"]))

    def forks(self) -> list[Path]:
        """The refused conflicting submissions kept as evidence."""
        return sorted((self.state_dir / "forks").glob("*.txt"))

    def _keep_evidence(self, origin: str, size: int, body: bytes) -> None:
        digest = hashlib.sha256(body).hexdigest()[:16]
        prefix = hashlib.sha256(origin.encode()).hexdigest()[:16]
        _write_durably(self.state_dir / "forks" / f"{prefix}-{size}-{digest}.txt", body)

    def add_checkpoint(self, body: bytes) -> bytes:
        """Check a submission (tlog-witness "add-checkpoint") and return the cosignature line."""
        old, proof, note = _parse_body(body)
        origin = _origin_of(note)
        verifiers = self._logs.get(origin)
        if verifiers is None:
            raise WitnessRefusal(404, "witness-unknown-log", "the witness follows no such log")
        try:
            checkpoint: Checkpoint = verify_checkpoint(note, verifiers, origin=origin)
        except VerificationError as exc:
            if exc.reason == Reason.MALFORMED:
                raise _bad_request(str(exc)) from None
            raise WitnessRefusal(403, "witness-bad-signature", str(exc)) from None
        if old > checkpoint.size:
            raise _bad_request(f"the old size {old} is above the checkpoint size")
        with self._lock:
            held = self.state(origin)
            if old != held.size:
                detail = f"the witness holds size {held.size}"
                raise WitnessRefusal(409, "witness-size-conflict", detail, size=held.size)
            if old == 0 and proof:
                raise WitnessRefusal(422, "witness-bad-proof", "no proof from the empty tree")
            if old and old == checkpoint.size and held.root_hash != checkpoint.root_hash:
                self._keep_evidence(origin, checkpoint.size, body)
                raise WitnessRefusal(
                    409, "witness-fork", f"a different root hash for size {old}: a fork"
                )
            if old:
                try:
                    verify_consistency(
                        old, checkpoint.size, proof, held.root_hash, checkpoint.root_hash
                    )
                except InvalidProof as exc:
                    self._keep_evidence(origin, checkpoint.size, body)
                    raise WitnessRefusal(422, "witness-bad-proof", str(exc)) from None
            doc = {
                "origin": origin,
                "size": checkpoint.size,
                "root_hash": base64.b64encode(checkpoint.root_hash).decode("ascii"),
            }
            _write_durably(self._path(origin), json.dumps(doc).encode("utf-8"))
            return cosign(checkpoint.text(), self.name, self._key, int(self._clock()))


def witness_app(witness: Witness) -> web.Application:
    """The aiohttp app: ``POST /add-checkpoint`` (the submission prefix is the root)."""

    async def add_checkpoint(request: web.Request) -> web.Response:
        if (request.content_length or 0) > MAX_BODY_BYTES:
            return _refused(WitnessRefusal(413, "witness-too-large", "the body is too large"))
        try:
            body = await request.read()
            # The check ends with fsyncs (state, evidence): on a thread, never on the loop.
            # Witness.add_checkpoint holds its own lock, so concurrent submissions stay atomic.
            line = await asyncio.to_thread(witness.add_checkpoint, body)
            return web.Response(body=line, content_type="text/plain", charset="utf-8")
        except web.HTTPRequestEntityTooLarge:
            return _refused(WitnessRefusal(413, "witness-too-large", "the body is too large"))
        except WitnessRefusal as refusal:
            return _refused(refusal)

    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_post("/add-checkpoint", add_checkpoint)
    return app


def _refused(refusal: WitnessRefusal) -> web.Response:
    if refusal.size is not None:
        # tlog-witness: the size body, not a problem, with a Content-Type of exactly
        # text/x.tlog.size (bytes, so aiohttp adds no charset parameter: transparency-dev's
        # witness client compares the whole header and would read the 409 as a fork).
        return web.Response(
            status=409, body=f"{refusal.size}\n".encode("ascii"), content_type=SIZE_MEDIA_TYPE
        )
    titles = {400: "Bad Request", 403: "Forbidden", 404: "Not Found", 409: "Conflict"}
    title = titles.get(refusal.status, "Refused")
    return problem_response(
        refusal.status, http_problem(refusal.status, refusal.slug, title, refusal.detail)
    )


@dataclass(frozen=True)
class WitnessEndpoint:
    """A witness the log submits to: its submission prefix URL and its verifier key."""

    url: str  # the submission prefix, e.g. https://witness.example/  (add-checkpoint appended)
    verifier: CosignerVerifier

    @property
    def name(self) -> str:
        """The witness's name, as in its cosignature lines and its verifier key."""
        return self.verifier.name


class WitnessResult(StrEnum):
    """What one witness did with one submission (a code: logs and metric labels)."""

    COSIGNED = "cosigned"  # 200 with a cosignature that verifies against its key
    UNREACHABLE = "unreachable"  # no answer in time (down, refused connection, TLS failed)
    FORK = "fork"  # it holds another tree of this log: 409 for the same size, 422, or ahead
    REFUSED = "refused"  # any other refusal (unknown log, bad signature, its own 5xx)
    INVALID = "invalid"  # a 200 whose body is not a valid cosignature by that witness


@dataclass(frozen=True)
class WitnessOutcome:
    """One witness's answer to one checkpoint: the result, why, and the size it holds."""

    endpoint: WitnessEndpoint
    result: WitnessResult
    detail: str  # codes and numbers only: no body text of the witness's is echoed
    held_size: int | None = None  # the size it last cosigned, when it said so (or now cosigned)
    cosignature: bytes = b""  # the verified cosignature line(s), for COSIGNED


# The tlog-witness answers that mean the witness holds a tree of this log that the
# submitted one does not extend (tlog-witness "add-checkpoint": 409 for a root hash that
# differs at the same size, 422 for a consistency proof that does not verify).
_FORK_STATUSES: Final = frozenset({409, 422})

ProofFrom = Callable[[int], Sequence[bytes] | Awaitable[Sequence[bytes]]]


async def _proof(proof_from: ProofFrom, old: int) -> Sequence[bytes]:
    proof = proof_from(old)
    if inspect.isawaitable(proof):
        return await proof
    return proof


def _own_line(payload: bytes, verifier: CosignerVerifier) -> bytes:
    """The one signature line of ``payload`` by ``verifier``'s name and key id: a witness may
    answer with more lines (tlog-witness allows other cosignatures), which are not ours to keep."""
    for line in payload.splitlines(keepends=True):
        ((name, kid, _rest),) = parse_cosignature_lines(line)
        if (name, kid) == (verifier.name, verifier.key_id):
            return line
    raise VerificationError(Reason.UNKNOWN_KEY, f"no cosignature by {verifier.name}")


async def submit_checkpoint(
    session: aiohttp.ClientSession,
    note: bytes,
    size: int,
    proof_from: ProofFrom,
    endpoint: WitnessEndpoint,
    *,
    old: int = 0,
    timeout_s: float = 10.0,
) -> WitnessOutcome:
    """The log side of tlog-witness "add-checkpoint" for one witness (bounded: two requests).

    ``old`` is the size the log believes the witness last cosigned; ``proof_from(old)`` gives
    the RFC 9162 consistency proof from ``old`` to ``size`` (a plain or an async function: the
    auditor takes it on its log's thread). A 409 ``text/x.tlog.size`` is retried once from the
    size the witness names; a named size above ``size`` is a fork (the witness was shown a
    larger tree of this log), as are another 409 and a 422. Each request is bounded by
    ``timeout_s``.
    """
    url = endpoint.url.rstrip("/") + "/add-checkpoint"
    for attempt in range(2):  # bounded: the first try, and one retry at the witness's size
        if old > size:
            return WitnessOutcome(
                endpoint,
                WitnessResult.FORK,
                f"the witness holds size {old}, above this checkpoint's {size}: it was shown "
                "a larger tree of this log",
                old,
            )
        proof = (
            b"".join(base64.b64encode(p) + b"\n" for p in await _proof(proof_from, old))
            if old
            else b""
        )
        body = b"old " + str(old).encode() + b"\n" + proof + b"\n" + note
        try:
            async with session.post(
                url, data=body, timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as response:
                payload = await response.content.read(MAX_NOTE_BYTES + 1)
                status, media = response.status, response.content_type
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return WitnessOutcome(endpoint, WitnessResult.UNREACHABLE, type(exc).__name__)
        if status == 409 and media == SIZE_MEDIA_TYPE:
            held = payload.decode("ascii", "replace").strip()
            if not held.isdigit() or len(held) > 20:
                return WitnessOutcome(endpoint, WitnessResult.REFUSED, "a 409 without a valid size")
            if attempt == 0:
                old = int(held)
                continue
            return WitnessOutcome(
                endpoint,
                WitnessResult.REFUSED,
                f"the witness moved to size {held} while we submitted",
                int(held),
            )
        if status in _FORK_STATUSES:
            what = "another root hash" if status == 409 else "no consistency from its tree"
            return WitnessOutcome(
                endpoint,
                WitnessResult.FORK,
                f"HTTP {status} from size {old} to {size}: the witness holds {what}",
                old,
            )
        if status != 200:
            return WitnessOutcome(endpoint, WitnessResult.REFUSED, f"HTTP {status}")
        try:
            line = _own_line(payload, endpoint.verifier)
            verify_cosignatures(add_cosignatures(note, line), [endpoint.verifier])
        except VerificationError as exc:
            return WitnessOutcome(
                endpoint, WitnessResult.INVALID, f"not a valid cosignature: {exc.reason}"
            )
        return WitnessOutcome(endpoint, WitnessResult.COSIGNED, "cosigned", size, line)
    raise RuntimeError("unreachable: the loop returns on its second pass")  # pragma: no cover


async def cosign_with(
    session: aiohttp.ClientSession,
    note: bytes,
    size: int,
    proof_from: ProofFrom,
    witnesses: Sequence[WitnessEndpoint],
    *,
    old_sizes: Mapping[str, int] | None = None,
    timeout_s: float = 10.0,
) -> tuple[bytes, list[WitnessOutcome]]:
    """Submit ``note`` to every witness at once; the note with every verified cosignature
    added (in the witnesses' order), and each witness's outcome. ``old_sizes`` is by URL."""
    outcomes = await asyncio.gather(
        *(
            submit_checkpoint(
                session,
                note,
                size,
                proof_from,
                endpoint,
                old=(old_sizes or {}).get(endpoint.url, 0),
                timeout_s=timeout_s,
            )
            for endpoint in witnesses
        )
    )
    cosigned = note
    for outcome in outcomes:
        if outcome.result is WitnessResult.COSIGNED:
            cosigned = add_cosignatures(cosigned, outcome.cosignature)
    return cosigned, list(outcomes)
