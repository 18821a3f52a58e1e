"""Hostile HTTP on raw sockets against a real server: malformed requests, HTTP/1.0,
pipelining, oversized heads, body framing tricks, h2c upgrades and HTTP/2, broken
WebSocket handshakes and frames. Every case runs on asyncio and on trio.

Each case checks the exact answer, and after every case a normal client is still served
(a publish reaching a waiting long poll) and the server has logged no traceback.
hypercorn refuses what it cannot parse itself, before the push server sees it, with an
empty ``400`` (``content-length: 0``, ``connection: close``) and closes the connection.
docs/protocol.md ("Hostile input") lists the answers.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest
from anyio.abc import ByteStream

from pushserver.testing import PushServerProcess
from tests.project.helpers import assert_still_serving, path, wait_for_subscribers
from tests.transports.streams import connect as ws_connect

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent

CONFIG = {
    "locations": [
        {"type": "publisher", "prefix": "/publisher/"},
        {"type": "publisher", "prefix": "/tiny/", "max_message_size": 16},
        {"type": "subscriber", "prefix": "/subscriber/", "create_on_get": True},
    ]
}


@pytest.fixture(scope="module", params=["asyncio", "trio"])
def server(request):
    """This module's real server, once per event loop: hypercorn schedules differently on
    trio (one case here used to end the whole server there, and only there)."""
    args = ["--loop", "trio"] if request.param == "trio" else []
    with PushServerProcess(
        "tests.project.settings", push_server=CONFIG, args=args, cwd=str(ROOT)
    ) as process:
        yield process


#: Every raw exchange is bounded: a server that stops answering fails the test.
TIMEOUT = 10
#: hypercorn's default limit on a request head that is still incomplete (h11).
HEAD_LIMIT = 16 * 1024


# -- a raw HTTP/1.x client ------------------------------------------------------------------


@dataclass
class Response:
    version: bytes
    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    chunked: bool = False
    chunks: list[bytes] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        values = [v for n, v in self.headers if n == name]
        return ", ".join(values) if values else None


class Connection:
    """One TCP connection: write bytes as they are, read responses as they come."""

    def __init__(self, stream: ByteStream) -> None:
        self.stream = stream
        self.buffer = b""
        self.eof = False

    async def send(self, data: bytes) -> None:
        await self.stream.send(data)

    async def _fill(self) -> bool:
        if self.eof:
            return False
        try:
            self.buffer += await self.stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
            self.eof = True
            return False
        return True

    async def readline(self) -> bytes:
        while b"\r\n" not in self.buffer:
            if not await self._fill():
                raise EOFError(f"closed in the middle of a line: {self.buffer!r}")
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    async def read(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not await self._fill():
                raise EOFError(f"closed after {len(self.buffer)} of {size} bytes")
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    async def read_some(self) -> bytes:
        """What has arrived, at least one byte (b"" once the server closed)."""
        if not self.buffer:
            await self._fill()
        data, self.buffer = self.buffer, b""
        return data

    async def closed_by_server(self) -> bool:
        """True once the server closed the connection with nothing more to read."""
        return not self.buffer and not await self._fill()

    async def response(self, *, head_only: bool = False, method: bytes = b"GET") -> Response:
        status_line = await self.readline()
        version, status, _ = status_line.split(b" ", 2)
        headers = []
        while line := await self.readline():
            name, _, value = line.decode("latin-1").partition(":")
            headers.append((name.strip().lower(), value.strip()))
        response = Response(version, int(status), headers)
        if head_only or method == b"HEAD" or response.status in (101, 204, 304):
            return response
        if (response.header("transfer-encoding") or "").lower() == "chunked":
            response.chunked = True
            while size := int((await self.readline()).split(b";")[0], 16):
                response.chunks.append(await self.read(size))
                assert await self.readline() == b""
            while await self.readline():  # trailers
                pass
            response.body = b"".join(response.chunks)
        elif (length := response.header("content-length")) is not None:
            response.body = await self.read(int(length))
        else:
            while data := await self.read_some():
                response.body += data
        return response


async def connect(server) -> Connection:
    host, port = server.host.rsplit(":", 1)
    return Connection(await anyio.connect_tcp(host, int(port)))


async def exchange(server, data: bytes, count: int = 1) -> tuple[list[Response], bool]:
    """Send ``data`` in one write; read ``count`` responses; say if the server then closed."""
    with anyio.fail_after(TIMEOUT):
        connection = await connect(server)
        async with connection.stream:
            await connection.send(data)
            responses = [await connection.response() for _ in range(count)]
            closed = responses[-1].header("connection") == "close" and (
                await connection.closed_by_server()
            )
    return responses, closed


def assert_hypercorn_400(response: Response, status: int = 400) -> None:
    """hypercorn's own refusal: the status, an empty body, connection: close."""
    assert response.status == status
    assert response.body == b""
    assert response.header("content-length") == "0"
    assert response.header("connection") == "close"


