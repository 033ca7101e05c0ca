"""The verifiable audit log: durable appends, offline verification and proofs, beside baselines.

One process, one run, one table (bench/README.md, STYLE.md convention 12):

- ``append``: ``AuditLog.append`` of ``-n`` canonical audit events in batches of ``--batch``,
  each batch written and fsynced before the next (what the auditor does per Kafka poll), with
  the SQLite index kept up. Baselines over the same bytes: bare ``hashlib`` SHA-256 of each
  leaf (``0x00 || event``), and a bare ``os.write`` + ``os.fsync`` of the same records in the
  same batches (the durability floor).
- ``open``: reopening the log, which rescans and rehashes every entry (crash recovery).
- ``verify``: ``broker.audit.verify.verify`` of the whole log from its files (tree recomputed,
  every checkpoint's signature, root and consistency checked), with and without checking each
  entry is a canonical audit event. Baseline: bare ``hashlib`` over the same leaves.
- ``proof``: at ``--proof-size`` leaves (default 1,000,000 synthetic leaf hashes), the time to
  build ``broker.audit.merkle.Tree`` once, then RFC 9162 inclusion and consistency proof generation
  and verification, averaged over ``--proofs`` random indices. Baseline: bare ``hashlib``
  doing the node hashes one proof's verification needs (about log2(size) of them).

The events are real ``schemas.audit`` events (received, decided, disclosed, refused) built from
a fictional sample referral, each with its own event id; a checkpoint is signed every
``--checkpoint-every`` events, as the auditor would. Files go to a fresh temporary folder
(``--dir`` to choose where: fsync costs depend on the disk), removed at the end. Ratios are the
measured time over the baseline's time: how many times the bare operation it costs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.audit.checkpoint import NoteVerifier
from broker.audit.files import DEFAULT_ORIGIN
from broker.audit.merkle import Tree, verify_consistency, verify_inclusion
from broker.audit.store import AuditLog
from broker.audit.verify import verify
from broker.policy.decide import Decision
from keys.jwk import SigningKey
from schemas.audit import submission_events
from schemas.referral import Referral

REPO: Final = Path(__file__).resolve().parent.parent
SAMPLE: Final = REPO / "deploy" / "federation" / "samples" / "referral-high-risk.json"
SECRET: Final = bytes(range(32))  # a fictional pseudonym secret
NOW: Final = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
MAX_EVENTS: Final = 2_000_000  # a bound on -n
MAX_PROOF_SIZE: Final = 16_000_000  # a bound on --proof-size (about 1 GiB of tree in memory)
MAX_PROOFS: Final = 100_000  # a bound on --proofs
PLACEHOLDER: Final = "00000000-0000-4000-8000-000000000000"


class BenchError(Exception):
    """The benchmark could not produce a meaningful figure; the message says why."""


@dataclass(frozen=True)
class Row:
    operation: str
    count: int
    seconds: float
    baseline: str
    baseline_seconds: float

    @property
    def per_item_us(self) -> float:
        return self.seconds / self.count * 1e6

    @property
    def baseline_per_item_us(self) -> float:
        return self.baseline_seconds / self.count * 1e6

    @property
    def ratio(self) -> float:
        return self.seconds / self.baseline_seconds if self.baseline_seconds else math.inf


def templates() -> list[bytes]:
    """Canonical events of one submission, with a placeholder event id to substitute."""
    referral = Referral.model_validate_json(SAMPLE.read_bytes())
    decisions = [
        Decision(r, allowed=i == 0, reasons=("agreement.bench",))
        for i, r in enumerate(referral.header.recipients)
    ]
    events = submission_events(referral, decisions, secret=SECRET, at=NOW, request_id="bench")
    out = []
    for event in events:
        fixed = event.model_copy(update={"event_id": uuid.UUID(PLACEHOLDER)})
        out.append(fixed.canonical())
    return out


def make_events(n: int) -> list[bytes]:
    """``n`` distinct canonical events: the templates in turn, each with a fresh event id."""
    shapes = templates()
    rng = random.Random(1)  # noqa: S311 - ids for a benchmark, not secrets
    marker = PLACEHOLDER.encode()
    return [
        shapes[i % len(shapes)].replace(
            marker, str(uuid.UUID(int=rng.getrandbits(128), version=4)).encode()
        )
        for i in range(n)
    ]


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def bare_hash(events: list[bytes]) -> list[bytes]:
    sha = hashlib.sha256
    return [sha(b"\x00" + e).digest() for e in events]


def bare_write(folder: Path, events: list[bytes], batch: int) -> None:
    """The same bytes (with the same 24-byte record headers' worth of padding), same batches."""
    path = folder / "baseline.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for lo in range(0, len(events), batch):
            chunk = b"".join(b"\0" * 24 + e for e in events[lo : lo + batch])
            os.write(fd, chunk)
            os.fsync(fd)
    finally:
        os.close(fd)
        path.unlink()


def bench_log(args: argparse.Namespace, folder: Path) -> list[Row]:
    events = make_events(args.n)
    key = SigningKey(Ed25519PrivateKey.generate())
    verifiers = [NoteVerifier(DEFAULT_ORIGIN, key.private_key.public_key())]
    n = len(events)

    hash_s, _ = timed(lambda: bare_hash(events))
    write_s, _ = timed(lambda: bare_write(folder, events, args.batch))

    log_dir = folder / "audit"

    def append_all() -> None:
        with AuditLog.open(log_dir) as log:
            since = 0
            for lo in range(0, n, args.batch):
                log.append([(i, events[i]) for i in range(lo, min(lo + args.batch, n))])
                since += args.batch
                if since >= args.checkpoint_every:
                    log.sign_checkpoint(key)
                    since = 0
            log.sign_checkpoint(key)

    append_s, _ = timed(append_all)

    def reopen() -> int:
        with AuditLog.open(log_dir) as log:
            return log.size

    open_s, size = timed(reopen)
    if size != n:
        raise BenchError(f"the log holds {size} entries after appending {n}")
    verify_s, report = timed(lambda: verify(log_dir, verifiers))
    quick_s, quick = timed(lambda: verify(log_dir, verifiers, check_events=False))
    for r in (report, quick):
        if not r.ok or r.verified_size != n:
            raise BenchError(f"verify failed on the benchmark's own log: {r.first_bad}")
    rehash_s, _ = timed(lambda: bare_hash(events))
    batch = f"batches of {args.batch}"
    return [
        Row(f"append durably ({batch}, index)", n, append_s, "hashlib SHA-256 leaves", hash_s),
        Row(f"append durably ({batch}, index)", n, append_s, "os.write+fsync same", write_s),
        Row("open (rescan + rehash)", n, open_s, "hashlib SHA-256 leaves", hash_s),
        Row("verify (tree, sigs, events)", n, verify_s, "hashlib SHA-256 leaves", rehash_s),
        Row("verify --skip-events", n, quick_s, "hashlib SHA-256 leaves", rehash_s),
    ]


def bench_proofs(args: argparse.Namespace) -> tuple[list[Row], float]:
    size = args.proof_size
    leaves = (hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(size))
    build_s, tree = timed(lambda: Tree.of(leaves))
    rng = random.Random(2)  # noqa: S311 - positions for a benchmark
    indices = [rng.randrange(size) for _ in range(args.proofs)]
    firsts = [rng.randrange(1, size) for _ in range(args.proofs)]
    head = tree.root()
    roots = {m: tree.root(m) for m in firsts}

    leaves_at = {i: tree.leaf(i) for i in indices}

    def check_inclusion() -> None:
        for i, p in zip(indices, proofs, strict=True):
            verify_inclusion(i, size, leaves_at[i], p, head)

    def check_consistency() -> None:
        for m, p in zip(firsts, cproofs, strict=True):
            verify_consistency(m, size, p, roots[m], head)

    gen_s, proofs = timed(lambda: [tree.inclusion_proof(i, size) for i in indices])
    check_s, _ = timed(check_inclusion)
    cgen_s, cproofs = timed(lambda: [tree.consistency_proof(m, size) for m in firsts])
    ccheck_s, _ = timed(check_consistency)
    depth = max(1, (size - 1).bit_length())
    node = b"\x01" + bytes(64)

    def bare_nodes() -> None:
        sha = hashlib.sha256
        for _ in range(args.proofs):
            for _ in range(depth):
                sha(node).digest()

    bare_s, _ = timed(bare_nodes)
    label = f"{depth} node hashes"
    count = args.proofs
    return [
        Row(f"inclusion proof @ {size:,}", count, gen_s, label, bare_s),
        Row(f"verify inclusion @ {size:,}", count, check_s, label, bare_s),
        Row(f"consistency proof @ {size:,}", count, cgen_s, label, bare_s),
        Row(f"verify consistency @ {size:,}", count, ccheck_s, label, bare_s),
    ], build_s


def render(rows: list[Row], build_s: float, args: argparse.Namespace) -> str:
    head = (
        f"{'operation':<40} {'n':>9} {'total s':>9} {'µs/item':>10}  "
        f"{'baseline':<24} {'base µs':>9} {'ratio':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.operation:<40} {r.count:>9,} {r.seconds:>9.3f} {r.per_item_us:>10.2f}  "
            f"{r.baseline:<24} {r.baseline_per_item_us:>9.2f} {r.ratio:>7.1f}x"
        )
    lines.append("-" * len(head))
    lines.append(
        f"tree build: {args.proof_size:,} synthetic leaf hashes in {build_s:.2f} s "
        f"(once, before the proof rows); checkpoint every {args.checkpoint_every} events; "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs"
    )
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark the verifiable audit log beside bare hashlib and bare fsync.",
        epilog="See the module docstring (bench/audit.py) for what each row measures.",
    )
    parser.add_argument("-n", type=int, default=100_000, help="events to append and verify")
    parser.add_argument("--batch", type=int, default=500, help="events per fsynced batch")
    parser.add_argument(
        "--checkpoint-every", type=int, default=10_000, help="events between checkpoints"
    )
    parser.add_argument(
        "--proof-size", type=int, default=1_000_000, help="leaves of the tree for proof timing"
    )
    parser.add_argument("--proofs", type=int, default=2_000, help="proofs of each kind to time")
    parser.add_argument("--dir", type=Path, help="where to put the log [default: a temp folder]")
    parser.add_argument("--json", action="store_true", help="also print the rows as JSON")
    args = parser.parse_args(argv)
    if not 1 <= args.n <= MAX_EVENTS:
        parser.error(f"-n must be 1..{MAX_EVENTS}")
    if not 1 <= args.batch <= args.n:
        parser.error("--batch must be 1..n")
    if args.checkpoint_every < 1:
        parser.error("--checkpoint-every must be at least 1")
    if not 2 <= args.proof_size <= MAX_PROOF_SIZE:
        parser.error(f"--proof-size must be 2..{MAX_PROOF_SIZE}")
    if not 1 <= args.proofs <= MAX_PROOFS:
        parser.error(f"--proofs must be 1..{MAX_PROOFS}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    folder = Path(tempfile.mkdtemp(prefix="cairn-bench-audit-", dir=args.dir))
    try:
        rows = bench_log(args, folder)
    except BenchError as exc:
        print(f"bench/audit.py: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    proof_rows, build_s = bench_proofs(args)
    rows += proof_rows
    print(render(rows, build_s, args))
    if args.json:
        print(
            json.dumps(
                [{**vars(r), "per_item_us": r.per_item_us, "ratio": r.ratio} for r in rows]
                + [{"tree_build_s": build_s, "proof_size": args.proof_size}],
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
