"""pushserver's asyncio worker (pushserver/asyncio_worker.py): its queue, event and shared
timer on a real event loop, the wsproto memory fix, and the connection layer against a real
server over raw sockets (pipelining, reading paused and resumed under a large body, a
client's half-close, a client that stops reading)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import anyio
import pytest

from pushserver import config, hypercorn_fixes, server
from pushserver.app import PushServer
from pushserver.asyncio_worker import READ_BUFFER_LIMIT, AppQueue, Deadlines, LeanEvent

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
    def __init__(self, name: str, fired: list[str], done: asyncio.Event, last: bool = False):
        self.name, self.fired, self.done, self.last = name, fired, done, last
        self.due = float("inf")

    def expire(self) -> None:
        self.fired.append(self.name)
        if self.name == "boom":
            raise RuntimeError("a callback failing must not stop the others")
        if self.last:
            self.done.set()


async def test_deadlines_expire_in_order_and_skip_stale_entries():
    deadlines = Deadlines()
    fired: list[str] = []
    done = asyncio.Event()
    now = time.monotonic()
    targets = {
        name: Target(name, fired, done, last=name == "c")
        for name in ("a", "boom", "b", "moved", "c")
    }
    for offset, name in [(0.03, "a"), (0.04, "boom"), (0.05, "b"), (0.06, "moved"), (0.09, "c")]:
        targets[name].due = now + offset
        deadlines.at(now + offset, targets[name])
    # "moved" is rescheduled later: its first entry is stale, only the second fires.
    targets["moved"].due = now + 0.07
    deadlines.at(now + 0.07, targets["moved"])
    with anyio.fail_after(5):
        await done.wait()
    assert fired == ["a", "boom", "b", "moved", "c"]
    assert all(t.due == float("inf") for t in targets.values())
    assert len(deadlines) == 0


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
        {"type": "subscriber", "prefix": "/subscriber/", "create_on_get": True,
         "transports": ["longpoll", "eventsource", "websocket"]},
    ],
}


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


async def serving(client) -> None:
    """Serve SETTINGS in this process while ``client(port)`` runs in a thread."""
    sock = server.bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    app = PushServer(config.load(SETTINGS))
    failure: list[BaseException] = []

    async def stop() -> None:
        try:
            await anyio.to_thread.run_sync(client, port)
        except BaseException as exc:
            failure.append(exc)

    try:
        with anyio.fail_after(60):
            await server.serve(app, sock, access_log=False, shutdown_trigger=stop)
    finally:
        sock.close()
    if failure:
        raise failure[0]


async def test_pipelined_requests_are_answered_in_order():
    def client(port: int) -> None:
        with socket.create_connection(("127.0.0.1", port)) as sock:
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
        with socket.create_connection(("127.0.0.1", port)) as sock:
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
            with socket.create_connection(("127.0.0.1", port)) as pub:
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


async def test_a_half_closed_client_still_gets_its_response_or_a_clean_close():
    def client(port: int) -> None:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"POST /publisher/half HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi")
            sock.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            # hypercorn hands the end of stream to the request: it may be answered first or
            # not, but the connection ends cleanly either way (no reset, no hang).
            assert data == b"" or data.startswith(b"HTTP/1.1 20"), data
        with socket.create_connection(("127.0.0.1", port)) as sock:
            buffer = bytearray()
            sock.sendall(b"GET /publisher/half HTTP/1.1\r\nHost: t\r\n\r\n")
            head, _ = read_response(sock, buffer)
            assert head.startswith(b"HTTP/1.1 200") or head.startswith(b"HTTP/1.1 404"), head

    await serving(client)


async def test_a_client_that_stops_reading_does_not_stop_the_others():
    payload = b"x" * (2 * 2**20)

    def client(port: int) -> None:
        with socket.create_connection(("127.0.0.1", port)) as pub:
            buffer = bytearray()
            pub.sendall(
                f"POST /publisher/stall HTTP/1.1\r\nHost: t\r\nContent-Length: {len(payload)}"
                f"\r\n\r\n".encode() + payload
            )
            assert read_response(pub, buffer)[0].startswith(b"HTTP/1.1 20")
            stalled = socket.create_connection(("127.0.0.1", port))
            stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            try:
                # Asks for the 2 MiB message five times over and never reads.
                stalled.sendall(b"GET /subscriber/stall HTTP/1.1\r\nHost: t\r\n\r\n" * 5)
                for i in range(20):
                    with socket.create_connection(("127.0.0.1", port)) as other:
                        other.sendall(
                            f"POST /publisher/ok HTTP/1.1\r\nHost: t\r\nContent-Length: 1"
                            f"\r\n\r\n{i % 10}".encode()
                        )
                        assert read_response(other, bytearray())[0].startswith(b"HTTP/1.1 20")
            finally:
                stalled.close()

    await serving(client)
