"""The ``cairn keys`` commands: create the federation's keys, list, rotate, revoke, refresh.

The key store is ``<state_dir>/keys`` and the agencies come from ``<federation_dir>``, both from
``broker.config.Settings``. The passphrase comes from ``CAIRN_KEY_PASSPHRASE`` or the file named
by ``CAIRN_KEY_PASSPHRASE_FILE``; there is deliberately no option for it. Errors are printed as
one line saying what to do, never as a traceback.
"""

from __future__ import annotations

from datetime import UTC, datetime

import click

from broker.cli.common import clean_errors as _clean_errors
from broker.cli.common import settings_or_exit as _settings
from broker.config import Settings
from keys.errors import Reason, VerificationError
from keys.federation import (
    init_federation,
    read_root_key,
    refresh,
    revoke,
    rotate,
)
from keys.registry import KeyStatus, Registry, verify_registry, verify_registry_signature
from keys.store import REGISTRY, FileStore, passphrase_from_env

__all__ = ["keys"]


def _store(settings: Settings | None = None) -> FileStore:
    return FileStore((settings or _settings()).keys_path)


def _now() -> datetime:
    return datetime.now(UTC)


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment else "-"


def _show(registry: Registry, now: datetime) -> None:
    click.echo(
        f"{registry.federation}: registry serial {registry.serial}, issued "
        f"{_when(registry.issued_at)}, expires {_when(registry.expires_at)}"
    )
    for member in registry.members:
        click.echo(f"{member.id} ({member.role.value})")
        for key in member.keys:
            state = key.status.value
            if key.status is KeyStatus.RETIRED and key.retired_at is not None:
                until = key.retired_at + registry.retired_grace
                state += f" {_when(key.retired_at)}, honoured until {_when(until)}"
                if now > until:
                    state += " (grace over)"
            elif key.status is KeyStatus.REVOKED:
                state += f" {_when(key.revoked_at)}"
            click.echo(
                f"  {key.use.value:3}  {key.kid}  valid {_when(key.not_before)} to "
                f"{_when(key.not_after)}  {state}"
            )


@click.group(name="keys", context_settings={"help_option_names": ["-h", "--help"]})
def keys() -> None:
    """Federation keys: root, agency and service keys, the TLS PKI and the signed registry.

    Keys live in <state_dir>/keys (CAIRN_STATE_DIR). Private keys are encrypted with the
    passphrase in CAIRN_KEY_PASSPHRASE, or in the file named by CAIRN_KEY_PASSPHRASE_FILE.
    """


@keys.command()
@_clean_errors
def init() -> None:
    """Create the federation: root key, CA and certificates, every member's keys, the registry.

    Refuses to touch a key store that already holds anything.
    """
    from broker.federation import load_federation

    settings = _settings()
    store = _store(settings)
    federation = load_federation(settings.federation_dir)
    registry = init_federation(store, federation, passphrase_from_env(), now=_now())
    click.echo(
        f"created the federation '{registry.federation}' in {store.root}: "
        f"{len(registry.members)} members, registry serial {registry.serial}, "
        f"expires {_when(registry.expires_at)}"
    )


@keys.command("list")
@_clean_errors
def list_keys() -> None:
    """Show the registry: every member, its keys, their validity and status.

    Needs no passphrase: the registry is public, and its signature is checked.
    """
    store = _store()
    now = _now()
    root = read_root_key(store)
    token = store.read(REGISTRY)
    try:
        registry = verify_registry(token, root, now=now)
    except VerificationError as exc:
        if exc.reason is not Reason.REGISTRY_EXPIRED:
            raise
        # An operator still needs to see an expired registry to decide what to do with it.
        registry = verify_registry_signature(token, root)
        click.echo(f"warning: {exc}", err=True)
    _show(registry, now)


@keys.command("rotate")
@click.option("--agency", "member", required=True, help="The member (agency or service) id.")
@_clean_errors
def rotate_cmd(member: str) -> None:
    """Give a member new signing (and encryption) keys; its old keys become retired.

    Retired keys still verify and open messages for the grace period, then are refused.
    """
    store = _store()
    registry = rotate(store, member, passphrase_from_env(), now=_now())
    found = registry.member(member)
    active = [k for k in found.keys if k.status is KeyStatus.ACTIVE] if found else []
    for key in active:
        click.echo(f"{member}: new {key.use.value} key {key.kid}")
    click.echo(f"registry serial {registry.serial} signed")


@keys.command("revoke")
@click.option("--agency", "member", required=True, help="The member (agency or service) id.")
@click.option("--kid", required=True, help="The key id to revoke (see 'cairn keys list').")
@_clean_errors
def revoke_cmd(member: str, kid: str) -> None:
    """Revoke one key of a member: every component refuses it from its next registry load.

    A member left with no active key needs 'cairn keys rotate' before it can send or receive.
    """
    store = _store()
    registry = revoke(store, member, kid, passphrase_from_env(), now=_now())
    click.echo(f"{member}: key {kid} revoked; registry serial {registry.serial} signed")


@keys.command("refresh")
@_clean_errors
def refresh_cmd() -> None:
    """Re-sign the registry with a new expiry, changing nothing else."""
    store = _store()
    registry = refresh(store, passphrase_from_env(), now=_now())
    click.echo(f"registry serial {registry.serial} signed, expires {_when(registry.expires_at)}")
