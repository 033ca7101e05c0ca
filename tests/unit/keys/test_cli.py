"""The key commands: help for each, clear one-line errors, the development federation's
lifecycle, and the enrolment procedure between machines (separate folders here)."""

from __future__ import annotations

import base64
import hashlib
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from broker.audit.cosign import CosignerVerifier
from broker.audit.files import DEFAULT_ORIGIN
from keys.cli import agency, federation, keys
from keys.pki import issue_ca, issue_client_certificate_for
from tests.samples import FEDERATION_DIR

GROUPS = {"keys": keys, "agency": agency, "federation": federation}
COMMANDS = [
    ("keys", []),
    ("keys", ["init"]),
    ("keys", ["list"]),
    ("keys", ["rotate"]),
    ("keys", ["revoke"]),
    ("keys", ["refresh"]),
    ("agency", []),
    ("agency", ["init"]),
    ("agency", ["request"]),
    ("agency", ["install"]),
    ("agency", ["rotate"]),
    ("agency", ["revoke"]),
    ("federation", []),
    ("federation", ["init"]),
    ("federation", ["enrol"]),
    ("federation", ["rotate"]),
    ("federation", ["revoke"]),
]


def _env(state: Path) -> dict[str, str]:
    return {"CAIRN_STATE_DIR": str(state), "CAIRN_FEDERATION_DIR": str(FEDERATION_DIR)}


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.chdir(tmp_path)  # no stray cairn.toml
    return _env(tmp_path / "state")


