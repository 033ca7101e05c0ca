"""What a federation member trusts and holds, from the key store: the verified registry, and
its own signing and decryption keys. The broker uses it as ``cairn-broker``; agency adapters use
it as their agency.

Each member reads its own key store only (``keys.custody``): the broker its own store and the
pseudonym store, an agency its own, each over the public store the registry is published in;
``custody_of`` says where those are from the settings.

The registry is re-read whenever its file changes (rotate, revoke and refresh re-sign it), so a
revocation takes effect on the next request without a restart. A registry older than one already
seen (a lower serial) is refused, as is one that is unsigned, tampered or expired: the broker
then refuses to work (503) rather than trust it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import structlog

from broker.config import Settings
from keys import (
    BROKER_ID,
    DecryptionKey,
    KeyUse,
    Registry,
    SigningKey,
    VerificationError,
    load_decryption_keys,
    load_registry,
    load_signing_key,
)
from keys.custody import PSEUDONYM, Custody
from keys.store import REGISTRY, FileStore, Store
from schemas.errors import RegistryUntrusted, SigningUnavailable

__all__ = ["TrustStore", "custody_of", "member_trust"]

log = structlog.get_logger(__name__)


@dataclass
class _Loaded:
    stamp: tuple[int, ...]  # (mtime_ns, ctime_ns, size, inode) of the registry file
    registry: Registry


class TrustStore:
    """The registry in force and one member's keys, refreshed when the registry changes."""

    def __init__(
        self,
        store: FileStore,
        passphrase: bytes,
        *,
        root_kid: str | None = None,
        member_id: str = BROKER_ID,
        clock: Callable[[], datetime],
        serial_file: Path | None = None,
        pseudonym: tuple[Store, bytes] | None = None,
    ) -> None:
        """``serial_file`` keeps the highest registry serial seen across restarts, so that a
        restarted component cannot be handed an older (validly signed) registry either.
        ``pseudonym`` is the store of the audit pseudonym secret and its passphrase, if it is
        not ``store`` itself."""
        self.store = store
        self._pseudonym = pseudonym
        self._passphrase = passphrase
        self._root_kid = root_kid
        self._member_id = member_id
        self._clock = clock
        self._loaded: _Loaded | None = None
        self._serial_file = serial_file
        self._min_serial = _read_serial(serial_file)
        self._signing_key: SigningKey | None = None
        self._decryption_keys: tuple[DecryptionKey, ...] | None = None
        self._pseudonym_secret: bytes | None = None

    def stores(self) -> tuple[Store, ...]:
        """Every store this member reads keys from: its own (over the public one), and the
        pseudonym store if that is another."""
        return (self.store,) if self._pseudonym is None else (self.store, self._pseudonym[0])

    def registry(self) -> Registry:
        """The verified registry in force now; RegistryUntrusted if there is none."""
        now = self._clock()
        try:
            st = os.stat(self.store.path(REGISTRY))
        except OSError:
            raise RegistryUntrusted(
                f"no registry at {self.store.path(REGISTRY)}; run 'cairn keys init'"
            ) from None
        # ctime cannot be set back by utime(), so an in-place edit is noticed too.
        stamp = (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)
        loaded = self._loaded
        if loaded is None or loaded.stamp != stamp:
            loaded = self._load(stamp, now)
        if now >= loaded.registry.expires_at:
            log.error("registry.expired", serial=loaded.registry.serial)
            raise RegistryUntrusted(
                "the federation registry has expired; an operator must run 'cairn keys refresh'"
            )
        return loaded.registry

    def _load(self, stamp: tuple[int, ...], now: datetime) -> _Loaded:
        try:
            registry = load_registry(
                self.store, now=now, root_kid=self._root_kid, min_serial=self._min_serial
            )
        except VerificationError as exc:
            log.error("registry.refused", reason=exc.reason.value)
            raise RegistryUntrusted(
                f"the federation registry cannot be trusted ({exc.reason.value}); "
                "nothing is accepted until an operator restores a valid signed registry"
            ) from None
        if self._loaded is None or registry.serial != self._loaded.registry.serial:
            log.info("registry.loaded", serial=registry.serial)
        if registry.serial > self._min_serial and self._serial_file is not None:
            _write_serial(self._serial_file, registry.serial)
        self._min_serial = registry.serial
        self._loaded = _Loaded(stamp, registry)
        # The active keys may have been rotated: load them again on next use.
        self._signing_key = None
        self._decryption_keys = None
        return self._loaded

    def signing_key(self) -> SigningKey:
        """This component's active signing key, decrypted once per registry version.

        Raises SigningUnavailable (ours to fix, not the caller's) if the registry no longer
        lets this member sign: revoked, expired or missing.
        """
        registry = self.registry()
        now = self._clock()
        try:
            if self._signing_key is None:
                self._signing_key = load_signing_key(
                    self.store, self._member_id, self._passphrase, registry, now=now
                )
            registry.check_key(self._member_id, self._signing_key.kid, KeyUse.SIGNING, now=now)
        except VerificationError as exc:
            log.error("signing_key.unusable", member=self._member_id, reason=exc.reason.value)
            raise SigningUnavailable(
                f"{self._member_id} has no signing key it may use now ({exc.reason.value}); "
                f"an operator must run 'cairn keys rotate --agency {self._member_id}'"
            ) from None
        return self._signing_key

    def pseudonym_secret(self) -> bytes:
        """The federation's audit pseudonym secret (HMAC key), decrypted once."""
        if self._pseudonym_secret is None:
            from broker.audit.pseudonym import load_pseudonym_secret

            store, passphrase = self._pseudonym or (self.store, self._passphrase)
            self._pseudonym_secret = load_pseudonym_secret(store, passphrase)
        return self._pseudonym_secret

    def decryption_keys(self) -> tuple[DecryptionKey, ...]:
        """Every decryption key this member may still use: active, or retired within grace."""
        registry = self.registry()
        if self._decryption_keys is None:
            self._decryption_keys = load_decryption_keys(
                self.store, self._member_id, self._passphrase, registry, now=self._clock()
            )
        return self._decryption_keys


