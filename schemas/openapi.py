"""OpenAPI 3.1 building blocks shared by the broker's, the auditor's and the gateway's documents.

Each HTTP service of Cairn has a machine-readable contract, generated from code and checked in
beside it: ``broker/web/openapi.json`` (``cairn serve``), ``broker/audit/openapi.json``
(``cairn auditor``) and ``gateway/openapi.json`` (``cairn gateway``), each served at
``GET /openapi.json``. ``cairn schemas openapi`` writes them; ``--check`` and a unit test fail
when a checked-in file differs from what the code generates. This module holds what the three
share: request and response schemas taken from the pydantic models, RFC 9457 problem types as
schemas (OpenAPI 3.1 Schema Objects are JSON Schema draft 2020-12, so ``const`` and ``oneOf``
pin each problem's ``type`` and ``status``), the responses that reference them, and the exact
text a document is written as. Nothing here does I/O but ``write_document``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

__all__ = [
    "OPENAPI_VERSION",
    "PROBLEM_MEDIA_TYPE",
    "PROBLEM_PREFIX",
    "ProblemType",
    "document_drifted",
    "model_components",
    "problem_components",
    "problem_responses",
    "ref",
    "render",
    "response",
    "service_document",
    "write_document",
]

OPENAPI_VERSION: Final = "3.1.0"
PROBLEM_MEDIA_TYPE: Final = "application/problem+json"  # RFC 9457 §3
PROBLEM_PREFIX: Final = "urn:cairn:problem:"
_COMPONENTS: Final = "#/components/schemas/"


def ref(name: str) -> dict[str, str]:
    """A reference to the component schema ``name``."""
    return {"$ref": _COMPONENTS + name}


@dataclass(frozen=True)
class ProblemType:
    """One RFC 9457 problem type a service returns, as its document states it.

    ``status`` and ``title`` are None where they vary (an HTTP error passed through with its
    own status and reason phrase); ``title`` is a tuple where the type has a few titles.
    ``members`` are the extension members (RFC 9457 §3.2) the type may carry, as JSON Schemas;
    ``required`` the ones it always carries; ``detail`` whether it always carries a ``detail``.
    """

    slug: str
    status: int | None
    title: str | tuple[str, ...] | None
    description: str
    members: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    detail: bool = True

    @property
    def uri(self) -> str:
        return PROBLEM_PREFIX + self.slug

    @property
    def component(self) -> str:
        """The name of its component schema."""
        return f"problem.{self.slug}"

    def merged(self, other: ProblemType) -> ProblemType:
        """This type and ``other`` (the same slug, reached another way) as one: the members
        of either, required only where both require them."""
        if (other.slug, other.status, other.title) != (self.slug, self.status, self.title):
            raise ValueError(f"problem type {self.slug} is mapped twice, differently")
        members = {**self.members}
        for name, schema in other.members.items():
            if name in members and members[name] != schema:
                members[name] = {"anyOf": [dict(members[name]), dict(schema)]}
            else:
                members[name] = schema
        required = tuple(r for r in self.required if r in other.required)
        return ProblemType(
            self.slug,
            self.status,
            self.title,
            self.description,
            members,
            required,
            self.detail and other.detail,
        )


def problem_components(
    types: Iterable[ProblemType], *, always: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """One component schema per problem type: the RFC 9457 §3.1 members (``type`` and, where
    fixed, ``status`` and ``title`` as constants; ``detail``), the extension members, and
    ``always``: extension members every problem of the service carries (a request id)."""
    out: dict[str, dict[str, Any]] = {}
    for t in types:
        properties: dict[str, Any] = {
            "type": {"const": t.uri, "description": "The problem type (RFC 9457 §3.1.1)."},
            "title": _title(t.title),
            "status": (
                {"type": "integer", "minimum": 400, "maximum": 599}
                if t.status is None
                else {"const": t.status}
            ),
            "detail": {
                "type": "string",
                "description": "What went wrong and what to do next; never a value sent.",
            },
        }
        properties.update({k: dict(v) for k, v in (always or {}).items()})
        properties.update({k: dict(v) for k, v in t.members.items()})
        fixed = ["type", "title", "status", *(["detail"] if t.detail else [])]
        required = [*fixed, *(always or {}), *t.required]
        out[t.component] = {
            "title": t.title if isinstance(t.title, str) else t.slug,
            "description": t.description,
            "type": "object",
            "required": list(dict.fromkeys(required)),
            "properties": properties,
            "additionalProperties": False,
        }
    return out


def _title(title: str | tuple[str, ...] | None) -> dict[str, Any]:
    if title is None:
        return {"type": "string"}
    if isinstance(title, str):
        return {"const": title}
    return {"enum": list(title)}


def problem_responses(
    types: Sequence[ProblemType],
    *,
    headers: Mapping[str, Any] | None = None,
    statuses: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, dict[str, Any]]:
    """The responses (by status) of an operation that can return ``types``: per status, a
    ``oneOf`` of the types with that status. A type whose status varies is listed under the
    statuses ``statuses[slug]`` names."""
    by_status: dict[int, list[ProblemType]] = {}
    for t in types:
        for status in [t.status] if t.status is not None else (statuses or {}).get(t.slug, ()):
            by_status.setdefault(status, []).append(t)
    out: dict[str, dict[str, Any]] = {}
    for status in sorted(by_status):
        listed = sorted(by_status[status], key=lambda t: t.slug)
        schema: dict[str, Any] = (
            ref(listed[0].component)
            if len(listed) == 1
            else {"oneOf": [ref(t.component) for t in listed]}
        )
        names = ", ".join(f"`{t.slug}`" for t in listed)
        response: dict[str, Any] = {
            "description": f"An RFC 9457 problem: {names}.",
            "content": {PROBLEM_MEDIA_TYPE: {"schema": schema}},
        }
        if headers:
            response["headers"] = dict(headers)
        out[str(status)] = response
    return out


def model_components(
    models: Sequence[type[BaseModel]], mode: JsonSchemaMode = "serialization"
) -> dict[str, dict[str, Any]]:
    """The JSON Schemas of ``models`` and of every model they use, as component schemas that
    reference each other by ``#/components/schemas/<Name>``; ``mode`` as pydantic's (a
    response is serialised, a request body validated)."""
    _, top = models_json_schema([(m, mode) for m in models], ref_template=_COMPONENTS + "{model}")
    return {name: schema for name, schema in top.get("$defs", {}).items()}


def response(
    description: str,
    schema: Mapping[str, Any] | None = None,
    *,
    media: str = "application/json",
    headers: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A Response Object (OpenAPI 3.1 §4.8.17): ``media`` content of ``schema`` (a string when
    not given), with ``headers``."""
    out: dict[str, Any] = {"description": description}
    if headers:
        out["headers"] = dict(headers)
    out["content"] = {media: {"schema": dict(schema) if schema is not None else {"type": "string"}}}
    return out


