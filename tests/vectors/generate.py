"""Writes the wire test vectors of docs/wire.md, and that document's generated tables.

``python -m tests.vectors.generate`` (re)writes every file of ``tests/vectors/`` and the parts of
``docs/wire.md`` between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->``;
``--check`` writes nothing and exits 1 if any of them differs from what the code makes now.
``tests/unit/keys/test_wire_vectors.py`` runs the same check, so a change to the JOSE profile,
the messages, the limits or the problem types shows as a failing test until the vectors and
the document are regenerated (and reviewed: a vector that changes is a wire change).

Everything is fixed, so every file is reproducible byte for byte: the keys come from fixed
32-byte seeds (SHA-256 of a label; published, so TEST ONLY: no registry may ever list them),
the payloads from the sample referral (``deploy/federation/samples``) and the development
federation's sharing agreements at a fixed time, the signed time ``iat`` is a constant.
Ed25519 signatures are deterministic (RFC 8032 §5.1.6), so each JWS is too. A JWE is not (its
ephemeral key, content encryption key and IV are random): ``keys.jose.encrypt_compact`` cannot
take fixed ones, and must not, so the vector JWE is made by joserfc (the library
``keys.jose`` uses) with the same protected header and fixed ephemeral key, CEK and IV, which
the manifest publishes so another implementation can reproduce it; the drift test checks that
the protected header has exactly the members, in the order, that ``encrypt_compact`` emits,
and that ``keys.envelope.open_disclosure`` opens it.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import re
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)
from joserfc import jwe
from joserfc.jwk import OKPKey

from broker.config import Settings
from broker.federation import load_federation
from broker.ingest import receipt_for
from broker.policy.agreements import load_agreements
from broker.policy.decide import decide
from broker.policy.redaction import redact
from broker.web.openapi import service_problem_types
from keys.envelope import ACK_TYP, DISCLOSURE_TYP, REFERRAL_TYP
from keys.jose import (
    CONTENT_ENCRYPTION,
    KEY_AGREEMENT,
    LEGACY_SIGNATURE_ALGORITHM,
    MAX_TOKEN_BYTES,
    SIGNATURE_ALGORITHM,
    HeaderBounds,
    sign_compact,
)
from keys.jwk import SigningKey, b64url_decode, b64url_encode, kid_of, public_jwk
from keys.registry import BROKER_ID, CLOCK_SKEW
from schemas.disclosure import DisclosedReferral, Disclosure
from schemas.receipt import (
    Acknowledgement,
    AcknowledgementStatus,
)
from schemas.referral import Referral

__all__ = ["DOC", "VECTORS", "Vectors", "build", "check", "main", "render_doc"]

REPO: Final = Path(__file__).resolve().parents[2]
VECTORS: Final = REPO / "tests" / "vectors"
DOC: Final = REPO / "docs" / "wire.md"
FEDERATION_DIR: Final = REPO / "deploy" / "federation"
SAMPLE: Final = FEDERATION_DIR / "samples" / "referral-high-risk.json"

TEST_ONLY: Final = (
    "TEST ONLY: published test vectors (docs/wire.md). These private keys are public; "
    "no registry may list them and nothing signed with them may be trusted."
)
SENDER: Final = "kelder-police"
RECIPIENT: Final = "kelder-idva"
#: The signed time of the referral and of the acknowledgement: a constant, not the clock.
REFERRAL_IAT: Final = datetime(2026, 11, 26, 9, 16, tzinfo=UTC)
ACK_AT: Final = datetime(2026, 11, 26, 9, 20, tzinfo=UTC)

Vectors = dict[str, bytes]  # file name (in tests/vectors/) -> its exact bytes


def _seed(label: str) -> bytes:
    return hashlib.sha256(f"cairn wire test vector (TEST ONLY): {label}".encode()).digest()


def _ed25519(label: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(_seed(label))


def _x25519(label: str) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(_seed(label))


def _private_jwk(key: Ed25519PrivateKey | X25519PrivateKey) -> dict[str, str]:
    raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return {**public_jwk(key.public_key()), "d": b64url_encode(raw)}


class _Keys:
    """The fixed test keys (RFC 8037 OKP), by role."""

    def __init__(self) -> None:
        self.sender = _ed25519("kelder-police signing")
        self.recipient_sig = _ed25519("kelder-idva signing")
        self.recipient_enc = _x25519("kelder-idva encryption")
        self.broker = _ed25519("cairn-broker signing")
        self.ephemeral = _x25519("JWE ephemeral key of disclosure.jwe")
        self.cek = _seed("JWE content encryption key of disclosure.jwe")  # 256 bits: A256GCM
        self.iv = _seed("JWE initialization vector of disclosure.jwe")[:12]  # 96 bits

    def jwk_set(self) -> dict[str, Any]:
        """The keys as a JWK Set (RFC 7517 §5) with their private members, marked TEST ONLY."""

        def entry(
            key: Ed25519PrivateKey | X25519PrivateKey, member: str, use: str, alg: str
        ) -> dict[str, Any]:
            jwk = _private_jwk(key)
            return {
                **jwk,
                "kid": kid_of(key.public_key()),
                "use": use,
                "alg": alg,
                "cairn_member": member,
                "cairn_test_only": True,
            }

        return {
            "cairn_test_only": TEST_ONLY,
            "keys": [
                entry(self.sender, SENDER, "sig", SIGNATURE_ALGORITHM),
                entry(self.recipient_sig, RECIPIENT, "sig", SIGNATURE_ALGORITHM),
                entry(self.recipient_enc, RECIPIENT, "enc", KEY_AGREEMENT),
                entry(self.broker, BROKER_ID, "sig", SIGNATURE_ALGORITHM),
                entry(self.ephemeral, "(the JWE's ephemeral key)", "enc", KEY_AGREEMENT),
            ],
        }


def _payloads() -> tuple[Referral, bytes, bytes, bytes, bytes]:
    """The referral; the exact bytes signed (referral, IDVA's disclosure, its acknowledgement);
    and the broker's receipt (the HTTP 202 body, unsigned) for that referral."""
    referral = Referral.model_validate(json.loads(SAMPLE.read_bytes()))
    # The disclosure the broker would make for the IDVA service: the real policy engine on the
    # development federation's agreements, at the referral's own time.
    decisions = decide(
        referral,
        load_federation(FEDERATION_DIR),
        agreements=load_agreements(FEDERATION_DIR / "agreements"),
        now=referral.header.created_at,
        max_recipients=_default("max_recipients"),
    )
    decision = next(d for d in decisions if d.recipient == RECIPIENT)
    if not decision.allowed or decision.agreement is None or decision.lawful_basis is None:
        raise RuntimeError(f"the development agreements no longer allow {RECIPIENT}")
    if decision.consent_basis is None or decision.retention is None:
        raise RuntimeError("the decision names no consent basis or retention")
    content = redact(referral, decision)
    if not isinstance(content, DisclosedReferral):
        raise RuntimeError("a referral redacts to a DisclosedReferral")
    disclosure = Disclosure(
        referral_id=referral.header.referral_id,
        sender_agency=SENDER,
        recipient_agency=RECIPIENT,
        purpose=referral.header.purpose,
        agreement=decision.agreement,
        lawful_basis=decision.lawful_basis,
        consent_basis=decision.consent_basis,
        groups=decision.groups,
        retention=decision.retention,
        referral=content,
    )
    ack = Acknowledgement(
        referral_id=referral.header.referral_id,
        agency=RECIPIENT,
        status=AcknowledgementStatus.FILED,
        acknowledged_at=ACK_AT,
    )
    receipt = receipt_for(referral.header.referral_id, REFERRAL_IAT, decisions)
    return (
        referral,
        referral.model_dump_json().encode(),
        disclosure.model_dump_json().encode(),
        ack.model_dump_json().encode(),
        receipt.model_dump_json().encode(),
    )


class _FixedRegistry(jwe.JWERegistry):
    """joserfc's JWE registry for our two algorithms, with a fixed ephemeral key, CEK and IV.

    For the published vector only: a fixed CEK and IV must never encrypt two messages.
    """

    def __init__(self, ephemeral: X25519PrivateKey, cek: bytes, iv: bytes) -> None:
        super().__init__(algorithms=[KEY_AGREEMENT, CONTENT_ENCRYPTION])
        self._ephemeral = OKPKey.import_key(ephemeral)
        self._cek = cek
        self._iv = iv

    def get_alg(self, name: str) -> Any:
        alg = copy.copy(super().get_alg(name))
        ephemeral = self._ephemeral

        def prepare(recipient: Any) -> None:
            recipient.ephemeral_key = ephemeral
            recipient.add_header("epk", ephemeral.as_dict(private=False))

        alg.prepare_ephemeral_key = prepare
        return alg

    def get_enc(self, name: str) -> Any:
        enc = copy.copy(super().get_enc(name))
        cek, iv = self._cek, self._iv
        enc.generate_cek = lambda: cek
        enc.generate_iv = lambda: iv
        return enc


def _seal_fixed(plaintext: bytes, keys: _Keys) -> bytes:
    """The JWE ``keys.jose.encrypt_compact`` makes, with the fixed ephemeral key, CEK and IV."""
    header = {
        "alg": KEY_AGREEMENT,
        "enc": CONTENT_ENCRYPTION,
        "kid": kid_of(keys.recipient_enc.public_key()),
        "cty": "JOSE",
    }
    public = OKPKey.import_key(keys.recipient_enc.public_key())
    registry = _FixedRegistry(keys.ephemeral, keys.cek, keys.iv)
    return jwe.encrypt_compact(header, plaintext, public, registry=registry).encode("ascii")


def _sign_legacy(payload: bytes, key: Ed25519PrivateKey, header: Mapping[str, Any]) -> bytes:
    """A compact JWS under RFC 8037's ``EdDSA``, which Cairn accepts but never emits (RFC 9864
    §4.1 deprecates the name): RFC 7515 §5.1 by hand, since ``keys.jose`` signs ``Ed25519``."""
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    signing_input = f"{b64url_encode(encoded)}.{b64url_encode(payload)}"
    signature = key.sign(signing_input.encode("ascii"))
    return f"{signing_input}.{b64url_encode(signature)}".encode("ascii")


def _decoded(token: bytes) -> list[Any]:
    """Each segment of a compact token: JSON for the header, else its base64url text."""
    parts = token.decode("ascii").split(".")
    header = json.loads(b64url_decode(parts[0]))
    return [header, *parts[1:]]


def build() -> Vectors:
    """Every file of tests/vectors/ but this script and README.md, by name, as bytes."""
    keys = _Keys()
    referral, referral_payload, disclosure_payload, ack_payload, receipt = _payloads()
    iat = int(REFERRAL_IAT.timestamp())
    referral_jws = sign_compact(
        referral_payload, SigningKey(keys.sender), typ=REFERRAL_TYP, iat=iat
    )
    legacy_jws = _sign_legacy(
        referral_payload,
        keys.sender,
        {
            "alg": LEGACY_SIGNATURE_ALGORITHM,
            "kid": kid_of(keys.sender.public_key()),
            "typ": REFERRAL_TYP,
            "iat": iat,
        },
    )
    disclosure_jws = sign_compact(disclosure_payload, SigningKey(keys.broker), typ=DISCLOSURE_TYP)
    disclosure_jwe = _seal_fixed(disclosure_jws, keys)
    ack_jws = sign_compact(
        ack_payload, SigningKey(keys.recipient_sig), typ=ACK_TYP, iat=int(ACK_AT.timestamp())
    )

    def sha256(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    def jws_entry(file: str, token: bytes, payload_file: str, payload: bytes) -> dict[str, Any]:
        header, _payload, signature = _decoded(token)
        return {
            "file": file,
            "protected": header,
            "protected_b64": token.decode("ascii").split(".")[0],
            "payload_file": payload_file,
            "payload_sha256": sha256(payload),
            "signature_b64": signature,
        }

    jwe_header, encrypted_key, iv, ciphertext, tag = _decoded(disclosure_jwe)
    manifest = {
        "cairn_test_only": TEST_ONLY,
        "profile": {
            "jws_alg": SIGNATURE_ALGORITHM,
            "jws_alg_accepted": sorted({SIGNATURE_ALGORITHM, LEGACY_SIGNATURE_ALGORITHM}),
            "jwe_alg": KEY_AGREEMENT,
            "jwe_enc": CONTENT_ENCRYPTION,
            "typ": {"referral": REFERRAL_TYP, "disclosure": DISCLOSURE_TYP, "ack": ACK_TYP},
        },
        "keys_file": "test-only-keys.json",
        "referral": {
            **jws_entry("referral.jws", referral_jws, "referral.payload.json", referral_payload),
            "signer": SENDER,
            "signer_kid": kid_of(keys.sender.public_key()),
            "iat_rfc3339": REFERRAL_IAT.isoformat().replace("+00:00", "Z"),
            "referral_id": str(referral.header.referral_id),
        },
        "referral_eddsa": {
            **jws_entry(
                "referral-eddsa.jws", legacy_jws, "referral.payload.json", referral_payload
            ),
            "signer": SENDER,
            "signer_kid": kid_of(keys.sender.public_key()),
            "what": "the same referral under RFC 8037's alg name EdDSA, as an older library "
            "signs it: accepted on input, never emitted",
        },
        "disclosure": {
            "jws": {
                **jws_entry(
                    "disclosure.jws", disclosure_jws, "disclosure.payload.json", disclosure_payload
                ),
                "signer": BROKER_ID,
                "signer_kid": kid_of(keys.broker.public_key()),
            },
            "jwe": {
                "file": "disclosure.jwe",
                "protected": jwe_header,
                "protected_b64": disclosure_jwe.decode("ascii").split(".")[0],
                "recipient": RECIPIENT,
                "recipient_kid": kid_of(keys.recipient_enc.public_key()),
                "ephemeral_kid": kid_of(keys.ephemeral.public_key()),
                "cek_b64": b64url_encode(keys.cek),
                "iv_b64": b64url_encode(keys.iv),
                "encrypted_key_b64": encrypted_key,
                "ciphertext_sha256": sha256(ciphertext.encode("ascii")),
                "tag_b64": tag,
                "plaintext_file": "disclosure.jws",
            },
        },
        "ack": {
            **jws_entry("ack.jws", ack_jws, "ack.payload.json", ack_payload),
            "signer": RECIPIENT,
            "signer_kid": kid_of(keys.recipient_sig.public_key()),
            "iat_rfc3339": ACK_AT.isoformat().replace("+00:00", "Z"),
        },
        "receipt": {
            "file": "receipt.json",
            "what": "the broker's HTTP 202 body for referral.jws (JSON, unsigned: the mutual "
            "TLS connection authenticates it)",
        },
    }
    assert iv == manifest["disclosure"]["jwe"]["iv_b64"]
    return {
        "test-only-keys.json": _json(keys.jwk_set()),
        "manifest.json": _json(manifest),
        "referral.payload.json": referral_payload,
        "referral.jws": referral_jws,
        "referral-eddsa.jws": legacy_jws,
        "disclosure.payload.json": disclosure_payload,
        "disclosure.jws": disclosure_jws,
        "disclosure.jwe": disclosure_jwe,
        "ack.payload.json": ack_payload,
        "ack.jws": ack_jws,
        "receipt.json": receipt,
    }


def _json(document: Mapping[str, Any]) -> bytes:
    return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


# --- docs/wire.md's generated tables ------------------------------------------------------------


def _problems_table() -> str:
    """Every problem type of the broker's and the auditor's APIs (``problems_middleware``)."""
    rows = [
        "| type (`urn:cairn:problem:…`) | status | title | when | extra members |",
        "|---|---|---|---|---|",
    ]
    for slug, problem in sorted(
        service_problem_types().items(), key=lambda kv: (kv[1].status or 999, kv[0])
    ):
        members = ", ".join(
            f"`{m}`" + ("*" if m in problem.required else "") for m in problem.members
        )
        title = problem.title if isinstance(problem.title, str) else "(aiohttp's reason phrase)"
        status = str(problem.status) if problem.status is not None else "4xx"
        when = " ".join(problem.description.split()).replace("``", "`").replace("|", "\\|")
        rows.append(f"| `{slug}` | {status} | {title} | {when} | {members or '-'} |")
    return "\n".join(rows)


def _default(name: str) -> Any:
    """A setting's default as the code declares it: never the environment's ``CAIRN_*`` value
    or a configuration file, so that the vectors and tables are the same on every machine."""
    return Settings.model_fields[name].get_default(call_default_factory=True)


def _limits_table() -> str:
    """The limits a submission meets, with their defaults (``broker.config.Settings``)."""
    defaults = SimpleNamespace(**{name: _default(name) for name in Settings.model_fields})
    bounds = HeaderBounds()
    rows = [
        "| limit | default | setting (`CAIRN_…`) | refused as |",
        "|---|---|---|---|",
        f"| request body (the compact JWS) | {defaults.max_body_bytes:,} bytes | "
        "`MAX_BODY_BYTES` | 413 `payload-too-large` |",
        f"| protected header, base64url-encoded | {defaults.max_jose_header_bytes:,} bytes | "
        "`MAX_JOSE_HEADER_BYTES` | 400 `malformed-signature` |",
        f"| nesting depth of the header and of the payload JSON | {defaults.max_json_depth} "
        "levels | `MAX_JSON_DEPTH` | 400 `malformed-signature` (header), 422 "
        "`invalid-referral` (payload) |",
        f"| magnitude of any integer in the header | {defaults.max_json_integer:,} "
        "(2^53, I-JSON) | `MAX_JSON_INTEGER` | 400 `malformed-signature` |",
        f"| age of the signed `iat` | {defaults.max_signature_age_s} s | "
        "`MAX_SIGNATURE_AGE_S` | 403 `signature-time-invalid` (`iat_too_old`) |",
        f"| sender's clock ahead of the broker's (`iat`, and the referral's dates) | "
        f"{defaults.max_clock_skew_s} s | `MAX_CLOCK_SKEW_S` | 403 `signature-time-invalid` "
        "(`iat_in_future`); 422 `invalid-referral` for a date |",
        f"| recipients per referral | {defaults.max_recipients} | `MAX_RECIPIENTS` | "
        "422 `invalid-referral` (`fan_out.exceeded`) |",
        f"| any token a recipient opens (JWE, inner JWS) | {MAX_TOKEN_BYTES:,} bytes | "
        "(fixed: `keys.jose.MAX_TOKEN_BYTES`) | quarantined (`too_large`) |",
        "| clock skew allowed on a key's validity window: the broker checking a referral's "
        f"key | {defaults.max_clock_skew_s} s | `MAX_CLOCK_SKEW_S` | 403 `key-not-yet-valid` |",
        "| the same, everywhere else (a recipient opening a disclosure, the broker checking an "
        f"acknowledgement) | {int(CLOCK_SKEW.total_seconds())} s | (fixed: "
        "`keys.registry.CLOCK_SKEW`) | quarantined / dead-lettered (`key_not_yet_valid`) |",
    ]
    assert bounds.max_bytes == defaults.max_jose_header_bytes, "HeaderBounds follows Settings"
    return "\n".join(rows)


def _vectors_table() -> str:
    """The vector files with their SHA-256, so a reader can tell a copy is intact."""
    rows = ["| file | SHA-256 |", "|---|---|"]
    for name, data in sorted(build().items()):
        rows.append(
            f"| [`{name}`](../tests/vectors/{name}) | `{hashlib.sha256(data).hexdigest()}` |"
        )
    return "\n".join(rows)


_TABLES: Final[Mapping[str, Callable[[], str]]] = {
    "problems": _problems_table,
    "limits": _limits_table,
    "vectors": _vectors_table,
}


def render_doc(text: str) -> str:
    """``text`` with each generated section replaced by what the code makes now."""
    for name, make in _TABLES.items():
        pattern = re.compile(
            rf"(<!-- generated:{name} -->\n).*?(<!-- /generated:{name} -->)", re.DOTALL
        )
        if not pattern.search(text):
            raise RuntimeError(f"docs/wire.md has no generated section {name!r}")
        body = make()
        text = pattern.sub(lambda m, body=body: m.group(1) + body + "\n" + m.group(2), text)
    return text


def check() -> list[str]:
    """The files (relative to the repo) that differ from what the code makes now."""
    drifted = [
        f"tests/vectors/{name}"
        for name, data in build().items()
        if not (VECTORS / name).is_file() or (VECTORS / name).read_bytes() != data
    ]
    doc = DOC.read_text(encoding="utf-8")
    if render_doc(doc) != doc:
        drifted.append("docs/wire.md")
    return drifted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.vectors.generate", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 on drift")
    args = parser.parse_args(argv)
    if args.check:
        drifted = check()
        for path in drifted:
            print(f"drifted: {path}", file=sys.stderr)
        if drifted:
            print("run: python -m tests.vectors.generate (and review the diff)", file=sys.stderr)
        return 1 if drifted else 0
    for name, data in build().items():
        (VECTORS / name).write_bytes(data)
    DOC.write_text(render_doc(DOC.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"wrote {len(build())} files in tests/vectors/ and the tables of docs/wire.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
