"""Where the broker and the auditor listen: every connection is bounded in time and in number.

aiohttp on its own waits as long as a client likes: for the TLS handshake, for the first
request head, for a body sent a byte at a time. A handful of such clients would hold the
broker's sockets for ever. So ``start_server`` accepts connections itself, does the TLS
handshake with a timeout (``loop.connect_accepted_socket``), and puts a ``_Connection`` between
each transport and aiohttp's request handler, which keeps one timer per connection:

========================  ============================================  ======================
stage                     bound (setting)                               when it runs out
========================  ============================================  ======================
accepting                 ``http_max_connections`` open in all          closed at once
TLS handshake             ``http_tls_handshake_timeout_s``              closed
the first request head    ``http_header_timeout_s`` from the handshake  closed
between requests          ``http_keepalive_idle_s`` from an answer to   closed
                          the next request's first byte (sending the
                          answer included: a client must read it)
any later request head    ``http_header_timeout_s`` from its first byte closed
the request body          ``http_body_grace_s``, then on average        408 ``request-timeout``,
                          ``http_body_min_rate_bytes_per_s``            then closed
per agency                ``http_max_connections_per_client`` open      429 ``too-many-
                          (the verified client certificate's agency)    connections``, closed
========================  ============================================  ======================

A connection cut before its request head has arrived is closed without an answer: there is no
request to answer. Once the head has arrived HTTP lets the server say it stopped waiting, so a
body too slow gets a 408 (the body stream raises ``RequestTimeout``, whichever handler reads
it, and ``broker.web.problems`` maps it) with ``Connection: close``. A connection over its
agency's limit is still TLS-authenticated (that is how the agency is known), then its first
request is answered 429 with ``Retry-After`` and the connection closed, so a well-behaved
client learns why; one that sends nothing is cut by the header timeout like any other. The
total limit counts connections from the moment they are accepted, handshakes included, so a
flood of silent sockets cannot exhaust the process's files: over it, a new connection is closed
before any TLS work. While a request is being handled after its body (a publish to Kafka, say)
no timer runs: the handler's own bounds (``publish_timeout_s``) apply.

Each cut or refusal counts in ``cairn_http_connections_cut_total{reason}`` and logs
``http.connection_cut`` with the reason code and, when known, the agency of the verified
certificate; never anything the client sent. The reason codes are ``CutReason``.

The hooks into aiohttp are its public ones: the ``Server``'s ``request_factory`` (a head has
arrived) and ``request_handler`` (it has been answered), the protocol methods, and the handler
arguments ``keepalive_timeout`` (here only a backstop: the timers above come first) and
``lingering_time`` (0: a body the broker stopped reading is not drained, the connection closes).
"""

from __future__ import annotations

import asyncio
import contextvars
import socket
import ssl
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import structlog
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader

from broker.config import Settings
from broker.ops.metrics import Metrics
from broker.web.problems import http_problem, problem_response
from keys import peer_agency
from keys.errors import VerificationError as KeyVerificationError
from schemas.errors import RequestTimeout

__all__ = ["CutReason", "Listening", "ServerLimits", "bind_sockets", "start_server"]

log = structlog.get_logger(__name__)

UNIDENTIFIED = "-"  # the bucket of TLS clients whose certificate names no one agency
_ACCEPT_RETRY_S = 0.1  # seconds to wait after a failed accept (out of files, say)


class CutReason(StrEnum):
    """Why a connection was cut off or refused: the metric's and the log's reason codes."""

    TLS_HANDSHAKE = "tls_handshake"
    REQUEST_HEADER = "request_header"
    KEEPALIVE_IDLE = "keepalive_idle"
    BODY_RATE = "body_rate"
    CLIENT_LIMIT = "client_limit"
    TOTAL_LIMIT = "total_limit"


@dataclass(frozen=True)
class ServerLimits:
    """The settings of ``Settings``' "HTTP server timeouts and connection limits", in seconds,
    bytes per second and connections."""

    tls_handshake_s: float
    header_s: float
    keepalive_idle_s: float
    body_grace_s: float
    body_min_rate: int
    per_client: int
    total: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ServerLimits:
        return cls(
            tls_handshake_s=settings.http_tls_handshake_timeout_s,
            header_s=settings.http_header_timeout_s,
            keepalive_idle_s=settings.http_keepalive_idle_s,
            body_grace_s=settings.http_body_grace_s,
            body_min_rate=settings.http_body_min_rate_bytes_per_s,
            per_client=settings.http_max_connections_per_client,
            total=settings.http_max_connections,
        )


