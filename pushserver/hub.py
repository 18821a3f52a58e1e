"""Fan-out, written once for every backend and every transport.

A :class:`Hub` sits on one backend. Transports open a :class:`Subscription` on one or more
channels; the backend reports each published message to the hub (:meth:`Hub.on_message`),
and the hub hands the same :class:`~pushserver.message.Message` object to every
subscription of that channel. Waiting costs no polling: a subscription sleeps on an event
until the hub offers it something.

A subscriber that is keeping up (waiting, nothing queued) may take a message without
waking: its transport lends the subscription a writer while it waits
(:attr:`Subscription.direct`), and :meth:`Subscription.offer` hands the message to it. The
writer writes it to the connection at once if the connection can take it without waiting
(:class:`pushserver.engine.SendNow`: the engine's own, or the server's ``send`` stepped
once, :mod:`pushserver.transports.eager`), and otherwise declines; the message is then queued as
any other, and the writer is taken back until the subscriber's task has drained the queue,
so messages go out in order. Fan-out then costs no task switch per subscriber.

Every subscription's queue is bounded. When it is full the hub drops the new item and
marks the subscription ``overflowed``; the transport then catches up from the backend's
buffer (where the messages still are) or tells the client about the gap. Nothing is lost
silently, and a slow consumer never holds up the others.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, cast

import anyio

from ._async import asyncio_loop
from .backends.base import Backend, OpenResult, PublishResult, ReadResult
from .exceptions import BackendUnavailable, StoreFull
from .message import ChannelInfo, Message, MessageId
from .metrics import Metrics


@dataclass(frozen=True, slots=True)
class Delivery:
    """A message on one of the subscription's channels."""

    channel_id: str
    message: Message
    kind: Literal["message"] = "message"


@dataclass(frozen=True, slots=True)
class Deletion:
    """The channel was deleted; the subscriber must be told (410, close code)."""

    channel_id: str
    kind: Literal["deleted"] = "deleted"


@dataclass(frozen=True, slots=True)
class Closing:
    """The server is shutting down; the subscriber should reconnect (elsewhere)."""

    kind: Literal["closing"] = "closing"


Event = Delivery | Deletion | Closing


class Wakeup(Protocol):
    """What a waiting subscription sleeps on: set once (``set_result``), awaited once.

    On asyncio this is a bare :class:`asyncio.Future` (about 100 bytes, one allocation);
    elsewhere :class:`_EventWakeup`, an :class:`anyio.Event` behind the same three methods.
    An idle subscriber always holds one, and fan-out makes one per subscriber per message,
    so the difference is memory per held connection and CPU per delivery: an anyio Event
    on asyncio is the Event, an :class:`asyncio.Event` and its 760-byte deque of waiters,
    and a future of its own when awaited.
    """

    def done(self) -> bool: ...

    def set_result(self, result: None, /) -> None: ...

    def __await__(self) -> Any: ...


