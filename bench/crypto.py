"""Sealing and opening one disclosure with ``keys``, beside the bare pyca/cryptography primitives.

One process, one in-memory federation (``keys.init_federation`` over a ``MemoryStore``), one
synthetic JSON disclosure of ``--payload-bytes``. Two Cairn paths are measured:

- ``cairn seal``: ``keys.seal_disclosure``: the broker's compact JWS (Ed25519) inside a compact
  JWE (ECDH-ES+A256KW, A256GCM) to the recipient's registered X25519 key;
- ``cairn open``: ``keys.open_disclosure``: decrypt with the recipient's key, then verify the
  broker's JWS against the registry.

Beside each, a raw path does the same cryptographic work with pyca/cryptography and nothing
else (no JSON headers, no base64url, no registry look-ups, no joserfc):

- ``raw seal``: Ed25519 sign of the payload; a fresh X25519 ephemeral key and its exchange with
  the recipient's key; Concat KDF (SHA-256, as RFC 7518 §4.6 and joserfc derive the KEK); AES-256
  key wrap of a random CEK; AES-256-GCM encryption of payload + signature;
- ``raw open``: X25519 exchange with the ephemeral public key; Concat KDF; AES-256 key unwrap;
  AES-256-GCM decryption; Ed25519 verification.

Both use the same keys: the broker's signing key and the recipient's encryption key from the
federation. The single primitives follow as rows of their own. Each operation runs for
``--seconds`` in total, split into ``--rounds`` slices that are interleaved with the other
operations' slices, so that a machine getting slower or faster mid-run skews every row alike and
not one side of a ratio. The ratio is Cairn µs/op ÷ raw µs/op: how many times the full JOSE path
costs the bare primitives. See bench/README.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from typing import Any, Final

import cryptography
from cryptography.hazmat.backends.openssl.backend import backend as openssl_backend
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap, aes_key_wrap

# From the modules rather than the package: a virtualenv whose editable install predates
# keys/__init__.py sees keys as a namespace package, and these imports work either way.
from keys.envelope import open_disclosure, seal_disclosure
from keys.federation import init_federation, load_decryption_keys, load_signing_key
from keys.jwk import DecryptionKey, SigningKey
from keys.registry import BROKER_ID, Registry
from keys.store import MemoryStore
from schemas.errors import CairnError
from schemas.federation import Federation

# A fixed clock: the registry is checked at the instant it was issued, so every run sees the
# same keys in force and nothing depends on the wall clock.
NOW: Final = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
PASSPHRASE: Final = b"cairn bench passphrase: fictional, in memory only"
RECIPIENT: Final = "bench-idva"
FEDERATION: Final = Federation.model_validate(
    {
        "name": "Bench partnership (fictional)",
        "agencies": [
            {"id": "bench-police", "name": "Bench Constabulary", "role": "police"},
            {"id": RECIPIENT, "name": "Bench IDVA service", "role": "idva"},
            {"id": "bench-marac", "name": "Bench MARAC", "role": "marac_coordinator"},
        ],
    }
)

KEY_BITS: Final = 256  # AES-256: the KEK, the CEK and the GCM key
NONCE_BYTES: Final = 12  # bytes: the GCM IV, as A256GCM uses
SIGNATURE_BYTES: Final = 64  # bytes: an Ed25519 signature
# Concat KDF "OtherInfo" exactly as RFC 7518 §4.6.2 builds it for ECDH-ES+A256KW with no apu/apv:
# AlgorithmID, PartyUInfo, PartyVInfo (each length-prefixed), then SuppPubInfo (keydatalen).
_ALG: Final = b"ECDH-ES+A256KW"
OTHER_INFO: Final = (
    len(_ALG).to_bytes(4, "big") + _ALG + bytes(4) + bytes(4) + KEY_BITS.to_bytes(4, "big")
)
# Stands in for the JWE protected header, which A256GCM authenticates as additional data.
AAD: Final = b'{"alg":"ECDH-ES+A256KW","enc":"A256GCM","cty":"JOSE"}'

MIN_PAYLOAD_BYTES: Final = 1024  # bytes: the synthetic disclosure without its padding fits
MAX_PAYLOAD_BYTES: Final = 1_048_576  # bytes: a sealed token must stay under MAX_TOKEN_BYTES
MAX_OPS: Final = 10_000_000  # per measurement: a second bound besides --seconds
WARMUP_CALLS: Final = 20  # per operation, before any slice is timed
TARGET_BATCH_S: Final = 0.005  # seconds: batches grow until one takes about this long


class BenchError(Exception):
    """The benchmark could not produce a meaningful figure; the message says why."""


# --- the disclosure -----------------------------------------------------------------------------

_FILLER: Final = (
    "IDVA caseworker note (fictional): contact made by phone at an agreed safe time; safety "
    "plan reviewed; victim aware of the MARAC referral and consents to information sharing. "
)


def disclosure_payload(size: int) -> bytes:
    """A synthetic, fictional disclosure as compact JSON of exactly ``size`` bytes."""
    document: dict[str, Any] = {
        "referral_id": "6f1c2a8e-3b5d-4c7a-9e21-5d8f0b7a4c11",
        "sender_agency": "bench-police",
        "recipient_agency": RECIPIENT,
        "purpose": "MARAC",
        "referral": {
            "header": {
                "referral_id": "6f1c2a8e-3b5d-4c7a-9e21-5d8f0b7a4c11",
                "schema_version": "1.0",
                "sender_agency": "bench-police",
                "sender_officer": "BP-4471",
                "recipients": [RECIPIENT, "bench-marac"],
                "purpose": "MARAC",
                "priority": "urgent",
                "classification": "OFFICIAL-SENSITIVE",
                "police_reference": "BP/2026/118842",
                "created_at": "2026-11-26T09:15:00+00:00",
            },
            "victim": {
                "given_name": "Testina",
                "family_name": "Fictitia",
                "aliases": ["Tess Fictional"],
                "date_of_birth": "1991-04-17",
                "nhs_number": "9990000018",
                "address": {"lines": ["7 Imaginary Row", "Benchton"], "postcode": "ZZ99 3WZ"},
            },
            "incident": {
                "occurred_at": "2026-11-25T22:40:00+00:00",
                "location": "Home address",
                "summary": "Officers attended a report of shouting; the victim disclosed "
                "repeated threats and a strangulation attempt.",
                "injuries": "Bruising to the neck",
                "reported_to_police": True,
            },
            "risk": {"level": "high", "dash_score": 16},
            "notes": "",
        },
    }
    base = len(_encode(document))
    if base > size:
        raise BenchError(f"the synthetic disclosure needs at least {base} bytes")
    repeats = (size - base) // len(_FILLER) + 1
    document["referral"]["notes"] = (_FILLER * repeats)[: size - base]
    payload = _encode(document)
    if len(payload) != size:
        raise BenchError(f"built a {len(payload)}-byte disclosure instead of {size}")
    return payload


def _encode(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=True).encode("ascii")


# --- the raw baseline ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RawSealed:
    """What the raw seal sends: ephemeral public key, wrapped CEK, IV and ciphertext."""

    ephemeral: bytes
    wrapped_key: bytes
    nonce: bytes
    ciphertext: bytes

    def size(self) -> int:
        return len(self.ephemeral) + len(self.wrapped_key) + len(self.nonce) + len(self.ciphertext)


def _kek(shared: bytes) -> bytes:
    return ConcatKDFHash(hashes.SHA256(), KEY_BITS // 8, OTHER_INFO).derive(shared)


def raw_seal(payload: bytes, signer: Ed25519PrivateKey, recipient: X25519PublicKey) -> RawSealed:
    """The cryptographic work of ``seal_disclosure`` done with pyca/cryptography alone."""
    signed = payload + signer.sign(payload)
    ephemeral = X25519PrivateKey.generate()
    kek = _kek(ephemeral.exchange(recipient))
    cek = os.urandom(KEY_BITS // 8)
    nonce = os.urandom(NONCE_BYTES)
    return RawSealed(
        ephemeral=ephemeral.public_key().public_bytes_raw(),
        wrapped_key=aes_key_wrap(kek, cek),
        nonce=nonce,
        ciphertext=AESGCM(cek).encrypt(nonce, signed, AAD),
    )


def raw_open(sealed: RawSealed, own: X25519PrivateKey, signer: Ed25519PublicKey) -> bytes:
    """The cryptographic work of ``open_disclosure`` done with pyca/cryptography alone."""
    kek = _kek(own.exchange(X25519PublicKey.from_public_bytes(sealed.ephemeral)))
    cek = aes_key_unwrap(kek, sealed.wrapped_key)
    signed = AESGCM(cek).decrypt(sealed.nonce, sealed.ciphertext, AAD)
    payload, signature = signed[:-SIGNATURE_BYTES], signed[-SIGNATURE_BYTES:]
    signer.verify(signature, payload)  # raises InvalidSignature
    return payload


# --- measuring ----------------------------------------------------------------------------------


@dataclass
class Measurement:
    """One operation's calls and time, summed over its slices, with each slice's rate."""

    name: str
    call: Callable[[], object] = field(repr=False)
    ops: int = 0
    elapsed_s: float = 0.0
    slice_rates: list[float] = field(default_factory=list)  # ops/s of each slice

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def us_per_op(self) -> float:
        return self.elapsed_s / self.ops * 1e6 if self.ops else 0.0

    @property
    def spread_pct(self) -> float:
        """Max minus min slice rate, as a percentage of the mean: how steady the figure was."""
        if len(self.slice_rates) < 2:
            return 0.0
        mean = statistics.fmean(self.slice_rates)
        return (max(self.slice_rates) - min(self.slice_rates)) / mean * 100 if mean else 0.0

    def run_slice(self, seconds: float, max_ops: int) -> None:
        """Call the operation in growing batches until ``seconds`` have passed or ``max_ops``."""
        gc.collect()
        ops, elapsed, batch = 0, 0.0, 1
        while elapsed < seconds and ops < max_ops:
            n = min(batch, max_ops - ops)
            call = self.call
            start = time.perf_counter()
            for _ in range(n):
                call()
            took = time.perf_counter() - start
            ops += n
            elapsed += took
            if took < TARGET_BATCH_S:
                batch *= 2
        self.ops += ops
        self.elapsed_s += elapsed
        self.slice_rates.append(ops / elapsed)


def run_all(measurements: Sequence[Measurement], seconds: float, rounds: int) -> None:
    """Warm every operation up, then time them in ``rounds`` interleaved slices each."""
    for m in measurements:
        for _ in range(WARMUP_CALLS):
            m.call()
    for _ in range(rounds):
        for m in measurements:
            m.run_slice(seconds / rounds, MAX_OPS // rounds)


# --- the run ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    """The federation's keys and the payload every measurement uses."""

    registry: Registry
    broker: SigningKey
    decryption: tuple[DecryptionKey, ...]
    payload: bytes


