"""Messages and message ids.

A :class:`MessageId` is the pair ``(time, tag)``: ``time`` is whole Unix seconds at publish
time, ``tag`` counts messages published to the channel within that second, from 0. It maps
one-to-one onto the Nginx HTTP Push Module's ``Last-Modified`` / ``Etag`` pair and onto the
compact string ``"<time>:<tag>"`` that server-sent events and WebSockets use, so a client can
move between transports without losing its place.
"""

from __future__ import annotations

import contextlib
import re
import time as _time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

_ID_RE = re.compile(r"([0-9]{1,18}):(-1|[0-9]{1,18})\Z", re.ASCII)


class MessageId(NamedTuple):
    """Orders messages within one channel; compares as the tuple ``(time, tag)``."""

    time: int
    tag: int

    def __str__(self) -> str:
        return f"{self.time}:{self.tag}"

    @classmethod
    def parse(cls, text: str) -> MessageId:
        """Parse ``"<time>:<tag>"``; raise :class:`ValueError` on anything else."""
        match = _ID_RE.match(text.strip())
        if match is None:
            raise ValueError(f"not a message id: {text!r}")
        return cls(int(match.group(1)), int(match.group(2)))

    def next_for(self, now: int) -> MessageId:
        """The id a message published at ``now`` gets after this one.

        A new second restarts the tag at 0. If the clock went backwards the second is kept
        and the tag goes on counting, so ids never go back.
        """
        if now > self.time:
            return MessageId(now, 0)
        return MessageId(self.time, self.tag + 1)


_BAD_EVENT_NAME = re.compile(r"[\x00-\x1f\x7f]")


def check_event_name(name: str) -> str:
    """``name`` if it can be a message's event name (the ``event:`` line of server-sent
    events, ``X-EventSource-Event``): not empty, no control characters (a line break would
    end the ``event:`` line and forge the rest of the event). ValueError otherwise."""
    if not isinstance(name, str):
        raise TypeError(f"an event name is a str, not {type(name).__name__}")
    if not name or _BAD_EVENT_NAME.search(name):
        raise ValueError(
            f"bad event name {name!r}: it must be a non-empty string without control "
            "characters (no line breaks)"
        )
    return name


def event_name_from_header(value: str | None) -> str | None:
    """The event name an ``X-EventSource-Event`` header value (decoded as Latin-1, as every
    header is) carries: its bytes read as UTF-8 when they are UTF-8, so a name published
    as UTF-8 reaches event streams as the same bytes, as with nchan. None when absent or
    empty; ValueError when it cannot be an event name."""
    if not value:
        return None
    with contextlib.suppress(UnicodeError):  # not UTF-8: keep the Latin-1 reading
        value = value.encode("latin-1").decode("utf-8")
    return check_event_name(value)


#: Before every message: what a client with no position asks to read after.
ORIGIN = MessageId(0, -1)


def now_seconds() -> int:
    return int(_time.time())


@dataclass(eq=False, slots=True)
class Message:
    """One published message. Immutable once published; shared by every subscriber.

    ``encoded`` caches each wire format's bytes, so fan-out encodes a message once per
    format however many subscribers it reaches.
    """

    id: MessageId
    body: bytes
    content_type: str = "application/octet-stream"
    event: str | None = None
    published_at: float = field(default_factory=_time.time)
    encoded: dict[Hashable, Any] = field(default_factory=dict, repr=False)

    def wire(self, name: Hashable, encode: Callable[..., Any], *args: Any) -> Any:
        """Return ``encode(self, *args)``, computed once per ``name`` for this message.

        ``name`` is a format's name, or an object of its own where the encoded form
        depends on who encodes it (a location's headers).
        """
        try:
            return self.encoded[name]
        except KeyError:
            value = self.encoded[name] = encode(self, *args)
            return value


@dataclass(frozen=True, slots=True)
class ChannelInfo:
    """What the publisher's GET reports, as NHPM and nchan do."""

    channel_id: str
    messages: int
    last_requested: float | None  # Unix time of the last subscriber request, None if never
    subscribers: int
    last_message_id: MessageId | None

    def requested_seconds_ago(self, now: float | None = None) -> int:
        if self.last_requested is None:
            return -1
        now = _time.time() if now is None else now
        return max(0, int(now - self.last_requested))
