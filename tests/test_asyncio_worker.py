"""pushserver's asyncio worker (pushserver/hypercorn/worker.py): its queue, event and shared
timer on a real event loop, the wsproto memory fix, and the connection layer against a real
server over raw sockets (pipelining, reading paused and resumed under a large body, a
client's half-close, a client that stops reading)."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time

import anyio
import pytest

from pushserver import config, server
from pushserver.app import PushServer
from pushserver.hypercorn import fixes as hypercorn_fixes
from pushserver.hypercorn import stock_worker
from pushserver.hypercorn.worker import READ_BUFFER_LIMIT, AppQueue, Deadlines, LeanEvent

pytestmark = pytest.mark.anyio


@pytest.fixture(params=[{}, {"use_uvloop": True}], ids=["asyncio", "uvloop"])
def anyio_backend(request):
    return ("asyncio", request.param)


# -- the queue, the event, the timer ------------------------------------------------------


async def test_app_queue_is_a_bounded_fifo():
    queue = AppQueue(2)
    await queue.put(1)
    await queue.put(2)
    put_done = asyncio.Event()

    async def third() -> None:
        await queue.put(3)
        put_done.set()

    task = asyncio.get_running_loop().create_task(third())
    await asyncio.sleep(0)  # let it block on the full queue
    assert not put_done.is_set() and queue.qsize() == 2
    assert await queue.get() == 1
    with anyio.fail_after(5):
        await put_done.wait()
    assert [await queue.get(), await queue.get()] == [2, 3]
    await task
    with pytest.raises(IndexError):
        queue.get_nowait()


async def test_app_queue_get_loses_nothing_to_a_cancelled_getter():
    queue = AppQueue()
    loop = asyncio.get_running_loop()
    first = loop.create_task(queue.get())
    second = loop.create_task(queue.get())
    await asyncio.sleep(0)
    await queue.put("only")  # wakes the first getter ...
    first.cancel()  # ... which is cancelled before it runs: the second must get the item
    with anyio.fail_after(5):
        assert await second == "only"
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_app_queue_calls_its_listener_after_each_put():
    queue = AppQueue()
    seen: list[int] = []
    queue.listener = lambda: seen.append(queue.qsize())
    await queue.put("a")
    await queue.put("b")
    assert seen == [1, 2]
    assert queue.get_nowait() == "a"


async def test_lean_event_wakes_every_waiter_and_clears():
    event = LeanEvent()
    loop = asyncio.get_running_loop()
    waiters = [loop.create_task(event.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    await event.set()
    with anyio.fail_after(5):
        await asyncio.gather(*waiters)
    assert event.is_set()
    await event.wait()  # set: returns at once
    await event.clear()
    assert not event.is_set()
    late = loop.create_task(event.wait())
    await asyncio.sleep(0)
    late.cancel()  # a cancelled waiter leaves nothing behind
    with pytest.raises(asyncio.CancelledError):
        await late
    assert not event._waiters


class Target:
    def __init__(self, name: str, fired: list[tuple[str, float]], done: asyncio.Event):
        self.name, self.fired, self.done = name, fired, done

    def expire(self, now: float) -> None:
        self.fired.append((self.name, now))
        if self.name == "boom":
            raise RuntimeError("a callback failing must not stop the others")
        if self.name == "last":
            self.done.set()


async def test_deadlines_expire_in_order_and_skip_cancelled_entries():
    deadlines = Deadlines()
    fired: list[tuple[str, float]] = []
    done = asyncio.Event()
    start = time.monotonic()
    entries = {}
    for offset, name in [
        (0.03, "a"),
        (0.04, "boom"),
        (0.05, "b"),
        (0.06, "moved"),
        (0.09, "last"),
        (0.07, "dropped"),
    ]:
        entries[name] = deadlines.at(start + offset, Target(name, fired, done))
    # "moved" is filed again later (its first entry cancelled); "dropped" is cancelled.
    Deadlines.cancel(entries["moved"])
    deadlines.at(start + 0.08, Target("moved", fired, done))
    Deadlines.cancel(entries["dropped"])
    assert entries["dropped"][2] is None  # the heap no longer holds its target
    with anyio.fail_after(5):
        await done.wait()
    assert [name for name, _ in fired] == ["a", "boom", "b", "moved", "last"]
    # Each is told a time at or after its deadline (the timer's slack included).
    deadline = {"a": 0.03, "boom": 0.04, "b": 0.05, "moved": 0.08, "last": 0.09}
    assert all(now >= start + deadline[name] for name, now in fired)
    assert len(deadlines) == 0


async def test_watchers_with_close_deadlines_wake_once_per_ping(monkeypatch):
    """Many streams' keepalives fall within the shared timer's slack of each other: each is
    one wake per ping, not a spin until the clock reaches it."""
    from pushserver.transports import streaming

    expired = 0
    expire = streaming._Watcher.expire

    def counting_expire(self, now: float) -> None:
        nonlocal expired
        expired += 1
        expire(self, now)

    monkeypatch.setattr(streaming._Watcher, "expire", counting_expire)
    deadlines = Deadlines()
    pings = 0
    enough = asyncio.Event()
    watchers, rounds, interval = 40, 4, 0.05

    async def one(index: int) -> None:
        queue = AppQueue(0, deadlines)
        release = asyncio.Event()

        async def ping() -> None:
            nonlocal pings
            pings += 1
            if pings >= watchers * rounds:
                enough.set()

        async def handle(message) -> bool:
            return True  # the "disconnect" put below ends the connection

        async def main() -> None:
            await release.wait()

        async def leave() -> None:
            await enough.wait()
            await queue.put({"type": "http.disconnect"})

        leaving = asyncio.get_running_loop().create_task(leave())
        # Intervals half a millisecond apart: keepalives fall due within the slack of
        # each other, some already reached and some just ahead when the timer fires.
        every = interval + index * 0.0005
        await streaming.SendGuard(None).run(main, queue.get, handle, ping, every, queue)
        await leaving

    with anyio.fail_after(20):
        await asyncio.gather(*(one(index) for index in range(watchers)))
    assert expired <= pings + watchers, (expired, pings)


async def test_a_queued_request_body_is_dropped_without_a_task_and_a_disconnect_ends_the_wait():
    """A GET's empty body is queued before the app runs: watching a long-poll or a stream
    takes it off without starting a task or calling ``handle``; the disconnect that
    follows reaches ``handle`` and ends the wait."""
    from pushserver.transports import streaming

    queue = AppQueue(0, Deadlines())
    await queue.put({"type": "http.request", "body": b"", "more_body": False})
    seen: list[str] = []
    waiting = asyncio.Event()
    tasks_while_waiting = 0

    async def handle(message) -> bool:
        seen.append(message["type"])
        return message["type"] == "http.disconnect"

    async def main() -> None:
        nonlocal tasks_while_waiting
        tasks_while_waiting = len(asyncio.all_tasks())
        waiting.set()
        await asyncio.sleep(30)  # a long-poll's wait: ended by the watcher

    async def leave() -> None:
        await waiting.wait()
        await queue.put({"type": "http.disconnect"})

    before = len(asyncio.all_tasks())
    leaving = asyncio.get_running_loop().create_task(leave())
    with anyio.fail_after(5):
        await streaming.SendGuard(None).run(main, queue.get, handle, inbox=queue)
        await leaving
    assert tasks_while_waiting == before + 1  # this task and leave(): no watching task
    assert seen == ["http.disconnect"]
    assert queue.qsize() == 0


# -- wsproto ------------------------------------------------------------------------------


def test_wsproto_connections_get_a_list_backlog_that_still_reports_a_drop():
    from wsproto.connection import Connection, ConnectionType
    from wsproto.events import CloseConnection
    from wsproto.frame_protocol import CloseReason

    hypercorn_fixes.lighter_websocket_connections()
    hypercorn_fixes.lighter_websocket_connections()  # idempotent
    connection = Connection(ConnectionType.SERVER)
    assert type(connection._events) is hypercorn_fixes._EventList
    connection.receive_data(None)  # the peer went away without a close frame
    events = list(connection.events())
    assert len(events) == 1 and isinstance(events[0], CloseConnection)
    assert events[0].code == CloseReason.ABNORMAL_CLOSURE
    assert list(connection.events()) == []


# -- connections against a real server ----------------------------------------------------

SETTINGS = {
    "store": {"type": "memory", "max_messages": 50},
    "max_message_size": 4 * 2**20,
    "locations": [
        {"type": "publisher", "prefix": "/publisher/"},
        {
            "type": "subscriber",
            "prefix": "/subscriber/",
            "create_on_get": True,
            "transports": ["longpoll", "eventsource", "websocket"],
        },
    ],
}


def connect(port: int) -> socket.socket:
    """A client connection whose reads and writes fail after 10 s instead of hanging."""
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def read_response(sock: socket.socket, buffer: bytearray) -> tuple[bytes, bytes]:
    """One response from ``sock``; what follows it stays in ``buffer``."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {bytes(buffer)!r}")
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed in a body")
        rest += chunk
    buffer[:] = rest[length:]
    return head, rest[:length]


