"""Fan-out that writes without a task switch per subscriber (issue 15, item 6).

A subscriber that keeps up gets each message written to its connection by the hub's
fan-out loop (pushserver's hypercorn worker, :class:`pushserver.engine.SendNow`); one that
stops reading falls back to its queue and is caught up as ever. The server runs in this
process (real sockets, real HTTP and WebSocket clients on the same event loop), so the tests
can read the hub's counters and count the subscriber task's wakes.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import socket
from contextlib import asynccontextmanager

import anyio
import httpx
import pytest
from websockets.asyncio.client import connect as ws_connect

from pushserver import config, server
from pushserver.app import PushServer
from pushserver.hub import Hub
from pushserver.hypercorn import stock_worker
from pushserver.message import ORIGIN, MessageId
from pushserver.protocol import format_compound_id
from pushserver.transports.websocket import NCHAN_META, PUSHSERVER_V1
from tests.transports.streams import event_stream, ws_frame

pytestmark = pytest.mark.anyio

#: The direct write is what pushserver's own worker offers (``SEND_NOW``); hypercorn's stock
#: worker (``PUSHSERVER_HYPERCORN_WORKER=stock``, ``nox -s tests_stock_worker``) has none.
ours_worker = pytest.mark.skipif(
    stock_worker(), reason="hypercorn's stock worker offers no direct write"
)

BUFFER = 8
SETTINGS = {
    "store": {"type": "memory", "max_messages": BUFFER},
    "locations": [
        {"type": "publisher", "prefix": "/publisher/"},
        {
            "type": "subscriber",
            "prefix": "/subscriber/",
            "create_on_get": True,
            "transports": ["eventsource", "websocket"],
            "ping_interval": 0,
        },
    ],
}


@asynccontextmanager
async def serving(under: str = "pushserver", wrap=None, settings=SETTINGS):
    """The app served in this process (``wrap(app)`` if given: a middleware); yields it
    and the base URL."""
    sock = server.bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    app = PushServer(config.load(settings))
    served = app if wrap is None else wrap(app)
    stop = anyio.Event()
    try:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as group:
                if under == "uvicorn":
                    from pushserver.servers import serve_uvicorn

                    group.start_soon(
                        lambda: serve_uvicorn(
                            served, sock, access_log=False, shutdown_timeout=1, config=app.config
                        )
                    )
                else:
                    group.start_soon(
                        lambda: server.serve(
                            served,
                            sock,
                            access_log=False,
                            shutdown_trigger=stop.wait,
                            graceful_timeout=1,
                        )
                    )
                try:
                    yield app, f"http://127.0.0.1:{port}"
                finally:
                    if under == "uvicorn":
                        group.cancel_scope.cancel()
                    else:
                        stop.set()
    finally:
        sock.close()


def stalling_socket(url: str) -> socket.socket:
    """A connection to the server with a tiny receive buffer: its writes block soon."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", int(url.rsplit(":", 1)[1])))
    return sock


class Wakes:
    """Counts the wakeups subscriptions make: one per wait, so one per wake of a waiting
    subscriber task (on asyncio a wakeup is a loop future, as the hub's own factory makes)."""

    def __init__(self, hub: Hub) -> None:
        self.count = 0
        create_future = asyncio.get_running_loop().create_future

        def new_wakeup():
            self.count += 1
            return create_future()

        hub.new_wakeup = new_wakeup


def hub_of(app: PushServer) -> Hub:
    return app.hubs["default"]


async def publish(client: httpx.AsyncClient, channel: str, body: str | bytes) -> MessageId:
    """Publish; the new message's id (the channel's last)."""
    response = await client.post(
        f"/publisher/{channel}", content=body, headers={"content-type": "text/plain"}
    )
    assert response.status_code in (201, 202), response.text
    info = await client.get(f"/publisher/{channel}", headers={"accept": "application/json"})
    return MessageId.parse(info.json()["last_message_id"])


