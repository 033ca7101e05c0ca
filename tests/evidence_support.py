"""Each way of tampering with a ``cairn-evidence/1`` pack, and the kind ``verify`` must name.

Shared by the unit test of ``cairn evidence verify`` (a pack made from a real log and a real
gateway store) and the demo's end-to-end test (the pack ``make demo`` writes). Every change
works on a pack with a ``disclosed`` event, an ``acknowledged`` event and a signed ``ack``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.audit.checkpoint import sign_note
from broker.audit.evidence import Tampered
from broker.cli.evidence import evidence

Change = Callable[[dict[str, Any]], None]


def _other_char(text: str) -> str:
    """``text`` with its second-to-last character changed (inside the last base64url part)."""
    c = "A" if text[-2] != "A" else "B"
    return text[:-2] + c + text[-1]


def _event(part: str, name: str, value: Any) -> Change:
    def change(doc: dict[str, Any]) -> None:
        event = json.loads(doc[part]["event"])
        event[name] = value
        doc[part]["event"] = json.dumps(event, sort_keys=True, separators=(",", ":"))

    return change


def _proof_line(which: str) -> Change:
    def change(doc: dict[str, Any]) -> None:
        head, sep, note = doc["disclosed"]["proof"].partition("\n\n")
        lines = head.split("\n")
        i = next(n for n, line in enumerate(lines) if line.startswith("index "))
        if which == "index":
            lines[i] = f"index {int(lines[i].split()[1]) + 1}"
        else:
            raw = bytearray(base64.b64decode(lines[i + 1]))
            raw[0] ^= 1
            lines[i + 1] = base64.b64encode(bytes(raw)).decode()
        doc["disclosed"]["proof"] = "\n".join(lines) + sep + note

    return change


def _checkpoint(how: str) -> Change:
    def change(doc: dict[str, Any]) -> None:
        head, sep, note = doc["disclosed"]["proof"].partition("\n\n")
        body, _, signatures = note.partition("\n\n")
        lines = body.split("\n")
        if how == "root":  # another root hash under the same signature lines
            raw = bytearray(base64.b64decode(lines[2]))
            raw[0] ^= 1
            lines[2] = base64.b64encode(bytes(raw)).decode()
            forged = "\n".join(lines) + "\n\n" + signatures
        else:  # the same body, signed by a key the registry does not list
            text = ("\n".join(lines) + "\n").encode()
            forged = sign_note(text, doc["origin"], Ed25519PrivateKey.generate()).decode()
        doc["disclosed"]["proof"] = head + sep + forged

    return change


def _registry_key(doc: dict[str, Any]) -> None:
    """The registry's payload with one key's x swapped, the root's signature left as it was."""
    header, payload, signature = doc["registry"].split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    jwk = data["members"][0]["keys"][0]["jwk"]
    jwk["x"] = base64.urlsafe_b64encode(bytes(32)).rstrip(b"=").decode()
    swapped = base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    doc["registry"] = f"{header}.{swapped}.{signature}"


#: (name, change, the kind verify names). An event edited and re-canonicalised no longer
#: hashes to the logged entry, so it is refused as ``proof`` ("the event or its inclusion path
#: was altered": from the pack alone the two cannot be told apart).
TAMPERINGS: tuple[tuple[str, Change, Tampered], ...] = (
    ("event-field", _event("disclosed", "recipient", "kelder-other"), Tampered.PROOF),
    ("event-digest", _event("disclosed", "disclosure_digest", "0" * 64), Tampered.PROOF),
    (
        "event-not-canonical",
        lambda d: d["disclosed"].update(event=d["disclosed"]["event"] + " "),
        Tampered.EVENT,
    ),
    ("event-swapped", lambda d: d.update(disclosed=d["acknowledged"]), Tampered.EVENT),
    ("ack-event-status", _event("acknowledged", "status", "rejected"), Tampered.PROOF),
    ("proof-path", _proof_line("hash"), Tampered.PROOF),
    ("proof-index", _proof_line("index"), Tampered.PROOF),
    ("checkpoint-root", _checkpoint("root"), Tampered.CHECKPOINT),
    ("checkpoint-signer", _checkpoint("signer"), Tampered.CHECKPOINT),
    ("checkpoint-origin", lambda d: d.update(origin="elsewhere.example/log"), Tampered.CHECKPOINT),
    ("disclosure-jwe", lambda d: d.update(jwe=_other_char(d["jwe"])), Tampered.DISCLOSURE),
    ("jws-not-the-brokers", lambda d: d.update(jws=d["ack"]), Tampered.JWS),
    ("registry-bytes", lambda d: d.update(registry=_other_char(d["registry"])), Tampered.REGISTRY),
    ("registry-key-swapped", _registry_key, Tampered.REGISTRY),
    ("ack-bytes", lambda d: d.update(ack=_other_char(d["ack"])), Tampered.ACKNOWLEDGEMENT),
    ("ack-not-a-receipt", lambda d: d.update(ack=d["registry"]), Tampered.ACKNOWLEDGEMENT),
    ("format", lambda d: d.update(format="cairn-evidence/2"), Tampered.MALFORMED),
)


def check_every_tampering(pack: bytes, root_key: Path, folder: Path) -> None:
    """Each change of ``TAMPERINGS`` to ``pack``: ``cairn evidence verify --root-key`` exits
    1 with one line naming its kind, never a traceback; the untouched pack verifies."""
    runner = CliRunner()
    original = folder / "pack.json"
    original.write_bytes(pack)
    result = runner.invoke(evidence, ["verify", str(original), "--root-key", str(root_key)])
    assert result.exit_code == 0, result.output
    for name, change, kind in TAMPERINGS:
        doc = json.loads(pack)
        change(doc)
        path = folder / f"{name}.json"
        path.write_text(json.dumps(doc), encoding="utf-8")
        result = runner.invoke(evidence, ["verify", str(path), "--root-key", str(root_key)])
        assert result.exit_code == 1, (name, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1, (name, result.output)
        assert lines[0].startswith(f"Error: the evidence does not verify: {kind.value}: "), (
            name,
            lines[0],
        )
        assert "Traceback" not in result.output
