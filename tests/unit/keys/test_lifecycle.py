"""Rotation, the retired-key grace period, revocation and refresh, each re-signing the registry."""

from __future__ import annotations

from datetime import timedelta

import pytest

from keys.envelope import open_disclosure, seal_disclosure, sign_referral, verify_referral
from keys.errors import KeyStoreError, PassphraseError, Reason, VerificationError
from keys.federation import Lifetimes, init_federation, load_registry, refresh, revoke, rotate
from keys.registry import BROKER_ID, KeyStatus, KeyUse, Registry
from keys.store import MemoryStore
from schemas.errors import UnknownAgency
from tests.unit.keys.conftest import NOW, PASSPHRASE, SMALL, Fresh, header_of, refusal

LATER = NOW + timedelta(hours=1)  # when the operator rotates or revokes
GRACE = timedelta(days=7)  # the default grace period


def _active_kid(fresh: Fresh, member: str, use: KeyUse, registry: Registry | None = None) -> str:
    found = (registry or fresh.registry).member(member)
    assert found is not None
    key = found.active_key(use)
    assert key is not None
    return key.kid


def test_rotation_makes_new_messages_use_the_new_kid(fresh: Fresh) -> None:
    """After rotation the agency signs and is encrypted to with new keys; the old are retired."""
    old_sig = _active_kid(fresh, "test-police", KeyUse.SIGNING)
    old_enc = _active_kid(fresh, "test-police", KeyUse.ENCRYPTION)
    rotated = rotate(fresh.store, "test-police", PASSPHRASE, now=LATER)
    assert rotated.serial == 2
    assert load_registry(fresh.store, now=LATER) == rotated
    new_sig = _active_kid(fresh, "test-police", KeyUse.SIGNING, rotated)
    new_enc = _active_kid(fresh, "test-police", KeyUse.ENCRYPTION, rotated)
    assert {new_sig, new_enc}.isdisjoint({old_sig, old_enc})
    police = rotated.member("test-police")
    assert police is not None
    statuses = {k.kid: (k.status, k.retired_at) for k in police.keys}
    assert statuses[old_sig] == statuses[old_enc] == (KeyStatus.RETIRED, LATER)

    signing = fresh.signing_key("test-police", rotated)
    assert signing.kid == new_sig
    broker = fresh.signing_key(BROKER_ID, rotated)
    sealed = seal_disclosure(b"d", broker, rotated, recipient="test-police", now=LATER)
    assert header_of(sealed)["kid"] == new_enc
    assert header_of(sign_referral(b"r", signing))["kid"] == new_sig


def test_a_retired_key_is_honoured_within_the_grace_period(fresh: Fresh) -> None:
    """What was signed or sealed before rotation still verifies and opens for 7 days."""
    old_signing = fresh.signing_key("test-police")
    referral = sign_referral(b"r", old_signing)
    broker = fresh.signing_key(BROKER_ID)
    sealed = seal_disclosure(b"d", broker, fresh.registry, recipient="test-police", now=NOW)
    rotated = rotate(fresh.store, "test-police", PASSPHRASE, now=LATER)
    within = LATER + GRACE - timedelta(minutes=1)
    assert verify_referral(referral, rotated, sender="test-police", now=within) == b"r"
    keys = fresh.decryption_keys("test-police", rotated)
    assert len(keys) == 2  # the new key and the retired one
    assert open_disclosure(sealed, keys, rotated, recipient="test-police", now=within) == b"d"


def test_a_retired_key_is_refused_after_the_grace_period(fresh: Fresh) -> None:
    """Once the grace period has passed, the retired keys neither verify nor open."""
    referral = sign_referral(b"r", fresh.signing_key("test-police"))
    broker = fresh.signing_key(BROKER_ID)
    sealed = seal_disclosure(b"d", broker, fresh.registry, recipient="test-police", now=NOW)
    old_keys = fresh.decryption_keys("test-police")
    rotated = rotate(fresh.store, "test-police", PASSPHRASE, now=LATER)
    after = LATER + GRACE + timedelta(minutes=1)
    assert refusal(verify_referral, referral, rotated, sender="test-police", now=after) is (
        Reason.KEY_RETIRED
    )
    assert (
        refusal(open_disclosure, sealed, old_keys, rotated, recipient="test-police", now=after)
        is Reason.KEY_RETIRED
    )


def test_the_grace_period_is_configurable() -> None:
    """A federation created with a one-hour grace refuses a retired key after that hour."""
    store = MemoryStore()
    registry = init_federation(
        store, SMALL, PASSPHRASE, now=NOW, lifetimes=Lifetimes(retired_grace=timedelta(hours=1))
    )
    assert registry.retired_grace_s == 3600
    small = Fresh(store, registry)
    referral = sign_referral(b"r", small.signing_key("test-nhs"))
    rotated = rotate(store, "test-nhs", PASSPHRASE, now=LATER)
    assert rotated.retired_grace_s == 3600
    verify_referral(referral, rotated, sender="test-nhs", now=LATER + timedelta(minutes=59))
    assert (
        refusal(
            verify_referral, referral, rotated, sender="test-nhs", now=LATER + timedelta(hours=2)
        )
        is Reason.KEY_RETIRED
    )


