"""Key rotation and revocation seen through a running broker and a recipient's opener.

Each test has a federation and a broker of its own, on a clock it moves: rotate and revoke
re-sign the registry on disk, and the running broker and recipients pick the change up from
the file without a restart.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from adapters.agency import opener_for
from broker.kafka.transport import Record
from broker.trust import TrustStore
from keys import (
    BROKER_ID,
    KeyUse,
    Lifetimes,
    Reason,
    Registry,
    VerificationError,
    decrypt_for,
    revoke,
    rotate,
)
from keys.jwk import b64url_decode
from keys.store import REGISTRY
from schemas.errors import RegistryUntrusted
from tests.conftest import PASSPHRASE, FederationKeys
from tests.samples import sample
from tests.unit.conftest import (
    Broker,
    Clock,
    StartBroker,
    assert_refused,
    captured_logs,
    new_federation_keys,
)

IDVA = "kelder-idva"
POLICE = "kelder-police"


def header_of(token: bytes) -> dict[str, Any]:
    """The protected header of a compact JWS or JWE: base64url JSON, its first segment."""
    header: dict[str, Any] = json.loads(b64url_decode(token.split(b".")[0]))
    return header


def active_kid(registry: Registry, member: str, use: KeyUse) -> str:
    entry = registry.member(member)
    assert entry is not None
    active = entry.active_key(use)
    assert active is not None
    return active.kid


async def delivered(broker: Broker, data: dict[str, Any]) -> Record:
    """Submit ``data`` as the police; the record it produced for the IDVA service."""
    reply = await broker.submit(POLICE, data)
    assert reply.status == 202, reply.body
    record = broker.transport.read_committed(f"unit.deliver.{IDVA}")[-1]
    assert record.key == data["header"]["referral_id"].encode()
    return record


def recipient(keys: FederationKeys, clock: Clock) -> TrustStore:
    """The IDVA service's own view of the federation, on the test's clock."""
    return TrustStore(keys.store, PASSPHRASE, member_id=IDVA, clock=clock)


async def test_after_rotating_a_recipient_new_records_are_encrypted_to_its_new_key(
    start_broker: StartBroker, own_keys: FederationKeys
) -> None:
    """Once the IDVA service's keys are rotated, the next record's JWE names its new kid."""
    clock = Clock()
    broker = await start_broker(own_keys, clock=clock)
    old_kid = active_kid(recipient(own_keys, clock).registry(), IDVA, KeyUse.ENCRYPTION)
    before = await delivered(broker, sample())

    rotated = rotate(own_keys.store, IDVA, PASSPHRASE, now=clock())
    new_kid = active_kid(rotated, IDVA, KeyUse.ENCRYPTION)
    after = await delivered(broker, sample())

    assert new_kid != old_kid
    assert header_of(before.value)["kid"] == old_kid
    assert header_of(after.value)["kid"] == new_kid


async def test_a_record_sealed_before_rotation_opens_within_grace_and_not_after(
    start_broker: StartBroker, own_keys: FederationKeys
) -> None:
    """A record under the retired key opens until the registry's grace ends, then never."""
    clock = Clock()
    broker = await start_broker(own_keys, clock=clock)
    data = sample()
    before = await delivered(broker, data)
    rotated = rotate(own_keys.store, IDVA, PASSPHRASE, now=clock())
    after = await delivered(broker, sample())
    open_value = opener_for(recipient(own_keys, clock), IDVA, clock=clock)

    clock.advance(rotated.retired_grace - timedelta(seconds=1))
    assert str(open_value(before.value).referral_id) == data["header"]["referral_id"]

    clock.advance(timedelta(seconds=2))
    with pytest.raises(VerificationError) as refused:
        open_value(before.value)
    assert refused.value.reason is Reason.KEY_RETIRED
    open_value(after.value)  # the new key is not affected


async def test_after_rotating_the_broker_new_records_are_signed_with_its_new_key(
    start_broker: StartBroker, own_keys: FederationKeys
) -> None:
    """The broker's next disclosure is signed with its new kid; earlier ones still verify."""
    clock = Clock()
    broker = await start_broker(own_keys, clock=clock)
    idva = recipient(own_keys, clock)
    old_kid = active_kid(idva.registry(), BROKER_ID, KeyUse.SIGNING)
    before = await delivered(broker, sample())

    rotated = rotate(own_keys.store, BROKER_ID, PASSPHRASE, now=clock())
    new_kid = active_kid(rotated, BROKER_ID, KeyUse.SIGNING)
    after = await delivered(broker, sample())

    def signer_kid(record: Record) -> str:
        inner = decrypt_for(
            record.value, idva.decryption_keys(), idva.registry(), recipient=IDVA, now=clock()
        )
        kid: str = header_of(inner)["kid"]
        return kid

    assert new_kid != old_kid
    assert signer_kid(before) == old_kid
    assert signer_kid(after) == new_kid
    open_value = opener_for(idva, IDVA, clock=clock)
    for record in (before, after):
        open_value(record.value)


async def test_a_rotated_sender_is_accepted_with_its_new_key(
    start_broker: StartBroker, own_keys: FederationKeys
) -> None:
    """After the police's keys are rotated, a referral signed with the new key is accepted."""
    clock = Clock()
    broker = await start_broker(own_keys, clock=clock)
    old_key = own_keys.trust(POLICE).signing_key()
    assert (await broker.submit(POLICE, sample(), key=old_key)).status == 202

    rotated = rotate(own_keys.store, POLICE, PASSPHRASE, now=clock())
    new_key = own_keys.trust(POLICE).signing_key()
    assert new_key.kid == active_kid(rotated, POLICE, KeyUse.SIGNING) != old_key.kid
    reply = await broker.submit(POLICE, sample(), key=new_key)

    assert reply.status == 202
    assert broker.transport.published == 12  # 2 referrals x (2 disclosures + 4 audit events)