@ours_worker
async def test_sse_subscriber_keeping_up_is_written_to_without_waking(anyio_backend):
    async with serving() as (app, url), httpx.AsyncClient(base_url=url, timeout=10) as client:
        hub = hub_of(app)
        ids = []
        async with event_stream(client, "/subscriber/keep") as reader:
            await wait_waiting(hub, "keep")
            wakes = Wakes(hub)
            before = hub.delivered_directly
            for n in range(20):
                ids.append(await publish(client, "keep", f"m{n}\nline two"))
                event = await reader.event()
                assert (event.id, event.data) == (str(ids[-1]), f"m{n}\nline two")
            assert hub.delivered_directly - before == 20
            assert wakes.count == 0  # the subscriber's task never woke for a message
        # Resuming after messages written that way continues exactly.
        later = [await publish(client, "keep", f"later {n}") for n in range(3)]
        async with event_stream(client, "/subscriber/keep", last_event_id=str(ids[-1])) as reader:
            events = await reader.events(3)
            assert [(e.id, e.data) for e in events] == [
                (str(i), f"later {n}") for n, i in enumerate(later)
            ]
            await wait_waiting(hub, "keep")
            # ... and is written to at once from there on.
            before = hub.delivered_directly
            last = await publish(client, "keep", "live")
            event = await reader.event()
            assert (event.id, event.data) == (str(last), "live")
            assert hub.delivered_directly - before == 1
        async with event_stream(client, "/subscriber/keep", last_event_id=str(ids[9])) as reader:
            gap = await reader.event()  # what came after ids[9] has partly left the buffer
            assert gap.event == "pushserver.gap" and gap.json["after"] == str(ids[9])
            events = await reader.events(BUFFER)
            retained = [*ids, *later, last][-BUFFER:]
            assert [e.id for e in events] == [str(i) for i in retained]


class passing_send_through:
    """A middleware whose ``send`` is its own function passing each message on: no server's
    writer owns it, so the fan-out steps it (pushserver.transports.eager.EagerSend).
    (``server.serve`` also asks it to begin the app's shutdown and to close it.)"""

    def __init__(self, app: PushServer) -> None:
        self.app = app
        self.begin_shutdown = app.begin_shutdown
        self.aclose = app.aclose

    def change(self, message) -> None:
        """What it does to a message on its way (nothing)."""

    async def __call__(self, scope, receive, send):
        async def sending(message):
            self.change(message)
            await send(message)

        await self.app(scope, receive, sending)


class adding_a_header(passing_send_through):
    """A middleware that adds a header to every response by changing the start message's
    own header list, as some ASGI middleware does."""

    def change(self, message) -> None:
        if message["type"] == "http.response.start":
            message["headers"].append((b"x-added", b"1"))


@ours_worker
@pytest.mark.parametrize("wrap", [None, adding_a_header], ids=["worker", "middleware"])
async def test_sse_streams_of_a_location_start_with_the_same_headers(anyio_backend, wrap):
    """The streams of a location share one ``http.response.start`` where the worker's own
    stream sends it; a middleware that changes it changes a copy, so each stream (not the
    next one again) gets what it adds."""
    added = [] if wrap is None else ["1"]
    async with (
        serving(wrap=wrap) as (_app, url),
        httpx.AsyncClient(base_url=url, timeout=10) as client,
    ):
        for n in range(3):
            async with client.stream(
                "GET", f"/subscriber/h{n}", headers={"accept": "text/event-stream"}
            ) as response:
                assert response.status_code == 200
                assert response.headers.get_list("x-added") == added
                assert response.headers.get_list("connection") == ["close"]
                assert response.headers["content-type"] == "text/event-stream; charset=utf-8"


