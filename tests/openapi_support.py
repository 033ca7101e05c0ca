"""Helpers for running the OpenAPI documents against live services with schemathesis.

Schemathesis calls through ``requests``; ``tls_session`` gives it a session that presents a
federation member's real client certificate (the same ``ssl.SSLContext`` the aiohttp clients
of the other tests use) and checks the server against the federation CA. ``conforms`` is the
set of checks every run asserts: no 5xx, and every response's status code, content type,
headers and body as the document states them.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from schemathesis.checks import CheckFunction, not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

#: What each generated call must pass.
CHECKS: list[CheckFunction] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,  # a request the document says is invalid gets a 4xx
    unsupported_method,  # a method the document does not list gets 405 with Allow
]


class _Context(HTTPAdapter):
    """An adapter whose connections use one given ``ssl.SSLContext``."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self._context
        super().init_poolmanager(*args, **kwargs)


def tls_session(context: ssl.SSLContext, ca_file: Path) -> requests.Session:
    """A requests session over ``context`` (a client certificate), the server checked against
    ``ca_file``."""
    session = requests.Session()
    session.mount("https://", _Context(context))
    session.verify = str(ca_file)
    return session
