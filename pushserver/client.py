"""A Python subscriber: ``async for message in subscribe(url)``, for services, scripts and tests.

::

    from pushserver.client import Message, subscribe

    async for item in subscribe("http://127.0.0.1:8001/subscriber/news,sport"):
        if isinstance(item, Message):
            print(item.channel, item.id, item.json())

What it does
    * Connects over WebSocket, asking for the ``pushserver.v1`` subprotocol (message frames
      with their channel and id, control frames), on the ``websockets`` package's asyncio
      client. When the server refuses WebSocket (the location or the process does not serve
      it: close 4403 before any frame; or the upgrade is answered with an HTTP status, as a
      proxy without WebSocket support does), it falls back to the event stream of the same
      URL, read with a small HTTP/1.1 reader of its own on anyio streams (no HTTP client
      dependency), and stays on it for the rest of the subscription.
    * Several channels: name them in the URL, separated by ``,`` (the server's
      multiplexing), e.g. ``/subscriber/news,sport``.
    * Resumes exactly where it was: after a dropped connection, a server restart or a
      shutdown (close 1001, or the event stream's end) it reconnects with
      ``last_event_id`` (the compound id for several channels), so nothing is lost or
      repeated while the server still has the messages. Reconnects back off
      exponentially from ``min_delay`` to ``max_delay`` seconds with full jitter (half to
      all of the delay), and start again from ``min_delay`` after a connection that
      delivered something or lasted ``max_delay`` (a server that accepts and closes at once,
      e.g. with 1013 "try again later", is not retried in a tight loop).

What it yields, in order
    * :class:`Message`: a published message (``data`` is the body as bytes; ``text`` and
      :meth:`Message.json` decode it). Over an event stream ``content_type`` is None (SSE
      does not carry it) and a body that was not UTF-8 arrives with U+FFFD in its place.
    * :class:`Gap`: messages after ``after`` on ``channel`` left the server's buffer before
      this client got them (it fell behind, or resumed from an id that is gone); the next
      message of the channel is the oldest retained one, ``next``. The subscription goes on.
    * :class:`Deleted`: the channel was deleted. The subscription goes on for its other
      channels, and ends (the ``async for`` finishes) after the last one.

    Gap and deleted are items rather than exceptions so that one loop sees everything in
    order and goes on after a gap; a loop that only wants messages skips what is not a
    :class:`Message`.

Errors
    :class:`SubscriptionError` (with the close code or HTTP status, and the server's
    reason) ends the subscription when retrying cannot help: a bad request (4400 / 400),
    not allowed (4403 / 403, after the fallback was tried), no such channel (4404 / 404).
    Everything else (connection refused, a server restarting, 1013 / 503, too slow 4408)
    is retried, forever unless ``retry=False`` (then :class:`SubscriptionError` or the
    connection's own error is raised). Breaking out of the loop closes the connection.

:func:`subscribe_sync` is the same for code that is not async: a generator driven by an
event loop in a thread of its own (anyio's blocking portal).

The WebSocket transport runs on asyncio (``websockets``' asyncio client); the event stream
on any anyio backend.
"""

from __future__ import annotations

import json
import random
import ssl as ssl_module
from collections.abc import AsyncGenerator, Iterator, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, ClassVar, Literal
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import anyio
from anyio.streams.buffered import BufferedByteReceiveStream

from .message import ORIGIN, MessageId
from .protocol import format_compound_id, parse_resume_id, split_channels
from .transports.websocket import (
    CLOSE_BAD_REQUEST,
    CLOSE_DELETED,
    CLOSE_NOT_ALLOWED,
    CLOSE_NOT_FOUND,
    PUSHSERVER_V1,
)

__all__ = ["Deleted", "Gap", "Message", "SubscriptionError", "subscribe", "subscribe_sync"]

#: Close codes and HTTP statuses that retrying cannot fix.
FINAL = frozenset({CLOSE_BAD_REQUEST, CLOSE_NOT_ALLOWED, CLOSE_NOT_FOUND, 400, 403, 404})
#: Largest frame or event accepted (the server's own default limit is 1 MiB).
MAX_MESSAGE = 2**26
#: Largest response head of an event stream.
MAX_HEAD = 2**16


