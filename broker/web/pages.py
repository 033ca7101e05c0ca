"""The dashboards' static pages: only named files, strict security headers, JSON beside them.

The ops view (broker) and the IG view (auditor) are small static pages under
``broker/web/static/`` (vanilla JavaScript, no external resources). Nothing from a URL reaches
the file system: a route serves only the file names it was given.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from importlib import resources
from typing import Any, Final

from aiohttp import web

__all__ = ["HEADERS", "json_page", "static_file", "static_route"]

_STATIC: Final = resources.files("broker.web") / "static"
# Pages load nothing from anywhere but their own origin, and are never cached or framed.
HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def static_file(name: str, content_type: str) -> web.Response:
    body = (_STATIC / name).read_bytes()
    return web.Response(body=body, content_type=content_type, charset="utf-8", headers=HEADERS)


def static_route(files: Mapping[str, str]) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Serve only the named files: no directory listing, no path from the URL reaches disk."""

    async def handler(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in files:
            raise web.HTTPNotFound(text=f"no such dashboard file: {name}")
        return static_file(name, files[name])

    return handler


def json_page(body: Mapping[str, Any]) -> web.Response:
    return web.json_response(body, headers=HEADERS)
