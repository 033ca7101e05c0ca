"""Evidence packs, ``cairn-evidence/1``: what was disclosed to whom, provably, to a third party.

A pack is one JSON object (RFC 8259), every value a string, so it can be read and checked with
standard tools alone (docs/evidence.md):

``format``
    ``"cairn-evidence/1"``.
``origin``
    The audit log's checkpoint origin (C2SP signed-note/tlog-checkpoint first line).
``registry``
    The federation registry as the compact JWS (RFC 7515 §7.1) the federation root signed; it
    lists the auditor's checkpoint keys and the broker's signing keys.
``jwe``
    The disclosure as delivered: the compact JWE (RFC 7516 §7.1) bytes of the record on the
    recipient's ``cairn.deliver`` topic, as ASCII.
``jws`` (optional)
    The broker-signed disclosure the recipient decrypted from it (compact JWS).
``ack`` (optional)
    The recipient's signed acknowledgement receipt (compact JWS, ``typ`` ``cairn-ack+jws``) as
    its gateway sent it to the broker, kept by the gateway (``gateway.store.Delivered``).
``disclosed``, ``acknowledged`` (optional)
    Each ``{"event": <the event's RFC 8785 canonical bytes as UTF-8 text>,
    "proof": <its c2sp.org/tlog-proof@v1 text>}``. The proof's checkpoint is the cosigned one
    (C2SP tlog-cosignature lines after the log's signature) when the log has it.

``verify(pack, root_public_key)`` needs nothing but the pack and the federation root's public
key. What it proves, when it passes: the root signed a registry naming the auditor's keys; an
auditor key signed a checkpoint of the log; the ``disclosed`` event is the entry at its index
under that checkpoint (RFC 9162 §2.1.3.2); the event's ``disclosure_digest`` is the SHA-256 of
the JWE in the pack, so that ciphertext, and no other, is the one the event records as sent to
the recipient. With ``jws``: a broker key the registry trusted when the event happened signed
a disclosure of the same referral to the same recipient (that it is the JWE's plaintext is
something only the recipient's private key can show). With ``ack``: the recipient, with a key
the registry lists for it, signed an acknowledgement of the same referral. With
``acknowledged``: the recipient's acknowledgement of the same referral is in the log too (of
the same status as ``ack``, when both are there). Cosignatures on the checkpoint by witnesses
the registry lists (role ``witness``, cosignature/v1) are verified and counted; a checkpoint no
listed witness cosigned still verifies, and the report says it is not cosigned.

Pure: no files, network or clock (the caller reads the log and the JWE).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from broker.audit.checkpoint import Checkpoint, NoteVerifier, verify_checkpoint
from broker.audit.cosign import Cosignature, CosignerVerifier, verify_cosignatures
from broker.audit.merkle import InvalidProof, leaf_hash, verify_inclusion
from broker.audit.proofs import TlogProof, parse_tlog_proof, tlog_proof
from keys.envelope import ACK_TYP, DISCLOSURE_TYP
from keys.errors import Reason
from keys.jose import MAX_TOKEN_BYTES, read_header, verify_compact
from keys.registry import (
    AUDITOR_ID,
    BROKER_ID,
    KeyStatus,
    KeyUse,
    Registry,
    ServiceRole,
    verify_registry_signature,
)
from schemas.audit import AuditEvent, AuditEventType, disclosure_digest_of
from schemas.errors import SchemaError, VerificationError
from schemas.receipt import Acknowledgement

__all__ = [
    "EVIDENCE_FORMAT",
    "MAX_PACK_BYTES",
    "WITNESS_ROLE",
    "EvidenceError",
    "EvidenceReport",
    "Tampered",
    "build_pack",
    "logged",
    "registry_witnesses",
    "verify_pack",
]

EVIDENCE_FORMAT: Final = "cairn-evidence/1"
MAX_PACK_BYTES: Final = 4 * 1024 * 1024
#: The registry role of a witness whose cosignatures (cosignature/v1) a pack's checkpoint may
#: carry.
WITNESS_ROLE: Final = ServiceRole.WITNESS.value


class Tampered(StrEnum):
    """Which part of a pack failed: what was altered, or is not what it claims."""

    MALFORMED = "malformed"  # not a cairn-evidence/1 document
    REGISTRY = "registry"  # the registry is not signed by the federation root (or names no keys)
    CHECKPOINT = "checkpoint"  # the checkpoint is not signed by an auditor key, or wrong origin
    PROOF = "proof"  # the tlog-proof is malformed, or its path does not lead to the checkpoint
    EVENT = "event"  # an event is not a canonical audit event of the type and referral claimed
    DISCLOSURE = "disclosure"  # the JWE is not the one the disclosed event records
    JWS = "jws"  # the JWS is not a disclosure of that referral to that recipient the broker signed
    ACKNOWLEDGEMENT = "acknowledgement"  # the ack is not the recipient's signed ack of it
    COSIGNATURE = "cosignature"  # a cosignature by a witness the registry lists does not verify


class EvidenceError(VerificationError):
    """The pack does not prove what it claims; ``kind`` names the part that failed."""

    def __init__(self, kind: Tampered, message: str) -> None:
        super().__init__(f"{kind.value}: {message}")
        self.kind = kind


@dataclass(frozen=True)
class EvidenceReport:
    """What a verified pack proves: the facts, and ``statement``, in words."""

    referral_id: str
    recipient: str
    disclosed_at: str
    disclosure_digest: str
    log_index: int
    checkpoint_size: int
    jws_checked: bool
    acknowledged: str | None  # the logged acknowledgement's status, when the pack has one
    ack_checked: str | None  # the signed acknowledgement's status, when the pack has one
    cosigned_by: tuple[str, ...]  # the witnesses (registry names) that cosigned the checkpoint
    statement: tuple[str, ...]


def logged(event: bytes, index: int, path: Sequence[bytes], checkpoint: bytes) -> dict[str, str]:
    """One event of a pack: its canonical bytes and its tlog-proof to ``checkpoint``."""
    return {
        "event": event.decode("utf-8"),
        "proof": tlog_proof(index, path, checkpoint).decode("utf-8"),
    }


def build_pack(
    *,
    origin: str,
    registry_jws: bytes,
    jwe: bytes,
    disclosed: dict[str, str],
    jws: bytes | None = None,
    ack: bytes | None = None,
    acknowledged: dict[str, str] | None = None,
) -> bytes:
    """The ``cairn-evidence/1`` document (UTF-8 JSON, sorted keys, a final newline)."""
    pack: dict[str, Any] = {
        "format": EVIDENCE_FORMAT,
        "origin": origin,
        "registry": registry_jws.decode("ascii").strip(),
        "jwe": jwe.decode("ascii").strip(),
        "disclosed": disclosed,
    }
    if jws is not None:
        pack["jws"] = jws.decode("ascii").strip()
    if ack is not None:
        pack["ack"] = ack.decode("ascii").strip()
    if acknowledged is not None:
        pack["acknowledged"] = acknowledged
    return (json.dumps(pack, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()


# -- verifying --


def _text(doc: dict[str, Any], name: str) -> str:
    value = doc.get(name)
    if not isinstance(value, str):
        raise EvidenceError(Tampered.MALFORMED, f"'{name}' is a string")
    return value


def _auditor_verifiers(registry: Registry, origin: str) -> list[NoteVerifier]:
    """The auditor's signing keys, retired ones included (older checkpoints), revoked left out."""
    member = registry.member(AUDITOR_ID)
    found = []
    for k in member.keys if member is not None else ():
        public = k.jwk.public_key()
        usable = k.use is KeyUse.SIGNING and k.status is not KeyStatus.REVOKED
        if usable and isinstance(public, Ed25519PublicKey):
            found.append(NoteVerifier(origin, public))
    if not found:
        raise EvidenceError(Tampered.REGISTRY, f"the registry lists no key for {AUDITOR_ID}")
    return found


