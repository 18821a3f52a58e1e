"""hypercorn's HTTP/1.1, h2c and WebSocket protocols, driven from one asyncio protocol object
per connection: the asyncio worker of :func:`pushserver.hypercorn.run`.

hypercorn parses and writes every request here as it does under its own worker
(:class:`hypercorn.protocol.ProtocolWrapper`, h11, h2, wsproto, its streams and the ASGI
app task per request). What is replaced is its asyncio connection layer, which per
connection holds a stream reader, writer and their protocol, a reading task (with its
coroutines, a task group and an idle task behind a lock), an ``asyncio.Queue`` per request
(four 760-byte deques, empty or not) and an ``asyncio.Event`` (another): about 12 KiB of an
idle subscriber's 28 (bench/NOTES.md, the second tuning pass). Here:

* :class:`Connection` is an :class:`asyncio.Protocol`. Bytes are handed to hypercorn from a
  task that exists only while there is something to handle: an idle connection, or one
  holding an event stream, has no task of its own besides its application's.
* The idle timer (``keep_alive_timeout``: the header read timeout and the keep-alive
  timeout in one) is a loop timer, not a task.
* Writes go straight to the transport; a writer waits only while the transport's buffer
  is above its high-water mark (``pause_writing``), as ``StreamWriter.drain`` does.
* The per-request queue (:class:`AppQueue`) and the events (:class:`LeanEvent`) allocate
  their waiter lists only when someone waits.
* An HTTP/1.1 response body or a WebSocket message can be written synchronously, by the
  fan-out, while the connection takes it at once (:class:`SendNow`, the engine's
  :class:`pushserver.engine.SendNow`): framed by the same h11 / wsproto connection
  hypercorn frames the application's sends with.

The behaviour hypercorn's worker has and clients see is kept: the idle timer runs from
the connection's start and from each response's end until a request head is complete;
pipelined requests wait for the response before (h11 pauses); a peer's end of stream or
reset is a ``Closed`` for the protocol (the application gets its disconnect); on shutdown
the listening sockets close, idle connections are closed at once, and the others get
``graceful_timeout`` seconds before they are cut. A closed connection's objects are freed
by reference counting alone (tests/test_server_gc.py). TLS and QUIC are not served here
(pushserver listens on plain TCP: TLS ends at the proxy), nor ``read_timeout`` or
``max_requests``, which pushserver does not set.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import heapq
import logging
import math
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, cast

import h11
from hypercorn.asyncio.lifespan import Lifespan
from hypercorn.asyncio.task_group import _handle
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config, Sockets
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.protocol import ProtocolWrapper
from hypercorn.protocol.h11 import H11Protocol, H11WSConnection
from hypercorn.protocol.http_stream import ASGIHTTPState, HTTPStream
from hypercorn.protocol.ws_stream import ASGIWebsocketState, Handshake, WSStream
from hypercorn.typing import AppWrapper, ConnectionState, LifespanState
from hypercorn.utils import parse_socket_addr, repr_socket_addr, suppress_body
from wsproto.connection import ConnectionState as WebSocketState
from wsproto.events import BytesMessage, TextMessage
from wsproto.utilities import LocalProtocolError as WebSocketProtocolError

from ..engine import INBOX, SEND_NOW

logger = logging.getLogger("pushserver")

#: Bytes received while the previous ones are still being handled (a pipelined request
#: waiting for the response before it) before reading pauses.
READ_BUFFER_LIMIT = 2**16


class LeanEvent:
    """hypercorn's event interface (``set``, ``clear``, ``wait``, ``is_set``) with its list
    of waiters allocated only while someone waits (``asyncio.Event`` allocates a 760-byte
    deque per event, and hypercorn makes one per connection)."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] | None = None

    async def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    async def clear(self) -> None:
        self._set = False

    async def wait(self) -> None:
        if self._set:
            return
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)

    def is_set(self) -> bool:
        return self._set


class LeanWorkerContext(WorkerContext):
    event_class = LeanEvent


