"""The auditor's HTTP contract as an OpenAPI 3.1 document, generated from the code it describes.

``auditor_document()`` builds what ``broker/audit/openapi.json`` holds (``cairn schemas
openapi`` writes it; a unit test fails when the checked-in file drifts, when a route of
``auditor_app`` (the IG view included) is not in it, or a documented path is not a route). The
audit event's schema is the pydantic model's, the override rows' the report's dataclass; the
proofs are ``broker.audit.proofs``' one JSON shape (RFC 9162 §4 names); the problem types are
the broker's (``broker.web.openapi.service_problem_types``: the same middleware answers).

The checkpoint, the hash tiles, the verifier key, the JWK Set and the status are public (``security:
[{}]``: no client certificate needed); every other operation, this document included, is for
the auditor's certificate only.
"""

from __future__ import annotations

from typing import Any, Final

from pydantic import TypeAdapter

from broker.audit.proofs import MAX_PATH
from broker.audit.report import REPORT_COLUMNS, OverrideRow
from broker.audit.service import _IG_FILES
from broker.audit.witness import WitnessResult
from broker.config import Settings
from broker.web.openapi import REQUEST_ID_HEADER, REQUEST_ID_MEMBER, service_problem_types
from keys.jwks import JWK_SET_MEDIA_TYPE
from schemas.audit import IG_REASON_MAX_CHARS, IG_REASON_MIN_CHARS, AuditEvent, IdentifierKind
from schemas.consent import OverrideReason
from schemas.openapi import (
    model_components,
    problem_components,
    problem_responses,
    ref,
    response,
    service_document,
)
from schemas.referral import Purpose

__all__ = ["auditor_document"]

_PUBLIC: Final[list[dict[str, list[str]]]] = [
    {}
]  # OpenAPI 3.1 §4.8.30: an empty requirement, no credentials needed
_BASE64_HASH: Final = {
    "type": "string",
    "contentEncoding": "base64",
    "pattern": "^[A-Za-z0-9+/]{43}=$",
    "description": "A SHA-256 hash, standard base64 (RFC 4648 §4).",
}
_NOTE: Final = {
    "type": ["string", "null"],
    "description": "The checkpoint for that size as a C2SP signed note, if one was signed.",
}


