"""A disclosure to an NHS trust as a FHIR R4 message, carrying the broker's signature.

What the trust's gateway puts in the trust's MESH mailbox: a Bundle of type ``message`` whose
first entry is a ``MessageHeader`` (event ``safeguarding-disclosure``, from the sending agency
through Cairn to the trust, its focus the ``ServiceRequest``), then the resources
``disclosure_to_bundle`` maps (the same entries, the same name-based fullUrls), then a
``Provenance`` of them all whose ``signature`` is the broker's origin signature: the compact JWS
the broker signed over the disclosure (``cairn-disclosure+jws``, Ed25519), exactly as the gateway
received it inside the JWE. A trust that wants to check its data against the broker needs only
that JWS and the broker's public key from the signed federation registry, with any JOSE library
(``broker_signature`` takes it back out of a message).

Pure: no I/O. The message id, like every fullUrl, is a name-based UUID of the referral id, so a
message sent again for the same disclosure is the same message and the trust can drop the
repeat. Every message is validated with the ``fhir.resources`` models before it is returned.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime
from typing import Any, Final

from fhir.resources.R4B.bundle import Bundle
from pydantic import ValidationError

from adapters.nhs.codes import AGENCY_SYSTEM, CAIRN, URI_SYSTEM
from adapters.nhs.outbound import disclosure_to_bundle, full_url
from keys import BROKER_ID
from schemas.disclosure import Disclosure

__all__ = [
    "DISCLOSURE_EVENT",
    "MESSAGE_EVENT_SYSTEM",
    "SIGNATURE_FORMAT",
    "SOURCE_SIGNATURE",
    "broker_signature",
    "disclosure_message",
    "mesh_endpoint",
    "message_id",
]

MESSAGE_EVENT_SYSTEM: Final = f"{CAIRN}/CodeSystem/message-event"
DISCLOSURE_EVENT: Final = "safeguarding-disclosure"
DISCLOSURE_DEFINITION: Final = f"{CAIRN}/MessageDefinition/{DISCLOSURE_EVENT}"
#: ISO/ASTM E1762-95 "Source Signature": the signature of the entity the data came from.
SOURCE_SIGNATURE: Final = {
    "system": "urn:iso-astm:E1762-95:2013",
    "code": "1.2.840.10065.1.12.1.14",
}
SIGNATURE_FORMAT: Final = "application/jose"  # RFC 7515 compact serialisation
_PARTICIPANT: Final = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"


def mesh_endpoint(mailbox: str) -> str:
    """The MessageHeader endpoint URL of a MESH mailbox."""
    return f"{CAIRN}/Endpoint/mesh/{mailbox}"


def message_id(referral_id: uuid.UUID) -> uuid.UUID:
    """The message's id (``Bundle.identifier``): the same for every send of one disclosure."""
    return uuid.uuid5(referral_id, "Message")


def _agency(agency: str) -> dict[str, Any]:
    return {"type": "Organization", "identifier": {"system": AGENCY_SYSTEM, "value": agency}}


def disclosure_message(
    disclosure: Disclosure,
    *,
    signed: str | None,
    received_at: datetime,
    source_mailbox: str,
    destination_mailbox: str,
) -> dict[str, Any]:
    """The FHIR message (JSON-ready dict) of ``disclosure`` for the trust's MESH mailbox.

    ``signed``: the broker's compact JWS of the disclosure (None for one stored before the
    gateway kept it: the message then has no Provenance). ``received_at``: when the trust's
    gateway took it. The mailboxes: the bridge's (sender) and the trust system's (recipient).
    """
    collection = disclosure_to_bundle(disclosure)  # refuses a notification (never to a trust)
    rid = disclosure.referral_id
    request_url = full_url(rid, "ServiceRequest")
    entries: list[dict[str, Any]] = list(collection["entry"])
    header = {
        "resourceType": "MessageHeader",
        "eventCoding": {"system": MESSAGE_EVENT_SYSTEM, "code": DISCLOSURE_EVENT},
        "definition": DISCLOSURE_DEFINITION,
        "destination": [
            {
                "endpoint": mesh_endpoint(destination_mailbox),
                "receiver": _agency(disclosure.recipient_agency),
            }
        ],
        "sender": _agency(disclosure.sender_agency),
        "source": {"name": "Cairn", "endpoint": mesh_endpoint(source_mailbox)},
        "focus": [{"reference": request_url}],
    }
    message_entries = [{"fullUrl": full_url(rid, "MessageHeader"), "resource": header}, *entries]
    if signed is not None:
        provenance = {
            "resourceType": "Provenance",
            "target": [{"reference": e["fullUrl"]} for e in entries],
            "recorded": received_at.isoformat(),
            "agent": [
                {
                    "type": {"coding": [{"system": _PARTICIPANT, "code": "author"}]},
                    "who": _agency(disclosure.sender_agency),
                },
                {
                    "type": {"coding": [{"system": _PARTICIPANT, "code": "assembler"}]},
                    "who": _agency(BROKER_ID),
                },
            ],
            "entity": [
                {
                    "role": "source",
                    "what": {"identifier": {"system": URI_SYSTEM, "value": f"urn:uuid:{rid}"}},
                }
            ],
            "signature": [
                {
                    "type": [SOURCE_SIGNATURE],
                    "when": received_at.isoformat(),
                    "who": _agency(BROKER_ID),
                    "targetFormat": "application/json",
                    "sigFormat": SIGNATURE_FORMAT,
                    "data": base64.b64encode(signed.encode("ascii")).decode("ascii"),
                }
            ],
        }
        message_entries.append({"fullUrl": full_url(rid, "Provenance"), "resource": provenance})
    raw: dict[str, Any] = {
        "resourceType": "Bundle",
        "meta": collection["meta"],
        "identifier": {"system": URI_SYSTEM, "value": f"urn:uuid:{message_id(rid)}"},
        "type": "message",
        "timestamp": received_at.isoformat(),
        "entry": message_entries,
    }
    try:
        bundle = Bundle.model_validate(raw)
    except ValidationError as exc:  # a bug here, not bad input: the disclosure was verified
        raise RuntimeError(f"the FHIR message built for a disclosure is not valid: {exc}") from exc
    return bundle.model_dump(mode="json")


def broker_signature(message: dict[str, Any]) -> str:
    """The broker's compact JWS from a disclosure message's Provenance (for the trust to verify
    with the broker's key); ``ValueError`` if the message carries none."""
    for entry in message.get("entry", ()):
        resource = entry.get("resource", {})
        if resource.get("resourceType") != "Provenance":
            continue
        for signature in resource.get("signature", ()):
            if signature.get("sigFormat") == SIGNATURE_FORMAT and "data" in signature:
                try:
                    return base64.b64decode(signature["data"], validate=True).decode("ascii")
                except (binascii.Error, UnicodeDecodeError):
                    raise ValueError("the Provenance signature is not base64 of a JWS") from None
    raise ValueError("the message has no Provenance carrying the broker's signature")
