"""The memory backend: every channel in this process's memory.

Retention follows the original django-pushserver memory store: ``max_messages`` newest
messages are kept (0 = unlimited); a message older than ``message_timeout`` seconds
(0 = never) is dropped unless it is one of the ``min_messages`` newest. Trimming happens on
publish, on read and when the sweeper passes (below).

Bounds:

``channel_timeout`` (seconds, default 60, 0 = never)
    A channel with no retained message and no subscriber is removed once it has been so for
    this long: NHPM's ``push_channel_timeout``. With ``keep_publisher_channels`` (the
    default) it applies only to channels no publisher created or published to, the ones an
    anonymous ``create_on_get`` subscriber made; a channel a publisher made stays until it is
    deleted, as in the original.
``memory_limit`` (bytes, default 64 MiB, 0 = none) and ``max_channels`` (default 100,000,
0 = none)
    The store's budget: retained bodies (with their content type and event) plus a fixed
    estimate per message and per channel (:data:`MESSAGE_OVERHEAD`, :data:`CHANNEL_OVERHEAD`,
    measured with tracemalloc on CPython 3.13), and each remembered idempotency key
    (:data:`IDEMPOTENCY_KEY_OVERHEAD` plus its length). A publish or a channel creation that would
    pass either raises :class:`~pushserver.exceptions.StoreFull` and changes nothing: no
    accepted message is dropped to make room (``max_messages`` trimming aside, which a
    publish does anyway).

One sweeper task per store removes expired channels and messages: a heap of (due time,
channel) with at most one live entry per channel, popped :data:`SWEEP_BATCH` at a time with
a yield to other tasks in between, so its work per step is bounded and nothing runs per
channel while nothing is due.
"""

from __future__ import annotations

import heapq
import time
from bisect import bisect_right
from collections.abc import Mapping
from typing import Any

import anyio

from ..exceptions import ChannelNotFound, StoreFull
from ..message import ChannelInfo, Message, MessageId, now_seconds
from ..options import WHOLE, Collector, Option, is_number, is_whole
from .base import (
    CHANNEL_BOUND_OPTIONS,
    DEFAULT_CHANNEL_TIMEOUT,
    IDEMPOTENCY_WINDOW,
    RETENTION_OPTIONS,
    Backend,
    OpenResult,
    PublishResult,
    ReadResult,
)

#: Bytes a channel costs besides its id: its record, its slot in the store's dict, a
#: subscriber-less hub (measured: about 200 with a 13-character id; rounded up).
CHANNEL_OVERHEAD = 200
#: Bytes a retained message costs besides its body, content type and event (its record, id,
#: the list slot; measured: about 290).
MESSAGE_OVERHEAD = 300
#: Defaults, sized for a small machine (a 1 GiB VPS shared with Django): the budget is a
#: sixteenth of it, the channel cap what 100,000 browser tabs each on its own channel need.
DEFAULT_MEMORY_LIMIT = 64 * 1024 * 1024
DEFAULT_MAX_CHANNELS = 100_000
#: Heap entries the sweeper handles before it lets other tasks run.
SWEEP_BATCH = 500
_EMPTY: tuple[Message, ...] = ()


class _Channel:
    __slots__ = (
        "due",
        "evicted_upto",
        "idempotency",
        "idle_since",
        "last_id",
        "last_requested",
        "messages",
        "published",
        "size",
        "subscribers",
    )

    def __init__(self, now: float, published: bool) -> None:
        # A shared empty tuple until the first message: an idle channel holds no list.
        self.messages: list[Message] | tuple[Message, ...] = _EMPTY
        self.last_id: MessageId | None = None
        # Id of the newest message dropped from the buffer: readers behind it have a gap.
        self.evicted_upto: MessageId | None = None
        self.last_requested: float | None = None
        self.subscribers = 0
        #: A publisher created it or published to it (kept while empty, by default).
        self.published = published
        #: Since when it has been empty and without subscribers (as far as known).
        self.idle_since = now
        #: Bytes its retained messages and remembered idempotency keys count against
        #: memory_limit.
        self.size = 0
        #: When its sweeper entry is due (0: none in the heap).
        self.due = 0.0
        #: Idempotency key -> (forgotten at, the first publish's id, time and subscribers),
        #: oldest first. Not its message: a body trimmed from retention is not kept alive
        #: here, outside ``memory_limit``, for the window.
        self.idempotency: dict[str, tuple[float, MessageId, float, int]] | None = None


