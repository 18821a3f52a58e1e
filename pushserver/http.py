"""Small ASGI HTTP helpers shared by the publisher, the status page and the transports:
the request, its query parameters and body, and short answers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

import anyio

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

REASONS = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No Content",
    301: "Moved Permanently",
    304: "Not Modified",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    410: "Gone",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    507: "Insufficient Storage",
}


class Request:
    """The parts of an ASGI HTTP scope the push server reads."""

    __slots__ = ("method", "scope")

    def __init__(self, scope: Scope, method: str | None = None) -> None:
        self.scope = scope
        #: ``method`` stands in for a scope without one (a WebSocket handshake is a GET),
        #: so the scope is kept as it is rather than copied for as long as it is held.
        self.method: str = method or scope["method"]

    def header(self, name: str) -> str | None:
        """The header ``name`` (lower case), repeats joined with ``", "``; None if absent.

        Read from the scope on each call rather than decoded into a dict up front: a
        subscriber's request is held for as long as it waits or streams, and a browser's
        dozen headers decoded again as text would be about a kilobyte more per connection.
        """
        key = name.encode("latin-1")
        found: str | None = None
        for raw, value in self.scope["headers"]:
            # ASGI servers send lower-case names; lower() only when one is not.
            if raw == key or (not raw.islower() and raw.lower() == key):
                text = value.decode("latin-1")
                found = text if found is None else f"{found}, {text}"
        return found

    @property
    def client_host(self) -> str | None:
        client = self.scope.get("client")
        return client[0] if client else None


def query_parameter(query_string: bytes, name: str) -> str | None:
    """One query parameter, percent-decoded (``+`` is a space); None when absent."""
    for key, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if key == name:
            return value
    return None


class BodyTooLarge(Exception):
    pass


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None if the client went away.

    Raises :class:`BodyTooLarge` as soon as more than ``limit`` bytes (0 = no limit) arrive.
    """
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if limit and size > limit:
                raise BodyTooLarge
            chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


#: How much of an unread request body is drained before an early answer, and for how long.
DISCARD_LIMIT = 64 * 1024 * 1024
DISCARD_SECONDS = 10.0


async def discard_body(receive: Receive, limit: int) -> None:
    """Read and drop the rest of a request body, up to about ``limit`` bytes."""
    size = 0
    while size <= limit:
        message = await receive()
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            return
        size += len(message.get("body", b""))


def _declares_body(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


def framed_twice(scope: Scope) -> bool:
    """Whether the request names both a Content-Length and a Transfer-Encoding.

    hypercorn (h11) reads such a body by its Transfer-Encoding and keeps the connection
    open; a proxy in front that goes by the Content-Length would then see a different next
    request on it (request smuggling). RFC 9112 section 6.1 lets a server refuse it and
    requires closing the connection after answering; nginx answers 400, and so do we.
    """
    names = {name for name, _ in scope.get("headers", ())}
    return b"transfer-encoding" in names and b"content-length" in names


def guard_body(scope: Scope, receive: Receive, send: Send) -> tuple[Receive, Send]:
    """Make an answer given before the request body was read safe to deliver.

    hypercorn closes the connection as soon as a response ends while request body is still
    unread. Closing with unread bytes makes the kernel send a reset, which can destroy the
    answer before the client reads it (a 413 or 400 looks like a network error), and a
    keep-alive client is not told the connection is gone. So before an early answer the
    rest of the body is read and dropped (bounded by :data:`DISCARD_LIMIT` and
    :data:`DISCARD_SECONDS`); past those bounds the answer says ``Connection: close``.
    Requests that declare no body pass through untouched.
    """
    if scope.get("type") != "http" or not _declares_body(scope):
        return receive, send
    done = False

    async def guarded_receive() -> Message:
        nonlocal done
        message = await receive()
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            done = True
        return message

    async def guarded_send(message: Message) -> None:
        if message["type"] == "http.response.start" and not done:
            with anyio.move_on_after(DISCARD_SECONDS):
                await discard_body(guarded_receive, DISCARD_LIMIT)
            if not done:
                headers = [*message.get("headers", ()), (b"connection", b"close")]
                message = {**message, "headers": headers}
        await send(message)

    return guarded_receive, guarded_send


async def respond(
    send: Send,
    status: int,
    headers: Headers | None = None,
    body: bytes = b"",
    *,
    content_type: bytes | None = None,
) -> None:
    all_headers = list(headers or ())
    if content_type is not None:
        all_headers.append((b"content-type", content_type))
    if status != 304:
        all_headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": body if status != 304 else b""})


async def respond_error(
    send: Send, status: int, reason: str, headers: Headers | None = None
) -> None:
    """A short plain-text error: the status line's reason and what went wrong."""
    text = f"{status} {REASONS.get(status, '')}: {reason}\n".encode()
    await respond(send, status, headers, text, content_type=b"text/plain; charset=utf-8")
