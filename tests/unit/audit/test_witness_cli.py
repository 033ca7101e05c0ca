"""``cairn witness``: keygen/vkey, one-line errors, and serve over real TLS in a subprocess."""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import socket
import ssl
import sys
import time
from pathlib import Path

import aiohttp
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)
from cryptography.x509.oid import NameOID

from broker.audit.checkpoint import Checkpoint, NoteVerifier, sign_checkpoint
from broker.audit.cosign import CosignerVerifier, add_cosignatures, verify_cosignatures
from broker.audit.merkle import Tree, leaf_hash
from broker.cli.main import cli

ORIGIN = "auditor.cairn.example/log"
NAME = "witness.example/w1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tls(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert_path.write_bytes(cert.public_bytes(Encoding.PEM))
    key_path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    return cert_path, key_path


def test_keygen_and_vkey(tmp_path: Path) -> None:
    runner = CliRunner()
    key = tmp_path / "w.pem"
    made = runner.invoke(cli, ["witness", "keygen", "--key", str(key), "--name", NAME])
    assert made.exit_code == 0, made.output
    assert key.stat().st_mode & 0o777 == 0o600
    verifier = CosignerVerifier.from_vkey(made.output.strip())
    shown = runner.invoke(cli, ["witness", "vkey", "--key", str(key), "--name", NAME])
    assert shown.output.strip() == verifier.vkey()
    again = runner.invoke(cli, ["witness", "keygen", "--key", str(key), "--name", NAME])
    assert again.exit_code != 0
    assert "Traceback" not in again.output
    bad = runner.invoke(cli, ["witness", "vkey", "--key", str(tmp_path / "none"), "--name", NAME])
    assert bad.exit_code != 0
    assert "cannot read the witness key" in bad.output


def test_keygen_encrypts_under_the_passphrase(tmp_path: Path) -> None:
    runner = CliRunner()
    key = tmp_path / "w.pem"
    env = {"CAIRN_WITNESS_PASSPHRASE": "correct horse"}
    made = runner.invoke(cli, ["witness", "keygen", "--key", str(key), "--name", NAME], env=env)
    assert made.exit_code == 0, made.output
    assert b"ENCRYPTED PRIVATE KEY" in key.read_bytes()
    shown = runner.invoke(cli, ["witness", "vkey", "--key", str(key), "--name", NAME], env=env)
    assert shown.output.strip() == made.output.strip()
    wrong = runner.invoke(
        cli,
        ["witness", "vkey", "--key", str(key), "--name", NAME],
        env={"CAIRN_WITNESS_PASSPHRASE": "wrong"},
    )
    assert wrong.exit_code != 0
    assert "cannot read the witness key" in wrong.output


async def test_serve_over_tls(tmp_path: Path) -> None:
    log_key = Ed25519PrivateKey.generate()
    log_vkey = NoteVerifier(ORIGIN, log_key.public_key()).vkey()
    key = tmp_path / "w.pem"
    made = CliRunner().invoke(cli, ["witness", "keygen", "--key", str(key), "--name", NAME])
    witness_vkey = CosignerVerifier.from_vkey(made.output.strip())
    cert, tls_key = _tls(tmp_path)
    port = _free_port()
    args = [
        *("witness", "serve", "--key", str(key), "--name", NAME),
        *("--state", str(tmp_path / "state"), "--log", log_vkey),
        *("--tls-cert", str(cert), "--tls-key", str(tls_key), "--port", str(port)),
    ]
    code = "import sys; from broker.cli.main import main; sys.argv[0] = 'cairn'; main()"
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, *args)
    context = ssl.create_default_context(cafile=str(cert))
    tree = Tree.of(leaf_hash(str(i).encode()) for i in range(4))
    note = sign_checkpoint(Checkpoint(ORIGIN, 4, tree.root()), ORIGIN, log_key)
    try:
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 20
            while True:
                try:
                    async with session.post(
                        f"https://127.0.0.1:{port}/add-checkpoint",
                        data=b"old 0\n\n" + note,
                        ssl=context,
                    ) as response:
                        assert response.status == 200, await response.text()
                        lines = await response.read()
                        break
                except aiohttp.ClientConnectorError:
                    assert proc.returncode is None, "cairn witness serve exited"
                    assert time.monotonic() < deadline, "the witness did not start"
                    await asyncio.sleep(0.2)
        found = verify_cosignatures(add_cosignatures(note, lines), [witness_vkey])
        assert [c.name for c in found] == [NAME]
        assert base64.b64encode(tree.root()).decode() in note.decode()
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), timeout=10)