_TIME: Final = {"type": "string", "format": "date-time"}
_COUNT: Final = {"type": "integer", "minimum": 0}
_MAYBE_COUNT: Final = {"type": ["integer", "null"], "minimum": 0}
#: ``broker.audit.service.Auditor.status``.
_STATUS: Final = {
    "type": "object",
    "required": ["size", "next_offset", "lag", "checkpoint", "witnesses", "cosigned_size", "forks"],
    "additionalProperties": False,
    "properties": {
        "size": {**_COUNT, "description": "Entries in the log."},
        "next_offset": {**_COUNT, "description": "The next audit-topic offset the log stores."},
        "lag": {
            **_MAYBE_COUNT,
            "description": "Offsets between the auditor's position and the audit partition's "
            "last stable offset (KIP-98), measured at most every few seconds; 0 when caught "
            "up; null when not measured (Kafka unreachable, not following).",
        },
        "checkpoint": {
            "type": "object",
            "required": ["size", "age_s"],
            "additionalProperties": False,
            "properties": {
                "size": {**_MAYBE_COUNT, "description": "The latest checkpoint's tree size."},
                "age_s": {**_MAYBE_COUNT, "description": "Seconds since it was written."},
            },
        },
        "witnesses": {
            "type": "object",
            "description": "By witness name: its last answer (C2SP tlog-witness).",
            "additionalProperties": {
                "type": "object",
                "required": ["result", "checkpoint_size", "witness_size", "at"],
                "additionalProperties": False,
                "properties": {
                    "result": {
                        "type": "string",
                        "enum": [r.value for r in WitnessResult],
                    },
                    "checkpoint_size": _MAYBE_COUNT,
                    "witness_size": _MAYBE_COUNT,
                    "at": {**_MAYBE_COUNT, "description": "Unix time of the answer."},
                },
            },
        },
        "cosigned_size": {
            "type": "object",
            "description": "By witness name: the largest tree size it has cosigned.",
            "additionalProperties": _COUNT,
        },
        "forks": {**_COUNT, "description": "Forks the witnesses reported, over the log's life."},
    },
}
#: ``keys.jwks.jwk_set``: OKP keys (RFC 8037 §2) with kid, use, alg and Cairn's members.
_JWK_SET: Final = {
    "type": "object",
    "required": ["keys", "cairn_federation", "cairn_registry_serial"],
    "properties": {
        "keys": {
            "type": "array",
            "items": {
                "type": "object",
                "required": [
                    "kty",
                    "crv",
                    "x",
                    "kid",
                    "use",
                    "alg",
                    "cairn_member",
                    "cairn_role",
                    "cairn_status",
                    "cairn_not_before",
                    "cairn_not_after",
                ],
                "properties": {
                    "kty": {"const": "OKP"},
                    "crv": {"enum": ["Ed25519", "X25519"]},
                    "x": {"type": "string", "pattern": "^[A-Za-z0-9_-]{43}$"},
                    "kid": {
                        "type": "string",
                        "pattern": "^[A-Za-z0-9_-]{43}$",
                        "description": "The key's RFC 7638 SHA-256 thumbprint.",
                    },
                    "use": {"enum": ["sig", "enc"]},
                    "alg": {"enum": ["Ed25519", "ECDH-ES+A256KW"]},
                    "cairn_member": {"type": "string"},
                    "cairn_role": {"type": "string"},
                    "cairn_status": {"enum": ["active", "retired"]},
                    "cairn_not_before": _TIME,
                    "cairn_not_after": _TIME,
                    "cairn_retired_at": _TIME,
                    "cairn_vkey": {
                        "type": "string",
                        "description": "A witness's key as its C2SP cosignature/v1 verifier key.",
                    },
                },
                "additionalProperties": False,
            },
        },
        "cairn_federation": {"type": "string"},
        "cairn_registry_serial": {"type": "integer", "minimum": 1},
    },
    "additionalProperties": False,
}


#: The events a query found: leaf index, Kafka offset, the event (Entries, SubjectResult).
_ENTRY_LIST: Final = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["index", "offset", "event"],
        "properties": {
            "index": {"type": "integer", "minimum": 0},
            "offset": {"type": "integer", "minimum": 0},
            "event": ref("AuditEvent"),
        },
        "additionalProperties": False,
    },
}


def _query_parameters() -> list[dict[str, Any]]:
    """The filters of /v1/audit/entries and /v1/audit/overrides (``service._query``)."""

    def text(name: str, description: str) -> dict[str, Any]:
        return {
            "name": name,
            "in": "query",
            "description": description,
            "schema": {"type": "string"},
        }

    return [
        text("agency", "Sender or recipient."),
        text("sender", "The sending agency."),
        text("recipient", "The receiving agency."),
        {
            "name": "purpose",
            "in": "query",
            "schema": {"type": "string", "enum": sorted(p.value for p in Purpose)},
        },
        text("lawful_basis", "The UK GDPR Art 6 basis code."),
        {
            "name": "override",
            "in": "query",
            "description": "true: consent overrides only; false: none.",
            "schema": {"type": "string", "enum": ["true", "false"]},
        },
        {
            "name": "override_reason",
            "in": "query",
            "schema": {"type": "string", "enum": sorted(r.value for r in OverrideReason)},
        },
        text("override_by", "The staff id of who decided the override."),
        text("override_role", "Their role."),
        text("override_paragraph", "The legal paragraph relied on."),
        text("since", "ISO 8601 date or time (UTC if no offset): events at or after it."),
        text("until", "ISO 8601 date or time (UTC if no offset): events before it."),
        {
            "name": "limit",
            "in": "query",
            "description": "The most events to return (at most 10,000).",
            "schema": {"type": "integer", "minimum": 0, "default": 1000},
        },
    ]


