"""Referral JWS and disclosure JWE-of-JWS: made, opened and verified, and every forgery refused."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from keys.envelope import (
    DISCLOSURE_TYP,
    REFERRAL_TYP,
    decrypt_for,
    encrypt_to,
    open_disclosure,
    seal_disclosure,
    sign_referral,
    verify_referral,
    verify_signed,
)
from keys.errors import Reason
from keys.jose import sign_compact
from keys.jwk import SigningKey, b64url_decode, b64url_encode
from keys.registry import BROKER_ID
from tests.unit.keys.conftest import NOW, Kelder, header_of, refusal

REFERRAL = json.dumps({"referral_id": "9b1f", "note": "fictional"}).encode()


def _with_header(token: bytes, **changes: object) -> bytes:
    parts = token.split(b".")
    header = {**header_of(token), **changes}
    parts[0] = b64url_encode(json.dumps(header).encode()).encode()
    return b".".join(parts)


@pytest.fixture(scope="module")
def sealed(kelder: Kelder) -> bytes:
    return seal_disclosure(
        REFERRAL, kelder.broker, kelder.registry, recipient="kelder-nhs", now=NOW
    )


def test_a_signed_referral_verifies(kelder: Kelder) -> None:
    """The sender's JWS verifies against the registry and yields the exact payload."""
    token = sign_referral(REFERRAL, kelder.police)
    assert header_of(token) == {"alg": "Ed25519", "kid": kelder.police.kid, "typ": REFERRAL_TYP}
    assert verify_referral(token, kelder.registry, sender="kelder-police", now=NOW) == REFERRAL


@pytest.mark.parametrize("alg", ["EdDSA", "Ed25519"])
def test_a_referral_under_either_name_of_the_algorithm_verifies(kelder: Kelder, alg: str) -> None:
    """RFC 9864's Ed25519 is what we emit; RFC 8037's EdDSA from an older library still verifies."""
    header = {"alg": alg, "kid": kelder.police.kid, "typ": REFERRAL_TYP}
    signing_input = b".".join(
        [b64url_encode(json.dumps(header).encode()).encode(), b64url_encode(REFERRAL).encode()]
    )
    signature = kelder.police.private_key.sign(signing_input)
    token = signing_input + b"." + b64url_encode(signature).encode()
    assert verify_referral(token, kelder.registry, sender="kelder-police", now=NOW) == REFERRAL


def test_registry_signing_jwks_name_the_rfc_9864_algorithm(kelder: Kelder) -> None:
    """A signing key's JWK says alg Ed25519 (RFC 9864 §2.2); an encryption key's ECDH-ES+A256KW."""
    police = kelder.registry.member("kelder-police")
    assert police is not None
    algs = {key.use.value: key.as_jwk()["alg"] for key in police.keys}
    assert algs == {"sig": "Ed25519", "enc": "ECDH-ES+A256KW"}


def test_a_referral_signed_by_another_agency_is_refused(kelder: Kelder) -> None:
    """A referral claiming to come from the NHS but signed with the police key is refused."""
    token = sign_referral(REFERRAL, kelder.police)
    assert (
        refusal(verify_referral, token, kelder.registry, sender="kelder-nhs", now=NOW)
        is Reason.WRONG_SIGNER
    )


def test_a_tampered_referral_is_refused(kelder: Kelder) -> None:
    """Changing the payload of a signed referral breaks its signature."""
    header, _, signature = sign_referral(REFERRAL, kelder.police).split(b".")
    forged = b".".join(
        [header, b64url_encode(REFERRAL.replace(b"9b1f", b"0000")).encode(), signature]
    )
    assert (
        refusal(verify_referral, forged, kelder.registry, sender="kelder-police", now=NOW)
        is Reason.BAD_SIGNATURE
    )


def test_a_key_outside_the_registry_is_refused(kelder: Kelder) -> None:
    """A well-formed JWS by a key the registry does not list is refused as an unknown key."""
    stranger = SigningKey(Ed25519PrivateKey.generate())
    token = sign_referral(REFERRAL, stranger)
    assert (
        refusal(verify_referral, token, kelder.registry, sender="kelder-police", now=NOW)
        is Reason.UNKNOWN_KEY
    )