async def test_a_sender_key_retired_by_rotation_is_honoured_for_the_grace_period_only(
    start_broker: StartBroker, own_keys: FederationKeys
) -> None:
    """The police's retired key still signs within grace; past it, 403 key-expired."""
    clock = Clock()
    broker = await start_broker(own_keys, clock=clock)
    old_key = own_keys.trust(POLICE).signing_key()
    rotated = rotate(own_keys.store, POLICE, PASSPHRASE, now=clock())
    assert (await broker.submit(POLICE, sample(), key=old_key)).status == 202
    published = broker.transport.published

    clock.advance(rotated.retired_grace + timedelta(seconds=1))
    data = sample()
    with captured_logs() as logs:
        reply = await broker.submit(POLICE, data, key=old_key)
    assert_refused(reply, logs, status=403, problem="key-expired", referral=data)
    assert reply.body["reason"] == "key_retired"
    assert broker.transport.published == published


async def test_a_revoked_sender_key_is_refused_at_once_without_a_restart(
    start_broker: StartBroker, own_keys: FederationKeys
) -> None:
    """The submission right after a revocation is refused 403 key-revoked by the same broker."""
    clock = Clock()
    broker = await start_broker(own_keys, clock=clock)
    key = own_keys.trust(POLICE).signing_key()
    assert (await broker.submit(POLICE, sample(), key=key)).status == 202
    published = broker.transport.published
    path = own_keys.store.path(REGISTRY)
    loaded = os.stat(path)

    revoke(own_keys.store, POLICE, key.kid, PASSPHRASE, now=clock())
    # Where timestamps are coarse, a write in the same tick keeps the old mtime. Pin it back to
    # prove the broker still sees the new file: revoke replaces it, so its inode is new.
    os.utime(path, ns=(loaded.st_atime_ns, loaded.st_mtime_ns))
    replaced = os.stat(path)
    assert replaced.st_mtime_ns == loaded.st_mtime_ns
    assert replaced.st_ino != loaded.st_ino

    data = sample()
    with captured_logs() as logs:
        reply = await broker.submit(POLICE, data, key=key)
    assert_refused(reply, logs, status=403, problem="key-revoked", referral=data)
    assert broker.transport.published == published


async def test_a_revocation_cannot_be_undone_by_putting_back_the_older_registry(
    start_broker: StartBroker, own_keys: FederationKeys
) -> None:
    """Restoring the registry from before a revocation gives 503, never the revoked key back."""
    clock = Clock()
    broker = await start_broker(own_keys, clock=clock)
    key = own_keys.trust(POLICE).signing_key()
    older = own_keys.store.read(REGISTRY)
    revoke(own_keys.store, POLICE, key.kid, PASSPHRASE, now=clock())
    assert (await broker.submit(POLICE, sample(), key=key)).body["reason"] == "key_revoked"

    own_keys.store.write(REGISTRY, older, private=False)  # validly signed, serial 1 < 2
    data = sample()
    with captured_logs() as logs:
        reply = await broker.submit(POLICE, data, key=key)
    assert_refused(reply, logs, status=503, problem="registry-untrusted", referral=data)
    assert [e["reason"] for e in logs if e["event"] == "registry.refused"] == ["registry_rollback"]
    assert broker.transport.published == 0


@pytest.mark.parametrize("fault", ["revoked", "expired"])
async def test_a_broker_that_cannot_sign_answers_503_not_a_refusal_of_the_sender(
    start_broker: StartBroker, tmp_path: Path, fault: str
) -> None:
    """With its own key revoked or expired, the broker says 503 (retry), not a sender's 403."""
    clock = Clock()
    keys = new_federation_keys(
        tmp_path / "keys", now=clock(), lifetimes=Lifetimes(key=timedelta(hours=1))
    )
    broker = await start_broker(keys, clock=clock)
    if fault == "revoked":
        kid = active_kid(recipient(keys, clock).registry(), BROKER_ID, KeyUse.SIGNING)
        revoke(keys.store, BROKER_ID, kid, PASSPHRASE, now=clock())
    else:
        clock.advance(timedelta(hours=2))
        for member in (POLICE, IDVA, "kelder-marac"):  # everyone's keys renewed but the broker's
            rotate(keys.store, member, PASSPHRASE, now=clock())
    police = TrustStore(keys.store, PASSPHRASE, member_id=POLICE, clock=clock)

    reply = await broker.submit(POLICE, sample(), key=police.signing_key())

    assert reply.status == 503, reply.body
    assert broker.transport.published == 0


def test_restarted_broker_still_refuses_an_older_registry(tmp_path: Path) -> None:
    """The highest registry serial seen survives a restart, so a rollback is refused after it."""
    keys = new_federation_keys(tmp_path / "keys")
    serial_file = tmp_path / "state" / "registry-serial"
    old_registry = keys.store.path(REGISTRY).read_bytes()
    first = TrustStore(
        keys.store, keys.passphrase, clock=lambda: datetime.now(UTC), serial_file=serial_file
    )
    first.registry()
    rotate(keys.store, "kelder-idva", keys.passphrase, now=datetime.now(UTC))
    assert first.registry().serial == 2
    assert serial_file.read_text().strip() == "2"

    keys.store.path(REGISTRY).write_bytes(old_registry)  # an attacker puts serial 1 back
    restarted = TrustStore(
        keys.store, keys.passphrase, clock=lambda: datetime.now(UTC), serial_file=serial_file
    )
    with pytest.raises(RegistryUntrusted):
        restarted.registry()
