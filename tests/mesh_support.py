"""NHS England's ``mesh-sandbox`` (a local MESH server) run for the tests, unchanged.

``LocalMesh`` is ``adapters.nhs.mesh.sandbox.MeshSandbox`` (the one ``cairn demo`` runs: full
MESH authentication, the file store on a throwaway folder whose sub-folders are the mailboxes)
with a third mailbox, ``OTHER``; it fails, never skips, if the sandbox cannot start; ``stop``
ends it and deletes the folder.

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
import os
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from adapters.nhs.mesh import sandbox
from adapters.nhs.mesh.sandbox import (
    BRIDGE,
    HEADER_ID,
    PASSWORD,
    START_TIMEOUT_S,
    TRUST_SYSTEM,
    MeshSandbox,
)
from tests.samples import REPO, SAMPLES

__all__ = [
    "BRIDGE",
    "HEADER_ID",
    "MAILBOXES",
    "OTHER",
    "PASSWORD",
    "START_TIMEOUT_S",
    "TRUST_SYSTEM",
    "LocalMesh",
    "make_tls",
    "mesh_folder",
    "referral_message",
    "running_mesh",
]

OTHER = "X26OTHER01"  # a mailbox of somebody else
MAILBOXES = (TRUST_SYSTEM, BRIDGE, OTHER)


@dataclass
class LocalMesh(MeshSandbox):
    """One running mesh-sandbox with the tests' three mailboxes, over mutual TLS if ``tls``."""

    mailboxes: tuple[str, ...] = MAILBOXES
    tls: bool = False  # serve https with a client certificate required (mutual TLS, as MESH)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def tls_dir(self) -> Path:
        return self.folder / "tls"

    def _server_args(self) -> list[str]:
        if not self.tls:
            return []
        make_tls(self.tls_dir)
        return [
            *("--ssl-certfile", str(self.tls_dir / "server.pem")),
            *("--ssl-keyfile", str(self.tls_dir / "server.key")),
            *("--ssl-ca-certs", str(self.tls_dir / "ca.pem")),
            *("--ssl-cert-reqs", str(int(ssl.CERT_REQUIRED))),
        ]

    def _health_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        context = ssl.create_default_context(cafile=self.tls_dir / "ca.pem")
        context.load_cert_chain(self.tls_dir / "client.pem", self.tls_dir / "client.key")
        return context

    def _client_tls(self) -> dict[str, object]:
        if not self.tls:
            return {}
        cert = (str(self.tls_dir / "client.pem"), str(self.tls_dir / "client.key"))
        return {"cert": cert, "verify": str(self.tls_dir / "ca.pem")}

    def env(self, mailbox: str = BRIDGE, trust_mailbox: str = TRUST_SYSTEM) -> dict[str, str]:
        """The ``CAIRN_MESH_*`` settings of a bridge on ``mailbox``."""
        return {
            **super().env(mailbox, trust_mailbox),
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
    return sandbox.referral_message(SAMPLES / "nhs-referral-medium-risk.fhir.json")