def registry_witnesses(registry: Registry) -> list[CosignerVerifier]:
    """The witnesses the registry lists (``ServiceRole.WITNESS``): the cosignature/v1 verifier
    of each signing key not revoked (retired ones still verify older cosignatures), from the
    C2SP verifier key the registry gives with it (``RegisteredKey.vkey``). None listed: an
    empty list (a checkpoint cannot be cosigned)."""
    found: list[CosignerVerifier] = []
    for member in registry.members:
        if member.role is not ServiceRole.WITNESS:
            continue
        for k in member.keys:
            if k.use is not KeyUse.SIGNING or k.status is KeyStatus.REVOKED or k.vkey is None:
                continue
            try:
                found.append(CosignerVerifier.from_vkey(k.vkey))
            except VerificationError as exc:
                raise EvidenceError(
                    Tampered.REGISTRY, f"the registry's witness {member.id} has a bad vkey ({exc})"
                ) from None
    return found


def _cosigned(note: bytes, witnesses: list[CosignerVerifier], name: str) -> list[Cosignature]:
    """The verified cosignatures on the checkpoint of ``name``'s proof by listed witnesses."""
    if not witnesses:
        return []
    try:
        return verify_cosignatures(note, witnesses)
    except VerificationError as exc:
        if getattr(exc, "reason", None) is Reason.UNKNOWN_KEY:
            return []  # no listed witness cosigned it: not cosigned, not tampered
        raise EvidenceError(
            Tampered.COSIGNATURE,
            f"a witness cosignature on the checkpoint of the {name} event's proof does not "
            f"verify ({exc})",
        ) from None


