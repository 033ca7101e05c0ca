"""Loading the federation's member agencies from ``<federation_dir>/agencies.yaml``."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from schemas.decode import field_problems
from schemas.errors import SchemaError
from schemas.federation import Federation

__all__ = ["load_federation"]


def load_federation(federation_dir: Path) -> Federation:
    """Read and validate the agencies file; raise SchemaError saying which entry is wrong."""
    path = federation_dir / "agencies.yaml"
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SchemaError(
            f"no federation file at {path}; set CAIRN_FEDERATION_DIR to the folder holding "
            "agencies.yaml"
        ) from None
    except yaml.YAMLError as exc:
        raise SchemaError(f"{path} is not valid YAML: {exc}") from None
    try:
        return Federation.model_validate(raw)
    except ValidationError as exc:
        problems = field_problems(exc)
        raise SchemaError(f"{path} is not a valid federation file", problems) from None
