"""The soak: minutes of connect/disconnect churn and publishing, the server's memory over time.

``python bench/soak.py '<json spec>'`` (run by ``python -m bench --scenarios soak``, pinned
to the load generator's CPU) drives one server and prints one JSON result line:

- a steady population of subscribers spread over every transport (long-poll, SSE,
  WebSocket) and ``channels`` long-lived channels, ``rate`` publishes a second over them;
- churn: ``churn`` times a second a random subscriber is closed, alternately abruptly (RST,
  no goodbye) and cleanly (FIN; WebSocket: a close frame, waiting for the server's), and
  reconnects after up to a second; most resume from their last id (long-poll:
  ``If-Modified-Since`` / ``If-None-Match``, SSE: ``Last-Event-ID``, WebSocket:
  ``?last_event_id=``), the rest start afresh, on a random channel;
- short-lived channels, ``ephemeral`` a second: created (``PUT``, or by a subscriber's
  ``GET`` under ``create_on_get``), some left idle, some given a subscriber and a few
  messages, then ``DELETE``\\ d; their subscriber must see the deletion (410, the
  ``pushserver.deleted`` event, the ``deleted`` frame and close 4410). The channel count
  therefore stays bounded, as it would in a deployment that deletes what it is done with;
- the abandoned-channel flood, ``flood`` a second: an anonymous long poll on a new random
  channel (created by ``create_on_get``) that hangs up at once (the request, then FIN) and
  waits for the server to close its side. Nobody deletes these: the store's
  ``channel_timeout`` must, or memory grows with every one (docs/topics.md#bounded-memory);
- every ``sample_interval`` seconds the server process's resident memory (``VmRSS``), open
  file descriptors, established connections and CPU time, read from ``/proc``.

Every delivery is checked against the per-channel sequence number in its body: a subscriber
must see each message once, in order, with nothing missing after the position it resumed
from. Fresh subscriptions have no position: their first message is accepted as the start.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import random
import socket
import statistics
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.clients import CRLF2, HttpClient, encode_body, parse_head
from bench.common import cpu_seconds, raise_fd_limit, rss_bytes
from bench.wire import Dechunker, field, take_event, take_frame

TRANSPORTS = ("longpoll", "sse", "ws")
#: Messages a subscriber may trail its channel by before a sample counts it as behind.
STALE = 5
ABRUPT, CLEAN = "abrupt", "clean"


class Counts:
    """Everything the soak counts; one instance per run."""

    def __init__(self) -> None:
        self.deliveries = 0
        self.lost = 0
        self.duplicated = 0
        self.out_of_order = 0
        self.gaps = 0  # gap events / frames: messages gone from the buffer before delivery
        self.errors: dict[str, int] = {}
        self.anomalies: list[str] = []
        self.closes = {ABRUPT: 0, CLEAN: 0}
        self.resumed = 0
        self.fresh = 0
        self.server_closes = 0  # long-poll keep-alive ended by the server: resumed
        self.publishes = 0
        self.publish_status: dict[int, int] = {}
        self.ephemeral = {"created": 0, "deleted": 0, "with_subscriber": 0, "deletion_seen": 0}
        self.flood = {"sent": 0, "closed": 0}
        self.progress = asyncio.Event()

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1

    def note(self, what: str) -> None:
        if len(self.anomalies) < 20:
            self.anomalies.append(what)


class Channel:
    def __init__(self, name: str) -> None:
        self.name = name
        self.sub_path = f"/sub/{name}".encode()
        self.pub_path = f"/pub/{name}".encode()
        self.seq = 0  # last sequence number published (and acknowledged)
        self.lock = asyncio.Lock()  # one publish at a time: they arrive in sequence order


class Slot:
    """One subscriber across its connections: its channel, transport and position."""

    def __init__(self, run: Soak, transport: str, channel: Channel, ephemeral: bool = False):
        self.run = run
        self.transport = transport
        self.channel = channel
        self.ephemeral = ephemeral
        self.last: int | None = None  # last sequence number received; None: no position
        self.position = b""  # long-poll: If-Modified-Since / If-None-Match of the last 200
        self.last_id = ""  # SSE / WebSocket: the last message's id
        self.missing: set[int] = set()
        self.conn: Conn | None = None
        self.deleted = asyncio.get_running_loop().create_future()  # the server said deleted
        self.busy = False  # being closed and reopened by the churn
        self.connections = 0
        self.resumed_from: int | None = None  # ``last`` when the connection was made
        self.received = 0  # on this connection
        self.seq_at_connect = 0

    def forget(self) -> None:
        """Start afresh: the next connection has no position."""
        self.last = None
        self.position = b""
        self.last_id = ""
        self.missing.clear()

    def describe(self) -> str:
        conn = self.conn
        return (
            f"{self.transport} on {self.channel.name}, connection {self.connections}, "
            f"resumed from {self.resumed_from}, message {self.received} on it, "
            f"sent {conn.sent if conn else '-'!r}, got {self.position or self.last_id!r}, "
            f"channel at {self.seq_at_connect} when connecting"
        )

    def got(self, seq: int) -> None:
        self.received += 1
        counts = self.run.counts
        counts.deliveries += 1
        counts.progress.set()
        last = self.last
        if last is None or seq == last + 1:
            self.last = seq
        elif seq > last + 1:
            counts.lost += seq - last - 1
            self.missing.update(range(last + 1, seq))
            counts.note(f"{seq} after {last}: {self.describe()}")
            self.last = seq
        elif seq in self.missing:
            self.missing.discard(seq)
            counts.lost -= 1
            counts.out_of_order += 1
            counts.note(f"{seq} late, after {last}: {self.describe()}")
        else:
            counts.duplicated += 1
            counts.note(f"{seq} again, after {last}: {self.describe()}")

    def saw_deleted(self) -> None:
        if not self.deleted.done():
            self.deleted.set_result(True)

    async def connect(self) -> bool:
        run = self.run
        cls = CONNS[self.transport]
        self.connections += 1
        self.resumed_from = self.last
        self.seq_at_connect = self.channel.seq
        self.received = 0
        try:
            _, conn = await asyncio.wait_for(
                run.loop.create_connection(lambda: cls(self), run.host, run.port), 30
            )
        except (OSError, TimeoutError) as exc:
            run.counts.error(f"connect failed: {type(exc).__name__}")
            return False
        self.conn = conn
        try:
            return await asyncio.wait_for(asyncio.shield(conn.subscribed), 30)
        except TimeoutError:
            run.counts.error(f"{self.transport}: no answer to subscribe")
            return False

    def lost_connection(self, conn: Conn) -> None:
        """The connection ended; reconnect unless we ended it or the channel is gone."""
        if conn is not self.conn:
            return
        self.conn = None
        run = self.run
        if conn.leaving or conn.deleted or run.stopping:
            return
        if conn.server_close:  # keep-alive ended by the server: resume, as a client does
            run.counts.server_closes += 1
        else:
            run.counts.error(f"{self.transport}: connection ended by the server")
        run.spawn(self.connect())


def reset(transport: asyncio.Transport) -> None:
    """Close with an RST (SO_LINGER 0): a client that vanished without a goodbye."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class Conn(asyncio.Protocol):
    """One connection of a slot."""

    def __init__(self, slot: Slot) -> None:
        self.slot = slot
        self.counts = slot.run.counts
        self.buffer = bytearray()
        self.head_done = False
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.subscribed: asyncio.Future[bool] = loop.create_future()
        self.ended: asyncio.Future[None] = loop.create_future()
        self.leaving = False  # we are closing it
        self.deleted = False  # the server ended it because the channel was deleted
        self.server_close = False
        self.sent = b""
        self.opened = self.last_data = 0.0

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.sent = self.request()
        self.opened = self.last_data = time.monotonic()
        transport.write(self.sent)

    def connection_lost(self, exc) -> None:
        if not self.subscribed.done():
            self.subscribed.set_result(False)
            if not self.leaving:
                self.counts.error(f"{self.slot.transport}: closed before subscribed")
        if not self.ended.done():
            self.ended.set_result(None)
        self.slot.lost_connection(self)

    def request(self) -> bytes:
        raise NotImplementedError

    def close(self, how: str) -> None:
        self.leaving = True
        if self.transport is None:
            return
        if how == ABRUPT:
            reset(self.transport)
        else:
            self.transport.close()

    def refuse(self, what: str) -> None:
        self.counts.error(what)
        if not self.subscribed.done():
            self.subscribed.set_result(False)
        self.leaving = True
        self.transport.close()