def _proven(
    part: Any, name: str, verifiers: list[NoteVerifier], origin: str
) -> tuple[AuditEvent, TlogProof, Checkpoint]:
    """The event in ``part`` and the checkpoint its proof shows it to be logged under."""
    if not isinstance(part, dict):
        raise EvidenceError(Tampered.MALFORMED, f"'{name}' is an object with event and proof")
    event_text, proof_text = _text(part, "event"), _text(part, "proof")
    data = event_text.encode("utf-8")
    try:
        event = AuditEvent.from_canonical(data)
    except SchemaError as exc:
        raise EvidenceError(Tampered.EVENT, f"the {name} event: {exc}") from None
    try:
        proof = parse_tlog_proof(proof_text.encode("utf-8"))
    except VerificationError as exc:
        raise EvidenceError(Tampered.PROOF, f"the {name} event's tlog-proof: {exc}") from None
    try:
        checkpoint = verify_checkpoint(proof.checkpoint, verifiers, origin=origin)
    except VerificationError as exc:
        raise EvidenceError(
            Tampered.CHECKPOINT,
            f"the checkpoint of the {name} event's proof is not one an auditor key in the "
            f"registry signed for {origin} ({exc})",
        ) from None
    try:
        verify_inclusion(
            proof.index, checkpoint.size, leaf_hash(data), proof.path, checkpoint.root_hash
        )
    except InvalidProof:
        raise EvidenceError(
            Tampered.PROOF,
            f"the {name} event is not entry {proof.index} of the log under the checkpoint of "
            f"size {checkpoint.size}: the event or its inclusion path was altered",
        ) from None
    return event, proof, checkpoint


