"""Slow consumers: a deliberately stalled reader never holds up the others, never grows the
server's memory without bound, and is either caught up through the buffer (with a gap event
where messages are gone) or, past the send timeout, disconnected with a reason."""

from __future__ import annotations

import json
import re
import socket

import anyio
import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, TextMessage
from wsproto.events import Request as WSRequest

from pushserver.transports.websocket import PUSHSERVER_V1
from tests.conftest import about_transports
from tests.project.helpers import wait_for_subscribers
from tests.transports.streams import connect, event_stream, ws_frame

BUFFER = 8  # retained messages per channel
QUEUE = 64  # the hub's per-subscriber queue (PushServer's default queue_size)
COUNT = 400  # messages published while the slow reader stalls
BODY = b"x" * 65536  # big enough that the socket buffers fill after a few dozen

CONFIG = {
    "store": {"type": "memory", "max_messages": BUFFER},
    "locations": [
        {"type": "publisher", "prefix": "/publisher/"},
        {"type": "subscriber", "prefix": "/patient/", "create_on_get": True, "ping_interval": 0},
        {
            "type": "subscriber",
            "prefix": "/impatient/",
            "create_on_get": True,
            "ping_interval": 0,
            "send_timeout": 1,
        },
    ],
}




def numbered(n: int) -> bytes:
    return b"%05d" % n + BODY


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def stalled_socket(server) -> socket.socket:
    """A TCP connection with a tiny receive buffer, so the server's writes block soon."""
    host, port = server.host.rsplit(":", 1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    return sock


class RawEventStream:
    """An event stream read from a plain socket (HTTP/1.0: the body is the raw stream)."""

    def __init__(self, sock: socket.socket, path: str) -> None:
        self.sock = sock
        sock.sendall(
            f"GET {path} HTTP/1.0\r\nHost: t\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        self.buffer = b""
        self.eof = False
        while b"\r\n\r\n" not in self.buffer:
            self._recv()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200"), head

    def _recv(self) -> None:
        chunk = self.sock.recv(1 << 20)
        self.eof = not chunk
        self.buffer += chunk

    def blocks(self, until) -> list[bytes]:
        """Read blocks until ``until(block)`` is true or the stream ends (blocking)."""
        self.sock.settimeout(20)
        found = []
        while True:
            while b"\n\n" in self.buffer:
                block, self.buffer = self.buffer.split(b"\n\n", 1)
                found.append(block)
                if until(block):
                    return found
            if self.eof:
                return found
            self._recv()


def sse_sequence(blocks: list[bytes]) -> list[tuple[str, object]]:
    """("msg", number, id) and ("gap", payload) entries of raw SSE blocks."""
    sequence = []
    for block in blocks:
        fields = dict(line.split(b": ", 1) for line in block.split(b"\n") if b": " in line)
        if fields.get(b"event") == b"pushserver.gap":
            sequence.append(("gap", json.loads(fields[b"data"])))
        elif b"data" in fields:
            sequence.append(("msg", int(fields[b"data"][:5]), fields[b"id"].decode()))
    return sequence


def check_caught_up(sequence, count: int) -> None:
    """In order, nothing repeated, every loss announced by one gap, ending at the newest."""
    numbers = [entry[1] for entry in sequence if entry[0] == "msg"]
    gaps = [i for i, entry in enumerate(sequence) if entry[0] == "gap"]
    assert len(gaps) == 1, gaps  # the reader fell far behind a buffer of BUFFER messages
    before, after = sequence[: gaps[0]], sequence[gaps[0] + 1 :]
    gap = sequence[gaps[0]][1]
    # Everything the reader had queued came before the gap; the buffer's tail after it.
    assert [e[1] for e in before] == list(range(len(before)))
    assert len(before) >= QUEUE
    assert [e[1] for e in after] == list(range(count - BUFFER, count))
    assert gap["after"] == before[-1][2] and gap["next"] == after[0][2]
    assert numbers == sorted(set(numbers))


async def publish_while_fast_reader_keeps_up(client, channel: str, next_message) -> None:
    """Publish COUNT messages; each reaches the fast reader before the next is published."""
    for n in range(COUNT):
        response = await client.post(f"/publisher/{channel}", content=numbered(n))
        assert response.status_code in (201, 202)
        assert await next_message() == n


@pytest.mark.anyio
@about_transports("eventsource")
async def test_sse_stalled_reader_is_caught_up_through_the_buffer(server, client):
    sock = stalled_socket(server)
    try:
        slow = RawEventStream(sock, "/patient/sse-slow")
        rss_before = rss_mib(server.process.pid)
        with anyio.fail_after(60):
            async with event_stream(client, "/patient/sse-slow") as fast:

                async def next_message() -> int:
                    return int((await fast.event()).data[:5])

                await publish_while_fast_reader_keeps_up(client, "sse-slow", next_message)
            grown = rss_mib(server.process.pid) - rss_before
            # Held for the stalled reader: its queue and the socket buffers, not all 25 MiB.
            assert grown < 15, f"server memory grew {grown:.1f} MiB"
            blocks = await anyio.to_thread.run_sync(
                slow.blocks, lambda block: block.endswith(b"data: %05d" % (COUNT - 1) + BODY)
            )
    finally:
        sock.close()
    check_caught_up(sse_sequence(blocks), COUNT)
    line = f"fell {QUEUE} messages behind: catching up from the buffer"
    await anyio.to_thread.run_sync(server.wait_for_output, re.escape(line))


@pytest.mark.anyio
@about_transports("eventsource")
async def test_sse_stalled_reader_is_disconnected_after_send_timeout(server, client):
    sock = stalled_socket(server)
    try:
        slow = RawEventStream(sock, "/impatient/sse-stuck")
        with anyio.fail_after(60):
            async with event_stream(client, "/impatient/sse-stuck") as fast:

                async def next_message() -> int:
                    return int((await fast.event()).data[:5])

                await publish_while_fast_reader_keeps_up(client, "sse-stuck", next_message)
                # Only the fast reader remains once the stalled one was dropped.
                await wait_for_subscribers(client, "/publisher/sse-stuck", 1)
            # The line is logged as the stream ends and reaches the test through a pipe: it
            # may arrive just after the subscriber count dropped.
            line = "event-stream subscriber 127.0.0.1 on sse-stuck stopped reading for 1.0s"
            await anyio.to_thread.run_sync(
                server.wait_for_output, re.escape(f"{line}: disconnected")
            )
            blocks = await anyio.to_thread.run_sync(slow.blocks, lambda block: False)
    finally:
        sock.close()
    assert slow.eof  # the connection was closed after what was already written
    numbers = [entry[1] for entry in sse_sequence(blocks)]
    assert numbers == list(range(len(numbers))) and len(numbers) < COUNT


class RawWebSocket:
    """A WebSocket client on a plain socket (wsproto does the framing): it reads nothing
    until asked, so the server's writes block, unlike a library that reads ahead."""

    def __init__(
        self, sock: socket.socket, path: str, subprotocols: tuple[str, ...] = (PUSHSERVER_V1,)
    ) -> None:
        self.sock = sock
        self.ws = WSConnection(ConnectionType.CLIENT)
        # pushserver.v1 unless told: the tests read its header lines and control frames.
        request = WSRequest(host="t", target=path, subprotocols=list(subprotocols))
        sock.sendall(self.ws.send(request))
        self.pending: list = []
        self.close: CloseConnection | None = None
        self._parts: list = []
        while not any(isinstance(e, AcceptConnection) for e in self.pending):
            self._recv()
        self.pending = []

    def _recv(self) -> bool:
        data = self.sock.recv(1 << 20)
        self.ws.receive_data(data or None)
        for event in self.ws.events():
            if isinstance(event, (TextMessage, BytesMessage)):
                self._parts.append(event.data)
                if event.message_finished:
                    joined = (
                        "".join(self._parts)
                        if isinstance(event, TextMessage)
                        else b"".join(self._parts)
                    )
                    self.pending.append(joined)
                    self._parts = []
            elif isinstance(event, CloseConnection):
                self.close = event
            else:
                self.pending.append(event)
        return bool(data)

    def frames(self, until) -> list:
        """Read frames until ``until(frame)`` is true or the connection ends (blocking)."""
        self.sock.settimeout(20)
        found = []
        while True:
            while self.pending:
                frame = self.pending.pop(0)
                found.append(frame)
                if until(frame):
                    return found
            if self.close is not None or not self._recv():
                return found


def ws_sequence(frames) -> list[tuple[str, object]]:
    sequence = []
    for frame in frames:
        if isinstance(frame, str) and frame.startswith("{"):
            payload = json.loads(frame)
            assert payload["type"] == "gap", payload
            sequence.append(("gap", payload))
        else:
            head, body = ws_frame(frame)
            sequence.append(("msg", int(body[:5]), head["id"]))
    return sequence


def is_last(frame) -> bool:
    return isinstance(frame, bytes) and frame.endswith(b"%05d" % (COUNT - 1) + BODY)


@pytest.mark.anyio
@about_transports("websocket")
async def test_ws_stalled_reader_is_caught_up_through_the_buffer(server, client):
    url = server.url.replace("http://", "ws://")
    sock = stalled_socket(server)
    try:
        slow = RawWebSocket(sock, "/patient/ws-slow")
        with anyio.fail_after(60):
            async with connect(url + "/patient/ws-slow", max_size=None) as fast:

                async def next_message() -> int:
                    return int(ws_frame(await fast.recv())[1][:5])

                await publish_while_fast_reader_keeps_up(client, "ws-slow", next_message)
            frames = await anyio.to_thread.run_sync(slow.frames, is_last)
    finally:
        sock.close()
    check_caught_up(ws_sequence(frames), COUNT)


@pytest.mark.anyio
@about_transports("websocket")
@pytest.mark.parametrize("offered", [(PUSHSERVER_V1,), ()], ids=["pushserver.v1", "plain"])
async def test_ws_stalled_reader_is_closed_with_4408(server, client, offered):
    """In the plain mode too (the body alone, no control frames): the same close code."""
    url = server.url.replace("http://", "ws://")
    sock = stalled_socket(server)
    channel = f"ws-stuck-{len(offered)}"
    try:
        slow = RawWebSocket(sock, f"/impatient/{channel}", subprotocols=offered)
        with anyio.fail_after(60):
            async with connect(url + f"/impatient/{channel}", max_size=None) as fast:

                async def next_message() -> int:
                    return int(ws_frame(await fast.recv())[1][:5])

                await publish_while_fast_reader_keeps_up(client, channel, next_message)
                await wait_for_subscribers(client, f"/publisher/{channel}", 1)
            await anyio.to_thread.run_sync(
                server.wait_for_output,
                re.escape("WebSocket subscriber 127.0.0.1 stopped reading for 1.0s: disconnected"),
            )
            frames = await anyio.to_thread.run_sync(slow.frames, lambda frame: False)
    finally:
        sock.close()
    if offered:
        numbers = [entry[1] for entry in ws_sequence(frames)]
    else:  # each frame the published body, byte for byte
        assert all(frame == numbered(int(frame[:5])) for frame in frames)
        numbers = [int(frame[:5]) for frame in frames]
    assert numbers == list(range(len(numbers))) and len(numbers) < COUNT
    assert slow.close is not None  # the close frame was queued behind the data
    assert (slow.close.code, slow.close.reason) == (4408, "too slow: stopped reading")