def test_the_typ_header_keeps_kinds_apart(kelder: Kelder) -> None:
    """The broker's signed disclosure cannot be passed off as a referral, even by the broker."""
    token = sign_compact(REFERRAL, kelder.broker, typ=DISCLOSURE_TYP)
    assert (
        refusal(verify_referral, token, kelder.registry, sender=BROKER_ID, now=NOW)
        is Reason.WRONG_TYPE
    )


@pytest.mark.parametrize("alg", ["HS256", "ES256", "RS256", "Ed448"])
def test_other_signature_algorithms_are_refused(kelder: Kelder, alg: str) -> None:
    """Only Ed25519 (or EdDSA) is accepted; an alg swap is refused before any key is used."""
    token = _with_header(sign_referral(REFERRAL, kelder.police), alg=alg)
    assert (
        refusal(verify_referral, token, kelder.registry, sender="kelder-police", now=NOW)
        is Reason.ALGORITHM
    )


@pytest.mark.parametrize(
    "token",
    [b"", b"not a token", b"a.b", b"a.b.c.d", b"!!!.e30.e30", b"W10.e30.e30", b"e30.e30.e30"],
)
def test_malformed_tokens_are_refused(kelder: Kelder, token: bytes) -> None:
    """Tokens that are not compact JWSs with a JSON-object header and a kid are malformed."""
    assert (
        refusal(verify_referral, token, kelder.registry, sender="kelder-police", now=NOW)
        is Reason.MALFORMED
    )


def test_critical_extensions_and_duplicate_headers_are_refused(kelder: Kelder) -> None:
    """A crit header, or a header naming one parameter twice, is refused as malformed."""
    token = sign_referral(REFERRAL, kelder.police)
    crit = _with_header(token, crit=["exp"], exp=1)
    assert refusal(verify_referral, crit, kelder.registry, sender="kelder-police", now=NOW) is (
        Reason.MALFORMED
    )
    duplicated = b64url_encode(b'{"alg":"EdDSA","alg":"none","kid":"x"}').encode()
    dup = b".".join([duplicated, *token.split(b".")[1:]])
    assert refusal(verify_referral, dup, kelder.registry, sender="kelder-police", now=NOW) is (
        Reason.MALFORMED
    )


def test_oversized_tokens_are_refused_unparsed(kelder: Kelder) -> None:
    """A token over the byte limit is refused before it is parsed."""
    token = sign_referral(b"x" * 2000, kelder.police)
    assert (
        refusal(
            verify_referral,
            token,
            kelder.registry,
            sender="kelder-police",
            now=NOW,
            max_bytes=1000,
        )
        is Reason.TOO_LARGE
    )


def test_a_large_referral_round_trips(kelder: Kelder) -> None:
    """A 1 MiB payload (the body limit) signs, seals and opens: library defaults do not bite."""
    big = b"x" * 1_048_576
    token = seal_disclosure(big, kelder.broker, kelder.registry, recipient="kelder-nhs", now=NOW)
    assert open_disclosure(token, kelder.nhs, kelder.registry, recipient="kelder-nhs", now=NOW) == (
        big
    )


def test_a_sealed_disclosure_opens_for_its_recipient(kelder: Kelder, sealed: bytes) -> None:
    """The recipient decrypts the JWE and verifies the broker's JWS inside it."""
    nhs = kelder.registry.member("kelder-nhs")
    assert nhs is not None
    header = header_of(sealed)
    assert header["alg"] == "ECDH-ES+A256KW"
    assert header["enc"] == "A256GCM"
    assert header["kid"] == next(k.kid for k in nhs.keys if k.use.value == "enc")
    opened = open_disclosure(sealed, kelder.nhs, kelder.registry, recipient="kelder-nhs", now=NOW)
    assert opened == REFERRAL


def test_another_agency_cannot_open_a_disclosure(kelder: Kelder, sealed: bytes) -> None:
    """The IDVA service, holding only its own keys, cannot open a disclosure for the NHS."""
    assert (
        refusal(
            open_disclosure, sealed, kelder.idva, kelder.registry, recipient="kelder-idva", now=NOW
        )
        is Reason.WRONG_RECIPIENT
    )


