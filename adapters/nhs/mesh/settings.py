"""The MESH bridge's settings (``CAIRN_MESH_*``): the trust's MESH endpoint and mailbox, the
agreed workflow ids and the poll interval. Secrets (the mailbox password, the shared secret, the
client key) are read from files when used, never held in the environment or logged.

README "MESH" lists them; adapters/nhs/README.md explains the workflows."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, StringConstraints, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from broker.config import read_secret_file

__all__ = [
    "DISCLOSURE_WORKFLOW",
    "RECEIPT_WORKFLOW",
    "REFERRAL_WORKFLOW",
    "MailboxId",
    "MeshSettings",
    "WorkflowId",
]

# MESH mailbox ids are upper-case letters and digits (ODS code and a suffix, e.g. X26ABC1).
MailboxId = Annotated[str, StringConstraints(pattern=r"^[A-Z0-9]{3,20}$")]
# Workflow ids are agreed per message type; MESH's convention names the reply <id>_ACK.
WorkflowId = Annotated[str, StringConstraints(pattern=r"^[A-Z0-9_]{1,64}$")]

REFERRAL_WORKFLOW = "CAIRN_SAFEGUARDING_REFERRAL"  # trust -> Cairn: a FHIR referral message
RECEIPT_WORKFLOW = "CAIRN_SAFEGUARDING_REFERRAL_ACK"  # Cairn -> trust: its receipt or refusal
DISCLOSURE_WORKFLOW = "CAIRN_SAFEGUARDING_DISCLOSURE"  # Cairn -> trust: a disclosure to it


class MeshSettings(BaseSettings):
    """Everything a trust's integrator sets for the MESH bridge. Unset ``CAIRN_MESH_URL``: no
    bridge (``configured`` says which)."""

    model_config = SettingsConfigDict(
        env_prefix="CAIRN_MESH_", extra="forbid", frozen=True, hide_input_in_errors=True
    )

    url: str | None = Field(
        default=None,
        description="The MESH API's base URL (https; http only on this machine's loopback)",
    )
    mailbox: MailboxId | None = Field(
        default=None, description="The bridge's own MESH mailbox id (the trust's Cairn mailbox)"
    )
    password_file: Path | None = Field(default=None, description="File holding its password")
    shared_secret_file: Path | None = Field(
        default=None, description="File holding the MESH environment's shared secret (HMAC key)"
    )
    client_cert_file: Path | None = Field(
        default=None, description="PEM client certificate for MESH's mutual TLS"
    )
    client_key_file: Path | None = Field(default=None, description="Its PEM private key")
    ca_file: Path | None = Field(
        default=None, description="PEM CA bundle that verifies the MESH server (default: system)"
    )
    trust_mailbox: MailboxId | None = Field(
        default=None,
        description="The trust system's mailbox that disclosures to the trust are delivered to",
    )
    referral_workflow: WorkflowId = Field(
        default=REFERRAL_WORKFLOW, description="Workflow id of referrals the trust sends"
    )
    receipt_workflow: WorkflowId = Field(
        default=RECEIPT_WORKFLOW, description="Workflow id of the receipts and refusals sent back"
    )
    disclosure_workflow: WorkflowId = Field(
        default=DISCLOSURE_WORKFLOW, description="Workflow id of disclosures sent to the trust"
    )
    poll_every_s: float = Field(default=30.0, gt=0, description="Seconds between mailbox polls")
    timeout_s: float = Field(default=30.0, gt=0, description="Seconds per MESH HTTP request")
    retry_initial_s: float = Field(
        default=5.0,
        gt=0,
        description="First pause before retrying a message the broker did not take",
    )
    retry_max_s: float = Field(default=300.0, gt=0, description="Longest pause between retries")
    give_up_s: float = Field(
        default=86400.0,
        gt=0,
        description="A message not taken after this long: error report, acknowledged",
    )
    batch_max: int = Field(default=100, ge=1, le=500, description="Most messages read per poll")

    @model_validator(mode="after")
    def _complete(self) -> MeshSettings:
        if self.url is None:
            return self
        if self.mailbox is None or self.password_file is None or self.shared_secret_file is None:
            raise ValueError(
                "CAIRN_MESH_URL needs CAIRN_MESH_MAILBOX, CAIRN_MESH_PASSWORD_FILE and "
                "CAIRN_MESH_SHARED_SECRET_FILE"
            )
        if (self.client_cert_file is None) != (self.client_key_file is None):
            raise ValueError(
                "set CAIRN_MESH_CLIENT_CERT_FILE and CAIRN_MESH_CLIENT_KEY_FILE together"
            )
        lowered = self.url.lower()
        loopback = lowered.startswith(("http://127.0.0.1", "http://localhost", "http://[::1]"))
        if not lowered.startswith("https://") and not loopback:
            raise ValueError("CAIRN_MESH_URL must be https (http only on this machine's loopback)")
        return self

    @property
    def configured(self) -> bool:
        return self.url is not None

    def password(self) -> str:
        if self.password_file is None:
            raise ValueError("CAIRN_MESH_PASSWORD_FILE is not set")
        return read_secret_file("mesh_password_file", self.password_file)

    def shared_secret(self) -> bytes:
        if self.shared_secret_file is None:
            raise ValueError("CAIRN_MESH_SHARED_SECRET_FILE is not set")
        return read_secret_file("mesh_shared_secret_file", self.shared_secret_file).encode()
