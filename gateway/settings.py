"""The gateway's own settings (``CAIRN_GATEWAY_*``), beside the Kafka, key and folder settings it
shares with every Cairn command (``broker.config.Settings``: ``CAIRN_KAFKA_*``, ``CAIRN_KEY_DIR``,
``CAIRN_STATE_DIR``...). README "Gateway" lists them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AnyHttpUrl, Field, SecretStr, StringConstraints, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from broker.config import read_secret_file

__all__ = ["ClientId", "GatewaySettings"]

ClientId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class GatewaySettings(BaseSettings):
    """Everything an agency's integrator sets for ``cairn gateway``."""

    model_config = SettingsConfigDict(
        env_prefix="CAIRN_GATEWAY_", extra="forbid", frozen=True, hide_input_in_errors=True
    )

    # The HTTPS API (mutual TLS)
    host: str = Field(default="127.0.0.1", description="Address the API listens on")
    port: int = Field(default=8446, ge=0, le=65535, description="Its port (0: any free one)")
    tls_cert_file: Path | None = Field(
        default=None, description="PEM certificate (chain) the API serves; required to serve"
    )
    tls_key_file: Path | None = Field(default=None, description="Its PEM private key")
    tls_key_password_file: Path | None = Field(
        default=None, description="A file holding the password of an encrypted tls_key_file"
    )
    client_ca_file: Path | None = Field(
        default=None,
        description="PEM CA(s) of the case systems' client certificates, besides the "
        "federation CA (which issues the agency's own)",
    )
    case_systems: dict[ClientId, Sha256] = Field(
        default_factory=dict,
        description="Case systems allowed besides certificates naming this agency: client id "
        "-> SHA-256 (hex, lower case) of its DER client certificate",
    )
    page_limit_max: int = Field(default=100, ge=1, le=500, description="Most items per page")

    # The store
    database_url: SecretStr | None = Field(
        default=None,
        description="postgresql://USER:PASSWORD@HOST:PORT/DB of the gateway's store; unset: "
        "SQLite at <state_dir>/gateway/<agency>.sqlite",
    )
    database_url_file: Path | None = Field(
        default=None, description="A file holding database_url (set one of the two, not both)"
    )
    sqlite_path: Path | None = Field(
        default=None, description="The SQLite file, if not the default"
    )

    # Webhooks (optional)
    webhook_url: AnyHttpUrl | None = Field(
        default=None, description="POST each new disclosure here (Standard Webhooks, HMAC)"
    )
    webhook_secret_file: Path | None = Field(
        default=None, description="The webhook signing secret (whsec_<base64> or raw text)"
    )
    webhook_ca_file: Path | None = Field(
        default=None, description="PEM CA to verify an https webhook_url (default: the system's)"
    )
    webhook_timeout_s: float = Field(default=10.0, gt=0, description="Seconds per attempt")
    webhook_retry_initial_s: float = Field(
        default=1.0, gt=0, description="Seconds before the first retry, doubling each time"
    )
    webhook_retry_max_s: float = Field(default=300.0, gt=0, description="Longest pause (s)")
    webhook_give_up_s: float = Field(
        default=86_400.0, gt=0, description="Seconds after the first attempt to stop retrying"
    )

    # Periodic work
    poll_every_s: float = Field(
        default=0.5, gt=0, description="Seconds between looks at due webhooks and receipts"
    )
    retention_every_s: float = Field(
        default=3600.0, gt=0, description="Seconds between retention sweeps"
    )

    @model_validator(mode="after")
    def _pairs(self) -> GatewaySettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError(
                "set CAIRN_GATEWAY_TLS_CERT_FILE and CAIRN_GATEWAY_TLS_KEY_FILE together"
            )
        if self.database_url is not None and self.database_url_file is not None:
            raise ValueError("set CAIRN_GATEWAY_DATABASE_URL or its _FILE, not both")
        if (self.webhook_url is None) != (self.webhook_secret_file is None):
            raise ValueError(
                "set CAIRN_GATEWAY_WEBHOOK_URL and CAIRN_GATEWAY_WEBHOOK_SECRET_FILE together"
            )
        if self.webhook_url is not None:
            loopback = self.webhook_url.host in ("127.0.0.1", "localhost", "::1", "[::1]")
            if self.webhook_url.scheme != "https" and not (
                self.webhook_url.scheme == "http" and loopback
            ):
                # The body is the disclosure itself: never in the clear across a network.
                raise ValueError(
                    "CAIRN_GATEWAY_WEBHOOK_URL must be https (http only on this machine's loopback)"
                )
        return self

    def database(self) -> str | None:
        """The PostgreSQL URL, if one is configured (from the setting or its file)."""
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        if self.database_url_file is not None:
            return read_secret_file("database_url_file", self.database_url_file)
        return None

    def tls_key_password(self) -> str | None:
        if self.tls_key_password_file is None:
            return None
        return read_secret_file("tls_key_password_file", self.tls_key_password_file)

    def webhook_secret(self) -> bytes | None:
        """The webhook secret's bytes: ``whsec_<base64>`` decoded (Standard Webhooks), else the
        file's text."""
        if self.webhook_secret_file is None:
            return None
        import base64
        import binascii

        text = read_secret_file("webhook_secret_file", self.webhook_secret_file)
        if text.startswith("whsec_"):
            try:
                return base64.b64decode(text.removeprefix("whsec_"), validate=True)
            except binascii.Error:
                raise ValueError(
                    "CAIRN_GATEWAY_WEBHOOK_SECRET_FILE: whsec_ but not base64"
                ) from None
        if len(text) < 24:
            raise ValueError("CAIRN_GATEWAY_WEBHOOK_SECRET_FILE: use at least 24 characters")
        return text.encode()