def half_close_and_read(sock: socket.socket, request: bytes) -> bytes:
    """Send ``request``, close the sending side, and read until the server closes."""
    sock.sendall(request)
    sock.shutdown(socket.SHUT_WR)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


async def serving(client, settings=SETTINGS, until=None, graceful_timeout: float = 5.0) -> None:
    """Serve ``settings`` in this process while ``client(port)`` runs in a thread, then
    (when given) until ``until(app)`` is true, then shut down; the whole within 30 s."""
    sock = server.bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    app = PushServer(config.load(settings))
    failure: list[BaseException] = []

    async def stop() -> None:
        try:
            # Abandoned at the deadline: a client stuck in a read must not outlive it.
            await anyio.to_thread.run_sync(client, port, abandon_on_cancel=True)
            while until is not None and not until(app):
                await anyio.sleep(0.01)
        except Exception as exc:
            failure.append(exc)

    try:
        with anyio.fail_after(30):
            await server.serve(
                app,
                sock,
                access_log=False,
                shutdown_trigger=stop,
                graceful_timeout=graceful_timeout,
            )
    finally:
        sock.close()
    if failure:
        raise failure[0]


async def test_pipelined_requests_are_answered_in_order():
    def client(port: int) -> None:
        with connect(port) as sock:
            requests = b"".join(
                f"POST /publisher/pipe HTTP/1.1\r\nHost: t\r\nContent-Length: {len(str(i))}"
                f"\r\n\r\n{i}".encode()
                for i in range(30)
            )
            sock.sendall(requests + b"GET /publisher/pipe HTTP/1.1\r\nHost: t\r\n\r\n")
            buffer = bytearray()
            for _ in range(30):
                head, _ = read_response(sock, buffer)
                assert head.startswith(b"HTTP/1.1 20"), head
            head, body = read_response(sock, buffer)
            assert head.startswith(b"HTTP/1.1 200"), head
            assert b'"messages": 30' in body or b"queued messages: 30" in body, body

    await serving(client)


