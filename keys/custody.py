"""Split custody: which store holds which keys, and where each store's passphrase comes from.

Every party's private keys live in a store of its own, opened with a passphrase of its own
(README "Key custody"):

=================  =====================================================  =================
store              holds                                                  who runs it
=================  =====================================================  =================
``root``           the federation root signing key                        the administrator
``ca``             the federation CA's key (and its certificate)          the administrator
``pseudonym``      the audit pseudonym secret                             broker and auditor
``broker``         the broker's signing key and TLS server key            the broker
``auditor``        the auditor's signing key and TLS client key           the auditor
``agencies/<id>``  one agency's signing, encryption and TLS keys          that agency
``public``         the signed registry, the root public key, CA cert      everyone (published)
=================  =====================================================  =================

A machine holds only the stores of what it runs; the names are the same everywhere, so
``<key_dir>/<store>`` is where a store is on any machine, and ``<passphrase_dir>/<store>`` is
the file holding its passphrase. A store with no passphrase file there uses
``CAIRN_KEY_PASSPHRASE`` or ``CAIRN_KEY_PASSPHRASE_FILE`` (a machine with one store needs no
more). The public store may live elsewhere (``public_dir``): it is what the administrator
publishes and every machine fetches.

A member reads its own store through a ``LayeredStore``: its private files from its own store,
the published files (registry, root key, CA certificate) from the public one, behind the same
``Store`` interface, so nothing that loads keys knows how custody is split.

A key folder holding ``registry.jws`` at its top is an all-in-one store, as
``keys.federation.init_federation`` makes for tests and benchmarks: every member's keys in one
folder under one passphrase. It offers no separation at all, and ``cairn keys init`` never makes
one; it is still read, so that existing test federations keep working.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from pydantic import TypeAdapter, ValidationError

from keys.errors import KeyStoreError, PassphraseError
from keys.registry import AUDITOR_ID, BROKER_ID
from keys.store import (
    AGENCY_CAS,
    CA_CERT,
    PASSPHRASE_ENV,
    PASSPHRASE_FILE_ENV,
    REGISTRY,
    ROOT_PUBLIC,
    FileStore,
    check_new_passphrase,
    passphrase_from_env,
)
from schemas.fields import AgencyId

__all__ = [
    "AUDITOR",
    "BROKER",
    "CA",
    "PSEUDONYM",
    "PUBLIC",
    "PUBLIC_NAMES",
    "ROOT",
    "Custody",
    "LayeredStore",
    "agency_store",
    "read_passphrase_file",
    "store_of",
]

_AGENCY_IDS: Final = TypeAdapter(AgencyId)

PUBLIC: Final = "public"
ROOT: Final = "root"
CA: Final = "ca"
PSEUDONYM: Final = "pseudonym"
BROKER: Final = "broker"
AUDITOR: Final = "auditor"
# The files every member reads from the public store rather than its own (and the CAs trusted
# for agencies' own certificates, under AGENCY_CAS).
PUBLIC_NAMES: Final = frozenset({REGISTRY, ROOT_PUBLIC, CA_CERT})


def agency_store(agency_id: str) -> str:
    """The store name of one agency's keys; an id that is not one (it becomes a folder name)
    is refused."""
    try:
        _AGENCY_IDS.validate_python(agency_id)
    except ValidationError:
        raise KeyStoreError(
            f"{agency_id!r} is not an agency id: lower-case letters, digits and hyphens"
        ) from None
    return f"agencies/{agency_id}"


def store_of(member_id: str) -> str:
    """The store holding ``member_id``'s private keys: a service's, or an agency's."""
    if member_id == BROKER_ID:
        return BROKER
    if member_id == AUDITOR_ID:
        return AUDITOR
    return agency_store(member_id)


def read_passphrase_file(path: Path) -> bytes:
    """A passphrase from a file: its bytes less one final newline; never empty."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise PassphraseError(f"cannot read the passphrase file {path}: {exc.strerror}") from None
    passphrase = text.removesuffix(b"\n").removesuffix(b"\r")
    if not passphrase:
        raise PassphraseError(f"the passphrase file {path} is empty")
    return passphrase


class LayeredStore(FileStore):
    """A member's store on disk: its own folder, but the published files (registry, root key, CA
    certificate) are those of the public store's folder.

    Every ``FileStore`` operation goes through ``path``, so routing the published names there
    is all it takes; it is a ``FileStore`` wherever one is expected (``ssl`` needs paths).
    """

    def __init__(self, own: FileStore, public: FileStore) -> None:
        super().__init__(own.root)
        self.public = public

    def __repr__(self) -> str:
        return f"LayeredStore({str(self.root)!r}, public={str(self.public.root)!r})"

    def path(self, name: str) -> Path:
        if name in PUBLIC_NAMES or name == AGENCY_CAS or name.startswith(f"{AGENCY_CAS}/"):
            return self.public.path(name)
        return super().path(name)


@dataclass(frozen=True)
class Custody:
    """Where a federation's stores and their passphrases are, on this machine."""

    key_dir: Path
    passphrase_dir: Path
    public_dir: Path | None = None  # default: <key_dir>/public
    environ: Mapping[str, str] | None = field(default=None, repr=False)  # default: os.environ

    @property
    def all_in_one(self) -> bool:
        """True for a legacy store that holds every member's keys (see the module docstring)."""
        return (self.key_dir / REGISTRY).is_file()

    def folder(self, name: str) -> Path:
        """The folder of the store ``name`` on this machine."""
        if self.all_in_one:
            return self.key_dir
        if name == PUBLIC:
            return self.public_dir if self.public_dir is not None else self.key_dir / PUBLIC
        return self.key_dir / name

    def store(self, name: str) -> FileStore:
        return FileStore(self.folder(name))

    def public(self) -> FileStore:
        return self.store(PUBLIC)

    def member_store(self, member_id: str) -> FileStore:
        """What ``member_id`` loads its keys from: its own store over the public one."""
        if self.all_in_one:
            return FileStore(self.key_dir)
        return LayeredStore(self.store(store_of(member_id)), self.public())

    def passphrase_file(self, name: str) -> Path:
        return self.passphrase_dir.joinpath(*name.split("/"))

    def passphrase(self, name: str) -> bytes:
        """The passphrase of the store ``name``: its own file, else CAIRN_KEY_PASSPHRASE[_FILE]."""
        if not self.all_in_one:
            path = self.passphrase_file(name)
            if path.is_file():
                return read_passphrase_file(path)
        env = os.environ if self.environ is None else self.environ
        if not self.all_in_one and not (env.get(PASSPHRASE_ENV) or env.get(PASSPHRASE_FILE_ENV)):
            raise PassphraseError(
                f"no passphrase for the key store '{name}': put it in {self.passphrase_file(name)}"
                f", or set {PASSPHRASE_ENV} or {PASSPHRASE_FILE_ENV} (never on the command line)"
            )
        return passphrase_from_env(env)

    def new_passphrase(self, name: str) -> bytes:
        """The passphrase a new store ``name`` is created with: its file's, or a new random one
        written to that file (0600). A short one is refused."""
        path = self.passphrase_file(name)
        if path.is_file():
            passphrase = read_passphrase_file(path)
        else:
            passphrase = secrets.token_urlsafe(32).encode("ascii")
            _write_secret(path, passphrase + b"\n")
        check_new_passphrase(passphrase)
        return passphrase


def _write_secret(path: Path, data: bytes) -> None:
    store = FileStore(path.parent)
    try:
        store.write(path.name, data, private=True)
    except KeyStoreError as exc:
        raise PassphraseError(str(exc)) from None
    os.chmod(path.parent, 0o700)