def assert_short_error(response: Response, status: int, reason: str) -> None:
    """The push server's own refusal: the status and one short line saying why."""
    assert response.status == status
    assert response.header("content-type") == "text/plain; charset=utf-8"
    text = response.body.decode()
    assert text.startswith(f"{status} ") and text.endswith("\n") and len(text) < 200
    assert reason in text


def request(method: str, target: str, *headers: str, body: bytes = b"", version="1.1") -> bytes:
    lines = [f"{method} {target} HTTP/{version}", *headers]
    if version == "1.1" and not any(h.lower().startswith("host:") for h in headers):
        lines.insert(1, "Host: test")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def channel_name() -> str:
    return f"h-{uuid.uuid4().hex}"


@pytest.fixture(autouse=True)
async def still_serving(server, client):
    """After every hostile case: a normal client is served, and no traceback was logged."""
    yield
    await assert_still_serving(client, channel_name())
    assert "Traceback" not in server.log


# -- malformed requests ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"GET /publisher/a\r\n\r\n",  # no HTTP version
        b"GET /publisher/a HTTP/1.1 extra\r\nHost: t\r\n\r\n",
        b"GET /publisher/a\x00 HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /subscriber/\xc4\x8d HTTP/1.1\r\nHost: t\r\n\r\n",  # raw non-ASCII target
        b"GET /publisher/a b HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /publisher/a HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
        b"GET /publisher/a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET /publisher/a HTTP/1.1\r\nHost: t\r\nBad Name: x\r\n\r\n",
        b"GET /publisher/a HTTP/1.1\r\nHost: t\r\n: no name\r\n\r\n",
        b"GET /publisher/a HTTP/1.1\r\nHost: t\r\nX: a\x00b\r\n\r\n",
        b"\r\n\r\nGET /publisher/a HTTP/1.1\r\nHost: t\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40),  # a TLS ClientHello
        b"POST /publisher/a HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n",
        b"POST /publisher/a HTTP/1.1\r\nHost: t\r\nContent-Length: 1e3\r\n\r\n",
        b"POST /publisher/a HTTP/1.1\r\nHost: t\r\nContent-Length: " + b"9" * 30 + b"\r\n\r\n",
        b"POST /publisher/a HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
    ],
)
async def test_malformed_requests_get_hypercorns_400(server, data):
    [response], closed = await exchange(server, data)
    assert_hypercorn_400(response)
    assert closed


@pytest.mark.parametrize(
    ("data", "status", "reason"),
    [
        # Method names are case-insensitive to hypercorn, which upper-cases them.
        (request("get", "/publisher/missing"), 404, "no such channel"),
        # An absolute-form target is taken as the path: it matches no location.
        (request("GET", "http://test/publisher/a"), 404, "no push location matches this path"),
        (request("OPTIONS", "*"), 404, "no push location matches this path"),
        (request("CONNECT", "test:80"), 404, "no push location matches this path"),
        (request("BREW", "/publisher/a"), 405, "BREW is not allowed here"),
        # Bare LF line ends are accepted (h11 is lenient there) and so is an unknown version.
        (b"GET /publisher/missing HTTP/1.1\nHost: t\n\n", 404, "no such channel"),
        (request("GET", "/publisher/missing", version="3.0"), 404, "no such channel"),
    ],
)
async def test_odd_but_parseable_requests_reach_the_push_server(server, data, status, reason):
    [response], _ = await exchange(server, data)
    assert_short_error(response, status, reason)


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("/subscriber/%zz", "malformed percent-encoding"),
        ("/subscriber/a%", "malformed percent-encoding"),
        ("/subscriber/%ff%fe", "not UTF-8"),
        ("/subscriber/%C0%AF", "not UTF-8"),  # an overlong "/"
        ("/subscriber/%ED%A0%80", "not UTF-8"),  # a surrogate
        ("/subscriber/a,%zz", "malformed percent-encoding"),
        ("/subscriber/line%0Abreak", "a channel id with a line break cannot be streamed"),
        ("/subscriber/nul%00", "a channel id with a line break cannot be streamed"),
        ("/subscriber/a,,b", "the channel id is empty"),
    ],
)
async def test_bad_channel_ids_over_event_streams(server, target, reason):
    [response], _ = await exchange(server, request("GET", target, "Accept: text/event-stream"))
    assert_short_error(response, 400, reason)
    assert response.header("access-control-allow-origin") == "*"