class LongPoll(Conn):
    def __init__(self, slot: Slot) -> None:
        super().__init__(slot)
        self.status = 0
        self.length = -1
        self.headers: dict[bytes, bytes] = {}

    def request(self) -> bytes:
        slot = self.slot
        return b"GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (
            slot.channel.sub_path,
            slot.run.hostname,
            slot.position,
        )

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.subscribed.set_result(True)  # held from here on: nothing more to wait for

    def data_received(self, data: bytes) -> None:
        self.last_data = time.monotonic()
        buffer = self.buffer
        buffer += data
        slot = self.slot
        while True:
            if self.length < 0:
                end = buffer.find(CRLF2)
                if end < 0:
                    return
                self.status, self.headers = parse_head(bytes(buffer[:end]))
                del buffer[: end + 4]
                self.length = int(self.headers.get(b"content-length", b"0"))
            if len(buffer) < self.length:
                return
            body = bytes(buffer[: self.length])
            del buffer[: self.length]
            self.length = -1
            headers = self.headers
            if self.status == 200:
                slot.position = b"If-Modified-Since: %s\r\nIf-None-Match: %s\r\n" % (
                    headers.get(b"last-modified", b""),
                    headers.get(b"etag", b""),
                )
                slot.got(int(body[:8]))
            elif self.status == 410:
                self.deleted = True
                slot.saw_deleted()
                self.transport.close()
                return
            elif self.status != 304:
                self.counts.error(f"long-poll status {self.status}: {body[:100]!r}")
            if self.leaving:
                return
            if headers.get(b"connection", b"").lower() == b"close":
                self.server_close = True
                self.transport.close()
                return
            self.transport.write(self.request())


