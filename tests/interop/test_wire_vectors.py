"""jwcrypto, an independent JOSE implementation, reproduces the wire test vectors (issue 17,
acceptance 5) from the files in tests/vectors/ alone, as a Java or .NET adapter would.

No Cairn module is imported here (a test below checks): the keys, tokens and manifest are read
as files; jwcrypto verifies and re-signs the JWS byte for byte (Ed25519 is deterministic, RFC
8032 §5.1.6), decrypts the JWE and verifies the JWS inside; the JWE is rebuilt byte for byte
from its published ephemeral key, CEK and IV with the bare primitives (RFC 7518 §4.6 ECDH-ES
key agreement with the Concat KDF, RFC 3394 AES key wrap, AES-GCM); every header is checked
against the profile docs/wire.md states; and a tampered token is refused.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash
from cryptography.hazmat.primitives.keywrap import aes_key_wrap
from jwcrypto import jwe, jwk, jws
from jwcrypto.common import JWException

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
MANIFEST: dict[str, Any] = json.loads((VECTORS / "manifest.json").read_bytes())
KEYS = jwk.JWKSet.from_json((VECTORS / "test-only-keys.json").read_text())


def _file(name: str) -> bytes:
    return (VECTORS / name).read_bytes()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _key(kid: str) -> jwk.JWK:
    found = KEYS.get_key(kid)
    assert found is not None, f"the keys file has no key {kid}"
    return found


def _public(kid: str) -> jwk.JWK:
    """Only the public members: what a registry or JWK Set publishes."""
    return jwk.JWK(**json.loads(_key(kid).export_public()))


def _header(token: bytes) -> dict[str, Any]:
    return json.loads(_unb64(token.split(b".")[0].decode("ascii")))


def _check_jws_profile(
    header: dict[str, Any], typ: str, kid: str, *, iat: bool, alg: str = "Ed25519"
) -> None:
    """docs/wire.md's JWS profile: alg Ed25519 (RFC 9864; EdDSA on the legacy vector), kid the
    signer's RFC 7638 thumbprint, the explicit typ (RFC 8725 §3.11), iat whole seconds where
    required, no crit."""
    assert header["alg"] == alg
    assert header["typ"] == typ
    assert header["kid"] == kid == _public(kid).thumbprint()
    assert "crit" not in header
    assert set(header) == {"alg", "kid", "typ", *(["iat"] if iat else [])}
    if iat:
        assert isinstance(header["iat"], int)


@pytest.mark.parametrize(
    ("vector", "typ", "alg"),
    [
        ("referral", "referral", "Ed25519"),
        ("referral_eddsa", "referral", "EdDSA"),
        ("ack", "ack", "Ed25519"),
    ],
)
def test_jwcrypto_verifies_and_re_signs_the_jws_byte_for_byte(
    vector: str, typ: str, alg: str
) -> None:
    """The referral (under either alg name) and the acknowledgement verify under the signer's
    public key, and signing the same protected header and payload again gives the same bytes."""
    entry = MANIFEST[vector]
    token = _file(entry["file"])
    payload = _file(entry["payload_file"])
    assert hashlib.sha256(payload).hexdigest() == entry["payload_sha256"]
    checked = jws.JWS()
    checked.deserialize(token.decode("ascii"))
    checked.verify(_public(entry["signer_kid"]))
    assert checked.payload == payload
    assert checked.jose_header == entry["protected"] == _header(token)
    _check_jws_profile(
        checked.jose_header, MANIFEST["profile"]["typ"][typ], entry["signer_kid"], iat=True, alg=alg
    )

    again = jws.JWS(payload)
    protected = _unb64(entry["protected_b64"]).decode("utf-8")
    again.add_signature(_key(entry["signer_kid"]), protected=protected)
    assert again.serialize(compact=True).encode("ascii") == token


def test_jwcrypto_opens_the_sealed_disclosure_and_verifies_the_broker_inside() -> None:
    """jwcrypto decrypts disclosure.jwe with the recipient's key; the plaintext is the broker's
    JWS, which verifies under the broker's key and re-signs to the same bytes."""
    sealed, signed = MANIFEST["disclosure"]["jwe"], MANIFEST["disclosure"]["jws"]
    opened = jwe.JWE()
    opened.deserialize(_file("disclosure.jwe").decode("ascii"), key=_key(sealed["recipient_kid"]))
    header = opened.jose_header
    assert header == sealed["protected"]
    assert header["alg"] == "ECDH-ES+A256KW"
    assert header["enc"] == "A256GCM"
    assert header["cty"] == "JOSE"
    assert header["kid"] == sealed["recipient_kid"] == _public(sealed["recipient_kid"]).thumbprint()
    assert header["epk"]["kty"] == "OKP"
    assert header["epk"]["crv"] == "X25519"
    assert "zip" not in header
    assert "crit" not in header
    assert set(header) == {"alg", "enc", "kid", "cty", "epk"}
    assert opened.payload == _file("disclosure.jws")

    inner = jws.JWS()
    inner.deserialize(opened.payload.decode("ascii"))
    inner.verify(_public(signed["signer_kid"]))
    assert inner.payload == _file("disclosure.payload.json")
    _check_jws_profile(
        inner.jose_header, MANIFEST["profile"]["typ"]["disclosure"], signed["signer_kid"], iat=False
    )
    disclosure = json.loads(inner.payload)
    assert disclosure["recipient_agency"] == sealed["recipient"]
    assert disclosure["referral_id"] == MANIFEST["referral"]["referral_id"]


