"""The memory backend: every channel in this process's memory.

Retention follows the original django-pushserver memory store: ``max_messages`` newest
messages are kept (0 = unlimited); a message older than ``message_timeout`` seconds
(0 = never) is dropped unless it is one of the ``min_messages`` newest. Trimming happens on
publish and on read, so an idle channel costs nothing.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from typing import Any

from ..exceptions import ChannelNotFound
from ..message import ChannelInfo, Message, MessageId, now_seconds
from .base import Backend, PublishResult, ReadResult


class _Channel:
    __slots__ = (
        "evicted_upto",
        "idempotency",
        "last_id",
        "last_requested",
        "messages",
        "subscribers",
    )

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.last_id: MessageId | None = None
        # Id of the newest message dropped from the buffer: readers behind it have a gap.
        self.evicted_upto: MessageId | None = None
        self.last_requested: float | None = None
        self.subscribers = 0
        #: Idempotency key -> (forgotten at, the first publish's result), oldest first.
        self.idempotency: dict[str, tuple[float, PublishResult]] | None = None


#: Keys remembered per channel at most: past it the oldest is forgotten early, so a
#: publisher sending a new key per message cannot make a channel grow without bound.
MAX_IDEMPOTENCY_KEYS = 10_000


def _message_id(message: Message) -> MessageId:
    return message.id


class MemoryBackend(Backend):
    """Channels in one process. Fast, and gone when the process exits."""

    name = "memory"

    def __init__(
        self,
        *,
        min_messages: int = 0,
        max_messages: int = 0,
        message_timeout: float = 0,
        idempotency_window: float = 300,
        **options: Any,
    ) -> None:
        super().__init__(
            min_messages=min_messages,
            max_messages=max_messages,
            message_timeout=message_timeout,
            idempotency_window=idempotency_window,
            **options,
        )
        #: Seconds an ``Idempotency-Key`` is remembered (0: keys are ignored).
        self.idempotency_window = idempotency_window
        self.min_messages = min_messages
        self.max_messages = max_messages
        self.message_timeout = message_timeout
        self._channels: dict[str, _Channel] = {}

    def status(self) -> dict[str, Any]:
        return {"type": self.name, "ok": True, "channels": len(self._channels)}

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
            del messages[:drop]

    def _get(self, channel_id: str) -> _Channel:
        try:
            return self._channels[channel_id]
        except KeyError:
            raise ChannelNotFound(channel_id) from None

    async def create(self, channel_id: str) -> bool:
        if channel_id in self._channels:
            return False
        self._channels[channel_id] = _Channel()
        return True

    async def exists(self, channel_id: str) -> bool:
        return channel_id in self._channels

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
                return first
        if channel is None:
            if not create:
                raise ChannelNotFound(channel_id)
            channel = self._channels[channel_id] = _Channel()
        seconds = int(now)
        message_id = channel.last_id.next_for(seconds) if channel.last_id else MessageId(seconds, 0)
        message = Message(message_id, body, content_type, event, now)
        channel.messages.append(message)
        channel.last_id = message_id
        self._trim(channel, now)
        subscribers = channel.subscribers
        result = PublishResult(message, subscribers)
        if idempotency_key is not None and self.idempotency_window > 0:
            if channel.idempotency is None:
                channel.idempotency = {}
            channel.idempotency[idempotency_key] = (
                now + self.idempotency_window,
                PublishResult(message, subscribers, replayed=True),
            )
            if len(channel.idempotency) > MAX_IDEMPOTENCY_KEYS:
                del channel.idempotency[next(iter(channel.idempotency))]
        self.listener.on_message(channel_id, message)
        return result

    @staticmethod
    def _seen(channel: _Channel, key: str, now: float) -> PublishResult | None:
        """The first result for ``key`` if it is still remembered; forgets expired keys."""
        keys = channel.idempotency
        if not keys:
            return None
        # Oldest first, all with one window: expired keys are at the front.
        while keys:
            oldest = next(iter(keys))
            if keys[oldest][0] > now:
                break
            del keys[oldest]
        first = keys.get(key)
        return first[1] if first is not None else None

    async def read_after(self, channel_id: str, after: MessageId) -> ReadResult:
        channel = self._get(channel_id)
        self._trim(channel, time.time())
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
        return ChannelInfo(
            channel_id=channel_id,
            messages=len(channel.messages),
            last_requested=channel.last_requested,
            subscribers=channel.subscribers,
            last_message_id=channel.last_id,
        )

    async def delete(self, channel_id: str) -> bool:
        if self._channels.pop(channel_id, None) is None:
            return False
        self.listener.on_delete(channel_id)
        return True

    async def touch(self, channel_id: str) -> None:
        channel = self._channels.get(channel_id)
        if channel is not None:
            channel.last_requested = time.time()

    async def subscribers_changed(self, channel_id: str, delta: int) -> None:
        channel = self._channels.get(channel_id)
        if channel is not None:
            channel.subscribers = max(0, channel.subscribers + delta)

    # For tests and introspection.
    def channel_ids(self) -> list[str]:
        return list(self._channels)


__all__ = ["MemoryBackend", "now_seconds"]
