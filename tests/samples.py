"""Access to the synthetic sample referrals and the personal data they contain."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
FEDERATION_DIR = REPO / "deploy" / "federation"
SAMPLES = FEDERATION_DIR / "samples"


def sample(name: str = "referral-high-risk.json") -> dict[str, Any]:
    """A sample referral (or Encompass notice) as a dict, with a fresh message id (its
    ``referral_id``, or a notice's ``notification_id``) so tests never collide."""
    data: dict[str, Any] = json.loads((SAMPLES / name).read_text(encoding="utf-8"))
    header = data["header"]
    header["notification_id" if "notification_id" in header else "referral_id"] = str(uuid.uuid4())
    return data


def sample_bytes(**header_overrides: Any) -> bytes:
    data = sample()
    data["header"].update(header_overrides)
    return json.dumps(data).encode()


def personal_values(data: dict[str, Any]) -> list[str]:
    """Every personal value in a sample: what must never show up in Kafka metadata or logs."""
    victim = data["victim"]
    values = [victim["given_name"], victim["family_name"], victim["date_of_birth"]]
    values += list(victim.get("aliases", []))
    if victim.get("nhs_number"):
        values.append(victim["nhs_number"])
    if victim.get("address"):
        values += [*victim["address"]["lines"], victim["address"]["postcode"]]
    return values


# Keys under which the samples hold personal data (Cairn's own models, the police export, FHIR).
_PERSONAL_KEYS = frozenset(
    {
        "given_name",
        "family_name",
        "aliases",
        "date_of_birth",
        "nhs_number",
        "lines",
        "postcode",
        "phone",
        "number",
        "name",
        "given",
        "family",
        "birthDate",
        "line",
        "postalCode",
        "child_given_name",
        "child_family_name",
        "child_date_of_birth",
    }
)
_CONTACT_KEYS = frozenset({"contacts", "telecom", "routes", "contact_routes"})


def _walk(node: Any, key: str | None, out: set[str]) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            if k in _CONTACT_KEYS:
                _walk(v, "contact", out)
            _walk(v, k, out)
    elif isinstance(node, list):
        for v in node:
            _walk(v, key, out)
    elif isinstance(node, str) and len(node) >= 4:
        if key in _PERSONAL_KEYS:
            out.add(node)
        elif key in ("value", "contact") and sum(c.isdigit() for c in node) >= 8:
            out.add(node)  # a phone number, also without its spaces
            out.add("".join(c for c in node if c.isdigit()))


def all_personal_values() -> set[str]:
    """Every name, date of birth, NHS number, phone number and address line in every sample."""
    out: set[str] = set()
    for path in sorted(SAMPLES.iterdir()):
        if path.suffix == ".jsonl":
            docs = []
            for line in path.read_text().splitlines():
                try:
                    docs.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # the "with errors" sample has deliberately broken lines
        elif path.suffix == ".json":
            docs = [json.loads(path.read_text())]
        else:
            continue
        for doc in docs:
            _walk(doc, None, out)
    return out