class _EventWakeup:
    """:class:`Wakeup` on any anyio backend (trio): an :class:`anyio.Event`."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = anyio.Event()

    def done(self) -> bool:
        return self._event.is_set()

    def set_result(self, result: None, /) -> None:
        self._event.set()

    def __await__(self) -> Any:
        return self._event.wait().__await__()


def _wakeup_factory() -> Callable[[], Wakeup]:
    """How the running event loop makes a :class:`Wakeup` (called once per hub)."""
    loop = asyncio_loop()
    if loop is None:  # anyio's other backend, trio
        return _EventWakeup
    # Awaiting a bare future is what asyncio's own Event.wait() does; cancellation (anyio
    # cancel scopes cancel the task) cancels the future and raises in the waiter as usual.
    return loop.create_future


class Subscription:
    """A subscriber's bounded queue of events from one or more channels."""

    __slots__ = (
        "_hub",
        "_wakeup",
        "channels",
        "closed",
        "direct",
        "maxlen",
        "overflowed",
        "queue",
    )

    def __init__(self, hub: Hub, channels: Iterable[str], maxlen: int) -> None:
        self._hub = hub
        self.channels: list[str] = list(dict.fromkeys(channels))
        self.maxlen = maxlen
        #: Queued events, oldest first. A list, not a deque (an empty deque is 760 bytes),
        #: made by the first offer: an idle stream, which takes it whole (``take()``),
        #: holds none.
        self.queue: list[Event] | None = None
        self._wakeup: Wakeup | None = None
        self.overflowed = False
        self.closed = False
        #: Takes a delivery without queueing it (True: written, the subscriber's position
        #: moved on) or declines it (False). Lent by the subscriber's stream only while it
        #: waits with nothing queued; cleared by the first item queued.
        self.direct: Callable[[Delivery], bool] | None = None

    def offer(self, item: Event) -> bool:
        """Queue ``item``; return False (and mark overflowed) when the queue is full.

        A delivery the :attr:`direct` writer takes is not queued (and counts as queued)."""
        direct = self.direct
        if direct is not None:
            if type(item) is Delivery and direct(item):
                return True
            # Queued from here on, until the subscriber's task has taken it: no message
            # may overtake it.
            self.direct = None
        # Called once per subscriber per message: the common case is one length check.
        queue = self.queue
        if queue is None:
            queue = self.queue = []
        if len(queue) < self.maxlen or type(item) is not Delivery:
            queue.append(item)
            accepted = True
        else:
            accepted = False
            self.overflowed = True
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None  # one wake per wait: later offers find it cleared
            if not wakeup.done():  # a cancelled waiter's future is done until it clears it
                wakeup.set_result(None)
        return accepted

    def pending(self) -> int:
        return len(self.queue) if self.queue else 0

    def get_nowait(self) -> Event | None:
        return self.queue.pop(0) if self.queue else None

    def take(self) -> list[Event]:
        """Everything queued, oldest first; the queue starts again empty."""
        queue = self.queue
        self.queue = None
        return queue if queue is not None else []

    async def wait(self) -> None:
        """Return once something is queued or the subscription overflowed."""
        while not self.queue and not self.overflowed:
            try:
                await self.arm()
            finally:
                self.disarm()

    def arm(self) -> Wakeup:
        """The wakeup the next :meth:`offer` (or overflow) sets, for a caller that awaits it
        itself and clears ``_wakeup`` after, as :meth:`wait` does. A wait held by every idle
        stream (:meth:`pushserver.transports.streaming.Stream.batch`) awaits it directly:
        one coroutine frame fewer per connection (about 200 bytes)."""
        # One wakeup per wait, dropped once set (neither a future nor an anyio Event can be
        # reset).
        wakeup = self._wakeup = self._hub.new_wakeup()
        return wakeup

    def disarm(self) -> None:
        """After awaiting :meth:`arm`'s wakeup, however that ended."""
        self._wakeup = None

    async def get(self) -> Event | None:
        """The next event; None when woken by an overflow with nothing queued."""
        while not self.queue:
            if self.overflowed:
                return None
            await self.wait()
        return self.queue.pop(0)

    async def next_message_after(
        self, after: MessageId, *, timeout: float | None = None
    ) -> Event | None:
        """Wait for a message newer than ``after`` (or a deletion); None on timeout, or when
        woken by an overflow with nothing queued (the caller re-reads the buffer)."""
        if not timeout:  # no cancel scope when there is no deadline (every long poll)
            return await self.next_after(after)
        with anyio.move_on_after(timeout):
            return await self.next_after(after)
        return None

    async def next_after(self, after: MessageId) -> Event | None:
        """:meth:`next_message_after` without a deadline, in one coroutine: a held long poll
        keeps this frame alone while it waits, not a chain through :meth:`get` and
        :meth:`wait` (each held long poll made and kept four frames; a connect's CPU went
        to making them and to the cyclic collector's passes over them)."""
        while True:
            queue = self.queue
            if queue:
                event = queue.pop(0)
                if type(event) is not Delivery or event.message.id > after:
                    return event
            elif self.overflowed:
                return None
            else:
                try:
                    await self.arm()
                finally:
                    self.disarm()