class _Guard:
    """What one server has open, by agency, and the one place cut-offs are counted."""

    def __init__(self, limits: ServerLimits, metrics: Metrics | None) -> None:
        self.limits = limits
        self.open = 0  # accepted and not yet closed, handshakes included
        self.connections: dict[web.RequestHandler, _Connection] = {}
        self._metrics = metrics
        self._by_client: Counter[str] = Counter()

    def presented(self, agency: str, ssl_object: ssl.SSLObject) -> None:
        """Tell the credential watch which certificate ``agency`` presented (its expiry)."""
        watch = self._metrics.credential_watch if self._metrics is not None else None
        if watch is not None:
            der = ssl_object.getpeercert(binary_form=True)
            if der:
                watch.presented(agency, der)

    def cut(self, reason: CutReason, agency: str | None = None) -> None:
        if self._metrics is not None:
            self._metrics.connections_cut.labels(reason=reason.value).inc()
        log.info("http.connection_cut", reason=reason.value, tls_agency=agency)

    def admit(self, client: str) -> bool:
        """Count one more connection for ``client``, unless it already has its limit."""
        if self._by_client[client] >= self.limits.per_client:
            return False
        self._by_client[client] += 1
        return True

    def release(self, client: str | None) -> None:
        self.open -= 1
        if client is not None:
            self._by_client[client] -= 1
            if self._by_client[client] <= 0:
                del self._by_client[client]


class _Connection(asyncio.Protocol):
    """Between one transport and aiohttp's handler: one timer, for the stage the client is in.

    Only one of the header, idle and body timers can be due at a time, so one handle serves;
    ``_due`` says which. A due timer never cuts a connection whose request is being handled
    (after its body), nor one that is already closing.
    """

    def __init__(self, guard: _Guard, handler: web.RequestHandler) -> None:
        self._guard = guard
        self._limits = guard.limits
        self._loop = asyncio.get_running_loop()
        self.handler = handler
        self.made = False
        self.refused = False  # over its agency's limit: the first request gets a 429
        self._agency: str | None = None
        self._client: str | None = None  # the agency this connection counts against
        self._transport: asyncio.BaseTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._due: CutReason | None = None
        self._busy = False  # a request head has arrived and is not answered yet
        self._body: StreamReader | None = None
        self._body_start = 0.0
        self._released = False

    # asyncio.Protocol, forwarded to the handler

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made = True
        self._transport = transport
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            try:
                self._agency = peer_agency(ssl_object)
            except KeyVerificationError:
                self._agency = None
            else:
                self._guard.presented(self._agency, ssl_object)
            client = self._agency or UNIDENTIFIED
            if self._guard.admit(client):
                self._client = client
            else:
                self.refused = True
                self._guard.cut(CutReason.CLIENT_LIMIT, self._agency)
        self._guard.connections[self.handler] = self
        self.handler.connection_made(transport)
        self._arm(CutReason.REQUEST_HEADER, self._limits.header_s)

    def data_received(self, data: bytes) -> None:
        if data and self._due is CutReason.KEEPALIVE_IDLE:
            self._arm(CutReason.REQUEST_HEADER, self._limits.header_s)  # a new head begins
        self.handler.data_received(data)

    def eof_received(self) -> None:
        self.handler.eof_received()  # None: the transport closes itself

    def pause_writing(self) -> None:
        self.handler.pause_writing()

    def resume_writing(self) -> None:
        self.handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._body = None
        self._guard.connections.pop(self.handler, None)
        self.release()
        self.handler.connection_lost(exc)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._guard.release(self._client)

    # What the server's request factory and request handler report

    def head_arrived(self, payload: StreamReader) -> None:
        self._busy = True
        self._disarm()
        if not payload.is_eof():
            self._body = payload
            self._body_start = self._loop.time()
            self._check_body()

    def answered(self) -> None:
        self._busy = False
        self._body = None
        self._arm(CutReason.KEEPALIVE_IDLE, self._limits.keepalive_idle_s)

    # The timer

    def _arm(self, reason: CutReason, delay_s: float) -> None:
        # Timers run in an empty context, so a cut-off's log line carries none of the last
        # request's bound values (its request id, say): only what ``_Guard.cut`` names.
        self._disarm()
        self._due = reason
        self._timer = self._loop.call_later(
            delay_s, self._expire, reason, context=contextvars.Context()
        )

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._due = None

    def _closing(self) -> bool:
        return self._transport is None or self._transport.is_closing()

    def _expire(self, reason: CutReason) -> None:
        self._timer = None
        self._due = None
        if self._busy or self._closing():
            return
        self._guard.cut(reason, self._agency)
        self.handler.force_close()

    def _check_body(self) -> None:
        """Due when the body is behind ``grace + received / rate``; the bytes move it on.

        Looked at again only when due (not on every chunk), so a fast body costs one timer.
        """
        self._timer = None
        self._due = None
        body = self._body
        if body is None or body.is_eof() or self._closing():
            return
        limits = self._limits
        due = self._body_start + limits.body_grace_s + body.total_bytes / limits.body_min_rate
        if self._loop.time() < due:
            self._due = CutReason.BODY_RATE
            self._timer = self._loop.call_at(due, self._check_body, context=contextvars.Context())
            return
        self._body = None
        self._guard.cut(CutReason.BODY_RATE, self._agency)
        # Whichever handler reads the body gets the typed error, hence a 408 that closes.
        body.set_exception(RequestTimeout(limits.body_grace_s, limits.body_min_rate))