@ours_worker
async def test_sse_multiplexed_stream_keeps_its_compound_ids(anyio_backend):
    async with serving() as (app, url), httpx.AsyncClient(base_url=url, timeout=10) as client:
        hub = hub_of(app)
        first_a = await publish(client, "ma", "a0")
        first_b = await publish(client, "mb", "b0")
        positions = {"ma": first_a, "mb": first_b}
        resume = format_compound_id(positions.values(), -1)
        async with event_stream(client, "/subscriber/ma,mb", last_event_id=resume) as reader:
            await wait_waiting(hub, "ma")
            wakes = Wakes(hub)
            before = hub.delivered_directly
            for n in range(12):
                channel = ("ma", "mb")[n % 3 == 2]
                positions[channel] = await publish(client, channel, f"{channel} {n}")
                event = await reader.event()
                marked = list(positions).index(channel)
                assert event.id == format_compound_id(positions.values(), marked)
                assert event.data == f"{channel} {n}"
            assert hub.delivered_directly - before == 12
            assert wakes.count == 0
            last_seen = event.id
        late = await publish(client, "mb", "after")
        async with event_stream(client, "/subscriber/ma,mb", last_event_id=last_seen) as reader:
            event = await reader.event()
            positions["mb"] = late
            assert (event.id, event.data) == (format_compound_id(positions.values(), 1), "after")


@ours_worker
@pytest.mark.parametrize("mode", [None, NCHAN_META, PUSHSERVER_V1])
@pytest.mark.parametrize("channels", [["w1"], ["w1", "w2"]])
async def test_ws_subscriber_keeping_up_is_written_to_in_every_mode(anyio_backend, mode, channels):
    suffix = {None: "plain", NCHAN_META: "nchan", PUSHSERVER_V1: "v1"}[mode]
    path = ",".join(f"{c}-{suffix}" for c in channels)
    names = path.split(",")
    async with serving() as (app, url), httpx.AsyncClient(base_url=url, timeout=10) as client:
        hub = hub_of(app)
        positions = dict.fromkeys(names, ORIGIN)
        uri = url.replace("http://", "ws://") + f"/subscriber/{path}"
        async with ws_connect(uri, subprotocols=[mode] if mode else None) as ws:
            await wait_waiting(hub, names[0])
            wakes = Wakes(hub)
            before = hub.delivered_directly
            for n in range(9):
                channel = names[n % len(names)]
                body = f"{channel} {n}"
                positions[channel] = await publish(client, channel, body)
                with anyio.fail_after(10):
                    frame = await ws.recv()
                if mode is None:
                    assert frame == body
                    continue
                fields, received = ws_frame(frame)
                assert received == body
                if mode == PUSHSERVER_V1:
                    assert fields == {
                        "id": str(positions[channel]),
                        "channel": channel,
                        "content-type": "text/plain",
                    }
                elif len(names) == 1:
                    assert fields == {"id": str(positions[channel]), "content-type": "text/plain"}
                else:
                    marked = names.index(channel)
                    compound = format_compound_id(positions.values(), marked)
                    assert fields == {"id": compound, "content-type": "text/plain"}
            assert hub.delivered_directly - before == 9
            assert wakes.count == 0


@ours_worker
async def test_ws_subscribers_with_and_without_compression_each_get_their_frames(anyio_backend):
    """Connections without extensions share a message's frame; one with permessage-deflate
    (websockets' default offer) is framed, and compressed, on its own."""
    async with serving() as (app, url), httpx.AsyncClient(base_url=url, timeout=10) as client:
        hub = hub_of(app)
        uri = url.replace("http://", "ws://") + "/subscriber/z"
        async with (
            ws_connect(uri, compression=None) as plain_one,
            ws_connect(uri, compression=None) as plain_two,
            ws_connect(uri) as deflated,
        ):
            assert deflated.protocol.extensions and not plain_one.protocol.extensions
            await wait_waiting(hub, "z", subscribers=3)
            before = hub.delivered_directly
            for n in range(6):
                body = f"{n} " + "compressible " * 50
                await publish(client, "z", body)
                for ws in (plain_one, deflated, plain_two):
                    with anyio.fail_after(10):
                        assert await ws.recv() == body
            assert hub.delivered_directly - before == 18