def test_a_recipient_cannot_open_with_another_agencys_kid(kelder: Kelder, sealed: bytes) -> None:
    """Claiming to be the NHS while holding the IDVA keys still fails: the kid is not held."""
    assert (
        refusal(
            open_disclosure, sealed, kelder.idva, kelder.registry, recipient="kelder-nhs", now=NOW
        )
        is Reason.WRONG_RECIPIENT
    )


@pytest.mark.parametrize("segment", [1, 2, 3, 4])
def test_a_tampered_jwe_is_refused(kelder: Kelder, sealed: bytes, segment: int) -> None:
    """Changing the wrapped key, IV, ciphertext or tag of the JWE makes decryption fail."""
    parts = sealed.split(b".")
    raw = bytearray(b64url_decode(parts[segment]))
    raw[len(raw) // 2] ^= 0x01
    parts[segment] = b64url_encode(bytes(raw)).encode()
    assert (
        refusal(
            open_disclosure,
            b".".join(parts),
            kelder.nhs,
            kelder.registry,
            recipient="kelder-nhs",
            now=NOW,
        )
        is Reason.DECRYPTION_FAILED
    )


def test_a_tampered_jwe_header_is_refused(kelder: Kelder, sealed: bytes) -> None:
    """The protected header is authenticated: adding a member to it makes decryption fail."""
    forged = _with_header(sealed, cty="JSON")
    assert (
        refusal(
            open_disclosure, forged, kelder.nhs, kelder.registry, recipient="kelder-nhs", now=NOW
        )
        is Reason.DECRYPTION_FAILED
    )


@pytest.mark.parametrize(
    "changes",
    [{"enc": "A128GCM"}, {"alg": "RSA-OAEP"}, {"alg": "dir"}, {"zip": "DEF"}],
)
def test_other_jwe_algorithms_are_refused(
    kelder: Kelder, sealed: bytes, changes: dict[str, str]
) -> None:
    """Only ECDH-ES+A256KW with A256GCM, uncompressed, is accepted."""
    forged = _with_header(sealed, **changes)
    assert (
        refusal(
            open_disclosure, forged, kelder.nhs, kelder.registry, recipient="kelder-nhs", now=NOW
        )
        is Reason.ALGORITHM
    )


def test_a_disclosure_must_be_signed_by_the_broker(kelder: Kelder) -> None:
    """A JWE to the NHS holding a JWS signed by the police, not the broker, is refused."""
    inner = sign_compact(REFERRAL, kelder.police, typ=DISCLOSURE_TYP)
    token = encrypt_to(inner, kelder.registry, recipient="kelder-nhs", now=NOW)
    assert (
        refusal(
            open_disclosure, token, kelder.nhs, kelder.registry, recipient="kelder-nhs", now=NOW
        )
        is Reason.WRONG_SIGNER
    )


def test_encrypt_and_decrypt_without_a_signature(kelder: Kelder) -> None:
    """The JWE layer alone round-trips, for callers that sign separately."""
    token = encrypt_to(b"bytes", kelder.registry, recipient="kelder-idva", now=NOW)
    assert decrypt_for(token, kelder.idva, kelder.registry, recipient="kelder-idva", now=NOW) == (
        b"bytes"
    )


def test_signatures_are_checked_against_the_check_time(kelder: Kelder) -> None:
    """A key is judged at the check time given: before its not_before (less skew) it is refused."""
    token = sign_compact(REFERRAL, kelder.police, typ=REFERRAL_TYP)
    early = NOW - timedelta(hours=1)
    assert (
        refusal(
            verify_signed,
            token,
            kelder.registry,
            signer="kelder-police",
            typ=REFERRAL_TYP,
            now=early,
        )
        is Reason.KEY_NOT_YET_VALID
    )


def test_nothing_is_sealed_to_a_non_member(kelder: Kelder) -> None:
    """Encrypting to an id the registry does not list is refused, naming the id."""
    assert (
        refusal(encrypt_to, b"x", kelder.registry, recipient="kelder-nobody", now=NOW)
        is Reason.UNKNOWN_MEMBER
    )
