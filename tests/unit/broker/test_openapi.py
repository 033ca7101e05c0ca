"""The OpenAPI documents against the code: generated, checked in, valid, and true to the apps.

Each checked-in document (broker, auditor, gateway) is a valid OpenAPI 3.1 document and is
exactly what ``cairn schemas openapi`` generates now; the broker's app has every documented
operation as a route and every route documented; every problem type the broker's middleware
can answer with is a component whose schema accepts the body ``problem_for`` builds; the broker
serves its document at /openapi.json. The auditor's routes: tests/unit/audit/test_openapi.py;
the gateway's: tests/unit/gateway/test_api.py.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from referencing import Registry, Resource

import broker.web
from broker.cli.schemas import OPENAPI_DOCUMENTS, openapi_documents, schemas
from broker.config import Settings
from broker.kafka.transport import MemoryTransport
from broker.policy.admission import PolicyRefusal
from broker.state import SqliteStore
from broker.web.app import create_app
from broker.web.openapi import service_problem_types
from broker.web.problems import PROBLEM_TYPES, REASON_TYPES, problem_for
from keys.errors import VerificationError as KeyVerificationError
from schemas.errors import CairnError, FieldProblem, InputError
from schemas.federation import Federation
from schemas.openapi import PROBLEM_MEDIA_TYPE, document_drifted, render
from tests.conftest import FederationKeys

BROKER_DOC = Path(broker.web.__file__).with_name("openapi.json")
METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def documented(document: dict[str, Any]) -> set[tuple[str, str]]:
    """(method, path) of every operation the document describes."""
    return {
        (method, path)
        for path, item in document["paths"].items()
        for method in item
        if method in METHODS
    }


def routes(app: Any) -> set[tuple[str, str]]:
    """(method, path) of every route registered on an aiohttp app (HEAD: aiohttp's own)."""
    return {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }


def validator(document: dict[str, Any], component: str) -> Draft202012Validator:
    """A JSON Schema validator for ``component``, its references resolved in ``document``."""
    registry: Registry[Any] = Registry().with_resource("urn:doc", Resource.opaque(document))  # type: ignore[call-arg]
    return Draft202012Validator(
        {"$ref": f"urn:doc#/components/schemas/{component}"}, registry=registry
    )


@pytest.mark.parametrize("path", sorted(OPENAPI_DOCUMENTS), ids=lambda p: p.parent.name)
def test_each_checked_in_document_is_valid_openapi_3_1(path: Path) -> None:
    """openapi-spec-validator accepts the checked-in file as an OpenAPI 3.1 document."""
    document = _load(path)
    validate(document)  # raises on an invalid document
    assert document["openapi"].startswith("3.1")


@pytest.mark.parametrize("path", sorted(OPENAPI_DOCUMENTS), ids=lambda p: p.parent.name)
def test_each_checked_in_document_is_what_the_code_generates(path: Path) -> None:
    """The file is byte for byte what its builder renders now ('cairn schemas openapi')."""
    generated = openapi_documents()[path]
    assert path.read_text(encoding="utf-8") == render(generated), (
        f"{path} is stale: run 'cairn schemas openapi' and commit"
    )


def test_drift_is_detected_and_check_fails_on_it(tmp_path: Path) -> None:
    """A document that differs by one summary is drifted; 'schemas openapi --check' passes on
    the tree as it is (the check is not vacuous: the first half shows it can fail)."""
    document = openapi_documents()[BROKER_DOC]
    stale = tmp_path / "openapi.json"
    stale.write_text(render(document), encoding="utf-8")
    assert not document_drifted(stale, document)
    changed = json.loads(render(document))
    changed["paths"]["/healthz"]["get"]["summary"] = "something else"
    stale.write_text(render(changed), encoding="utf-8")
    assert document_drifted(stale, document)
    assert document_drifted(tmp_path / "missing.json", document)
    result = CliRunner().invoke(schemas, ["openapi", "--check"])
    assert result.exit_code == 0, result.output


def test_the_broker_routes_are_the_documented_operations(
    settings: Settings, federation: Federation, federation_keys: FederationKeys
) -> None:
    """Every route of 'cairn serve''s app (ops view included) is documented with its method,
    and every documented operation is a route."""
    app = create_app(
        settings,
        federation,
        MemoryTransport(),
        federation_keys.trust(),
        store=SqliteStore(None),
        dashboard=True,
    )
    assert routes(app) == documented(_load(BROKER_DOC))


def test_every_problem_type_of_the_broker_is_a_component() -> None:
    """Each (status, slug, title) of problems.py's tables is a component schema with that
    type URI, status and title as constants; every problem a response names exists."""
    document = _load(BROKER_DOC)
    components = document["components"]["schemas"]
    mapped = [(s, slug, t) for _c, s, slug, t in PROBLEM_TYPES] + list(REASON_TYPES.values())
    for status, slug, title in mapped:
        schema = components[f"problem.{slug}"]
        assert schema["properties"]["type"]["const"] == f"urn:cairn:problem:{slug}"
        assert schema["properties"]["status"]["const"] == status
        assert schema["properties"]["title"]["const"] == title
    text = json.dumps(document["paths"])
    named = {part.split('"', 1)[0] for part in text.split("#/components/schemas/")[1:]}
    assert named <= set(components)
    for item in document["paths"].values():
        for operation in item.values():
            for status, response in operation["responses"].items():
                if PROBLEM_MEDIA_TYPE in response.get("content", {}):
                    assert int(status) >= 400


def _instances() -> list[CairnError]:
    """One error of each class the broker maps, and a key failure for each mapped reason."""
    found: list[CairnError] = []
    for cls, _status, _slug, _title in PROBLEM_TYPES:
        try:
            parameters = list(inspect.signature(cls).parameters)
        except ValueError:  # Exception's own __init__
            parameters = []
        if parameters[:1] == ["limit_bytes"]:
            found.append(cls(1000))  # type: ignore[call-arg]
        elif parameters[:1] == ["grace_s"]:
            found.append(cls(2.0, 100))  # type: ignore[call-arg]
        elif issubclass(cls, PolicyRefusal):
            found.append(
                cls("no basis", (FieldProblem("consent", "missing"),), ("lawful_basis.missing",))
            )
        elif issubclass(cls, InputError):
            found.append(cls("bad", (FieldProblem("header.purpose", "not a code"),)))
        else:
            found.append(cls("down"))
    found.extend(KeyVerificationError(reason, "no") for reason in REASON_TYPES)
    return found


@pytest.mark.parametrize("exc", _instances(), ids=lambda e: type(e).__name__)
def test_each_problem_body_matches_its_documented_schema(exc: CairnError) -> None:
    """problem_for's body, with the middleware's request id, validates against the component
    of its type, and the broker's POST /v1/referrals lists that type under its status."""
    document = _load(BROKER_DOC)
    status, body = problem_for(exc)
    body = {**body, "request_id": "2b7c8a4e-0d7f-4a8e-9b0e-6c1d2e3f4a5b"}
    slug = body["type"].rsplit(":", 1)[1]
    validator(document, f"problem.{slug}").validate(body)
    response = document["paths"]["/v1/referrals"]["post"]["responses"][str(status)]
    schema = response["content"][PROBLEM_MEDIA_TYPE]["schema"]
    listed = [r["$ref"] for r in schema.get("oneOf", [schema])]
    assert f"#/components/schemas/problem.{slug}" in listed


def test_a_problem_body_with_a_member_its_type_lacks_is_refused() -> None:
    """The schemas are closed: an undeclared member, a wrong status or type is invalid."""
    document = _load(BROKER_DOC)
    _status, body = problem_for(InputError("bad"))
    body["request_id"] = "r-1"
    check = validator(document, "problem.bad-request")
    check.validate(body)
    for changed in ({**body, "name": "x"}, {**body, "status": 500}, {**body, "type": "x"}):
        assert not check.is_valid(changed)


def test_service_problem_types_leave_out_the_500() -> None:
    """A 500 is a bug, never part of the contract: no problem type has status 500."""
    assert all(t.status != 500 for t in service_problem_types().values())
    assert "internal" not in service_problem_types()


async def test_the_broker_serves_its_document(
    broker_url: str, federation_keys: FederationKeys
) -> None:
    """GET /openapi.json over mutual TLS answers the checked-in file, as JSON."""
    connector = aiohttp.TCPConnector(ssl=federation_keys.client_ssl("kelder-police"))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(f"{broker_url}/openapi.json") as answer,
    ):
        assert answer.status == 200
        assert answer.content_type == "application/json"
        assert await answer.read() == BROKER_DOC.read_bytes()