@ours_worker
async def test_ws_channel_added_by_command_gets_its_buffer_before_live_messages(anyio_backend):
    async with serving() as (app, url), httpx.AsyncClient(base_url=url, timeout=10) as client:
        hub = hub_of(app)
        old = [await publish(client, "cb", f"old {n}") for n in range(3)]
        uri = url.replace("http://", "ws://") + "/subscriber/ca"
        async with ws_connect(uri, subprotocols=[PUSHSERVER_V1]) as ws:
            await wait_waiting(hub, "ca")
            a = await publish(client, "ca", "a live")
            assert ws_frame(await ws.recv()) == (
                {"id": str(a), "channel": "ca", "content-type": "text/plain"},
                "a live",
            )
            await ws.send(json.dumps({"subscribe": "cb", "last_event_id": str(old[0])}))
            assert json.loads(await ws.recv()) == {"type": "subscribed", "channel": "cb"}
            new = await publish(client, "cb", "new")
            bodies = [ws_frame(await ws.recv())[1] for _ in range(3)]
            assert bodies == ["old 1", "old 2", "new"]
            await wait_waiting(hub, "ca")
            before = hub.delivered_directly
            newer = await publish(client, "cb", "newer")
            fields, body = ws_frame(await ws.recv())
            assert (fields["id"], body) == (str(newer), "newer")
            assert newer > new and hub.delivered_directly - before == 1


@pytest.mark.parametrize(
    "under", [pytest.param("pushserver", marks=ours_worker), "uvicorn", "uvicorn-middleware"]
)
async def test_sse_reader_that_stops_reading_falls_back_to_the_queue(anyio_backend, under):
    """Under uvicorn its own writer declines once the connection is paused; through a
    middleware the fan-out steps ``send`` (EagerSend), the step that meets the pause is
    finished by a task of its own, and what follows is queued behind it."""
    if under.startswith("uvicorn"):
        pytest.importorskip("uvicorn")
    wrap = passing_send_through if under == "uvicorn-middleware" else None
    count = 300
    big = b"x" * 65536
    async with (
        serving(under.removesuffix("-middleware"), wrap=wrap) as (app, url),
        httpx.AsyncClient(base_url=url, timeout=30) as client,
    ):
        hub = hub_of(app)
        sock = stalling_socket(url)
        try:
            sock.sendall(
                b"GET /subscriber/stall HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n\r\n"
            )
            await wait_waiting(hub, "stall")
            before = hub.delivered_directly
            # Keeping up: the first messages are small and read at once.
            received = bytearray()
            for n in range(5):
                await publish(client, "stall", b"%05d" % n)
                while b"data: %05d" % n not in received:
                    received += await anyio.to_thread.run_sync(sock.recv, 65536)
            assert hub.delivered_directly - before == 5
            # Then it stops reading: the socket buffers fill, the transport pauses, and the
            # rest is queued, overflows and is caught up from the buffer.
            for n in range(5, count):
                await publish(client, "stall", b"%05d" % n + big)
            direct = hub.delivered_directly - before
            assert 5 < direct < count - 64
            last = b"data: %05d" % (count - 1)

            def read_to_the_end() -> bytes:
                # Reading again, faster than through the window it stalled with.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
                data = bytes(received)
                sock.settimeout(20)
                while last not in data:
                    chunk = sock.recv(1 << 20)
                    assert chunk, "the stream ended"
                    data += chunk
                return data

            data = await anyio.to_thread.run_sync(read_to_the_end)
        finally:
            sock.close()
        numbers, gaps = [], []
        for line in data.split(b"\n"):
            if line.startswith(b"data: {"):
                gaps.append(json.loads(line[6:]))
            elif line.startswith(b"data: "):
                numbers.append(int(line[6:11]))
        # In order, nothing repeated, the loss told by one gap, ending at the newest.
        assert numbers == sorted(set(numbers)) and numbers[-1] == count - 1
        assert numbers[: direct + 64] == list(range(direct + 64))
        assert numbers[-BUFFER:] == list(range(count - BUFFER, count))
        assert len(gaps) == 1 and gaps[0]["channel"] == "stall"
        assert hub.metrics.catch_ups == 1


def dechunk(data: bytes) -> tuple[bytes, bytes]:
    """The body of the whole chunks at the front of ``data`` (a chunked body), and the rest;
    fails on anything that is not chunked framing."""
    body = bytearray()
    while True:
        end = data.find(b"\r\n")
        if end < 0:
            return bytes(body), data
        size = int(data[:end], 16)
        if len(data) < end + 2 + size + 2:
            return bytes(body), data
        assert data[end + 2 + size : end + 4 + size] == b"\r\n", data
        body += data[end + 2 : end + 2 + size]
        data = data[end + 4 + size :]


