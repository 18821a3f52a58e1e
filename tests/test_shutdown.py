"""Graceful shutdown of real ``runpushserver`` processes: what each client sees on SIGTERM,
the bound on the exit, in-flight publishes, and rolling restarts behind a load balancer
with a real redis-server (a small TCP proxy in the test sends each new connection to the
first server that accepts it, as a load balancer with health by refusal does)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import uuid
from collections import Counter
from pathlib import Path

import anyio
import anyio.abc
import anyio.to_thread
import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from pushserver.app import PushServer
from pushserver.config import load
from pushserver.hypercorn import stock_worker
from pushserver.testing import PushServerProcess, RedisServer
from pushserver.transports.sse import SHUTDOWN_RETRY_MS
from tests.project.helpers import (
    asgi_request,
    path,
    position,
    wait_for_subscribers,
    worker_pids,
)
from tests.transports.streams import (
    SSEReader,
    closed_with,
    connect,
    event_stream,
    longpoll_id,
    ws_frame,
    ws_url,
)

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent

LOCATIONS = [
    {"type": "publisher", "prefix": "/publisher/"},
    {"type": "subscriber", "prefix": "/subscriber/", "create_on_get": True},
]
CONFIG = {"locations": LOCATIONS}
#: What the server may add to the shutdown timeout to close its stores (server.CLOSE_GRACE),
#: and slack for a loaded machine: bounds for fail_after, not timing assertions.
CLOSE_GRACE = 3.0
SLACK = 15.0


def redis_config(redis_server: RedisServer, prefix: str | None = None) -> dict:
    store = redis_server.store()
    if prefix is not None:
        store["key_prefix"] = prefix
    return {"store": store, "locations": LOCATIONS}


def host_port(server: PushServerProcess) -> tuple[str, int]:
    host, _, port = server.host.rpartition(":")
    return host, int(port)


async def exit_code(server: PushServerProcess, bound: float) -> int:
    """The server's exit status, which must come within ``bound`` seconds."""
    assert server.process is not None
    with anyio.fail_after(bound):
        return await anyio.to_thread.run_sync(server.process.wait)


async def refused(host: str, port: int) -> None:
    """Return once connecting is refused (observing another process: bounded polling)."""
    with anyio.fail_after(10):
        while True:
            try:
                stream = await anyio.connect_tcp(host, port)
            except OSError:
                return
            await stream.aclose()
            await anyio.sleep(0.01)