def service_document(
    *,
    title: str,
    summary: str,
    description: str,
    port: int,
    client_certificate: str,
    paths: Mapping[str, Any],
    schemas: Mapping[str, Any],
) -> dict[str, Any]:
    """One service's OpenAPI 3.1 document: served on loopback ``port`` over mutual TLS (the
    ``mutualTLS`` security scheme, OpenAPI 3.1 §4.8.27, described by ``client_certificate``)."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": title, "version": "1.0", "summary": summary, "description": description},
        "servers": [{"url": f"https://127.0.0.1:{port}"}],
        "security": [{"mutualTLS": []}],
        "paths": dict(paths),
        "components": {
            "securitySchemes": {
                "mutualTLS": {"type": "mutualTLS", "description": client_certificate}
            },
            "schemas": dict(schemas),
        },
    }


def render(document: Mapping[str, Any]) -> str:
    """The exact text a document is checked in as: two-space indent, keys in the order built."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def write_document(path: Path, document: Mapping[str, Any]) -> None:
    """Write ``document`` at ``path`` through a temp file and ``os.replace``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(render(document))
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; these are checked-in, public files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def document_drifted(path: Path, document: Mapping[str, Any]) -> bool:
    """Whether the file at ``path`` is missing or differs from ``document`` as rendered."""
    return not path.is_file() or path.read_text(encoding="utf-8") != render(document)
