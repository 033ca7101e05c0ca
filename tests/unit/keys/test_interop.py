"""Interoperability: jwcrypto, an independent JOSE implementation, reads ours and we read its."""

from __future__ import annotations

import json

import pytest
from jwcrypto import jwe as jwcrypto_jwe
from jwcrypto import jwk as jwcrypto_jwk
from jwcrypto import jws as jwcrypto_jws

from keys.envelope import (
    DISCLOSURE_TYP,
    REFERRAL_TYP,
    open_disclosure,
    seal_disclosure,
    sign_referral,
    verify_referral,
)
from keys.federation import read_root_key
from keys.jwk import DecryptionKey, SigningKey, public_jwk
from keys.registry import BROKER_ID, KeyUse, RegisteredKey, Registry
from keys.store import REGISTRY
from tests.unit.keys.conftest import NOW, Kelder

DISCLOSURE = json.dumps({"referral_id": "4c2e", "purpose": "IDVA"}).encode()


def _registered(registry: Registry, member: str, use: KeyUse) -> RegisteredKey:
    found = registry.member(member)
    assert found is not None
    key = found.active_key(use)
    assert key is not None
    return key


def _their_public(entry: RegisteredKey) -> jwcrypto_jwk.JWK:
    """jwcrypto's key built from the registry's JWK alone, as a third party would."""
    return jwcrypto_jwk.JWK(**entry.as_jwk())


def _their_private(key: SigningKey | DecryptionKey) -> jwcrypto_jwk.JWK:
    return jwcrypto_jwk.JWK.from_pyca(key.private_key)


def test_jwcrypto_opens_and_verifies_our_disclosure(kelder: Kelder) -> None:
    """jwcrypto decrypts our JWE with the recipient key and verifies the broker's JWS inside."""
    token = seal_disclosure(
        DISCLOSURE, kelder.broker, kelder.registry, recipient="kelder-idva", now=NOW
    )
    outer = jwcrypto_jwe.JWE()
    outer.deserialize(token.decode(), key=_their_private(kelder.idva[0]))
    assert outer.jose_header["alg"] == "ECDH-ES+A256KW"
    assert outer.jose_header["enc"] == "A256GCM"
    assert outer.jose_header["kid"] == kelder.idva[0].kid

    inner = jwcrypto_jws.JWS()
    inner.deserialize(outer.payload.decode())
    inner.verify(_their_public(_registered(kelder.registry, BROKER_ID, KeyUse.SIGNING)))
    assert inner.jose_header == {"alg": "Ed25519", "kid": kelder.broker.kid, "typ": DISCLOSURE_TYP}
    assert inner.payload == DISCLOSURE


def test_we_open_a_disclosure_made_by_jwcrypto(kelder: Kelder) -> None:
    """A JWS signed and a JWE encrypted by jwcrypto, to the registry's keys, opens and verifies."""
    signed = jwcrypto_jws.JWS(DISCLOSURE)
    signed.add_signature(
        _their_private(kelder.broker),
        protected={"alg": "Ed25519", "kid": kelder.broker.kid, "typ": DISCLOSURE_TYP},
    )
    recipient = _registered(kelder.registry, "kelder-nhs", KeyUse.ENCRYPTION)
    sealed = jwcrypto_jwe.JWE(
        signed.serialize(compact=True).encode(),
        protected={
            "alg": "ECDH-ES+A256KW",
            "enc": "A256GCM",
            "kid": recipient.kid,
            "cty": "JOSE",
        },
    )
    sealed.add_recipient(_their_public(recipient))
    token = sealed.serialize(compact=True)
    opened = open_disclosure(token, kelder.nhs, kelder.registry, recipient="kelder-nhs", now=NOW)
    assert opened == DISCLOSURE


@pytest.mark.parametrize("alg", ["EdDSA", "Ed25519"])
def test_we_verify_a_referral_signed_by_jwcrypto(kelder: Kelder, alg: str) -> None:
    """A referral JWS from jwcrypto verifies, under RFC 8037's EdDSA or RFC 9864's Ed25519."""
    signed = jwcrypto_jws.JWS(DISCLOSURE)
    signed.add_signature(
        _their_private(kelder.police),
        protected={"alg": alg, "kid": kelder.police.kid, "typ": REFERRAL_TYP},
    )
    token = signed.serialize(compact=True)
    assert verify_referral(token, kelder.registry, sender="kelder-police", now=NOW) == DISCLOSURE


def test_jwcrypto_verifies_our_referral(kelder: Kelder) -> None:
    """jwcrypto verifies our referral JWS with the sender's public key from the registry."""
    token = sign_referral(DISCLOSURE, kelder.police)
    theirs = jwcrypto_jws.JWS()
    theirs.deserialize(token.decode())
    theirs.verify(_their_public(_registered(kelder.registry, "kelder-police", KeyUse.SIGNING)))
    assert theirs.payload == DISCLOSURE


def test_jwcrypto_verifies_the_registry_and_agrees_on_every_kid(kelder: Kelder) -> None:
    """jwcrypto verifies the registry with the root JWK and computes the same kid for each key."""
    root = jwcrypto_jwk.JWK(**public_jwk(read_root_key(kelder.store)))
    theirs = jwcrypto_jws.JWS()
    theirs.deserialize(kelder.store.read(REGISTRY).decode())
    theirs.verify(root)
    document = json.loads(theirs.payload)
    assert document["serial"] == 1
    for member in kelder.registry.members:
        for key in member.keys:
            assert _their_public(key).thumbprint() == key.kid