class _ProblemRequestHandler(web.RequestHandler):
    """aiohttp's request handler, but a message it cannot parse gets a problem, not an echo.

    aiohttp answers a malformed request line or header itself, before any middleware runs,
    with a text/plain body that repeats the bytes the client sent, and logs a traceback at
    ERROR. Here the answer is RFC 9457 problem+json naming no value, and the log line is one
    code. The same goes for the rare 500 or 504 that escapes the middleware.
    """

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("a response was already sent on this connection")
        log.info(
            "http.bad_message", status=status, error=None if exc is None else type(exc).__name__
        )
        slug, title, detail = _BAD_MESSAGES.get(status, _BAD_MESSAGES[400])
        response = problem_response(status, http_problem(status, slug, title, detail))
        response.force_close()
        return response


_BAD_MESSAGES: dict[int, tuple[str, str, str]] = {
    400: ("bad-http", "Bad request", "the request is not valid HTTP/1.1; nothing was read"),
    414: ("uri-too-long", "URI too long", "the request line is too long"),
    413: ("payload-too-large", "Request body too large", "the request is too large"),
    431: (
        "headers-too-large",
        "Request header fields too large",
        "a request header line or field is too long",
    ),
    500: ("internal", "Internal error", "an internal error occurred; nothing was sent"),
    504: ("timeout", "Gateway timeout", "the request took too long; nothing was sent"),
}


def _handler(server: web.Server) -> web.RequestHandler:
    """A ``_ProblemRequestHandler`` built as ``server()`` builds aiohttp's own."""
    kwargs = getattr(server, "_kwargs", None)
    if kwargs is None:  # an aiohttp that keeps its handler arguments elsewhere
        return server()
    return _ProblemRequestHandler(server, loop=asyncio.get_running_loop(), **kwargs)


def _too_many(limit: int) -> web.Response:
    body = http_problem(
        429,
        "too-many-connections",
        "Too many connections",
        f"this agency already has {limit} connections open to this server; "
        "send over those, or close some and try again",
    )
    response = problem_response(429, body)
    response.headers["Retry-After"] = "1"
    response.force_close()
    return response


