"""``cairn evidence export`` and ``verify`` over a real key store and audit log files."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from broker.audit.cosign import CosignerVerifier, add_cosignatures, cosign
from broker.audit.store import AuditLog
from broker.cli.evidence import evidence
from broker.policy.decide import Decision
from gateway.sqlite import SqliteGatewayStore
from gateway.store import NewDisclosure
from keys.envelope import DISCLOSURE_TYP, seal_disclosure, sign_ack
from keys.federation import init_federation, load_registry, load_signing_key
from keys.jose import sign_compact
from keys.registry import AUDITOR_ID, BROKER_ID
from keys.store import ROOT_PUBLIC, FileStore
from schemas.audit import acknowledged, disclosure_digest_of, submission_events
from schemas.receipt import Acknowledgement, AcknowledgementStatus
from schemas.referral import Referral
from tests.evidence_support import check_every_tampering
from tests.samples import sample
from tests.unit.audit.conftest import SECRET
from tests.unit.keys.conftest import SMALL

PASSPHRASE = "evidence cli test passphrase 0123456789"
RECIPIENT = "test-idva"
WITNESS = "witness.test.example"


@dataclass(frozen=True)
class Setup:
    state: Path
    jwe: Path
    referral_id: str
    gateway_db: Path  # the recipient's gateway store, holding the disclosure as delivered
    ack: bytes  # the recipient's signed acknowledgement it keeps


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    state = tmp_path_factory.mktemp("state")
    store = FileStore(state / "keys")
    now = datetime.now(UTC).replace(microsecond=0)
    init_federation(store, SMALL, PASSPHRASE.encode(), now=now)
    registry = load_registry(store, now=now)
    broker = load_signing_key(store, BROKER_ID, PASSPHRASE.encode(), registry, now=now)
    auditor = load_signing_key(store, AUDITOR_ID, PASSPHRASE.encode(), registry, now=now)
    data = sample()
    data["header"]["sender_agency"] = "test-police"
    data["header"]["recipients"] = [RECIPIENT]
    referral = Referral.model_validate(data)
    rid = str(referral.header.referral_id)
    payload = json.dumps({"referral_id": rid, "recipient_agency": RECIPIENT}).encode()
    jwe = seal_disclosure(payload, broker, registry, recipient=RECIPIENT, now=now)
    events = submission_events(
        referral,
        [Decision(RECIPIENT, allowed=True, reasons=("rule:1",))],
        secret=SECRET,
        at=now,
        disclosure_digests={RECIPIENT: disclosure_digest_of(jwe)},
    )
    receipt = Acknowledgement(
        referral_id=referral.header.referral_id,
        agency=RECIPIENT,
        status=AcknowledgementStatus.FILED,
        acknowledged_at=now,
    )
    recipient = load_signing_key(store, RECIPIENT, PASSPHRASE.encode(), registry, now=now)
    ack = sign_ack(receipt.model_dump_json().encode(), recipient, issued_at=now)
    logged_events = [*events, acknowledged(receipt, at=now)]
    with AuditLog.open(state / "audit") as log:
        log.append([(i, e.canonical()) for i, e in enumerate(logged_events)])
        note = log.sign_checkpoint(auditor)
        # One witness cosigned it (C2SP tlog-cosignature); the log keeps the cosigned note.
        witness = Ed25519PrivateKey.generate()
        body = note[: note.rfind(b"\n\n") + 1]
        line = cosign(body, WITNESS, witness, int(now.timestamp()))
        log.add_cosignatures(
            add_cosignatures(note, line), [CosignerVerifier(WITNESS, witness.public_key())]
        )
    (state / "d.jwe").write_bytes(jwe + b"\n")
    jws = sign_compact(payload, broker, typ=DISCLOSURE_TYP)
    gateway_db = state / "gateway" / f"{RECIPIENT}.sqlite"

    async def receive() -> None:
        gw = SqliteGatewayStore(gateway_db)
        await gw.open()
        try:
            kept = NewDisclosure(
                referral_id=referral.header.referral_id,
                sender="test-police",
                purpose="MARAC",
                kind="referral",
                body=payload.decode(),
                received_at=now,
                delete_after=None,
                source="t.deliver.test-idva:0:0",
                signed=jws.decode(),
                delivered=jwe.decode(),
            )
            assert await gw.put(kept, webhook=False)
            assert await gw.acknowledge(referral.header.referral_id, "filed", now, ack)
        finally:
            await gw.close()

    asyncio.run(receive())
    return Setup(state, state / "d.jwe", rid, gateway_db, ack)


@pytest.fixture
def run(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CAIRN_CONFIG", "CAIRN_KEY_PASSPHRASE_FILE", "CAIRN_REGISTRY_ROOT_KID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CAIRN_STATE_DIR", str(setup.state))
    monkeypatch.setenv("CAIRN_KEY_DIR", str(setup.state / "keys"))
    monkeypatch.setenv("CAIRN_KEY_PASSPHRASE", PASSPHRASE)


def call(*args: str) -> Result:
    return CliRunner().invoke(evidence, list(args), catch_exceptions=False)


@pytest.mark.usefixtures("run")
def test_export_then_verify_says_what_the_pack_proves(setup: Setup, tmp_path: Path) -> None:
    out = tmp_path / "pack.json"
    args = ["--referral", setup.referral_id, "--recipient", RECIPIENT, "--jwe", str(setup.jwe)]
    result = call("export", *args, "-o", str(out))
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_bytes())["format"] == "cairn-evidence/1"
    result = call("verify", str(out))
    assert result.exit_code == 0, result.output
    assert f"referral {setup.referral_id} was disclosed to {RECIPIENT}" in result.stdout
    # A JWE that is not the one delivered: refused in one line, naming the kind.
    doc = json.loads(out.read_bytes())
    doc["jwe"] = doc["jwe"][:-1] + ("A" if doc["jwe"][-1] != "A" else "B")
    out.write_text(json.dumps(doc))
    result = call("verify", str(out))
    assert result.exit_code == 1
    assert "the evidence does not verify: disclosure:" in result.output
    assert "Traceback" not in result.output


@pytest.mark.usefixtures("run")
def test_export_of_an_unknown_disclosure_is_a_one_line_error(setup: Setup) -> None:
    result = call(
        "export",
        "--referral",
        "00000000-0000-4000-8000-000000000000",
        "--recipient",
        RECIPIENT,
        "--jwe",
        str(setup.jwe),
    )
    assert result.exit_code == 1
    assert "no disclosed event of referral" in result.output


@pytest.mark.usefixtures("run")
def test_the_recipient_then_the_auditor_make_the_pack_from_the_gateway_store(
    setup: Setup, tmp_path: Path
) -> None:
    """Step 1 (the recipient): its gateway store's JWE, JWS and signed ack; step 2 (the
    auditor): the pack with the logged events; verified, the ack and its event named."""
    part = tmp_path / "delivered.json"
    ids = ["--referral", setup.referral_id]
    result = call(
        "delivered", *ids, "--as", RECIPIENT, "--gateway-db", str(setup.gateway_db), "-o", str(part)
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(part.read_bytes())
    assert doc["format"] == "cairn-delivered/1"
    assert doc["jwe"].encode() == setup.jwe.read_bytes().strip()
    assert doc["ack"].encode() == setup.ack
    assert "jws" not in doc  # the disclosure's content only with --with-jws
    pack = tmp_path / "pack.json"
    result = call(
        "export", *ids, "--recipient", RECIPIENT, "--delivered", str(part), "-o", str(pack)
    )
    assert result.exit_code == 0, result.output
    made = json.loads(pack.read_bytes())
    assert made["ack"].encode() == setup.ack
    # The proofs lead to the cosigned checkpoint the log keeps (the registry lists no witness
    # here, so verify says it is not cosigned by one it lists).
    assert f"\u2014 {WITNESS} " in made["disclosed"]["proof"]
    assert f"\u2014 {WITNESS} " in made["acknowledged"]["proof"]
    result = call("verify", str(pack))
    assert result.exit_code == 0, result.output
    assert f"{RECIPIENT} signed an acknowledgement of that referral (filed)" in result.stdout
    assert f"The log also holds {RECIPIENT}'s acknowledgement of it (filed)." in result.stdout
    assert "not cosigned" in result.stdout
    # In one step, from the gateway store on this machine, with the JWS.
    one = tmp_path / "one.json"
    result = call(
        "export",
        *ids,
        "--recipient",
        RECIPIENT,
        "--gateway-db",
        str(setup.gateway_db),
        "--with-jws",
        "-o",
        str(one),
    )
    assert result.exit_code == 0, result.output
    assert "jws" in json.loads(one.read_bytes())
    result = call("verify", str(one))
    assert result.exit_code == 0, result.output
    assert "signed by a broker key the registry trusted then" in result.stdout


@pytest.mark.usefixtures("run")
def test_verify_with_an_explicit_root_key_file(setup: Setup, tmp_path: Path) -> None:
    """--root-key: the root's JWK (the key store's root.jwk) or its PEM; another root's key
    refuses the pack as registry, in one line."""
    pack = tmp_path / "pack.json"
    args = ["--referral", setup.referral_id, "--recipient", RECIPIENT, "--jwe", str(setup.jwe)]
    assert call("export", *args, "-o", str(pack)).exit_code == 0
    jwk = setup.state / "keys" / ROOT_PUBLIC
    result = call("verify", str(pack), "--root-key", str(jwk))
    assert result.exit_code == 0, result.output
    assert "Checked from the federation root key" in result.stdout
    from keys.jwk import public_key_from_jwk

    pem = tmp_path / "root.pem"
    pem.write_bytes(
        public_key_from_jwk(json.loads(jwk.read_bytes())).public_bytes(
            Encoding.PEM, PublicFormat.SubjectPublicKeyInfo
        )
    )
    assert call("verify", str(pack), "--root-key", str(pem)).exit_code == 0
    other = tmp_path / "other.pem"
    other.write_bytes(
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    result = call("verify", str(pack), "--root-key", str(other))
    assert result.exit_code == 1
    assert result.output.startswith("Error: the evidence does not verify: registry:")
    assert len(result.output.strip().splitlines()) == 1
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    result = call("verify", str(pack), "--root-key", str(bad))
    assert result.exit_code == 1
    assert "neither an Ed25519 public JWK nor a PEM public key" in result.output


@pytest.mark.usefixtures("run")
def test_export_takes_exactly_one_source_of_the_disclosure(setup: Setup, tmp_path: Path) -> None:
    ids = ["--referral", setup.referral_id, "--recipient", RECIPIENT]
    result = call("export", *ids)
    assert result.exit_code == 2
    assert "exactly one of --delivered, --jwe or --gateway-db" in result.output
    both = call("export", *ids, "--jwe", str(setup.jwe), "--gateway-db", str(setup.gateway_db))
    assert both.exit_code == 2
    missing = call("export", *ids, "--gateway-db", str(tmp_path / "none.sqlite"))
    assert missing.exit_code == 1
    assert "no gateway store at" in missing.output
    assert not (tmp_path / "none.sqlite").exists()
    other = call(
        "delivered",
        "--referral",
        "00000000-0000-4000-8000-000000000000",
        "--as",
        RECIPIENT,
        "--gateway-db",
        str(setup.gateway_db),
    )
    assert other.exit_code == 1
    assert "holds no disclosure of referral" in other.output


@pytest.mark.usefixtures("run")
def test_every_tampering_of_a_pack_is_named_by_the_cli_in_one_line(
    setup: Setup, tmp_path: Path
) -> None:
    pack = tmp_path / "made.json"
    ids = ["--referral", setup.referral_id, "--recipient", RECIPIENT]
    result = call("export", *ids, "--gateway-db", str(setup.gateway_db), "-o", str(pack))
    assert result.exit_code == 0, result.output
    check_every_tampering(pack.read_bytes(), setup.state / "keys" / ROOT_PUBLIC, tmp_path)


@pytest.mark.usefixtures("run")
def test_delivered_reads_the_store_the_gateway_uses_by_default(
    setup: Setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --gateway-db: the store 'cairn gateway --as AGENCY' opens under its settings
    (here SQLite at <state_dir>/gateway/<agency>.sqlite)."""
    monkeypatch.delenv("CAIRN_GATEWAY_DATABASE_URL", raising=False)
    monkeypatch.delenv("CAIRN_GATEWAY_DATABASE_URL_FILE", raising=False)
    monkeypatch.delenv("CAIRN_GATEWAY_SQLITE_PATH", raising=False)
    out = tmp_path / "delivered.json"
    result = call("delivered", "--referral", setup.referral_id, "--as", RECIPIENT, "-o", str(out))
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_bytes())["ack"].encode() == setup.ack