async def test_channel_id_over_the_length_limit_in_a_long_request_line(server):
    target = "/subscriber/" + "x" * 10_000  # a long line, still under hypercorn's limit
    [response], _ = await exchange(server, request("GET", target))
    assert_short_error(response, 400, "the channel id is longer than 1024 characters")


# -- oversized heads ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        b"GET /publisher/a HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * HEAD_LIMIT,
        b"GET /publisher/a HTTP/1.1\r\nHost: t\r\n" + b"X-Many: a\r\n" * 2000,
        b"GET /publisher/" + b"a" * (HEAD_LIMIT + 1),
    ],
)
async def test_oversized_head_is_431(server, head):
    """More than 16 KiB of a head that has not ended: 431 at once, without waiting for the
    rest (hypercorn checks the size while the head is incomplete, see docs/protocol.md)."""
    with anyio.fail_after(TIMEOUT):
        connection = await connect(server)
        async with connection.stream:
            await connection.send(head)
            response = await connection.response()
            assert await connection.closed_by_server()
    assert_hypercorn_400(response, 431)


async def test_absurd_request_line_is_refused(server):
    """A megabyte of request line: 431 once 16 KiB of it arrived. The server closes with
    the rest unread, so the client may see a reset instead of the 431."""
    head = b"GET /publisher/" + b"a" * 1_000_000 + b" HTTP/1.1\r\nHost: t\r\n\r\n"
    answer: list[Response] = []
    with anyio.fail_after(TIMEOUT):
        connection = await connect(server)
        async with connection.stream, anyio.create_task_group() as tg:

            async def write() -> None:
                with contextlib.suppress(anyio.BrokenResourceError, ConnectionResetError):
                    await connection.send(head)

            tg.start_soon(write)
            try:
                answer.append(await connection.response())
            except EOFError:
                assert connection.eof
    if answer:
        assert_hypercorn_400(answer[0], 431)


# -- HTTP/1.0 -------------------------------------------------------------------------------


async def test_http10_long_poll_and_publish(server, client):
    channel = channel_name()
    with anyio.fail_after(TIMEOUT):
        subscriber = await connect(server)
        async with subscriber.stream:
            await subscriber.send(request("GET", path("/subscriber/", channel), version="1.0"))
            await wait_for_subscribers(client, path("/publisher/", channel), 1)
            publisher = await connect(server)
            async with publisher.stream:
                await publisher.send(
                    request(
                        "POST",
                        path("/publisher/", channel),
                        "Content-Length: 5",
                        "Content-Type: text/plain",
                        body=b"hello",
                        version="1.0",
                    )
                )
                published = await publisher.response()
                assert published.status == 201
                assert published.header("connection") == "close"
                assert await publisher.closed_by_server()
            response = await subscriber.response()
            assert await subscriber.closed_by_server()
    assert (response.status, response.body) == (200, b"hello")
    assert response.header("content-length") == "5"
    assert response.header("content-type") == "text/plain"
    assert response.header("transfer-encoding") is None
    assert response.header("connection") == "close"
    assert response.header("etag") == "0"