@ours_worker
async def test_sse_chunk_is_made_once_for_every_chunked_subscriber(anyio_backend, monkeypatch):
    """Chunked event streams (HTTP/1.1) share a message's chunk; an HTTP/1.0 one, whose
    body h11 writes unframed, gets the bare event. Each reads exactly the events."""
    import h11

    datas = []
    send = h11.Connection.send

    def counting_send(self, event):
        if type(event) is h11.Data and self.our_role is h11.SERVER and b"data: m" in event.data:
            datas.append(self.their_http_version)
        return send(self, event)

    monkeypatch.setattr(h11.Connection, "send", counting_send)
    async with serving() as (app, url), httpx.AsyncClient(base_url=url, timeout=10) as client:
        hub = hub_of(app)
        port = int(url.rsplit(":", 1)[1])
        streams = {}
        try:
            for name, version in (("a", b"1.1"), ("b", b"1.1"), ("old", b"1.0")):
                stream = await anyio.connect_tcp("127.0.0.1", port)
                streams[name] = (stream, version, bytearray())
                await stream.send(
                    b"GET /subscriber/shared HTTP/%b\r\nHost: t\r\n"
                    b"Accept: text/event-stream\r\n\r\n" % version
                )
            await wait_waiting(hub, "shared", 3)
            datas.clear()
            before = hub.delivered_directly
            ids = []
            for n in range(10):
                ids.append(await publish(client, "shared", f"m{n}"))
                for stream, _, received in streams.values():
                    with anyio.fail_after(10):
                        while b"data: m%d\n" % n not in received:
                            received += await stream.receive()
            assert hub.delivered_directly - before == 30
            # h11 framed each chunked stream's first message only; the HTTP/1.0 one, each.
            assert sorted(datas) == [b"1.0"] * 10 + [b"1.1"] * 2
        finally:
            for stream, _, _ in streams.values():
                await stream.aclose()
        expected = b"".join(
            b"id: %b\ndata: m%d\n\n" % (str(i).encode(), n) for n, i in enumerate(ids)
        )
        bodies = {}
        for name, (_, version, received) in streams.items():
            head, _, rest = bytes(received).partition(b"\r\n\r\n")
            if version == b"1.1":
                assert b"transfer-encoding: chunked" in head.lower()
                rest, left = dechunk(rest)
                assert left == b""
            else:
                assert b"transfer-encoding" not in head.lower()
            bodies[name] = rest
            assert rest.endswith(expected), (name, rest)
        assert bodies["a"] == bodies["b"] == bodies["old"]


@pytest.mark.parametrize("mode", [None, NCHAN_META, PUSHSERVER_V1])
async def test_under_uvicorn_a_subscriber_keeping_up_is_written_to_at_once(anyio_backend, mode):
    """uvicorn's writer (pushserver.uvicorn.writer) writes a message at once while the
    connection is not paused, so neither subscriber's task wakes for a message."""
    pytest.importorskip("uvicorn")
    async with (
        serving("uvicorn") as (app, url),
        httpx.AsyncClient(base_url=url, timeout=10) as client,
    ):
        hub = hub_of(app)
        async with event_stream(client, "/subscriber/uv") as reader:
            uri = url.replace("http://", "ws://") + "/subscriber/uv"
            async with ws_connect(uri, subprotocols=[mode] if mode else None) as ws:
                await wait_waiting(hub, "uv", subscribers=2)
                wakes = Wakes(hub)
                for n in range(5):
                    message_id = await publish(client, "uv", f"u{n}")
                    event = await reader.event()
                    assert (event.id, event.data) == (str(message_id), f"u{n}")
                    with anyio.fail_after(10):
                        frame = await ws.recv()
                    if mode is None:
                        assert frame == f"u{n}"
                    else:
                        fields, body = ws_frame(frame)
                        assert (fields["id"], body) == (str(message_id), f"u{n}")
                assert wakes.count == 0
        assert hub.delivered == 10
        assert hub.delivered_directly == 10


