"""The push server as one ASGI application.

:class:`PushServer` routes each request to the first configured location whose regex
matches the raw path (query ignored), exactly as the original did: publisher locations to
:class:`~pushserver.publisher.Publisher` (through :class:`PublisherLocation`), subscriber
locations to a transport (:class:`Subscriber`), status locations to
:class:`~pushserver.status.Status`. Each is a :class:`Route`: the location, its
:class:`Handler`, and the headers of an answer given before the handler is reached; a new
kind of location is one more handler, not one more branch. Anything else goes to the
``fallback`` application (Django, under ``runpushserver --allrequests``) or gets 404.

Backends are opened by the ASGI lifespan (or ``async with server:``) and closed after it.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

import anyio

from . import __version__
from .authorize import Verifier, create_authorizer
from .backends import create_backend
from .config import LocationConfig, ServerConfig
from .http import (
    REASONS,
    ASGIApp,
    Headers,
    Receive,
    Request,
    Scope,
    Send,
    framed_twice,
    guard_body,
    respond,
    respond_error,
)
from .hub import Hub
from .protocol import decode_channel_id
from .publisher import Publisher
from .status import Status
from .transports.base import Presence
from .transports.longpoll import LongPollTransport
from .transports.sse import SSETransport
from .transports.websocket import CLOSE_TRY_AGAIN_LATER, WebSocketTransport, choose_subprotocol

logger = logging.getLogger("pushserver")

#: Seconds a client refused at ``max_connections`` is asked to wait (``Retry-After``).
BUSY_RETRY_AFTER = 5
RETRY_AFTER = (b"retry-after", str(BUSY_RETRY_AFTER).encode())
BUSY_REASON = "the server is at its connection limit, try again later"
#: Seconds between two log lines about refusals at ``max_connections``.
BUSY_LOG_INTERVAL = 60.0


class Handler(Protocol):
    """What serves the requests one location's regex matches: ``raw_channel`` is the
    regex's group, as it appears in the path (still quoted)."""

    def __call__(
        self, scope: Scope, raw_channel: str, receive: Receive, send: Send, /
    ) -> Awaitable[None]:
        """What answering the request (an HTTP request or a WebSocket) awaits: a coroutine
        function, or a function returning one (:class:`Subscriber`)."""


@dataclass(frozen=True, slots=True)
class Route:
    """One configured location and what serves it."""

    location: LocationConfig
    handler: Handler
    #: The headers of an answer given before the handler is reached (431, a head too
    #: large): a subscriber's or publisher's CORS headers, so that a browser can read it.
    early_headers: Callable[[Request], Headers]


class ConnectionLimit:
    """``max_connections``: the subscriber (and fallback) requests this process serves at
    once, shared by every subscriber location and the fallback. Publishers and status
    pages are not counted: they are few, trusted (``allow_from``) and short, and a flood of
    subscribers must not stop publishing."""

    def __init__(self, limit: int) -> None:
        #: Most requests served at once (0 = no limit).
        self.max_connections = limit
        #: Requests being served now.
        self.active = 0
        self._limit = limit or sys.maxsize
        self._busy_logged = -BUSY_LOG_INTERVAL

    def admit(self) -> bool:
        """Count one more connection in ``active`` (the caller takes it off when done), or
        False at ``max_connections``."""
        if self.active >= self._limit:
            self.log_busy()
            return False
        self.active += 1
        return True

    def log_busy(self) -> None:
        """One line a minute at most while requests are refused at ``max_connections``."""
        now = time.monotonic()
        if now - self._busy_logged >= BUSY_LOG_INTERVAL:
            self._busy_logged = now
            logger.warning(
                "serving max_connections (%d) requests: refusing more with 503 "
                "(WebSocket: close 1013) until some end",
                self.max_connections,
            )