async def test_http10_publish_without_length_is_an_empty_message(server, client):
    """HTTP/1.0 without Content-Length has no request body (the data after the head is not
    read as one): an empty message is published and the connection closed."""
    channel = channel_name()
    data = request("POST", path("/publisher/", channel), version="1.0")
    [response], closed = await exchange(server, data)
    assert response.status == 202 and closed
    polled = await client.get(path("/subscriber/", channel))
    assert (polled.status_code, polled.content) == (200, b"")


async def test_http10_event_stream_is_not_chunked(server, client):
    channel = channel_name()
    await client.post(path("/publisher/", channel), content=b"one\ntwo")
    data = request("GET", path("/subscriber/", channel), "Accept: text/event-stream", version="1.0")
    with anyio.fail_after(TIMEOUT):
        connection = await connect(server)
        async with connection.stream:
            await connection.send(data)
            response = await connection.response(head_only=True)
            body = b""
            while b"data: two\n\n" not in body:
                more = await connection.read_some()
                assert more, f"closed after {body!r}"
                body += more
    assert response.status == 200
    assert response.header("transfer-encoding") is None
    assert response.header("content-length") is None
    assert response.header("connection") == "close"
    assert response.header("content-type") == "text/event-stream; charset=utf-8"
    assert body.startswith(b": hi\nretry: 3000\n\nid: ")
    assert body.endswith(b"\ndata: one\ndata: two\n\n")


# -- pipelining -----------------------------------------------------------------------------


async def test_pipelined_requests_are_answered_in_order(server):
    channel = channel_name()
    publisher, subscriber = path("/publisher/", channel), path("/subscriber/", channel)
    data = b"".join(
        [
            request("PUT", publisher),
            request("POST", publisher, "Content-Length: 3", body=b"one"),
            request("POST", publisher, "Content-Length: 3", body=b"two"),
            request("GET", subscriber),
            request("GET", subscriber, 'If-None-Match: "0"'),
            request("GET", "/subscriber/%zz"),
            request("POST", path("/tiny/", channel), "Content-Length: 17", body=b"x" * 17),
            request("OPTIONS", subscriber),
            request("GET", publisher, "Accept: application/json"),
            request("DELETE", publisher),
            request("GET", publisher, "Connection: close"),
        ]
    )
    responses, closed = await exchange(server, data, count=11)
    assert [r.status for r in responses] == [200, 202, 202, 200, 400, 400, 413, 200, 200, 200, 404]
    assert responses[3].body == b"one"
    assert json.loads(responses[8].body)["messages"] == 2
    assert b"If-None-Match is not an integer" in responses[4].body
    assert b"malformed percent-encoding" in responses[5].body
    assert b"larger than 16 bytes" in responses[6].body
    assert closed


async def test_pipelined_request_waits_behind_a_held_long_poll(server, client):
    """Responses keep request order: the request pipelined behind a waiting long poll is
    answered after it, once a publish from elsewhere ends the poll."""
    channel = channel_name()
    publisher, subscriber = path("/publisher/", channel), path("/subscriber/", channel)
    data = request("GET", subscriber) + request(
        "GET", publisher, "Accept: application/json", "Connection: close"
    )
    with anyio.fail_after(TIMEOUT):
        connection = await connect(server)
        async with connection.stream:
            await connection.send(data)
            await wait_for_subscribers(client, publisher, 1)
            assert (await client.post(publisher, content=b"now")).status_code == 201
            first = await connection.response()
            second = await connection.response()
            assert await connection.closed_by_server()
    assert (first.status, first.body) == (200, b"now")
    assert second.status == 200 and json.loads(second.body)["messages"] == 1


# -- request bodies -------------------------------------------------------------------------


async def test_body_longer_than_declared(server, client):
    """Content-Length wins: the declared bytes are the message, and the rest is read as the
    next request, which is not HTTP: hypercorn's 400, and the connection is closed."""
    channel = channel_name()
    data = request("POST", path("/publisher/", channel), "Content-Length: 3", body=b"abcdef")
    responses, closed = await exchange(server, data + b"\r\n\r\n", count=2)
    assert responses[0].status == 202
    assert_hypercorn_400(responses[1])
    assert closed
    polled = await client.get(path("/subscriber/", channel))
    assert polled.content == b"abc"