async def read_head(stream: anyio.abc.ByteStream) -> bytes:
    """Read one response head (through the blank line) from a raw connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive()
    head, _, rest = data.partition(b"\r\n\r\n")
    assert not rest or head.startswith(b"HTTP/1.1 100"), data
    return head


async def start_publish(host: str, port: int, channel: str, length: int) -> anyio.abc.ByteStream:
    """A POST whose head the server has taken up (it answered ``100 Continue``): from here
    it is in flight, and its body can follow whenever the test says."""
    stream = await anyio.connect_tcp(host, port)
    await stream.send(
        f"POST /publisher/{channel} HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: text/plain\r\nContent-Length: {length}\r\n"
        "Expect: 100-continue\r\n\r\n".encode()
    )
    head = await read_head(stream)
    assert head.startswith(b"HTTP/1.1 100"), head
    return stream


async def read_response(stream: anyio.abc.ByteStream) -> tuple[int, dict[str, str]]:
    """Status and headers of the response on a raw connection, read until it closes."""
    data = b""
    try:
        while True:
            data += await stream.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError):
        pass
    head = data.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    headers = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(head[0].split()[1]), headers


# -- what each client sees --------------------------------------------------------------


@pytest.mark.parametrize("loop", ["asyncio", "trio"])
async def test_every_transport_is_told_to_reconnect(push_server_factory, loop):
    server = push_server_factory(CONFIG, "--shutdown-timeout", "10", "--loop", loop)
    channel = f"bye-{uuid.uuid4().hex}"
    publisher = path("/publisher/", channel)
    subscriber = path("/subscriber/", channel)
    polled: list[httpx.Response] = []
    blocks = []
    closes = []
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        await client.post(publisher, content=b"first")
        first = await client.get(subscriber)
        message_id = longpoll_id(first)

        async def longpoll() -> None:
            polled.append(await client.get(subscriber, headers=position(first)))

        async def sse() -> None:
            async with event_stream(client, subscriber, last_event_id=message_id) as stream:
                assert stream.response.headers["connection"] == "close"
                while (block := await stream.block()) is not None:
                    blocks.append(block)

        async def websocket() -> None:
            url = ws_url(server, f"{subscriber}?last_event_id={message_id}")
            async with connect(url) as ws:
                closes.append(await closed_with(ws))

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(longpoll)
                tg.start_soon(sse)
                tg.start_soon(websocket)
                await wait_for_subscribers(client, publisher, 3)
                server.process.send_signal(signal.SIGTERM)
    assert await exit_code(server, 10 + CLOSE_GRACE + SLACK) == 0

    # Long-poll: 304 with its own position, and the connection is not kept.
    (response,) = polled
    assert response.status_code == 304
    assert position(response) == position(first)
    assert response.headers["connection"] == "close"
    # Event stream: no event, a comment and a new retry (random, spread out), then the end.
    (last,) = blocks
    assert last.data is None and last.comments == ["shutting down"]
    assert SHUTDOWN_RETRY_MS[0] <= last.retry <= SHUTDOWN_RETRY_MS[1]
    # WebSocket: close code 1001.
    assert closes == [(1001, "the server is shutting down")]
    assert "received SIGTERM, shutting down" in server.log
    assert "Traceback" not in server.log


async def test_in_flight_publish_finishes_and_is_kept(push_server_factory, redis_server):
    """A publish whose body is still arriving when SIGTERM comes is stored and answered
    201/202; meanwhile new connections are refused; the restarted server delivers it."""
    config = redis_config(redis_server)
    server = push_server_factory(config, "--shutdown-timeout", "20")
    host, port = host_port(server)
    channel = f"inflight-{uuid.uuid4().hex}"
    body = b"half and the other half"
    with anyio.fail_after(60):
        stream = await start_publish(host, port, channel, len(body))
        await stream.send(body[:5])
        server.process.send_signal(signal.SIGTERM)
        await refused(host, port)
        assert server.process.poll() is None  # still running: refused while finishing
        await stream.send(body[5:])
        status, headers = await read_response(stream)
        await stream.aclose()
    assert status == 202
    assert headers["connection"] == "close"
    assert await exit_code(server, 20 + CLOSE_GRACE + SLACK) == 0

    again = push_server_factory(config)
    async with httpx.AsyncClient(base_url=again.url, timeout=10) as client:
        response = await client.get(path("/subscriber/", channel))
    assert (response.status_code, response.content) == (200, body)


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_publish_arriving_during_shutdown_gets_503():
    """The request that slips in between the signal and the listening socket closing (a
    window too short to hit from outside) is refused, not half done: the app itself, on
    the ASGI interface hypercorn calls it through."""
    async with PushServer(load(CONFIG)) as app:
        app.begin_shutdown()
        sent = await asgi_request(app, "POST", "/publisher/late", b"late")
        assert sent[0]["status"] == 503
        assert (b"retry-after", b"1") in sent[0]["headers"]
        assert b"shutting down" in sent[1]["body"]
        assert await app.default_hub.info("late") is None  # nothing was published


# -- the bound --------------------------------------------------------------------------


@pytest.mark.skipif(
    stock_worker(),
    reason="hypercorn's own asyncio worker (0.18) never exits while a client that stopped "
    "reading holds a blocked write; pushserver's worker cuts it (Worker.cut)",
)
async def test_stalled_clients_do_not_hold_the_exit(push_server_factory):
    """A subscriber that stopped reading and a publisher that stopped sending its body are
    cut at the shutdown timeout; the server exits 0 within it (plus closing the stores)."""
    server = push_server_factory(CONFIG, "--shutdown-timeout", "1", "--no-access-log")
    host, port = host_port(server)
    channel = f"stall-{uuid.uuid4().hex}"
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        reader = await anyio.connect_tcp(host, port)
        await reader.send(
            f"GET /subscriber/{channel} HTTP/1.1\r\nHost: x\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        await wait_for_subscribers(client, path("/publisher/", channel), 1)
        # Far more than the socket buffers hold, never read: the server's writes block.
        big = b"x" * 900_000
        for _ in range(40):
            response = await client.post(path("/publisher/", channel), content=big)
            assert response.status_code == 201
        writer = await start_publish(host, port, f"half-{channel}", 100)
        await writer.send(b"only ten b")
    server.process.send_signal(signal.SIGTERM)
    assert await exit_code(server, 1 + CLOSE_GRACE + SLACK) == 0
    assert "Traceback" not in server.log, server.log
    await reader.aclose()
    await writer.aclose()


# -- the setting and the option ---------------------------------------------------------


@pytest.mark.parametrize("value", [0, -1, "5", True, None, float("nan"), float("inf")])
def test_bad_shutdown_timeout_is_a_check_error(value):
    from django.core import checks
    from django.test import override_settings

    with override_settings(PUSH_SERVER={"shutdown_timeout": value}):
        messages = [m for m in checks.run_checks() if m.id and m.id.startswith("pushserver.")]
    (message,) = messages
    assert message.id == "pushserver.E090"
    assert message.msg.startswith("PUSH_SERVER['shutdown_timeout']: must be a number of seconds")
    assert "e.g. 5" in message.hint


def test_shutdown_timeout_setting_and_option():
    from django.core.management import call_command
    from django.core.management.base import CommandError
    from django.test import override_settings

    from pushserver.management.commands.runpushserver import Command

    command = Command()
    with override_settings(PUSH_SERVER={}):
        assert command.resolve_shutdown_timeout(None) == 5.0
    with override_settings(PUSH_SERVER={"shutdown_timeout": 0.5}):
        assert command.resolve_shutdown_timeout(None) == 0.5
        assert command.resolve_shutdown_timeout(30.0) == 30.0  # the command line wins
    with pytest.raises(CommandError, match="--shutdown-timeout must be a number of seconds > 0"):
        call_command("runpushserver", "127.0.0.1:0", shutdown_timeout=0)


# -- workers ----------------------------------------------------------------------------


async def test_workers_stop_listening_at_once_and_finish_publishes(
    push_server_factory, redis_server
):
    config = redis_config(redis_server)
    server = push_server_factory(config, "--workers", "2", "--shutdown-timeout", "20")
    await worker_pids(server, 2)
    host, port = host_port(server)
    channel = f"workers-{uuid.uuid4().hex}"
    with anyio.fail_after(60):
        stream = await start_publish(host, port, channel, 8)
        await stream.send(b"in")
        server.process.send_signal(signal.SIGTERM)
        # The supervisor closed its copies of the sockets: nothing listens any more.
        await refused(host, port)
        assert server.process.poll() is None
        await stream.send(b"flight")
        status, headers = await read_response(stream)
        await stream.aclose()
    assert status == 202 and headers["connection"] == "close"
    assert await exit_code(server, 20 + CLOSE_GRACE + SLACK) == 0
    again = push_server_factory(config)
    async with httpx.AsyncClient(base_url=again.url, timeout=10) as client:
        response = await client.get(path("/subscriber/", channel))
    assert response.content == b"inflight"


async def test_supervisor_kills_a_worker_that_does_not_stop(push_server_factory, redis_server):
    from pushserver.supervisor import KILL_AFTER

    server = push_server_factory(
        redis_config(redis_server), "--workers", "2", "--shutdown-timeout", "1"
    )
    stuck, other = await worker_pids(server, 2)
    os.kill(stuck, signal.SIGSTOP)  # cannot act on SIGTERM; SIGKILL still ends it
    try:
        server.process.send_signal(signal.SIGTERM)
        assert await exit_code(server, 1 + KILL_AFTER + SLACK) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(stuck, signal.SIGKILL)
    assert "1 worker(s) still running 6s after the stop signal: killing them" in server.log
    assert f"worker {other}: received SIGTERM, shutting down" in server.log


# -- rolling restart behind a load balancer -------------------------------------------------


class Proxy:
    """A TCP load balancer: each new connection goes to the first backend that accepts it
    (a refused connect moves on to the next), then bytes are copied both ways."""

    def __init__(self, backends: list[int]) -> None:
        self.backends = backends
        self.routed: Counter[int] = Counter()
        self.port = 0

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
            self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
            task_status.started()
            await listener.serve(self.handle)

    async def handle(self, client: anyio.abc.SocketStream) -> None:
        async with client:
            for port in self.backends:
                try:
                    upstream = await anyio.connect_tcp("127.0.0.1", port)
                except OSError:
                    continue
                break
            else:
                return  # every backend refused: so does the proxy
            self.routed[port] += 1
            async with upstream, anyio.create_task_group() as tg:
                tg.start_soon(self.pipe, client, upstream, tg)
                tg.start_soon(self.pipe, upstream, client, tg)

    @staticmethod
    async def pipe(
        source: anyio.abc.SocketStream,
        sink: anyio.abc.SocketStream,
        tg: anyio.abc.TaskGroup,
    ) -> None:
        try:
            async for chunk in source:
                await sink.send(chunk)
            await sink.send_eof()  # a half-close passes through as one
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            tg.cancel_scope.cancel()  # a reset on one side ends both


class Subscriber:
    """Follows one channel through the proxy with one transport, reconnecting from its
    last position whatever ends the request, stream or socket; records what it gets."""

    def __init__(self, base_url: str, channel: str, transport: str) -> None:
        self.base_url = base_url
        self.channel = channel
        self.transport = transport
        self.received: list[bytes] = []
        self.last_id = ""  # message id of the last message received
        self.poll_headers: dict[str, str] = {}
        self.reconnects = 0
        self.ends: Counter[str] = Counter()  # how requests / streams / sockets ended

    async def follow(self, until: bytes) -> None:
        run = {"longpoll": self.longpoll, "eventsource": self.sse, "websocket": self.websocket}
        await run[self.transport](until)

    async def longpoll(self, until: bytes) -> None:
        url = path("/subscriber/", self.channel)
        async with httpx.AsyncClient(base_url=self.base_url, timeout=30) as client:
            while until not in self.received:
                try:
                    response = await client.get(url, headers=self.poll_headers)
                except httpx.TransportError as exc:
                    self.ends[type(exc).__name__] += 1
                    continue
                self.ends[str(response.status_code)] += 1
                if response.status_code == 200:
                    self.received.append(response.content)
                    self.poll_headers = position(response)
                else:
                    assert response.status_code == 304, response.text

    async def sse(self, until: bytes) -> None:
        url = path("/subscriber/", self.channel)
        async with httpx.AsyncClient(base_url=self.base_url, timeout=30) as client:
            while until not in self.received:
                headers = {"accept": "text/event-stream", "last-event-id": self.last_id}
                try:
                    async with client.stream("GET", url, headers=headers) as response:
                        assert response.status_code == 200
                        reader = SSEReader(response)
                        while (block := await reader.block()) is not None:
                            if block.data is not None:
                                self.received.append(block.data.encode())
                                self.last_id = block.id or ""
                                if until in self.received:
                                    return
                            elif "shutting down" in block.comments:
                                self.ends["shutting down"] += 1
                    self.ends["end"] += 1
                except httpx.TransportError as exc:
                    self.ends[type(exc).__name__] += 1

    async def websocket(self, until: bytes) -> None:
        base = self.base_url.replace("http://", "ws://") + path("/subscriber/", self.channel)
        while until not in self.received:
            url = f"{base}?last_event_id={self.last_id}" if self.last_id else base
            try:
                async with connect(url) as ws:
                    while True:
                        fields, body = ws_frame(await ws.recv())
                        self.received.append(body.encode() if isinstance(body, str) else body)
                        self.last_id = fields["id"]
                        if until in self.received:
                            return
            except ConnectionClosed as closed:
                code = closed.rcvd.code if closed.rcvd is not None else "no close frame"
                self.ends[str(code)] += 1
            except OSError as exc:
                self.ends[type(exc).__name__] += 1


class Publisher:
    """Publishes numbered messages through the proxy, one after another, until told to
    stop; records which were acknowledged (2xx) and which were not."""

    def __init__(self, base_url: str, channel: str) -> None:
        self.base_url = base_url
        self.channel = channel
        self.acked: list[bytes] = []
        self.failed: Counter[str] = Counter()
        self.sent = 0
        self.stop = anyio.Event()
        self.progress = anyio.Event()

    async def run(self) -> None:
        url = path("/publisher/", self.channel)
        async with httpx.AsyncClient(base_url=self.base_url, timeout=30) as client:
            while not self.stop.is_set():
                self.sent += 1
                body = b"m%06d" % self.sent
                try:
                    response = await client.post(url, content=body)
                except httpx.TransportError as exc:
                    self.failed[type(exc).__name__] += 1
                    continue
                if response.status_code in (201, 202):
                    self.acked.append(body)
                    self.progress.set()
                else:
                    self.failed[str(response.status_code)] += 1
                # Pacing for a steady stream on a shared machine, not synchronisation.
                await anyio.sleep(0.005)

    async def published_more(self, count: int) -> None:
        """Wait until ``count`` more messages were acknowledged."""
        target = len(self.acked) + count
        while len(self.acked) < target:
            self.progress = anyio.Event()
            await self.progress.wait()


def backend(config: dict, port: int = 0) -> PushServerProcess:
    return PushServerProcess(
        "tests.project.settings",
        push_server=config,
        args=["--no-access-log", "--shutdown-timeout", "10"],
        cwd=str(ROOT),
        address=f"127.0.0.1:{port}",
    ).start()


async def test_rolling_restart_behind_a_load_balancer_loses_nothing(redis_server):
    """Two servers sharing one Redis behind the proxy; a publisher and one subscriber per
    transport all go through the proxy. Stop the first server (SIGTERM), start it again,
    then the second: every acknowledged message reaches every subscriber exactly once, in
    order."""
    config = redis_config(redis_server)
    channel = f"rolling-{uuid.uuid4().hex}"
    servers = [await anyio.to_thread.run_sync(backend, config) for _ in range(2)]
    ports = [host_port(server)[1] for server in servers]
    proxy = Proxy(ports)
    last = b"the end"
    try:
        with anyio.fail_after(180):
            async with anyio.create_task_group() as tg:
                await tg.start(proxy.run)
                base_url = f"http://127.0.0.1:{proxy.port}"
                publisher = Publisher(base_url, channel)
                subscribers = [
                    Subscriber(base_url, channel, transport)
                    for transport in ("longpoll", "eventsource", "websocket")
                ]
                async with httpx.AsyncClient(base_url=base_url) as client:
                    assert (await client.put(path("/publisher/", channel))).status_code == 200
                    async with anyio.create_task_group() as following:
                        for subscriber in subscribers:
                            following.start_soon(subscriber.follow, last)
                        await rolling_restart(publisher, servers, ports, config)
                        response = await client.post(path("/publisher/", channel), content=last)
                        assert response.status_code == 201
                        publisher.acked.append(last)
                        # The subscribers end once they have the last message.
                tg.cancel_scope.cancel()  # the proxy
    finally:
        for server in servers:
            server.stop()

    report = {
        "acked": len(publisher.acked),
        "failed publishes": dict(publisher.failed),
        "routed": dict(proxy.routed),
        "ends": {s.transport: dict(s.ends) for s in subscribers},
    }
    print(json.dumps(report))
    assert proxy.routed[ports[0]] and proxy.routed[ports[1]], report
    # The streams were on the server stopped each time, and were told so.
    assert subscribers[1].ends["shutting down"] == 2, report
    assert subscribers[2].ends["1001"] == 2, report
    acked = set(publisher.acked)
    for subscriber in subscribers:
        received = subscriber.received
        what = (subscriber.transport, report)
        assert len(received) == len(set(received)), what  # nothing twice
        assert received == [*sorted(received[:-1]), last], what  # in publishing order
        assert [body for body in received if body in acked] == publisher.acked, what


async def rolling_restart(
    publisher: Publisher, servers: list[PushServerProcess], ports: list[int], config: dict
) -> None:
    """With the publisher running: SIGTERM each server in turn and start it again on its
    port, each step once messages went through in between."""
    async with anyio.create_task_group() as publishing:
        publishing.start_soon(publisher.run)
        await publisher.published_more(20)
        for index in (0, 1):
            stopping = servers[index]
            stopping.process.send_signal(signal.SIGTERM)
            assert await exit_code(stopping, 10 + CLOSE_GRACE + SLACK) == 0
            stopping.stop()  # reaps its output
            assert "Traceback" not in stopping.log
            await publisher.published_more(20)  # through the other server only
            servers[index] = await anyio.to_thread.run_sync(backend, config, ports[index])
            await publisher.published_more(20)
        publisher.stop.set()