class PublisherLocation:
    """One publisher location: HTTP only, and the channel id decoded and checked before the
    :class:`~pushserver.publisher.Publisher` gets the request."""

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher
        self.max_channel_id_length = publisher.location.max_channel_id_length

    async def __call__(self, scope: Scope, raw_channel: str, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1003})
            return
        request = Request(scope)
        try:
            channel_id = decode_channel_id(raw_channel, self.max_channel_id_length)
        except ValueError as exc:
            await respond_error(send, 400, str(exc), self.publisher.response_headers(request))
            return
        await self.publisher(request, channel_id, receive, send)


class Subscriber:
    """One subscriber location: picks the transport for each request, as nchan does.

    ``Accept: text/event-stream`` on a GET gets server-sent events, a WebSocket upgrade gets
    a WebSocket, anything else long-poll; each only if both the location's ``transports``
    and the process (``runpushserver --transport``) enable it. An event-stream request where
    event streams are off is served as long-poll; a request no enabled transport can serve
    gets 403 (a WebSocket: accepted, then closed with 4403, so a browser sees the code).

    Each request counts against the process's ``max_connections`` while it is served; past
    it the request gets :meth:`busy`.
    """

    def __init__(
        self,
        location: LocationConfig,
        hub: Hub,
        headers: Headers,
        presence: Presence | None,
        process_transports: tuple[str, ...] | None,
        server_header: tuple[bytes, bytes],
        verifier: Verifier | None = None,
        *,
        connections: ConnectionLimit,
    ) -> None:
        self.location = location
        self.headers = headers
        self.connections = connections
        enabled = set(location.transports)
        if process_transports is not None:
            enabled &= set(process_transports)
        self.enabled = frozenset(enabled)
        authorizer = create_authorizer(location, presence, verifier)
        self.longpoll = LongPollTransport(location, hub, headers, presence, authorizer)
        self.sse = SSETransport(location, hub, headers, presence, authorizer)
        self.websocket = WebSocketTransport(
            location,
            hub,
            server_header,
            presence,
            enabled="websocket" in enabled,
            authorizer=authorizer,
        )

    def __call__(
        self, scope: Scope, raw_channel: str, receive: Receive, send: Send
    ) -> Awaitable[None]:
        """What serving the request awaits. Not a coroutine of its own: an event stream's or
        a WebSocket's transport coroutine is returned as it is, and gives its place in
        ``max_connections`` back itself (``connections``), so an open subscriber holds no
        frame of this (about 310 bytes per connection). The caller awaits it at once
        (:meth:`PushServer.__call__`, :meth:`PushServer.awaitable_for`)."""
        connections = self.connections
        if not connections.admit():
            return self.busy(scope, raw_channel, receive, send)
        try:
            if scope["type"] == "websocket":
                return self.websocket(scope, raw_channel, receive, send, connections)
            request = Request(scope)
            if (
                "eventsource" in self.enabled
                and request.method in ("GET", "HEAD")
                and "text/event-stream" in (request.header("accept") or "")
            ):
                scope["pushserver.transport"] = "eventsource"  # for the JSON access log
                return self.sse(request, raw_channel, receive, send, connections)
        except BaseException:
            connections.active -= 1
            raise
        return self.serve_http(request, raw_channel, receive, send)

    async def serve_http(
        self, request: Request, raw_channel: str, receive: Receive, send: Send
    ) -> None:
        """A preflight, a long poll, or its refusal; gives its place in ``max_connections``
        back at the end."""
        try:
            if request.method == "OPTIONS":
                # Before the channel id is checked: a failed preflight would hide the real
                # request's readable error behind a CORS failure.
                await self.longpoll.preflight(request, send)
                return
            if "longpoll" not in self.enabled:
                others = " or ".join(sorted(self.enabled - {"longpoll"})) or "nothing"
                reason = f"long-poll is not enabled here (this location serves {others})"
                await respond_error(send, 403, reason, self.longpoll.response_headers(request))
                return
            try:
                channel_id = decode_channel_id(raw_channel, self.location.max_channel_id_length)
            except ValueError as exc:
                await respond_error(send, 400, str(exc), self.longpoll.response_headers(request))
                return
            await self.longpoll(request, channel_id, receive, send)
        finally:
            self.connections.active -= 1

    async def busy(self, scope: Scope, raw_channel: str, receive: Receive, send: Send) -> None:
        """The process serves ``max_connections`` already: 503 (a WebSocket: close 1013),
        which the client may retry. A preflight is still answered: it is instant, and a
        refused one would show the browser a CORS failure instead of the readable 503."""
        if scope["type"] == "websocket":
            if (await receive())["type"] == "websocket.connect":
                mode = choose_subprotocol(scope.get("subprotocols"))
                await self.websocket.refuse(send, CLOSE_TRY_AGAIN_LATER, BUSY_REASON, mode)
            return
        request = Request(scope)
        if request.method == "OPTIONS":
            await self.longpoll.preflight(request, send)
            return
        headers = [*self.longpoll.response_headers(request), RETRY_AFTER]
        await respond_error(send, 503, BUSY_REASON, headers)


