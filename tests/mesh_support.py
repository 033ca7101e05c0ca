"""NHS England's ``mesh-sandbox`` (a local MESH server) run for the tests, unchanged.

``LocalMesh`` starts ``uvicorn mesh_sandbox.api:app`` as a process of its own on 127.0.0.1 and a
free port, with full MESH authentication (``AUTH_MODE=full``: the HMAC token of mailbox,
password and a random shared secret, checked on every request) and the file store on a
throwaway folder whose sub-folders are the mailboxes (the sandbox gives such mailboxes the
password ``password``). It waits (bounded) until ``/health`` answers and fails, never skips,
if the sandbox cannot start; ``stop`` ends it and deletes the folder.

By default the sandbox speaks plain HTTP on the loopback. ``LocalMesh(folder, tls=True)`` (the
``mesh_tls`` fixture) serves https instead and requires a client certificate, as a real MESH
does: a throwaway CA, a server certificate for 127.0.0.1 and a client certificate, which
``env()`` passes as CAIRN_MESH_CLIENT_CERT_FILE/_KEY_FILE and CAIRN_MESH_CA_FILE.

Mailboxes: ``TRUST_SYSTEM`` is the trust's integration engine (the tests drive it with NHS's
``mesh-client``), ``BRIDGE`` the trust's Cairn mailbox the bridge reads, ``OTHER`` a third party.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from mesh_client import MeshClient

from adapters.nhs.mesh.referrals import REFERRAL_EVENT
from adapters.nhs.message import MESSAGE_EVENT_SYSTEM, mesh_endpoint
from tests.pg_support import free_port
from tests.samples import REPO, SAMPLES

TRUST_SYSTEM = "X26KELDER1"  # the trust's own system (its integration engine)
BRIDGE = "X26CAIRN01"  # the trust's Cairn mailbox: the bridge reads it and sends from it
OTHER = "X26OTHER01"  # a mailbox of somebody else
MAILBOXES = (TRUST_SYSTEM, BRIDGE, OTHER)
PASSWORD = "password"  # what mesh-sandbox gives every mailbox it finds as a folder
START_TIMEOUT_S = 30.0
HEADER_ID = "0e1c7d64-8a8e-4a55-9d6e-8f7c2b1d3a40"  # the sample message's MessageHeader id


@dataclass
class LocalMesh:
    """One running mesh-sandbox and where its secrets are."""

    folder: Path
    port: int = 0
    shared_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    process: subprocess.Popen[bytes] | None = None
    tls: bool = False  # serve https with a client certificate required (mutual TLS, as MESH)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def tls_dir(self) -> Path:
        return self.folder / "tls"

    @property
    def password_file(self) -> Path:
        return self.folder / "secrets" / "mesh-password"

    @property
    def shared_secret_file(self) -> Path:
        return self.folder / "secrets" / "mesh-shared-secret"

    @property
    def log_file(self) -> Path:
        return self.folder / "sandbox.log"

    def start(self) -> None:
        store = self.folder / "mailboxes"
        for mailbox in MAILBOXES:
            (store / mailbox / "in").mkdir(parents=True, exist_ok=True)
        self.password_file.parent.mkdir(mode=0o700, exist_ok=True)
        self.password_file.write_text(PASSWORD + "\n")
        self.shared_secret_file.write_text(self.shared_secret + "\n")
        self.password_file.chmod(0o600)
        self.shared_secret_file.chmod(0o600)
        self.port = free_port()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.folder),
            "ENV": "local",
            "AUTH_MODE": "full",
            "STORE_MODE": "file",
            "MAILBOXES_DATA_DIR": str(store),
            "SHARED_KEY": self.shared_secret,
        }
        argv = [
            *(sys.executable, "-m", "uvicorn", "mesh_sandbox.api:app"),
            *("--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"),
        ]
        if self.tls:
            make_tls(self.tls_dir)
            argv += [
                *("--ssl-certfile", str(self.tls_dir / "server.pem")),
                *("--ssl-keyfile", str(self.tls_dir / "server.key")),
                *("--ssl-ca-certs", str(self.tls_dir / "ca.pem")),
                *("--ssl-cert-reqs", str(int(ssl.CERT_REQUIRED))),
            ]
        with self.log_file.open("wb") as log:
            self.process = subprocess.Popen(
                argv, cwd=self.folder, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        for _ in range(int(START_TIMEOUT_S / 0.1) + 1):
            if self.process.poll() is not None:
                break
            if self._healthy():
                return
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.stop(keep_folder=True)
        raise RuntimeError(
            f"mesh-sandbox did not start on 127.0.0.1:{self.port} within {START_TIMEOUT_S:.0f} s "
            f"(is it installed? make venv installs it): {self.log_file.read_text()[-2000:]}"
        )

    def _healthy(self) -> bool:
        context = None
        if self.tls:
            context = ssl.create_default_context(cafile=self.tls_dir / "ca.pem")
            context.load_cert_chain(self.tls_dir / "client.pem", self.tls_dir / "client.key")
        try:
            with urllib.request.urlopen(  # noqa: S310
                f"{self.url}/health", timeout=1, context=context
            ) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def client(self, mailbox: str = TRUST_SYSTEM) -> MeshClient:
        """NHS's mesh-client logged in to ``mailbox`` (the trust's system by default)."""
        tls: dict[str, object] = {}
        if self.tls:
            cert = (str(self.tls_dir / "client.pem"), str(self.tls_dir / "client.key"))
            tls = {"cert": cert, "verify": str(self.tls_dir / "ca.pem")}
        return MeshClient(
            self.url,
            mailbox,
            PASSWORD,
            shared_key=self.shared_secret.encode(),
            max_retries=0,
            timeout=10,
            **tls,  # type: ignore[arg-type]
        )

    def env(self, mailbox: str = BRIDGE, trust_mailbox: str = TRUST_SYSTEM) -> dict[str, str]:
        """The ``CAIRN_MESH_*`` settings of a bridge on ``mailbox``."""
        return {
            "CAIRN_MESH_URL": self.url,
            "CAIRN_MESH_MAILBOX": mailbox,
            "CAIRN_MESH_PASSWORD_FILE": str(self.password_file),
            "CAIRN_MESH_SHARED_SECRET_FILE": str(self.shared_secret_file),
            "CAIRN_MESH_TRUST_MAILBOX": trust_mailbox,
            **(
                {
                    "CAIRN_MESH_CLIENT_CERT_FILE": str(self.tls_dir / "client.pem"),
                    "CAIRN_MESH_CLIENT_KEY_FILE": str(self.tls_dir / "client.key"),
                    "CAIRN_MESH_CA_FILE": str(self.tls_dir / "ca.pem"),
                }
                if self.tls
                else {}
            ),
        }

    def stop(self, *, keep_folder: bool = False) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None
        if not keep_folder:
            shutil.rmtree(self.folder, ignore_errors=True)


def make_tls(folder: Path) -> None:
    """A throwaway CA, the sandbox's server certificate (127.0.0.1) and a MESH client's."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    now = datetime.now(UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def save(stem: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        (folder / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (folder / f"{stem}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        (folder / f"{stem}.key").chmod(0o600)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("mesh-sandbox test CA"))
        .issuer_name(name("mesh-sandbox test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    save("ca", ca_key, ca)
    for stem, usage, san in (
        (
            "server",
            ExtendedKeyUsageOID.SERVER_AUTH,
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
        ),
        ("client", ExtendedKeyUsageOID.CLIENT_AUTH, [x509.DNSName("x26cairn01.mesh.test")]),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(f"mesh-sandbox {stem}"))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        save(stem, key, cert)
    (folder / "ca.key").unlink()


def mesh_folder() -> Path:
    """A fresh folder for one sandbox, under ``$CAIRN_STATE_DIR`` or the repo's ``.cairn``."""
    parent = Path(os.environ.get("CAIRN_STATE_DIR") or REPO / ".cairn")
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="mesh-sandbox-", dir=parent))


@contextlib.contextmanager
def running_mesh() -> Iterator[LocalMesh]:
    mesh = LocalMesh(mesh_folder())
    mesh.start()
    try:
        yield mesh
    finally:
        mesh.stop()


def referral_message() -> dict[str, Any]:
    """The medium-risk FHIR sample as the trust's system sends it: a FHIR message."""
    bundle: dict[str, Any] = json.loads(
        (SAMPLES / "nhs-referral-medium-risk.fhir.json").read_text(encoding="utf-8")
    )
    request = next(e for e in bundle["entry"] if e["resource"]["resourceType"] == "ServiceRequest")
    bundle["type"] = "message"
    header = {
        "resourceType": "MessageHeader",
        "id": HEADER_ID,
        "eventCoding": {"system": MESSAGE_EVENT_SYSTEM, "code": REFERRAL_EVENT},
        "source": {"endpoint": mesh_endpoint(TRUST_SYSTEM)},
        "destination": [{"endpoint": mesh_endpoint(BRIDGE)}],
        "focus": [{"reference": request["fullUrl"]}],
    }
    bundle["entry"].insert(0, {"fullUrl": f"urn:uuid:{HEADER_ID}", "resource": header})
    return bundle
