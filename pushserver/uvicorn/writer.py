"""A writer behind uvicorn's ``send``: :class:`pushserver.engine.SendNow` for uvicorn's
httptools HTTP/1.1 protocol and its websockets-sansio WebSocket protocol.

Stepping uvicorn's own ``send`` from the fan-out (:mod:`pushserver.transports.eager`)
already spares the subscriber's task; but uvicorn still frames every message for every
subscriber (a chunk header and a join per event stream, the ``websockets`` library's
frame per WebSocket). Here a message is framed once, for all the subscribers it goes to,
and written to each connection's transport as uvicorn's ``send`` would write it:

- an event-stream body chunk (``http.response.body`` with ``more_body``) on a chunked
  response under way: ``<size>\\r\\n<body>\\r\\n``, as ``RequestResponseCycle.send``;
- a WebSocket message on an open connection without extensions (pushserver's
  ``runpushserver --server uvicorn`` turns permessage-deflate off; where a client
  negotiated it, nothing is written here): one unmasked, final text or binary frame, as
  ``websockets``' ``Protocol.send_text`` / ``send_binary``, which keep no state of an
  unfragmented frame they sent.

Only while uvicorn's ``send`` would write at once: the connection open, not disconnected,
its transport not paused (for WebSockets, uvicorn's ``writable`` event set). Anything else
is declined and goes through ``send`` as usual. These are uvicorn's attributes, not its API:
``tests/test_dependency_internals.py`` checks each of them against the installed uvicorn.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Any

from websockets.protocol import State


class _LastMade:
    """The last message framed, and its bytes: the fan-out hands every subscriber the same
    ASGI message object, so a message is framed once, not once per subscriber. (One slot:
    it holds the message, so its identity cannot be reused meanwhile.)"""

    __slots__ = ("data", "message")

    def __init__(self) -> None:
        self.message: object = None
        self.data = b""

    def write(
        self, transport: Any, message: object, make: Callable[[Any], bytes], source: Any
    ) -> bool:
        """Write the message's bytes (``make(source)``, or the last ones made for it) to
        ``transport``; False, writing nothing, when the transport is closing."""
        if transport.is_closing():
            return False
        if message is not self.message:
            self.data = make(source)
            self.message = message
        transport.write(self.data)
        return True


_chunks = _LastMade()
_frames = _LastMade()


def chunk(body: bytes) -> bytes:
    """A body chunk as uvicorn's chunked encoding writes it."""
    return b"%x\r\n%b\r\n" % (len(body), body)


def frame(message: Mapping[str, Any]) -> bytes:
    """A ``websocket.send`` as one final, unmasked frame without extensions (RFC 6455)."""
    text = message.get("text")
    if text is not None:
        payload, first = text.encode(), 0x81
    else:
        payload, first = bytes(message["bytes"]), 0x82
    size = len(payload)
    if size < 126:
        head = bytes((first, size))
    elif size < 65536:
        head = struct.pack("!BBH", first, 126, size)
    else:
        head = struct.pack("!BBQ", first, 127, size)
    return head + payload


class _Writer:
    """A writer for the uvicorn object whose method ``send`` is."""

    __slots__ = ("owner",)

    def __init__(self, owner: Any) -> None:
        self.owner = owner

    def owns(self, send: Callable[..., Any]) -> bool:
        return getattr(send, "__self__", None) is self.owner


class HTTPWriter(_Writer):
    """:class:`pushserver.engine.SendNow` for one request of uvicorn's httptools protocol
    (its ``RequestResponseCycle``)."""

    __slots__ = ()

    def send_now(self, message: Mapping[str, Any]) -> bool:
        if message["type"] != "http.response.body" or not message.get("more_body", False):
            return False
        body = message.get("body")
        cycle = self.owner
        if (
            not body
            or cycle.disconnected
            or cycle.flow.write_paused
            or not cycle.response_started
            or cycle.response_complete
            or cycle.chunked_encoding is not True
            or cycle.scope["method"] == "HEAD"
        ):
            return False
        return _chunks.write(cycle.transport, message, chunk, body)


class WebSocketWriter(_Writer):
    """:class:`pushserver.engine.SendNow` for one connection of uvicorn's websockets-sansio
    WebSocket protocol."""

    __slots__ = ()

    def send_now(self, message: Mapping[str, Any]) -> bool:
        if message["type"] != "websocket.send":
            return False
        protocol = self.owner
        if (
            not protocol.writable.is_set()
            or protocol.disconnected
            or protocol.close_sent
            or not protocol.handshake_complete
            or protocol.initial_response is not None
            or protocol.conn.state is not State.OPEN
        ):
            return False
        return _frames.write(protocol.transport, message, frame, message)


#: What the writers read, by object: a uvicorn that has none of one gets no writer (the
#: fan-out then steps its ``send``, pushserver.transports.eager), not an error per message.
_HTTP_STATE = (
    "scope", "transport", "flow", "disconnected", "response_started", "response_complete",
    "chunked_encoding",
)  # fmt: skip
_WEBSOCKET_STATE = (
    "transport", "conn", "writable", "disconnected", "close_sent", "handshake_complete",
    "initial_response",
)  # fmt: skip


def http_writer(cycle: Any) -> HTTPWriter | None:
    if not all(hasattr(cycle, name) for name in _HTTP_STATE) or not hasattr(
        cycle.flow, "write_paused"
    ):
        return None
    return HTTPWriter(cycle)


def websocket_writer(protocol: Any) -> WebSocketWriter | None:
    """None where the connection negotiated an extension (compression): those frames are
    the ``websockets`` library's to make."""
    if not all(hasattr(protocol, name) for name in _WEBSOCKET_STATE):
        return None
    conn = protocol.conn
    if getattr(conn, "extensions", True) or not hasattr(conn, "state"):
        return None
    return WebSocketWriter(protocol)