async def test_a_large_body_pauses_and_resumes_reading_and_arrives_whole():
    size = 16 * READ_BUFFER_LIMIT
    payload = bytes(range(256)) * (size // 256)

    def client(port: int) -> None:
        with connect(port) as sock:
            # A long poll that waits, and behind it on the same connection a request with a
            # large body: h11 holds the second until the first is answered, so the server
            # stops reading (the body would otherwise pile up in memory) ...
            writer = threading.Thread(
                target=sock.sendall,
                args=(
                    b"GET /subscriber/wait HTTP/1.1\r\nHost: t\r\n\r\n"
                    + f"POST /publisher/big HTTP/1.1\r\nHost: t\r\nContent-Length: "
                    f"{len(payload)}\r\n\r\n".encode()
                    + payload
                    + b"GET /subscriber/big HTTP/1.1\r\nHost: t\r\n\r\n",
                ),
            )
            writer.start()
            # ... and reads on once a publish on another connection answers the poll.
            with connect(port) as pub:
                pub.sendall(
                    b"POST /publisher/wait HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\n!"
                )
                assert read_response(pub, bytearray())[0].startswith(b"HTTP/1.1 20")
            buffer = bytearray()
            head, body = read_response(sock, buffer)
            assert head.startswith(b"HTTP/1.1 200") and body == b"!", (head, body)
            head, _ = read_response(sock, buffer)
            assert head.startswith(b"HTTP/1.1 20"), head
            head, body = read_response(sock, buffer)
            assert head.startswith(b"HTTP/1.1 200"), head
            assert body == payload
            writer.join()

    await serving(client)


@pytest.mark.skipif(
    stock_worker(),
    reason="hypercorn's own asyncio worker (0.18) neither answers nor closes a client "
    "that half-closed",
)
async def test_a_half_closed_client_still_gets_its_response_or_a_clean_close():
    def client(port: int) -> None:
        with connect(port) as sock:
            data = half_close_and_read(
                sock, b"POST /publisher/half HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi"
            )
            # hypercorn hands the end of stream to the request: it may be answered first or
            # not, but the connection ends cleanly either way (no reset, no hang).
            assert data == b"" or data.startswith(b"HTTP/1.1 20"), data
        with connect(port) as sock:
            buffer = bytearray()
            sock.sendall(b"GET /publisher/half HTTP/1.1\r\nHost: t\r\n\r\n")
            head, _ = read_response(sock, buffer)
            if data:  # answered: the message was published, so the channel exists
                assert head.startswith(b"HTTP/1.1 200"), head
            else:
                assert head.startswith(b"HTTP/1.1 200") or head.startswith(b"HTTP/1.1 404"), head

    await serving(client)


async def test_a_client_that_stops_reading_does_not_stop_the_others():
    payload = b"x" * (2 * 2**20)

    def client(port: int) -> None:
        with connect(port) as pub:
            buffer = bytearray()
            pub.sendall(
                f"POST /publisher/stall HTTP/1.1\r\nHost: t\r\nContent-Length: {len(payload)}"
                f"\r\n\r\n".encode()
                + payload
            )
            assert read_response(pub, buffer)[0].startswith(b"HTTP/1.1 20")
            stalled = connect(port)
            stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            try:
                # Asks for the 2 MiB message five times over and never reads.
                stalled.sendall(b"GET /subscriber/stall HTTP/1.1\r\nHost: t\r\n\r\n" * 5)
                for i in range(20):
                    with connect(port) as other:
                        other.sendall(
                            f"POST /publisher/ok HTTP/1.1\r\nHost: t\r\nContent-Length: 1"
                            f"\r\n\r\n{i % 10}".encode()
                        )
                        assert read_response(other, bytearray())[0].startswith(b"HTTP/1.1 20")
            finally:
                stalled.close()

    await serving(client)


async def test_a_request_cut_short_by_the_client_closing_its_side_is_answered_400():
    def client(port: int) -> None:
        with connect(port) as sock:
            cut = b"POST /publisher/cut HTTP/1.1\r\nHost: t\r\nContent-Le"
            data = half_close_and_read(sock, cut)
            assert data.startswith(b"HTTP/1.1 400"), data

    await serving(client)


STREAMING = {
    **SETTINGS,
    "client_header_timeout": 1,
    "locations": [
        {"type": "publisher", "prefix": "/publisher/"},
        {
            "type": "subscriber",
            "prefix": "/subscriber/",
            "create_on_get": True,
            "transports": ["eventsource"],
            "ping_interval": 0.1,
            "send_timeout": 0.5,
        },
    ],
}


@pytest.mark.skipif(
    stock_worker(),
    reason="hypercorn's own asyncio worker (0.18) holds a request pipelined behind a "
    "stream whose client left",
)
async def test_a_request_pipelined_behind_a_stream_whose_client_left_is_let_go():
    """The second request waits (h11) for the stream's end, which comes only once the
    stream finds its client gone: the connection must then end, not wait forever (the
    server's shutdown, waiting up to a minute for its connections, would show it)."""

    def client(port: int) -> None:
        sock = connect(port)
        stream = b"GET /subscriber/piped HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n\r\n"
        sock.sendall(stream + b"GET /publisher/piped HTTP/1.1\r\nHost: t\r\n\r\n")
        head, _ = read_response(sock, bytearray())  # the stream's head (no Content-Length)
        assert head.startswith(b"HTTP/1.1 200"), head
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # a reset

    await serving(
        client,
        STREAMING,
        until=lambda app: app.hubs["default"].metrics.eventsource == 0,
        graceful_timeout=60,
    )


@pytest.mark.skipif(
    stock_worker(),
    reason="hypercorn's own asyncio worker (0.18) has no cut for a stalled reader (Worker.cut)",
)
async def test_a_stream_cut_for_a_stalled_reader_is_closed_within_the_header_timeout():
    """After the send timeout what is queued for a client that stopped reading waits for it
    at most client_header_timeout (1 s here), then the connection is cut: a graceful close
    alone would wait for as long as the client keeps its socket open."""
    body = b"y" * 60_000

    def client(port: int) -> None:
        stalled = socket.socket()
        stalled.settimeout(10)
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", port))
        stalled.sendall(
            b"GET /subscriber/stalled HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n\r\n"
        )
        with connect(port) as pub:
            buffer = bytearray()
            for _ in range(160):  # 9.6 MB: far more than the socket buffers hold
                pub.sendall(
                    f"POST /publisher/stalled HTTP/1.1\r\nHost: t\r\nContent-Length: "
                    f"{len(body)}\r\n\r\n".encode()
                    + body
                )
                assert read_response(pub, buffer)[0].startswith(b"HTTP/1.1 20")
        client.stalled = stalled  # never read; closed once the server has let go

    try:
        await serving(
            client,
            STREAMING,
            until=lambda app: (
                app.hubs["default"].metrics.slow_eventsource == 1
                and app.hubs["default"].metrics.eventsource == 0
            ),
            graceful_timeout=60,
        )
    finally:
        stalled = getattr(client, "stalled", None)
        if stalled is not None:
            stalled.close()


async def test_app_queue_put_passes_on_a_slot_its_cancelled_putter_was_woken_for():
    queue = AppQueue(1)
    await queue.put("full")
    loop = asyncio.get_running_loop()
    first = loop.create_task(queue.put("first"))
    second = loop.create_task(queue.put("second"))
    await asyncio.sleep(0)  # both wait for a slot
    assert queue.get_nowait() == "full"  # wakes the first putter ...
    first.cancel()  # ... which is cancelled before it runs: the second must get the slot
    with anyio.fail_after(5):
        await second
    assert queue.get_nowait() == "second"
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_a_watching_failure_is_raised_and_leaves_no_reference_cycle():
    import gc

    from pushserver.transports import streaming

    class TooSlow(Exception):
        pass

    async def one() -> str:
        async def ping() -> None:
            raise TooSlow("the keepalive could not be written")

        async def handle(message) -> bool:
            return False

        queue = AppQueue(0, Deadlines())
        try:
            await streaming.SendGuard(None).run(
                lambda: asyncio.sleep(10), queue.get, handle, ping, 0.01, queue
            )
        except TooSlow as exc:
            return str(exc)
        return ""

    # Until a collection finds nothing: on Python 3.12+ the finalizers one runs (what the
    # previous test's runner left) can make cycles only the next one finds.
    while gc.collect():
        pass
    gc.disable()
    try:
        with anyio.fail_after(5):
            assert await one() == "the keepalive could not be written"
        await asyncio.sleep(0)  # one loop turn: the side task's done callbacks let it go
        assert gc.collect() == 0
    finally:
        gc.enable()


async def test_run_shielded_work_survives_a_native_cancel_of_its_caller():
    from pushserver._async import run_shielded

    finished = asyncio.Event()
    started = asyncio.Event()
    release = asyncio.Event()

    async def work() -> str:
        started.set()
        await release.wait()
        finished.set()
        return "done"

    caller = asyncio.get_running_loop().create_task(run_shielded(work))
    await started.wait()
    caller.cancel()  # asyncio's own cancel, which an anyio shield alone does not stop
    with pytest.raises(asyncio.CancelledError):
        await caller
    release.set()
    with anyio.fail_after(5):
        await finished.wait()


@pytest.mark.skipif(
    stock_worker(),
    reason="pushserver's worker only: it lets go of the h11 connection after a 101",
)
async def test_a_websocket_lets_its_h11_connection_go_after_the_101_and_still_closes_cleanly():
    import gc

    import h11
    from hypercorn.protocol.h11 import H11WSConnection
    from hypercorn.protocol.ws_stream import WSStream

    from pushserver.hypercorn.worker import _ACCEPTED, _SWITCHED

    def client(port: int) -> None:
        with connect(port) as sock:
            sock.sendall(
                b"GET /subscriber/ws-switch HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\n\r\n"
            )
            buffer = bytearray()
            head, _ = read_response(sock, buffer)
            assert head.startswith(b"HTTP/1.1 101"), head
            upgraded = [o for o in gc.get_objects() if type(o) is H11WSConnection]
            assert len(upgraded) == 1
            # Nothing more can be sent through it (h11 itself refuses every event now).
            assert upgraded[0].h11_connection is _SWITCHED
            with pytest.raises(h11.LocalProtocolError):
                upgraded[0].send(h11.Data(data=b"x"))
            # Its stream keeps of the handshake only that it was accepted (no extension
            # was offered): the close below is a frame it takes.
            streams = [o for o in gc.get_objects() if type(o) is WSStream]
            assert len(streams) == 1 and streams[0].handshake is _ACCEPTED
            # The WebSocket still works: a close (masked, code 1000) is answered in kind.
            mask = b"\x01\x02\x03\x04"
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(struct.pack("!H", 1000)))
            sock.sendall(b"\x88\x82" + mask + payload)
            data = bytes(buffer)
            while b"\x88" not in data:
                chunk = sock.recv(65536)
                assert chunk, data
                data += chunk
            assert data[data.index(b"\x88") + 2 :][:2] == struct.pack("!H", 1000)

    await serving(client)


def test_h11_refuses_every_event_after_a_101_as_the_stand_in_does():
    import h11

    from pushserver.hypercorn.worker import _SWITCHED

    for event in (
        h11.Data(data=b"x"),
        h11.EndOfMessage(),
        h11.Response(status_code=200, headers=[]),
    ):
        connection = h11.Connection(h11.SERVER)
        connection.receive_data(
            b"GET / HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        )
        assert isinstance(connection.next_event(), h11.Request)
        connection.send(h11.InformationalResponse(status_code=101, headers=[(b"upgrade", b"ws")]))
        assert connection.our_state is h11.SWITCHED_PROTOCOL is _SWITCHED.our_state
        with pytest.raises(h11.LocalProtocolError):
            connection.send(event)
        with pytest.raises(h11.LocalProtocolError):
            _SWITCHED.send(event)