async def test_body_shorter_than_declared_publishes_nothing(server, client):
    """A body cut short by the client closing its side is never published. hypercorn
    answers its empty 400, or just closes when the end of input came in the same read as
    the last bytes (it then reports a disconnect, not a malformed request)."""
    channel = channel_name()
    data = request("POST", path("/publisher/", channel), "Content-Length: 10", body=b"abc")
    with anyio.fail_after(TIMEOUT):
        connection = await connect(server)
        async with connection.stream:
            await connection.send(data)
            await connection.stream.send_eof()
            answer = b""
            while more := await connection.read_some():
                answer += more
    if answer:
        connection.buffer, connection.eof = answer, True
        assert_hypercorn_400(await connection.response())
    # Published before the check or never: the handler saw the disconnect, not a body.
    assert (await client.get(path("/publisher/", channel))).status_code == 404


async def test_body_in_two_writes_is_one_message(server, client):
    channel = channel_name()
    head = request("POST", path("/publisher/", channel), "Content-Length: 10")
    with anyio.fail_after(TIMEOUT):
        connection = await connect(server)
        async with connection.stream:
            await connection.send(head + b"01234")
            await connection.send(b"56789")
            response = await connection.response()
    assert response.status == 202
    assert (await client.get(path("/subscriber/", channel))).content == b"0123456789"


async def test_chunked_publish(server, client):
    """A chunked body with chunk extensions and trailers is published as its bytes."""
    channel = channel_name()
    body = b"4;ext=1\r\nabc\n\r\n3\r\n\x00\xff\r\r\n0\r\nX-Trailer: t\r\n\r\n"
    data = request("POST", path("/publisher/", channel), "Transfer-Encoding: chunked", body=body)
    [response], _ = await exchange(server, data)
    assert response.status == 202
    polled = await client.get(path("/subscriber/", channel))
    assert polled.content == b"abc\n\x00\xff\r"


@pytest.mark.parametrize(
    "body",
    [
        b"zz\r\nabc\r\n0\r\n\r\n",  # not a hexadecimal size
        b"3\r\nabcdef\r\n0\r\n\r\n",  # a chunk longer than its size
        b"-3\r\nabc\r\n0\r\n\r\n",
    ],
)
async def test_malformed_chunked_body_is_400(server, client, body):
    channel = channel_name()
    data = request("POST", path("/publisher/", channel), "Transfer-Encoding: chunked", body=body)
    [response], closed = await exchange(server, data)
    assert_hypercorn_400(response)
    assert closed
    assert (await client.get(path("/publisher/", channel))).status_code == 404


async def test_content_length_with_transfer_encoding_is_400_and_closes(server, client):
    """Both framings at once: the shape of a request-smuggling attempt. Refused, and the
    connection closed, so the request hidden in the body is never read as one."""
    channel, hidden = channel_name(), channel_name()
    body = b"0\r\n\r\n" + request("PUT", path("/publisher/", hidden))
    data = request(
        "POST",
        path("/publisher/", channel),
        f"Content-Length: {len(body)}",
        "Transfer-Encoding: chunked",
        body=body,
    )
    [response], closed = await exchange(server, data)
    assert_short_error(response, 400, "Content-Length and Transfer-Encoding together")
    assert closed
    assert (await client.get(path("/publisher/", channel))).status_code == 404
    assert (await client.get(path("/publisher/", hidden))).status_code == 404


async def test_unknown_transfer_coding_is_501(server):
    data = request("POST", "/publisher/a", "Transfer-Encoding: gzip", body=b"abc")
    [response], closed = await exchange(server, data)
    assert_hypercorn_400(response, 501)
    assert closed


# -- HTTP/2 upgrades -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        ["HTTP2-Settings: !!!not base64"],
        ["HTTP2-Settings: AAIAAAAC"],  # ENABLE_PUSH = 2, not a valid value
        ["HTTP2-Settings: AAIAAA"],  # not a whole setting
        [],  # no HTTP2-Settings at all
        ["HTTP2-Settings: AAMAAABk", "HTTP2-Settings: AAMAAABk"],  # two of them
    ],
)
async def test_h2c_upgrade_with_bad_settings_is_served_over_http11(server, client, settings):
    """hypercorn answered 101 and then failed on the settings: a traceback on asyncio, the
    end of the whole server on trio. Such an upgrade is now ignored, as RFC 9113 allows."""
    channel = channel_name()
    await client.post(path("/publisher/", channel), content=b"x")
    data = request(
        "GET",
        path("/publisher/", channel),
        "Upgrade: websocket",  # hypercorn goes by the last Upgrade header
        "Upgrade: h2c",
        "Connection: Upgrade, HTTP2-Settings",
        *settings,
        "Accept: application/json",
    )
    [response], _ = await exchange(server, data)
    assert response.status == 200
    assert json.loads(response.body)["messages"] == 1