def make_setup(payload_bytes: int) -> Setup:
    """An in-memory federation, the broker's signing key and the recipient's decryption keys."""
    store = MemoryStore()
    registry = init_federation(store, FEDERATION, PASSPHRASE, now=NOW)
    broker = load_signing_key(store, BROKER_ID, PASSPHRASE, registry, now=NOW)
    decryption = load_decryption_keys(store, RECIPIENT, PASSPHRASE, registry, now=NOW)
    if not decryption:
        raise BenchError(f"{RECIPIENT} has no decryption key in the bench federation")
    return Setup(registry, broker, decryption, disclosure_payload(payload_bytes))


def build(setup: Setup) -> tuple[list[Measurement], dict[str, int]]:
    """Every operation to time, each checked once for a correct result first; and token sizes."""
    registry, payload = setup.registry, setup.payload
    signer = setup.broker.private_key
    verifier = registry.verification_key(BROKER_ID, setup.broker.kid, now=NOW)
    recipient_public = registry.encryption_key(RECIPIENT, now=NOW)
    recipient_private = next(
        k.private_key for k in setup.decryption if k.private_key.public_key() == recipient_public
    )

    def cairn_seal() -> bytes:
        return seal_disclosure(payload, setup.broker, registry, recipient=RECIPIENT, now=NOW)

    token = cairn_seal()

    def cairn_open() -> bytes:
        return open_disclosure(token, setup.decryption, registry, recipient=RECIPIENT, now=NOW)

    def seal_raw() -> RawSealed:
        return raw_seal(payload, signer, recipient_public)

    sealed = seal_raw()

    def open_raw() -> bytes:
        return raw_open(sealed, recipient_private, verifier)

    # The primitives on their own, with the same keys and sizes as inside the paths above.
    signature = signer.sign(payload)
    peer = X25519PrivateKey.generate().public_key()
    aes = AESGCM(os.urandom(KEY_BITS // 8))
    nonce = os.urandom(NONCE_BYTES)
    ciphertext = aes.encrypt(nonce, payload, AAD)

    if cairn_open() != payload:
        raise BenchError("keys.open_disclosure did not return the sealed payload")
    if open_raw() != payload:
        raise BenchError("the raw open did not return the sealed payload")
    if aes.decrypt(nonce, ciphertext, AAD) != payload:
        raise BenchError("AES-GCM did not round-trip the payload")
    verifier.verify(signature, payload)

    size = len(payload)
    measurements = [
        Measurement("cairn seal", cairn_seal),
        Measurement("raw seal", seal_raw),
        Measurement("cairn open", cairn_open),
        Measurement("raw open", open_raw),
        Measurement(f"Ed25519 sign {size} B", lambda: signer.sign(payload)),
        Measurement(f"Ed25519 verify {size} B", lambda: verifier.verify(signature, payload)),
        Measurement("X25519 exchange", lambda: recipient_private.exchange(peer)),
        Measurement(
            f"AES-256-GCM encrypt {size} B",
            lambda: aes.encrypt(os.urandom(NONCE_BYTES), payload, AAD),
        ),
        Measurement(f"AES-256-GCM decrypt {size} B", lambda: aes.decrypt(nonce, ciphertext, AAD)),
    ]
    return measurements, {"cairn_token_bytes": len(token), "raw_sealed_bytes": sealed.size()}


RATIOS: Final = (("cairn seal", "raw seal"), ("cairn open", "raw open"))


def ratios(measurements: Sequence[Measurement]) -> dict[str, float]:
    """Cairn µs/op ÷ raw µs/op for seal and open."""
    by_name = {m.name: m for m in measurements}
    return {
        cairn: by_name[cairn].us_per_op / by_name[raw].us_per_op
        for cairn, raw in RATIOS
        if by_name[raw].us_per_op
    }


def versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "cryptography": cryptography.__version__,
        "openssl": openssl_backend.openssl_version_text(),
        "joserfc": version("joserfc"),
    }


def render(
    measurements: Sequence[Measurement],
    args: argparse.Namespace,
    sizes: dict[str, int],
) -> str:
    v = versions()
    ratio = ratios(measurements)
    rows = [("operation", "ops/s", "µs/op", "spread", "Cairn/raw")]
    for m in measurements:
        rows.append(
            (
                m.name,
                f"{m.ops_per_s:,.0f}",
                f"{m.us_per_op:,.1f}",
                f"±{m.spread_pct / 2:.0f}%" if len(m.slice_rates) > 1 else "-",
                f"{ratio[m.name]:.2f}x" if m.name in ratio else "",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]

    def line(row: Sequence[str]) -> str:
        rest = [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        cells = [row[0].ljust(widths[0]), *rest]
        return "  ".join(cells).rstrip()

    out = [
        f"Python {v['python']} · cryptography {v['cryptography']} ({v['openssl']}) · "
        f"joserfc {v['joserfc']}",
        f"payload {len_label(args.payload_bytes)} JSON disclosure · {args.seconds:g} s per "
        f"operation in {args.rounds} interleaved slices · one thread",
        "",
        line(rows[0]),
        line(["-" * w for w in widths]),
    ]
    out += [line(r) for r in rows[1:]]
    out += [
        "",
        f"sealed sizes: Cairn compact JWE {sizes['cairn_token_bytes']:,} B, raw "
        f"{sizes['raw_sealed_bytes']:,} B (binary, no headers or base64url)",
        "Cairn/raw: Cairn µs/op ÷ raw µs/op (>1: the JOSE path is that many times slower)",
        "spread: half the range between the slowest and fastest slice, as % of the mean",
    ]
    return "\n".join(out)


def len_label(size: int) -> str:
    return f"{size / 1024:g} KiB ({size:,} B)" if size % 1024 == 0 else f"{size:,} B"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/crypto.py",
        description="Seal and open one disclosure per second with keys (JWS inside JWE), beside "
        "the same work done with bare pyca/cryptography primitives, in one run.",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=2.0,
        help="seconds of timing per operation, over all its slices (default: 2.0)",
    )
    parser.add_argument(
        "--payload-bytes",
        type=int,
        default=4096,
        help=f"size of the JSON disclosure in bytes, {MIN_PAYLOAD_BYTES}..{MAX_PAYLOAD_BYTES} "
        "(default: 4096)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=4,
        help="slices each operation's time is split into, interleaved with the others (default: 4)",
    )
    parser.add_argument(
        "--json", action="store_true", help="also print the results as one JSON object"
    )
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= 600:
        parser.error("--seconds must be > 0 and <= 600")
    if not MIN_PAYLOAD_BYTES <= args.payload_bytes <= MAX_PAYLOAD_BYTES:
        parser.error(f"--payload-bytes must be in {MIN_PAYLOAD_BYTES}..{MAX_PAYLOAD_BYTES}")
    if not 1 <= args.rounds <= 100:
        parser.error("--rounds must be in 1..100")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        measurements, sizes = build(make_setup(args.payload_bytes))
    except (BenchError, CairnError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    run_all(measurements, args.seconds, args.rounds)
    print(render(measurements, args, sizes))
    if args.json:
        print(
            json.dumps(
                {
                    "versions": versions(),
                    "payload_bytes": args.payload_bytes,
                    "seconds": args.seconds,
                    "rounds": args.rounds,
                    **sizes,
                    "results": [
                        {
                            "operation": m.name,
                            "ops": m.ops,
                            "elapsed_s": round(m.elapsed_s, 6),
                            "ops_per_s": round(m.ops_per_s, 1),
                            "us_per_op": round(m.us_per_op, 3),
                            "slice_ops_per_s": [round(r, 1) for r in m.slice_rates],
                        }
                        for m in measurements
                    ],
                    "ratios": {k: round(r, 3) for k, r in ratios(measurements).items()},
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
