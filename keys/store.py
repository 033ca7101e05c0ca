"""The key store: where the federation's keys, certificates and registry live at rest.

This is the one module of ``keys`` that touches the disk. A ``Store`` is a small interface
(exists, read, write, is_empty) over named files; ``FileStore`` is the real one and
``MemoryStore`` the in-memory double beside it. ``FileStore`` writes every file to a temporary
file in the same folder, then renames it into place with ``os.replace``, so a reader sees the
old file or the new one, never half of one; private files are mode 0600 in 0700 folders.

Private keys are PKCS#8 PEM encrypted under a passphrase (``BestAvailableEncryption``: PBES2,
PBKDF2-HMAC-SHA256, AES-256-CBC). The passphrase comes from ``CAIRN_KEY_PASSPHRASE`` or from
the file named by ``CAIRN_KEY_PASSPHRASE_FILE``, never from the command line, where every user
of the machine could read it in the process list.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from contextlib import suppress
from pathlib import Path, PurePosixPath
from typing import Final, Protocol

from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    PrivateFormat,
    load_pem_private_key,
)

from keys.errors import KeyStoreError, PassphraseError
from keys.jwk import DecryptionKey, SigningKey

__all__ = [
    "AGENCY_CAS",
    "CA_CERT",
    "CA_KEY",
    "MIN_PASSPHRASE_CHARS",
    "PASSPHRASE_ENV",
    "PASSPHRASE_FILE_ENV",
    "REGISTRY",
    "ROOT_KEY",
    "ROOT_PUBLIC",
    "SERVER_CERT",
    "SERVER_KEY",
    "FileStore",
    "MemoryStore",
    "PathStore",
    "Store",
    "check_new_passphrase",
    "client_cert",
    "client_key",
    "decrypt_private_key",
    "encrypt_private_key",
    "load_decryption_key",
    "load_signing_key",
    "member_key",
    "passphrase_from_env",
]

PASSPHRASE_ENV: Final = "CAIRN_KEY_PASSPHRASE"  # noqa: S105 - the variable's name, not a secret
PASSPHRASE_FILE_ENV: Final = "CAIRN_KEY_PASSPHRASE_FILE"  # noqa: S105 - same
# The PKCS#8 KDF is cheap (PBKDF2, 2048 rounds), so the passphrase itself must carry the
# strength: 16 characters is the floor, a random 32-byte secret the norm.
MIN_PASSPHRASE_CHARS: Final = 16

# The layout of a store. Names are relative POSIX paths.
REGISTRY: Final = "registry.jws"  # the root-signed registry (public)
ROOT_PUBLIC: Final = "root.jwk"  # the root public key, the trust anchor (public)
ROOT_KEY: Final = "private/root.key"
PSEUDONYM_KEY: Final = "private/pseudonym.key"  # the audit pseudonym secret (encrypted)
CA_CERT: Final = "tls/ca.crt"
CA_KEY: Final = "tls/ca.key"
SERVER_CERT: Final = "tls/server.crt"
SERVER_KEY: Final = "tls/server.key"
# The CAs trusted for one agency's own TLS certificate each, <id>.crt (public; keys.enrolment).
AGENCY_CAS: Final = "tls/agency-cas"


def member_key(member_id: str, kid: str) -> str:
    """Where a member's signing or encryption private key is kept."""
    return f"private/{member_id}/{kid}.key"


def client_cert(agency_id: str) -> str:
    return f"tls/clients/{agency_id}.crt"


def client_key(agency_id: str) -> str:
    return f"tls/clients/{agency_id}.key"


class PathStore(Protocol):
    """A store whose files are on disk, for the APIs (``ssl``) that only take paths."""

    def exists(self, name: str) -> bool: ...

    def read(self, name: str) -> bytes: ...

    def write(self, name: str, data: bytes, *, private: bool) -> None: ...

    def is_empty(self) -> bool: ...

    def path(self, name: str) -> Path: ...


class Store(Protocol):
    """Named files: what ``keys.federation`` reads and writes, and nothing more."""

    def exists(self, name: str) -> bool: ...

    def read(self, name: str) -> bytes:
        """The file's bytes; ``KeyStoreError`` if there is no such file."""
        ...

    def write(self, name: str, data: bytes, *, private: bool) -> None:
        """Create or replace the file atomically; ``private`` files are readable by us only."""
        ...

    def is_empty(self) -> bool:
        """True if the store holds no file at all (so ``init`` may create a federation)."""
        ...