def _size(name: str, description: str, *, required: bool) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": {"type": "integer", "minimum": 0},
    }


def _text(media: str, description: str, **headers: Any) -> dict[str, Any]:
    return response(description, media=media, headers={**REQUEST_ID_HEADER, **headers})


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return response(description, schema, headers=REQUEST_ID_HEADER)


def auditor_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``cairn auditor`` (``broker.audit.service.auditor_app``,
    with the IG view)."""
    types = service_problem_types()

    def problems(*slugs: str, public: bool = False) -> dict[str, dict[str, Any]]:
        chosen = [types[s] for s in (*slugs, *(() if public else ("unauthenticated",)))]
        return problem_responses(chosen, headers=REQUEST_ID_HEADER, statuses={"http-error": (413,)})

    no_cache = {"Cache-Control": {"required": True, "schema": {"const": "no-cache"}}}
    entries = _json(ref("Entries"), "The matching events, in log order.")
    paths: dict[str, Any] = {
        "/v1/audit/checkpoint": {
            "get": {
                "operationId": "checkpoint",
                "summary": "The latest signed checkpoint (a C2SP signed note).",
                "responses": {
                    "200": _text("text/plain", "The signed note."),
                    **problems("not-found"),
                },
            }
        },
        "/v1/audit/entries": {
            "get": {
                "operationId": "entries",
                "summary": "The events matching the filters.",
                "parameters": _query_parameters(),
                "responses": {"200": entries, **problems("invalid-referral")},
            }
        },
        "/v1/audit/overrides": {
            "get": {
                "operationId": "overrides",
                "summary": "Every consent override: who decided (role, staff id), why, on what "
                "paragraph, for what. The same filters as /v1/audit/entries.",
                "parameters": _query_parameters(),
                "responses": {
                    "200": _json(ref("Overrides"), "The overrides, in log order."),
                    **problems("invalid-referral"),
                },
            }
        },
        "/v1/audit/proof/inclusion": {
            "get": {
                "operationId": "inclusionProof",
                "summary": "An RFC 9162 §2.1.3 inclusion proof (the JSON of `cairn audit "
                "prove`), with C2SP tlog-proof text when a checkpoint of that size exists.",
                "parameters": [
                    _size("index", "The leaf index (0-based).", required=True),
                    _size("size", "The tree size (default: the log's).", required=False),
                ],
                "responses": {
                    "200": _json(ref("InclusionProof"), "The proof."),
                    **problems("invalid-referral"),
                },
            }
        },
        "/v1/audit/proof/consistency": {
            "get": {
                "operationId": "consistencyProof",
                "summary": "An RFC 9162 §2.1.4 consistency proof between two tree sizes.",
                "parameters": [
                    _size("first", "The earlier tree size (at least 1).", required=True),
                    _size("second", "The later tree size (default: the log's).", required=False),
                ],
                "responses": {
                    "200": _json(ref("ConsistencyProof"), "The proof."),
                    **problems("invalid-referral"),
                },
            }
        },
        "/v1/audit/subject": {
            "post": {
                "operationId": "subject",
                "summary": "Every event about one person, found by identifiers sent in the "
                "body (never in a URL): an NHS number, or names with a date of birth, for the "
                "reason the IG officer gives. The search is itself an audit event (ig_search; "
                "ig_export for CSV: the officer's certificate CN, the reason, the pseudonyms, "
                "never the identifiers), recorded on cairn.audit before anything is searched: "
                "503 if it cannot be. The auditor's or an IG officer's certificate.",
                "parameters": [
                    {
                        "name": "format",
                        "in": "query",
                        "description": "json (the events and the disclosure report) or csv "
                        "(the disclosure report, RFC 4180, an ig_export event).",
                        "schema": {"type": "string", "enum": ["json", "csv"], "default": "json"},
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": ref("SubjectQuery")}},
                },
                "responses": {
                    "200": {
                        "description": "What was searched for, the events, and the disclosures "
                        "with their field groups, delivery and acknowledgement (JSON); or the "
                        "disclosure report as CSV with a header row.",
                        "headers": REQUEST_ID_HEADER,
                        "content": {
                            "application/json": {"schema": ref("SubjectResult")},
                            "text/csv": {"schema": {"type": "string"}},
                        },
                    },
                    **problems("invalid-referral", "http-error", "unavailable"),
                },
            }
        },
        "/v1/audit/log/checkpoint": {
            "get": {
                "operationId": "tlogCheckpoint",
                "summary": "C2SP tlog-tiles `<prefix>/checkpoint`: the latest signed "
                "checkpoint. Public: no client certificate needed.",
                "security": _PUBLIC,
                "responses": {
                    "200": _text("text/plain", "The signed note.", **no_cache),
                    **problems("not-found", public=True),
                },
            }
        },
        "/v1/audit/log/tile/{tail}": {
            "get": {
                "operationId": "tlogTile",
                "summary": "C2SP tlog-tiles: a hash tile `tile/<L>/<N>[.p/<W>]` (public) or an "
                "entry bundle `tile/entries/<N>[.p/<W>]` (the auditor's certificate only), cut "
                "at the latest checkpoint's size.",
                "security": [{}, {"mutualTLS": []}],
                "parameters": [
                    {
                        "name": "tail",
                        "in": "path",
                        "required": True,
                        "description": "The rest of the tile path after `tile/`: `<L>/<N>` or "
                        "`entries/<N>`, N in groups of three digits (`x001/234`), optionally "
                        "`.p/<W>` for a partial tile.",
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "The tile or bundle bytes.",
                        "headers": {
                            **REQUEST_ID_HEADER,
                            "Cache-Control": {"required": True, "schema": {"type": "string"}},
                        },
                        "content": {
                            "application/octet-stream": {
                                "schema": {"type": "string", "format": "binary"}
                            }
                        },
                    },
                    **problems("bad-request", "not-found", "unauthenticated", public=True),
                },
            }
        },
        "/v1/audit/verifier-key": {
            "get": {
                "operationId": "verifierKey",
                "summary": "The checkpoint verifier keys, C2SP signed-note `name+hash+base64`, "
                "one a line. Public.",
                "security": _PUBLIC,
                "responses": {
                    "200": _text("text/plain", "The keys.", **no_cache),
                    **problems("not-found", public=True),
                },
            }
        },
        "/v1/audit/jwks": {
            "get": {
                "operationId": "jwks",
                "summary": "The federation registry's public keys as a JWK Set (RFC 7517 §5; "
                "keys.jwks), revoked keys left out. Public.",
                "security": _PUBLIC,
                "responses": {
                    "200": {
                        "description": "The JWK Set.",
                        "headers": {**REQUEST_ID_HEADER, **no_cache},
                        "content": {JWK_SET_MEDIA_TYPE: {"schema": ref("JwkSet")}},
                    },
                    **problems("registry-untrusted", public=True),
                },
            }
        },
        "/v1/audit/status": {
            "get": {
                "operationId": "auditStatus",
                "summary": "The auditor's own figures (broker.audit.service.Auditor.status): the "
                "log's size and next Kafka offset, its lag behind the audit partition's last "
                "stable offset, the latest checkpoint's size and age, the witnesses' last "
                "answers and the forks reported. Numbers and codes only. Public.",
                "security": _PUBLIC,
                "responses": {
                    "200": {
                        "description": "The snapshot.",
                        "headers": {**REQUEST_ID_HEADER, **no_cache},
                        "content": {"application/json": {"schema": _STATUS}},
                    },
                    **problems(public=True),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "The auditor's own figures (the status route's) as a Prometheus text "
                "exposition, under the broker's names: cairn_auditor_up, cairn_auditor_lag, "
                "cairn_auditor_checkpoint_age_seconds, cairn_audit_witness_forks, "
                "cairn_audit_witness_cosigned_size. Public.",
                "security": _PUBLIC,
                "responses": {
                    "200": _text("text/plain", "The exposition.", **no_cache),
                    **problems(public=True),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document.",
                "responses": {
                    "200": _json({"type": "object"}, "The OpenAPI 3.1 document."),
                    **problems(),
                },
            }
        },
        "/ui/ig": {
            "get": {
                "operationId": "igView",
                "summary": "The IG view (a static page; it reads the audit API).",
                "responses": {
                    "200": _text("text/html", "The page."),
                    **problems(),
                },
            }
        },
        "/ui/ig/api/verify": {
            "post": {
                "operationId": "igVerify",
                "summary": "Verify the log's files now (every leaf, the tree, every checkpoint "
                "with the registry's auditor keys).",
                "responses": {
                    "200": _json(ref("VerifyReport"), "What the verification found."),
                    **problems(),
                },
            }
        },
        "/ui/static/{name}": {
            "get": {
                "operationId": "igViewFile",
                "summary": "The IG view's script and style sheet.",
                "parameters": [
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "enum": sorted(_IG_FILES)},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "The file.",
                        "headers": dict(REQUEST_ID_HEADER),
                        "content": {
                            media: {"schema": {"type": "string"}}
                            for media in sorted(set(_IG_FILES.values()))
                        },
                    },
                    **problems("not-found"),
                },
            }
        },
    }
    schemas: dict[str, Any] = {
        "JwkSet": _JWK_SET,
        "Entries": {
            "type": "object",
            "required": ["entries"],
            "properties": {"entries": _ENTRY_LIST},
            "additionalProperties": False,
        },
        "Overrides": {
            "type": "object",
            "required": ["overrides"],
            "properties": {"overrides": {"type": "array", "items": ref("OverrideRow")}},
            "additionalProperties": False,
        },
        "OverrideRow": {
            **TypeAdapter(OverrideRow).json_schema(mode="serialization"),
            "additionalProperties": False,
        },
        "InclusionProof": {
            "type": "object",
            "description": "broker.audit.proofs.inclusion_document: RFC 9162 §4.11 names.",
            "required": [
                "type",
                "leaf_index",
                "tree_size",
                "leaf_hash",
                "root_hash",
                "inclusion_path",
                "checkpoint",
            ],
            "properties": {
                "type": {"const": "inclusion"},
                "leaf_index": {"type": "integer", "minimum": 0},
                "tree_size": {"type": "integer", "minimum": 1},
                "leaf_hash": _BASE64_HASH,
                "root_hash": _BASE64_HASH,
                "inclusion_path": {"type": "array", "maxItems": MAX_PATH, "items": _BASE64_HASH},
                "checkpoint": _NOTE,
                "tlog_proof": {
                    "type": "string",
                    "description": "The same proof as C2SP tlog-proof text (c2sp.org/"
                    "tlog-proof@v1), when a checkpoint of that size exists.",
                },
            },
            "additionalProperties": False,
        },
        "ConsistencyProof": {
            "type": "object",
            "description": "broker.audit.proofs.consistency_document: RFC 9162 §4.12 names.",
            "required": [
                "type",
                "tree_size_1",
                "tree_size_2",
                "root_hash_1",
                "root_hash_2",
                "consistency_path",
                "checkpoint_1",
                "checkpoint_2",
            ],
            "properties": {
                "type": {"const": "consistency"},
                "tree_size_1": {"type": "integer", "minimum": 1},
                "tree_size_2": {"type": "integer", "minimum": 1},
                "root_hash_1": _BASE64_HASH,
                "root_hash_2": _BASE64_HASH,
                "consistency_path": {
                    "type": "array",
                    "maxItems": 2 * MAX_PATH,
                    "items": _BASE64_HASH,
                },
                "checkpoint_1": _NOTE,
                "checkpoint_2": _NOTE,
            },
            "additionalProperties": False,
        },
        "SubjectQuery": {
            "type": "object",
            "description": "A person's identifiers: an NHS number, or a given and family name "
            "(or aliases) with a date of birth. Never logged; only their pseudonyms are "
            "looked up.",
            "properties": {
                "nhs_number": {"type": ["string", "null"]},
                "given_name": {"type": ["string", "null"]},
                "family_name": {"type": ["string", "null"]},
                "date_of_birth": {"type": ["string", "null"], "format": "date"},
                "aliases": {"type": ["array", "null"], "items": {"type": "string"}},
                "reason": {
                    "type": "string",
                    "minLength": IG_REASON_MIN_CHARS,
                    "maxLength": IG_REASON_MAX_CHARS,
                    "description": "Why the officer searches (a case or request reference), "
                    "kept in the audit log: refused if it holds an identifier.",
                },
            },
            "required": ["reason"],
            "additionalProperties": False,
        },
        "SubjectResult": {
            "type": "object",
            "required": ["searched", "entries", "disclosures"],
            "properties": {
                "searched": {
                    "type": "object",
                    "required": ["identifiers", "pseudonyms", "officer", "reason", "audit_event"],
                    "properties": {
                        "identifiers": {
                            "type": "array",
                            "items": {"enum": sorted(k.value for k in IdentifierKind)},
                        },
                        "pseudonyms": {"type": "array", "items": {"type": "string"}},
                        "officer": {"type": "string"},
                        "reason": {"type": "string"},
                        "audit_event": {"type": "string", "format": "uuid"},
                    },
                },
                "entries": _ENTRY_LIST,
                "disclosures": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": list(REPORT_COLUMNS),
                        "properties": {
                            c: {"type": "integer" if c == "leaf_index" else "string"}
                            for c in REPORT_COLUMNS
                        },
                    },
                },
            },
        },
        "VerifyReport": {
            "type": "object",
            "required": [
                "ok",
                "entries",
                "checkpoints",
                "verified_size",
                "unattested",
                "root",
                "problems",
                "verifiers",
            ],
            "properties": {
                "ok": {"type": "boolean"},
                "entries": {"type": "integer", "minimum": 0},
                "checkpoints": {"type": "integer", "minimum": 0},
                "verified_size": {"type": "integer", "minimum": 0},
                "unattested": {"type": "integer", "minimum": 0},
                "root": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                "problems": {"type": "array", "maxItems": 50, "items": {"type": "string"}},
                "verifiers": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "The verifier keys used, C2SP signed-note name+hash+base64.",
                },
            },
            "additionalProperties": False,
        },
        **model_components([AuditEvent]),
        **problem_components(types.values(), always=REQUEST_ID_MEMBER),
    }
    port = Settings.model_fields["auditor_http_port"].default
    return service_document(
        title="Cairn auditor",
        summary="The verifiable audit log: checkpoints, tiles, proofs and IG queries.",
        description=(
            "Served by `cairn auditor` over TLS. The checkpoint, the hash tiles and the "
            "verifier key are public (they hold no personal data): any tiles client or "
            "witness reads them without a client certificate. Everything else, the events "
            "(entries, entry bundles, subject and override queries) and this document, is "
            "for the auditor's client certificate only (IG tools present it), but the IG "
            "view's operations (the page, verify, checkpoint, overrides, subject), which an "
            "IG officer's own certificate (CN ig-officer.<id>, from the federation CA) may "
            "use too; any other gets 403. Each subject search is itself an audit event. "
            "Every error is an RFC 9457 problem (application/problem+json) whose "
            "`type` is one of the `urn:cairn:problem:` types under components.schemas "
            "(`problem.<slug>`). Generated from the code by `cairn schemas openapi`."
        ),
        port=port,
        client_certificate="The auditor's client certificate, or for the IG view an IG "
        "officer's (federation CA).",
        paths=paths,
        schemas=schemas,
    )