def verify_pack(pack: bytes, root_public_key: Ed25519PublicKey) -> EvidenceReport:
    """What ``pack`` proves, checked from ``root_public_key`` alone; else ``EvidenceError``."""
    if len(pack) > MAX_PACK_BYTES:
        raise EvidenceError(Tampered.MALFORMED, f"a pack is at most {MAX_PACK_BYTES} bytes")
    try:
        doc = json.loads(pack)
    except (ValueError, UnicodeDecodeError):
        raise EvidenceError(Tampered.MALFORMED, "a pack is a JSON object") from None
    if not isinstance(doc, dict) or doc.get("format") != EVIDENCE_FORMAT:
        raise EvidenceError(Tampered.MALFORMED, f"the format is not {EVIDENCE_FORMAT}")
    origin, registry_jws, jwe = _text(doc, "origin"), _text(doc, "registry"), _text(doc, "jwe")
    jws = _text(doc, "jws") if doc.get("jws") is not None else None
    ack_jws = _text(doc, "ack") if doc.get("ack") is not None else None
    # 1. The registry, signed by the federation root: the trust anchor for every key below.
    try:
        registry = verify_registry_signature(registry_jws.encode("ascii"), root_public_key)
    except (VerificationError, UnicodeEncodeError) as exc:
        raise EvidenceError(
            Tampered.REGISTRY, f"the registry is not signed by this federation root ({exc})"
        ) from None
    verifiers = _auditor_verifiers(registry, origin)
    witnesses = registry_witnesses(registry)
    # 2. The disclosed event, in the log under a checkpoint an auditor key signed, and the
    #    cosignatures on it by the witnesses the registry lists (C2SP tlog-cosignature).
    event, proof, checkpoint = _proven(doc.get("disclosed"), "disclosed", verifiers, origin)
    cosigned = _cosigned(proof.checkpoint, witnesses, "disclosed")
    if event.type is not AuditEventType.DISCLOSED or event.recipient is None:
        raise EvidenceError(Tampered.EVENT, "the disclosed part holds no 'disclosed' event")
    if event.disclosure_digest is None:
        raise EvidenceError(
            Tampered.EVENT, "the disclosed event names no disclosure_digest (an older event)"
        )
    # 3. The JWE in the pack is the one the event records: SHA-256 of its bytes.
    if disclosure_digest_of(jwe.encode("utf-8")) != event.disclosure_digest:
        raise EvidenceError(
            Tampered.DISCLOSURE,
            "the SHA-256 of the JWE is not the disclosed event's disclosure_digest",
        )
    # 4. Optionally the decrypted JWS: a broker key trusted when the event happened signed it.
    if jws is not None:
        _check_jws(jws, registry, event)
    # 5. Optionally the recipient's signed acknowledgement: its key, this referral.
    signed_status = _check_ack(ack_jws, registry, event) if ack_jws is not None else None
    # 6. Optionally the acknowledgement of the same disclosure, in the log too.
    ack_status = None
    if doc.get("acknowledged") is not None:
        ack, ack_proof, _ = _proven(doc["acknowledged"], "acknowledged", verifiers, origin)
        _cosigned(ack_proof.checkpoint, witnesses, "acknowledged")
        same = (ack.message_id, ack.recipient) == (event.message_id, event.recipient)
        if ack.type is not AuditEventType.ACKNOWLEDGED or not same or ack.status is None:
            raise EvidenceError(
                Tampered.EVENT,
                "the acknowledged part is not an acknowledgement of this disclosure",
            )
        ack_status = ack.status.value
        if signed_status is not None and signed_status != ack_status:
            raise EvidenceError(
                Tampered.ACKNOWLEDGEMENT,
                f"the signed acknowledgement says {signed_status}, the logged one {ack_status}",
            )
    at = event.at.isoformat()
    statement = [
        f"The federation root signed registry serial {registry.serial}, which lists the "
        f"auditor's checkpoint keys and the broker's signing keys.",
        f"An auditor key signed a checkpoint of log {origin} of {checkpoint.size} entries; the "
        f"'disclosed' event is entry {proof.index} of it (RFC 9162 inclusion proof).",
        (
            f"{len(cosigned)} witness(es) the registry lists cosigned that checkpoint "
            f"({', '.join(c.name for c in cosigned)}), so the auditor cannot show another log "
            "of that size to anyone who checks with them."
            if cosigned
            else "That checkpoint is not cosigned by any witness the registry lists."
        ),
        f"That event records that referral {event.message_id} was disclosed to "
        f"{event.recipient} at {at}, and that the disclosure sent was the JWE with SHA-256 "
        f"{event.disclosure_digest}: the JWE in this pack.",
    ]
    if jws is not None:
        statement.append(
            "The JWS in this pack is a disclosure of that referral to that recipient, signed "
            "by a broker key the registry trusted then (only the recipient's key can show "
            "it is the JWE's plaintext)."
        )
    if signed_status is not None:
        statement.append(
            f"{event.recipient} signed an acknowledgement of that referral ({signed_status}) "
            "with a key the registry lists for it: the receipt in this pack."
        )
    if ack_status is not None:
        statement.append(
            f"The log also holds {event.recipient}'s acknowledgement of it ({ack_status})."
        )
    return EvidenceReport(
        referral_id=str(event.message_id),
        recipient=event.recipient,
        disclosed_at=at,
        disclosure_digest=event.disclosure_digest,
        log_index=proof.index,
        checkpoint_size=checkpoint.size,
        jws_checked=jws is not None,
        acknowledged=ack_status,
        ack_checked=signed_status,
        cosigned_by=tuple(c.name for c in cosigned),
        statement=tuple(statement),
    )