class context_and_messages:
    """A middleware that sets a context variable for the request and records, for every
    message the app sends, its type and the variable as the send sees it."""

    current: contextvars.ContextVar[str] = contextvars.ContextVar("request")

    def __init__(self, app: PushServer) -> None:
        self.app = app
        self.begin_shutdown = app.begin_shutdown
        self.aclose = app.aclose
        self.seen: list[tuple[str, str, bytes]] = []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/subscriber/"):
            await self.app(scope, receive, send)
            return
        self.current.set(scope["path"])

        async def sending(message):
            self.seen.append((self.current.get(), message["type"], message.get("body", b"")))
            await send(message)

        await self.app(scope, receive, sending)


async def test_under_uvicorn_a_middleware_sees_each_message_once_in_the_request_context(
    anyio_backend,
):
    """Written at once through a middleware: its ``send`` is called once per message, in
    the request's context (a context variable it set is what it reads), and what it
    passes on is what the client gets."""
    pytest.importorskip("uvicorn")
    middleware = None

    def wrap(app):
        nonlocal middleware
        middleware = context_and_messages(app)
        return middleware

    async with (
        serving("uvicorn", wrap=wrap) as (app, url),
        httpx.AsyncClient(base_url=url, timeout=10) as client,
    ):
        hub = hub_of(app)
        async with (
            event_stream(client, "/subscriber/mw-a") as a,
            event_stream(client, "/subscriber/mw-b") as b,
        ):
            await wait_waiting(hub, "mw-a")
            await wait_waiting(hub, "mw-b")
            for n in range(4):
                for channel, reader in (("mw-a", a), ("mw-b", b)):
                    await publish(client, channel, f"{channel} {n}")
                    assert (await reader.event()).data == f"{channel} {n}"
        assert hub.delivered_directly == 8
    assert middleware is not None
    for path in ("/subscriber/mw-a", "/subscriber/mw-b"):
        bodies = [body for seen, kind, body in middleware.seen if seen == path and b"data:" in body]
        channel = path.rsplit("/", 1)[1]
        assert [body.split(b"data: ")[1].strip() for body in bodies] == [
            f"{channel} {n}".encode() for n in range(4)
        ]
    assert {seen for seen, _, _ in middleware.seen} == {"/subscriber/mw-a", "/subscriber/mw-b"}


async def wait_waiting(hub: Hub, channel: str, subscribers: int = 1) -> None:
    """Until ``subscribers`` subscriptions of ``channel`` wait with a writer lent (or, where
    there is none, wait at all), i.e. the streams are caught up and idle."""
    with anyio.fail_after(10):
        while True:
            local = hub._subscriptions.get(channel)
            found = [] if local is None else list(local) if type(local) is dict else [local]
            if len(found) >= subscribers and all(s._wakeup is not None for s in found):
                return
            await anyio.sleep(0.005)


