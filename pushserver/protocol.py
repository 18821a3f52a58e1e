"""The wire protocol as pure functions: no I/O, no server.

The Nginx HTTP Push Module's (long-poll positions, channel info, CORS) and what the
streaming transports add to it (channel lists, resume ids). Everything here takes and
returns plain values (strings, bytes, tuples), so it is tested with plain values, and
every transport shares it.

Multiplexing
    A subscriber URL names several channels separated by :data:`SEPARATOR` (``,``), at most
    the location's ``max_channels`` (:data:`MAX_CHANNELS` by default). The split happens on
    the raw path before percent-decoding, so a channel id containing a comma is written
    ``%2C``. Duplicates count once. Long-poll never splits: there the whole path segment is
    one channel id.

Resume ids
    One channel: the message id, ``<time>:<tag>``, the same position as long-poll's
    ``Last-Modified`` / ``Etag`` pair. Several channels: the compound id, one position per
    channel in URL order joined by ``,`` (``0:-1`` for "nothing yet"); the channel that
    produced the event is in brackets, as nchan marks it:
    ``1700000000:4,[1700000012:0],0:-1``. Brackets are ignored when resuming.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from datetime import datetime
from email.utils import formatdate, mktime_tz, parsedate_tz
from functools import lru_cache
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape as xml_escape

from .message import ORIGIN, ChannelInfo, Message, MessageId

if TYPE_CHECKING:
    from .http import Request

Headers = list[tuple[bytes, bytes]]

# -- request headers ------------------------------------------------------------------------

#: 9999-12-31 23:59:59 GMT, the last second an HTTP date can name.
MAX_HTTP_DATE = 253402300799

_INT_RE = re.compile(r"\s*(-?[0-9]{1,18})\s*\Z")


def parse_if_none_match(value: str | None) -> int:
    """The integer etag of ``If-None-Match``; -1 when absent.

    Raises :class:`ValueError` for anything but a bare integer (the original answered a
    quoted etag with 400, and so do we).
    """
    if value is None or value.strip() == "":
        return -1
    match = _INT_RE.match(value)
    if match is None:
        raise ValueError(f"If-None-Match is not an integer: {value!r}")
    number = int(match.group(1))
    if number < -1:
        raise ValueError(f"If-None-Match is negative: {value!r}")
    return number


def parse_if_modified_since(value: str | None) -> int:
    """Unix seconds of ``If-Modified-Since``; 0 when absent.

    Raises :class:`ValueError` for a value that is not an HTTP date.
    """
    if value is None or value.strip() == "":
        return 0
    return _http_date_seconds(value)


@lru_cache(maxsize=1024)
def _http_date_seconds(value: str) -> int:
    # Cached: the pollers of a channel all send the same date, and parsing one costs more
    # than the rest of reading a position. A value that raises is not cached.
    parsed = parsedate_tz(value)
    if parsed is None:
        raise ValueError(f"If-Modified-Since is not an HTTP date: {value!r}")
    try:
        # parsedate_tz does not check ranges: "25:61" or "32 Jan" would silently roll over.
        datetime(*parsed[:5], min(parsed[5], 59))
        seconds = mktime_tz(parsed)
    except (OverflowError, ValueError) as exc:
        raise ValueError(f"If-Modified-Since is out of range: {value!r}") from exc
    if seconds > MAX_HTTP_DATE:  # it could not be echoed back as Last-Modified
        raise ValueError(f"If-Modified-Since is out of range: {value!r}")
    return max(0, seconds)


def position_from_headers(if_modified_since: str | None, if_none_match: str | None) -> MessageId:
    """The client's position: it has read everything up to this id, nothing after."""
    return MessageId(parse_if_modified_since(if_modified_since), parse_if_none_match(if_none_match))


# -- channel ids ----------------------------------------------------------------------------

_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_PERCENT = re.compile(rb"%([0-9A-Fa-f]{2})")


@lru_cache(maxsize=4096)
def decode_channel_id(raw: str, max_length: int = 0) -> str:
    """Percent-decode a channel id taken from the raw URL path, strictly.

    Raises :class:`ValueError` for a malformed escape, bytes that are not UTF-8 or an id
    longer than *max_length* characters (0 = no limit). Cached (every request names its
    channel; a raised error is not cached).
    """
    if _BAD_PERCENT.search(raw):
        raise ValueError("malformed percent-encoding in the channel id")
    data = _PERCENT.sub(lambda m: bytes((int(m.group(1), 16),)), raw.encode("latin-1"))
    try:
        channel_id = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError("the channel id is not UTF-8") from exc
    if channel_id == "":
        raise ValueError("the channel id is empty")
    check_channel_id_length(channel_id, max_length)
    return channel_id


