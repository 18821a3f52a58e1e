"""The streaming machinery server-sent events and WebSockets share: catch-up and watching.

A streaming subscriber holds one :class:`~pushserver.hub.Subscription` on one or more
channels and remembers, per channel, the id of the last message it delivered. Everything it
sends comes from :meth:`Stream.batch`, which returns, in order, the messages newer than
those positions, with these guarantees:

* **Nothing lost, nothing repeated.** The subscription is opened first, then each channel
  is read from the backend's buffer after its position; live deliveries already covered by
  the buffer are skipped by comparing ids with the position.
* **Bounded memory.** The subscription's queue is bounded (``Hub.queue_size``). A subscriber
  that falls behind it is marked *overflowed*; its stream then catches up from the buffer
  again, where the messages still are.
* **Written without waking, when keeping up.** A transport may pass :meth:`Stream.batch`
  a writer (``write_now``): while the stream waits with nothing owed, the hub's fan-out
  hands each new message to it (:attr:`~pushserver.hub.Subscription.direct`), the message
  is written at once when the connection takes it without waiting, and the position moves
  on, with no wake of the subscriber's task. Otherwise it is queued as ever, and nothing
  is written this way until the queue has been drained.
* **Gaps are told.** When messages after a position have already left the buffer, a
  :class:`Gap` comes first, then the oldest retained message (nchan skips silently).

While it streams, a connection is watched by a :class:`SendGuard` (the client leaving, its
WebSocket commands, the send timeout, the keepalive): through the engine's
:class:`~pushserver.engine.Inbox` when the request scope offers one, with a task otherwise.

What a subscriber URL names (channel lists, resume ids) is pure protocol, in
:mod:`pushserver.protocol`; who may subscribe is :mod:`.admission`, which opens the
channels through the hub (:meth:`~pushserver.hub.Hub.open_channel`) before anything is held.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from functools import partial
from types import MethodType
from typing import Any, Protocol

import anyio

from .._async import asyncio_loop
from ..engine import Inbox
from ..exceptions import ChannelNotFound
from ..hub import Closing, Deletion, Delivery, Hub, Subscription
from ..message import Message, MessageId

logger = logging.getLogger("pushserver.transports")


# -- a second task per connection, where watching needs one -----------------------------


async def run_beside(
    main: Callable[[], Awaitable[object]], beside: Callable[[], Awaitable[object]]
) -> None:
    """Run ``main()`` in this task and ``beside()`` in a second one until either returns;
    the other is then cancelled and waited for. An exception from either ends both and is
    raised here as it is (not in an exception group).

    Without the engine's inbox (see :meth:`SendGuard.run`), a watched connection is two
    tasks: the writer, and a :class:`SendGuard` watching the client. An anyio task group
    costs about 4.3 KiB per connection on asyncio (the group, its cancel scope, the child's
    task handle with its own Event and deque); a bare asyncio task beside one cancel scope
    about 1.5 KiB. On asyncio this is that; on any
    other anyio backend (trio) a task group.
    """
    loop = asyncio_loop()
    if loop is None:
        await _run_beside_in_task_group(main, beside)
        return
    failure: list[BaseException] = []
    with anyio.CancelScope() as scope:

        async def side() -> None:
            try:
                await beside()
            except Exception as exc:
                failure.append(exc)
            scope.cancel()  # returned or failed: main() is done too

        task = loop.create_task(side())
        try:
            await main()
        finally:
            if not task.done():
                task.cancel()
                # Waited for, as a task group would: beside() may be changing the
                # subscription (WebSocket commands), which the caller closes next.
                with anyio.CancelScope(shield=True):
                    await asyncio.wait((task,))
    if failure:
        exc = failure.pop()
        try:
            raise exc
        finally:
            del exc  # its traceback holds side()'s frame, which holds the list: no cycle


async def _run_beside_in_task_group(
    main: Callable[[], Awaitable[object]], beside: Callable[[], Awaitable[object]]
) -> None:
    try:
        async with anyio.create_task_group() as tg:

            async def side() -> None:
                await beside()
                tg.cancel_scope.cancel()

            tg.start_soon(side)
            await main()
            tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        exc: BaseException = group
        while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]
        raise exc from None


# -- bounded writes --------------------------------------------------------------------------


class SendGuard:
    """Watches one connection: what the client sends (its disconnect, WebSocket commands),
    the deadline of the write under way, and the keepalive (:meth:`run`).

    A cancel scope per write costs about as much as the write itself under fan-out, so the
    writer only stamps each write (``started = time.monotonic()`` before, ``0.0`` after).
    :meth:`watch` receives from the client, with a deadline only when something is due: the
    deadline of the write under way, the next keepalive, or one ``timeout`` from now while
    no write is under way. A write still blocked at its deadline ends the connection.
    Idle, a connection costs one wake per ``timeout`` or ping interval, and where the
    engine offers an :class:`~pushserver.engine.Inbox` no task of its own (:meth:`run`);
    elsewhere a second task (:meth:`watch`).
    """

    __slots__ = ("next_ping", "started", "timed_out", "timeout")

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout or math.inf
        #: ``time.monotonic()`` when the write under way began; 0.0 when none is.
        self.started = 0.0
        self.timed_out = False
        #: When the next keepalive is due (``math.inf``: none is, or one is being written).
        self.next_ping = math.inf

    # What watching decides, written once for both drivers (:meth:`watch`, a task that
    # receives with a timeout, and :class:`_Watcher`, callbacks on the engine's inbox and
    # timer): each looks at ``now`` and acts on these answers in this order.

    def expired(self, now: float) -> bool:
        """Whether the write under way has been blocked for ``timeout``: the connection
        ends (``timed_out`` is set)."""
        started = self.started
        if started and now - started >= self.timeout:
            self.timed_out = True
        return self.timed_out

    def ping_due(self, now: float) -> bool:
        """Whether the keepalive is due."""
        return now >= self.next_ping

    def pinged(self, now: float, interval: float) -> None:
        """Schedule the next keepalive ``interval`` after ``now`` (0: none at all)."""
        self.next_ping = now + interval if interval > 0 else math.inf

    def due(self, now: float) -> float:
        """When to look again: the deadline of the write under way, or one ``timeout`` from
        now while no write is, or the next keepalive if it comes first (``math.inf``:
        nothing is ever due, only what the client sends)."""
        return min((self.started or now) + self.timeout, self.next_ping)

    async def run(
        self,
        main: Callable[[], Awaitable[object]],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        handle: Callable[[MutableMapping[str, Any]], Awaitable[bool]],
        ping: Callable[[], Awaitable[None]] | None = None,
        interval: float = 0.0,
        inbox: Inbox | None = None,
    ) -> None:
        """Run ``main()`` (the writer) while watching the client as :meth:`watch` does, until
        either is done; an exception from either is raised here as it is.

        ``handle`` never sees ``http.request`` messages: a request's body is not read
        while it is answered by a stream or a wait.

        Given the engine's ``inbox`` (:func:`pushserver.engine.inbox_of`), the watching
        needs no task of its own: the inbox calls back when something arrives, the
        deadlines are the engine's one timer, and ``handle`` and ``ping`` run in a task
        that exists only while they do (about 4 KiB less per idle connection than a second
        task with its timeout and cancel scope). Without one (trio, another ASGI server),
        :meth:`watch` runs beside ``main()`` in a second task.
        """
        if inbox is None:
            await run_beside(main, partial(self.watch, receive, handle, ping, interval))
            return
        watcher = _Watcher(self, inbox, handle, ping, interval)
        # The watcher keeps what it needs of them; this frame, held as long as the
        # connection is, keeps no bound method of its own (64 bytes each).
        del handle, ping
        try:
            writer = main()
            # The writer's coroutine alone is held while it runs, not also what made it (a
            # bound method: 64 bytes per held connection).
            del main
            await writer
        except asyncio.CancelledError:
            if not watcher.cancelled_main or watcher.task.uncancel() > 0:
                raise
        finally:
            await watcher.stop()
        failure, watcher.failure = watcher.failure, None
        if failure is not None:
            try:
                raise failure
            finally:
                # Its traceback holds the side task's frame, which holds the watcher: no
                # cycle may outlive the connection (the collector rarely runs here).
                del failure

    async def watch(
        self,
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        handle: Callable[[MutableMapping[str, Any]], Awaitable[bool]],
        ping: Callable[[], Awaitable[None]] | None = None,
        interval: float = 0.0,
    ) -> None:
        """Hand each received message to ``handle`` until it returns True (the client went
        away) or a write times out (``timed_out`` is set); ``ping()`` every ``interval``.

        ``handle`` and ``ping`` run in this task, so their own writes must be bounded by a
        cancel scope: this task cannot watch itself.
        """
        clock = time.monotonic
        self.pinged(clock(), interval if ping is not None else 0.0)
        on_asyncio = asyncio_loop() is not None
        while True:
            now = clock()
            if self.expired(now):
                return
            if self.ping_due(now):
                await ping()  # type: ignore[misc]
                self.pinged(clock(), interval)
                continue
            due = self.due(now)
            message: MutableMapping[str, Any] | None = None
            # receive() is cancel-safe: a message arriving at the deadline stays queued.
            if due == math.inf:
                message = await receive()
            elif on_asyncio:
                # asyncio's own timeout: an idle connection waits here for as long as it
                # lasts, and this holds about 0.9 KiB where an anyio cancel scope (its
                # sets of tasks and child scopes, and the timer) holds about 1.5 KiB.
                try:
                    async with asyncio.timeout(due - now):
                        message = await receive()
                except TimeoutError:
                    continue
            else:
                with anyio.move_on_after(due - now):
                    message = await receive()
                if message is None:
                    continue
            if message["type"] != "http.request" and await handle(message):
                return


def _unbound(function: Callable[..., Any] | None) -> tuple[Any, object | None]:
    """A bound method as its function and its object; anything else as it is, and None."""
    if type(function) is MethodType:
        return function.__func__, function.__self__
    return function, None


class _Watcher:
    """:meth:`SendGuard.run`'s watching without a task of its own: a listener on the
    request's :class:`~pushserver.engine.Inbox`, an entry on the engine's shared timer for
    the write deadline and the keepalive, and a task only while ``handle`` or ``ping`` runs.

    It decides what :meth:`SendGuard.watch` decides, through the same methods of the guard
    (``expired``, ``ping_due``, ``due``), at the same moments: the connection ends when
    ``handle`` returns True, when either raises, or when a write has been under way for
    ``timeout``; it then cancels the writer (``main``)."""

    __slots__ = (
        "cancelled_main",
        "done",
        "entry",
        "failure",
        "guard",
        "handle",
        "handler",
        "interval",
        "loop",
        "ping",
        "ping_due",
        "pinger",
        "queue",
        "side",
        "task",
    )

    def __init__(
        self,
        guard: SendGuard,
        queue: Inbox,
        handle: Callable[[MutableMapping[str, Any]], Awaitable[bool]],
        ping: Callable[[], Awaitable[None]] | None,
        interval: float,
    ) -> None:
        self.guard = guard
        self.queue = queue
        # A bound method is kept as its function and object: the function is its class's,
        # the object lives anyway, and the method would be an object of its own (64 bytes
        # for each, held by every idle connection).
        self.handle, self.handler = _unbound(handle)
        self.ping, self.pinger = _unbound(ping)
        self.interval = interval
        self.loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self.task = task
        self.side: asyncio.Task[None] | None = None
        #: Its entry on the engine's shared timer, while it has a deadline.
        self.entry: Any = None
        self.failure: Exception | None = None
        self.cancelled_main = False
        self.done = False
        self.ping_due = False
        guard.pinged(time.monotonic(), interval if ping is not None else 0.0)
        queue.listener = self  # called as kick(), without a bound method of its own
        self.kick()
        self.schedule()

    def schedule(self, now: float | None = None) -> None:
        """Set the deadline for what is due next (as :meth:`SendGuard.watch` computes it)."""
        if self.done:
            return
        if now is None:
            now = time.monotonic()
        self.entry = self.queue.deadlines.move(self.entry, self.guard.due(now), self)

    def expire(self, now: float) -> None:
        """Called by the shared timer; ``now`` includes its slack."""
        if self.done:
            return
        guard = self.guard
        if guard.expired(now):
            self.end()
            return
        if guard.ping_due(now):
            guard.next_ping = math.inf  # until this ping is written
            self.ping_due = True
            self.kick()
        self.schedule(now)

    def received(self) -> bool:
        """Whether the client sent something for ``handle``. The request's body (a GET's
        one empty ``http.request``, queued before the app runs), which no ``handle`` reads,
        is taken off here: no task is started for it."""
        queue = self.queue
        queue.drop_leading("http.request")
        return queue.qsize() > 0

    def kick(self) -> None:
        if (self.received() or self.ping_due) and self.side is None and not self.done:
            self.side = self.loop.create_task(self.work())

    __call__ = kick

    async def work(self) -> None:
        """Handle what the client sent, then a due ping, until there is nothing to do."""
        queue = self.queue
        try:
            while not self.done:
                if self.received():
                    message = queue.get_nowait()
                    handler = self.handler
                    handled = (
                        self.handle(message) if handler is None else self.handle(handler, message)
                    )
                    if await handled:
                        self.end()
                        return
                elif self.ping_due:
                    self.ping_due = False
                    pinger = self.pinger
                    await (self.ping() if pinger is None else self.ping(pinger))
                    self.guard.pinged(time.monotonic(), self.interval)
                    self.schedule()
                else:
                    return
        except Exception as exc:
            self.failure = exc
            self.end()
        finally:
            self.side = None

    def end(self) -> None:
        """The connection is over: the writer is cancelled (it is waiting, since this runs
        from a callback or from the side task)."""
        if self.done:
            return
        self.done = True
        self.queue.deadlines.cancel(self.entry)
        self.cancelled_main = True
        self.task.cancel()

    async def stop(self) -> None:
        self.done = True
        self.queue.deadlines.cancel(self.entry)  # the timer holds nothing of it from now on
        self.entry = None
        self.queue.listener = None
        side = self.side
        if side is not None and not side.done():
            side.cancel()
            # Waited for, as run_beside does: handle() may be changing the subscription
            # (WebSocket commands), which the caller closes next.
            with anyio.CancelScope(shield=True):
                await asyncio.wait((side,))


# -- what a stream yields -------------------------------------------------------------------

#: A message to deliver on ``channel_id``: the hub's own :class:`Delivery`, passed through
#: as it is (no copy per subscriber on the hot path).
Item = Delivery


class Writer(Protocol):
    """What :meth:`Stream.batch` lends the fan-out: a transport's writer of live messages."""

    def write_now(self, item: Item) -> bool:
        """Write ``item`` at once, as the transport would (True), or decline (False)."""


