"""The private parts of hypercorn and wsproto that pushserver relies on are there, with the
signatures and behaviour it expects (and sse-starlette's public parts, with the bytes and
headers the event stream keeps).

pyproject.toml pins hypercorn (``<0.19``) to the releases tested, because
pushserver/hypercorn/fixes.py and pushserver/hypercorn/worker.py use names it does not
promise to keep. This module fails at once on a release that renamed or reshaped one of
them (before the behaviour tests in test_hostile_http.py, test_asyncio_worker.py and
transports/test_sse.py say why): raise a pin only with this module passing.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections import deque

import pytest


def parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


def coroutine(function) -> bool:
    return inspect.iscoroutinefunction(function)


# -- hypercorn: the fixes (pushserver/hypercorn/fixes.py) ------------------------------------


def test_websocket_stream_internals_the_refusal_fix_wraps():
    from hypercorn.config import Config
    from hypercorn.protocol.events import Body, Data, StreamClosed
    from hypercorn.protocol.ws_stream import Handshake, WSStream

    assert coroutine(WSStream.handle) and parameters(WSStream.handle) == ["self", "event"]
    assert coroutine(WSStream._send_error_response)
    assert parameters(WSStream._send_error_response) == ["self", "status_code"]
    stream = WSStream(None, Config(), None, None, False, None, None, None, 7)
    assert (stream.closed, stream.app_put, stream.stream_id) == (False, None, 7)
    assert Handshake([], "1.1").accepted is False
    assert StreamClosed(stream_id=7).stream_id == 7
    assert Body(stream_id=7, data=b"").data == b"" and Data(stream_id=7, data=b"").data == b""


def test_h11_protocol_check_the_h2c_fix_wraps():
    from hypercorn.protocol.h11 import H11Protocol

    assert coroutine(H11Protocol._check_protocol)
    assert parameters(H11Protocol._check_protocol) == ["self", "event"]


def test_h2_upgrade_settings_check():
    import h2.config
    import h2.connection

    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    with pytest.raises(Exception):  # noqa: B017 - any error means "not settings"
        connection.initiate_upgrade_connection(b"not base64url settings!")


def test_trio_tcp_server_run_the_trio_fixes_wrap():
    pytest.importorskip("trio")
    from hypercorn.trio.tcp_server import TCPServer

    assert coroutine(TCPServer.run) and parameters(TCPServer.run) == ["self"]


def test_wsproto_event_backlog_is_an_empty_deque():
    from wsproto import ConnectionType
    from wsproto.connection import Connection

    from pushserver.hypercorn.fixes import _EventList

    events = Connection(ConnectionType.SERVER)._events
    # An empty deque, or the fix's list if lighter_websocket_connections ran in this process.
    assert type(events) in (deque, _EventList) and not events


def test_wsproto_only_iterates_its_lists_of_extensions():
    """fixes.lighter_websocket_connections gives a connection without extensions the empty
    tuple for its frame protocol's and frame decoder's lists: wsproto must only iterate
    them (or rebind them)."""
    import re

    from wsproto import ConnectionType, frame_protocol
    from wsproto.connection import Connection

    uses = re.findall(r"^.*\bself\.extensions\b.*$", inspect.getsource(frame_protocol), re.M)
    assert sorted({use.strip() for use in uses}) == [
        "for extension in reversed(self.extensions):",
        "for extension in self.extensions:",
        "self._frame_decoder = FrameDecoder(self.client, self.extensions)",
        "self.extensions = [ext for ext in extensions if ext.enabled()]",
        "self.extensions = [ext for ext in self.extensions if ext.enabled()]",
        "self.extensions = extensions or []",
    ]
    proto = Connection(ConnectionType.SERVER)._proto
    assert not proto.extensions and not proto._frame_decoder.extensions
    assert type(proto.extensions) in (list, tuple)


# -- hypercorn: pushserver's asyncio worker (pushserver/hypercorn/worker.py) ------------------


def test_hypercorn_internals_the_asyncio_worker_drives():
    from hypercorn.asyncio.lifespan import Lifespan
    from hypercorn.asyncio.task_group import _handle
    from hypercorn.asyncio.worker_context import WorkerContext
    from hypercorn.config import Config, Sockets
    from hypercorn.events import Closed, RawData, Updated
    from hypercorn.protocol import ProtocolWrapper
    from hypercorn.utils import parse_socket_addr, repr_socket_addr

    assert coroutine(_handle)
    assert parameters(_handle) == [
        "app", "config", "scope", "receive", "send", "sync_spawn", "call_soon",
    ]  # fmt: skip
    assert parameters(ProtocolWrapper.__init__) == [
        "self", "app", "config", "context", "task_group", "state", "ssl", "client",
        "server", "send", "alpn_protocol",
    ]  # fmt: skip
    assert coroutine(ProtocolWrapper.handle)
    assert parameters(Lifespan.__init__) == ["self", "app", "config", "loop", "lifespan_state"]
    for name in ("handle_lifespan", "wait_for_startup", "wait_for_shutdown"):
        assert coroutine(getattr(Lifespan, name)), name
    context = WorkerContext(None)
    assert {"event_class", "terminated"} <= set(dir(context))
    fields = {field.name for field in dataclasses.fields(Sockets)}
    assert fields >= {"secure_sockets", "insecure_sockets", "quic_sockets"}
    assert {"max_app_queue_size", "keep_alive_timeout", "graceful_timeout", "backlog"} <= set(
        dir(Config())
    )
    assert RawData(data=b"x").data == b"x" and Closed() and Updated(idle=True).idle
    assert parse_socket_addr(2, ("127.0.0.1", 80)) == ("127.0.0.1", 80)
    assert "127.0.0.1:80" in repr_socket_addr(2, ("127.0.0.1", 80))


def test_hypercorn_stream_state_the_worker_writes_at_once_by():
    """worker.SendNow reads the state of hypercorn's streams and protocol (never changes
    it) to decide that a body chunk or a WebSocket message may be written now."""
    from hypercorn.config import Config
    from hypercorn.protocol.h11 import H11Protocol
    from hypercorn.protocol.http_stream import ASGIHTTPState, HTTPStream
    from hypercorn.protocol.ws_stream import ASGIWebsocketState, WSStream
    from hypercorn.utils import suppress_body

    assert ASGIHTTPState.RESPONSE and ASGIWebsocketState.CONNECTED
    assert suppress_body("HEAD", 200) and suppress_body("GET", 304)
    assert not suppress_body("GET", 200)
    for stream_class in (HTTPStream, WSStream):
        assert coroutine(stream_class.app_send)
        stream = stream_class(None, Config(), None, None, False, None, None, None, 1)
        assert stream.closed is False and hasattr(stream, "state")
        assert stream.send is None  # the protocol's stream_send, given at construction
    assert parameters(HTTPStream.__init__)[-2:] == ["send", "stream_id"]
    assert coroutine(H11Protocol.stream_send)
    protocol = H11Protocol(None, Config(), _Context(), None, None, False, None, None, None)
    assert protocol.stream is None and type(protocol.connection).__name__ == "Connection"


class _Context:
    event_class = dict


def test_hypercorn_reads_of_an_accepted_websocket_handshake_only_whether_it_was():
    """After the accept, the worker replaces a WebSocket stream's ``Handshake`` by
    ``worker._Accepted`` (``accepted`` and ``extensions``): hypercorn reads nothing else of
    it but in the handshake itself (``is_valid``, ``accept``, ``subprotocols``)."""
    import re

    from hypercorn.protocol import ws_stream

    source = inspect.getsource(ws_stream.WSStream)
    assert set(re.findall(r"\bhandshake\.(\w+)", source)) == {
        "accepted", "accept", "is_valid", "subprotocols",
    }  # fmt: skip
    # (The class's source as the module has it: fixes.py wraps some of its methods.)
    assert "self.handshake.accept(" in source
    accept = '"websocket.accept" and self.state == ASGIWebsocketState.HANDSHAKE'
    assert accept in source  # a second accept never reaches the handshake
    handshake = ws_stream.Handshake([(b"sec-websocket-extensions", b"a, b")], "1.1")
    assert handshake.extensions == ["a", "b"] and handshake.accepted is False


def test_wsproto_frames_a_whole_message_alike_on_every_connection_without_extensions():
    """worker.SendNow frames a message once for every WebSocket whose client offered no
    extension (hypercorn's ``Handshake.extensions``): wsproto must keep no state of a whole
    message it sent, and frame it the same on each such connection."""
    from hypercorn.protocol.ws_stream import Handshake
    from wsproto import ConnectionType
    from wsproto.connection import Connection, ConnectionState
    from wsproto.events import BytesMessage, TextMessage
    from wsproto.extensions import PerMessageDeflate

    headers = [(b"sec-websocket-version", b"13"), (b"connection", b"upgrade")]
    assert Handshake(headers, "1.1").extensions is None
    one = Connection(ConnectionType.SERVER, [PerMessageDeflate()])  # offered by no client
    two = Connection(ConnectionType.SERVER, [PerMessageDeflate()])
    assert one.state is ConnectionState.OPEN
    for event in (TextMessage(data="héllo " * 30), BytesMessage(data=b"\x00" * 300)):
        frame = one.send(event)
        assert frame == one.send(event) == two.send(event)
        assert frame[0] & 0x40 == 0  # not compressed (RSV1 clear)


def test_h11_frames_a_chunk_alike_on_every_chunked_response_and_keeps_no_state_of_it():
    """worker.SendNow writes a body chunk it made once for every chunked event stream
    (``Worker.last_chunk``), skipping h11's ``send`` after a response's first chunk: h11
    must frame a chunk as RFC 9112 does, keep no state of it (the end of the body still
    comes out right), and write an HTTP/1.0 response's body as it is."""
    import h11

    from pushserver.hypercorn.worker import _chunk

    def responding(version: bytes) -> tuple[h11.Connection, bytes]:
        connection = h11.Connection(h11.SERVER)
        connection.receive_data(b"GET /s HTTP/%b\r\nhost: x\r\n\r\n" % version)
        assert type(connection.next_event()) is h11.Request
        head = connection.send(h11.Response(status_code=200, headers=[("content-type", "x")]))
        assert connection.our_state is h11.SEND_BODY
        return connection, head

    one, head = responding(b"1.1")
    assert b"transfer-encoding: chunked" in head.lower()
    two, _ = responding(b"1.1")
    body = b"data: h\xc3\xa9llo\n\n" * 40
    assert one.send(h11.Data(data=body)) == _chunk(body) == two.send(h11.Data(data=body))
    assert _chunk(body) == b"%x\r\n" % len(body) + body + b"\r\n"
    # two's next chunk written without h11 (as SendNow does): h11 is none the wiser.
    assert two.our_state is h11.SEND_BODY
    assert two.send(h11.EndOfMessage()) == one.send(h11.EndOfMessage()) == b"0\r\n\r\n"
    old, head = responding(b"1.0")
    assert b"chunked" not in head.lower()
    assert old.send(h11.Data(data=body)) == body  # not chunked: no bytes added


# -- sse-starlette (pushserver/transports/sse.py) -------------------------------------------


def test_the_event_stream_starts_as_sse_starlettes_response_does():
    """The event stream is written by pushserver (sse-starlette's ``EventSourceResponse``
    could only be reused through its private parts); of sse-starlette it uses the public
    ``ServerSentEvent`` encoding, and its headers are what ``EventSourceResponse`` sends."""
    from sse_starlette import EventSourceResponse, ServerSentEvent

    from pushserver.transports import sse

    assert sse.ServerSentEvent is ServerSentEvent
    base = EventSourceResponse(iter(()), ping=7, sep="\n", send_timeout=1)
    assert base.status_code == 200
    assert list(sse.STREAM_HEADERS) == base.raw_headers
    headers = dict(base.raw_headers)
    assert headers[b"cache-control"] == b"no-store"
    assert headers[b"x-accel-buffering"] == b"no"
    assert headers[b"content-type"] == b"text/event-stream; charset=utf-8"


def test_server_sent_event_encoding_is_the_wire_format():
    from sse_starlette.event import ServerSentEvent

    assert ServerSentEvent(comment="hi", retry=3000, sep="\n").encode() == (
        b": hi\nretry: 3000\n\n"
    )
    assert ServerSentEvent("a\nb", event="tick", id="1:0", sep="\n").encode() == (
        b"id: 1:0\nevent: tick\ndata: a\ndata: b\n\n"
    )


# -- uvicorn: the writer behind its send (pushserver/uvicorn/writer.py) ----------------------


def test_uvicorn_writer_frames_as_uvicorn_and_websockets_do():
    """The bytes written behind uvicorn's ``send`` are those its ``send`` writes: a chunk as
    its httptools protocol frames one, a WebSocket message as ``websockets`` frames it for
    a server without extensions."""
    pytest.importorskip("uvicorn")
    from websockets.frames import Frame, Opcode

    from pushserver.uvicorn.writer import chunk, frame

    for size in (0, 1, 125, 126, 65535, 65536, 70000):
        text = "é" * (size // 2) + "x" * (size % 2)
        data = bytes(range(256)) * (size // 256) + bytes(size % 256)
        expected_text = Frame(Opcode.TEXT, text.encode()).serialize(mask=False, extensions=[])
        expected_bytes = Frame(Opcode.BINARY, data).serialize(mask=False, extensions=[])
        assert frame({"type": "websocket.send", "text": text}) == expected_text
        assert frame({"type": "websocket.send", "bytes": data}) == expected_bytes
        if size:
            assert chunk(data) == b"".join([b"%x\r\n" % len(data), data, b"\r\n"])


def test_uvicorn_protocol_state_the_writer_reads():
    """The attributes pushserver.uvicorn.writer reads on uvicorn's two protocols: set in
    their ``__init__`` (the source), with the meaning the writer gives them."""
    pytest.importorskip("uvicorn")
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    from pushserver.engine import KNOWN_OWNERS

    http = inspect.getsource(RequestResponseCycle)
    for attribute in (
        "scope", "transport", "flow", "disconnected", "response_started",
        "response_complete", "chunked_encoding",
    ):  # fmt: skip
        assert f"self.{attribute} = " in http or f"self.{attribute}: " in http, attribute
    assert "self.flow.write_paused" in http and coroutine(RequestResponseCycle.send)
    websocket = inspect.getsource(WebSocketsSansIOProtocol)
    for attribute in (
        "transport", "conn", "writable", "disconnected", "close_sent", "handshake_complete",
        "initial_response",
    ):  # fmt: skip
        assert f"self.{attribute} = " in websocket or f"self.{attribute}: " in websocket, attribute
    assert "await self.writable.wait()" in websocket
    for kind in (RequestResponseCycle, WebSocketsSansIOProtocol):
        assert (kind.__module__, kind.__qualname__) in KNOWN_OWNERS
