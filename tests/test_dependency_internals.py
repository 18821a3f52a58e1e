"""The private parts of hypercorn, wsproto and sse-starlette that pushserver relies on are
there, with the signatures and behaviour it expects.

pyproject.toml pins hypercorn (``<0.19``) and sse-starlette (``<3.8``) to the releases
tested, because pushserver/hypercorn/fixes.py, pushserver/hypercorn/worker.py and
pushserver/transports/sse.py use names those projects do not promise to keep. This module
fails at once on a release that renamed or reshaped one of them (before the behaviour
tests in test_hostile_http.py, test_asyncio_worker.py and transports/test_sse.py say why):
raise a pin only with this module passing.
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


# -- sse-starlette (pushserver/transports/sse.py) -------------------------------------------


def test_event_source_response_internals_the_event_stream_uses():
    from sse_starlette.sse import EventSourceResponse, SendTimeoutError

    from pushserver.transports.sse import EventStreamResponse

    assert issubclass(EventStreamResponse, EventSourceResponse)
    assert issubclass(SendTimeoutError, Exception)
    # EventStreamResponse replaces these two; its __call__ serves HEAD through the base's.
    assert coroutine(EventSourceResponse._stream_response)
    assert parameters(EventSourceResponse._stream_response) == ["self", "send"]
    assert coroutine(EventSourceResponse.__call__)
    assert coroutine(EventSourceResponse._send_with_timeout)
    assert parameters(EventSourceResponse._send_with_timeout) == ["self", "send", "message"]

    base = EventSourceResponse(iter(()), ping=7, sep="\n", send_timeout=1)
    assert hasattr(base, "_send_lock")  # what EventStreamResponse deletes
    assert base.active is True and base.ping_interval == 7 and base.status_code == 200
    headers = dict(base.raw_headers)
    assert headers[b"cache-control"] == b"no-store"
    assert headers[b"x-accel-buffering"] == b"no"
    assert headers[b"content-type"].startswith(b"text/event-stream")


def test_server_sent_event_encoding_is_the_wire_format():
    from sse_starlette.event import ServerSentEvent

    assert ServerSentEvent(comment="hi", retry=3000, sep="\n").encode() == (
        b": hi\nretry: 3000\n\n"
    )
    assert ServerSentEvent("a\nb", event="tick", id="1:0", sep="\n").encode() == (
        b"id: 1:0\nevent: tick\ndata: a\ndata: b\n\n"
    )