def test_the_jwe_is_rebuilt_byte_for_byte_from_its_ephemeral_key_cek_and_iv() -> None:
    """From the published ephemeral private key, CEK and IV, RFC 7516 §5.1 with RFC 7518 §4.6
    (Concat KDF, AlgorithmID "ECDH-ES+A256KW", empty apu/apv, 256 bits), RFC 3394 key wrap
    and AES-GCM gives exactly disclosure.jwe."""
    sealed = MANIFEST["disclosure"]["jwe"]
    ephemeral = X25519PrivateKey.from_private_bytes(_unb64(_key(sealed["ephemeral_kid"])["d"]))
    recipient = X25519PublicKey.from_public_bytes(_unb64(_key(sealed["recipient_kid"])["x"]))
    assert _b64(ephemeral.public_key().public_bytes_raw()) == sealed["protected"]["epk"]["x"]
    alg = b"ECDH-ES+A256KW"
    other_info = (
        struct.pack(">I", len(alg)) + alg + struct.pack(">I", 0) + struct.pack(">I", 0)
    ) + struct.pack(">I", 256)  # AlgorithmID, PartyUInfo, PartyVInfo, SuppPubInfo
    kek = ConcatKDFHash(hashes.SHA256(), 32, other_info).derive(ephemeral.exchange(recipient))
    cek, iv = _unb64(sealed["cek_b64"]), _unb64(sealed["iv_b64"])
    encrypted_key = aes_key_wrap(kek, cek)
    assert _b64(encrypted_key) == sealed["encrypted_key_b64"]
    protected = sealed["protected_b64"]
    sealed_bytes = AESGCM(cek).encrypt(iv, _file("disclosure.jws"), protected.encode("ascii"))
    ciphertext, tag = sealed_bytes[:-16], sealed_bytes[-16:]
    rebuilt = ".".join([protected, _b64(encrypted_key), _b64(iv), _b64(ciphertext), _b64(tag)])
    assert rebuilt.encode("ascii") == _file("disclosure.jwe")


def _flip(token: bytes, segment: int) -> str:
    parts = token.decode("ascii").split(".")
    middle = len(parts[segment]) // 2
    char = "A" if parts[segment][middle] != "A" else "B"
    parts[segment] = parts[segment][:middle] + char + parts[segment][middle + 1 :]
    return ".".join(parts)


@pytest.mark.parametrize(("name", "segment"), [("referral.jws", 1), ("referral.jws", 2)])
def test_jwcrypto_refuses_a_tampered_jws(name: str, segment: int) -> None:
    """One changed character in the payload or signature and the signature does not verify."""
    checked = jws.JWS()
    checked.deserialize(_flip(_file(name), segment))
    with pytest.raises(jws.InvalidJWSSignature):
        checked.verify(_public(MANIFEST["referral"]["signer_kid"]))


@pytest.mark.parametrize("segment", [1, 3, 4])
def test_jwcrypto_refuses_a_tampered_jwe(segment: int) -> None:
    """One changed character in the encrypted key, ciphertext or tag and it does not decrypt."""
    opened = jwe.JWE()
    with pytest.raises(JWException):
        opened.deserialize(
            _flip(_file("disclosure.jwe"), segment),
            key=_key(MANIFEST["disclosure"]["jwe"]["recipient_kid"]),
        )


def test_this_module_uses_no_cairn_code() -> None:
    """The reproduction stands on the files alone: nothing of broker, keys, schemas, adapters
    or gateway is imported here."""
    tree = ast.parse(Path(__file__).read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"broker", "keys", "schemas", "adapters", "gateway", "tests"}