class EventStream(Conn):
    def __init__(self, slot: Slot) -> None:
        super().__init__(slot)
        self.chunked = False
        self.events = bytearray()
        self.dechunker = Dechunker(self.events)

    def request(self) -> bytes:
        slot = self.slot
        resume = b"Last-Event-ID: %s\r\n" % slot.last_id.encode() if slot.last_id else b""
        return b"GET %s HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n%s\r\n" % (
            slot.channel.sub_path,
            slot.run.hostname,
            resume,
        )

    def data_received(self, data: bytes) -> None:
        self.last_data = time.monotonic()
        if not self.head_done:
            self.buffer += data
            end = self.buffer.find(CRLF2)
            if end < 0:
                return
            status, headers = parse_head(bytes(self.buffer[:end]))
            data = bytes(self.buffer[end + 4 :])
            self.buffer = bytearray()
            if status != 200:
                self.refuse(f"event-stream status {status}")
                return
            self.head_done = True
            self.chunked = headers.get(b"transfer-encoding", b"").lower() == b"chunked"
            self.subscribed.set_result(True)
        if self.chunked:
            ended = self.dechunker.feed(data)
            self.parse_events()
            if ended:  # the stream ended, the connection stays open
                self.stream_ended()
            return
        self.events += data
        self.parse_events()

    def stream_ended(self) -> None:
        # After a deletion expected; otherwise Slot.lost_connection reports it and resumes.
        self.transport.close()

    def parse_events(self) -> None:
        while (lines := take_event(self.events)) is not None:
            event = ident = data = None
            for line in lines:
                data = field(line, b"data") or data
                ident = field(line, b"id") or ident
                event = field(line, b"event") or event
            if event == b"pushserver.deleted":
                self.deleted = True
                self.slot.saw_deleted()
            elif event == b"pushserver.gap":
                self.counts.gaps += 1
                self.counts.note(f"sse gap on {self.slot.channel.name}: {data!r}")
            elif data is not None and ident is not None:
                self.slot.last_id = ident.strip().decode()
                self.slot.got(int(data[:8]))


def masked(opcode: int, payload: bytes) -> bytes:
    """A client frame (always masked), payload under 126 bytes."""
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes((0x80 | opcode, 0x80 | len(payload))) + mask + body


