"""Evidence packs (cairn-evidence/1): built from a real audit log and real federation keys,
verified from the federation root public key alone, and each kind of tampering named."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from broker.audit import evidence
from broker.audit.checkpoint import sign_note
from broker.audit.cosign import CosignerVerifier, add_cosignatures, cosign
from broker.audit.evidence import (
    EVIDENCE_FORMAT,
    EvidenceError,
    Tampered,
    build_pack,
    logged,
    verify_pack,
)
from broker.audit.store import AuditLog
from broker.policy.decide import Decision
from keys.envelope import DISCLOSURE_TYP, seal_disclosure, sign_ack
from keys.federation import (
    Admin,
    admit_witness,
    init_federation,
    load_registry,
    load_signing_key,
    read_root_key,
)
from keys.jose import sign_compact
from keys.jwk import SigningKey
from keys.registry import AUDITOR_ID, BROKER_ID, Registry, cosigner_vkey, sign_registry
from keys.store import REGISTRY, ROOT_PUBLIC, MemoryStore
from schemas.audit import acknowledged, disclosure_digest_of, submission_events
from schemas.receipt import Acknowledgement, AcknowledgementStatus
from schemas.referral import Referral
from tests.samples import sample
from tests.unit.audit.conftest import SECRET
from tests.unit.keys.conftest import PASSPHRASE, SMALL

NOW = datetime.now(UTC).replace(microsecond=0)
RECIPIENT = "test-idva"


@dataclass(frozen=True)
class World:
    root: Ed25519PublicKey
    registry: Registry
    registry_jws: bytes
    broker: SigningKey
    auditor: SigningKey
    recipient: SigningKey
    log: AuditLog


@pytest.fixture(scope="module")
def keys() -> tuple[MemoryStore, Registry]:
    store = MemoryStore()
    return store, init_federation(store, SMALL, PASSPHRASE, now=NOW)


@pytest.fixture
def world(tmp_path: Path, keys: tuple[MemoryStore, Registry]) -> Any:
    store, registry = keys
    log = AuditLog.open(tmp_path / "audit")
    yield World(
        root=read_root_key(store),
        registry=registry,
        registry_jws=store.read(REGISTRY),
        broker=load_signing_key(store, BROKER_ID, PASSPHRASE, registry, now=NOW),
        auditor=load_signing_key(store, AUDITOR_ID, PASSPHRASE, registry, now=NOW),
        recipient=load_signing_key(store, RECIPIENT, PASSPHRASE, registry, now=NOW),
        log=log,
    )
    log.close()


def _referral() -> Referral:
    data = sample()
    data["header"]["sender_agency"] = "test-police"
    data["header"]["recipients"] = [RECIPIENT]
    return Referral.model_validate(data)


@dataclass(frozen=True)
class Made:
    pack: bytes
    jwe: bytes
    jws: bytes
    ack: bytes


def make(
    w: World,
    *,
    with_ack: bool = True,
    with_jws: bool = True,
    with_signed_ack: bool = True,
    cosign: Callable[[bytes], bytes] | None = None,
) -> Made:
    """A disclosure sealed to the recipient, its events logged and checkpointed, the pack."""
    referral = _referral()
    disclosure = {
        "referral_id": str(referral.header.referral_id),
        "sender_agency": "test-police",
        "recipient_agency": RECIPIENT,
    }
    # The disclosure's payload is not what is under test; a broker-signed JSON of the ids.
    payload = json.dumps(disclosure).encode()
    jwe = seal_disclosure(payload, w.broker, w.registry, recipient=RECIPIENT, now=NOW)
    jws = sign_compact(payload, w.broker, typ=DISCLOSURE_TYP)
    events = submission_events(
        referral,
        [Decision(RECIPIENT, allowed=True, reasons=("rule:1",))],
        secret=SECRET,
        at=NOW,
        disclosure_digests={RECIPIENT: disclosure_digest_of(jwe)},
    )
    receipt = Acknowledgement(
        referral_id=referral.header.referral_id,
        agency=RECIPIENT,
        status=AcknowledgementStatus.FILED,
        acknowledged_at=NOW,
    )
    signed_ack = sign_ack(receipt.model_dump_json().encode(), w.recipient, issued_at=NOW)
    ack = acknowledged(receipt, at=NOW)
    canon = [e.canonical() for e in (*events, ack)]
    w.log.append(list(enumerate(canon)))
    note = w.log.sign_checkpoint(w.auditor)
    if cosign is not None:
        note = cosign(note)
    disclosed_at = 2  # received, decided, disclosed
    ack_at = len(canon) - 1
    return Made(
        build_pack(
            origin=w.log.origin,
            registry_jws=w.registry_jws,
            jwe=jwe,
            jws=jws if with_jws else None,
            ack=signed_ack if with_signed_ack else None,
            disclosed=logged(canon[disclosed_at], disclosed_at, w.log.inclusion_proof(2), note),
            acknowledged=logged(canon[ack_at], ack_at, w.log.inclusion_proof(ack_at), note)
            if with_ack
            else None,
        ),
        jwe,
        jws,
        signed_ack,
    )


def edited(pack: bytes, change: Callable[[dict[str, Any]], None]) -> bytes:
    doc = json.loads(pack)
    change(doc)
    return json.dumps(doc).encode()


def kind_of(pack: bytes, root: Ed25519PublicKey) -> Tampered:
    with pytest.raises(EvidenceError) as info:
        verify_pack(pack, root)
    return info.value.kind


def test_a_pack_verifies_from_the_root_key_alone_and_says_what_it_proves(world: World) -> None:
    made = make(world)
    doc = json.loads(made.pack)
    assert doc["format"] == EVIDENCE_FORMAT
    assert doc["jwe"].encode() == made.jwe
    report = verify_pack(made.pack, world.root)
    assert report.recipient == RECIPIENT
    assert report.referral_id == json.loads(doc["disclosed"]["event"])["message_id"]
    assert report.disclosure_digest == disclosure_digest_of(made.jwe)
    assert (report.log_index, report.checkpoint_size) == (2, 4)
    assert report.jws_checked
    assert report.acknowledged == "filed"
    assert report.ack_checked == "filed"
    assert report.cosigned_by == ()
    words = " ".join(report.statement)
    assert "not cosigned" in words
    assert f"{RECIPIENT} signed an acknowledgement" in words
    assert "federation root signed registry" in words
    assert "entry 2" in words
    assert disclosure_digest_of(made.jwe) in words
    assert "acknowledgement" in words


def test_the_optional_parts_may_be_left_out(world: World) -> None:
    made = make(world, with_ack=False, with_jws=False, with_signed_ack=False)
    report = verify_pack(made.pack, world.root)
    assert not report.jws_checked
    assert report.acknowledged is None
    assert report.ack_checked is None


def _event_field(name: str, value: str) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        event = json.loads(doc["disclosed"]["event"])
        event[name] = value
        doc["disclosed"]["event"] = json.dumps(event, sort_keys=True, separators=(",", ":"))

    return change


def _flip_proof_line(prefix: str) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        head, sep, note = doc["disclosed"]["proof"].partition("\n\n")
        lines = head.split("\n")
        i = next(n for n, line in enumerate(lines) if line.startswith("index "))
        if prefix == "index":
            lines[i] = "index 1"
        else:
            i += 1  # the first hash of the inclusion path
            raw = bytearray(base64.b64decode(lines[i]))
            raw[0] ^= 1
            lines[i] = base64.b64encode(bytes(raw)).decode()
        doc["disclosed"]["proof"] = "\n".join(lines) + sep + note

    return change


def _resign_checkpoint(doc: dict[str, Any]) -> None:
    """The same checkpoint body, signed by a key the registry does not list."""
    head, sep, note = doc["disclosed"]["proof"].partition("\n\n")
    body = note.partition("\n\n")[0] + "\n"
    forged = sign_note(body.encode(), doc["origin"], Ed25519PrivateKey.generate())
    doc["disclosed"]["proof"] = head + sep + forged.decode()


@pytest.mark.parametrize(
    ("change", "kind"),
    [
        # event: a changed field, re-canonicalised, is no longer the logged entry
        (_event_field("recipient", "test-nhs"), Tampered.PROOF),
        # event: bytes not in canonical form
        (lambda d: d["disclosed"].update(event=d["disclosed"]["event"] + " "), Tampered.EVENT),
        # event: the digest swapped for another
        (_event_field("disclosure_digest", "0" * 64), Tampered.PROOF),
        # proof: a path hash or the index altered
        (_flip_proof_line("hash"), Tampered.PROOF),
        (_flip_proof_line("index"), Tampered.PROOF),
        (lambda d: d["disclosed"].update(proof="not a proof\n\nx\n"), Tampered.PROOF),
        # checkpoint: signed by another key, or the origin claimed is another log's
        (_resign_checkpoint, Tampered.CHECKPOINT),
        (lambda d: d.update(origin="elsewhere.example/log"), Tampered.CHECKPOINT),
        # disclosure: another JWE, or a JWS the broker did not sign
        (
            lambda d: d.update(jwe=d["jwe"][:-2] + ("AA" if d["jwe"][-2:] != "AA" else "BB")),
            Tampered.DISCLOSURE,
        ),
        (
            lambda d: d.update(jws=d["jws"][:-2] + ("AA" if d["jws"][-2:] != "AA" else "BB")),
            Tampered.JWS,
        ),
        # the JWS swapped for the (validly signed) ack: not a disclosure of the broker's
        (lambda d: d.update(jws=d["ack"]), Tampered.JWS),
        # ack: a signature byte altered, or a disclosure JWS given as the ack
        (
            lambda d: d.update(ack=d["ack"][:-2] + ("AA" if d["ack"][-2:] != "AA" else "BB")),
            Tampered.ACKNOWLEDGEMENT,
        ),
        (lambda d: d.update(ack=d["jws"]), Tampered.ACKNOWLEDGEMENT),
        # key/registry: a registry byte altered
        (
            lambda d: d.update(
                registry=d["registry"][:-2] + ("AA" if d["registry"][-2:] != "AA" else "BB")
            ),
            Tampered.REGISTRY,
        ),
        # the acknowledgement moved under the disclosed event's name
        (lambda d: d.update(disclosed=d["acknowledged"]), Tampered.EVENT),
        (lambda d: d.update(format="cairn-evidence/2"), Tampered.MALFORMED),
    ],
    ids=[
        "event-field",
        "event-not-canonical",
        "event-digest",
        "proof-path",
        "proof-index",
        "proof-malformed",
        "checkpoint-signer",
        "checkpoint-origin",
        "disclosure-jwe",
        "jws-bytes",
        "jws-is-the-ack",
        "ack-bytes",
        "ack-is-the-jws",
        "registry-bytes",
        "event-type",
        "format",
    ],
)
def test_each_tampering_is_refused_and_named(
    world: World, change: Callable[[dict[str, Any]], None], kind: Tampered
) -> None:
    pack = make(world).pack
    assert kind_of(edited(pack, change), world.root) is kind


def test_a_registry_signed_by_another_root_is_refused_as_registry(world: World) -> None:
    other = SigningKey(Ed25519PrivateKey.generate())
    made = make(world).pack
    pack = edited(
        made,
        lambda d: d.update(registry=sign_registry(world.registry, other).decode()),
    )
    assert kind_of(pack, world.root) is Tampered.REGISTRY
    # The pack is also refused under a root that is not the federation's.
    assert kind_of(made, other.private_key.public_key()) is Tampered.REGISTRY


def test_an_ack_signed_by_another_agency_or_of_another_status_is_refused(
    world: World, keys: tuple[MemoryStore, Registry]
) -> None:
    made = make(world)
    doc = json.loads(made.pack)
    referral_id = json.loads(doc["disclosed"]["event"])["message_id"]
    police = load_signing_key(keys[0], "test-police", PASSPHRASE, keys[1], now=NOW)
    receipt = Acknowledgement(
        referral_id=referral_id,
        agency=RECIPIENT,
        status=AcknowledgementStatus.FILED,
        acknowledged_at=NOW,
    )
    forged = sign_ack(receipt.model_dump_json().encode(), police, issued_at=NOW)
    pack = edited(made.pack, lambda d: d.update(ack=forged.decode()))
    assert kind_of(pack, world.root) is Tampered.ACKNOWLEDGEMENT
    rejected = receipt.model_copy(
        update={"status": AcknowledgementStatus.REJECTED, "reasons": ("bad_format",)}
    )
    other = sign_ack(rejected.model_dump_json().encode(), world.recipient, issued_at=NOW)
    pack = edited(made.pack, lambda d: d.update(ack=other.decode()))
    with pytest.raises(EvidenceError) as info:
        verify_pack(pack, world.root)
    assert info.value.kind is Tampered.ACKNOWLEDGEMENT
    assert "says rejected, the logged one filed" in str(info.value)


def _witness(name: str) -> tuple[Ed25519PrivateKey, CosignerVerifier]:
    key = Ed25519PrivateKey.generate()
    return key, CosignerVerifier(name, key.public_key())


def test_cosignatures_by_the_registrys_witnesses_are_counted_and_checked(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint cosigned (C2SP tlog-cosignature) by two listed witnesses: the report names
    both; an altered cosignature is refused as cosignature; one by a witness the registry does
    not list is ignored (the pack verifies, not cosigned)."""
    (k1, w1), (k2, w2) = _witness("witness.one.example"), _witness("witness.two.example")
    _, stranger = _witness("witness.stranger.example")

    def by(*signers: tuple[Ed25519PrivateKey, str]) -> Callable[[bytes], bytes]:
        def cosigned(note: bytes) -> bytes:
            body = note[: note.rfind(b"\n\n") + 1]
            lines = b"".join(cosign(body, name, key, 1_700_000_000) for key, name in signers)
            return add_cosignatures(note, lines)

        return cosigned

    monkeypatch.setattr(evidence, "registry_witnesses", lambda _registry: [w1, w2])
    made = make(world, cosign=by((k1, w1.name), (k2, w2.name)))
    report = verify_pack(made.pack, world.root)
    assert report.cosigned_by == (w1.name, w2.name)
    assert "2 witness(es) the registry lists cosigned that checkpoint" in " ".join(report.statement)

    def flip_cosignature(doc: dict[str, Any]) -> None:
        proof = doc["disclosed"]["proof"]
        line = next(x for x in proof.split("\n") if x.startswith("\u2014 " + w2.name))
        name, blob = line.rsplit(" ", 1)
        raw = bytearray(base64.b64decode(blob))
        raw[-1] ^= 1
        doc["disclosed"]["proof"] = proof.replace(
            line, f"{name} {base64.b64encode(bytes(raw)).decode()}"
        )

    assert kind_of(edited(made.pack, flip_cosignature), world.root) is Tampered.COSIGNATURE
    # Listed: only a witness that did not cosign; the two that did are strangers to it.
    monkeypatch.setattr(evidence, "registry_witnesses", lambda _registry: [stranger])
    assert verify_pack(made.pack, world.root).cosigned_by == ()


