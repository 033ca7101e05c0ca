"""Private keys at rest: encrypted PKCS#8, mode 0600, written atomically; init never overwrites."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from keys.errors import FederationExists, KeyStoreError, PassphraseError
from keys.federation import init_federation
from keys.store import (
    REGISTRY,
    ROOT_KEY,
    FileStore,
    MemoryStore,
    decrypt_private_key,
    encrypt_private_key,
    load_signing_key,
    passphrase_from_env,
)
from schemas.federation import Federation
from tests.unit.keys.conftest import NOW, PASSPHRASE, SMALL, Kelder


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_private_files_are_0600_in_0700_folders(kelder: Kelder) -> None:
    """Every private key file is readable by its owner only, in folders only the owner opens."""
    root = kelder.store.root
    private = [p for p in _files(root) if p.suffix == ".key"]
    # root, CA, server, 8 + 1 (auditor) client TLS keys, 8 x (sig + enc), broker and auditor
    # signing keys, the audit pseudonym secret
    assert len(private) == 1 + 1 + 1 + 9 + 16 + 2 + 1
    assert {_mode(p) for p in private} == {0o600}
    folders = [root, *(p for p in root.rglob("*") if p.is_dir())]
    assert {_mode(p) for p in folders} == {0o700}
    public = [p for p in _files(root) if p.suffix != ".key"]
    assert {_mode(p) for p in public} == {0o644}


def test_private_key_files_are_encrypted_pkcs8(kelder: Kelder) -> None:
    """Each key file is encrypted PKCS#8 PEM, and cannot be loaded without the passphrase."""
    for path in (p for p in _files(kelder.store.root) if p.suffix == ".key"):
        data = path.read_bytes()
        assert data.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n"), path.name
    root_key = kelder.store.read(ROOT_KEY)
    with pytest.raises(TypeError, match="encrypted"):
        load_pem_private_key(root_key, None)


def test_wrong_passphrase_is_a_clear_error(kelder: Kelder) -> None:
    """Loading a key with the wrong passphrase says so and names where the passphrase comes from."""
    with pytest.raises(PassphraseError, match="passphrase is wrong") as caught:
        load_signing_key(kelder.store.read(ROOT_KEY), b"not the passphrase", name=ROOT_KEY)
    assert "CAIRN_KEY_PASSPHRASE" in str(caught.value)


def test_an_unencrypted_key_file_is_refused() -> None:
    """A private key stored in the clear is refused rather than used."""
    clear = Ed25519PrivateKey.generate().private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
    )
    with pytest.raises(KeyStoreError, match="not encrypted"):
        decrypt_private_key(clear, PASSPHRASE, name="private/x.key")


def test_encrypted_keys_round_trip() -> None:
    """A key encrypted under a passphrase decrypts to the same key under that passphrase."""
    key = Ed25519PrivateKey.generate()
    loaded = load_signing_key(encrypt_private_key(key, PASSPHRASE), PASSPHRASE, name="k")
    assert loaded.private_key.private_bytes_raw() == key.private_bytes_raw()
    with pytest.raises(PassphraseError, match="empty"):
        encrypt_private_key(key, b"")


def test_init_refuses_to_overwrite_a_federation(kelder: Kelder, federation: Federation) -> None:
    """A second init on a store holding a federation fails and leaves every file as it was."""
    before = {p: p.read_bytes() for p in _files(kelder.store.root)}
    with pytest.raises(FederationExists, match="never overwritten"):
        init_federation(kelder.store, federation, PASSPHRASE, now=NOW)
    assert {p: p.read_bytes() for p in _files(kelder.store.root)} == before


def test_init_refuses_a_partly_written_store(tmp_path: Path) -> None:
    """Any file in the store (an interrupted init, say) is enough to refuse init."""
    store = FileStore(tmp_path / "keys")
    store.write("tls/ca.crt", b"left over", private=False)
    with pytest.raises(FederationExists):
        init_federation(store, SMALL, PASSPHRASE, now=NOW)


def test_init_refuses_a_short_passphrase() -> None:
    """A passphrase under 16 characters is refused before anything is written."""
    store = MemoryStore()
    with pytest.raises(PassphraseError, match="at least 16"):
        init_federation(store, SMALL, b"short", now=NOW)
    assert store.is_empty()


def test_writes_replace_files_atomically(tmp_path: Path) -> None:
    """A rewrite replaces the file whole and leaves no temporary file behind."""
    store = FileStore(tmp_path / "keys")
    store.write("private/a.key", b"one", private=True)
    store.write("private/a.key", b"two", private=True)
    assert store.read("private/a.key") == b"two"
    assert [p.name for p in (tmp_path / "keys" / "private").iterdir()] == ["a.key"]
    assert _mode(store.path("private/a.key")) == 0o600


def test_a_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the final rename fails, the old file is intact, the temp file gone, the error clear."""
    store = FileStore(tmp_path / "keys")
    store.write(REGISTRY, b"old", private=False)

    def refuse(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(KeyStoreError, match="No space left"):
        store.write(REGISTRY, b"new", private=False)
    monkeypatch.undo()
    assert store.read(REGISTRY) == b"old"
    assert [p.name for p in (tmp_path / "keys").iterdir()] == [REGISTRY]


def test_a_missing_file_says_to_run_init(tmp_path: Path) -> None:
    """Reading from an empty store says which file is missing and what to run."""
    with pytest.raises(KeyStoreError, match="cairn keys init"):
        FileStore(tmp_path / "nothing").read(REGISTRY)


def test_store_names_cannot_escape_the_store(tmp_path: Path) -> None:
    """A name with '..' or an absolute path is a programming error, never a file outside."""
    store = FileStore(tmp_path / "keys")
    for bad in ("../outside", "/etc/passwd", ""):
        with pytest.raises(RuntimeError, match="not a store name"):
            store.write(bad, b"x", private=True)


def test_passphrase_comes_from_the_environment() -> None:
    """CAIRN_KEY_PASSPHRASE is used as the passphrase, as UTF-8 bytes."""
    assert passphrase_from_env({"CAIRN_KEY_PASSPHRASE": "pässphrase"}) == "pässphrase".encode()


def test_passphrase_comes_from_a_file(tmp_path: Path) -> None:
    """CAIRN_KEY_PASSPHRASE_FILE names a file whose content, less one final newline, is used."""
    secret = tmp_path / "passphrase"
    secret.write_bytes(b"from a file \n")
    assert passphrase_from_env({"CAIRN_KEY_PASSPHRASE_FILE": str(secret)}) == b"from a file "


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({}, "no key passphrase"),
        ({"CAIRN_KEY_PASSPHRASE": "a", "CAIRN_KEY_PASSPHRASE_FILE": "/x"}, "only one"),
        ({"CAIRN_KEY_PASSPHRASE_FILE": "/nonexistent/passphrase"}, "cannot read"),
    ],
)
def test_passphrase_problems_are_clear(environ: dict[str, str], message: str) -> None:
    """A missing, doubly-set or unreadable passphrase is a PassphraseError saying which."""
    with pytest.raises(PassphraseError, match=message):
        passphrase_from_env(environ)