async def test_h2c_upgrade_with_good_settings_switches_to_http2(server):
    data = request(
        "GET",
        "/publisher/a",
        "Upgrade: h2c",
        "Connection: Upgrade, HTTP2-Settings",
        "HTTP2-Settings: AAMAAABkAAQAAP__",
    )
    with anyio.fail_after(TIMEOUT):
        connection = await connect(server)
        async with connection.stream:
            await connection.send(data)
            response = await connection.response(head_only=True)
            frame_head = await connection.read(9)
    assert response.status == 101 and response.header("upgrade") == "h2c"
    assert frame_head[3] == 4  # the server's HTTP/2 SETTINGS frame


def h2_frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (
        len(payload).to_bytes(3, "big")
        + bytes([kind, flags])
        + stream.to_bytes(4, "big")
        + (payload)
    )


def h2_request(method: bytes, target: bytes, *, end_stream: bool) -> bytes:
    """The client preface, an empty SETTINGS frame and stream 1's HEADERS (HPACK literals
    without indexing or Huffman coding)."""
    fields = [(b":method", method), (b":scheme", b"http"), (b":path", target)]
    fields.append((b":authority", b"t"))
    block = b"".join(
        b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value for name, value in fields
    )
    flags = 0x4 | (0x1 if end_stream else 0)  # END_HEADERS, END_STREAM
    return b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + h2_frame(4, 0, 0) + h2_frame(1, flags, 1, block)


async def h2_stream_ended(connection: Connection) -> bool:
    """Read server frames until stream 1 ends (True) or the server closes (False)."""
    while True:
        try:
            head = await connection.read(9)
        except EOFError:
            return False
        length, kind, flags = int.from_bytes(head[:3], "big"), head[3], head[4]
        stream = int.from_bytes(head[5:], "big") & 0x7FFFFFFF
        await connection.read(length)
        if stream == 1 and kind in (0, 1) and flags & 0x1:
            return True
        if kind == 7:  # GOAWAY
            return False


@pytest.mark.parametrize("loop", ["asyncio", "trio"])
async def test_http2_failures_end_only_that_connection(push_server_factory, loop):
    """Two HTTP/2 requests hypercorn 0.18 fails on: a :path that is not ASCII, and DATA
    after the response. It logs a traceback and drops that client's connection (on trio
    that used to end the whole server); everyone else is served."""
    import httpx

    other = push_server_factory(CONFIG, *(["--loop", "trio"] if loop == "trio" else []))
    with anyio.fail_after(TIMEOUT):
        connection = await connect(other)
        async with connection.stream:
            await connection.send(h2_request(b"GET", b"/subscriber/\xc4\x8d", end_stream=True))
            assert not await h2_stream_ended(connection)
        connection = await connect(other)
        async with connection.stream:
            await connection.send(h2_request(b"POST", b"/subscriber/x", end_stream=False))
            assert await h2_stream_ended(connection)  # 405, before the body
            await connection.send(h2_frame(0, 0x1, 1, b"late"))
            assert not await h2_stream_ended(connection)
    async with httpx.AsyncClient(base_url=other.url, timeout=TIMEOUT) as other_client:
        channel = channel_name()
        await other_client.post(path("/publisher/", channel), content=b"still here")
        assert (await other_client.get(path("/subscriber/", channel))).content == b"still here"


# -- WebSocket handshakes and frames --------------------------------------------------------


def upgrade(target: str, *, key: str | None = None, version: str = "13", method="GET") -> bytes:
    if key is None:
        key = base64.b64encode(os.urandom(16)).decode()
    headers = ["Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Version: {version}"]
    if key:
        headers.append(f"Sec-WebSocket-Key: {key}")
    return request(method, target, *headers)