def _read_serial(path: Path | None) -> int:
    if path is None:
        return 0
    try:
        return int(path.read_text(encoding="ascii").strip() or 0)
    except FileNotFoundError:
        return 0
    except ValueError:
        raise RegistryUntrusted(f"{path} does not hold a registry serial number") from None


def _write_serial(path: Path, serial: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # A temp file of its own: brokers sharing a state folder may write it at the same moment
    # (one fixed temp name let one broker's rename take the other's file away).
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(f"{serial}\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def custody_of(settings: Settings) -> Custody:
    """Where this machine's key stores and their passphrase files are."""
    return Custody(settings.keys_path, settings.passphrases_path, settings.public_key_dir)


def member_trust(
    settings: Settings,
    member_id: str,
    *,
    clock: Callable[[], datetime],
    passphrase: bytes | None = None,
    serial_file: Path | None = None,
    with_pseudonym: bool = False,
) -> TrustStore:
    """What ``member_id`` trusts and holds, from its own store only (and, for the broker and
    the auditor, the pseudonym store). ``passphrase`` overrides its store's passphrase."""
    from keys.custody import store_of

    custody = custody_of(settings)
    own = store_of(member_id)
    pseudonym = None
    if with_pseudonym and not custody.all_in_one:
        pseudonym = (custody.store(PSEUDONYM), custody.passphrase(PSEUDONYM))
    return TrustStore(
        custody.member_store(member_id),
        passphrase if passphrase is not None else custody.passphrase(own),
        root_kid=settings.registry_root_kid,
        member_id=member_id,
        clock=clock,
        serial_file=serial_file,
        pseudonym=pseudonym,
    )
