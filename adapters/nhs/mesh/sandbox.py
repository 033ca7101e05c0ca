"""NHS England's ``mesh-sandbox`` (a local MESH server, unchanged) run on this machine, and the
FHIR referral message a trust's system sends through it: for ``cairn demo`` and the tests.

``MeshSandbox`` starts ``uvicorn mesh_sandbox.api:app`` as a process of its own on 127.0.0.1 and
a free port, with full MESH authentication (``AUTH_MODE=full``: the HMAC token of mailbox,
password and a random shared secret, checked on every request) and the file store on a folder
whose sub-folders are the mailboxes (the sandbox gives such mailboxes the password
``password``). ``start`` waits (bounded) until ``/health`` answers and raises ``RuntimeError``
with the end of the sandbox's log if it does not; ``stop`` ends it and deletes the folder.
mesh-sandbox is a development dependency (``make venv`` installs it); nothing here imports it.

Mailboxes: ``TRUST_SYSTEM`` is the trust's integration engine (driven with NHS's
``mesh-client``), ``BRIDGE`` the trust's Cairn mailbox that ``cairn nhs mesh`` reads.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapters.nhs.mesh.referrals import REFERRAL_EVENT
from adapters.nhs.message import MESSAGE_EVENT_SYSTEM, mesh_endpoint

if TYPE_CHECKING:
    from mesh_client import MeshClient

__all__ = [
    "BRIDGE",
    "HEADER_ID",
    "PASSWORD",
    "START_TIMEOUT_S",
    "TRUST_SYSTEM",
    "MeshSandbox",
    "referral_message",
]

TRUST_SYSTEM = "X26KELDER1"  # the trust's own system (its integration engine)
BRIDGE = "X26CAIRN01"  # the trust's Cairn mailbox: the bridge reads it and sends from it
# What mesh-sandbox gives every mailbox it finds as a folder (a local sandbox, not a secret).
PASSWORD = "password"  # noqa: S105
START_TIMEOUT_S = 30.0  # seconds for the sandbox to answer /health
HEADER_ID = "0e1c7d64-8a8e-4a55-9d6e-8f7c2b1d3a40"  # the sample message's MessageHeader id


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class MeshSandbox:
    """One running mesh-sandbox and where its secrets are (plain HTTP on the loopback)."""

    folder: Path
    mailboxes: tuple[str, ...] = (TRUST_SYSTEM, BRIDGE)
    port: int = 0
    shared_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def password_file(self) -> Path:
        return self.folder / "secrets" / "mesh-password"

    @property
    def shared_secret_file(self) -> Path:
        return self.folder / "secrets" / "mesh-shared-secret"

    @property
    def log_file(self) -> Path:
        return self.folder / "sandbox.log"

    def _server_args(self) -> list[str]:
        """Extra uvicorn arguments (a subclass serving https adds its TLS files)."""
        return []

    def _health_context(self) -> ssl.SSLContext | None:
        return None

    def _client_tls(self) -> dict[str, object]:
        """Extra ``MeshClient`` arguments (a client certificate, a CA)."""
        return {}

    def start(self) -> None:
        store = self.folder / "mailboxes"
        for mailbox in self.mailboxes:
            (store / mailbox / "in").mkdir(parents=True, exist_ok=True)
        self.password_file.parent.mkdir(mode=0o700, exist_ok=True)
        for path, value in (
            (self.password_file, PASSWORD),
            (self.shared_secret_file, self.shared_secret),
        ):
            path.touch(mode=0o600)
            path.chmod(0o600)
            path.write_text(value + "\n")
        self.port = _free_port()
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
            *self._server_args(),
        ]
        with self.log_file.open("wb") as log:
            self.process = subprocess.Popen(  # noqa: S603  (fixed argv: uvicorn and the sandbox)
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
        try:
            with urllib.request.urlopen(  # noqa: S310  (our own sandbox's URL)
                f"{self.url}/health", timeout=1, context=self._health_context()
            ) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def client(self, mailbox: str = TRUST_SYSTEM) -> MeshClient:
        """NHS's mesh-client logged in to ``mailbox`` (the trust's system by default)."""
        from mesh_client import MeshClient

        return MeshClient(
            self.url,
            mailbox,
            PASSWORD,
            shared_key=self.shared_secret.encode(),
            max_retries=0,
            timeout=10,
            **self._client_tls(),  # type: ignore[arg-type]
        )

    def env(self, mailbox: str = BRIDGE, trust_mailbox: str = TRUST_SYSTEM) -> dict[str, str]:
        """The ``CAIRN_MESH_*`` settings of a bridge on ``mailbox``."""
        return {
            "CAIRN_MESH_URL": self.url,
            "CAIRN_MESH_MAILBOX": mailbox,
            "CAIRN_MESH_PASSWORD_FILE": str(self.password_file),
            "CAIRN_MESH_SHARED_SECRET_FILE": str(self.shared_secret_file),
            "CAIRN_MESH_TRUST_MAILBOX": trust_mailbox,
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


def referral_message(
    sample: Path, *, source: str = TRUST_SYSTEM, destination: str = BRIDGE
) -> dict[str, Any]:
    """A FHIR referral bundle (``sample``) as the trust's system sends it: a FHIR message, a
    MessageHeader first (the referral event, from ``source`` to ``destination``) whose focus is
    the ServiceRequest."""
    bundle: dict[str, Any] = json.loads(sample.read_text(encoding="utf-8"))
    request = next(e for e in bundle["entry"] if e["resource"]["resourceType"] == "ServiceRequest")
    bundle["type"] = "message"
    header = {
        "resourceType": "MessageHeader",
        "id": HEADER_ID,
        "eventCoding": {"system": MESSAGE_EVENT_SYSTEM, "code": REFERRAL_EVENT},
        "source": {"endpoint": mesh_endpoint(source)},
        "destination": [{"endpoint": mesh_endpoint(destination)}],
        "focus": [{"reference": request["fullUrl"]}],
    }
    bundle["entry"].insert(0, {"fullUrl": f"urn:uuid:{HEADER_ID}", "resource": header})
    return bundle