def test_not_json_is_malformed(world: World) -> None:
    assert kind_of(b"\xff not json", world.root) is Tampered.MALFORMED


def test_the_standard_tools_check_in_docs_evidence_md_passes(world: World, tmp_path: Path) -> None:
    """The Python snippet of docs/evidence.md (standard library only) accepts a real pack,
    and refuses it when the event is altered."""
    text = (Path(__file__).parents[3] / "docs" / "evidence.md").read_text()
    snippet = text.split("```python\n", 1)[1].split("```", 1)[0]
    pack = make(world).pack
    (tmp_path / "pack.json").write_bytes(pack)
    import os

    here = Path.cwd()
    os.chdir(tmp_path)
    try:
        exec(compile(snippet, "docs/evidence.md", "exec"), {})  # noqa: S102
        tampered = edited(pack, _event_field("recipient", "test-nhs"))
        (tmp_path / "pack.json").write_bytes(tampered)
        with pytest.raises(AssertionError):
            exec(compile(snippet, "docs/evidence.md", "exec"), {})  # noqa: S102
    finally:
        os.chdir(here)


def _snippet(n: int) -> str:
    text = (Path(__file__).parents[3] / "docs" / "evidence.md").read_text()
    return text.split("```python\n")[n].split("```", 1)[0]