def _run(args: list[str], env: dict[str, str], group: click.Group = keys) -> Result:
    return CliRunner().invoke(group, args, env=env, catch_exceptions=False)


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize(("group", "command"), COMMANDS)
def test_every_command_has_help(group: str, command: list[str]) -> None:
    """Each command answers --help with a usage text and exit status 0."""
    result = CliRunner().invoke(GROUPS[group], [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.output


def test_init_list_rotate_revoke(env: dict[str, str], tmp_path: Path) -> None:
    """init makes the federation through enrolment, in separate stores; list shows it; rotate
    (an agency's and a service's), revoke and refresh each publish the next serial."""
    created = _run(["init"], env)
    assert created.exit_code == 0, created.output
    assert "8 agencies enrolled" in created.output
    assert "12 members, registry serial 9" in created.output
    state = tmp_path / "state"
    assert (state / "keys" / "public" / "registry.jws").is_file()
    assert not (state / "keys" / "registry.jws").exists()
    for store in ("root", "ca", "pseudonym", "broker", "auditor", "agencies/kelder-police"):
        assert (state / "keys" / store).is_dir()
        assert (state / "passphrases" / store).is_file()

    listed = _run(["list"], env)
    assert listed.exit_code == 0, listed.output
    assert "kelder-police (police)" in listed.output
    assert "cairn-broker (broker)" in listed.output
    # The development witnesses, each with its cosignature/v1 verifier key (C2SP).
    cosigners = [
        line.split(": ", 1)[1]
        for line in listed.output.splitlines()
        if "cosignature verifier key:" in line
    ]
    assert "witness-north (witness)" in listed.output
    assert "witness-south (witness)" in listed.output
    assert [v.split("+")[0] for v in cosigners] == [
        "witness-north.cairn.local",
        "witness-south.cairn.local",
    ]
    for vkey in cosigners:
        assert CosignerVerifier.from_vkey(vkey).vkey() == vkey
    # The auditor's checkpoint key as a C2SP signed-note verifier key, name+hash+base64.
    vkeys, member = [], ""
    for line in listed.output.splitlines():
        if not line.startswith(" "):
            member = line.split(" (")[0]
        elif "checkpoint verifier key:" in line:
            vkeys.append((member, line.split(": ", 1)[1]))
    assert [m for m, _ in vkeys] == ["cairn-auditor"], listed.output
    vkey = vkeys[0][1]
    name, key_hash, key_b64 = vkey.split("+", 2)
    raw = base64.b64decode(key_b64, validate=True)
    assert name == DEFAULT_ORIGIN
    assert raw[0] == 0x01
    assert len(raw) == 33
    assert hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4].hex() == key_hash

    rotated = _run(["rotate", "--agency", "kelder-police"], env)
    assert rotated.exit_code == 0, rotated.output
    new_kid = rotated.output.split("new sig key ")[1].split()[0]
    assert "serial 10" in rotated.output
    assert (state / "keys" / "agencies" / "kelder-police" / "private" / "kelder-police").is_dir()
    assert new_kid in {p.stem for p in (state / "keys/agencies/kelder-police").rglob("*.key")}

    service = _run(["rotate", "--agency", "cairn-broker"], env)
    assert service.exit_code == 0, service.output
    assert "serial 11" in service.output

    revoked = _run(["revoke", "--agency", "kelder-police", "--kid", new_kid], env)
    assert revoked.exit_code == 0, revoked.output
    assert "serial 12" in revoked.output
    assert "revoked" in _run(["list"], env).output

    refreshed = _run(["refresh"], env)
    assert "serial 13" in refreshed.output


def test_init_twice_is_refused_cleanly(env: dict[str, str]) -> None:
    """A second init exits 1 with one line saying the federation is never overwritten."""
    assert _run(["init"], env).exit_code == 0
    again = _run(["init"], env)
    assert again.exit_code == 1
    assert "never overwritten" in again.output
    assert "Traceback" not in again.output


def test_errors_for_unknown_members_and_missing_stores(env: dict[str, str]) -> None:
    """Listing before init, or rotating an unknown agency, is one clear line, not a traceback."""
    before = _run(["list"], env)
    assert before.exit_code == 1
    assert "cairn keys init" in before.output
    assert _run(["init"], env).exit_code == 0
    unknown = _run(["rotate", "--agency", "nobody"], env)
    assert unknown.exit_code == 1
    assert "'nobody' is not a member" in unknown.output


def _machine(root: Path, admin: Path, stores: tuple[str, ...] = ()) -> dict[str, str]:
    """A machine of its own: the published files from the administrator, and ``stores``'
    passphrase files made by its own operator."""
    (root / "keys").mkdir(parents=True, exist_ok=True)
    shutil.copytree(admin / "keys" / "public", root / "keys" / "public", dirs_exist_ok=True)
    for store in stores:
        secret = root / "passphrases" / store
        secret.parent.mkdir(parents=True, exist_ok=True)
        secret.write_text(f"{store} passphrase of its own operator, long enough\n")
    return _env(root)


def test_enrolment_between_machines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The partnership procedure: the administrator creates the federation; the police, on its
    own machine, makes its keys and a request; the administrator enrols it from the request and
    sends back a certificate; the police installs it. Refused requests change nothing."""
    monkeypatch.chdir(tmp_path)
    admin_dir = tmp_path / "admin"
    admin = _env(admin_dir)
    made = _run(["init"], admin, federation)
    assert made.exit_code == 0, made.output
    assert "registry serial 1" in made.output

    police = _machine(tmp_path / "police", admin_dir, ("agencies/kelder-police",))
    request = tmp_path / "police.request.jws"
    asked = _run(["init", "--agency", "kelder-police", "--out", str(request)], police, agency)
    assert asked.exit_code == 0, asked.output
    assert not (admin_dir / "keys" / "agencies").exists()  # no agency key on the admin's machine

    cert = tmp_path / "police.crt"
    enrolled = _run(["enrol", str(request), "--out", str(cert)], admin, federation)
    assert enrolled.exit_code == 0, enrolled.output
    assert "registry serial 2" in enrolled.output
    installed = _run(["install", str(cert), "--agency", "kelder-police"], police, agency)
    assert installed.exit_code == 0, installed.output

    # Refusals on the administrator's machine: one line each, nothing changed or written.
    intruder = _machine(
        tmp_path / "intruder", admin_dir, ("agencies/kelder-refuge", "agencies/kelder-nhs")
    )
    unlisted = tmp_path / "refuge.jws"
    args = ["init", "--agency", "kelder-refuge", "--role", "idva", "--out", str(unlisted)]
    assert _run(args, intruder, agency).exit_code == 0
    wrong_role = tmp_path / "nhs.jws"
    args = ["init", "--agency", "kelder-nhs", "--role", "police", "--out", str(wrong_role)]
    assert _run(args, intruder, agency).exit_code == 0
    tampered = tmp_path / "tampered.jws"
    head, body, signature = request.read_bytes().split(b".")
    tampered.write_bytes(b".".join((head, body[:-4] + b"AAAA", signature)))
    before = snapshot(admin_dir)
    for bad, says in (
        (unlisted, "'kelder-refuge' is not an agency of"),
        (wrong_role, "kelder-nhs may not claim the role 'police'"),
        (tampered, "request"),
        (request, "enrolled already"),
    ):
        out = tmp_path / "refused.crt"
        result = _run(["enrol", str(bad), "--out", str(out)], admin, federation)
        assert result.exit_code == 1, result.output
        assert says in result.output
        assert "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1
        assert not out.exists()
    assert snapshot(admin_dir) == before

    # A rotation: the police asks, signed by its current key; the administrator applies it.
    shutil.copy(admin_dir / "keys/public/registry.jws", tmp_path / "police/keys/public/")
    rotation = tmp_path / "rotation.jws"
    asked = _run(["rotate", "--agency", "kelder-police", "--out", str(rotation)], police, agency)
    assert asked.exit_code == 0, asked.output
    applied = _run(["rotate", str(rotation)], admin, federation)
    assert applied.exit_code == 0, applied.output
    assert "registry serial 3" in applied.output
    before = snapshot(admin_dir)
    again = _run(["rotate", str(rotation)], admin, federation)
    assert again.exit_code == 1
    assert "not signed by its current registered signing key" in again.output
    assert snapshot(admin_dir) == before


def test_an_agency_brings_a_certificate_of_its_own_ca(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """agencies.yaml trusts the police's own CA for the police: its certificate of that CA is
    accepted at enrolment (and installed with --ca); the same request is refused while
    agencies.yaml does not list the CA."""
    monkeypatch.chdir(tmp_path)
    fed_dir = tmp_path / "federation"
    shutil.copytree(FEDERATION_DIR, fed_dir)
    own_ca = issue_ca("Kelder Constabulary PKI", now=datetime.now(UTC), validity=timedelta(days=30))
    (fed_dir / "kelder-police-ca.pem").write_bytes(own_ca.certificate_pem())
    admin_dir = tmp_path / "admin"
    admin = {**_env(admin_dir), "CAIRN_FEDERATION_DIR": str(fed_dir)}
    assert _run(["init"], admin, federation).exit_code == 0
    police = _machine(tmp_path / "police", admin_dir, ("agencies/kelder-police",))
    assert _run(["init", "--agency", "kelder-police"], police, agency).exit_code == 0

    store = tmp_path / "police" / "keys" / "agencies" / "kelder-police"
    csr = x509.load_pem_x509_csr((store / "enrolment" / "kelder-police.csr").read_bytes())
    public = csr.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    cert = issue_client_certificate_for(
        own_ca,
        public,
        "kelder-police",
        "police",
        "Kelder Constabulary",
        now=datetime.now(UTC),
        validity=timedelta(days=30),
    )
    (tmp_path / "own.crt").write_bytes(cert.public_bytes(Encoding.PEM))
    request = tmp_path / "request.jws"
    made = _run(
        ["request", "--agency", "kelder-police", "--certificate", "own.crt", "--out", str(request)],
        police,
        agency,
    )
    assert made.exit_code == 0, made.output

    before = snapshot(admin_dir)
    untrusted = _run(["enrol", str(request), "--out", "police.crt"], admin, federation)
    assert untrusted.exit_code == 1
    assert "lists no CA trusted for it" in untrusted.output
    assert snapshot(admin_dir) == before

    listing = (fed_dir / "agencies.yaml").read_text()
    listing = listing.replace(
        "    role: police\n", "    role: police\n    trusted_ca: kelder-police-ca.pem\n", 1
    )
    (fed_dir / "agencies.yaml").write_text(listing)
    trusted = _run(["enrol", str(request), "--out", "police.crt"], admin, federation)
    assert trusted.exit_code == 0, trusted.output
    assert "its own CA (trusted)" in trusted.output
    assert (admin_dir / "keys" / "public" / "tls" / "agency-cas" / "kelder-police.crt").is_file()
    (tmp_path / "own-ca.pem").write_bytes(own_ca.certificate_pem())
    args = ["install", "police.crt", "--agency", "kelder-police", "--ca", "own-ca.pem"]
    installed = _run(args, police, agency)
    assert installed.exit_code == 0, installed.output
    without_ca = _run(["install", "police.crt", "--agency", "kelder-police"], police, agency)
    assert without_ca.exit_code == 1
    assert "not issued by the federation CA" in without_ca.output


def test_refresh_renews_certificates_in_every_store(env: dict[str, str], tmp_path: Path) -> None:
    """With every certificate inside the warning window, refresh re-issues each in its own
    store for the same key (the agency's too, without its passphrase), then re-signs."""
    assert _run(["init"], env).exit_code == 0
    keys_dir = tmp_path / "state" / "keys"
    police = keys_dir / "agencies" / "kelder-police" / "tls" / "clients" / "kelder-police.crt"
    before = x509.load_pem_x509_certificate(police.read_bytes())
    (tmp_path / "state" / "passphrases" / "agencies" / "kelder-police").unlink()
    renewed = _run(["refresh"], {**env, "CAIRN_CREDENTIAL_WARN_DAYS": "400"})
    assert renewed.exit_code == 0, renewed.output
    assert "renewed tls_server cairn-broker" in renewed.output
    assert "kelder-police" in renewed.output
    assert "registry serial 10" in renewed.output
    after = x509.load_pem_x509_certificate(police.read_bytes())
    assert after.serial_number != before.serial_number
    assert after.public_key() == before.public_key()
    ca = x509.load_pem_x509_certificate((keys_dir / "public" / "tls" / "ca.crt").read_bytes())
    after.verify_directly_issued_by(ca)


def test_an_oversized_request_is_refused_unread(env: dict[str, str], tmp_path: Path) -> None:
    assert _run(["init"], {**env}, federation).exit_code == 0
    huge = tmp_path / "huge.jws"
    huge.write_bytes(b"A" * 70_000)
    result = _run(["enrol", str(huge)], env, federation)
    assert result.exit_code == 1
    assert "larger than 65536 bytes" in result.output


def test_revocation_by_request_and_by_the_administrator(env: dict[str, str]) -> None:
    assert _run(["init"], env).exit_code == 0
    listed = _run(["list"], env).output
    police = listed.split("kelder-police (police)\n")[1].split("\n")
    enc_kid = next(line.split()[1] for line in police if line.strip().startswith("enc"))
    nhs = listed.split("kelder-nhs (nhs_safeguarding)\n")[1].split("\n")
    nhs_kid = next(line.split()[1] for line in nhs if line.strip().startswith("sig"))

    asked = _run(
        ["revoke", "--agency", "kelder-police", "--kid", enc_kid, "--out", "revoke.jws"],
        env,
        agency,
    )
    assert asked.exit_code == 0, asked.output
    applied = _run(["revoke", "--request", "revoke.jws"], env, federation)
    assert applied.exit_code == 0, applied.output
    assert "registry serial 10" in applied.output
    again = _run(["revoke", "--request", "revoke.jws"], env, federation)
    assert again.exit_code == 1
    assert "already revoked" in again.output

    own = _run(["revoke", "--agency", "kelder-nhs", "--kid", nhs_kid], env, federation)
    assert own.exit_code == 0, own.output
    assert "serial 11" in own.output
    both = _run(["revoke", "--request", "revoke.jws", "--agency", "x"], env, federation)
    assert both.exit_code == 2
    assert "either --request FILE, or --agency and --kid" in both.output
    listed = _run(["list"], env).output
    assert listed.count("revoked") == 2


def test_rotation_with_a_new_tls_key_through_the_commands(
    env: dict[str, str], tmp_path: Path
) -> None:
    assert _run(["init"], env).exit_code == 0
    cert = tmp_path / "state/keys/agencies/kelder-police/tls/clients/kelder-police.crt"
    before = x509.load_pem_x509_certificate(cert.read_bytes())
    args = ["rotate", "--agency", "kelder-police", "--tls", "--out", "rotation.jws"]
    assert _run(args, env, agency).exit_code == 0
    applied = _run(["rotate", "rotation.jws", "--out", "new.crt"], env, federation)
    assert applied.exit_code == 0, applied.output
    assert "certificate for its new TLS key: new.crt" in applied.output
    installed = _run(["install", "new.crt", "--agency", "kelder-police"], env, agency)
    assert installed.exit_code == 0, installed.output
    after = x509.load_pem_x509_certificate(cert.read_bytes())
    assert after.public_key() != before.public_key()
    (tmp_path / "junk.jws").write_bytes(b"not a request")
    junk = _run(["rotate", "junk.jws"], env, federation)
    assert junk.exit_code == 1
    assert "not a signed rotation request" in junk.output
    assert "Traceback" not in junk.output
