"""Helpers for running the OpenAPI documents against live services with schemathesis.

Schemathesis calls through ``requests``; ``tls_session`` gives it a session that presents a
federation member's real client certificate (the same ``ssl.SSLContext`` the aiohttp clients
of the other tests use) and checks the server against the federation CA. ``conforms`` is the
set of checks every run asserts: no 5xx, and every response's status code, content type,
headers and body as the document states them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import requests
from aiohttp import web
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

T = TypeVar("T")

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


class LoopThread:
    """An asyncio event loop on a thread of its own, for an in-process server that a
    synchronous client (schemathesis, requests) calls: ``run`` waits for a coroutine there,
    ``enter`` keeps an async context manager open there until ``close``."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._stack = contextlib.AsyncExitStack()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def enter(self, manager: contextlib.AbstractAsyncContextManager[T]) -> T:
        return self.run(self._stack.enter_async_context(manager))

    def defer(self, close: Callable[[], Awaitable[object]]) -> None:
        """Have ``close`` awaited there at ``close()``, after what was entered later."""
        self._stack.push_async_callback(close)

    def close(self) -> None:
        try:
            self.run(self._stack.aclose())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(30)
            self.loop.close()


@contextlib.asynccontextmanager
async def serving(app: web.Application, context: ssl.SSLContext) -> AsyncIterator[str]:
    """``app`` on a free loopback port over ``context``; yields its URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
        yield f"https://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