class Deadlines:
    """Deadlines of many objects on one loop timer.

    :meth:`at` files ``target.expire(now)`` to be called at ``due`` (a ``time.monotonic()``
    time) and returns the heap entry; :meth:`cancel` empties an entry, so the heap holds
    nothing of a target it will no longer call. Entries due within :data:`SLACK` of the
    first expire together, each told ``now`` = the fire time plus the slack, so a target
    acts on a deadline that close as reached (and does not re-file it).

    A loop timer costs about 580 bytes while pending (uvloop's handle and its libuv timer);
    a heap entry about 100. The watchers of held streams (pushserver.transports.streaming)
    each have a deadline at all times (the next keepalive, or the write timeout), so they
    share this one timer.
    """

    __slots__ = ("_count", "_heap", "_timer", "_timer_due")

    SLACK = 0.002

    def __init__(self) -> None:
        self._heap: list[list[Any]] = []
        self._count = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = math.inf

    def __len__(self) -> int:
        """Entries in the heap, emptied ones included until their time comes."""
        return len(self._heap)

    def at(self, due: float, target: Any) -> list[Any]:
        self._count += 1
        entry = [due, self._count, target]
        heapq.heappush(self._heap, entry)
        if due < self._timer_due:
            self._set_timer(due)
        return entry

    def move(self, entry: list[Any] | None, due: float, target: Any) -> list[Any] | None:
        """:meth:`pushserver.engine.DeadlineTimer.move`: ``entry`` is kept while it is
        still ``target``'s at ``due`` (a watcher re-files the same deadline often)."""
        if entry is not None and entry[2] is target:
            if entry[0] == due:
                return entry
            entry[2] = None
        return self.at(due, target) if due != math.inf else None

    @staticmethod
    def cancel(entry: list[Any] | None) -> None:
        if entry is not None:
            entry[2] = None

    def _set_timer(self, due: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_due = due
        delay = max(due - time.monotonic(), 0.0)
        self._timer = asyncio.get_running_loop().call_later(delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._timer_due = math.inf
        heap = self._heap
        now = time.monotonic() + self.SLACK
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            target, entry[2] = entry[2], None
            if target is not None:
                try:
                    target.expire(now)
                except Exception:
                    logger.exception("a deadline's callback failed")
        if heap:
            self._set_timer(heap[0][0])


class AppQueue:
    """What hypercorn hands an application as ``receive``: a bounded FIFO (``put`` waits
    while ``maxsize`` items are queued, 0 = unbounded) and ``get``, cancel-safe as
    ``asyncio.Queue.get`` is (an item is never lost to a cancelled getter). Empty and
    unwaited, it holds nothing but its slots.

    It is also the request's :class:`pushserver.engine.Inbox` (``listener``,
    ``deadlines``, ``get_nowait``, ``drop_leading``), put in the request scope's extensions
    by :meth:`Connection.spawn_app`: the transports watch a client through it without a
    task of their own."""

    __slots__ = ("_getters", "_items", "_maxsize", "_putters", "deadlines", "listener")

    def __init__(self, maxsize: int = 0, deadlines: Deadlines | None = None) -> None:
        #: The worker's shared timer, for a reader that also keeps deadlines.
        self.deadlines = deadlines if deadlines is not None else Deadlines()
        #: Called (with no argument) after each put: a reader that waits on something else
        #: as well learns of new items without a task waiting in :meth:`get`.
        self.listener: Callable[[], object] | None = None
        self._maxsize = maxsize
        self._items: list[Any] | None = None
        self._getters: list[asyncio.Future[None]] | None = None
        self._putters: list[asyncio.Future[None]] | None = None

    def qsize(self) -> int:
        return len(self._items) if self._items else 0

    async def put(self, item: Any) -> None:
        while self._maxsize and self.qsize() >= self._maxsize:
            if self._putters is None:
                self._putters = []
            try:
                await _wait_in(self._putters)
            except BaseException:
                if self.qsize() < self._maxsize:
                    _wake_one(self._putters)  # the slot this putter was woken for
                raise
        if self._items is None:
            self._items = []
        self._items.append(item)
        if self.listener is not None:
            self.listener()
        _wake_one(self._getters)

    def get_nowait(self) -> Any:
        """The first item; :class:`IndexError` when there is none."""
        if not self._items:
            raise IndexError("the queue is empty")
        items = self._items
        item = items.pop(0)
        if not items:
            self._items = None  # an idle request's queue keeps no empty list
        _wake_one(self._putters)
        return item

    def drop_leading(self, kind: str) -> None:
        """Take off the items at the front whose ASGI ``type`` is ``kind``."""
        items = self._items
        while items and items[0]["type"] == kind:
            self.get_nowait()

    async def get(self) -> Any:
        while not self._items:
            if self._getters is None:
                self._getters = []
            try:
                await _wait_in(self._getters)
            except BaseException:
                if self._items:
                    _wake_one(self._getters)  # the item this getter was woken for
                raise
        return self.get_nowait()


async def _wait_in(waiters: list[asyncio.Future[None]]) -> None:
    waiter = asyncio.get_running_loop().create_future()
    waiters.append(waiter)
    try:
        await waiter
    finally:
        if waiter in waiters:
            waiters.remove(waiter)


def _wake_one(waiters: list[asyncio.Future[None]] | None) -> None:
    while waiters:
        waiter = waiters.pop(0)
        if not waiter.done():
            waiter.set_result(None)
            return


class SendNow:
    """:class:`pushserver.engine.SendNow` for one HTTP/1.1 request or WebSocket of a
    :class:`Connection`: writes a body chunk or a message as hypercorn's stream would
    (:meth:`HTTPStream.app_send <hypercorn.protocol.http_stream.HTTPStream.app_send>` then
    :class:`H11Protocol <hypercorn.protocol.h11.H11Protocol>`: ``h11.Data`` through the h11
    connection, chunked; :class:`WSStream <hypercorn.protocol.ws_stream.WSStream>`: a
    wsproto message through its connection), straight to the transport.

    Every write of hypercorn's own reaches the transport without waiting (its coroutines
    frame and write in one go) and then waits only while the transport is paused; so
    while it is not paused no send is half done, and bytes written here come after all
    that was sent before and before all that is sent after, framed by the same h11 /
    wsproto state. Refused (False) unless the stream is in the state where ``send`` would
    write the message (a response under way with h11 sending its body; an accepted,
    open WebSocket), the connection is open and the transport takes writes now.

    WebSockets whose client offered no extension (so no compression) share the frame of
    a message: wsproto makes it once per message (:attr:`Worker.last_frame`), not once per
    subscriber; it keeps no state of a whole message it sent, so skipping its ``send`` for
    the others leaves their connections as sending would. Event streams framed chunked
    share the chunk of a message the same way (:attr:`Worker.last_chunk`): a chunk is the
    body with its length before it, and h11 keeps no state of one it sent.
    """

    __slots__ = ("chunked", "connection", "protocol", "stream_id")

    def __init__(self, connection: Connection, protocol: H11Protocol, stream: Any) -> None:
        self.connection = connection
        self.protocol = protocol
        # The stream by its id, not a reference: the stream's scope holds this object, and
        # a reference would make a cycle that outlives the request. The protocol holds its
        # current stream only until it closes; and the caller holds its ``send`` (a method of
        # the stream, checked by ``owns``), so the stream, and its id, live as long as the
        # caller uses this.
        self.stream_id = id(stream)
        #: Whether h11 frames this response's body chunked (known from the first body
        #: written here: h11 picks a response's framing once, from its headers and the
        #: client's version, and says which only privately).
        self.chunked = False

    def owns(self, send: Callable[..., Any]) -> bool:
        return id(getattr(send, "__self__", None)) == self.stream_id

    def send_now(self, message: Any) -> bool:
        connection = self.connection
        transport = connection.transport
        if (
            transport is None
            or connection._drain is not None
            or connection.lost
            or connection.closed
            or transport.is_closing()
        ):
            return False
        protocol = self.protocol
        stream = protocol.stream
        if stream is None or id(stream) != self.stream_id or stream.closed:
            return False
        kind = message["type"]
        try:
            if kind == "websocket.send":
                if type(stream) is not WSStream or stream.state is not ASGIWebsocketState.CONNECTED:
                    return False
                websocket = getattr(stream, "connection", None)
                if websocket is None or websocket.state is not WebSocketState.OPEN:
                    return False
                if stream.handshake.extensions:
                    frame = _websocket_frame(websocket, message)
                else:
                    # No extension offered, so none in effect (no compression): a whole
                    # message is the same frame on every connection, and wsproto keeps no
                    # state of one it sent. The fan-out hands every subscriber the same
                    # ASGI message, so the frame is made once per message, not per
                    # subscriber.
                    worker = connection.worker
                    last = worker.last_frame
                    if last is not None and last[0] is message:
                        frame = last[1]
                    else:
                        frame = _websocket_frame(websocket, message)
                        worker.last_frame = (message, frame)
            elif kind == "http.response.body":
                body = message.get("body")
                if (
                    not message.get("more_body", False)
                    or not body
                    or type(stream) is not HTTPStream
                    or stream.state is not ASGIHTTPState.RESPONSE
                    or suppress_body(stream.scope["method"], int(stream.response["status"]))
                ):
                    return False
                http = protocol.connection
                if type(http) is not h11.Connection or http.our_state is not h11.SEND_BODY:
                    return False
                if self.chunked:
                    # A chunk is the same bytes on every chunked response, and h11 keeps
                    # no state of one it sent (its own Data event only checks that the
                    # body is under way, as above): the fan-out hands every subscriber of
                    # a one-channel event stream the same ASGI message, so the chunk is
                    # made once per message, not per subscriber.
                    worker = connection.worker
                    last = worker.last_chunk
                    if last is not None and last[0] is message:
                        frame = last[1]
                    else:
                        frame = _chunk(body)
                        worker.last_chunk = (message, frame)
                else:
                    frame = http.send(h11.Data(data=bytes(body)))
                    # Chunked framing is the only one that adds bytes to the body (h11
                    # writes an HTTP/1.0 or a fixed-length body as it is).
                    self.chunked = len(frame) > len(body) and frame == _chunk(body)
            else:
                return False
        except (h11.LocalProtocolError, WebSocketProtocolError):
            return False
        if frame:
            transport.write(frame)
        return True


def _chunk(body: bytes) -> bytes:
    """``body`` as one chunk of HTTP/1.1's chunked transfer coding (RFC 9112, 7.1), as
    h11 writes a non-empty ``Data`` event on a chunked response."""
    return b"%x\r\n%b\r\n" % (len(body), body)


def _websocket_frame(websocket: Any, message: Any) -> bytes:
    """The frame wsproto writes for a ``websocket.send`` message on ``websocket``."""
    data = message.get("bytes")
    if data is not None:
        return websocket.send(BytesMessage(data=bytes(data)))
    return websocket.send(TextMessage(data=message["text"]))


class Worker:
    """What every connection of one server shares, and the set of open connections."""

    def __init__(
        self, app: AppWrapper, config: Config, context: WorkerContext, state: LifespanState
    ) -> None:
        self.app = app
        self.config = config
        self.context = context
        self.state = state
        self.loop = asyncio.get_running_loop()
        self.connections: set[Connection] = set()
        self._empty: asyncio.Future[None] | None = None
        # What hypercorn hands each application for its sync and thread helpers; the same
        # for every request, so made once.
        self.run_in_executor = partial(self.loop.run_in_executor, None)
        # Its bound method, made once: every request's task holds it (``_handle``'s
        # ``call_soon``), and each ``worker.call_soon`` would be a new 64-byte object.
        self.call_soon_method = self.call_soon
        #: The context each connection's task-done callback runs in: it reads no context
        #: variable, and callbacks never nest, so one for all.
        self.callback_context = contextvars.Context()
        self.deadlines = Deadlines()
        #: The last WebSocket message :class:`SendNow` framed for a connection without
        #: extensions, and its frame (the same for every such connection).
        self.last_frame: tuple[Any, bytes] | None = None
        #: The same for the last event stream body :class:`SendNow` wrote as a chunk.
        self.last_chunk: tuple[Any, bytes] | None = None

    def call_soon(self, func: Callable[..., Any], *args: Any) -> Any:
        """Run ``func(*args)`` on the loop from another thread and wait for its result."""
        return asyncio.run_coroutine_threadsafe(func(*args), self.loop).result()

    def connection(self) -> Connection:
        return Connection(self)

    def finished(self, connection: Connection) -> None:
        self.connections.discard(connection)
        if not self.connections and self._empty is not None and not self._empty.done():
            self._empty.set_result(None)

    async def wait_empty(self) -> None:
        if self.connections:
            self._empty = self.loop.create_future()
            await self._empty

    def close_idle(self) -> None:
        for connection in list(self.connections):
            if connection.idle is not None and not connection.closed:
                connection.idle_expired()

    async def cut(self) -> None:
        """Abort every connection left and wait for their tasks to end."""
        tasks: list[asyncio.Task[Any]] = []
        for connection in list(self.connections):
            tasks.extend(connection.abort())
        if tasks:
            await asyncio.wait(tasks)


class _Switched:
    """What a WebSocket's :class:`H11WSConnection` keeps of its h11 connection once the 101
    response went out. From then on h11 refuses every event it is given (its state is
    ``SWITCHED_PROTOCOL``, which allows none) and hypercorn sends it none; this refuses them
    the same way, without the parser, buffers and state machine that h11's connection holds
    for the WebSocket's whole life (about 1 KiB per connection, bench/NOTES.md)."""

    __slots__ = ()

    our_state = h11.SWITCHED_PROTOCOL

    def send(self, event: Any) -> bytes:
        raise h11.LocalProtocolError(
            f"can't handle event type {type(event).__name__} when role=SERVER and "
            "state=SWITCHED_PROTOCOL"
        )


_SWITCHED = _Switched()


class _Accepted:
    """What a :class:`WSStream` keeps of its :class:`Handshake` once the WebSocket was
    accepted: hypercorn then reads only ``accepted`` (a frame before the accept is
    refused), and :class:`SendNow` the extensions the client offered. Without the parsed
    request headers, token lists and key the handshake holds for the WebSocket's whole
    life (about 280 bytes per connection, bench/NOTES.md)."""

    __slots__ = ("extensions",)

    accepted = True

    def __init__(self, extensions: list[str] | None) -> None:
        self.extensions = extensions


#: The stand-in of every WebSocket whose client offered no extension.
_ACCEPTED = _Accepted(None)


class Connection(asyncio.Protocol):
    """One client connection: hands its bytes to hypercorn's protocol and writes what that
    sends. Also the connection's task group for hypercorn (``spawn_app``, ``spawn``)."""

    __slots__ = (
        "_drain",
        "_handler",
        "_inbox",
        "_paused_reading",
        "_tasks",
        "_upgrade",
        "closed",
        "ended",
        "idle",
        "lost",
        "protocol",
        "transport",
        "worker",
    )

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.transport: asyncio.Transport | None = None
        self.protocol: ProtocolWrapper | None = None
        #: The idle timer while one runs.
        self.idle: asyncio.TimerHandle | None = None
        #: The task handing bytes to hypercorn, while there are any.
        self._handler: asyncio.Task[None] | None = None
        #: Received while the handler is busy: bytes, then None for the end of stream.
        self._inbox: list[bytes | None] | None = None
        self._paused_reading = False
        #: Set while the transport's write buffer is above its high-water mark.
        self._drain: asyncio.Future[None] | None = None
        #: The application and protocol tasks still running: None, one, or a list of more.
        self._tasks: asyncio.Task[Any] | list[asyncio.Task[Any]] | None = None
        #: A WebSocket's h11 protocol until its response head is written (:meth:`send`).
        self._upgrade: H11Protocol | None = None
        self.closed = False  # we closed the transport
        self.ended = False  # the end of stream (or the loss) was handed on
        self.lost = False  # the transport is gone

    # -- asyncio's side ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        worker = self.worker
        sock = transport.get_extra_info("socket")
        try:
            client = parse_socket_addr(sock.family, sock.getpeername())
            server = parse_socket_addr(sock.family, sock.getsockname())
        except OSError:  # reset before it was accepted
            transport.abort()
            return
        worker.connections.add(self)
        self.protocol = ProtocolWrapper(
            worker.app,
            worker.config,
            worker.context,
            self,  # type: ignore[arg-type]
            ConnectionState(worker.state),
            False,
            client,
            server,
            self.send,
            "http/1.1",
        )
        # H11Protocol.initiate() does nothing (h2 without TLS starts from an h11 request).
        self._start_idle()

    def data_received(self, data: bytes) -> None:
        self._feed(data)

    def eof_received(self) -> bool:
        # As hypercorn does: the end of stream is first handed to h11 as empty data (a
        # request cut short is then answered 400), then the connection is Closed.
        self._feed(b"")
        self._feed(None)
        return True  # the handler closes the transport once hypercorn has seen the end

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = True
        self._stop_idle()
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)
        self._feed(None)
        self._check_finished()

    def pause_writing(self) -> None:
        if self._drain is None:
            self._drain = self.worker.loop.create_future()

    def resume_writing(self) -> None:
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- reading -------------------------------------------------------------------------

    def _feed(self, data: bytes | None) -> None:
        if self.protocol is None or self.ended:
            return
        if data is None:
            self.ended = True
        if self._handler is None:
            self._handler = self._start(self._handle(data))
            return
        inbox = self._inbox
        if inbox is None:
            inbox = self._inbox = []
        if data and inbox and inbox[-1]:
            inbox[-1] += data
        else:
            inbox.append(data)
        if (
            data is not None
            and not self._paused_reading
            and sum(len(item) for item in inbox if item) > READ_BUFFER_LIMIT
            and self.transport is not None
        ):
            self._paused_reading = True
            self.transport.pause_reading()

    async def _handle(self, data: bytes | None) -> None:
        try:
            while True:
                if self.protocol is None:
                    return
                if data is None:
                    await self.protocol.handle(Closed())
                    self._close()
                    return
                await self.protocol.handle(RawData(data))
                if not self._inbox:
                    return
                data = self._inbox.pop(0)
                if self._paused_reading and not self._inbox and not self.lost:
                    self._paused_reading = False
                    if self.transport is not None:
                        self.transport.resume_reading()
        except asyncio.CancelledError:
            if not self.lost:
                raise
            # Cancelled by _check_finished: nothing is left to hand the rest to.
        except Exception:
            # A hypercorn, h11 or h2 bug a client can trigger: this connection ends, the
            # others go on (hypercorn's own asyncio worker logs it the same way).
            logger.exception("a connection failed in hypercorn and was closed")
            self._close(abort=True)
        finally:
            self._handler = None
            if self.lost:
                self._inbox = None
            self._check_finished()

    # -- hypercorn's side ----------------------------------------------------------------

    async def send(self, event: Event) -> None:
        if isinstance(event, RawData):
            if self.lost or self.transport is None or self.transport.is_closing():
                if self.protocol is not None:
                    await self.protocol.handle(Closed())
                return
            if self._upgrade is not None:
                self._upgraded()
            self.transport.write(event.data)
            drain = self._drain
            if drain is not None:
                await asyncio.shield(drain)
                if self.lost and self.protocol is not None:
                    await self.protocol.handle(Closed())
        elif isinstance(event, Closed):
            self._close()
        elif isinstance(event, Updated):
            if event.idle:
                self._start_idle()
            else:
                self._stop_idle()

    def _upgraded(self) -> None:
        """The first write of a WebSocket's request (its response head): once that was a 101,
        the h11 connection hypercorn keeps will refuse anything more (see :class:`_Switched`)
        and is let go. A 100 Continue or an HTTP answer first: it stays, as it was."""
        protocol, self._upgrade = self._upgrade, None
        assert protocol is not None
        connection = protocol.connection
        if (
            type(connection) is H11WSConnection
            and connection.h11_connection.our_state is h11.SWITCHED_PROTOCOL
        ):
            connection.h11_connection = _SWITCHED  # type: ignore[assignment]
            stream = protocol.stream
            if (
                type(stream) is WSStream
                and stream.state is ASGIWebsocketState.CONNECTED
                and type(stream.handshake) is Handshake
                and stream.handshake.accepted
            ):
                extensions = stream.handshake.extensions
                accepted = _ACCEPTED if extensions is None else _Accepted(extensions)
                stream.handshake = accepted  # type: ignore[assignment]

    async def spawn_app(
        self,
        app: AppWrapper,
        config: Config,
        scope: Any,
        send: Callable[[Any], Awaitable[None]],
    ) -> Callable[[Any], Awaitable[None]]:
        queue = AppQueue(config.max_app_queue_size, self.worker.deadlines)
        # hypercorn's scopes always carry an extensions dict.
        extensions = scope["extensions"]
        extensions[INBOX] = queue
        # HTTP/1.1 (and WebSockets over it): the fan-out may write without a task switch.
        # HTTP/2 streams share one h2 connection whose flow control this does not follow.
        stream = getattr(send, "__self__", None)
        protocol = getattr(getattr(stream, "send", None), "__self__", None)
        if type(protocol) is H11Protocol and type(stream) in (HTTPStream, WSStream):
            extensions[SEND_NOW] = SendNow(self, protocol, stream)
            if type(stream) is WSStream:
                self._upgrade = protocol
        worker = self.worker
        self.spawn(
            _handle,
            app,
            config,
            scope,
            queue.get,
            send,
            worker.run_in_executor,
            worker.call_soon_method,
        )
        return queue.put

    def spawn(self, func: Callable[..., Any], *args: Any) -> None:
        task = self._start(func(*args))
        # One task at a time, nearly always (the request's, for as long as it is held):
        # that task itself, a list only while there are more.
        tasks = self._tasks
        if tasks is None:
            self._tasks = task
        elif isinstance(tasks, list):
            tasks.append(task)
        else:
            self._tasks = [tasks, task]
        # The connection itself is the callback (no bound method held per task), run in
        # the worker's one empty context (add_done_callback would copy this one for each):
        # 128 bytes less per held request.
        task.add_done_callback(self, context=self.worker.callback_context)

    def __call__(self, task: asyncio.Task[Any]) -> None:
        """One of the connection's tasks is done (its done callback, :meth:`spawn`)."""
        tasks = self._tasks
        if tasks is task:
            self._tasks = None
        elif isinstance(tasks, list) and task in tasks:
            tasks.remove(task)
            if not tasks:
                self._tasks = None
        if not task.cancelled() and task.exception() is not None:
            logger.error("a connection's task failed", exc_info=task.exception())
            self._close(abort=True)
        self._check_finished()

    def _start(self, coro: Any) -> asyncio.Task[Any]:
        return self.worker.loop.create_task(coro)

    # -- timers and the end --------------------------------------------------------------

    def _start_idle(self) -> None:
        if self.closed:
            return  # its timer, if any, bounds the close (see _close)
        self._stop_idle()
        if self.lost:
            return
        if self.worker.context.terminated.is_set():
            self.idle_expired()
            return
        timeout = self.worker.config.keep_alive_timeout
        self.idle = self.worker.loop.call_later(timeout, self.idle_expired)

    def _stop_idle(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
            self.idle = None

    def idle_expired(self) -> None:
        """Nothing has arrived for ``keep_alive_timeout`` seconds, or the server is stopping
        and this connection is idle: close it as hypercorn does."""
        self._stop_idle()  # called by the server at shutdown, the timer is still set
        if self.protocol is not None and not self.closed:
            self.spawn(self._close_idle)

    async def _close_idle(self) -> None:
        if self.protocol is not None:
            await self.protocol.handle(Closed())
        self._close()

    def _close(self, abort: bool = False) -> None:
        self._stop_idle()
        transport = self.transport
        if transport is None or self.closed:
            if abort and transport is not None:
                transport.abort()
            return
        self.closed = True
        if abort:
            transport.abort()
            return
        if self._drain is not None:
            # Writes are held up: the client stopped reading (a send timeout). What is
            # queued (a WebSocket close frame behind the data, the end of an event stream)
            # is left for it to read, for at most keep_alive_timeout, as an idle client is;
            # without a bound the close would wait for as long as it keeps the socket open.
            timeout = self.worker.config.keep_alive_timeout
            self.idle = self.worker.loop.call_later(timeout, transport.abort)
        if not self.lost and transport.can_write_eof():
            with contextlib.suppress(OSError, RuntimeError):
                transport.write_eof()
        transport.close()

    def abort(self) -> list[asyncio.Task[Any]]:
        """Cut this connection now (the end of the graceful period): its tasks are
        cancelled and returned."""
        running = self._tasks
        if running is None:
            tasks = []
        elif isinstance(running, list):
            tasks = list(running)
        else:
            tasks = [running]
        if self._handler is not None:
            tasks.append(self._handler)
        for task in tasks:
            task.cancel()
        self.ended = True  # connection_lost, which follows, has nothing left to hand on
        self._close(abort=True)
        return tasks

    def _check_finished(self) -> None:
        if self.lost and self._handler is not None and not self._tasks and self._inbox:
            # The handler is held by h11 (a pipelined request waits for a response) or by
            # a full queue to the application, and neither will ever move: the client is
            # gone and no application task is left. What it still holds is dropped.
            self._handler.cancel()
            return
        if self.lost and self._handler is None and not self._tasks and self.protocol is not None:
            # Over: hypercorn's protocol (which holds our send) and the transport's
            # protocol (this) refer to each other; let both go by reference counting.
            # asyncio's own selector transport keeps a bound method of itself (its read
            # callback; uvloop's has none), no longer registered once it is closed.
            if self.transport is not None and hasattr(self.transport, "_read_ready_cb"):
                self.transport._read_ready_cb = None
            self.protocol = None
            self.transport = None
            self._inbox = None
            self.worker.finished(self)


async def worker_serve(
    app: AppWrapper,
    config: Config,
    *,
    sockets: Sockets,
    shutdown_trigger: Callable[[], Awaitable[Any]],
) -> None:
    """Serve ``app`` on the plain TCP ``sockets`` until ``shutdown_trigger`` returns, as
    ``hypercorn.asyncio.run.worker_serve`` does (lifespan, graceful shutdown), with
    :class:`Connection` in place of its stream-based connection layer."""
    if sockets.secure_sockets or sockets.quic_sockets:
        raise ValueError("pushserver's asyncio worker serves plain TCP sockets only")
    loop = asyncio.get_running_loop()
    state: LifespanState = {}
    lifespan = Lifespan(app, config, loop, state)
    lifespan_task = loop.create_task(lifespan.handle_lifespan())
    await lifespan.wait_for_startup()
    if lifespan_task.done():
        exception = lifespan_task.exception()
        if exception is not None:
            raise exception

    context = LeanWorkerContext(None)
    worker = Worker(app, config, context, state)
    servers = []
    try:
        for sock in sockets.insecure_sockets:
            servers.append(
                await loop.create_server(worker.connection, sock=sock, backlog=config.backlog)
            )
            bind = repr_socket_addr(sock.family, sock.getsockname())
            await config.log.info(f"Running on http://{bind} (CTRL + C to quit)")
        await shutdown_trigger()
    finally:
        await context.terminated.set()
        for server in servers:
            server.close()
        worker.close_idle()
        try:
            await asyncio.wait_for(worker.wait_empty(), config.graceful_timeout)
        except TimeoutError:
            await worker.cut()
        finally:
            await lifespan.wait_for_shutdown()
            lifespan_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lifespan_task
