"""The published wire test vectors (tests/vectors/, docs/wire.md): made by today's code, opened
by our verifying code, refused once tampered, and never mistaken for a key store's keys."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from jwcrypto import jwe as jwcrypto_jwe
from jwcrypto import jwk as jwcrypto_jwk
from jwcrypto import jws as jwcrypto_jws

from keys import store as key_store
from keys.errors import Reason, VerificationError
from keys.jose import decrypt_compact, encrypt_compact, read_header, verify_compact
from keys.jwk import b64url_decode, b64url_encode, kid_of, public_key_from_jwk
from schemas.decode import decode
from schemas.disclosure import Disclosure
from schemas.receipt import Acknowledgement, Receipt, RecipientStatus
from schemas.submission import decode_submission
from tests.vectors.generate import VECTORS, check

MANIFEST: dict[str, Any] = json.loads((VECTORS / "manifest.json").read_bytes())
KEYS: list[dict[str, Any]] = json.loads((VECTORS / "test-only-keys.json").read_bytes())["keys"]


def _file(name: str) -> bytes:
    return (VECTORS / name).read_bytes()


def _verifier(kid: str) -> Callable[[str], Ed25519PublicKey]:
    """Resolves exactly the vector key ``kid``, as a registry would resolve a trusted one."""

    def key_for(asked: str) -> Ed25519PublicKey:
        if asked != kid:
            raise VerificationError(Reason.UNKNOWN_KEY, f"not the vector key {kid}")
        jwk = next(k for k in KEYS if k["kid"] == kid)
        public = public_key_from_jwk({n: jwk[n] for n in ("kty", "crv", "x")})
        assert isinstance(public, Ed25519PublicKey)
        return public

    return key_for


def _decrypter(kid: str) -> Callable[[str], X25519PrivateKey]:
    def key_for(asked: str) -> X25519PrivateKey:
        if asked != kid:
            raise VerificationError(Reason.WRONG_RECIPIENT, f"not the vector key {kid}")
        jwk = next(k for k in KEYS if k["kid"] == kid)
        return X25519PrivateKey.from_private_bytes(b64url_decode(jwk["d"]))

    return key_for


def _flip(token: bytes, segment: int) -> bytes:
    """``token`` with one character of one segment changed (still base64url)."""
    parts = token.split(b".")
    middle = len(parts[segment]) // 2
    char = parts[segment][middle : middle + 1]
    parts[segment] = (
        parts[segment][:middle] + (b"A" if char != b"A" else b"B") + parts[segment][middle + 1 :]
    )
    return b".".join(parts)


def test_the_vectors_and_docs_wire_md_are_what_the_code_makes() -> None:
    """Regenerating tests/vectors/ and docs/wire.md's tables changes nothing; a change to the
    JOSE profile, a message, a limit or a problem type fails here until regenerated."""
    assert check() == [], "run: python -m tests.vectors.generate (and review the diff)"


def test_our_code_verifies_the_signed_referral_and_reads_a_valid_referral() -> None:
    """keys.jose verifies referral.jws under the sender's vector key; its payload is a valid
    referral from the sender the manifest names."""
    vector = MANIFEST["referral"]
    payload = verify_compact(
        _file("referral.jws"), _verifier(vector["signer_kid"]), typ="cairn-referral+jws"
    )
    assert payload == _file("referral.payload.json")
    referral = decode_submission(payload)
    assert referral.header.sender_agency == vector["signer"]
    assert str(referral.header.referral_id) == vector["referral_id"]


def test_our_code_accepts_the_referral_signed_under_the_legacy_alg_name() -> None:
    """referral-eddsa.jws (alg EdDSA, RFC 8037) verifies as the Ed25519 one does."""
    vector = MANIFEST["referral_eddsa"]
    assert vector["protected"]["alg"] == "EdDSA"
    payload = verify_compact(
        _file("referral-eddsa.jws"), _verifier(vector["signer_kid"]), typ="cairn-referral+jws"
    )
    assert payload == _file("referral.payload.json")


def test_our_code_opens_the_sealed_disclosure_and_verifies_the_broker_inside() -> None:
    """keys.jose decrypts disclosure.jwe with the recipient's vector key to disclosure.jws,
    which verifies under the broker's key and holds a disclosure for that recipient."""
    jwe, jws = MANIFEST["disclosure"]["jwe"], MANIFEST["disclosure"]["jws"]
    inner = decrypt_compact(_file("disclosure.jwe"), _decrypter(jwe["recipient_kid"]))
    assert inner == _file("disclosure.jws")
    payload = verify_compact(inner, _verifier(jws["signer_kid"]), typ="cairn-disclosure+jws")
    disclosure = decode(Disclosure, payload)
    assert disclosure.recipient_agency == jwe["recipient"]
    assert str(disclosure.referral_id) == MANIFEST["referral"]["referral_id"]