def masked_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    first = (0x80 if fin else 0) | opcode
    assert len(payload) < 126
    return (
        bytes([first, 0x80 | len(payload)])
        + b"\x01\x02\x03\x04"
        + bytes(b ^ (1, 2, 3, 4)[i % 4] for i, b in enumerate(payload))
    )


def unmask_server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """The (opcode, payload) of each unmasked frame the server sent."""
    frames = []
    while data:
        opcode, length = data[0] & 0x0F, data[1] & 0x7F
        start = 2
        if length == 126:
            length, start = int.from_bytes(data[2:4], "big"), 4
        frames.append((opcode, data[start : start + length]))
        data = data[start + length :]
    return frames


@pytest.mark.parametrize(
    "data",
    [
        upgrade("/subscriber/ws", key=""),  # no Sec-WebSocket-Key
        upgrade("/subscriber/ws", version="8"),
        upgrade("/subscriber/ws", version="x"),
        upgrade("/subscriber/ws").replace(b"HTTP/1.1", b"HTTP/1.0"),
    ],
)
async def test_bad_websocket_handshake_is_400(server, data):
    [response], closed = await exchange(server, data)
    assert_hypercorn_400(response)
    assert closed


async def test_websocket_upgrade_with_post_is_a_plain_request(server):
    [response], _ = await exchange(server, upgrade("/subscriber/ws", method="POST"))
    assert_short_error(response, 405, "POST is not allowed here")


#: Bytes a client sends with its upgrade request, before the server's 101.
EARLY_DATA = [
    masked_frame(1, b'{"ping": 1}'),
    b"\x81\x05hello",  # unmasked
    b"GET / HTTP/1.1\r\n\r\n",
    b"\x00\xff garbage",
]


@pytest.mark.parametrize("early", EARLY_DATA)
async def test_data_before_the_handshake_response_is_400_and_leaves_nothing(server, client, early):
    """Bytes sent with the upgrade request, before the 101: hypercorn answers 400 and the
    connection is closed, and the subscriber the push server had started goes away too
    (it used to be held, with its socket, for as long as the server ran)."""
    channel = channel_name()
    await client.put(path("/publisher/", channel))
    [response], closed = await exchange(server, upgrade(path("/subscriber/", channel)) + early)
    assert_hypercorn_400(response)
    assert closed
    await wait_for_subscribers(client, path("/publisher/", channel), 0)


async def websocket(server, target: str) -> Connection:
    connection = await connect(server)
    await connection.send(upgrade(target))
    response = await connection.response(head_only=True)
    assert response.status == 101, response
    return connection


@pytest.mark.parametrize(
    "garbage",
    [
        b"garbage, not a frame\r\n\r\n",
        b"GET /subscriber/a HTTP/1.1\r\nHost: t\r\n\r\n",
        b"\x81\x05hello",  # a client frame without a mask
        masked_frame(1, b"\xff\xfe"),  # text that is not UTF-8
        masked_frame(3, b""),  # a reserved opcode
        bytes([0xF1, 0x80, 0, 0, 0, 0]),  # reserved bits set
        masked_frame(0, b"x"),  # a continuation with nothing to continue
        masked_frame(9, b"x" * 125, fin=False),  # a fragmented control frame
        masked_frame(8, b"\x03\xe7"),  # close code 999
    ],
)
async def test_protocol_errors_after_the_handshake_close_the_connection(server, client, garbage):
    channel = channel_name()
    await client.put(path("/publisher/", channel))
    with anyio.fail_after(TIMEOUT):
        connection = await websocket(server, path("/subscriber/", channel))
        async with connection.stream:
            await wait_for_subscribers(client, path("/publisher/", channel), 1)
            await connection.send(garbage)
            rest = b""
            while more := await connection.read_some():
                rest += more
    # Whatever came before the close is whole frames; no message was delivered.
    assert all(opcode in (1, 8) for opcode, _ in unmask_server_frames(rest))
    await wait_for_subscribers(client, path("/publisher/", channel), 0)