class Hub:
    """Local fan-out over one backend, and the only door to it: transports, the publisher
    and ``send_update`` inside the server reach the store through the hub, one call per
    step (opening a channel, publishing), which a store can answer in one round trip."""

    def __init__(self, backend: Backend, *, queue_size: int = 64) -> None:
        self.backend = backend
        self.queue_size = queue_size
        #: Local subscriptions per channel: the subscription itself while it is the only one
        #: (most channels: a one-entry dict is 224 bytes per idle channel), a dict from the
        #: second on.
        self._subscriptions: dict[str, Subscription | dict[Subscription, None]] = {}
        self.published = 0
        self.delivered = 0
        self.overflows = 0
        #: Of ``delivered``, those a subscriber's writer took without queueing them
        #: (:attr:`Subscription.direct`), counted by the streams.
        self.delivered_directly = 0
        #: Counters of the status location (publishes, connections, slow consumers).
        self.metrics = Metrics()
        self.shutting_down = False
        #: Makes a subscription's :class:`Wakeup` on the running event loop (a subscriber
        #: makes one per wait). The first call picks the loop's factory and replaces this
        #: attribute with it; opening and closing the hub start over (another loop).
        self.new_wakeup: Callable[[], Wakeup] = self._first_wakeup
        backend.bind(self)

    async def __aenter__(self) -> Hub:
        self.new_wakeup = self._first_wakeup
        await self.backend.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.new_wakeup = self._first_wakeup
        await self.backend.aclose()

    def _first_wakeup(self) -> Wakeup:
        self.new_wakeup = _wakeup_factory()
        return self.new_wakeup()

    # -- Listener ---------------------------------------------------------------------------

    def on_message(self, channel_id: str, message: Message) -> int:
        subscriptions = self._subscriptions.get(channel_id)
        self.published += 1
        if subscriptions is None:
            return 0
        delivery = Delivery(channel_id, message)
        if type(subscriptions) is not dict:
            if cast(Subscription, subscriptions).offer(delivery):
                self.delivered += 1
                return 1
            self.overflows += 1
            return 0
        reached = 0
        for subscription in subscriptions:
            if subscription.offer(delivery):
                reached += 1
            else:
                self.overflows += 1
        self.delivered += reached
        return reached

    def on_delete(self, channel_id: str) -> None:
        subscriptions = self._subscriptions.get(channel_id)
        if subscriptions is not None:
            deletion = Deletion(channel_id)
            for subscription in _each(subscriptions):
                subscription.offer(deletion)

    def shutdown(self) -> None:
        """Tell every subscription the server is going away."""
        self.shutting_down = True
        closing = Closing()
        for subscriptions in self._subscriptions.values():
            for subscription in _each(subscriptions):
                subscription.offer(closing)

    # -- subscriptions ----------------------------------------------------------------------

    async def subscribe(
        self, channels: Iterable[str], *, maxlen: int | None = None
    ) -> Subscription:
        subscription = Subscription(self, channels, maxlen or self.queue_size)
        for channel_id in subscription.channels:
            if self._add(channel_id, subscription):
                await self.backend.listen(channel_id)
            await self.backend.subscribers_changed(channel_id, 1)
        if self.shutting_down:
            subscription.offer(Closing())
        return subscription

    async def unsubscribe(self, subscription: Subscription) -> None:
        if subscription.closed:
            return
        subscription.closed = True
        for channel_id in subscription.channels:
            await self._remove(subscription, channel_id)

    def _add(self, channel_id: str, subscription: Subscription) -> bool:
        """Count ``subscription`` on the channel; True when it is the first local one."""
        local = self._subscriptions.get(channel_id)
        if local is None:
            self._subscriptions[channel_id] = subscription
            return True
        if type(local) is dict:
            local[subscription] = None
        else:
            self._subscriptions[channel_id] = {cast(Subscription, local): None, subscription: None}
        return False

    async def _remove(self, subscription: Subscription, channel_id: str) -> None:
        local = self._subscriptions.get(channel_id)
        if local is None:
            return
        if type(local) is dict:
            if local.pop(subscription, 0) is not None:
                return  # not subscribed there
            if len(local) == 1:  # back to the one-subscriber form
                self._subscriptions[channel_id] = next(iter(local))
        else:
            if local is not subscription:
                return
            del self._subscriptions[channel_id]
            await self.backend.unlisten(channel_id)
        await self.backend.subscribers_changed(channel_id, -1)

    async def add_channel(self, subscription: Subscription, channel_id: str) -> None:
        """Subscribe an open subscription to one more channel (WebSocket commands)."""
        if channel_id in subscription.channels:
            return
        subscription.channels.append(channel_id)
        if self._add(channel_id, subscription):
            await self.backend.listen(channel_id)
        await self.backend.subscribers_changed(channel_id, 1)

    async def remove_channel(self, subscription: Subscription, channel_id: str) -> None:
        if channel_id not in subscription.channels:
            return
        subscription.channels.remove(channel_id)
        await self._remove(subscription, channel_id)

    async def unsubscribe_shielded(self, subscription: Subscription) -> None:
        """:meth:`unsubscribe`, shielded from cancellation: what a subscriber that holds
        its subscription without :meth:`subscription`'s context (no object of it, and no
        bound ``__aexit__``, kept for the connection's life) does on its way out."""
        with anyio.CancelScope(shield=True):
            await self.unsubscribe(subscription)

    def subscription(
        self, channels: Iterable[str], *, maxlen: int | None = None
    ) -> _SubscriptionContext:
        """``async with hub.subscription(channels) as subscription:`` subscribes, and
        unsubscribes on the way out, shielded from cancellation."""
        return _SubscriptionContext(self, channels, maxlen)

    def local_subscribers(self, channel_id: str) -> int:
        local = self._subscriptions.get(channel_id)
        if local is None:
            return 0
        return len(local) if type(local) is dict else 1

    def local_totals(self) -> tuple[int, int]:
        """Channels with local subscribers, and their subscriptions summed (status)."""
        subscriptions = self._subscriptions
        return len(subscriptions), sum(
            len(local) if type(local) is dict else 1 for local in subscriptions.values()
        )

    # -- the store: every call goes through here --------------------------------------------

    async def open_channel(
        self, channel_id: str, create: bool, *, after: MessageId | None = None
    ) -> OpenResult:
        """What a subscriber does before subscribing (one backend call: one round trip on
        Redis): create the channel if it does not exist and ``create`` (the location's
        ``create_on_get``), else raise :class:`~pushserver.exceptions.ChannelNotFound`;
        mark it requested now (the publisher's "last requested"); with ``after``, read the
        first retained message after that position (``result.read``). A channel made here is
        the subscriber's: the store's ``channel_timeout`` removes it while it stays empty.
        Raises :class:`StoreFull`, counted in ``metrics.subscribes_refused``, when the store
        has no room for it."""
        try:
            return await self.backend.open_channel(channel_id, create=create, after=after)
        except StoreFull:
            self.metrics.subscribes_refused += 1
            raise

    async def create(self, channel_id: str) -> bool:
        """A publisher creates the channel (PUT); True if it was created. Raises
        :class:`StoreFull`, counted in ``metrics.publishes_refused``."""
        try:
            return await self.backend.create(channel_id)
        except StoreFull:
            self.metrics.publishes_refused += 1
            raise

    async def publish(
        self,
        channel_id: str,
        body: bytes,
        content_type: str,
        *,
        event: str | None = None,
        create: bool = True,
        idempotency_key: str | None = None,
    ) -> PublishResult:
        # The key only when there is one: a backend of an older signature keeps working.
        keyed = {} if idempotency_key is None else {"idempotency_key": idempotency_key}
        try:
            result = await self.backend.publish(
                channel_id, body, content_type, event=event, create=create, **keyed
            )
        except StoreFull:
            self.metrics.publishes_refused += 1
            raise
        except BackendUnavailable:
            self.metrics.publish_errors += 1
            raise
        if not result.replayed:  # a replayed Idempotency-Key stored nothing
            self.metrics.published += 1
        return result

    async def read_after(self, channel_id: str, after: MessageId) -> ReadResult:
        return await self.backend.read_after(channel_id, after)

    async def info(self, channel_id: str) -> ChannelInfo | None:
        return await self.backend.info(channel_id)

    async def delete(self, channel_id: str) -> bool:
        return await self.backend.delete(channel_id)


def _each(local: Subscription | dict[Subscription, None]) -> Iterable[Subscription]:
    """The subscriptions of one channel, whichever form the hub keeps them in."""
    return local if type(local) is dict else (local,)  # type: ignore[return-value]


class _SubscriptionContext:
    """What :meth:`Hub.subscription` returns. A class, not ``@asynccontextmanager``: that
    keeps a suspended generator and its context-manager object (about 700 bytes) for as
    long as the subscriber stays connected; this is one small object."""

    __slots__ = ("_channels", "_hub", "_maxlen", "_subscription")

    def __init__(self, hub: Hub, channels: Iterable[str], maxlen: int | None) -> None:
        self._hub = hub
        self._channels = channels
        self._maxlen = maxlen
        self._subscription: Subscription | None = None

    async def __aenter__(self) -> Subscription:
        self._subscription = await self._hub.subscribe(self._channels, maxlen=self._maxlen)
        return self._subscription

    async def __aexit__(self, *exc_info: object) -> None:
        subscription = self._subscription
        if subscription is not None:
            await self._hub.unsubscribe_shielded(subscription)