def _check_jws(jws: str, registry: Registry, event: AuditEvent) -> None:
    def key_for(kid: str) -> Ed25519PublicKey:
        return registry.verification_key(BROKER_ID, kid, now=event.at)

    try:
        payload = verify_compact(jws.encode("ascii"), key_for, typ=DISCLOSURE_TYP)
    except (VerificationError, UnicodeEncodeError) as exc:
        raise EvidenceError(
            Tampered.JWS, f"the JWS is not a disclosure the broker signed ({exc})"
        ) from None
    # Only the ids that bind it to the event are read (schemas/disclosure.py names them).
    try:
        named = json.loads(payload)
        ids = (str(named["referral_id"]), str(named["recipient_agency"]))
    except (ValueError, KeyError, TypeError):
        raise EvidenceError(
            Tampered.JWS, "the JWS payload is not a disclosure naming its referral"
        ) from None
    if ids != (str(event.message_id), event.recipient):
        raise EvidenceError(
            Tampered.JWS, "the JWS discloses another referral or to another recipient"
        )


def _check_ack(token: str, registry: Registry, event: AuditEvent) -> str:
    """The status of the recipient's signed acknowledgement of ``event``'s referral."""
    recipient = str(event.recipient)
    try:
        raw = token.encode("ascii")
        header = read_header(raw, jwe_token=False, max_bytes=MAX_TOKEN_BYTES)
        # The key must be one the registry trusted when the recipient signed (its iat, which
        # the signature covers), else when the disclosure happened.
        iat = header.get("iat")
        when = (
            datetime.fromtimestamp(iat, UTC)
            if isinstance(iat, int) and 0 <= iat < 2**40
            else event.at
        )

        def key_for(kid: str) -> Ed25519PublicKey:
            return registry.verification_key(recipient, kid, now=when)

        payload = verify_compact(raw, key_for, typ=ACK_TYP)
    except (VerificationError, UnicodeEncodeError) as exc:
        raise EvidenceError(
            Tampered.ACKNOWLEDGEMENT,
            f"the ack is not an acknowledgement {recipient} signed ({exc})",
        ) from None
    try:
        ack = Acknowledgement.model_validate_json(payload)
    except ValueError:
        raise EvidenceError(
            Tampered.ACKNOWLEDGEMENT, "the signed ack's payload is not an acknowledgement"
        ) from None
    if (str(ack.referral_id), ack.agency) != (str(event.message_id), recipient):
        raise EvidenceError(
            Tampered.ACKNOWLEDGEMENT,
            "the signed ack acknowledges another referral, or is another agency's",
        )
    return ack.status.value