def test_the_jose_check_in_docs_evidence_md_passes_with_jwcrypto(
    world: World,
    keys: tuple[MemoryStore, Registry],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The JOSE block of docs/evidence.md (jwcrypto and pyca/cryptography, none of our code)
    accepts a real pack with its signed ack and JWS, and refuses it when the ack, the JWS,
    the registry or the checkpoint signature is altered."""
    snippet = compile(_snippet(2), "docs/evidence.md", "exec")
    (tmp_path / "root.jwk").write_bytes(keys[0].read(ROOT_PUBLIC))
    monkeypatch.chdir(tmp_path)
    pack = make(world).pack
    (tmp_path / "pack.json").write_bytes(pack)
    exec(snippet, {})  # noqa: S102

    def flip_signature(doc: dict[str, Any]) -> None:
        head, sep, note = doc["disclosed"]["proof"].partition("\n\n")
        text, _, line = note.partition("\n\n")
        name, blob = line.strip().split(" ", 1)[1].split(" ")
        raw = bytearray(base64.b64decode(blob))
        raw[-1] ^= 1
        changed = f"{text}\n\n\u2014 {name} {base64.b64encode(bytes(raw)).decode()}\n"
        doc["disclosed"]["proof"] = head + sep + changed

    for change in (
        lambda d: d.update(ack=d["ack"][:-2] + ("AA" if d["ack"][-2:] != "AA" else "BB")),
        lambda d: d.update(jws=d["jws"][:-2] + ("AA" if d["jws"][-2:] != "AA" else "BB")),
        lambda d: d.update(jws=d["ack"]),
        lambda d: d.update(
            registry=d["registry"][:-2] + ("AA" if d["registry"][-2:] != "AA" else "BB")
        ),
        flip_signature,
    ):
        (tmp_path / "pack.json").write_bytes(edited(pack, change))
        with pytest.raises(Exception):  # noqa: B017, PT011 - whatever jwcrypto or an assert raises
            exec(snippet, {})  # noqa: S102


def test_the_witnesses_the_registry_lists_are_the_ones_counted(
    tmp_path: Path, keys: tuple[MemoryStore, Registry]
) -> None:
    """No monkeypatching: two witnesses admitted to a real registry (admit_witness, their
    cosignature/v1 vkeys) cosign; the pack says two cosigned, naming them; a third witness's
    line, not listed, is ignored."""
    store = MemoryStore()  # a copy: the module's federation keeps its registry
    store.files = dict(keys[0].files)
    admin = Admin.single(store, PASSPHRASE)
    signers = []
    for n in (1, 2):
        key = Ed25519PrivateKey.generate()
        name = f"witness-{n}.test.example"
        admit_witness(
            admin,
            f"test-witness-{n}",
            f"Witness {n}",
            cosigner_vkey(name, key.public_key()),
            now=NOW,
        )
        signers.append((key, name))
    registry = load_registry(store, now=NOW)
    assert [w.name for w in evidence.registry_witnesses(registry)] == [n for _, n in signers]
    log = AuditLog.open(tmp_path / "audit")
    try:
        world = World(
            root=read_root_key(store),
            registry=registry,
            registry_jws=store.read(REGISTRY),
            broker=load_signing_key(store, BROKER_ID, PASSPHRASE, registry, now=NOW),
            auditor=load_signing_key(store, AUDITOR_ID, PASSPHRASE, registry, now=NOW),
            recipient=load_signing_key(store, RECIPIENT, PASSPHRASE, registry, now=NOW),
            log=log,
        )
        stranger = (Ed25519PrivateKey.generate(), "witness-3.test.example")

        def cosigned(note: bytes) -> bytes:
            body = note[: note.rfind(b"\n\n") + 1]
            lines = b"".join(cosign(body, n, k, 1_700_000_000) for k, n in (*signers, stranger))
            return add_cosignatures(note, lines)

        report = verify_pack(make(world, cosign=cosigned).pack, world.root)
    finally:
        log.close()
    assert report.cosigned_by == ("witness-1.test.example", "witness-2.test.example")
    assert any("2 witness(es) the registry lists cosigned" in line for line in report.statement)