@dataclass(frozen=True, slots=True)
class Message:
    """A published message."""

    channel: str
    #: The message id, ``<time>:<tag>``.
    id: str
    data: bytes
    #: The ``Content-Type`` it was published with; None over an event stream.
    content_type: str | None = None
    #: The ``X-EventSource-Event`` it was published with, if any.
    event: str | None = None
    kind: ClassVar[str] = "message"

    @property
    def text(self) -> str:
        return self.data.decode("utf-8")

    def json(self) -> Any:
        return json.loads(self.data)


@dataclass(frozen=True, slots=True)
class Gap:
    """Messages on ``channel`` after ``after`` are gone; ``next`` (None: nothing is
    retained) comes next."""

    channel: str
    after: str
    next: str | None
    kind: ClassVar[str] = "gap"


@dataclass(frozen=True, slots=True)
class Deleted:
    """``channel`` was deleted; nothing more comes from it."""

    channel: str
    kind: ClassVar[str] = "deleted"


Item = Message | Gap | Deleted


class SubscriptionError(Exception):
    """The server refused the subscription for good: ``code`` is the WebSocket close code
    or the HTTP status, ``reason`` the server's reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}".strip())
        self.code = code
        self.reason = reason


#: How a dropped connection shows (TimeoutError, from a deadline, is an OSError).
_DROPPED = (OSError, anyio.BrokenResourceError, anyio.EndOfStream, anyio.IncompleteRead)


class _Retry(Exception):
    """The connection ended; reconnect after a delay (``fast``: the server asked for it).
    ``code``: the close code or HTTP status, if there was one."""

    def __init__(self, why: str = "", fast: bool = False, code: int = 0) -> None:
        super().__init__(why)
        self.fast = fast
        self.code = code


class _FallBack(Exception):
    """The server does not serve WebSocket here: use the event stream."""


class _Subscription:
    """Where a subscription is: its channels (URL order) and their positions."""

    def __init__(self, url: str, last_event_id: str | None) -> None:
        parts = urlsplit(url)
        scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
        if scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s):// or ws(s):// URL: {url!r}")
        self.parts = parts._replace(scheme=scheme)
        base, _, raw = parts.path.rpartition("/")
        self.base = base + "/"
        self.channels = split_channels(raw, max_channels=0)
        self.positions = dict(
            zip(self.channels, parse_resume_id(last_event_id, len(self.channels)), strict=True)
        )
        self.query = [(k, v) for k, v in parse_qsl(parts.query) if k != "last_event_id"]
        #: channel -> the position a gap was told after (a reconnect before the next
        #: message would be told the same gap again).
        self.gaps: dict[str, str] = {}

    def new_gap(self, gap: Gap) -> bool:
        """Whether this gap was not told yet (positions only grow: one per channel)."""
        if self.gaps.get(gap.channel) == gap.after:
            return False
        self.gaps[gap.channel] = gap.after
        return True

    def resume_id(self) -> str | None:
        positions = list(self.positions.values())
        if all(position == ORIGIN for position in positions):
            return None
        return format_compound_id(positions, -1)

    def url(self, websocket: bool, with_id: bool) -> str:
        """The URL for the channels still subscribed, with ``last_event_id`` if asked."""
        query = list(self.query)
        resume = self.resume_id()
        if with_id and resume is not None:
            query.append(("last_event_id", resume))
        path = self.base + ",".join(quote(channel, safe="") for channel in self.channels)
        scheme = self.parts.scheme
        if websocket:
            scheme = "wss" if scheme == "https" else "ws"
        return urlunsplit(self.parts._replace(scheme=scheme, path=path, query=urlencode(query)))

    def delivered(self, channel: str, message_id: str) -> None:
        if channel in self.positions:
            self.positions[channel] = MessageId.parse(message_id)

    def deleted(self, channel: str) -> None:
        if channel in self.positions:
            del self.positions[channel]
            self.channels.remove(channel)
            self.gaps.pop(channel, None)


async def subscribe(
    url: str,
    *,
    last_event_id: str | None = None,
    transport: Literal["auto", "websocket", "eventsource"] = "auto",
    headers: Mapping[str, str] | None = None,
    retry: bool = True,
    min_delay: float = 0.5,
    max_delay: float = 30.0,
    open_timeout: float = 10.0,
    idle_timeout: float | None = 60.0,
    ssl: ssl_module.SSLContext | None = None,
) -> AsyncGenerator[Item, None]:
    """The messages of the channels ``url`` names, with gaps and deletions, in order.

    ``url`` is the subscriber URL (``http(s)://`` or ``ws(s)://``; several channels
    separated by ``,``). ``last_event_id`` starts after that id (the compound id for several
    channels); without it every retained message comes first. ``transport`` ``"auto"``
    tries WebSocket and falls back to the event stream; ``"websocket"`` or
    ``"eventsource"`` use only that one. ``headers`` go with every request (cookies,
    ``Origin``). ``idle_timeout``: an event stream that sent nothing, not even its pings,
    for this long is reconnected (None: never). See the module docstring.
    """
    state = _Subscription(url, last_event_id)
    use_websocket = transport in ("auto", "websocket")
    extra = dict(headers or {})
    failures = 0
    while state.channels:
        began = anyio.current_time()
        delivered = False
        try:
            if use_websocket:
                items = _websocket(state, extra, open_timeout, ssl)
            else:
                items = _event_stream(state, extra, open_timeout, idle_timeout, ssl)
            async with aclosing(items) as stream:
                async for item in stream:
                    if type(item) is Gap and not state.new_gap(item):
                        continue
                    delivered = True
                    yield item
            if not state.channels:
                return
            raise _Retry("the server ended the stream", fast=True)
        except _FallBack as exc:
            if transport != "auto":
                raise SubscriptionError(CLOSE_NOT_ALLOWED, str(exc)) from None
            use_websocket = False
            continue
        except (_Retry, *_DROPPED) as exc:
            if not retry:
                if isinstance(exc, _Retry):
                    raise SubscriptionError(exc.code, str(exc)) from None
                raise
            fast = isinstance(exc, _Retry) and exc.fast
        if delivered or anyio.current_time() - began >= max_delay:
            failures = 0
        delay = min(max_delay, min_delay * 2 ** (0 if fast else failures))
        failures += 1
        await anyio.sleep(delay * random.uniform(0.5, 1.0))


def subscribe_sync(url: str, **options: Any) -> Iterator[Item]:
    """:func:`subscribe` for code that is not async: ``for item in subscribe_sync(url)``.

    An event loop runs in a thread of its own for as long as the generator lives (anyio's
    blocking portal); each item is fetched from it when the loop asks for the next one, so
    a slow consumer holds nothing back but its own connection. Closing the generator (or
    leaving the ``for``) closes the connection and stops the thread.
    """
    with anyio.from_thread.start_blocking_portal() as portal:
        items = subscribe(url, **options)
        try:
            while True:
                try:
                    yield portal.call(items.__anext__)
                except StopAsyncIteration:
                    return
        finally:
            portal.call(items.aclose)


# -- WebSocket, pushserver.v1 ---------------------------------------------------------------


async def _websocket(
    state: _Subscription,
    headers: dict[str, str],
    open_timeout: float,
    ssl: ssl_module.SSLContext | None,
) -> AsyncGenerator[Item, None]:
    from websockets.asyncio.client import connect
    from websockets.exceptions import (
        ConnectionClosed,
        InvalidHandshake,
        InvalidMessage,
        InvalidStatus,
    )

    url = state.url(websocket=True, with_id=True)
    options: dict[str, Any] = {"ssl": ssl} if ssl is not None and url.startswith("wss:") else {}
    try:
        ws = await connect(
            url,
            subprotocols=[PUSHSERVER_V1],  # type: ignore[list-item]
            additional_headers=headers,
            open_timeout=open_timeout,
            max_size=MAX_MESSAGE,
            **options,
        )
    except InvalidStatus as exc:  # answered with an HTTP status: no WebSocket here
        raise _FallBack(f"WebSocket answered with HTTP {exc.response.status_code}") from None
    except InvalidMessage:  # no (whole) HTTP response: the connection dropped
        raise _Retry("the connection dropped during the WebSocket handshake") from None
    except InvalidHandshake as exc:
        raise _FallBack(f"WebSocket handshake failed: {exc}") from None
    except TimeoutError:
        raise _Retry("WebSocket opening timed out") from None
    async with ws:
        if ws.subprotocol != PUSHSERVER_V1:
            raise _FallBack("the server does not speak pushserver.v1")
        received = False
        while True:
            try:
                frame = await ws.recv()
            except ConnectionClosed as closed:
                _closed(closed.rcvd, received, state)
                return
            received = True
            item = _v1_item(frame)
            if item is None:
                continue
            if type(item) is Message:
                state.delivered(item.channel, item.id)
            elif type(item) is Deleted:
                state.deleted(item.channel)
            yield item


def _closed(close: Any, received: bool, state: _Subscription) -> None:
    """What a close (the received Close frame; None: none, 1006) means: the end (return),
    a retry, a fallback or a refusal (raised)."""
    code, reason = (close.code, close.reason) if close is not None else (1006, "")
    if code == CLOSE_DELETED and not state.channels:
        return
    if code == CLOSE_NOT_ALLOWED and not received:
        raise _FallBack(reason or "WebSocket refused")
    if code in FINAL:
        raise SubscriptionError(code, reason)
    raise _Retry(reason or f"closed {code}", fast=code == 1001, code=code)


def _v1_item(frame: str | bytes) -> Item | None:
    """A ``pushserver.v1`` frame as an item; None for control frames that are not one."""
    if isinstance(frame, str):
        if frame.startswith("{"):
            control = json.loads(frame)
            kind = control.get("type")
            if kind == "gap":
                return Gap(control["channel"], control["after"], control.get("next"))
            if kind == "deleted":
                return Deleted(control["channel"])
            return None  # ping, pong, subscribed, errors of commands this client never sends
        head, _, body = frame.partition("\n\n")
        data = body.encode()
    else:
        end = frame.index(b"\n\n")
        head, data = frame[:end].decode(), frame[end + 2 :]
    fields = dict(line.split(": ", 1) for line in head.split("\n"))
    return Message(
        fields["channel"], fields["id"], data, fields.get("content-type"), fields.get("event")
    )


# -- event stream -----------------------------------------------------------------------------


async def _event_stream(
    state: _Subscription,
    headers: dict[str, str],
    open_timeout: float,
    idle_timeout: float | None,
    ssl: ssl_module.SSLContext | None,
) -> AsyncGenerator[Item, None]:
    from .transports.sse import DELETED_EVENT, GAP_EVENT

    parts = urlsplit(state.url(websocket=False, with_id=False))
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    assert parts.hostname is not None
    with anyio.fail_after(open_timeout):
        stream: anyio.abc.ByteStream
        if https or ssl is not None:  # anyio's rule: an ssl_context alone means TLS too
            stream = await anyio.connect_tcp(
                parts.hostname, port, tls=True, ssl_context=ssl, tls_standard_compatible=False
            )
        else:
            stream = await anyio.connect_tcp(parts.hostname, port)
    async with stream:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        lines = [
            f"GET {target} HTTP/1.1",
            f"Host: {parts.netloc}",
            "Accept: text/event-stream",
            "Cache-Control: no-store",
        ]
        resume = state.resume_id()
        if resume is not None:
            lines.append(f"Last-Event-ID: {resume}")
        lines += [f"{name}: {value}" for name, value in headers.items()]
        await stream.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        reader = BufferedByteReceiveStream(stream)
        with anyio.fail_after(open_timeout):
            status, response = await _response_head(reader)
        if status != 200:
            reason = (await _short_body(reader, response)).strip()
            if status in FINAL:
                raise SubscriptionError(status, reason)
            raise _Retry(reason or f"HTTP {status}", code=status)
        channels = list(state.channels)  # the compound ids name these, in this order
        chunked = "chunked" in response.get("transfer-encoding", "").lower()
        body = _body(reader, chunked, idle_timeout)
        async with aclosing(_events(body)) as events:
            async for event_id, event, data in events:
                if event == GAP_EVENT:
                    gap = json.loads(data)
                    yield Gap(gap["channel"], gap["after"], gap.get("next"))
                elif event == DELETED_EVENT:
                    channel = json.loads(data)["channel"]
                    state.deleted(channel)
                    yield Deleted(channel)
                    if not state.channels:
                        return
                elif event_id is not None:
                    channel = channels[0]
                    if len(channels) > 1:
                        ids = event_id.split(",")
                        marked = next(i for i, part in enumerate(ids) if part.startswith("["))
                        channel = channels[marked]
                        for name, position in zip(
                            channels, parse_resume_id(event_id, len(channels)), strict=True
                        ):
                            if name in state.positions:
                                state.positions[name] = position
                        message_id = ids[marked].strip("[]")
                    else:
                        message_id = event_id
                        state.delivered(channel, message_id)
                    yield Message(channel, message_id, data.encode(), None, event or None)


async def _response_head(reader: BufferedByteReceiveStream) -> tuple[int, dict[str, str]]:
    head = (await reader.receive_until(b"\r\n\r\n", MAX_HEAD)).decode("latin-1")
    status_line, *header_lines = head.split("\r\n")
    try:
        status = int(status_line.split(" ", 2)[1])
    except (IndexError, ValueError):
        raise _Retry(f"not an HTTP response: {status_line[:80]!r}") from None
    fields: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return status, fields


async def _short_body(reader: BufferedByteReceiveStream, response: dict[str, str]) -> str:
    """The start of an error response's body (pushserver's are one line)."""
    length = response.get("content-length", "")
    if not length.isdigit():
        return ""
    with anyio.move_on_after(5):
        return (await reader.receive_exactly(min(int(length), 1024))).decode("utf-8", "replace")
    return ""


async def _body(
    reader: BufferedByteReceiveStream, chunked: bool, idle_timeout: float | None
) -> AsyncGenerator[bytes, None]:
    """The response body as it arrives; a read that waits ``idle_timeout`` gives up."""
    while True:
        with anyio.fail_after(idle_timeout):
            if chunked:
                size_line = await reader.receive_until(b"\r\n", 1024)
                size = int(size_line.split(b";", 1)[0], 16)
                if size == 0:
                    return
                if size > MAX_MESSAGE:
                    raise _Retry("a chunk larger than the client accepts")
                data = await reader.receive_exactly(size)
                await reader.receive_exactly(2)
            else:
                try:
                    data = await reader.receive()
                except anyio.EndOfStream:
                    return
        yield data


async def _events(
    body: AsyncGenerator[bytes, None],
) -> AsyncGenerator[tuple[str | None, str, str], None]:
    """``(id, event, data)`` of each event of an event stream (comments and events without
    data are skipped); ``event`` is ``""`` when the event names none."""
    buffer = b""
    event_id: str | None = None
    event = ""
    data: list[str] = []
    async with aclosing(body) as chunks:
        async for chunk in chunks:
            buffer += chunk
            if len(buffer) > MAX_MESSAGE:
                raise _Retry("an event larger than the client accepts")
            *complete, buffer = buffer.split(b"\n")
            for raw in complete:
                line = raw.removesuffix(b"\r").decode("utf-8", "replace")
                if line == "":
                    if data:
                        yield event_id, event, "\n".join(data)
                    event_id, event, data = None, "", []
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "data":
                    data.append(value)
                elif name == "event":
                    event = value
                elif name == "id":
                    event_id = value