def check_channel_id_length(channel_id: str, max_length: int) -> None:
    # Every id becomes a store key and a hub entry: a bound keeps one request from making
    # them arbitrarily large (nchan's default is the same 1024).
    if max_length and len(channel_id) > max_length:
        raise ValueError(f"the channel id is longer than {max_length} characters")


# -- channel lists and resume ids (server-sent events, WebSocket) ---------------------------

SEPARATOR = ","
MAX_CHANNELS = 255
#: Refused in channel ids over SSE and WebSocket, where ids go into line-based headers.
_LINE_BREAKS = ("\r", "\n", "\0")


def split_channels(raw: str, max_length: int = 0, max_channels: int = MAX_CHANNELS) -> list[str]:
    """The channel ids of a raw (percent-encoded) path segment, in order, once each.

    Raises :class:`ValueError` for a malformed id, an empty one, one longer than
    *max_length* characters or more than *max_channels* (0 = no limit, for either).
    """
    parts = raw.split(SEPARATOR)
    if max_channels and len(parts) > max_channels:
        raise ValueError(f"at most {max_channels} channels per subscriber, not {len(parts)}")
    channels = [decode_channel_id(part, max_length) for part in parts]
    for channel_id in channels:
        _check_streamable(channel_id)  # decode_channel_id checked the rest
    return list(dict.fromkeys(channels))


def check_channel_id(channel_id: str, max_length: int = 0) -> None:
    """Raise :class:`ValueError` for an id a streaming subscriber cannot name (an already
    decoded one: a WebSocket command's)."""
    if not channel_id:
        raise ValueError("the channel id is empty")
    check_channel_id_length(channel_id, max_length)
    _check_streamable(channel_id)


def _check_streamable(channel_id: str) -> None:
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
    """The resume id of a multiplexed stream, the channel at index ``marked`` bracketed
    (-1: none)."""
    return SEPARATOR.join(
        f"[{position}]" if index == marked else str(position)
        for index, position in enumerate(positions)
    )


# -- response headers -----------------------------------------------------------------------


def http_date(seconds: int) -> str:
    return formatdate(seconds, usegmt=True)


VARY = (b"vary", b"If-Modified-Since, If-None-Match")


def position_headers(position: MessageId) -> Headers:
    """``Last-Modified`` / ``Etag`` / ``Cache-Control: etag=`` for a position."""
    tag = str(position.tag).encode()
    return [
        (b"last-modified", http_date(position.time).encode()),
        (b"etag", tag),
        (b"cache-control", b"etag=" + tag),
        VARY,
    ]


def longpoll_response_headers(message: Message) -> Headers:
    """Headers of a 200 carrying ``message``; shared by every subscriber it reaches."""
    headers = [
        *position_headers(message.id),
        (b"content-type", message.content_type.encode("latin-1")),
        (b"content-length", str(len(message.body)).encode()),
    ]
    if message.event is not None:  # the name published with X-EventSource-Event, as sent
        headers.append((b"x-eventsource-event", message.event.encode("utf-8", "surrogateescape")))
    return headers


SUBSCRIBER_ALLOW_HEADERS = (
    "If-Modified-Since, If-None-Match, X-Cookie, Last-Event-ID, Cache-Control"
)
SUBSCRIBER_EXPOSE_HEADERS = "Last-Modified, Etag, Cache-Control, Content-Type, X-EventSource-Event"
#: The original's Access-Control-Max-Age (browsers cap it: Chromium at 2 h, Firefox at 24 h).
DEFAULT_MAX_AGE = 864000


def cors_headers(
    allow_origin: str,
    allow_credentials: bool,
    request_origin: str | None,
    max_age: int = DEFAULT_MAX_AGE,
    *,
    allow_headers: str = SUBSCRIBER_ALLOW_HEADERS,
    expose_headers: str | None = SUBSCRIBER_EXPOSE_HEADERS,
) -> Headers:
    """The CORS set a response carries, errors included.

    ``allow_origin`` is the configured value, origins separated by spaces. ``'*'`` (alone
    or in the list) answers ``*``; the system checks refuse it with credentials. One origin
    is always named: the answer does not depend on the request, and a browser on another
    origin refuses it. With several, the request's ``Origin`` is named when it is one of
    them and ``Access-Control-Allow-Origin`` is left out otherwise, with ``Vary: Origin``
    either way so caches keep the answers apart.
    """
    origins = allow_origin.split()
    several = len(origins) > 1 and "*" not in origins
    origin: str | None
    if "*" in origins:
        origin = "*"
    elif several:
        origin = request_origin if request_origin in origins else None
    else:
        origin = allow_origin.strip()
    headers: Headers = []
    if origin is not None:
        headers.append((b"access-control-allow-origin", origin.encode("latin-1")))
    headers.append((b"access-control-allow-headers", allow_headers.encode()))
    if expose_headers:
        headers.append((b"access-control-expose-headers", expose_headers.encode()))
    headers += [
        (b"access-control-allow-credentials", b"true" if allow_credentials else b"false"),
        (b"access-control-max-age", str(max_age).encode()),
    ]
    if several:
        headers.append((b"vary", b"Origin"))
    return headers


