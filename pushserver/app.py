"""The push server as one ASGI application.

:class:`PushServer` routes each request to the first configured location whose regex
matches the raw path (query ignored), exactly as the original did: publisher locations to
:class:`~pushserver.publisher.Publisher`, subscriber locations to a transport. Anything else
goes to the ``fallback`` application (Django, under ``runpushserver --allrequests``) or
gets 404.

Backends are opened by the ASGI lifespan (or ``async with server:``) and closed after it.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from typing import Any
from urllib.parse import quote

from . import __version__
from .backends import create_backend
from .config import LocationConfig, ServerConfig
from .http import (
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
from .protocol import cors_headers, decode_channel_id
from .publisher import Publisher
from .transports.longpoll import LongPollTransport, Presence
from .transports.sse import SSETransport
from .transports.websocket import WebSocketTransport

logger = logging.getLogger("pushserver")


class Subscriber:
    """One subscriber location: picks the transport for each request, as nchan does.

    ``Accept: text/event-stream`` on a GET gets server-sent events, a WebSocket upgrade gets
    a WebSocket, anything else long-poll; each only if both the location's ``transports``
    and the process (``runpushserver --transport``) enable it. An event-stream request where
    event streams are off is served as long-poll; a request no enabled transport can serve
    gets 403 (a WebSocket: accepted, then closed with 4403, so a browser sees the code).
    """

    def __init__(
        self,
        location: LocationConfig,
        hub: Hub,
        headers: Headers,
        presence: Presence | None,
        process_transports: tuple[str, ...] | None,
        server_header: tuple[bytes, bytes],
    ) -> None:
        self.location = location
        self.headers = headers
        enabled = set(location.transports)
        if process_transports is not None:
            enabled &= set(process_transports)
        self.enabled = frozenset(enabled)
        self.longpoll = LongPollTransport(location, hub, headers, presence)
        self.sse = SSETransport(location, hub, headers, presence)
        self.websocket = WebSocketTransport(
            location, hub, server_header, presence, enabled="websocket" in enabled
        )

    async def __call__(self, scope: Scope, raw_channel: str, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self.websocket(scope, raw_channel, receive, send)
            return
        request = Request(scope)
        if (
            "eventsource" in self.enabled
            and request.method in ("GET", "HEAD")
            and "text/event-stream" in (request.header("accept") or "")
        ):
            await self.sse(request, raw_channel, receive, send)
            return
        if "longpoll" not in self.enabled and request.method != "OPTIONS":
            others = " or ".join(sorted(self.enabled - {"longpoll"})) or "nothing"
            reason = f"long-poll is not enabled here (this location serves {others})"
            await respond_error(send, 403, reason, self.headers)
            return
        try:
            channel_id = decode_channel_id(raw_channel, self.location.max_channel_id_length)
        except ValueError as exc:
            await respond_error(send, 400, str(exc), self.headers)
            return
        await self.longpoll(request, channel_id, receive, send)


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
        self.routes: list[tuple[LocationConfig, object]] = []
        for location in config.locations:
            hub = self.hubs[location.store]
            if location.type == "publisher":
                handler: object = Publisher(
                    location,
                    hub,
                    [self.server_header],
                    internal_ips=config.internal_ips,
                    secret=config.publisher_secret,
                )
            else:
                presence = None
                if location.passthrough and callable(presence_factory):
                    presence = presence_factory(location)
                handler = Subscriber(
                    location,
                    hub,
                    self.subscriber_headers(location),
                    presence,
                    transports,
                    self.server_header,
                )
            self.routes.append((location, handler))
        self._stack: AsyncExitStack | None = None
        # An async-context presence factory (passthrough) lives as long as the server.
        self._presence_context = (
            presence_factory if hasattr(presence_factory, "__aenter__") else None
        )

    def subscriber_headers(self, location: LocationConfig) -> Headers:
        return [
            self.server_header,
            *cors_headers(location.allow_origin, location.allow_credentials, None),
        ]

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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self.lifespan(receive, send)
            return
        receive, send = guard_body(scope, receive, send)
        if kind == "http" and framed_twice(scope):
            reason = "Content-Length and Transfer-Encoding together"
            close = [self.server_header, (b"connection", b"close")]
            await respond_error(send, 400, reason, close)
            return
        if self.forcehost is not None and await self.redirect_host(scope, send):
            return
        raw_path = scope.get("raw_path")
        path = raw_path.decode("latin-1") if raw_path else quote(scope["path"])
        for location, handler in self.routes:
            match = location.regex.match(path)
            if match is None:
                continue
            if isinstance(handler, Subscriber):
                await handler(scope, match.group(1), receive, send)
                return
            if kind != "http":
                await send({"type": "websocket.close", "code": 1003})
                return
            request = Request(scope)
            try:
                channel_id = decode_channel_id(match.group(1), location.max_channel_id_length)
            except ValueError as exc:
                headers = handler.headers  # type: ignore[attr-defined]
                await respond_error(send, 400, str(exc), headers)
                return
            await handler(request, channel_id, receive, send)  # type: ignore[operator]
            return
        if self.fallback is not None:
            await self.fallback(scope, receive, self.with_server_header(send))
        elif kind == "http":
            await respond_error(
                send, 404, "no push location matches this path", [self.server_header]
            )
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1003})

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