class WebSocket(Conn):
    def request(self) -> bytes:
        slot = self.slot
        path = slot.channel.sub_path
        if slot.last_id:
            path += b"?last_event_id=" + slot.last_id.encode()
        key = base64.b64encode(os.urandom(16))
        return (
            b"GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Protocol: pushserver.v1\r\n\r\n"  # its id: lines resume it
            % (path, slot.run.hostname, key)
        )

    def close(self, how: str) -> None:
        if how == CLEAN and self.transport is not None and self.head_done:
            # The closing handshake: our close frame, then the server's, then TCP closes.
            self.leaving = True
            self.transport.write(masked(8, struct.pack("!H", 1000)))
            asyncio.get_running_loop().call_later(10, self.close_overdue)
            return
        super().close(how)

    def close_overdue(self) -> None:
        if not self.ended.done():
            self.counts.error("websocket: no close frame within 10 s of ours")
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        self.last_data = time.monotonic()
        buffer = self.buffer
        buffer += data
        if not self.head_done:
            end = buffer.find(CRLF2)
            if end < 0:
                return
            status, _ = parse_head(bytes(buffer[:end]))
            del buffer[: end + 4]
            if status != 101:
                self.refuse(f"websocket handshake status {status}")
                return
            self.head_done = True
            self.subscribed.set_result(True)
        while (frame := take_frame(buffer)) is not None:
            opcode, _, payload = frame
            if opcode in (1, 2):  # the server sends messages unfragmented
                self.frame(payload)
            elif opcode == 9:
                self.transport.write(masked(10, payload))
            elif opcode == 8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                if self.leaving:
                    pass  # the answer to our close frame
                elif code == 4410 and self.deleted:
                    pass
                else:  # Slot.lost_connection reports it and resumes
                    self.counts.error(f"websocket closed by the server: {code}")
                self.transport.close()
                return

    def frame(self, payload: bytes) -> None:
        if payload[:3] == b"id:":
            end = payload.find(b"\n\n")
            self.slot.last_id = payload[4 : payload.find(b"\n")].decode()
            self.slot.got(int(payload[end + 2 : end + 10]))
            return
        kind = json.loads(payload).get("type")
        if kind == "deleted":
            self.deleted = True
            self.slot.saw_deleted()
        elif kind == "gap":
            self.counts.gaps += 1
            self.counts.note(f"ws gap on {self.slot.channel.name}: {payload!r}")


CONNS: dict[str, type[Conn]] = {"longpoll": LongPoll, "sse": EventStream, "ws": WebSocket}


class Http(HttpClient):
    """A keep-alive connection for publisher requests, one at a time (channel info as JSON)."""

    async def request(
        self, method: bytes, path: bytes, body: bytes = b"", headers: bytes = b""
    ) -> tuple[int, bytes]:
        return await super().request(method, path, body, headers or b"Accept: application/json\r\n")


#: /proc/net/tcp's state numbers.
TCP_STATES = {"01": "established", "06": "time_wait", "08": "close_wait", "0A": "listen"}


def tcp_table(port: int) -> dict[int, str]:
    """The state of each socket whose local port is ``port``, by inode."""
    wanted = f"{port:04X}"
    inodes: dict[int, str] = {}
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[1].rsplit(":", 1)[1] == wanted:
                inodes[int(fields[9])] = TCP_STATES.get(fields[3], fields[3])
    return inodes