def _checked(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    # Names are built from agency ids and kids, which are validated; this is the backstop that
    # keeps a bad name from escaping the store's folder.
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise RuntimeError(f"not a store name: {name!r}")
    return path


class FileStore:
    """A store in a folder on disk: atomic writes, 0600 private files, 0700 folders."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __repr__(self) -> str:
        return f"FileStore({str(self.root)!r})"

    def __str__(self) -> str:
        return str(self.root)

    def path(self, name: str) -> Path:
        """The file's path on disk, for the APIs (``ssl``) that only take paths."""
        return self.root.joinpath(*_checked(name).parts)

    def exists(self, name: str) -> bool:
        return self.path(name).is_file()

    def is_empty(self) -> bool:
        try:
            return not any(self.root.iterdir())
        except FileNotFoundError:
            return True
        except NotADirectoryError:
            return False

    def read(self, name: str) -> bytes:
        path = self.path(name)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise KeyStoreError(
                f"{path} does not exist; is CAIRN_STATE_DIR right, and has "
                "'cairn keys init' been run?"
            ) from None
        except OSError as exc:
            raise KeyStoreError(f"cannot read {path}: {exc.strerror}") from None

    def write(self, name: str, data: bytes, *, private: bool) -> None:
        path = self.path(name)
        try:
            self._mkdirs(path.parent)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            try:
                # mkstemp creates the file 0600, so a private key is never readable by others,
                # not even for the moment before the chmod.
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.chmod(tmp, 0o600 if private else 0o644)
                os.replace(tmp, path)
            except BaseException:
                with suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
            # The rename is durable only once the folder itself is synced.
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise KeyStoreError(f"cannot write {path}: {exc.strerror}") from None

    def _mkdirs(self, folder: Path) -> None:
        missing = []
        current = folder
        while not current.exists():
            missing.append(current)
            current = current.parent
        for created in reversed(missing):
            created.mkdir(mode=0o700)
            os.chmod(created, 0o700)  # mkdir's mode is filtered by the umask


class MemoryStore:
    """A store in a dict, for tests: same behaviour as ``FileStore``, no disk."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, bool]] = {}

    def __str__(self) -> str:
        return "the in-memory key store"

    def exists(self, name: str) -> bool:
        return str(_checked(name)) in self.files

    def is_empty(self) -> bool:
        return not self.files

    def read(self, name: str) -> bytes:
        try:
            return self.files[str(_checked(name))][0]
        except KeyError:
            raise KeyStoreError(f"{name} does not exist in the key store") from None

    def write(self, name: str, data: bytes, *, private: bool) -> None:
        self.files[str(_checked(name))] = (bytes(data), private)


def passphrase_from_env(environ: Mapping[str, str] | None = None) -> bytes:
    """The key passphrase from ``CAIRN_KEY_PASSPHRASE`` or ``CAIRN_KEY_PASSPHRASE_FILE``."""
    env = os.environ if environ is None else environ
    direct = env.get(PASSPHRASE_ENV)
    file_name = env.get(PASSPHRASE_FILE_ENV)
    if direct and file_name:
        raise PassphraseError(
            f"both {PASSPHRASE_ENV} and {PASSPHRASE_FILE_ENV} are set; set only one"
        )
    if file_name:
        try:
            text = Path(file_name).read_bytes()
        except OSError as exc:
            raise PassphraseError(
                f"cannot read the passphrase file named by {PASSPHRASE_FILE_ENV} "
                f"({file_name}): {exc.strerror}"
            ) from None
        # One trailing newline is how editors and `echo` end a file, not part of the secret.
        passphrase = text.removesuffix(b"\n").removesuffix(b"\r")
        if not passphrase:
            raise PassphraseError(f"the passphrase file {file_name} is empty")
        return passphrase
    if direct:
        return direct.encode("utf-8")
    raise PassphraseError(
        f"no key passphrase: set {PASSPHRASE_ENV}, or {PASSPHRASE_FILE_ENV} to the path of a "
        "file holding it (never pass it on the command line)"
    )


def check_new_passphrase(passphrase: bytes) -> None:
    """Refuse a passphrase too short to protect keys whose KDF is cheap."""
    if len(passphrase) < MIN_PASSPHRASE_CHARS:
        raise PassphraseError(
            f"the key passphrase must be at least {MIN_PASSPHRASE_CHARS} characters; use a "
            "random secret, e.g. from 'openssl rand -base64 32'"
        )


PrivateKey = Ed25519PrivateKey | X25519PrivateKey | EllipticCurvePrivateKey


def encrypt_private_key(key: PrivateKey, passphrase: bytes) -> bytes:
    """The key as encrypted PKCS#8 PEM, the only form a private key takes at rest."""
    if not passphrase:
        raise PassphraseError("an empty passphrase would leave the key unprotected")
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(passphrase))


def decrypt_private_key(data: bytes, passphrase: bytes, *, name: str) -> PrivateKey:
    """The private key in encrypted PKCS#8 PEM ``data``; ``name`` is only for the message."""
    try:
        key = load_pem_private_key(data, passphrase)
    except TypeError:
        # cryptography's way of saying the file was not encrypted at all.
        raise KeyStoreError(
            f"{name} is not encrypted; private keys at rest must be, so it is refused"
        ) from None
    except ValueError:
        raise PassphraseError(
            f"cannot decrypt {name}: the passphrase is wrong (check {PASSPHRASE_ENV} or "
            f"{PASSPHRASE_FILE_ENV}) or the file is damaged"
        ) from None
    if not isinstance(key, Ed25519PrivateKey | X25519PrivateKey | EllipticCurvePrivateKey):
        raise KeyStoreError(f"{name} holds a {type(key).__name__}, not a key Cairn uses")
    return key


def load_signing_key(data: bytes, passphrase: bytes, *, name: str) -> SigningKey:
    """An Ed25519 signing key from its encrypted file's bytes."""
    key = decrypt_private_key(data, passphrase, name=name)
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyStoreError(f"{name} is not an Ed25519 signing key")
    return SigningKey(key)


def load_decryption_key(data: bytes, passphrase: bytes, *, name: str) -> DecryptionKey:
    """An X25519 decryption key from its encrypted file's bytes."""
    key = decrypt_private_key(data, passphrase, name=name)
    if not isinstance(key, X25519PrivateKey):
        raise KeyStoreError(f"{name} is not an X25519 encryption key")
    return DecryptionKey(key)
