"""Key ids are RFC 7638 thumbprints; public JWKs export and import exactly."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from jwcrypto import jwk as jwcrypto_jwk

from keys.jwk import (
    DecryptionKey,
    SigningKey,
    b64url_decode,
    kid_of,
    public_jwk,
    public_key_from_jwk,
    thumbprint,
)

# RFC 7638 §3.1: the worked example (the RSA key of RFC 7517 appendix A.1).
RFC7638_JWK = {
    "kty": "RSA",
    "n": (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_B"
        "JECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_F"
        "DW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4"
        "vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    ),
    "e": "AQAB",
    "alg": "RS256",
    "kid": "2011-04-29",
}
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"

# RFC 8037 appendix A.2 (public key) and A.3 (its thumbprint).
RFC8037_JWK = {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
RFC8037_THUMBPRINT = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def test_thumbprint_matches_the_rfc7638_example() -> None:
    """The thumbprint of RFC 7638's example key is the value the RFC publishes."""
    assert thumbprint(RFC7638_JWK) == RFC7638_THUMBPRINT


def test_thumbprint_matches_the_rfc8037_ed25519_example() -> None:
    """The thumbprint of RFC 8037's Ed25519 example key is the value the RFC publishes."""
    assert thumbprint(RFC8037_JWK) == RFC8037_THUMBPRINT
    assert kid_of(public_key_from_jwk(RFC8037_JWK)) == RFC8037_THUMBPRINT


@pytest.mark.parametrize("generate", [Ed25519PrivateKey.generate, X25519PrivateKey.generate])
def test_okp_kids_match_jwcrypto(
    generate: Callable[[], Ed25519PrivateKey | X25519PrivateKey],
) -> None:
    """Our kid for an Ed25519 or X25519 key is the thumbprint jwcrypto computes independently."""
    private = generate()
    ours = kid_of(private.public_key())
    theirs = jwcrypto_jwk.JWK.from_pyca(private.public_key()).thumbprint()
    assert ours == theirs


def test_thumbprint_ignores_optional_members() -> None:
    """kid, use and alg do not change a key's identity; only the RFC's required members do."""
    bare = {k: RFC7638_JWK[k] for k in ("kty", "n", "e")}
    assert thumbprint(bare) == thumbprint({**bare, "use": "sig"}) == RFC7638_THUMBPRINT


def test_thumbprint_refuses_a_key_missing_a_required_member() -> None:
    """A JWK without one of its type's required members has no thumbprint."""
    with pytest.raises(ValueError, match="'x'"):
        thumbprint({"kty": "OKP", "crv": "Ed25519"})
    with pytest.raises(ValueError, match="type"):
        thumbprint({"kty": "XYZ"})


def test_public_jwk_round_trips() -> None:
    """A public key exported as a JWK imports back to the same key and kid."""
    key = X25519PrivateKey.generate().public_key()
    jwk = public_jwk(key)
    assert jwk["kty"] == "OKP"
    assert jwk["crv"] == "X25519"
    assert kid_of(public_key_from_jwk(jwk)) == kid_of(key)


def test_public_jwk_refuses_private_material_and_other_curves() -> None:
    """Importing a 'public' JWK that carries d, or a curve Cairn does not use, fails."""
    with pytest.raises(ValueError, match="private"):
        public_key_from_jwk({**RFC8037_JWK, "d": "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"})
    with pytest.raises(ValueError, match="OKP"):
        public_key_from_jwk({**RFC8037_JWK, "crv": "Ed448"})
    with pytest.raises(ValueError, match="32 bytes"):
        public_key_from_jwk({**RFC8037_JWK, "x": "AAAA"})


def test_base64url_is_strict() -> None:
    """Padding, '+' and '/' are not base64url; decoding refuses them."""
    assert b64url_decode("AQAB") == b"\x01\x00\x01"
    for bad in ("AQAB=", "a+b/", "A"):
        with pytest.raises(ValueError, match="base64url"):
            b64url_decode(bad)


def test_private_keys_never_show_in_a_repr() -> None:
    """The repr of a signing or decryption key names its kid and nothing else."""
    signing = SigningKey(Ed25519PrivateKey.generate())
    decryption = DecryptionKey(X25519PrivateKey.generate())
    assert repr(signing) == f"SigningKey(kid={signing.kid!r})"
    assert repr(decryption) == f"DecryptionKey(kid={decryption.kid!r})"
