"""The auditor's witness settings: none by default, checked when loaded, JSON in the environment."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from broker.audit.cosign import CosignerVerifier
from broker.audit.service import witness_endpoints
from broker.config import Settings
from keys.errors import VerificationError

W1 = CosignerVerifier("w1.example", Ed25519PrivateKey.from_private_bytes(b"\x01" * 32).public_key())
W2 = CosignerVerifier("w2.example", Ed25519PrivateKey.from_private_bytes(b"\x02" * 32).public_key())


def test_no_witnesses_by_default() -> None:
    """Without configuration the auditor has no witnesses: checkpoints are not cosigned."""
    settings = Settings()
    assert settings.auditor_witnesses == ()
    assert witness_endpoints(settings) == []


def test_witnesses_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    """CAIRN_AUDITOR_WITNESSES is a JSON list of {vkey, url}; each becomes an endpoint."""
    value = [
        {"vkey": W1.vkey(), "url": "https://w1.example/witness"},
        {"vkey": W2.vkey(), "url": "http://127.0.0.1:8450/"},
    ]
    monkeypatch.setenv("CAIRN_AUDITOR_WITNESSES", json.dumps(value))
    monkeypatch.setenv("CAIRN_AUDITOR_WITNESS_QUORUM", "2")
    endpoints = witness_endpoints(Settings())
    assert [(e.url, e.name, e.verifier.vkey()) for e in endpoints] == [
        ("https://w1.example/witness", "w1.example", W1.vkey()),
        ("http://127.0.0.1:8450/", "w2.example", W2.vkey()),
    ]


@pytest.mark.parametrize(
    ("witnesses", "quorum", "message"),
    [
        ([{"vkey": W1.vkey(), "url": "http://w1.example/"}], 1, "loopback only"),
        ([{"vkey": W1.vkey(), "url": "https://w1.example/?a=1"}], 1, "no query"),
        ([{"vkey": "w1.example+0000+AAAA", "url": "https://w1.example/"}], 1, "vkey"),
        (
            [{"vkey": W1.vkey(), "url": "https://a/"}, {"vkey": W1.vkey(), "url": "https://b/"}],
            1,
            "same name",
        ),
        ([{"vkey": W1.vkey(), "url": "https://a/"}], 2, "no checkpoint could reach it"),
        ([{"vkey": W1.vkey(), "url": "https://a/", "extra": 1}], 1, "Extra inputs"),
    ],
)
def test_a_wrong_witness_setting_is_refused_when_loaded(
    witnesses: list[dict[str, object]], quorum: int, message: str
) -> None:
    """A bad URL, vkey, a duplicate or an unreachable quorum stops the settings, saying why."""
    with pytest.raises(ValidationError, match=message):
        Settings(auditor_witnesses=witnesses, auditor_witness_quorum=quorum)


def test_a_vkey_whose_key_id_is_wrong_is_refused_naming_the_setting() -> None:
    """The settings check the vkey's form; the key id against name and key is checked when
    the auditor builds its endpoints, and the error names the variable and the witness."""
    name, kid, material = W1.vkey().split("+", 2)
    wrong = f"{name}+{'0' * 8 if kid != '0' * 8 else '1' * 8}+{material}"
    settings = Settings(auditor_witnesses=[{"vkey": wrong, "url": "https://w1.example/"}])
    with pytest.raises(VerificationError, match=r"CAIRN_AUDITOR_WITNESSES\[0\] \(w1.example\)"):
        witness_endpoints(settings)
