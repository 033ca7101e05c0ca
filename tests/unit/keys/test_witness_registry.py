"""Witnesses in the registry: role witness, each signing key with its cosignature/v1 vkey."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import ValidationError

from broker.audit.checkpoint import NoteVerifier
from broker.audit.cosign import CosignerVerifier
from broker.audit.files import DEFAULT_ORIGIN
from keys.errors import KeyStoreError
from keys.federation import Admin, admit_witness, rotate, witness_member
from keys.jwks import jwk_set
from keys.registry import (
    AUDITOR_ID,
    KeyStatus,
    KeyUse,
    Member,
    RegisteredKey,
    ServiceRole,
    cosigner_vkey,
    log_vkey,
    parse_cosigner_vkey,
    sign_registry,
)
from tests.unit.keys.conftest import NOW, PASSPHRASE, Fresh

KEY = Ed25519PrivateKey.from_private_bytes(b"\x05" * 32)
NAME = "witness.example.org/w1"


def test_the_registry_vkey_is_the_cosigners_own() -> None:
    """keys.registry writes the same verifier key as broker.audit.cosign, and reads it back."""
    vkey = cosigner_vkey(NAME, KEY.public_key())
    assert vkey == CosignerVerifier(NAME, KEY.public_key()).vkey()
    name, public = parse_cosigner_vkey(vkey)
    assert (name, public.public_bytes_raw()) == (NAME, KEY.public_key().public_bytes_raw())
    _name, kid, material = vkey.split("+", 2)
    with pytest.raises(ValueError, match="key id"):
        parse_cosigner_vkey(f"other.example+{kid}+{material}")


def test_a_witness_key_must_carry_its_own_vkey_and_only_a_witness_has_one() -> None:
    """A vkey naming another key, a witness key without one, or another member with one is
    refused by the model."""
    member = witness_member(
        "witness-a", "Witness A", cosigner_vkey(NAME, KEY.public_key()), now=NOW
    )
    (key,) = member.keys
    other = cosigner_vkey(NAME, Ed25519PrivateKey.generate().public_key())
    with pytest.raises(ValidationError, match="another key"):
        RegisteredKey.model_validate({**key.model_dump(), "vkey": other})
    bare = RegisteredKey.model_validate({**key.model_dump(), "vkey": None})
    with pytest.raises(ValidationError, match="witness"):
        Member(id="witness-a", name="Witness A", role=ServiceRole.WITNESS, keys=(bare,))
    with pytest.raises(ValidationError, match="auditor's vkey is of type 0x01"):
        Member(id="cairn-auditor", name="Auditor", role=ServiceRole.AUDITOR, keys=(key,))
    with pytest.raises(ValidationError, match="only a witness's and the auditor's"):
        Member(id="cairn-broker", name="Broker", role=ServiceRole.BROKER, keys=(key,))
    # A key without a vkey serialises exactly as before the field existed.
    assert "vkey" not in bare.model_dump_json()


def test_admitting_a_witness_lists_it_signed_in_the_jwk_set_and_rotates_it(fresh: Fresh) -> None:
    """admit_witness publishes the next serial with the witness and its vkey; the JWK Set
    lists its key under role witness; admitting a new key retires the old; 'rotate' of a
    witness is refused (it makes its own keys)."""
    admin = Admin.single(fresh.store, PASSPHRASE)
    vkey = cosigner_vkey(NAME, KEY.public_key())
    registry = admit_witness(admin, "witness-a", "Witness A", vkey, now=NOW)
    assert registry.serial == fresh.registry.serial + 1
    member = registry.member("witness-a")
    assert member is not None
    assert member.role is ServiceRole.WITNESS
    assert [k.vkey for k in member.keys] == [vkey]
    assert sign_registry(registry, admin.open()[0])  # signs and verifies as any registry
    document = jwk_set(registry)
    keys = document["keys"]
    assert isinstance(keys, list)
    entries = [e for e in keys if e["cairn_member"] == "witness-a"]
    assert [(e["cairn_role"], e["use"], e["alg"], e["cairn_vkey"]) for e in entries] == [
        ("witness", "sig", "Ed25519", vkey)
    ]
    others = [e for e in keys if e["cairn_member"] not in ("witness-a", AUDITOR_ID)]
    assert all("cairn_vkey" not in e for e in others)
    with pytest.raises(KeyStoreError, match="already"):
        admit_witness(admin, "witness-b", "Witness B", vkey, now=NOW)
    with pytest.raises(KeyStoreError, match="not a witness verifier key"):
        admit_witness(admin, "witness-b", "Witness B", "nonsense", now=NOW)
    new = cosigner_vkey(NAME, Ed25519PrivateKey.generate().public_key())
    later = admit_witness(admin, "witness-a", "Witness A", new, now=NOW + timedelta(hours=1))
    member = later.member("witness-a")
    assert member is not None
    assert [(k.vkey, k.status) for k in member.keys] == [
        (vkey, KeyStatus.RETIRED),
        (new, KeyStatus.ACTIVE),
    ]
    with pytest.raises(KeyStoreError, match="is a witness"):
        rotate(fresh.store, "witness-a", PASSPHRASE, now=NOW + timedelta(hours=2))
    fresh_key = Ed25519PrivateKey.generate().public_key()
    with pytest.raises(KeyStoreError, match="not a witness"):
        admit_witness(admin, "test-police", "Police", cosigner_vkey("x", fresh_key), now=NOW)


def test_the_auditors_checkpoint_key_is_listed_as_its_log_vkey(fresh: Fresh) -> None:
    """The registry lists the auditor's signing key as the C2SP signed-note verifier key (type
    0x01) named by the log's origin: the very text the audit log's own NoteVerifier writes,
    which Go's sumdb/note takes (tests/interop); it is in the JWK Set as cairn_vkey too."""
    auditor = fresh.registry.member(AUDITOR_ID)
    assert auditor is not None
    (key,) = [k for k in auditor.keys if k.use is KeyUse.SIGNING]
    public = key.jwk.public_key()
    assert isinstance(public, Ed25519PublicKey)
    assert key.vkey == log_vkey(public)
    assert key.vkey == NoteVerifier(DEFAULT_ORIGIN, public).vkey()
    assert NoteVerifier.from_vkey(key.vkey).public_key.public_bytes_raw() == (
        public.public_bytes_raw()
    )
    entries = [e for e in jwk_set(fresh.registry)["keys"] if e["cairn_member"] == AUDITOR_ID]
    assert [e.get("cairn_vkey") for e in entries if e["use"] == "sig"] == [key.vkey]
    # Another name or a mistyped key id is refused, as any signed-note verifier would.
    _name, kid, material = key.vkey.split("+", 2)
    with pytest.raises(ValidationError, match="key id"):
        RegisteredKey.model_validate({**key.model_dump(), "vkey": f"other+{kid}+{material}"})
