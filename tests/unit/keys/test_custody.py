"""Split custody: the broker's configured stores hold no agency private key (acceptance 3),
each store opens with its own passphrase only, and a member reads the published registry."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)

from broker.config import Settings
from broker.trust import custody_of, member_trust
from keys import custody as names
from keys.custody import Custody, LayeredStore, agency_store, store_of
from keys.development import init_development
from keys.errors import KeyStoreError, PassphraseError
from keys.registry import AUDITOR_ID, BROKER_ID
from keys.store import REGISTRY, FileStore, load_signing_key, member_key
from schemas.federation import Federation
from tests.samples import FEDERATION_DIR
from tests.unit.keys.conftest import NOW


@pytest.fixture(scope="module")
def development(tmp_path_factory: pytest.TempPathFactory, federation: Federation) -> Settings:
    """The Kelder development federation, made through enrolment, and settings pointing at it."""
    state = tmp_path_factory.mktemp("custody")
    settings = Settings(
        state_dir=state,
        key_dir=state / "keys",
        passphrase_dir=state / "passphrases",
        federation_dir=FEDERATION_DIR,
    )
    init_development(custody_of(settings), federation, now=NOW)
    return settings


def _pem_private_keys(folder: Path) -> Iterator[tuple[Path, bytes]]:
    for path in sorted(folder.rglob("*")):
        if path.is_file() and b"PRIVATE KEY-----" in path.read_bytes():
            yield path, path.read_bytes()


def _public(key: PrivateKeyTypes) -> bytes:
    if isinstance(key, Ed25519PrivateKey | X25519PrivateKey):
        return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _agency_public_keys(custody: Custody, federation: Federation) -> dict[bytes, str]:
    """The public half of every private key in every agency's own store, by agency."""
    found: dict[bytes, str] = {}
    for agency in federation.agencies:
        name = agency_store(agency.id)
        passphrase = custody.passphrase(name)
        for _path, data in _pem_private_keys(custody.folder(name)):
            found[_public(load_pem_private_key(data, passphrase))] = agency.id
    return found


def _service_folders(settings: Settings, member: str) -> list[Path]:
    """Every folder the service's process is configured to read keys from: the stores 'cairn
    serve' (or 'cairn auditor') opens, by the very functions it opens them with."""
    from broker.cli.main import _own_store, _service_trust

    store, passphrase = _own_store(settings, member)
    trust = _service_trust(settings, store, passphrase, member_id=member, room="check")
    folders = []
    for opened in trust.stores():
        assert isinstance(opened, FileStore)
        folders.append(opened.root)
        if isinstance(opened, LayeredStore):
            folders.append(opened.public.root)
    assert len(folders) == 3  # its own, public, pseudonym
    return folders


@pytest.mark.parametrize(
    ("member", "store"), [(BROKER_ID, names.BROKER), (AUDITOR_ID, names.AUDITOR)]
)
def test_no_file_the_broker_reads_holds_an_agency_private_key(
    development: Settings, federation: Federation, member: str, store: str
) -> None:
    """Acceptance 3: scan every file under the broker's (and the auditor's) configured stores.
    No file opens with any agency's passphrase, and no private key in them (opened with the
    service's or the pseudonym store's passphrase) is an agency's key."""
    custody = custody_of(development)
    agency_keys = _agency_public_keys(custody, federation)
    assert len(agency_keys) == 3 * len(federation.agencies)  # signing, encryption, TLS each
    agency_passphrases = [custody.passphrase(agency_store(a.id)) for a in federation.agencies]
    own = [custody.passphrase(store), custody.passphrase(names.PSEUDONYM)]

    scanned = 0
    for folder in _service_folders(development, member):
        assert "/agencies/" not in str(folder)
        for path in sorted(folder.rglob("*")):
            if not path.is_file():
                continue
            scanned += 1
            data = path.read_bytes()
            for passphrase in agency_passphrases:
                with pytest.raises((ValueError, TypeError)):
                    load_pem_private_key(data, passphrase)
            if b"PRIVATE KEY-----" in data:
                opened = None
                for passphrase in own:
                    try:
                        opened = load_pem_private_key(data, passphrase)
                        break
                    except (ValueError, TypeError):
                        continue
                assert opened is not None, f"{path} is a private key {member} cannot open"
                assert _public(opened) not in agency_keys, f"{path} holds an agency's key"
    assert scanned >= 6  # its key, TLS key and cert, pseudonym, registry, root, CA


def test_the_scan_finds_an_agency_key_where_there_is_one(
    development: Settings, federation: Federation
) -> None:
    """The check above can fail: the same scan over the police's own store finds its keys."""
    custody = custody_of(development)
    agency_keys = _agency_public_keys(custody, federation)
    police = custody.folder(agency_store("kelder-police"))
    passphrase = custody.passphrase(agency_store("kelder-police"))
    found = {
        agency_keys.get(_public(load_pem_private_key(data, passphrase)))
        for _path, data in _pem_private_keys(police)
    }
    assert found == {"kelder-police"}


def test_each_store_opens_only_with_its_own_passphrase(development: Settings) -> None:
    custody = custody_of(development)
    registry = member_trust(development, BROKER_ID, clock=lambda: NOW).registry()
    for member in (BROKER_ID, AUDITOR_ID, "kelder-police", "kelder-idva"):
        entry = registry.member(member)
        assert entry is not None
        kid = entry.keys[0].kid
        store = custody.member_store(member)
        data = store.read(member_key(member, kid))
        assert load_signing_key(data, custody.passphrase(store_of(member)), name="k").kid == kid
        for other in (names.ROOT, names.CA, names.BROKER, agency_store("kelder-nhs")):
            if other != store_of(member):
                with pytest.raises(PassphraseError):
                    load_signing_key(data, custody.passphrase(other), name="k")


def test_members_read_the_published_registry(development: Settings) -> None:
    """Every member's store layers the public one: one registry file for all."""
    custody = custody_of(development)
    paths = {custody.member_store(m).path(REGISTRY) for m in (BROKER_ID, "kelder-police")}
    assert paths == {custody.public().path(REGISTRY)}
    trust = member_trust(development, "kelder-police", clock=lambda: datetime.now(UTC))
    assert trust.signing_key().kid


def test_a_store_without_a_passphrase_says_where_to_put_one(tmp_path: Path) -> None:
    custody = Custody(tmp_path / "keys", tmp_path / "passphrases", environ={})
    with pytest.raises(PassphraseError, match="passphrases/agencies/kelder-police"):
        custody.passphrase(agency_store("kelder-police"))
    fallback = Custody(
        tmp_path / "keys", tmp_path / "passphrases", environ={"CAIRN_KEY_PASSPHRASE": "x" * 20}
    )
    assert fallback.passphrase(agency_store("kelder-police")) == b"x" * 20


@pytest.mark.parametrize("bad", ["../../etc", "Kelder-Police", "a/b", "", "x" * 80])
def test_an_agency_id_that_is_no_folder_name_is_refused(bad: str) -> None:
    with pytest.raises(KeyStoreError, match="is not an agency id"):
        agency_store(bad)