@dataclass(frozen=True, slots=True)
class Gap:
    """Messages on ``channel_id`` after ``after`` left the buffer before they were sent.

    ``next`` is the oldest message still retained (sent right after), None if none is.
    """

    channel_id: str
    after: MessageId
    next: MessageId | None

    def json(self) -> str:
        return json.dumps(
            {
                "type": "gap",
                "channel": self.channel_id,
                "after": str(self.after),
                "next": str(self.next) if self.next is not None else None,
            },
            separators=(",", ":"),
        )


@dataclass(frozen=True, slots=True)
class Deleted:
    """``channel_id`` was deleted; the stream no longer includes it."""

    channel_id: str

    def json(self) -> str:
        return json.dumps({"type": "deleted", "channel": self.channel_id}, separators=(",", ":"))


StreamEvent = Item | Gap | Deleted | Closing


class _Resync:
    """Queued to wake the stream when channels were added (see :meth:`Stream.resync`)."""


_RESYNC = _Resync()

#: Most events one catch-up step hands over: a subscriber far behind still gets its
#: backlog in bounded writes, each under the send timeout.
CATCH_UP_BATCH = 64


class Stream:
    """A streaming subscriber's positions, and the ordered events it is owed."""

    __slots__ = (
        "_gap_told",
        "_heads",
        "_resync",
        "_resync_queued",
        "_write_now",
        "hub",
        "positions",
        "subscription",
    )

    def __init__(
        self, hub: Hub, subscription: Subscription, positions: dict[str, MessageId]
    ) -> None:
        self.hub = hub
        self.subscription = subscription
        #: channel -> id of the last message delivered (URL order; WebSocket adds at the end).
        self.positions = positions
        self._gap_told: dict[str, MessageId] | None = None
        #: channel -> next buffered message, while catching up from the buffer (None
        #: otherwise: no empty dict held by an idle stream).
        self._heads: dict[str, Message] | None = None
        self._resync = True  # the first pass reads the buffer
        self._resync_queued = False
        #: The transport's writer, while :meth:`batch` waits with it.
        self._write_now: Writer | None = None

    def resync(self) -> None:
        """Read the buffer again (a channel was added with its own position)."""
        self._resync = True
        if not self._resync_queued:  # at most one marker queued: the queue stays bounded
            self._resync_queued = True
            self.subscription.offer(_RESYNC)  # type: ignore[arg-type]

    async def add(self, channel_id: str, position: MessageId) -> None:
        """Stream one more channel from ``position`` (WebSocket ``subscribe``)."""
        self.positions[channel_id] = position
        # Its buffer is read before any live message of it goes out: none is written at
        # once meanwhile (deliver_now), though the hub delivers it from here on.
        self._resync = True
        await self.hub.add_channel(self.subscription, channel_id)
        self.resync()

    async def remove(self, channel_id: str) -> None:
        """Stop streaming a channel; what is queued for it is dropped."""
        if channel_id in self.positions:
            del self.positions[channel_id]
            if self._heads:
                self._heads.pop(channel_id, None)
            await self.hub.remove_channel(self.subscription, channel_id)

    async def batch(self, writer: Writer | None = None) -> list[StreamEvent]:
        """The events owed now, in order, waiting until there is at least one.

        A :class:`Closing` ends the list and the stream. Live deliveries are drained from
        the subscription's queue in one pass (a transport writes them as one batch);
        catching up from the buffer hands over at most :data:`CATCH_UP_BATCH` at a time.

        With a ``writer``, while it waits with nothing owed (caught up, nothing queued),
        a live message newer than its channel's position is offered to
        ``writer.write_now(item)`` from the hub's fan-out; True means it was written, and
        the position moves on. It must never wait, and write exactly what the transport
        writes for that item. (An object, not its bound method: an idle stream would hold
        that 64-byte object for as long as it waits; the stream is lent to the
        subscription as itself, :meth:`__call__`, for the same reason.)
        """
        subscription = self.subscription
        while True:
            if self._heads:
                # Before anything queued: live messages wait until the buffer is merged,
                # and are then skipped by id where the buffer already supplied them.
                out = await self._merge()
            elif subscription.overflowed:
                subscription.overflowed = False
                self.hub.metrics.catch_ups += 1
                logger.info(
                    "subscriber on %s fell %d messages behind: catching up from the buffer",
                    ",".join(self.positions) or "-",
                    subscription.maxlen,
                )
                # What is queued now all came before the first drop, in order: it goes out
                # first, then the buffer supplies the rest.
                self._resync = True
                out = await self._drain()
            elif self._resync:
                # Cleared before reading, so a channel added during the read is read next.
                self._resync = False
                out = await self._start_catch_up()
            elif subscription.queue:
                out = await self._drain()
            else:
                # Nothing queued, no overflow: what Subscription.wait() would wait for,
                # awaited here without its frame (this wait is what an idle stream holds).
                # The writer is held only while waiting: the subscription and the stream
                # refer to each other meanwhile, and to nothing of each other after.
                if writer is not None:
                    self._write_now = writer
                    subscription.direct = self
                try:
                    await subscription.arm()
                finally:
                    subscription.disarm()
                    subscription.direct = None
                    self._write_now = None
                continue
            if out:
                return out
            del out  # empty: not held by the wait that follows

    def deliver_now(self, item: Item) -> bool:
        """Write a live message through the transport's writer, or decline (False): the
        hub then queues it. Called by the fan-out, while :meth:`batch` waits."""
        channel_id = item.channel_id
        positions = self.positions
        position = positions.get(channel_id)
        message_id = item.message.id
        writer = self._write_now
        # Anything but the next live message of a channel it streams goes the usual way
        # (an id the buffer already supplied, a channel dropped meanwhile, a channel added
        # whose buffer is still to be read).
        if writer is None or position is None or message_id <= position or self._resync:
            return False
        try:
            if not writer.write_now(item):
                return False
        except Exception:
            # Never into the fan-out loop: the queued path sends it and fails as it would.
            logger.exception("writing a message to a subscriber at once failed")
            return False
        positions[channel_id] = message_id
        self.hub.delivered_directly += 1
        return True

    #: What the subscription calls (:attr:`pushserver.hub.Subscription.direct`): the
    #: stream itself, lent while it waits, not a bound method made for the wait.
    __call__ = deliver_now

    async def _drain(self) -> list[StreamEvent]:
        """Everything queued, as stream events; the one-channel message path is inline."""
        queue = self.subscription.take()
        positions = self.positions
        out: list[StreamEvent] = []
        for event in queue:
            if type(event) is Delivery:
                channel_id = event.channel_id
                position = positions.get(channel_id)
                message_id = event.message.id
                # Older ids were already sent from the buffer; unknown channels were dropped.
                if position is not None and message_id > position:
                    positions[channel_id] = message_id
                    out.append(event)
                continue
            item = await self._accept(event)
            if item is not None:
                out.append(item)
                if type(item) is Closing:
                    break
        return out

    async def _accept(self, event: object) -> StreamEvent | None:
        """What a queued hub event other than a delivery means (None: nothing to send)."""
        if isinstance(event, Deletion):
            if event.channel_id in self.positions:
                return await self._deleted(event.channel_id)
        elif isinstance(event, Closing):
            return event
        elif event is _RESYNC:
            self._resync_queued = False
        return None

    async def _deleted(self, channel_id: str) -> Deleted:
        del self.positions[channel_id]
        if self._heads:
            self._heads.pop(channel_id, None)
        await self.hub.remove_channel(self.subscription, channel_id)
        return Deleted(channel_id)

    async def _read(self, channel_id: str, after: MessageId) -> tuple[Message | None, Gap | None]:
        read = await self.hub.read_after(channel_id, after)
        gap = None
        if read.gap:
            told = self._gap_told
            if told is None:
                told = self._gap_told = {}
            if told.get(channel_id) != after:
                # Told once per position: an empty buffer would report the same gap again.
                told[channel_id] = after
                gap = Gap(channel_id, after, read.message.id if read.message else None)
                self.hub.metrics.gaps += 1
        return read.message, gap

    async def _start_catch_up(self) -> list[StreamEvent]:
        """Read each channel's first retained message after its position (gaps first)."""
        out: list[StreamEvent] = []
        heads = self._heads
        if heads is None:
            heads = self._heads = {}
        for channel_id, position in list(self.positions.items()):
            try:
                message, gap = await self._read(channel_id, position)
            except ChannelNotFound:
                out.append(await self._deleted(channel_id))
                continue
            if gap is not None:
                out.append(gap)
            if message is not None:
                heads[channel_id] = message
        if not heads and self._heads is heads:
            self._heads = None
        return out

    async def _merge(self) -> list[StreamEvent]:
        """The next retained messages after the positions, oldest id first across channels."""
        positions = self.positions
        heads = self._heads
        out: list[StreamEvent] = []
        if heads is None:
            return out
        while heads and len(out) < CATCH_UP_BATCH:
            channel_id = min(heads, key=lambda c: heads[c].id)
            message = heads.pop(channel_id)
            position = positions.get(channel_id)
            if position is None or message.id <= position:
                continue  # unsubscribed meanwhile
            positions[channel_id] = message.id
            out.append(Item(channel_id, message))
            try:
                following, gap = await self._read(channel_id, message.id)
            except ChannelNotFound:
                continue  # its Deletion is queued and ends the channel
            if gap is not None:
                out.append(gap)
            if following is not None and channel_id in positions:
                heads[channel_id] = following
        if not heads and self._heads is heads:
            self._heads = None
        return out
