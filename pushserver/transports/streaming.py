"""What server-sent events and WebSockets share: channel lists, resume ids, catch-up.

A streaming subscriber holds one :class:`~pushserver.hub.Subscription` on one or more
channels and remembers, per channel, the id of the last message it delivered. Everything it
sends comes from :meth:`Stream.items`, which yields, in order, the messages newer than
those positions, with three guarantees:

* **Nothing lost, nothing repeated.** The subscription is opened first, then each channel
  is read from the backend's buffer after its position; live deliveries already covered by
  the buffer are skipped by comparing ids with the position.
* **Bounded memory.** The subscription's queue is bounded (``Hub.queue_size``). A subscriber
  that falls behind it is marked *overflowed*; its stream then catches up from the buffer
  again, where the messages still are.
* **Gaps are told.** When messages after a position have already left the buffer, a
  :class:`Gap` comes first, then the oldest retained message (nchan skips silently).

Multiplexing
    A subscriber URL names several channels separated by :data:`SEPARATOR` (``,``), at most
    :data:`MAX_CHANNELS`. The split happens on the raw path before percent-decoding, so a
    channel id containing a comma is written ``%2C``. Duplicates count once. Long-poll
    never splits: there the whole path segment is one channel id.

Resume ids
    One channel: the message id, ``<time>:<tag>``, the same position as long-poll's
    ``Last-Modified`` / ``Etag`` pair. Several channels: the compound id, one position per
    channel in URL order joined by ``,`` (``0:-1`` for "nothing yet"); the channel that
    produced the event is in brackets, as nchan marks it:
    ``1700000000:4,[1700000012:0],0:-1``. Brackets are ignored when resuming.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from dataclasses import dataclass

from ..exceptions import ChannelNotFound
from ..hub import Closing, Deletion, Delivery, Hub, Subscription
from ..message import ORIGIN, Message, MessageId
from ..protocol import decode_channel_id

logger = logging.getLogger("pushserver.transports")

SEPARATOR = ","
MAX_CHANNELS = 255
#: Refused in channel ids over SSE and WebSocket, where ids go into line-based headers.
_LINE_BREAKS = ("\r", "\n", "\0")


def split_channels(raw: str) -> list[str]:
    """The channel ids of a raw (percent-encoded) path segment, in order, once each.

    Raises :class:`ValueError` for a malformed id, an empty one or too many.
    """
    parts = raw.split(SEPARATOR)
    if len(parts) > MAX_CHANNELS:
        raise ValueError(f"at most {MAX_CHANNELS} channels per subscriber, not {len(parts)}")
    channels = [decode_channel_id(part) for part in parts]
    for channel_id in channels:
        check_channel_id(channel_id)
    return list(dict.fromkeys(channels))


def check_channel_id(channel_id: str) -> None:
    if not channel_id:
        raise ValueError("the channel id is empty")
    if any(char in channel_id for char in _LINE_BREAKS):
        raise ValueError("a channel id with a line break cannot be streamed")


def parse_resume_id(text: str | None, count: int) -> list[MessageId]:
    """Positions from a ``Last-Event-ID`` / ``last_event_id``, one per channel.

    Absent or blank means "from the oldest retained message" on every channel. Raises
    :class:`ValueError` for anything else that is not ``count`` message ids.
    """
    if text is None or not text.strip():
        return [ORIGIN] * count
    parts = [part.strip().removeprefix("[").removesuffix("]") for part in text.split(SEPARATOR)]
    if len(parts) != count:
        raise ValueError(f"the last event id names {len(parts)} position(s) for {count} channel(s)")
    return [MessageId.parse(part) for part in parts]


def format_compound_id(positions: Iterable[MessageId], marked: int) -> str:
    return SEPARATOR.join(
        f"[{position}]" if index == marked else str(position)
        for index, position in enumerate(positions)
    )


def query_parameter(query_string: bytes, name: str) -> str | None:
    """One query parameter, percent-decoded (``+`` is a space); None when absent."""
    from urllib.parse import parse_qsl

    for key, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if key == name:
            return value
    return None


# -- what a stream yields -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Item:
    """A message to deliver on ``channel_id``."""

    channel_id: str
    message: Message


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


class Stream:
    """A streaming subscriber's positions, and the ordered events it is owed."""

    def __init__(
        self, hub: Hub, subscription: Subscription, positions: dict[str, MessageId]
    ) -> None:
        self.hub = hub
        self.subscription = subscription
        #: channel -> id of the last message delivered (URL order; WebSocket adds at the end).
        self.positions = positions
        #: Every channel ever streamed, deleted ones too: compound ids keep their shape.
        self.ids = dict(positions)
        self._gap_told: dict[str, MessageId] = {}
        self._resync = True  # the first pass reads the buffer
        self._resync_queued = False

    def resync(self) -> None:
        """Read the buffer again (a channel was added with its own position)."""
        self._resync = True
        if not self._resync_queued:  # at most one marker queued: the queue stays bounded
            self._resync_queued = True
            self.subscription.offer(_RESYNC)  # type: ignore[arg-type]

    async def add(self, channel_id: str, position: MessageId) -> None:
        """Stream one more channel from ``position`` (WebSocket ``subscribe``)."""
        self.positions[channel_id] = self.ids[channel_id] = position
        await self.hub.add_channel(self.subscription, channel_id)
        self.resync()

    async def remove(self, channel_id: str) -> None:
        """Stop streaming a channel; what is queued for it is dropped."""
        if self.positions.pop(channel_id, None) is not None:
            await self.hub.remove_channel(self.subscription, channel_id)

    def compound_id(self, channel_id: str) -> str:
        ids = self.ids
        return format_compound_id(ids.values(), list(ids).index(channel_id))

    async def items(self) -> AsyncGenerator[StreamEvent, None]:
        subscription = self.subscription
        while True:
            if subscription.overflowed:
                subscription.overflowed = False
                logger.info(
                    "subscriber on %s fell %d messages behind: catching up from the buffer",
                    ",".join(self.positions) or "-",
                    subscription.maxlen,
                )
                # Checked before every get(), so what is queued now all came before the first
                # drop, in order: it goes out first, then the buffer supplies the rest.
                backlog = [subscription.get_nowait() for _ in range(subscription.pending())]
                for event in backlog:
                    item = await self._accept(event)
                    if item is not None:
                        yield item
                        if isinstance(item, Closing):
                            return
                self._resync = True
            if self._resync:
                # Cleared before reading, so a channel added during the read is read next pass.
                self._resync = False
                async for item in self._catch_up():
                    yield item
                continue
            event = await subscription.get()
            if event is None:
                continue  # overflowed with nothing queued: read the buffer
            item = await self._accept(event)
            if item is not None:
                yield item
                if isinstance(item, Closing):
                    return

    async def _accept(self, event: object) -> StreamEvent | None:
        """What a queued hub event means for this stream (None: nothing to send)."""
        if isinstance(event, Delivery):
            position = self.positions.get(event.channel_id)
            # Older ids were already sent from the buffer; unknown channels were dropped.
            if position is not None and event.message.id > position:
                self.positions[event.channel_id] = self.ids[event.channel_id] = event.message.id
                return Item(event.channel_id, event.message)
        elif isinstance(event, Deletion):
            if event.channel_id in self.positions:
                return await self._deleted(event.channel_id)
        elif isinstance(event, Closing):
            return event
        elif event is _RESYNC:
            self._resync_queued = False
        return None

    async def _deleted(self, channel_id: str) -> Deleted:
        del self.positions[channel_id]
        await self.hub.remove_channel(self.subscription, channel_id)
        return Deleted(channel_id)

    async def _read(self, channel_id: str, after: MessageId) -> tuple[Message | None, Gap | None]:
        read = await self.hub.read_after(channel_id, after)
        gap = None
        if read.gap and self._gap_told.get(channel_id) != after:
            # Told once per position: an empty buffer would report the same gap again.
            self._gap_told[channel_id] = after
            gap = Gap(channel_id, after, read.message.id if read.message else None)
        return read.message, gap

    async def _catch_up(self) -> AsyncIterator[StreamEvent]:
        """Every retained message after the positions, oldest id first across channels."""
        positions = self.positions
        heads: dict[str, Message] = {}
        for channel_id, position in list(positions.items()):
            try:
                message, gap = await self._read(channel_id, position)
            except ChannelNotFound:
                yield await self._deleted(channel_id)
                continue
            if gap is not None:
                yield gap
            if message is not None:
                heads[channel_id] = message
        while heads:
            channel_id = min(heads, key=lambda c: heads[c].id)
            message = heads.pop(channel_id)
            if channel_id not in positions or message.id <= positions[channel_id]:
                continue  # unsubscribed meanwhile
            positions[channel_id] = self.ids[channel_id] = message.id
            yield Item(channel_id, message)
            try:
                following, gap = await self._read(channel_id, message.id)
            except ChannelNotFound:
                continue  # its Deletion is queued and ends the channel
            if gap is not None:
                yield gap
            if following is not None:
                heads[channel_id] = following
