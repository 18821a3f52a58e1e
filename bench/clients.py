"""Raw asyncio protocol clients, cheap enough to hold 10,000 connections in one process.

Each subscriber parses its transport's framing and hands every message body to
:meth:`Stats.delivered`. Bodies are ``b"<seq:08> <monotonic_ns:019> <padding>"``: the
sequence number finds losses, duplicates and reordering; the publisher's clock reading
(``time.monotonic_ns`` is system-wide on Linux) gives publish→deliver latency.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from array import array

from bench.wire import Dechunker, field, take_event, take_frame

CRLF2 = b"\r\n\r\n"


def encode_body(seq: int, size: int) -> bytes:
    head = b"%08d %019d " % (seq, time.monotonic_ns())
    return head + b"x" * max(0, size - len(head))


def parse_head(data: bytes) -> tuple[int, dict[bytes, bytes]]:
    lines = data.split(b"\r\n")
    status = int(lines[0][9:12])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


class Stats:
    """Counts shared by every subscriber of one load generator."""

    def __init__(self) -> None:
        self.deliveries = 0  # measured messages (seq >= 1), first copies only
        self.duplicates = 0
        self.out_of_order = 0
        self.errors: dict[str, int] = {}
        self.latencies = array("q")
        self.round_count: dict[int, int] = {}
        self.progress = asyncio.Event()
        self.last_delivery = 0.0
        self.closing = False  # set when the bench closes connections: no error then
        self.address: tuple[str, int] = ("127.0.0.1", 0)  # default server of subscribers
        self.reconnects = 0
        self.controls = 0  # control frames / named events seen (not messages)
        self.tasks: set[asyncio.Task] = set()
        self.anomalies: list[str] = []  # the first few duplicates / reorderings, to debug

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1

    def delivered(self, sub: Subscriber, body: bytes) -> None:
        now = time.monotonic_ns()
        try:
            seq = int(body[0:8])
            sent = int(body[9:28])
        except ValueError:
            self.error("unparsable body")
            return
        seen = sub.seen
        if seq >= len(seen):
            seen.extend(bytes(max(seq + 1 - len(seen), len(seen))))
        if seen[seq]:
            self.duplicates += 1
            self.note(sub, "duplicate", seq)
            return
        seen[seq] = 1
        if seq < sub.highest:
            self.out_of_order += 1
            self.note(sub, "out of order", seq)
        else:
            sub.highest = seq
        self.round_count[seq] = self.round_count.get(seq, 0) + 1
        self.progress.set()
        if seq:
            self.deliveries += 1
            self.latencies.append(now - sent)
            self.last_delivery = now / 1e9

    def note(self, sub: Subscriber, what: str, seq: int) -> None:
        if len(self.anomalies) < 10:
            self.anomalies.append(
                f"{what}: seq {seq} after {sub.highest} on {sub.path.decode()} ({sub.describe()})"
            )


class Subscriber(asyncio.Protocol):
    """Base: one connection on one channel; ``connected`` resolves once it is subscribed."""

    def __init__(self, stats: Stats, host: str, path: str) -> None:
        self.stats = stats
        self.host = host
        self.path = path
        self.channel = 0  # index of the channel, set by the load generator
        self.server = 0  # index of the server it connected to, likewise
        self.address = stats.address  # where reconnects go: the server it first connected to
        self.seen = bytearray(64)
        self.highest = -1
        self.buffer = bytearray()
        self.head_done = False
        self.transport: asyncio.Transport | None = None
        self.connected: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self.request())

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self.reopen_after_close and not self.stats.closing:
            # The server ended keep-alive (hypercorn: keep_alive_max_requests); a real
            # client reconnects and resumes from its position, and so do we.
            self.reopen_after_close = False
            self.stats.reconnects += 1
            task = asyncio.get_running_loop().create_task(self.reopen())
            self.stats.tasks.add(task)
            task.add_done_callback(self.stats.tasks.discard)
            return
        if not self.connected.done():
            self.stats.error(f"closed before subscribed ({exc or 'by the server'})")
            self.connected.set_result(False)
        elif not self.stats.closing:
            self.stats.error(f"{type(self).__name__} connection lost")

    reopen_after_close = False

    async def reopen(self) -> None:
        try:
            await asyncio.get_running_loop().create_connection(lambda: self, *self.address)
        except OSError as exc:
            self.stats.error(f"reconnect failed: {exc}")

    def request(self) -> bytes:
        raise NotImplementedError

    def describe(self) -> str:
        return ""

    def subscribed(self) -> None:
        if not self.connected.done():
            self.connected.set_result(True)

    def failed(self, what: str) -> None:
        self.stats.error(what)
        if not self.connected.done():
            self.connected.set_result(False)
        if self.transport is not None:
            self.transport.close()

    def close(self) -> None:
        self.stats.closing = True
        if self.transport is not None:
            self.transport.close()


class LongPollSubscriber(Subscriber):
    """GET, then GET again with the response's Last-Modified / Etag, on one connection."""

    def __init__(self, stats: Stats, host: str, path: str) -> None:
        super().__init__(stats, host, path)
        self.position = b""
        self.status = 0
        self.length = -1

    def request(self) -> bytes:
        return b"GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (self.path, self.host, self.position)

    def describe(self) -> str:
        return self.position.decode().replace("\r\n", "; ")

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.subscribed()  # held from here on; the warm-up message proves it

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while True:
            if self.length < 0:
                end = buffer.find(CRLF2)
                if end < 0:
                    return
                self.status, headers = parse_head(bytes(buffer[:end]))
                del buffer[: end + 4]
                self.length = int(headers.get(b"content-length", b"0"))
                self.reopen_after_close = headers.get(b"connection", b"").lower() == b"close"
                if self.status == 200:
                    self.position = b"If-Modified-Since: %s\r\nIf-None-Match: %s\r\n" % (
                        headers.get(b"last-modified", b""),
                        headers.get(b"etag", b""),
                    )
            if len(buffer) < self.length:
                return
            body = bytes(buffer[: self.length])
            del buffer[: self.length]
            self.length = -1
            if self.status == 200:
                self.stats.delivered(self, body)
            elif self.status not in (304, 408):  # 304 (ours) / 408 (nchan): poll again
                why = body[:200].decode(errors="replace")  # the server's reason, e.g. a 503's
                self.stats.error(f"long-poll status {self.status}: {why}")
            if self.reopen_after_close:
                self.buffer.clear()
                self.transport.close()
                return
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(self.request())


