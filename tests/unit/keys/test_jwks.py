"""The registry as a JWK Set (RFC 7517 §5): read by jwcrypto, revoked keys left out, the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from jwcrypto import jwk as jwcrypto_jwk
from jwcrypto import jws as jwcrypto_jws

from keys.cli import keys
from keys.envelope import DISCLOSURE_TYP, REFERRAL_TYP, sign_referral
from keys.jose import sign_compact
from keys.jwks import jwk_set
from keys.registry import KeyStatus, Registry
from tests.samples import FEDERATION_DIR
from tests.unit.keys.conftest import NOW, Kelder

PAYLOAD = b'{"referral_id": "9b1f", "note": "fictional"}'


def _their_set(registry: Registry) -> jwcrypto_jwk.JWKSet:
    """jwcrypto's JWK Set, loaded from our JSON alone, as a third party would."""
    return jwcrypto_jwk.JWKSet.from_json(json.dumps(jwk_set(registry)))


@pytest.mark.parametrize("signer", ["police", "broker"])
def test_jwcrypto_verifies_the_token_with_the_key_its_kid_names(
    kelder: Kelder, signer: str
) -> None:
    """A referral (police) and a disclosure JWS (broker) verify with the key the set gives
    for the token's kid, under the Ed25519 alg the key and the header both name."""
    key = kelder.police if signer == "police" else kelder.broker
    token = (
        sign_referral(PAYLOAD, key)
        if signer == "police"
        else sign_compact(PAYLOAD, key, typ=DISCLOSURE_TYP)
    )
    found = _their_set(kelder.registry).get_key(key.kid)
    assert found is not None
    assert found.get("alg") == "Ed25519"
    checked = jwcrypto_jws.JWS()
    checked.deserialize(token.decode())
    checked.verify(found)
    assert checked.payload == PAYLOAD
    assert checked.jose_header["typ"] in (REFERRAL_TYP, DISCLOSURE_TYP)


def test_a_key_of_another_member_does_not_verify(kelder: Kelder) -> None:
    """The set's key for the broker's kid refuses a token the police signed."""
    token = sign_referral(PAYLOAD, kelder.police)
    broker_key = _their_set(kelder.registry).get_key(kelder.broker.kid)
    checked = jwcrypto_jws.JWS()
    checked.deserialize(token.decode())
    with pytest.raises(jwcrypto_jws.InvalidJWSSignature):
        checked.verify(broker_key)


def test_every_key_with_its_member_status_and_validity(kelder: Kelder) -> None:
    """Each registry key appears once with the RFC 7517 members and the cairn_ extras."""
    document = jwk_set(kelder.registry)
    entries = {entry["kid"]: entry for entry in document["keys"]}  # type: ignore[attr-defined]
    registered = [(m, k) for m in kelder.registry.members for k in m.keys]
    assert len(entries) == len(registered) == len(document["keys"])  # type: ignore[arg-type]
    for member, key in registered:
        entry = entries[key.kid]
        assert entry["kty"] == "OKP"
        assert entry["crv"] == key.jwk.crv
        assert entry["x"] == key.jwk.x
        assert entry["use"] == key.use.value
        assert entry["alg"] == ("Ed25519" if key.use.value == "sig" else "ECDH-ES+A256KW")
        assert entry["cairn_member"] == member.id
        assert entry["cairn_role"] == member.role.value
        assert entry["cairn_status"] == "active"
        assert entry["cairn_not_before"] == key.not_before.isoformat().replace("+00:00", "Z")
        assert entry["cairn_not_after"].endswith("Z")
    assert document["cairn_registry_serial"] == kelder.registry.serial


def _with_statuses(registry: Registry, revoke: str, retire: str) -> Registry:
    raw: dict[str, Any] = registry.model_dump(mode="json")
    when = NOW.isoformat()
    for member in raw["members"]:
        for key in member["keys"]:
            if key["kid"] == revoke:
                key.update(status=KeyStatus.REVOKED.value, revoked_at=when)
            if key["kid"] == retire:
                key.update(status=KeyStatus.RETIRED.value, retired_at=when)
    return Registry.model_validate(raw)


def test_revoked_keys_are_left_out_and_retired_ones_say_so(kelder: Kelder) -> None:
    """A revoked key is not in the set at all; a retired one is, with cairn_retired_at."""
    registry = _with_statuses(kelder.registry, revoke=kelder.police.kid, retire=kelder.broker.kid)
    document = jwk_set(registry)
    kids = [entry["kid"] for entry in document["keys"]]  # type: ignore[attr-defined]
    assert kelder.police.kid not in kids
    assert _their_set(registry).get_key(kelder.police.kid) is None
    retired = next(e for e in document["keys"] if e["kid"] == kelder.broker.kid)  # type: ignore[attr-defined]
    assert retired["cairn_status"] == "retired"
    assert retired["cairn_retired_at"] == NOW.isoformat().replace("+00:00", "Z")


def test_cairn_keys_jwks_prints_the_verified_registry_as_a_jwk_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After 'cairn keys init', 'cairn keys jwks' prints JSON jwcrypto loads, one key per kid."""
    monkeypatch.chdir(tmp_path)  # no stray cairn.toml
    env = {"CAIRN_STATE_DIR": str(tmp_path / "state"), "CAIRN_FEDERATION_DIR": str(FEDERATION_DIR)}
    runner = CliRunner()
    created = runner.invoke(keys, ["init"], env=env, catch_exceptions=False)
    assert created.exit_code == 0, created.output
    printed = runner.invoke(keys, ["jwks"], env=env, catch_exceptions=False)
    assert printed.exit_code == 0, printed.output
    document = json.loads(printed.stdout)
    members = {entry["cairn_member"] for entry in document["keys"]}
    assert {"kelder-police", "cairn-broker", "cairn-auditor"} <= members
    their = jwcrypto_jwk.JWKSet.from_json(printed.stdout)
    assert len(their["keys"]) == len(document["keys"])


def test_cairn_keys_jwks_without_a_registry_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no federation made yet: exit 1 and a one-line error, no traceback."""
    monkeypatch.chdir(tmp_path)
    env = {"CAIRN_STATE_DIR": str(tmp_path / "state"), "CAIRN_FEDERATION_DIR": str(FEDERATION_DIR)}
    result = CliRunner().invoke(keys, ["jwks"], env=env)
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_cairn_keys_jwks_has_help() -> None:
    """--help says what the command prints."""
    result = CliRunner().invoke(keys, ["jwks", "--help"])
    assert result.exit_code == 0
    assert "JWK Set (RFC 7517" in result.output