class PushServer:
    """ASGI application serving every configured location."""

    def __init__(
        self,
        config: ServerConfig,
        *,
        fallback: ASGIApp | None = None,
        forcehost: str | None = None,
        presence_factory: object | None = None,
        queue_size: int = 64,
        transports: tuple[str, ...] | None = None,
        channel_verifier: Verifier | None = None,
    ) -> None:
        self.config = config
        self.fallback = fallback
        #: Transports this process serves (``runpushserver --transport``); None = all.
        self.transports = transports
        self.forcehost = forcehost.lower() if forcehost else None
        self.hubs: dict[str, Hub] = {
            name: Hub(create_backend(store.type, store.options), queue_size=queue_size)
            for name, store in config.stores.items()
        }
        server = (config.servername or f"pushserver/{__version__}").encode("latin-1")
        self.server_header = (b"server", server)
        limit = config.max_connections
        #: ``max_connections``, shared by the subscriber locations and the fallback.
        self.connections = ConnectionLimit(default_max_connections() if limit is None else limit)
        #: Most requests served at once (``max_connections``; 0 = no limit).
        self.max_connections = self.connections.max_connections
        self.routes: list[Route] = []
        self.statuses: list[Status] = []
        for location in config.locations:
            if location.type == "status":
                status = Status(
                    location,
                    self.hubs,
                    {name: store.type for name, store in config.stores.items()},
                    [self.server_header],
                    internal_ips=config.internal_ips,
                    secret=config.publisher_secret,
                )
                self.statuses.append(status)
                self.routes.append(Route(location, status, self.server_headers))
                continue
            hub = self.hubs[location.store]
            if location.type == "publisher":
                publisher = Publisher(
                    location,
                    hub,
                    [self.server_header],
                    internal_ips=config.internal_ips,
                    secret=config.publisher_secret,
                )
                route = Route(location, PublisherLocation(publisher), publisher.response_headers)
            else:
                presence = None
                if location.passthrough and callable(presence_factory):
                    presence = presence_factory(location)
                subscriber = Subscriber(
                    location,
                    hub,
                    [self.server_header],
                    presence,
                    transports,
                    self.server_header,
                    channel_verifier,
                    connections=self.connections,
                )
                route = Route(location, subscriber, subscriber.longpoll.response_headers)
            self.routes.append(route)
        self._max_header_size = config.max_header_size
        self._stack: AsyncExitStack | None = None
        #: Set by :func:`pushserver.asgi.get_asgi_application` (any ASGI server): the first
        #: request opens the stores when no lifespan did, and registers the app for
        #: in-process publishing; then it is cleared (one attribute test per request).
        self.first_request: Callable[[Scope], Awaitable[None]] | None = None
        # An async-context presence factory (passthrough) lives as long as the server.
        self._presence_context = (
            presence_factory if hasattr(presence_factory, "__aenter__") else None
        )

    @property
    def default_hub(self) -> Hub:
        return self.hubs.get("default") or next(iter(self.hubs.values()))

    def hub_for(self, location: LocationConfig) -> Hub:
        return self.hubs[location.store]

    # -- lifecycle --------------------------------------------------------------------------

    async def open(self) -> None:
        if self._stack is not None:
            return
        stack = AsyncExitStack()
        for hub in self.hubs.values():
            await stack.enter_async_context(hub)
        if self._presence_context is not None:
            await stack.enter_async_context(self._presence_context)  # type: ignore[arg-type]
        for status in self.statuses:
            await stack.enter_async_context(status.hub)
        live = [status for status in self.statuses if status.location.interval]
        if live:
            # The status pages' snapshots: cancelled first on the way out (LIFO).
            tasks = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(tasks.cancel_scope.cancel)
            for status in live:
                tasks.start_soon(status.run)
        self._stack = stack

    def begin_shutdown(self) -> None:
        """Stop holding subscribers: waiting long polls answer 304 and clients re-poll."""
        for hub in self.hubs.values():
            hub.shutdown()

    async def aclose(self) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            self.begin_shutdown()
            await stack.aclose()

    async def __aenter__(self) -> PushServer:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.open()
                except Exception as exc:
                    logger.exception("push server failed to start")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- requests ---------------------------------------------------------------------------

    def awaitable_for(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """What serving a request awaits: the same as ``self(scope, receive, send)``, but a
        plain request for a push location is its location handler's coroutine itself,
        without this app's :meth:`__call__` frame around it. pushserver's hypercorn wrapper
        (:class:`pushserver.hypercorn._ASGI`) calls this: an idle subscriber then holds one
        coroutine frame fewer, and not the route's match and path string it kept (about
        450 bytes per connection, bench/NOTES.md). Anything else (the lifespan, the first
        request, ``forcehost``, a request declaring a body, a head too large, no location
        matching) is :meth:`__call__`'s."""
        kind = scope["type"]
        if kind == "lifespan" or self.first_request is not None or self.forcehost is not None:
            return self(scope, receive, send)
        guarded_receive, guarded_send = guard_body(scope, receive, send)
        if guarded_receive is not receive or guarded_send is not send:
            # Framed twice (Content-Length and Transfer-Encoding) is among these: both
            # declare a body.
            return self(scope, receive, send)
        found = self.route(scope)
        if found is None or head_size(scope) > self._max_header_size:
            return self(scope, receive, send)
        route, channel = found
        return route.handler(scope, channel, receive, send)

    def route(self, scope: Scope) -> tuple[Route, str] | None:
        """The location the request's path is for and its raw channel id, noted in the
        scope for the JSON access log (:mod:`pushserver.logs`); None when none matches."""
        raw_path = scope.get("raw_path")
        path = raw_path.decode("latin-1") if raw_path else quote(scope["path"])
        for route in self.routes:
            match = route.location.regex.match(path)
            if match is not None:
                channel = match.group(1)
                scope["pushserver.location"] = route.location.type
                scope["pushserver.channel"] = channel
                return route, channel
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self.lifespan(receive, send)
            return
        if self.first_request is not None:
            await self.first_request(scope)
        guarded_receive, guarded_send = guard_body(scope, receive, send)
        # Both framings declare a body: a request guard_body let through has neither.
        declared = guarded_receive is not receive or guarded_send is not send
        receive, send = guarded_receive, guarded_send
        if declared and kind == "http" and framed_twice(scope):
            reason = "Content-Length and Transfer-Encoding together"
            close = [self.server_header, (b"connection", b"close")]
            await respond_error(send, 400, reason, close)
            return
        if self.forcehost is not None and await self.redirect_host(scope, send):
            return
        found = self.route(scope)
        if found is not None:
            route, channel = found
            if head_size(scope) > self._max_header_size:
                await self.head_too_large(scope, route.early_headers, receive, send)
                return
            # Awaited here, not through a helper: see Subscriber.__call__.
            await route.handler(scope, channel, receive, send)
            return
        if self.fallback is not None:
            if head_size(scope) > self._max_header_size:
                await self.head_too_large(scope, self.server_headers, receive, send)
                return
            if not self.connections.admit():
                await self.fallback_busy(scope, send)
                return
            try:
                await self.fallback(scope, receive, self.with_server_header(send))
            finally:
                self.connections.active -= 1
        elif kind == "http":
            await respond_error(
                send, 404, "no push location matches this path", [self.server_header]
            )
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1003})

    async def fallback_busy(self, scope: Scope, send: Send) -> None:
        """The fallback application's answer at ``max_connections``: 503 (close 1013)."""
        if scope["type"] == "http":
            await respond_error(send, 503, BUSY_REASON, [self.server_header, RETRY_AFTER])
        else:
            await send({"type": "websocket.close", "code": CLOSE_TRY_AGAIN_LATER})

    async def head_too_large(
        self,
        scope: Scope,
        early_headers: Callable[[Request], Headers],
        receive: Receive,
        send: Send,
    ) -> None:
        """431, with the location's CORS headers (``early_headers``) or, to a WebSocket, the
        same as an HTTP answer to the upgrade where the server supports it."""
        limit = self._max_header_size
        reason = f"the request head is larger than {limit} bytes"
        if scope["type"] == "websocket":
            if (await receive())["type"] != "websocket.connect":
                return
            if "websocket.http.response" not in scope.get("extensions", {}):
                await send({"type": "websocket.close", "code": 1009})
                return
            body = f"431 {REASONS[431]}: {reason}\n".encode()
            headers = [
                self.server_header,
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
            ]
            await send({"type": "websocket.http.response.start", "status": 431, "headers": headers})
            await send({"type": "websocket.http.response.body", "body": body})
            return
        await respond_error(send, 431, reason, early_headers(Request(scope)))

    def server_headers(self, request: Request) -> Headers:
        """The headers of an early answer where no location's apply (a status location,
        the fallback): just Server."""
        return [self.server_header]

    def with_server_header(self, send: Send) -> Send:
        async def wrapped(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                if not any(name.lower() == b"server" for name, _ in headers):
                    headers.append(self.server_header)
                message = {**message, "headers": headers}
            await send(message)

        return wrapped  # type: ignore[return-value]

    async def redirect_host(self, scope: Scope, send: Send) -> bool:
        """``--forcehost``: answer any other Host with 301 to the forced one."""
        assert self.forcehost is not None
        host = ""
        for name, value in scope.get("headers", ()):
            if name == b"host":
                host = value.decode("latin-1").lower()
                break
        forced_name = _host_name(self.forcehost)
        host_name = _host_name(host)
        if host_name == forced_name:
            return False
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1008})
            return True
        raw_path = scope.get("raw_path") or quote(scope["path"]).encode()
        query = scope.get("query_string", b"")
        location = f"{scope.get('scheme', 'http')}://{self.forcehost}".encode() + raw_path
        if query:
            location += b"?" + query
        await respond(send, 301, [self.server_header, (b"location", location)])
        return True


def _host_name(host: str) -> str:
    """``host[:port]`` without the port (a bracketed IPv6 address keeps its brackets)."""
    return host if host.endswith("]") else host.rsplit(":", 1)[0]


def head_size(scope: Scope) -> int:
    """The size of the request head about as it was sent (path, query, headers and their
    separators). hypercorn's HTTP/1 parser refuses a larger head only while it is still
    incomplete, so one that arrives whole in a single read is measured here."""
    size = 16 + len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
    for name, value in scope["headers"]:
        size += len(name) + len(value) + 4
    return size


def default_max_connections() -> int:
    """``max_connections`` when not set: nine tenths of the open-file limit (``ulimit -n``),
    so requests past it get 503 before the process runs out of file descriptors (the rest
    is for idle keep-alive connections, the store's and passthrough's connections, logs).
    0 (no limit) where the limit is unlimited or unknown."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return 0
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return 0
    return max(1, soft - max(32, soft // 10))
