"""The broker's idempotency digest of a referral's content, beside the digest of its bytes.

Since issue 18 the broker recognises a resubmitted referral by its content
(``schemas.submission.submission_digest``: SHA-256 of the validated model in RFC 8785 canonical
form), so that the same referral signed again, or written with another key order, white space
or its defaults spelled out, gets its first receipt. Before, it compared SHA-256 of the
payload's bytes. This measures, for each synthetic sample in ``deploy/federation/samples``
(the referrals and the Encompass notice):

- ``validate``: ``schemas.submission.decode_submission``, the JSON parse and pydantic
  validation the broker does for every submission anyway, for scale;
- ``cairn digest``: ``submission_digest`` of the validated message (what the broker now does);
- ``bytes digest``: ``hashlib.sha256`` of the payload's bytes, the baseline (what it did);
- ``rfc8785 digest``: SHA-256 of ``rfc8785.dumps`` of the same content, the library route the
  broker's own canonical form (``schemas.submission._canonical``) stands in for; each sample's
  two forms are checked equal before anything is timed.

Each operation runs for ``--seconds`` in ``--rounds`` interleaved slices (``bench/crypto.py``'s
``Measurement``). Ratios: cairn ÷ bytes (the cost of the change), cairn ÷ rfc8785 (the short
cut's gain) and cairn ÷ validate (the digest's share of work the broker already does).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Final

import rfc8785
from crypto import Measurement, run_all

from schemas.submission import _canonical, decode_submission, submission_digest

SAMPLES: Final = Path(__file__).resolve().parent.parent / "deploy" / "federation" / "samples"
OPERATIONS: Final = ("validate", "cairn digest", "bytes digest", "rfc8785 digest")
RATIOS: Final = (
    ("cairn digest", "bytes digest"),
    ("cairn digest", "rfc8785 digest"),
    ("cairn digest", "validate"),
)


def samples() -> list[tuple[str, bytes]]:
    """Each Cairn-format sample (``*.json`` that is not FHIR) as compact JSON bytes."""
    found = sorted(p for p in SAMPLES.glob("*.json") if not p.name.endswith(".fhir.json"))
    out = []
    for path in found:
        document = json.loads(path.read_text(encoding="utf-8"))
        out.append((path.stem, json.dumps(document, separators=(",", ":")).encode()))
    return out


def build(name: str, payload: bytes) -> list[Measurement]:
    """The four operations on one sample, checked once for agreement first."""
    message = decode_submission(payload)
    content = message.model_dump(mode="json")
    if _canonical(content) != rfc8785.dumps(content):
        raise SystemExit(f"bench: {name}: the canonical form differs from rfc8785.dumps")
    if submission_digest(message) != hashlib.sha256(rfc8785.dumps(content)).hexdigest():
        raise SystemExit(f"bench: {name}: submission_digest is not SHA-256 of RFC 8785")
    return [
        Measurement(f"{name}: validate", lambda: decode_submission(payload)),
        Measurement(f"{name}: cairn digest", lambda: submission_digest(message)),
        Measurement(f"{name}: bytes digest", lambda: hashlib.sha256(payload).hexdigest()),
        Measurement(
            f"{name}: rfc8785 digest",
            lambda: hashlib.sha256(rfc8785.dumps(message.model_dump(mode="json"))).hexdigest(),
        ),
    ]


def render(
    by_sample: dict[str, list[Measurement]], sizes: dict[str, int], args: argparse.Namespace
) -> str:
    rows = [
        (
            "sample",
            "bytes",
            *(f"{op} µs" for op in OPERATIONS),
            *(f"{a.split()[0]}/{b.split()[0]}" for a, b in RATIOS),
        )
    ]
    for name, measurements in by_sample.items():
        us = {m.name.split(": ", 1)[1]: m.us_per_op for m in measurements}
        rows.append(
            (
                name,
                f"{sizes[name]:,}",
                *(f"{us[op]:,.1f}" for op in OPERATIONS),
                *(f"{us[a] / us[b]:.2f}x" if us[b] else "-" for a, b in RATIOS),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(
            [
                row[0].ljust(widths[0]),
                *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)),
            ]
        )

    return "\n".join(
        [
            f"Python {platform.python_version()} · pydantic {version('pydantic')} · "
            f"rfc8785 {version('rfc8785')} · {args.seconds:g} s per operation in "
            f"{args.rounds} interleaved slices · one thread",
            "",
            line(rows[0]),
            line(["-" * w for w in widths]),
            *(line(r) for r in rows[1:]),
            "",
            "µs: per call; a/b: a's µs ÷ b's µs (cairn/bytes: what recognising content costs "
            "over hashing bytes; cairn/validate: its share of the validation done anyway)",
        ]
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/digest.py",
        description="The broker's content digest of each sample submission, beside SHA-256 of "
        "its bytes, rfc8785.dumps and the validation done anyway, in one run.",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=1.0,
        help="seconds of timing per operation and sample, over all its slices (default: 1.0)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=4,
        help="slices each operation's time is split into, interleaved with the others (default: 4)",
    )
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= 600:
        parser.error("--seconds must be > 0 and <= 600")
    if not 1 <= args.rounds <= 100:
        parser.error("--rounds must be in 1..100")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    found = samples()
    if not found:
        print(f"bench: no samples in {SAMPLES}", file=sys.stderr)
        return 1
    by_sample = {name: build(name, payload) for name, payload in found}
    run_all([m for ms in by_sample.values() for m in ms], args.seconds, args.rounds)
    print(render(by_sample, {name: len(payload) for name, payload in found}, args))
    if args.json:
        results = {
            m.name: {"ops": m.ops, "us_per_op": round(m.us_per_op, 3)}
            for ms in by_sample.values()
            for m in ms
        }
        print(json.dumps({"seconds": args.seconds, "rounds": args.rounds, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