def test_a_revoked_key_is_refused_at_once(fresh: Fresh) -> None:
    """Revocation takes effect immediately: no grace, whatever the message's age."""
    signing = fresh.signing_key("test-police")
    referral = sign_referral(b"r", signing)
    broker = fresh.signing_key(BROKER_ID)
    sealed = seal_disclosure(b"d", broker, fresh.registry, recipient="test-police", now=NOW)
    keys = fresh.decryption_keys("test-police")
    revoked = revoke(fresh.store, "test-police", signing.kid, PASSPHRASE, now=LATER)
    enc_kid = _active_kid(fresh, "test-police", KeyUse.ENCRYPTION)
    revoked = revoke(fresh.store, "test-police", enc_kid, PASSPHRASE, now=LATER)
    assert revoked.serial == 3
    assert load_registry(fresh.store, now=LATER).serial == 3
    assert refusal(verify_referral, referral, revoked, sender="test-police", now=LATER) is (
        Reason.KEY_REVOKED
    )
    assert (
        refusal(open_disclosure, sealed, keys, revoked, recipient="test-police", now=LATER)
        is Reason.KEY_REVOKED
    )


def test_revoking_a_retired_key_ends_its_grace(fresh: Fresh) -> None:
    """A key retired by rotation and then revoked is refused even within the grace period."""
    referral = sign_referral(b"r", fresh.signing_key("test-nhs"))
    old = _active_kid(fresh, "test-nhs", KeyUse.SIGNING)
    rotate(fresh.store, "test-nhs", PASSPHRASE, now=LATER)
    revoked = revoke(fresh.store, "test-nhs", old, PASSPHRASE, now=LATER)
    assert refusal(verify_referral, referral, revoked, sender="test-nhs", now=LATER) is (
        Reason.KEY_REVOKED
    )


def test_nothing_is_sealed_to_an_agency_without_an_active_key(fresh: Fresh) -> None:
    """With its encryption key revoked and no rotation yet, the agency cannot be sealed to."""
    broker = fresh.signing_key(BROKER_ID)
    enc_kid = _active_kid(fresh, "test-idva", KeyUse.ENCRYPTION)
    revoked = revoke(fresh.store, "test-idva", enc_kid, PASSPHRASE, now=LATER)
    with pytest.raises(VerificationError, match="cairn keys rotate") as caught:
        seal_disclosure(b"d", broker, revoked, recipient="test-idva", now=LATER)
    assert caught.value.reason is Reason.NO_ACTIVE_KEY


def test_the_broker_does_not_sign_with_a_revoked_key(fresh: Fresh) -> None:
    """Sealing refuses a broker key that recipients would refuse."""
    broker = fresh.signing_key(BROKER_ID)
    revoked = revoke(fresh.store, BROKER_ID, broker.kid, PASSPHRASE, now=LATER)
    assert (
        refusal(seal_disclosure, b"d", broker, revoked, recipient="test-idva", now=LATER)
        is Reason.KEY_REVOKED
    )
    rotated = rotate(fresh.store, BROKER_ID, PASSPHRASE, now=LATER)
    member = rotated.member(BROKER_ID)
    assert member is not None
    assert [k.use for k in member.keys] == [KeyUse.SIGNING, KeyUse.SIGNING]


def test_keys_are_refused_outside_their_validity_window() -> None:
    """Before not_before (beyond the skew) or after not_after, a key is refused."""
    store = MemoryStore()
    registry = init_federation(
        store, SMALL, PASSPHRASE, now=NOW, lifetimes=Lifetimes(key=timedelta(days=1))
    )
    referral = sign_referral(b"r", Fresh(store, registry).signing_key("test-police"))
    assert (
        refusal(
            verify_referral, referral, registry, sender="test-police", now=NOW + timedelta(days=2)
        )
        is Reason.KEY_EXPIRED
    )
    assert (
        refusal(
            verify_referral, referral, registry, sender="test-police", now=NOW - timedelta(hours=1)
        )
        is Reason.KEY_NOT_YET_VALID
    )


def test_revoke_refuses_a_kid_the_agency_does_not_have(fresh: Fresh) -> None:
    """Revoking another member's kid, or an unknown one, changes nothing and says why."""
    nhs_kid = _active_kid(fresh, "test-nhs", KeyUse.SIGNING)
    with pytest.raises(KeyStoreError, match="has no key"):
        revoke(fresh.store, "test-police", nhs_kid, PASSPHRASE, now=LATER)
    assert load_registry(fresh.store, now=LATER).serial == 1
    revoke(fresh.store, "test-nhs", nhs_kid, PASSPHRASE, now=LATER)
    with pytest.raises(KeyStoreError, match="already revoked"):
        revoke(fresh.store, "test-nhs", nhs_kid, PASSPHRASE, now=LATER)


def test_rotate_refuses_an_unknown_agency(fresh: Fresh) -> None:
    """Rotating a member that is not in the registry names the members that are."""
    with pytest.raises(UnknownAgency, match="test-police"):
        rotate(fresh.store, "nobody", PASSPHRASE, now=LATER)


def test_changes_need_the_right_passphrase(fresh: Fresh) -> None:
    """Rotation with the wrong passphrase fails before anything is written."""
    before = dict(fresh.store.files)
    with pytest.raises(PassphraseError):
        rotate(fresh.store, "test-police", b"wrong passphrase, long enough", now=LATER)
    assert fresh.store.files == before


def test_refresh_renews_an_expired_registry(fresh: Fresh) -> None:
    """An expired registry is refused until the operator refreshes it; keys are unchanged."""
    expired_at = fresh.registry.expires_at + timedelta(days=1)
    with pytest.raises(VerificationError):
        load_registry(fresh.store, now=expired_at)
    renewed = refresh(fresh.store, PASSPHRASE, now=expired_at)
    assert renewed.serial == 2
    assert renewed.members == fresh.registry.members
    assert load_registry(fresh.store, now=expired_at, min_serial=2) == renewed