def test_our_code_verifies_the_acknowledgement() -> None:
    """ack.jws verifies under the recipient's signing key and is its acknowledgement."""
    vector = MANIFEST["ack"]
    payload = verify_compact(_file("ack.jws"), _verifier(vector["signer_kid"]), typ="cairn-ack+jws")
    ack = decode(Acknowledgement, payload)
    assert ack.agency == vector["signer"]


def test_the_receipt_is_a_valid_receipt_naming_each_recipient() -> None:
    """receipt.json is the broker's Receipt for the referral: IDVA queued among its recipients."""
    receipt = decode(Receipt, _file("receipt.json"))
    assert str(receipt.referral_id) == MANIFEST["referral"]["referral_id"]
    queued = {r.agency for r in receipt.recipients if r.status is RecipientStatus.QUEUED}
    assert MANIFEST["disclosure"]["jwe"]["recipient"] in queued


def test_the_vector_jwe_header_is_the_one_encrypt_compact_emits() -> None:
    """A JWE from keys.jose.encrypt_compact has the vector's protected header member for
    member, in the same order; only the ephemeral key differs."""
    vector = MANIFEST["disclosure"]["jwe"]
    recipient = next(k for k in KEYS if k["kid"] == vector["recipient_kid"])
    public = public_key_from_jwk({n: recipient[n] for n in ("kty", "crv", "x")})
    assert not isinstance(public, Ed25519PublicKey)
    ours = read_header(encrypt_compact(b"x", public), jwe_token=True, max_bytes=1 << 20)
    theirs = read_header(_file("disclosure.jwe"), jwe_token=True, max_bytes=1 << 20)
    assert list(ours) == list(theirs)
    assert list(ours["epk"]) == list(theirs["epk"])
    assert {**ours, "epk": None} == {**theirs, "epk": None}
    assert theirs["kid"] == kid_of(public)


@pytest.mark.parametrize(
    ("name", "segment", "reason"),
    [
        ("referral.jws", 1, Reason.BAD_SIGNATURE),
        ("referral.jws", 2, Reason.BAD_SIGNATURE),
        ("ack.jws", 1, Reason.BAD_SIGNATURE),
        ("disclosure.jwe", 1, Reason.DECRYPTION_FAILED),
        ("disclosure.jwe", 3, Reason.DECRYPTION_FAILED),
        ("disclosure.jwe", 4, Reason.DECRYPTION_FAILED),
    ],
)
def test_a_tampered_vector_is_refused_by_our_code(name: str, segment: int, reason: Reason) -> None:
    """One changed character in the payload, signature, encrypted key, ciphertext or tag is
    refused with the reason a recipient would quarantine it for."""
    token = _flip(_file(name), segment)
    if name.endswith(".jwe"):
        key_for = _decrypter(MANIFEST["disclosure"]["jwe"]["recipient_kid"])
        with pytest.raises(VerificationError) as refused:
            decrypt_compact(token, key_for)
    else:
        vector = MANIFEST["referral" if name.startswith("referral") else "ack"]
        verifier, typ = _verifier(vector["signer_kid"]), vector["protected"]["typ"]
        with pytest.raises(VerificationError) as refused:
            verify_compact(token, verifier, typ=typ)
    assert refused.value.reason is reason


def test_the_vector_keys_are_marked_and_shaped_so_no_key_store_reads_them() -> None:
    """Every vector key says TEST ONLY, and no vector file has a name or form of the key
    store's (PKCS#8 ``.key`` files under ``private/``, ``registry.jws``, ``root.jwk``)."""
    assert all(k["cairn_test_only"] is True for k in KEYS)
    store_names = {
        getattr(key_store, n)
        for n in dir(key_store)
        if n.isupper() and isinstance(getattr(key_store, n), str)
    }
    for path in VECTORS.iterdir():
        assert path.name not in {Path(n).name for n in store_names}
        assert path.suffix not in {".key", ".pem", ".crt", ".jwk"}


def _their_key(kid: str, *, private: bool) -> jwcrypto_jwk.JWK:
    """jwcrypto's key from the vector file (the private one, or only its public members)."""
    jwk = next(k for k in KEYS if k["kid"] == kid)
    members = ("kty", "crv", "x", "d") if private else ("kty", "crv", "x")
    return jwcrypto_jwk.JWK(**{n: jwk[n] for n in members})


def _signed_by_them(header: dict[str, Any]) -> str:
    """A JWS of the vector referral that jwcrypto signs under ``header``, as sent."""
    signed = jwcrypto_jws.JWS(_file("referral.payload.json"))
    signed.add_signature(
        _their_key(MANIFEST["referral"]["signer_kid"], private=True),
        protected=json.dumps(header),
    )
    return str(signed.serialize(compact=True))


