"""The JSON Schema files other-language adapters build against, exported from the models.

The files under ``schemas/json/`` are checked in; a unit test fails when they drift from the
models, so regenerate them with ``cairn schemas export`` after changing a model.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from pydantic import BaseModel

from schemas.dash import DashQuestionSet
from schemas.disclosure import Disclosure
from schemas.encompass import EncompassNotification
from schemas.receipt import Acknowledgement, Receipt
from schemas.referral import Referral

__all__ = ["JSON_DIR", "MESSAGES", "drifted", "json_schemas", "render", "write_json_schemas"]

#: Where the checked-in schema files live.
JSON_DIR: Final = Path(__file__).parent / "json"
_DIALECT = "https://json-schema.org/draft/2020-12/schema"

#: File stem -> model, for every message exported.
MESSAGES: Final[Mapping[str, type[BaseModel]]] = MappingProxyType(
    {
        "acknowledgement": Acknowledgement,
        "dash-question-set": DashQuestionSet,
        "disclosure": Disclosure,
        "encompass-notification": EncompassNotification,
        "receipt": Receipt,
        "referral": Referral,
    }
)


def json_schemas() -> dict[str, dict[str, Any]]:
    """File stem -> JSON Schema (draft 2020-12) of each message, as it is validated on input."""
    out: dict[str, dict[str, Any]] = {}
    for stem, model in MESSAGES.items():
        schema = model.model_json_schema(mode="validation")
        out[stem] = {"$schema": _DIALECT, "$id": f"urn:cairn:schema:{stem}", **schema}
    return out


def render(schema: Mapping[str, Any]) -> str:
    """The exact text written to a schema file: stable key order, two-space indent."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_json_schemas(directory: Path = JSON_DIR) -> list[Path]:
    """Write ``<stem>.schema.json`` for every message; each via a temp file and os.replace."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, schema in json_schemas().items():
        path = directory / f"{stem}.schema.json"
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{stem}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(render(schema))
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; these are checked-in, public files
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written.append(path)
    return written


def drifted(directory: Path = JSON_DIR) -> list[str]:
    """Names of the schema files that are missing or differ from what the models export."""
    out = []
    for stem, schema in json_schemas().items():
        path = directory / f"{stem}.schema.json"
        if not path.is_file() or path.read_text(encoding="utf-8") != render(schema):
            out.append(path.name)
    return out
