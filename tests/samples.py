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
    """A sample referral as a dict, with a fresh referral id so tests never collide."""
    data: dict[str, Any] = json.loads((SAMPLES / name).read_text(encoding="utf-8"))
    data["header"]["referral_id"] = str(uuid.uuid4())
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