class Listening:
    """A server started by ``start_server``: its port, and ``close()`` to stop and drain."""

    def __init__(
        self,
        runner: web.AppRunner,
        guard: _Guard,
        sockets: list[socket.socket],
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        self._runner = runner
        self._guard = guard
        self._sockets = sockets
        self._ssl = ssl_context
        self._loop = asyncio.get_running_loop()
        self._opening: set[asyncio.Task[None]] = set()
        self._accepting = [self._loop.create_task(self._accept(s)) for s in sockets]

    @property
    def port(self) -> int:
        return int(self._sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop accepting, drop handshakes in progress, then let aiohttp drain and clean up."""
        for task in self._accepting:
            task.cancel()
        await asyncio.gather(*self._accepting, return_exceptions=True)
        for sock in self._sockets:
            sock.close()
        opening = list(self._opening)
        for task in opening:
            task.cancel()
        await asyncio.gather(*opening, return_exceptions=True)
        await self._runner.cleanup()

    async def _accept(self, listener: socket.socket) -> None:
        """Accept until closed; over the total limit a connection is closed at once."""
        guard = self._guard
        while True:  # ends when close() cancels it
            try:
                sock, _address = await self._loop.sock_accept(listener)
            except OSError as exc:
                log.warning("http.accept_failed", error=type(exc).__name__)
                await asyncio.sleep(_ACCEPT_RETRY_S)
                continue
            if guard.open >= guard.limits.total:
                guard.cut(CutReason.TOTAL_LIMIT)
                sock.close()
                continue
            guard.open += 1
            task = self._loop.create_task(self._open(sock))
            self._opening.add(task)
            task.add_done_callback(self._opening.discard)

    async def _open(self, sock: socket.socket) -> None:
        server = self._runner.server
        assert server is not None  # set up before any socket was bound
        connection = _Connection(self._guard, _handler(server))
        try:
            if self._ssl is None:
                await self._loop.connect_accepted_socket(lambda: connection, sock)
            else:
                timeout = self._guard.limits.tls_handshake_s
                await self._loop.connect_accepted_socket(
                    lambda: connection,
                    sock,
                    ssl=self._ssl,
                    ssl_handshake_timeout=timeout,
                    ssl_shutdown_timeout=timeout,
                )
        except ConnectionAbortedError:  # what asyncio raises when the handshake times out
            self._guard.cut(CutReason.TLS_HANDSHAKE)
        except OSError as exc:  # ssl.SSLError included: a failed handshake, a vanished peer
            log.debug("http.handshake_failed", error=type(exc).__name__)
        finally:
            if not connection.made:  # otherwise connection_lost releases it
                sock.close()
                connection.release()


def bind_sockets(host: str, port: int) -> list[socket.socket]:
    """Listening sockets on every address of ``host`` (all on one port, even for port 0).

    ``cairn serve --workers`` binds them once in the supervisor and hands them to each worker
    (``start_server(sockets=...)``), so that every worker accepts from one queue.
    """
    sockets: list[socket.socket] = []
    seen: set[tuple[int, str | int]] = set()
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        for family, kind, proto, _name, address in infos:
            if (family, address[0]) in seen:
                continue
            seen.add((family, address[0]))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((address[0], port, *address[2:]))
            if port == 0:
                port = int(sock.getsockname()[1])
            sock.listen(128)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


async def start_server(
    app: web.Application,
    settings: Settings,
    ssl_context: ssl.SSLContext | None,
    *,
    metrics: Metrics | None = None,
    sockets: Sequence[socket.socket] | None = None,
) -> Listening:
    """Serve ``app`` on ``settings.http_host``/``http_port`` within the settings' bounds.

    ``metrics`` receives the cut-off counts (the broker's; the auditor has none). ``sockets``
    are listening sockets bound already (``bind_sockets``), used instead of binding; the
    limits then count this process's connections. Call ``close()`` on the result to stop:
    in-flight requests get ``shutdown_timeout_s``.
    """
    limits = ServerLimits.from_settings(settings)
    guard = _Guard(limits, metrics)
    runner = web.AppRunner(
        app,
        shutdown_timeout=settings.shutdown_timeout_s,
        access_log=None,
        keepalive_timeout=limits.keepalive_idle_s + limits.header_s,  # a backstop only
        lingering_time=0,
        max_line_size=settings.http_max_header_bytes,
        max_field_size=settings.http_max_header_bytes,
        max_headers=settings.http_max_headers,
    )
    await runner.setup()
    server = runner.server
    assert server is not None
    inner_factory = server.request_factory
    inner_handler = server.request_handler

    def request_factory(
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: web.RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        connection = guard.connections.get(protocol)
        if connection is not None:
            connection.head_arrived(payload)
        return inner_factory(message, payload, protocol, writer, task)

    async def request_handler(request: web.BaseRequest) -> web.StreamResponse:
        connection = guard.connections.get(request.protocol)
        if connection is None:
            return await inner_handler(request)
        if connection.refused:
            return _too_many(limits.per_client)
        try:
            return await inner_handler(request)
        finally:
            connection.answered()

    server.request_factory = request_factory
    server.request_handler = request_handler
    if sockets is not None:
        for sock in sockets:
            sock.setblocking(False)
        return Listening(runner, guard, list(sockets), ssl_context)
    try:
        bound = bind_sockets(settings.http_host, settings.http_port)
    except BaseException:
        await runner.cleanup()
        raise
    return Listening(runner, guard, bound, ssl_context)