class OriginHeaders:
    """A location's response headers for each request ``Origin``, all built up front.

    :meth:`for_origin` is one dict lookup (none at all with ``'*'`` or one origin): the
    per-request cost of a list of origins is nothing built, nothing copied.
    """

    __slots__ = ("by_origin", "default")

    def __init__(
        self,
        base: Headers,
        allow_origin: str,
        allow_credentials: bool,
        max_age: int = DEFAULT_MAX_AGE,
        *,
        allow_headers: str = SUBSCRIBER_ALLOW_HEADERS,
        expose_headers: str | None = SUBSCRIBER_EXPOSE_HEADERS,
    ) -> None:
        def build(request_origin: str | None) -> Headers:
            cors = cors_headers(
                allow_origin,
                allow_credentials,
                request_origin,
                max_age,
                allow_headers=allow_headers,
                expose_headers=expose_headers,
            )
            return [*base, *cors]

        origins = allow_origin.split()
        #: The headers for a request without a listed Origin (or for every request).
        self.default = build(None)
        self.by_origin: dict[str, Headers] | None = None
        if len(origins) > 1 and "*" not in origins:
            self.by_origin = {origin: build(origin) for origin in origins}

    def for_request(self, request: Request) -> Headers:
        """The headers for this request: with several allowed origins, CORS names its own."""
        if self.by_origin is None:
            return self.default
        return self.for_origin(request.header("origin"))

    def for_origin(self, origin: str | None) -> Headers:
        by_origin = self.by_origin
        if by_origin is None or origin is None:
            return self.default
        return by_origin.get(origin, self.default)


# -- channel info ---------------------------------------------------------------------------

_INFO_FORMATS = {
    "json": ("json", "x-json"),
    "xml": ("xml",),
    "yaml": ("yaml", "x-yaml"),
}


@lru_cache(maxsize=64)  # publishers send the same Accept every time (bounded: any header)
def negotiate_info_format(accept: str | None) -> tuple[str, str]:
    """``(format, content_type)`` for an ``Accept`` header, as NHPM negotiates it.

    The first ``text/`` or ``application/`` type naming json, xml or yaml wins (NHPM ignores
    q-values, and so do we); the response echoes that type. Anything else is plain text.
    """
    for part in (accept or "").split(","):
        media = part.split(";", 1)[0].strip().lower()
        major, _, minor = media.partition("/")
        if major not in ("text", "application"):
            continue
        for name, minors in _INFO_FORMATS.items():
            if minor in minors:
                return name, media
    return "plain", "text/plain; charset=utf-8"


def render_channel_info(info: ChannelInfo, fmt: str, now: float | None = None) -> bytes:
    requested = info.requested_seconds_ago(now)
    last_id = str(info.last_message_id) if info.last_message_id else ""
    if fmt == "json":
        return json.dumps(
            {
                "messages": info.messages,
                "requested": requested,
                "subscribers": info.subscribers,
                "last_message_id": last_id,
            },
            separators=(",", ":"),
        ).encode()
    if fmt == "xml":
        return (
            '<?xml version="1.0" encoding="UTF-8" ?>\n<channel>\n'
            f"  <messages>{info.messages}</messages>\n"
            f"  <requested>{requested}</requested>\n"
            f"  <subscribers>{info.subscribers}</subscribers>\n"
            f"  <last_message_id>{xml_escape(last_id)}</last_message_id>\n"
            "</channel>\n"
        ).encode()
    if fmt == "yaml":
        return (
            "---\n"
            f"messages: {info.messages}\n"
            f"requested: {requested}\n"
            f"subscribers: {info.subscribers}\n"
            f'last_message_id: "{last_id}"\n'
        ).encode()
    return (
        f"queued messages: {info.messages}\r\n"
        f"last requested: {requested} sec. ago (-1=never)\r\n"
        f"active subscribers: {info.subscribers}\r\n"
        f"last message id: {last_id}\r\n"
    ).encode()