@pytest.mark.parametrize("wrap", [None, passing_send_through], ids=["uvicorn", "middleware"])
async def test_under_uvicorn_a_stalled_websocket_gets_its_messages_in_order_then_is_closed(
    anyio_backend, wrap
):
    """A WebSocket that stops reading under uvicorn: uvicorn's writer declines once the
    connection is paused (through a middleware: the stepped ``send`` that meets the pause
    is finished by a task of its own), what follows is queued behind it, and after the
    send timeout the connection is closed as too slow; what it got before is every message
    from the first, in order, once each."""
    pytest.importorskip("uvicorn")
    from tests.transports.test_backpressure import COUNT, RawWebSocket, numbered

    settings = {
        **SETTINGS,
        "locations": [
            *SETTINGS["locations"],
            {
                "type": "subscriber",
                "prefix": "/impatient/",
                "create_on_get": True,
                "ping_interval": 0,
                "send_timeout": 1,
            },
        ],
    }
    async with (
        serving("uvicorn", wrap=wrap, settings=settings) as (app, url),
        httpx.AsyncClient(base_url=url, timeout=30) as client,
    ):
        hub = hub_of(app)
        sock = stalling_socket(url)
        try:
            slow = await anyio.to_thread.run_sync(
                lambda: RawWebSocket(sock, "/impatient/wstall", subprotocols=())
            )
            await wait_waiting(hub, "wstall")
            uri = url.replace("http://", "ws://") + "/subscriber/wstall"
            async with ws_connect(uri, max_size=None, compression=None) as fast:
                await wait_waiting(hub, "wstall", subscribers=2)
                for n in range(COUNT):
                    response = await client.post("/publisher/wstall", content=numbered(n))
                    assert response.status_code == 201
                    with anyio.fail_after(20):
                        assert await fast.recv() == numbered(n)
            with anyio.fail_after(30):
                while hub.metrics.slow_websocket == 0:
                    await anyio.sleep(0.01)
            frames = await anyio.to_thread.run_sync(slow.frames, lambda frame: False)
        finally:
            sock.close()
    numbers = [int(frame[:5]) for frame in frames]
    assert all(frame == numbered(int(frame[:5])) for frame in frames)
    assert numbers == list(range(len(numbers))) and 0 < len(numbers) < COUNT
    assert hub.metrics.slow_websocket == 1
    # uvicorn writes nothing while the connection is paused, the close frame included: it
    # leaves if the client reads again within CLOSE_TIMEOUT (this one starts reading as the
    # server gives up on it, but a loaded machine may take longer), else the connection is
    # dropped (1006 at the client).
    assert slow.close is not None
    assert (slow.close.code, slow.close.reason) in {
        (4408, "too slow: stopped reading"),
        (1006, None),
    }


async def test_sse_over_http2_gets_every_message_in_order(anyio_backend):
    """pushserver's worker offers no writer of its own over HTTP/2 (h2's flow control is
    hypercorn's): the fan-out steps hypercorn's h2 ``send``, which takes a message into
    the stream's buffer at once while the window is open. The client gets every message,
    in order, once, and the subscriber's task never woke for one."""
    async with (
        serving() as (app, url),
        httpx.AsyncClient(base_url=url, http1=False, http2=True, timeout=10) as h2,
        httpx.AsyncClient(base_url=url, timeout=10) as client,
    ):
        hub = hub_of(app)
        async with event_stream(h2, "/subscriber/over-h2") as reader:
            assert reader.response.http_version == "HTTP/2"
            await wait_waiting(hub, "over-h2")
            for n in range(8):
                message_id = await publish(client, "over-h2", f"h{n}")
                event = await reader.event()
                assert (event.id, event.data) == (str(message_id), f"h{n}")
        assert hub.delivered == hub.delivered_directly == 8


async def test_under_uvicorn_a_message_is_framed_once_for_all_its_subscribers(
    anyio_backend, monkeypatch
):
    """uvicorn's own writer (pushserver.uvicorn.writer): a message's chunk and its
    WebSocket frame are made once for every event stream and every WebSocket without
    extensions, and each client reads exactly the messages."""
    pytest.importorskip("uvicorn")
    from pushserver.uvicorn import writer

    made = {"chunk": 0, "frame": 0}
    for name in made:
        original = getattr(writer, name)

        def counting(argument, name=name, original=original):
            made[name] += 1
            return original(argument)

        monkeypatch.setattr(writer, name, counting)
    async with (
        serving("uvicorn") as (app, url),
        httpx.AsyncClient(base_url=url, timeout=10) as client,
    ):
        hub = hub_of(app)
        uri = url.replace("http://", "ws://") + "/subscriber/once"
        async with (
            event_stream(client, "/subscriber/once") as one,
            event_stream(client, "/subscriber/once") as two,
            ws_connect(uri, compression=None) as three,
            ws_connect(uri, compression=None) as four,
        ):
            await wait_waiting(hub, "once", subscribers=4)
            for n in range(5):
                message_id = await publish(client, "once", f"o{n}")
                for reader in (one, two):
                    event = await reader.event()
                    assert (event.id, event.data) == (str(message_id), f"o{n}")
                for ws in (three, four):
                    with anyio.fail_after(10):
                        assert await ws.recv() == f"o{n}"
        assert hub.delivered_directly == 20
    assert made == {"chunk": 5, "frame": 5}
