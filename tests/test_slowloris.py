"""Hostile request heads against a real runpushserver, on asyncio and on trio: half-sent
requests (slowloris) are closed after ``client_header_timeout`` while everyone else is
served, held streams are never cut by it, and an oversized head gets 431."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import httpx
import pytest
from websockets.exceptions import InvalidStatus

from pushserver.testing import PushServerProcess
from tests.conftest import ROOT
from tests.project.helpers import path, wait_for_subscribers
from tests.transports.streams import connect, event_stream, ws_frame, ws_url

pytestmark = pytest.mark.anyio

#: Seconds; short, so the test does not wait long for the server to close connections.
HEADER_TIMEOUT = 1
HEADER_LIMIT = 4096
HALF_SENT = 50

CONFIG = {
    "client_header_timeout": HEADER_TIMEOUT,
    "max_header_size": HEADER_LIMIT,
    "locations": [
        {"type": "publisher", "prefix": "/publisher/"},
        # No keepalives: a quiet stream must outlive the header timeout on its own.
        {"type": "subscriber", "prefix": "/subscriber/", "create_on_get": True, "ping_interval": 0},
        {
            "type": "subscriber",
            "prefix": "/cors/",
            "create_on_get": True,
            "allow_origin": ["http://a.example", "http://b.example"],
        },
    ],
}


@pytest.fixture(scope="module", params=["asyncio", "trio"])
def server(request) -> Iterator[PushServerProcess]:
    args = ["--loop", request.param]
    with PushServerProcess(
        "tests.project.settings", push_server=CONFIG, args=args, cwd=str(ROOT)
    ) as process:
        yield process
        # Whatever the test threw at it, the server said nothing it did not mean to.
        assert "Traceback" not in process.log, process.log


def address(server: PushServerProcess) -> tuple[str, int]:
    host, port = server.host.rsplit(":", 1)
    return host, int(port)


async def read_until_closed(stream: anyio.abc.ByteStream) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    while True:
        try:
            received += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
            return received


async def publish_and_poll(client: httpx.AsyncClient, channel: str, body: bytes) -> None:
    """A long-poll subscriber waits on ``channel``; a publish reaches it."""
    result: dict[str, httpx.Response] = {}

    async def poll() -> None:
        result["poll"] = await client.get(path("/subscriber/", channel))

    async with anyio.create_task_group() as tg:
        tg.start_soon(poll)
        await wait_for_subscribers(client, path("/publisher/", channel), 1)
        published = await client.post(path("/publisher/", channel), content=body)
        assert published.status_code == 201, published.text
    assert result["poll"].status_code == 200
    assert result["poll"].content == body


# -- slowloris -------------------------------------------------------------------------------


async def test_half_sent_requests_are_closed_and_stop_nobody(server):
    host, port = address(server)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        with anyio.fail_after(60):
            held: dict[str, object] = {}

            async def held_long_poll() -> None:
                held["poll"] = await client.get(path("/subscriber/", "held-poll"))

            async with anyio.create_task_group() as tg:
                # Streams opened before the attack: quiet for longer than the header timeout.
                tg.start_soon(held_long_poll)
                await wait_for_subscribers(client, path("/publisher/", "held-poll"), 1)
                ws = await connect(ws_url(server, "/subscriber/held-ws"))
                async with event_stream(client, "/subscriber/held-sse") as sse:
                    # 50 requests that never finish their head; half of them trickle a
                    # byte now and then, as slowloris does to look alive.
                    slow = [await anyio.connect_tcp(host, port) for _ in range(HALF_SENT)]
                    for stream in slow:
                        await stream.send(b"GET /subscriber/slow HTTP/1.1\r\nHost: x\r\nX-A: ")
                    closed: list[bytes] = []

                    async def watch(stream: anyio.abc.ByteStream, trickle: bool) -> None:
                        async with anyio.create_task_group() as inner:
                            if trickle:

                                async def drip() -> None:
                                    while True:
                                        try:
                                            await stream.send(b"a")
                                        except (anyio.BrokenResourceError, OSError):
                                            return  # closed by the server: seen below
                                        await anyio.sleep(0.2)  # the attacker's pace

                                inner.start_soon(drip)
                            closed.append(await read_until_closed(stream))
                            inner.cancel_scope.cancel()

                    async with anyio.create_task_group() as watchers:
                        for index, stream in enumerate(slow):
                            watchers.start_soon(watch, stream, index % 2 == 0)
                        # Meanwhile a normal client subscribes and publishes as usual.
                        await publish_and_poll(client, "during-slowloris", b"served")
                    # Every half-sent request was closed by the server, without an answer.
                    assert closed == [b""] * HALF_SENT
                    for stream in slow:
                        await stream.aclose()

                    # The streams opened before were not cut: each still gets its message.
                    await client.post(path("/publisher/", "held-sse"), content=b"sse")
                    assert (await sse.event()).data == "sse"
                await client.post(path("/publisher/", "held-ws"), content=b"ws")
                assert ws_frame(await ws.recv())[1] == b"ws"  # octet-stream: a binary frame
                await ws.close()
                await client.post(path("/publisher/", "held-poll"), content=b"poll")
            assert held["poll"].status_code == 200  # type: ignore[attr-defined]
            assert held["poll"].content == b"poll"  # type: ignore[attr-defined]
            await publish_and_poll(client, "after-slowloris", b"still served")


async def test_idle_keep_alive_connection_is_closed(server):
    """The same timer closes a kept-alive connection that sends no next request."""
    host, port = address(server)
    with anyio.fail_after(30):
        stream = await anyio.connect_tcp(host, port)
        await stream.send(b"PUT /publisher/idle HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        received = await read_until_closed(stream)
        await stream.aclose()
    assert received.startswith(b"HTTP/1.1 200 ")
    assert received.count(b"HTTP/1.1") == 1  # one answer, then the close


# -- oversized heads -------------------------------------------------------------------------


@pytest.mark.parametrize("pieces", [1, 8])
async def test_oversized_head_gets_431(server, pieces):
    """Whether the head arrives in one piece (measured by the application) or in several
    (hypercorn's parser gives up on it while it is incomplete), the answer is 431."""
    host, port = address(server)
    head = (
        b"GET /cors/big HTTP/1.1\r\nHost: x\r\nOrigin: http://b.example\r\n"
        + b"X-Big: "
        + b"a" * (HEADER_LIMIT + 100)
        + b"\r\nConnection: close\r\n\r\n"
    )
    with anyio.fail_after(20):
        stream = await anyio.connect_tcp(host, port)
        size = -(-len(head) // pieces)
        for start in range(0, len(head), size):
            await stream.send(head[start : start + size])
            if pieces > 1:
                await anyio.sleep(0.05)  # separate reads on the server's side
        received = await read_until_closed(stream)
        await stream.aclose()
    status_line, _, rest = received.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 431 "
    if pieces == 1:
        # The application's answer: a short body, and the location's CORS headers.
        assert b"431 Request Header Fields Too Large: the request head is larger than" in rest
        assert b"access-control-allow-origin: http://b.example" in rest.lower()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        await publish_and_poll(client, f"after-431-{pieces}", b"fine")


async def test_head_under_the_limit_is_served(server):
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        response = await client.put(
            path("/publisher/", "roomy"), headers={"x-fill": "a" * (HEADER_LIMIT - 512)}
        )
    assert response.status_code == 200


async def test_websocket_upgrade_with_oversized_head_gets_431(server):
    with anyio.fail_after(20):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(
                ws_url(server, "/subscriber/ws-big"),
                additional_headers={"x-big": "a" * (HEADER_LIMIT + 100)},
            ):
                pass
    assert refused.value.response.status_code == 431
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        await publish_and_poll(client, "after-ws-431", b"fine")