async def test_hostile_commands_get_error_frames_and_the_connection_stays(server, client):
    channel = channel_name()
    await client.put(path("/publisher/", channel))
    commands = [
        ("[" * 5000, "a command is a JSON object"),  # deeper than json can nest
        ('{"subscribe": ' * 500, "a command is a JSON object"),
        ('{"subscribe": "' + "x" * 8000 + '"}', "longer than 1024 characters"),
        ('{"subscribe": "a\\r\\nb"}', "a channel id with a line break cannot be streamed"),
        ('{"subscribe": ""}', "the channel id is empty"),
        ('{"subscribe": "a", "last_event_id": "1:2,3:4"}', "not a message id"),
        ('{"subscribe": "a", "last_event_id": 5}', "'last_event_id' is a message id string"),
        ('{"unsubscribe": null}', "'unsubscribe' takes a channel id string"),
        ("1" * 5000, "a command is a JSON object"),
        (b'{"ping": "\xed\xa0\x80"}', "a command is UTF-8 JSON text"),  # a surrogate
    ]
    url = server.url.replace("http://", "ws://") + path("/subscriber/", channel)
    with anyio.fail_after(TIMEOUT):
        async with ws_connect(url) as ws:
            for command, error in commands:
                await ws.send(command)
                reply = json.loads(await ws.recv())
                assert reply["type"] == "error" and error in reply["error"], (command, reply)
            await ws.send('{"ping": 1}')
            assert json.loads(await ws.recv()) == {"type": "pong"}
            response = await client.post(
                path("/publisher/", channel),
                content=b"after all that",
                headers={"content-type": "text/plain"},
            )
            assert response.status_code == 201
            frame = await ws.recv()
    assert frame.endswith("\n\nafter all that")


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        (b"", None),
        (b" , ,, ", None),
        (b"chat, superchat", None),  # none the server speaks: the plain mode, no refusal
        (b"PUSHSERVER.V1", None),  # names are exact
        (b"pushserver.v1;q=1", None),
        (b"x" * 8000, None),
        (b",".join(b"p%d" % n for n in range(2000)), None),
        (b"  chat ,  ws+meta.nchan  , pushserver.v1", "ws+meta.nchan"),  # the first it speaks
        (b"pushserver.v1, pushserver.v1", "pushserver.v1"),
    ],
)
async def test_any_subprotocol_list_gets_the_documented_choice(server, client, offered, chosen):
    """Sec-WebSocket-Protocol as a client may send it: the first name the server speaks is
    echoed, anything else is the plain mode with no Sec-WebSocket-Protocol in the 101
    (docs/transports.md, Subprotocols): never a refusal, never a crash."""
    channel = channel_name()
    body = b"the body alone" if chosen is None else b"framed"
    headers = {"content-type": "text/plain"}
    await client.post(path("/publisher/", channel), content=body, headers=headers)
    head = upgrade(path("/subscriber/", channel)).removesuffix(b"\r\n")
    with anyio.fail_after(TIMEOUT):
        connection = await connect(server)
        async with connection.stream:
            await connection.send(head + b"Sec-WebSocket-Protocol: " + offered + b"\r\n\r\n")
            response = await connection.response(head_only=True)
            assert response.status == 101, response
            assert response.header("sec-websocket-protocol") == chosen
            data = b""
            while not data.endswith(body):
                data += await connection.read_some()
    [(opcode, payload)] = unmask_server_frames(data)
    assert opcode == 1  # text
    if chosen is None:
        assert payload == body
    else:
        assert payload.startswith(b"id: ") and payload.endswith(b"\n\n" + body)


@pytest.mark.parametrize(
    "header",
    [
        b"Sec-WebSocket-Protocol: \xc3\xa9",
        b"Sec-WebSocket-Protocol: pushserver.v1, \xff",
        b"Sec-WebSocket-Extensions: permessage-deflate; \xe9",
    ],
)
async def test_a_websocket_header_list_that_is_not_ascii_is_400(server, header):
    """RFC 6455 makes these lists of tokens: a bad handshake, refused as hypercorn refuses
    others (it used to drop the connection unanswered, with a traceback in the log;
    hypercorn_fixes.refuse_non_ascii_websocket_handshakes)."""
    data = upgrade("/subscriber/ws").removesuffix(b"\r\n")
    [response], closed = await exchange(server, data + header + b"\r\n\r\n")
    assert_hypercorn_400(response)
    assert closed