def socket_inodes(pid: int) -> tuple[int, list[int]]:
    """(open file descriptors, inodes of the sockets among them) of ``pid``."""
    fds = 0
    inodes = []
    directory = f"/proc/{pid}/fd"
    for name in os.listdir(directory):
        fds += 1
        try:
            link = os.readlink(f"{directory}/{name}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.append(int(link[8:-1]))
    return fds, inodes


class Soak:
    def __init__(self, spec: dict) -> None:
        self.spec = spec
        self.loop = asyncio.get_running_loop()
        self.host = spec["host"]
        self.port = spec["ports"][0]
        self.pid = spec["server_pids"][0]
        self.redis_pid = spec.get("redis_pid")
        self.hostname = f"{self.host}:{self.port}".encode()
        self.counts = Counts()
        self.rng = random.Random(spec.get("seed", 6))
        self.stopping = False
        self.tasks: set[asyncio.Task] = set()
        self.pool: list[Http] = []
        self.channels = [Channel(f"{spec['prefix']}-s{c}") for c in range(spec["channels"])]
        self.slots: list[Slot] = []
        self.ephemeral_alive = 0
        self.samples: list[dict] = []
        self.t0 = 0.0

    def spawn(self, coro) -> asyncio.Task:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    # -- publisher requests --------------------------------------------------------------

    async def http(self, method: bytes, path: bytes, body: bytes = b"") -> tuple[int, bytes]:
        while self.pool and self.pool[-1].dead:
            self.pool.pop().transport.close()
        if self.pool:
            conn = self.pool.pop()
        else:
            _, conn = await self.loop.create_connection(
                lambda: Http(self.hostname), self.host, self.port
            )
        try:
            status, body = await conn.request(method, path, body)
        except ConnectionError:
            self.counts.error(f"{method.decode()}: connection lost")
            return 0, b""
        if conn.dead:
            conn.transport.close()
        else:
            self.pool.append(conn)
        return status, body

    async def publish(self, channel: Channel) -> bool:
        async with channel.lock:
            seq = channel.seq + 1
            status, _ = await self.http(b"POST", channel.pub_path, encode_body(seq, 64))
            self.counts.publish_status[status] = self.counts.publish_status.get(status, 0) + 1
            if status in (201, 202):
                channel.seq = seq
                self.counts.publishes += 1
                return True
            self.counts.error(f"publish status {status}")
            return False

    async def subscribers_on(self, channel: Channel) -> int:
        status, body = await self.http(b"GET", channel.pub_path)
        if status != 200:
            return -1
        return json.loads(body)["subscribers"]

    # -- the load ------------------------------------------------------------------------

    async def ticks(self, period: float, deadline: float, inclusive: bool = False):
        """Yield 0, 1, 2, ... at ``t0 + k * period`` (a schedule, not a pace: a late tick
        is not made up for by waiting less after it) until the deadline."""
        for k in itertools.count():
            due = self.t0 + k * period
            if due > deadline or (due == deadline and not inclusive):
                return
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # the schedule itself
            yield k

    async def publishing(self, deadline: float) -> None:
        rate = self.spec["rate"]
        pending: set[asyncio.Task] = set()
        order = itertools.cycle(self.channels)
        async for _ in self.ticks(1 / rate, deadline):
            if len(pending) > 10 * len(self.channels):  # the server fell far behind
                self.counts.error("publish skipped: too many pending")
                continue
            task = self.spawn(self.publish(next(order)))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.gather(*pending)

    async def churning(self, deadline: float) -> None:
        rate = self.spec["churn"]
        kinds = itertools.cycle(self.spec.get("closes", (ABRUPT, CLEAN)))
        async for _ in self.ticks(1 / rate, deadline):
            slot = self.rng.choice(self.slots)
            if slot.busy or slot.conn is None:
                continue
            self.spawn(self.cycle(slot, next(kinds)))

    async def cycle(self, slot: Slot, how: str) -> None:
        """Close one subscriber's connection, wait a moment, reconnect."""
        conn = slot.conn
        if slot.busy or conn is None:
            return
        slot.busy = True
        self.counts.closes[how] += 1
        conn.close(how)
        try:
            await asyncio.wait_for(asyncio.shield(conn.ended), 15)
        except TimeoutError:
            self.counts.error(f"{slot.transport}: close did not complete in 15 s")
            conn.transport.abort()
        await asyncio.sleep(self.rng.uniform(0, self.spec.get("offline", 1.0)))  # offline
        if self.rng.random() < self.spec.get("resume_share", 0.9):
            self.counts.resumed += 1
        else:
            self.counts.fresh += 1
            slot.forget()
            slot.channel = self.rng.choice(self.channels)
        if not self.stopping:
            await slot.connect()
        slot.busy = False

    async def creating(self, deadline: float) -> None:
        rate = self.spec["ephemeral"]
        async for k in self.ticks(1 / rate, deadline):
            self.spawn(self.ephemeral(k))

    async def ephemeral(self, k: int) -> None:
        """A short-lived channel: created, maybe subscribed and published to, deleted.

        k % 4: 0 created by PUT and left idle; 1 created by a WebSocket (else SSE)
        subscriber's GET (``create_on_get``) and left idle; 2, 3 created by PUT, one
        subscriber (the transports in turn), 3 messages. Only the run's transports are used.
        """
        counts = self.counts
        channel = Channel(f"{self.spec['prefix']}-e{k}")
        kind = k % 4
        kinds = self.spec.get("transports", TRANSPORTS)
        # Long-poll cannot create the channel: its GET has no answer to wait for.
        creators = [t for t in ("ws", "sse") if t in kinds]
        if kind == 1 and not creators:
            kind = 0
        self.ephemeral_alive += 1
        try:
            slot = None
            if kind != 1:
                status, _ = await self.http(b"PUT", channel.pub_path)
                if status != 200:
                    counts.error(f"ephemeral PUT status {status}")
            if kind:
                transport = creators[0] if kind == 1 else kinds[(k // 4) % len(kinds)]
                slot = Slot(self, transport, channel, ephemeral=True)
                if await slot.connect():
                    counts.ephemeral["with_subscriber"] += 1
                else:
                    slot = None
            counts.ephemeral["created"] += 1
            if kind >= 2:
                for _ in range(3):
                    await self.publish(channel)
            lo, hi = self.spec.get("lifetime", (5.0, 20.0))
            await asyncio.sleep(self.rng.uniform(lo, hi))  # the channel's lifetime
            if slot is not None:
                # Delete only once the subscriber has every message and is waiting again
                # (observing the server's subscriber count): then it must see the deletion.
                deadline = time.monotonic() + 10
                while (slot.last or 0) < channel.seq or await self.subscribers_on(channel) < 1:
                    if time.monotonic() > deadline:
                        counts.error(f"ephemeral {slot.transport} subscriber not ready in 10 s")
                        break
                    await asyncio.sleep(0.05)  # polling another process's state, bounded
                counts.lost += channel.seq - (slot.last or 0)
            status, _ = await self.http(b"DELETE", channel.pub_path)
            if status == 200:
                counts.ephemeral["deleted"] += 1
            else:
                counts.error(f"ephemeral DELETE status {status}")
            if slot is not None:
                try:
                    await asyncio.wait_for(asyncio.shield(slot.deleted), 10)
                    counts.ephemeral["deletion_seen"] += 1
                except TimeoutError:
                    counts.error(f"ephemeral {slot.transport}: deletion not seen in 10 s")
                if slot.conn is not None:
                    try:
                        await asyncio.wait_for(asyncio.shield(slot.conn.ended), 10)
                    except TimeoutError:
                        counts.error(f"ephemeral {slot.transport}: not closed after deletion")
                        slot.conn.close(ABRUPT)
        finally:
            self.ephemeral_alive -= 1

    async def flooding(self, deadline: float) -> None:
        rate = self.spec.get("flood", 0)
        if not rate:
            return
        pending: set[asyncio.Task] = set()
        async for k in self.ticks(1 / rate, deadline):
            if len(pending) > 10 * rate:  # the server fell far behind: not measured
                self.counts.error("flood skipped: too many pending")
                continue
            task = self.spawn(self.hang_up(k))
            pending.add(task)
            task.add_done_callback(pending.discard)

    async def hang_up(self, k: int) -> None:
        """One anonymous long poll on a channel of its own, abandoned at once."""
        path = f"/sub/{self.spec['prefix']}-f{k}-{self.rng.getrandbits(32):08x}".encode()
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        except OSError as exc:
            self.counts.error(f"flood connect: {type(exc).__name__}")
            return
        try:
            writer.write(b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path, self.hostname))
            writer.write_eof()
            self.counts.flood["sent"] += 1
            # The server answers a long poll whose client left with nothing: it closes.
            data = await asyncio.wait_for(reader.read(65536), 30)
            if data:
                self.counts.error(f"flood: answered {data[:12]!r}")
            else:
                self.counts.flood["closed"] += 1
        except (OSError, TimeoutError) as exc:
            self.counts.error(f"flood: {type(exc).__name__}")
        finally:
            writer.close()

    # -- measurement ---------------------------------------------------------------------

    def sample(self) -> dict:
        fds, inodes = socket_inodes(self.pid)
        by_inode = tcp_table(self.port)
        entry = {
            "t": round(time.monotonic() - self.t0, 2),
            "rss_kib": rss_bytes(self.pid) // 1024,
            "fds": fds,
            "sockets": len(inodes),
            # Of the server's own sockets: not those still waiting in the accept queue.
            "connections": sum(1 for i in inodes if by_inode.get(i) == "established"),
            # Server sockets the peer has closed (FIN: close_wait; RST: gone from the TCP
            # table) that the server has not closed yet.
            "close_wait": sum(1 for i in inodes if by_inode.get(i) == "close_wait"),
            "reset_unclosed": sum(1 for i in inodes if i not in by_inode),
            "cpu_seconds": round(cpu_seconds(self.pid), 2),
            "subscribers": sum(1 for s in self.slots if s.conn is not None),
            # Connected subscribers more than STALE messages behind their channel, by
            # transport: a delivery that stalls shows here long before it costs a loss.
            "behind": {
                t: sum(
                    1
                    for s in self.slots
                    if s.transport == t
                    and s.conn is not None
                    and s.last is not None  # a fresh one is owed the buffer, not behind
                    and s.channel.seq - s.last > STALE
                )
                for t in self.spec.get("transports", TRANSPORTS)
            },
            "ephemeral_channels": self.ephemeral_alive,
            "deliveries": self.counts.deliveries,
            "publishes": self.counts.publishes,
            "reconnects": sum(self.counts.closes.values()),
        }
        if self.redis_pid:
            entry["redis_rss_kib"] = rss_bytes(self.redis_pid) // 1024
        now = time.monotonic()
        for slot in self.slots:
            conn = slot.conn
            if (
                conn is not None
                and slot.last is not None
                and slot.channel.seq - slot.last > 20 * STALE
            ):
                self.counts.note(
                    f"at {entry['t']:.0f} s {slot.channel.seq - slot.last} behind: "
                    f"{slot.describe()}; connection open {now - conn.opened:.1f} s, last data "
                    f"{now - conn.last_data:.1f} s ago, buffer {bytes(conn.buffer[:80])!r}"
                )
        return entry

    async def sampling(self, deadline: float) -> None:
        interval = self.spec.get("sample_interval", 5.0)
        # The last sample is due at the deadline itself.
        async for _ in self.ticks(interval, deadline + 1e-6, inclusive=True):
            self.samples.append(self.sample())

    async def drained(self, timeout: float) -> bool:
        """Wait until every subscriber has its channel's last message (woken by deliveries)."""
        end = time.monotonic() + timeout

        def behind() -> list[Slot]:
            return [s for s in self.slots if (s.last or 0) < s.channel.seq]

        while behind():
            left = end - time.monotonic()
            if left <= 0:
                return False
            self.counts.progress.clear()
            try:
                await asyncio.wait_for(self.counts.progress.wait(), left)
            except TimeoutError:
                return not behind()
        return True

    async def run(self) -> dict:
        spec = self.spec
        counts = self.counts
        result: dict = {"fd_limit": raise_fd_limit()}
        n = spec["subscribers"]
        gate = asyncio.Semaphore(32)

        async def first(i: int) -> None:
            kinds = spec.get("transports", TRANSPORTS)
            slot = Slot(self, kinds[i % len(kinds)], self.channels[(i // 3) % len(self.channels)])
            self.slots.append(slot)
            async with gate:
                await slot.connect()

        self.t0 = time.monotonic()
        rss_fresh = rss_bytes(self.pid)
        await asyncio.gather(*(first(i) for i in range(n)))
        result["connect_seconds"] = round(time.monotonic() - self.t0, 2)
        result["connected"] = sum(1 for s in self.slots if s.conn is not None)
        result["rss_fresh_kib"] = rss_fresh // 1024

        duration = spec["duration"]
        cpu0 = cpu_seconds(self.pid)
        own0 = os.times()
        self.t0 = time.monotonic()
        deadline = self.t0 + duration
        await asyncio.gather(
            self.sampling(deadline),
            self.publishing(deadline),
            self.churning(deadline),
            self.creating(deadline),
            self.flooding(deadline),
        )
        # Let reconnects and short-lived channels finish, then every subscriber catch up.
        busy = [t for t in self.tasks if not t.done()]
        if busy:
            await asyncio.wait(busy, timeout=60)
        drained = await self.drained(spec.get("drain", 20))
        wall = time.monotonic() - self.t0
        self.stopping = True
        server_cpu = cpu_seconds(self.pid) - cpu0
        own = os.times()
        own_cpu = (own.user + own.system) - (own0.user + own0.system)

        tail = 0
        behind = 0
        for slot in self.slots:
            if (slot.last or 0) < slot.channel.seq:
                behind += 1
                tail += slot.channel.seq - (slot.last or 0)
        still_busy = sum(1 for t in self.tasks if not t.done())
        result.update(
            subscribers=n,
            duration=duration,
            seconds=round(wall, 1),
            drained=drained,
            behind_at_end=behind,
            unfinished_tasks=still_busy,
            transports={t: sum(1 for s in self.slots if s.transport == t) for t in TRANSPORTS},
            channels=len(self.channels),
            publishes=counts.publishes,
            publishes_per_second=round(counts.publishes / duration, 1),
            publish_status=counts.publish_status,
            deliveries=counts.deliveries,
            deliveries_per_second=round(counts.deliveries / duration, 1),
            lost=counts.lost + tail + counts.gaps,
            lost_at_end=tail,
            gaps=counts.gaps,
            duplicated=counts.duplicated,
            out_of_order=counts.out_of_order,
            closes=counts.closes,
            reconnects=sum(counts.closes.values()),
            resumed=counts.resumed,
            fresh=counts.fresh,
            server_closes=counts.server_closes,
            ephemeral=counts.ephemeral,
            flood=counts.flood,
            errors=counts.errors,
            anomalies=counts.anomalies,
            server_cpu_seconds=round(server_cpu, 2),
            server_cpu_utilisation=round(server_cpu / wall, 3),
            loadgen_cpu_utilisation=round(own_cpu / wall, 3),
            samples=self.samples,
        )
        result["memory"] = verdict(self.samples, duration, result)
        for slot in self.slots:
            if slot.conn is not None:
                slot.conn.close(ABRUPT)
        for conn in self.pool:
            conn.transport.close()
        await asyncio.sleep(0)
        return result


#: Memory counts as flat when, after the warm-up, both stay under these (see verdict()).
GROWTH_LIMIT_KIB = 2048
SLOPE_LIMIT_KIB_PER_MIN = 256


def slope_per_minute(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, KiB) points, in KiB per minute."""
    if len(points) < 3:
        return None
    mean_t = statistics.fmean(t for t, _ in points)
    mean_v = statistics.fmean(v for _, v in points)
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if not var:
        return None
    cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return cov / var * 60


def verdict(samples: list[dict], duration: float, result: dict) -> dict:
    """Flat or not, judged after the warm-up.

    The windows scale with the duration; for 10 minutes they are minutes 2-4 (the baseline,
    after a 2-minute warm-up in which buffers fill and the allocator settles) and the last 2
    minutes. Flat means: the median RSS of the last window exceeds the baseline's by less
    than GROWTH_LIMIT_KIB, *and* the least-squares slope over everything after the warm-up
    is under SLOPE_LIMIT_KIB_PER_MIN.
    """
    warmup = 0.2 * duration
    base = [s["rss_kib"] for s in samples if warmup <= s["t"] <= 0.4 * duration]
    last = [s["rss_kib"] for s in samples if s["t"] >= 0.8 * duration]
    steady = [(s["t"], s["rss_kib"]) for s in samples if s["t"] >= warmup]
    entry: dict = {
        "warmup_seconds": warmup,
        "baseline_window_seconds": [warmup, 0.4 * duration],
        "final_window_seconds": [0.8 * duration, duration],
        "growth_limit_kib": GROWTH_LIMIT_KIB,
        "slope_limit_kib_per_minute": SLOPE_LIMIT_KIB_PER_MIN,
    }
    if not base or not last:
        entry.update(flat=None, why="too few samples")
        return entry
    baseline, final = statistics.median(base), statistics.median(last)
    slope = slope_per_minute(steady)
    minutes = duration / 60
    cycles = result["reconnects"] + result["ephemeral"]["created"] + result["flood"]["sent"]
    entry.update(
        baseline_median_kib=baseline,
        final_median_kib=final,
        growth_kib=final - baseline,
        slope_kib_per_minute=round(slope, 1) if slope is not None else None,
        first_kib=samples[0]["rss_kib"],
        peak_kib=max(s["rss_kib"] for s in samples),
        # What a leak per connection cycle (close + reconnect, or a short-lived channel)
        # would have to be to reach the slope limit at this run's rate.
        detectable_bytes_per_cycle=round(SLOPE_LIMIT_KIB_PER_MIN * 1024 * minutes / cycles)
        if cycles
        else None,
        flat=final - baseline < GROWTH_LIMIT_KIB
        and (slope is None or slope < SLOPE_LIMIT_KIB_PER_MIN),
    )
    return entry


def main() -> None:
    spec = json.loads(sys.argv[1])
    try:
        import uvloop
    except ImportError:
        uvloop = None

    async def go() -> dict:
        return await Soak(spec).run()

    if uvloop is not None and spec.get("loop", "uvloop") == "uvloop":
        result = uvloop.run(go())
        result["loadgen_loop"] = "uvloop"
    else:
        result = asyncio.run(go())
        result["loadgen_loop"] = "asyncio"
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
