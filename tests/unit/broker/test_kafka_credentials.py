"""Kafka credentials in the settings (issue 14): TLS files, SASL SCRAM, secrets from files.

A wrong setting is refused when the settings load, and the message names the variable.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest
from pydantic import ValidationError

from broker.config import Settings
from broker.kafka.transport import kafka_options
from schemas.errors import TransportError
from tests.conftest import FederationKeys


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from no CAIRN_* variables, whatever the shell running pytest set."""
    for name in [n for n in os.environ if n.startswith("CAIRN_")]:
        monkeypatch.delenv(name)


def refusal(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    """The message of the settings' refusal with ``env`` set."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as caught:
        Settings()
    return str(caught.value)


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "password"
    path.write_text("s3cret-passw0rd\n")
    return path


def test_an_unknown_security_protocol_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    message = refusal(monkeypatch, CAIRN_KAFKA_SECURITY_PROTOCOL="TLS")
    assert "CAIRN_KAFKA_SECURITY_PROTOCOL must be one of PLAINTEXT, SSL" in message
    assert "'TLS'" in message


@pytest.mark.parametrize("mechanism", ["PLAIN", "GSSAPI", "scram-sha-256", "SCRAM-SHA-1"])
def test_an_unknown_sasl_mechanism_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, secret: Path, mechanism: str
) -> None:
    message = refusal(
        monkeypatch,
        CAIRN_KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        CAIRN_KAFKA_SASL_MECHANISM=mechanism,
        CAIRN_KAFKA_SASL_USERNAME="cairn-broker",
        CAIRN_KAFKA_SASL_PASSWORD_FILE=str(secret),
    )
    assert "CAIRN_KAFKA_SASL_MECHANISM must be one of SCRAM-SHA-256, SCRAM-SHA-512" in message


@pytest.mark.parametrize(
    "variable",
    [
        "CAIRN_KAFKA_SSL_CA_FILE",
        "CAIRN_KAFKA_SSL_CERT_FILE",
        "CAIRN_KAFKA_SSL_KEY_FILE",
        "CAIRN_KAFKA_SSL_KEY_PASSWORD_FILE",
    ],
)
def test_a_missing_tls_file_is_refused_naming_its_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str
) -> None:
    present = tmp_path / "present.pem"
    present.write_text("x\n")
    env = {
        "CAIRN_KAFKA_SECURITY_PROTOCOL": "SSL",
        "CAIRN_KAFKA_SSL_CA_FILE": str(present),
        "CAIRN_KAFKA_SSL_CERT_FILE": str(present),
        "CAIRN_KAFKA_SSL_KEY_FILE": str(present),
        "CAIRN_KAFKA_SSL_KEY_PASSWORD_FILE": str(present),
    }
    env[variable] = str(tmp_path / "missing.pem")
    message = refusal(monkeypatch, **env)
    assert f"{variable}: cannot read {tmp_path / 'missing.pem'} (No such file" in message


def test_a_folder_given_as_a_file_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    message = refusal(
        monkeypatch, CAIRN_KAFKA_SECURITY_PROTOCOL="SSL", CAIRN_KAFKA_SSL_CA_FILE=str(tmp_path)
    )
    assert f"CAIRN_KAFKA_SSL_CA_FILE: {tmp_path} is a folder, not a file" in message


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"", "is empty"), (b"\n", "is empty"), (b"\xff\xfe", "is not UTF-8 text")],
)
def test_an_unusable_password_file_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, content: bytes, reason: str
) -> None:
    path = tmp_path / "password"
    path.write_bytes(content)
    message = refusal(
        monkeypatch,
        CAIRN_KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        CAIRN_KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
        CAIRN_KAFKA_SASL_USERNAME="cairn-broker",
        CAIRN_KAFKA_SASL_PASSWORD_FILE=str(path),
    )
    assert f"CAIRN_KAFKA_SASL_PASSWORD_FILE: {path} {reason}" in message


def test_sasl_needs_a_mechanism_a_user_and_exactly_one_password(
    monkeypatch: pytest.MonkeyPatch, secret: Path
) -> None:
    base = {"CAIRN_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}
    assert "set CAIRN_KAFKA_SASL_MECHANISM" in refusal(monkeypatch, **base)
    base["CAIRN_KAFKA_SASL_MECHANISM"] = "SCRAM-SHA-256"
    assert "set CAIRN_KAFKA_SASL_USERNAME" in refusal(monkeypatch, **base)
    base["CAIRN_KAFKA_SASL_USERNAME"] = "cairn-broker"
    assert "not both and not neither" in refusal(monkeypatch, **base)
    both = {
        **base,
        "CAIRN_KAFKA_SASL_PASSWORD": "x",
        "CAIRN_KAFKA_SASL_PASSWORD_FILE": str(secret),
    }
    assert "not both and not neither" in refusal(monkeypatch, **both)


def test_credentials_for_another_protocol_are_refused(
    monkeypatch: pytest.MonkeyPatch, secret: Path
) -> None:
    """A TLS file with PLAINTEXT, or SASL settings without SASL, is a mistake: nothing would
    use them, and the operator believes they are in force."""
    message = refusal(monkeypatch, CAIRN_KAFKA_SSL_CA_FILE=str(secret))
    assert (
        "CAIRN_KAFKA_SSL_CA_FILE is set but CAIRN_KAFKA_SECURITY_PROTOCOL is PLAINTEXT" in message
    )
    monkeypatch.delenv("CAIRN_KAFKA_SSL_CA_FILE")
    message = refusal(monkeypatch, CAIRN_KAFKA_SASL_MECHANISM="SCRAM-SHA-256")
    assert "CAIRN_KAFKA_SASL_MECHANISM is set but" in message


def test_a_certificate_needs_its_key(monkeypatch: pytest.MonkeyPatch, secret: Path) -> None:
    message = refusal(
        monkeypatch,
        CAIRN_KAFKA_SECURITY_PROTOCOL="SSL",
        CAIRN_KAFKA_SSL_CERT_FILE=str(secret),
    )
    assert "CAIRN_KAFKA_SSL_CERT_FILE and CAIRN_KAFKA_SSL_KEY_FILE go together" in message


def test_a_refusal_never_echoes_a_password(monkeypatch: pytest.MonkeyPatch) -> None:
    message = refusal(
        monkeypatch,
        CAIRN_KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        CAIRN_KAFKA_SASL_MECHANISM="SCRAM-SHA-256",
        CAIRN_KAFKA_SASL_PASSWORD="hunter2-hunter2",  # noqa: S106 - a test value
    )
    assert "hunter2" not in message


def test_scram_options_read_the_password_file(
    monkeypatch: pytest.MonkeyPatch, secret: Path
) -> None:
    for name, value in {
        "CAIRN_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "CAIRN_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "CAIRN_KAFKA_SASL_USERNAME": "kelder-police",
        "CAIRN_KAFKA_SASL_PASSWORD_FILE": str(secret),
    }.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    options = kafka_options(settings)
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "kelder-police"
    assert options["sasl_plain_password"] == "s3cret-passw0rd"  # the trailing newline dropped
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert settings.shown()["kafka_sasl_password_file"] == str(secret)  # a path, not a secret
    secret.unlink()  # gone since the settings loaded: a typed error naming the variable
    with pytest.raises(TransportError, match="CAIRN_KAFKA_SASL_PASSWORD_FILE"):
        kafka_options(settings)


def test_mutual_tls_options_load_the_agency_certificate(
    federation_keys: FederationKeys, tmp_path: Path
) -> None:
    """The client context verifies Kafka against the CA file (host names included) and
    presents the certificate, its encrypted key opened with the password from its file."""
    password = tmp_path / "key-password"
    password.write_bytes(federation_keys.passphrase + b"\n")
    tls = federation_keys.root / "tls"
    settings = Settings(
        kafka_security_protocol="SSL",
        kafka_ssl_ca_file=tls / "ca.crt",
        kafka_ssl_cert_file=tls / "clients" / "kelder-police.crt",
        kafka_ssl_key_file=tls / "clients" / "kelder-police.key",
        kafka_ssl_key_password_file=password,
    )
    context = kafka_options(settings)["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert len(context.get_ca_certs()) == 1
    password.write_text("the wrong password\n")
    with pytest.raises(TransportError, match="CAIRN_KAFKA_SSL_CERT_FILE / CAIRN_KAFKA_SSL_KEY"):
        kafka_options(settings)