#: Keys remembered per channel at most: past it the oldest is forgotten early, so a
#: publisher sending a new key per message cannot make a channel grow without bound.
MAX_IDEMPOTENCY_KEYS = 10_000
#: Bytes a remembered idempotency key costs besides the key (its dict entry and the first
#: publish's id, time and subscribers; measured: about 230).
IDEMPOTENCY_KEY_OVERHEAD = 250


def _message_id(message: Message) -> MessageId:
    return message.id


def message_cost(message: Message) -> int:
    """Bytes a retained message counts against ``memory_limit``."""
    return _message_cost(message.body, message.content_type, message.event)


def _message_cost(body: bytes, content_type: str, event: str | None) -> int:
    """:func:`message_cost` of a message not made yet (a publish checks it first)."""
    return MESSAGE_OVERHEAD + len(body) + len(content_type) + len(event or "")


def idempotency_key_cost(key: str) -> int:
    """Bytes a remembered idempotency key counts against ``memory_limit``."""
    return IDEMPOTENCY_KEY_OVERHEAD + len(key)


def channel_cost(channel_id: str) -> int:
    """Bytes an empty channel counts against ``memory_limit``."""
    return CHANNEL_OVERHEAD + len(channel_id)


class MemoryBackend(Backend):
    """Channels in one process. Fast, and gone when the process exits."""

    name = "memory"
    option_table = (
        *RETENTION_OPTIONS,
        *CHANNEL_BOUND_OPTIONS,
        Option(
            "memory_limit",
            DEFAULT_MEMORY_LIMIT,
            WHOLE,
            102,
            hint=f"Use e.g. {DEFAULT_MEMORY_LIMIT} (64 MiB); 0 means no limit.",
            doc="bytes the store may hold (0 = no limit)",
        ),
        Option(
            "max_channels",
            DEFAULT_MAX_CHANNELS,
            WHOLE,
            104,
            hint=f"Use e.g. {DEFAULT_MAX_CHANNELS}; 0 means no limit.",
            doc="channels the store may hold (0 = no limit)",
        ),
        IDEMPOTENCY_WINDOW,
    )

    @classmethod
    def check_combinations(cls, c: Collector, key: str, options: Mapping[str, Any]) -> None:
        """A warning when nothing bounds what the store retains (W100); a budget already
        reported as wrong gets no second message."""
        budgets = options["memory_limit"], options["max_channels"]
        retention = options["max_messages"], options["message_timeout"]
        if (
            all(is_whole(value) for value in budgets)
            and options["memory_limit"] == 0
            and all(is_number(value) and not value for value in retention)
        ):
            c.warning(
                key,
                "retention is unbounded: max_messages, message_timeout and memory_limit are 0, "
                "so the store grows for as long as messages come",
                "Set 'max_messages' (messages kept per channel), 'message_timeout' (seconds a "
                "message is kept) or 'memory_limit' (bytes the store may hold).",
                100,
            )

    @classmethod
    def check_message_size(
        cls, c: Collector, key: str, options: Mapping[str, Any], max_message_size: int
    ) -> None:
        """``memory_limit`` must hold one channel with one message of ``max_message_size``
        bytes, counted as the store counts them, with a long channel id and content type."""
        limit = options.get("memory_limit")
        needed = channel_cost("") + _message_cost(b"", "", None) + max_message_size + 1024
        if is_whole(limit) and 0 < limit < needed:
            c.error(
                f"{key}['memory_limit']",
                f"{limit} bytes cannot hold one message of max_message_size ({max_message_size} "
                "bytes)",
                f"Raise memory_limit to at least {needed}, or lower max_message_size.",
                103,
            )

    def __init__(
        self,
        *,
        min_messages: int = 0,
        max_messages: int = 0,
        message_timeout: float = 0,
        channel_timeout: float = DEFAULT_CHANNEL_TIMEOUT,
        keep_publisher_channels: bool = True,
        memory_limit: int = DEFAULT_MEMORY_LIMIT,
        max_channels: int = DEFAULT_MAX_CHANNELS,
        idempotency_window: float = 300,
        **options: Any,
    ) -> None:
        super().__init__(
            min_messages=min_messages,
            max_messages=max_messages,
            message_timeout=message_timeout,
            channel_timeout=channel_timeout,
            keep_publisher_channels=keep_publisher_channels,
            memory_limit=memory_limit,
            max_channels=max_channels,
            idempotency_window=idempotency_window,
            **options,
        )
        #: Seconds an ``Idempotency-Key`` is remembered (0: keys are ignored).
        self.idempotency_window = idempotency_window
        self.min_messages = min_messages
        self.max_messages = max_messages
        self.message_timeout = message_timeout
        self.channel_timeout = channel_timeout
        self.keep_publisher_channels = keep_publisher_channels
        self.memory_limit = memory_limit
        self.max_channels = max_channels
        self._channels: dict[str, _Channel] = {}
        #: Bytes counted against memory_limit now.
        self.memory_used = 0
        #: Creations and publishes refused, by the budget that refused them.
        self.refusals = {"memory_limit": 0, "max_channels": 0}
        #: Channels the sweeper removed (channel_timeout).
        self.expired_channels = 0
        self._due: list[tuple[float, str]] = []
        self._task_group: anyio.abc.TaskGroup | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def open(self) -> None:
        if self._task_group is not None or not (self.channel_timeout or self.message_timeout):
            return
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._sweep_forever)

    async def aclose(self) -> None:
        task_group, self._task_group = self._task_group, None
        if task_group is not None:
            task_group.cancel_scope.cancel()
            await task_group.__aexit__(None, None, None)

    def status(self) -> dict[str, Any]:
        return {
            "type": self.name,
            "ok": True,
            "channels": len(self._channels),
            "memory_used": self.memory_used,
            "memory_limit": self.memory_limit,
            "max_channels": self.max_channels,
            "refusals": dict(self.refusals),
            "expired_channels": self.expired_channels,
        }

    # -- retention and budget ---------------------------------------------------------------

    def _trim(self, channel: _Channel, now: float) -> None:
        messages = channel.messages
        drop = 0
        if self.max_messages and len(messages) > self.max_messages:
            drop = len(messages) - self.max_messages
        if self.message_timeout:
            keep_at_least = self.min_messages
            deadline = now - self.message_timeout
            while drop < len(messages) - keep_at_least and messages[drop].published_at <= deadline:
                drop += 1
        if drop:
            channel.evicted_upto = messages[drop - 1].id
            freed = sum(map(message_cost, messages[:drop]))
            del messages[:drop]  # type: ignore[union-attr]  # non-empty: a list
            channel.size -= freed
            self.memory_used -= freed
            if not messages:
                channel.idle_since = now

    def _removable(self, channel: _Channel) -> bool:
        """Empty, unsubscribed, and of a kind channel_timeout applies to."""
        return (
            not channel.messages
            and not channel.subscribers
            and bool(self.channel_timeout)
            and not (channel.published and self.keep_publisher_channels)
        )

    def _schedule(self, channel_id: str, channel: _Channel, at: float) -> None:
        if channel.due and channel.due <= at:
            return  # an earlier entry is in the heap: it reschedules when it is due
        channel.due = at
        heapq.heappush(self._due, (at, channel_id))

    def _next_due(self, channel_id: str, channel: _Channel) -> None:
        """Schedule the channel's next look: its oldest expiring message, or its removal."""
        messages = channel.messages
        if messages and self.message_timeout and len(messages) > self.min_messages:
            self._schedule(channel_id, channel, messages[0].published_at + self.message_timeout)
        elif self._removable(channel):
            self._schedule(channel_id, channel, channel.idle_since + self.channel_timeout)

    def sweep(self, now: float, limit: int = SWEEP_BATCH) -> bool:
        """Handle up to ``limit`` due entries; True when more are due."""
        due = self._due
        channels = self._channels
        for _ in range(limit):
            if not due or due[0][0] > now:
                return False
            at, channel_id = heapq.heappop(due)
            channel = channels.get(channel_id)
            if channel is None or channel.due != at:
                continue  # deleted, or rescheduled earlier meanwhile
            channel.due = 0.0
            self._trim(channel, now)
            if self._removable(channel) and now - channel.idle_since >= self.channel_timeout:
                self._remove(channel_id, channel)
                self.expired_channels += 1
            else:
                self._next_due(channel_id, channel)
        return bool(due) and due[0][0] <= now

    async def _sweep_forever(self) -> None:
        timeouts = [t for t in (self.channel_timeout, self.message_timeout) if t]
        interval = min(1.0, max(0.05, min(timeouts) / 4))
        while True:
            await anyio.sleep(interval)
            while self.sweep(time.time()):
                await anyio.sleep(0)  # a long backlog: let the other clients be served

    def _check_budget(self, adding: int, new_channel: bool) -> None:
        if new_channel and self.max_channels and len(self._channels) >= self.max_channels:
            self.refusals["max_channels"] += 1
            raise StoreFull("max_channels", f"it holds {self.max_channels} channels")
        if self.memory_limit and self.memory_used + adding > self.memory_limit:
            self.refusals["memory_limit"] += 1
            raise StoreFull(
                "memory_limit",
                f"{adding} more bytes would pass {self.memory_limit} ({self.memory_used} in use)",
            )

    def _add_channel(self, channel_id: str, now: float, published: bool) -> _Channel:
        channel = self._channels[channel_id] = _Channel(now, published)
        self.memory_used += channel_cost(channel_id)
        return channel

    def _remove(self, channel_id: str, channel: _Channel) -> None:
        del self._channels[channel_id]
        self.memory_used -= channel.size + channel_cost(channel_id)
        self.listener.on_delete(channel_id)

    def _get(self, channel_id: str) -> _Channel:
        try:
            return self._channels[channel_id]
        except KeyError:
            raise ChannelNotFound(channel_id) from None

    # -- channels ---------------------------------------------------------------------------

    async def create(self, channel_id: str, *, publisher: bool = True) -> bool:
        """Create the channel if missing. ``publisher=False``: a subscriber made it
        (``create_on_get``), so ``channel_timeout`` applies to it while it is empty."""
        channel = self._channels.get(channel_id)
        if channel is not None:
            if publisher:
                channel.published = True
            return False
        self._check_budget(channel_cost(channel_id), True)
        channel = self._add_channel(channel_id, time.time(), publisher)
        self._next_due(channel_id, channel)
        return True

    async def exists(self, channel_id: str) -> bool:
        return channel_id in self._channels

    async def open_channel(
        self, channel_id: str, *, create: bool, after: MessageId | None = None
    ) -> OpenResult:
        created = False
        if channel_id not in self._channels:
            if not create:
                raise ChannelNotFound(channel_id)
            # Through create(), which a subclass may extend (tests/project/old_store.py).
            created = await self.create(channel_id, publisher=False)
        channel = self._get(channel_id)
        now = channel.last_requested = channel.idle_since = time.time()
        return OpenResult(created, None if after is None else self._read(channel, after, now))

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
        channel = self._channels.get(channel_id)
        now = time.time()
        if channel is not None and idempotency_key is not None:
            first = self._seen(channel, idempotency_key, now)
            if first is not None:
                # As the redis store answers: the first publish's id, time and subscribers.
                _, first_id, first_at, first_subscribers = first
                message = Message(first_id, body, content_type, event, first_at)
                self._trim(channel, now)  # described as info() would: retention applied
                info = self._describe(channel_id, channel)
                return PublishResult(message, first_subscribers, replayed=True, info=info)
        cost = _message_cost(body, content_type, event)
        remember = idempotency_key is not None and self.idempotency_window > 0
        key_cost = idempotency_key_cost(idempotency_key) if remember else 0  # type: ignore[arg-type]
        if channel is None:
            if not create:
                raise ChannelNotFound(channel_id)
            self._check_budget(cost + key_cost + channel_cost(channel_id), True)
            channel = self._add_channel(channel_id, now, True)
        else:
            # Make room as retention would right after the append, then check: a refused
            # publish drops nothing retention would have kept.
            self._trim(channel, now)
            freed = 0
            if self.max_messages and len(channel.messages) >= self.max_messages:
                over = len(channel.messages) + 1 - self.max_messages
                freed = sum(map(message_cost, channel.messages[:over]))
            self._check_budget(cost + key_cost - freed, False)
            channel.published = True
        seconds = int(now)
        message_id = channel.last_id.next_for(seconds) if channel.last_id else MessageId(seconds, 0)
        message = Message(message_id, body, content_type, event, now)
        if not channel.messages:
            channel.messages = []
        channel.messages.append(message)  # type: ignore[union-attr]
        channel.size += cost
        self.memory_used += cost
        channel.last_id = message_id
        self._trim(channel, now)
        if self.message_timeout:
            self._next_due(channel_id, channel)
        subscribers = channel.subscribers
        result = PublishResult(message, subscribers, info=self._describe(channel_id, channel))
        if remember:
            if channel.idempotency is None:
                channel.idempotency = {}
            channel.idempotency[idempotency_key] = (  # type: ignore[index]
                now + self.idempotency_window,
                message_id,
                now,
                subscribers,
            )
            # Counted in the channel's size, so removing the channel releases it too.
            channel.size += key_cost
            self.memory_used += key_cost
            if len(channel.idempotency) > MAX_IDEMPOTENCY_KEYS:
                self._forget(channel, next(iter(channel.idempotency)))
        self.listener.on_message(channel_id, message)
        return result

    def _forget(self, channel: _Channel, key: str) -> None:
        del channel.idempotency[key]  # type: ignore[union-attr]
        channel.size -= idempotency_key_cost(key)
        self.memory_used -= idempotency_key_cost(key)

    def _seen(
        self, channel: _Channel, key: str, now: float
    ) -> tuple[float, MessageId, float, int] | None:
        """The first publish for ``key`` if it is still remembered; forgets expired keys."""
        keys = channel.idempotency
        if not keys:
            return None
        # Oldest first, all with one window: expired keys are at the front.
        while keys:
            oldest = next(iter(keys))
            if keys[oldest][0] > now:
                break
            self._forget(channel, oldest)
        return keys.get(key)

    async def read_after(self, channel_id: str, after: MessageId) -> ReadResult:
        return self._read(self._get(channel_id), after, time.time())

    def _read(self, channel: _Channel, after: MessageId, now: float) -> ReadResult:
        self._trim(channel, now)
        messages = channel.messages
        # The common case, a client that has read everything, costs one comparison.
        if not messages or messages[-1].id <= after:
            return ReadResult(None, self._gap(channel, after))
        index = bisect_right(messages, after, key=_message_id)
        return ReadResult(messages[index], self._gap(channel, after))

    @staticmethod
    def _gap(channel: _Channel, after: MessageId) -> bool:
        # A position in second 0 means "from the beginning": nothing was missed.
        return channel.evicted_upto is not None and after.time > 0 and after < channel.evicted_upto

    async def info(self, channel_id: str) -> ChannelInfo | None:
        channel = self._channels.get(channel_id)
        if channel is None:
            return None
        self._trim(channel, time.time())
        return self._describe(channel_id, channel)

    @staticmethod
    def _describe(channel_id: str, channel: _Channel) -> ChannelInfo:
        return ChannelInfo(
            channel_id=channel_id,
            messages=len(channel.messages),
            last_requested=channel.last_requested,
            subscribers=channel.subscribers,
            last_message_id=channel.last_id,
        )

    async def delete(self, channel_id: str) -> bool:
        channel = self._channels.get(channel_id)
        if channel is None:
            return False
        self._remove(channel_id, channel)
        return True

    async def touch(self, channel_id: str) -> None:
        channel = self._channels.get(channel_id)
        if channel is not None:
            channel.last_requested = channel.idle_since = time.time()

    async def subscribers_changed(self, channel_id: str, delta: int) -> None:
        channel = self._channels.get(channel_id)
        if channel is not None:
            channel.subscribers = max(0, channel.subscribers + delta)
            if not channel.subscribers:
                channel.idle_since = time.time()
                self._next_due(channel_id, channel)

    # For tests and introspection.
    def channel_ids(self) -> list[str]:
        return list(self._channels)


__all__ = ["MemoryBackend", "now_seconds"]
