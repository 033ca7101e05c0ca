"""The MESH bridge's pure parts (issue 16): its settings, the FHIR message it reads, its
responses, and the CapabilityStatement and MessageDefinitions it publishes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.messagedefinition import MessageDefinition
from pydantic import ValidationError

from adapters.nhs import bundle_to_referral
from adapters.nhs.mesh.referrals import (
    REFERRAL_DEFINITION,
    REFERRAL_EVENT,
    NotAMessage,
    read_referral,
    referral_id_of,
)
from adapters.nhs.mesh.settings import MeshSettings
from adapters.nhs.message import DISCLOSURE_EVENT, MESSAGE_EVENT_SYSTEM
from schemas.errors import SchemaError
from tests.mesh_support import referral_message

FHIR_DIR = Path(__file__).resolve().parents[3] / "adapters" / "nhs" / "fhir"


def test_capability_statement_and_message_definitions_validate_and_match_the_code() -> None:
    """The published definitions are valid FHIR and name the events the bridge uses."""
    capability = CapabilityStatement.model_validate_json(
        (FHIR_DIR / "CapabilityStatement-cairn-mesh-bridge.json").read_bytes()
    )
    definitions = {
        d.url: d
        for d in (
            MessageDefinition.model_validate_json(p.read_bytes())
            for p in sorted(FHIR_DIR.glob("MessageDefinition-*.json"))
        )
    }
    (messaging,) = capability.messaging or []
    supported = {(m.mode, m.definition) for m in messaging.supportedMessage or []}
    assert supported == {
        ("receiver", REFERRAL_DEFINITION),
        ("sender", REFERRAL_DEFINITION.replace(REFERRAL_EVENT, DISCLOSURE_EVENT)),
    }
    assert set(definitions) == {d for _, d in supported}
    for url, definition in definitions.items():
        assert definition.eventCoding is not None
        assert definition.eventCoding.system == MESSAGE_EVENT_SYSTEM
        assert url.endswith(f"/{definition.eventCoding.code}")


def body(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode()


def test_a_referral_message_maps_with_the_id_made_from_the_mesh_message_id() -> None:
    referral = read_referral(
        body(referral_message()), message_id="ABC123", mailbox="X26CAIRN01", agency="kelder-nhs"
    )
    assert referral.header.referral_id == referral_id_of("X26CAIRN01", "ABC123")
    assert referral.header.referral_id != referral_id_of("X26CAIRN01", "ABC124")
    assert referral.victim.nhs_number is not None


def test_a_message_header_anywhere_but_first_in_a_message_is_refused() -> None:
    message = referral_message()
    message["entry"].append(message["entry"].pop(0))
    with pytest.raises(NotAMessage) as caught:
        read_referral(body(message), message_id="A", mailbox="X26CAIRN01", agency="kelder-nhs")
    assert caught.value.problems[0].field == "Bundle.entry[0].resource.resourceType"
    message["type"] = "collection"
    message["entry"].insert(0, message["entry"].pop())
    with pytest.raises(SchemaError) as refused:
        bundle_to_referral(message)
    assert "Bundle.entry[0].resource.resourceType" in {p.field for p in refused.value.problems}


def test_another_event_is_refused_at_the_event_coding() -> None:
    message = referral_message()
    message["entry"][0]["resource"]["eventCoding"]["code"] = DISCLOSURE_EVENT
    with pytest.raises(NotAMessage) as caught:
        read_referral(body(message), message_id="A", mailbox="X26CAIRN01", agency="kelder-nhs")
    assert caught.value.problems[0].field == "Bundle.entry[0].resource.eventCoding"


def test_the_sample_message_is_valid_fhir() -> None:
    Bundle.model_validate(referral_message())


def secrets(tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "pw").write_text("password\n")
    (tmp_path / "key").write_text("shared secret\n")
    return {
        "mailbox": "X26CAIRN01",
        "password_file": tmp_path / "pw",
        "shared_secret_file": tmp_path / "key",
    }


def test_settings_read_secrets_from_files_and_refuse_plain_http_off_the_loopback(
    tmp_path: Path,
) -> None:
    assert not MeshSettings().configured
    settings = MeshSettings(url="https://mesh.example", **secrets(tmp_path))
    assert (settings.password(), settings.shared_secret()) == ("password", b"shared secret")
    assert MeshSettings(url="http://127.0.0.1:8700", **secrets(tmp_path)).configured
    with pytest.raises(ValidationError, match="must be https"):
        MeshSettings(url="http://mesh.example", **secrets(tmp_path))
    with pytest.raises(ValidationError, match="CAIRN_MESH_MAILBOX"):
        MeshSettings(url="https://mesh.example")
    with pytest.raises(ValidationError, match="together"):
        MeshSettings(
            url="https://mesh.example", client_cert_file=tmp_path / "c", **secrets(tmp_path)
        )
    (tmp_path / "pw").write_text("")
    with pytest.raises(ValueError, match="CAIRN_MESH_PASSWORD_FILE"):
        settings.password()
    text = repr(MeshSettings(url="https://mesh.example", **secrets(tmp_path)))
    assert "shared secret" not in text


def test_receipt_and_refusal_messages_are_valid_fhir() -> None:
    from adapters.nhs.mesh.referrals import refusal_message

    now = datetime(2026, 12, 2, tzinfo=UTC)
    reply = refusal_message(
        [("Bundle.type", "must be 'message'"), ("(submission)", "not accepted")],
        problem_type="urn:cairn:problem:x",
        title="refused",
        request_id="abc",
        source_mailbox="X26CAIRN01",
        destination_mailbox="X26KELDER1",
        now=now,
    )
    Bundle.model_validate(reply)
    issues = reply["entry"][1]["resource"]["issue"]
    assert [i.get("expression") for i in issues] == [["Bundle.type"], None]


async def test_mesh_clients_own_refusal_is_our_mesh_error_without_its_text(tmp_path: Path) -> None:
    """mesh-client raises its own MeshError when MESH refuses (a 403 on a send, say), with the
    server's words in it: the bridge sees one error class, naming only the call."""
    import mesh_client

    from adapters.nhs.mesh.client import MeshError, MeshMailbox

    mailbox = MeshMailbox(MeshSettings(url="https://mesh.example", **secrets(tmp_path)))

    def send_message() -> None:
        raise mesh_client.MeshError("403 server text with a name in it")

    try:
        with pytest.raises(MeshError, match=r"^MESH refused send_message$"):
            await mailbox._run(send_message)
    finally:
        mailbox.close()
