"""Serving raises the cyclic collector's thresholds so far that the interpreter almost never
runs a full collection (server.GC_THRESHOLDS): what a request or a closed connection leaves
behind must be freed by reference counting alone, or memory grows for as long as the
process runs (the soak (bench/NOTES.md) saw 4 MiB a minute).

These tests serve in this process with the collector off, drive real connections from a
thread over plain sockets (which make no cycles of their own), then count what only the
cyclic collector could free: it must be nothing. ``gc.collect()``'s own figure misses a
cycle that a finalizer run by the collector breaks (a suspended generator's, closed by its
finalizer: the rest then goes by reference counting, uncounted), so what the collection
made disappear is counted too (:func:`collected`).
"""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import select
import socket
import struct
import sys
import threading
from collections import Counter

import anyio
import pytest

from pushserver import config, server
from pushserver.app import PushServer
from pushserver.hypercorn import fixes as hypercorn_fixes
from pushserver.hypercorn import stock_worker

ROUNDS = 40
UPGRADE = (
    "Upgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


def read_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    return data


def read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    data = read_head(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head, body


def header(head: bytes, name: bytes) -> str:
    for line in head.split(b"\r\n"):
        if line.lower().startswith(name + b":"):
            return line.split(b":", 1)[1].strip().decode()
    raise KeyError(name)


def publish(sock: socket.socket, channel: str) -> None:
    sock.sendall(
        f"POST /publisher/{channel} HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi".encode()
    )
    assert read_response(sock)[0].startswith(b"HTTP/1.1 20")


def long_polls(port: int) -> None:
    """Long polls answered by a publish while they wait, on one keep-alive connection, and
    then on a new connection each (the previous one closed between requests)."""
    with socket.create_connection(("127.0.0.1", port)) as pub:
        publish(pub, "lp")
        sub = socket.create_connection(("127.0.0.1", port))
        etag, since = "0", "Thu, 01 Jan 1970 00:00:00 GMT"
        for i in range(2 * ROUNDS):
            if i >= ROUNDS:
                sub.close()
                sub = socket.create_connection(("127.0.0.1", port))
            sub.sendall(
                f"GET /subscriber/lp HTTP/1.1\r\nHost: t\r\nIf-None-Match: {etag}\r\n"
                f"If-Modified-Since: {since}\r\n\r\n".encode()
            )
            # Publish until this poll is answered: it may have been waiting, or not yet. Its
            # response is read once it starts arriving (a read timeout could cut it in two).
            while not select.select([sub], [], [], 0.005)[0]:
                publish(pub, "lp")
            head, _ = read_response(sub)
            assert head.startswith(b"HTTP/1.1 200"), head
            etag, since = header(head, b"etag"), header(head, b"last-modified")
        sub.close()


def streams(port: int, kind: str) -> None:
    """Event streams or WebSockets that get a message and go away, alternately with a
    clean close and a reset."""
    extra = "Accept: text/event-stream\r\n" if kind == "sse" else UPGRADE
    with socket.create_connection(("127.0.0.1", port)) as pub:
        for i in range(ROUNDS):
            sub = socket.create_connection(("127.0.0.1", port))
            sub.sendall(f"GET /subscriber/{kind} HTTP/1.1\r\nHost: t\r\n{extra}\r\n".encode())
            head = read_head(sub)
            assert head.startswith((b"HTTP/1.1 200", b"HTTP/1.1 101")), head
            publish(pub, kind)
            assert sub.recv(65536)  # the message (after what came with the head)
            if i % 2:
                sub.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sub.close()


def tracked_objects() -> Counter[type]:
    return Counter(type(obj) for obj in gc.get_objects())


def open_sockets() -> int:
    """Sockets this process holds open (Linux: /proc/self/fd)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


def collected() -> int:
    """How many objects a full collection freed: ``gc.collect()``'s count, or, when more,
    the tracked objects it made disappear. Tuples and dicts are left out of the latter: the
    collector stops tracking those that hold only untracked objects, without freeing them.
    """
    before = tracked_objects()
    count = gc.collect()
    gone = before - tracked_objects()
    return max(count, sum(n for kind, n in gone.items() if kind not in (tuple, dict)))


SETTINGS = {
    "store": {"type": "memory", "max_messages": 8},
    "locations": [
        {"type": "publisher", "prefix": "/publisher/"},
        {"type": "subscriber", "prefix": "/subscriber/", "create_on_get": True},
    ],
}

CLIENTS = {
    "longpoll": long_polls,
    "sse": lambda port: streams(port, "sse"),
    "websocket": lambda port: streams(port, "ws"),
}


@pytest.fixture
def collector_off():
    thresholds = gc.get_threshold()
    gc.collect()
    gc.disable()
    yield
    gc.enable()
    gc.set_threshold(*thresholds)


#: On asyncio, no cycles is what pushserver's own connection layer provides; hypercorn's
#: own asyncio worker (PUSHSERVER_HYPERCORN_WORKER=stock) leaves some per connection.
OWN_WORKER_ONLY = pytest.mark.skipif(
    stock_worker(), reason="hypercorn's own asyncio worker leaves reference cycles per connection"
)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "anyio_backend",
    [
        pytest.param(("asyncio", {}), marks=OWN_WORKER_ONLY),
        pytest.param(("asyncio", {"use_uvloop": True}), marks=OWN_WORKER_ONLY),
        ("trio", {}),
    ],
    ids=["asyncio", "uvloop", "trio"],
)
@pytest.mark.parametrize("kind", sorted(CLIENTS))
async def test_closed_connections_leave_no_reference_cycles(kind, anyio_backend, collector_off):
    found: list[int] = []

    async def run() -> None:
        # What the test runner let go of before this test (another event loop) is not ours:
        # collected until a collection finds nothing, since on Python 3.12+ the finalizers
        # one runs can make cycles only the next one finds.
        while gc.collect():
            pass
        sock = server.bind("127.0.0.1", 0)
        port = sock.getsockname()[1]
        app = PushServer(config.load(SETTINGS))
        done = threading.Event()
        failure: list[BaseException] = []

        def client() -> None:
            try:
                CLIENTS[kind](port)
            except BaseException as exc:  # reported by the test
                failure.append(exc)
            finally:
                done.set()

        async def stop() -> None:
            await anyio.to_thread.run_sync(done.wait)
            # Until the server has seen every close: connections it still serves are alive.
            with anyio.fail_after(10):
                while app.hubs["default"].metrics.eventsource or (
                    app.hubs["default"].metrics.websocket
                ):
                    await anyio.sleep(0.01)
            await anyio.sleep(0.2)  # the last transports' own close callbacks
            assert not failure, failure
            found.append(collected())

        threading.Thread(target=client, daemon=True).start()
        try:
            with anyio.fail_after(60):
                await server.serve(app, sock, access_log=False, shutdown_trigger=stop)
        finally:
            sock.close()

    await run()
    assert found == [0], f"{found[0]} objects were left in reference cycles"


def socket_error_in_a_trio_stream(code: int) -> tuple[type, object, bool, str]:
    """What trio's socket streams raise for an ``OSError`` with this errno (its type, its
    cause's errno, whether its context is suppressed, its message), with
    ``pushserver.hypercorn.fixes``' translation; nothing of the exception is kept (its
    traceback holds this frame)."""
    from trio import _highlevel_socket

    try:
        with _highlevel_socket._translate_socket_errors_to_stream_errors():
            raise OSError(code, os.strerror(code))
    except Exception as exc:
        cause = getattr(exc.__cause__, "errno", exc.__cause__)
        return type(exc), cause, exc.__suppress_context__, str(exc)
    return type(None), None, False, ""


def test_trio_socket_errors_are_translated_as_trio_does_and_leave_no_cycle(collector_off):
    import trio

    hypercorn_fixes.translate_trio_socket_errors_without_cycles()
    hypercorn_fixes.translate_trio_socket_errors_without_cycles()  # idempotent
    reset = socket_error_in_a_trio_stream(errno.ECONNRESET)
    closed = socket_error_in_a_trio_stream(errno.EBADF)
    assert reset == (
        trio.BrokenResourceError,
        errno.ECONNRESET,
        True,  # set by "from": the cause is what a traceback shows
        f"socket connection broken: [Errno {errno.ECONNRESET}] {os.strerror(errno.ECONNRESET)}",
    )
    assert closed == (trio.ClosedResourceError, None, True, "this socket was already closed")
    # Any other exception goes through as it is.
    from trio import _highlevel_socket

    try:
        with _highlevel_socket._translate_socket_errors_to_stream_errors():
            raise KeyError("not a socket's")
    except KeyError:
        pass
    assert collected() == 0


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.skipif(
    sys.version_info < (3, 12),
    reason="asyncio's own cycle on Python 3.11, not pushserver's: each closed connection's "
    "_SelectorSocketTransport keeps its read callback, a bound method of itself "
    "(_read_ready_cb), so the transport, that method, its extra dict with the TransportSocket, "
    "the socket and the peername/sockname tuples (7 objects per connection, 294 for this "
    "test's 42 connections, nothing else) wait for the cyclic collector; Python 3.12 clears "
    "it in close() (CPython gh-100348, not backported). pushserver's own worker clears it "
    "itself (hypercorn/worker.py); uvicorn's protocol does not",
)
async def test_long_polls_under_uvicorn_leave_no_reference_cycles(anyio_backend, collector_off):
    """Under another ASGI server a waiting long poll listens for the disconnect with a read
    of its own (transports.longpoll.wait_watching): once answered, nothing of it, nor of
    the server's request it holds, may be left for the cyclic collector."""
    pytest.importorskip("uvicorn")
    from pushserver.servers import serve_uvicorn

    while gc.collect():  # what earlier tests let go of is not ours (see above)
        pass
    sock = server.bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    app = PushServer(config.load(SETTINGS))
    listening = open_sockets()
    found: list[int] = []
    try:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as group:
                group.start_soon(
                    lambda: serve_uvicorn(
                        app, sock, access_log=False, shutdown_timeout=1, config=app.config
                    )
                )
                # The blocking client in a thread; its failure is raised here.
                await anyio.to_thread.run_sync(long_polls, port)
                # Until uvicorn has closed every connection: asyncio closes a socket right
                # after its protocol's connection_lost, so nothing of one is still running.
                while open_sockets() > listening:
                    await anyio.sleep(0.01)
                found.append(collected())
                group.cancel_scope.cancel()
    finally:
        sock.close()
    assert found == [0], f"{found[0]} objects were left in reference cycles"
