"""``cairn witness``: run a C2SP tlog-witness (https://c2sp.org/tlog-witness) over HTTPS.

``cairn witness keygen`` writes a witness key (Ed25519, PKCS#8 PEM, mode 0600, encrypted under
``CAIRN_WITNESS_PASSPHRASE`` from the environment when it is set) and prints its
cosignature/v1 verifier key (type 0x04); ``cairn witness vkey`` prints it again;
``cairn witness serve`` answers ``POST /add-checkpoint`` for the logs given by their checkpoint
verifier keys (``--log``, the vkey's name being the log's origin), with server TLS, through the
same bounded server as the broker and the auditor (``broker.web.server``: handshake, header,
keep-alive and body-rate timeouts and connection limits from the ``CAIRN_HTTP_*`` settings; the
body is limited to one submission, ``broker.audit.witness.MAX_BODY_BYTES``); with
``CAIRN_HEALTH_PORT`` set, also ``GET /livez`` and ``GET /readyz`` over plain HTTP
(``broker.web.health``).
"""

from __future__ import annotations

import asyncio
import os
import ssl
from pathlib import Path

import click
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    KeySerializationEncryption,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from broker.audit.checkpoint import NoteVerifier
from broker.audit.cosign import CosignerVerifier
from broker.audit.witness import Witness, witness_app
from broker.cli.common import settings_or_exit
from keys.errors import VerificationError
from schemas.errors import CairnError

__all__ = ["witness"]


PASSPHRASE_ENV = "CAIRN_WITNESS_PASSPHRASE"  # noqa: S105 (a variable name; never an argument)


def _passphrase() -> bytes | None:
    value = os.environ.get(PASSPHRASE_ENV)
    return value.encode("utf-8") if value else None


def _load_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = load_pem_private_key(path.read_bytes(), password=_passphrase())
    except (OSError, ValueError, TypeError) as exc:
        raise click.ClickException(f"cannot read the witness key {path}: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise click.ClickException(f"the witness key {path} is not an Ed25519 key")
    return key


@click.group()
def witness() -> None:
    """A C2SP tlog-witness: cosign checkpoints that extend the last one it saw."""


@witness.command()
@click.option("--key", "key_path", type=click.Path(path_type=Path), required=True)
@click.option("--name", required=True, help="The witness name, e.g. witness.example.org/w1.")
def keygen(key_path: Path, name: str) -> None:
    """Write a new witness key (0600) to --key and print its verifier key."""
    key = Ed25519PrivateKey.generate()
    try:
        verifier = CosignerVerifier(name, key.public_key())
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    passphrase = _passphrase()
    encryption: KeySerializationEncryption = (
        BestAvailableEncryption(passphrase) if passphrase else NoEncryption()
    )
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, encryption)
    try:
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise click.ClickException(f"cannot create {key_path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    click.echo(verifier.vkey())


@witness.command()
@click.option("--key", "key_path", type=click.Path(path_type=Path), required=True)
@click.option("--name", required=True)
def vkey(key_path: Path, name: str) -> None:
    """Print the cosignature/v1 verifier key of the witness key at --key."""
    try:
        click.echo(CosignerVerifier(name, _load_key(key_path).public_key()).vkey())
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


@witness.command()
@click.option(
    "--key",
    "key_path",
    type=click.Path(path_type=Path),
    required=True,
    help="The witness's Ed25519 key ('cairn witness keygen'; CAIRN_WITNESS_PASSPHRASE).",
)
@click.option("--name", required=True, help="The witness name its cosignatures carry.")
@click.option(
    "--state",
    "state_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Where the witness keeps the last checkpoint it cosigned per log, and fork evidence.",
)
@click.option(
    "--log",
    "logs",
    multiple=True,
    required=True,
    help="A log's checkpoint verifier key (name+hash+base64, 'cairn keys list'); repeatable.",
)
@click.option(
    "--tls-cert",
    type=click.Path(path_type=Path),
    required=True,
    help="PEM certificate chain served over HTTPS.",
)
@click.option(
    "--tls-key",
    type=click.Path(path_type=Path),
    required=True,
    help="Its PEM private key (may be encrypted under CAIRN_WITNESS_PASSPHRASE).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8443, show_default=True, help="HTTPS port.")
def serve(
    key_path: Path,
    name: str,
    state_dir: Path,
    logs: tuple[str, ...],
    tls_cert: Path,
    tls_key: Path,
    host: str,
    port: int,
) -> None:
    """Serve C2SP tlog-witness POST /add-checkpoint over HTTPS until interrupted: cosign each
    checkpoint of a --log that is consistent with the last one cosigned (cosignature/v1),
    answer 409 with the size held when the old size is stale, and refuse a fork (same size,
    another root; or a bad consistency proof), keeping its evidence under --state.

    With CAIRN_HEALTH_PORT set, also GET /livez and GET /readyz over plain HTTP there."""
    key = _load_key(key_path)
    trusted: dict[str, list[NoteVerifier]] = {}
    for text in logs:
        try:
            verifier = NoteVerifier.from_vkey(text)
        except VerificationError as exc:
            raise click.ClickException(f"--log is not a checkpoint verifier key: {exc}") from None
        trusted.setdefault(verifier.name, []).append(verifier)
    try:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # An encrypted TLS key is read under the same passphrase as the witness key.
        context.load_cert_chain(tls_cert, tls_key, password=_passphrase())
    except (OSError, ssl.SSLError) as exc:
        raise click.ClickException(f"cannot load the TLS certificate and key: {exc}") from None
    try:
        app = witness_app(Witness(state_dir, name, key, trusted))
    except (OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    from broker.logs import configure_logging
    from broker.web.app import serve as serve_app
    from broker.web.health import health_port

    settings = settings_or_exit().model_copy(update={"http_host": host, "http_port": port})
    configure_logging(settings.log_format, settings.log_level)

    async def ready() -> tuple[bool, dict[str, str]]:
        # The key is loaded; what can stop a cosignature now is a state folder it cannot write.
        writable = os.access(state_dir, os.W_OK)
        return writable, {"state": "writable" if writable else "unwritable"}

    async def run() -> None:
        async with health_port(settings, ready):  # CAIRN_HEALTH_PORT: /livez, /readyz
            await serve_app(app, settings, context)

    try:
        asyncio.run(run())
    except CairnError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror}") from None