class SSESubscriber(Subscriber):
    """``Accept: text/event-stream``; chunked or close-delimited body; ``data:`` lines."""

    def __init__(self, stats: Stats, host: str, path: str) -> None:
        super().__init__(stats, host, path)
        self.chunked = False
        self.events = bytearray()
        self.dechunker = Dechunker(self.events)

    def request(self) -> bytes:
        return (
            b"GET %s HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n"
            b"Cache-Control: no-cache\r\n\r\n" % (self.path, self.host)
        )

    def data_received(self, data: bytes) -> None:
        if not self.head_done:
            self.buffer += data
            end = self.buffer.find(CRLF2)
            if end < 0:
                return
            status, headers = parse_head(bytes(self.buffer[:end]))
            data = bytes(self.buffer[end + 4 :])
            self.buffer = bytearray()
            if status != 200:
                self.failed(f"event-stream status {status}")
                return
            self.head_done = True
            self.chunked = headers.get(b"transfer-encoding", b"").lower() == b"chunked"
            self.subscribed()
        if self.chunked:
            self.dechunker.feed(data)  # the stream's end is the connection's
        else:
            self.events += data
        self.parse_events()

    def parse_events(self) -> None:
        events = self.events
        if b"\r" in events:
            events[:] = events.replace(b"\r\n", b"\n")
        while (lines := take_event(events)) is not None:
            data = None
            for line in lines:
                if line.startswith(b"event:"):  # the bench publishes no named events
                    data = None
                    self.stats.controls += 1
                    break
                if data is None:
                    data = field(line, b"data")
            if data is not None:
                self.stats.delivered(self, data)


class WebSocketSubscriber(Subscriber):
    """RFC 6455 handshake, then unmasked server frames; pings answered."""

    def request(self) -> bytes:
        key = base64.b64encode(os.urandom(16))
        return (
            b"GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Protocol: pushserver.v1\r\n\r\n"  # the framing updates.js asks for
            % (self.path, self.host, key)
        )

    def __init__(self, stats: Stats, host: str, path: str) -> None:
        super().__init__(stats, host, path)
        self.fragments = bytearray()

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if not self.head_done:
            end = buffer.find(CRLF2)
            if end < 0:
                return
            status, _ = parse_head(bytes(buffer[:end]))
            del buffer[: end + 4]
            if status != 101:
                self.failed(f"websocket handshake status {status}")
                return
            self.head_done = True
            self.subscribed()
        while (frame := take_frame(buffer)) is not None:
            opcode, fin, payload = frame
            if opcode in (0, 1, 2):
                if not fin:
                    self.fragments += payload
                    continue
                if self.fragments:
                    payload = bytes(self.fragments) + payload
                    self.fragments.clear()
                if payload[:3] == b"id:":  # ours: header lines, an empty line, the body
                    payload = payload[payload.find(b"\n\n") + 2 :]
                elif payload[:1] == b"{":  # ours: a JSON control frame (subscribed, ping)
                    self.stats.controls += 1
                    continue
                self.stats.delivered(self, payload)
            elif opcode == 9:  # ping: pong with the same payload, masked as clients must
                mask = os.urandom(4)
                masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
                self.transport.write(bytes((0x8A, 0x80 | len(payload))) + mask + masked)
            elif opcode == 8:
                self.stats.error("websocket closed by server")


SUBSCRIBERS = {"longpoll": LongPollSubscriber, "sse": SSESubscriber, "ws": WebSocketSubscriber}


class HttpClient(asyncio.Protocol):
    """One keep-alive connection making requests one at a time; each gives its status and
    body. A response saying ``Connection: close`` marks it dead: its pool replaces it."""

    def __init__(self, host: bytes) -> None:
        self.host = host
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.length = -1
        self.status = 0
        self.dead = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.dead = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("publisher connection lost"))

    async def request(
        self, method: bytes, path: bytes, body: bytes = b"", headers: bytes = b""
    ) -> tuple[int, bytes]:
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(
            b"%s %s HTTP/1.1\r\nHost: %s\r\n%sContent-Type: text/plain\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (method, path, self.host, headers, len(body), body)
        )
        return await self.waiter

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while True:
            if self.length < 0:
                end = buffer.find(CRLF2)
                if end < 0:
                    return
                self.status, headers = parse_head(bytes(buffer[:end]))
                del buffer[: end + 4]
                self.length = int(headers.get(b"content-length", b"0"))
                if headers.get(b"connection", b"").lower() == b"close":
                    self.dead = True
            if len(buffer) < self.length:
                return
            body = bytes(buffer[: self.length])
            del buffer[: self.length]
            self.length = -1
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result((self.status, body))


class Publisher(HttpClient):
    """POSTs the bench's messages, one at a time."""

    def __init__(self, host: bytes) -> None:
        super().__init__(host)
        self.server = 0  # index of the server it posts to, set by the load generator

    async def post(self, path: bytes, seq: int, size: int) -> int:
        return (await self.request(b"POST", path, encode_body(seq, size)))[0]