def _sealed_by_them(header: dict[str, Any]) -> str:
    recipient = MANIFEST["disclosure"]["jwe"]["recipient_kid"]
    sealed = jwcrypto_jwe.JWE(_file("disclosure.jws"), protected=json.dumps(header))
    sealed.add_recipient(_their_key(recipient, private=False))
    return str(sealed.serialize(compact=True))


_REFERRAL_HEADER: Final = {
    "alg": "Ed25519",
    "kid": MANIFEST["referral"]["signer_kid"],
    "typ": "cairn-referral+jws",
    "iat": MANIFEST["referral"]["protected"]["iat"],
}


@pytest.mark.parametrize(
    ("change", "refused"),
    [
        ({"alg": "EdDSA"}, None),  # RFC 8037's name, still accepted
        ({"cty": "json", "jku": "https://example.invalid/k", "x5t": "AAAA"}, None),  # ignored
        ({"foo": 1}, Reason.MALFORMED),  # an unregistered member
        ({"enc": "A256GCM"}, Reason.MALFORMED),  # a JWE member in a JWS
        ({"crit": ["b64"], "b64": False}, Reason.MALFORMED),  # RFC 7797: no extension
        ({"x5c": 5}, Reason.MALFORMED),  # a registered member, wrongly typed
        ({"iat": 1795684560.5}, Reason.IAT_INVALID),
        ({"iat": "1795684560"}, Reason.IAT_INVALID),
        ({"iat": True}, Reason.IAT_INVALID),
        ({"typ": "CAIRN-REFERRAL+JWS"}, Reason.WRONG_TYPE),  # exact, case-sensitive
        ({"typ": "cairn-disclosure+jws"}, Reason.WRONG_TYPE),
        ({"alg": "ES256"}, Reason.ALGORITHM),
        ({"kid": 7}, Reason.MALFORMED),
    ],
)
def test_the_jws_profile_docs_wire_md_states(
    change: dict[str, Any], refused: Reason | None
) -> None:
    """Each JWS header rule of docs/wire.md §3, as keys.jose enforces it on a token another
    library signed: what is accepted is accepted, what is refused is refused for that reason."""
    header = {**_REFERRAL_HEADER, **change}
    # jwcrypto will sign neither ES256 with an Ed25519 key nor an unencoded (b64 false)
    # payload in compact form: there the header alone, before any signature, is refused.
    unsignable = header["alg"] == "ES256" or "crit" in header
    token = _with_header(_file("referral.jws"), header) if unsignable else _signed_by_them(header)
    verifier = _verifier(MANIFEST["referral"]["signer_kid"])
    if refused is None:
        assert verify_compact(token, verifier, typ="cairn-referral+jws") == _file(
            "referral.payload.json"
        )
        return
    with pytest.raises(VerificationError) as caught:
        verify_compact(token, verifier, typ="cairn-referral+jws")
    assert caught.value.reason is refused


def _with_header(token: bytes, header: dict[str, Any]) -> bytes:
    """``token`` with its protected header replaced (the signature no longer matches)."""
    parts = token.split(b".")
    parts[0] = b64url_encode(json.dumps(header).encode()).encode()
    return b".".join(parts)


_JWE_HEADER: Final = {
    "alg": "ECDH-ES+A256KW",
    "enc": "A256GCM",
    "kid": MANIFEST["disclosure"]["jwe"]["recipient_kid"],
    "cty": "JOSE",
}


@pytest.mark.parametrize(
    ("change", "refused"),
    [
        ({}, None),
        ({"cty": None}, None),  # cty is sent, not required
        ({"apu": "QQ", "apv": "Qg"}, None),  # not sent by Cairn, used if present
        ({"zip": "DEF"}, Reason.ALGORITHM),
        ({"enc": "A128GCM"}, Reason.ALGORITHM),
        ({"alg": "ECDH-ES"}, Reason.ALGORITHM),
        ({"foo": 1}, Reason.DECRYPTION_FAILED),  # an unregistered member
        ({"kid": "x" * 43}, Reason.WRONG_RECIPIENT),
    ],
)
def test_the_jwe_profile_docs_wire_md_states(
    change: dict[str, Any], refused: Reason | None
) -> None:
    """Each JWE header rule of docs/wire.md §5, as keys.jose enforces it on a JWE another
    library made: accepted ones open to the broker's JWS, refused ones for that reason."""
    header = {k: v for k, v in {**_JWE_HEADER, **change}.items() if v is not None}
    token = _sealed_by_them(header)
    key_for = _decrypter(MANIFEST["disclosure"]["jwe"]["recipient_kid"])
    if refused is None:
        assert decrypt_compact(token, key_for) == _file("disclosure.jws")
        return
    with pytest.raises(VerificationError) as caught:
        decrypt_compact(token, key_for)
    assert caught.value.reason is refused
