"""Server-sent events (``Accept: text/event-stream``).

A plain ``new EventSource(url)`` works; so does any SSE client. The stream is::

    : hi
    retry: 3000

    id: 1700000000:0
    event: tick                  (only when published with X-EventSource-Event)
    data: first line of the body
    data: second line

    : ping                       (every 'ping_interval' seconds; 0 turns pings off)

* ``id:`` is the message id, ``<time>:<tag>``, the position long-poll reports as
  ``Last-Modified`` / ``Etag``; a multiplexed stream sends the compound id (see
  :mod:`pushserver.protocol`). Resume with the ``Last-Event-ID`` header (what
  ``EventSource`` sends when it reconnects) or the ``last_event_id`` query parameter; the
  header wins. The stream continues exactly after that id. No id: every retained message.
* ``data:`` lines carry the body as UTF-8 text (invalid bytes become U+FFFD: send binary
  over WebSocket). SSE clients join the lines with ``\\n``, so ``\\r\\n`` arrives as ``\\n``.
* Reserved events, with JSON data and no ``id:``:

  ``pushserver.gap``  ``{"type":"gap","channel":C,"after":ID,"next":ID|null}``: messages
      after ``after`` left the buffer before this subscriber got them; the next event is
      the oldest retained one, ``next``.
  ``pushserver.deleted``  ``{"type":"deleted","channel":C}``: the channel was deleted. The
      stream goes on for its other channels and ends after the last one. (``EventSource``
      reconnects and gets 404 unless the location has ``create_on_get``.)

* When the server shuts down the stream ends with a comment and a new ``retry`` (a random
  250-3000 ms, so that its subscribers do not all come back at once), no event::

    : shutting down
    retry: 1234

  ``EventSource`` reconnects with ``Last-Event-ID`` after that long and loses nothing.
* A subscriber that falls behind its bounded queue is caught up from the buffer (with a gap
  event where the messages are gone). One write that blocks longer than the location's
  ``send_timeout`` (a client that stopped reading) closes the connection.

Errors before the stream starts are short plain-text responses: 400 (bad channel list or
last event id), and what :mod:`pushserver.transports.admission` refuses: 403 (not
authorized, or a channel has its ``max_subscribers``), 404 (no such channel, unless
``create_on_get``), 503 (the authorizer did not answer, or the store is unavailable), 507
(the store is full).

The response is written here, not by sse-starlette's ``EventSourceResponse``: that one sends
each event alone under its own timeout scope and runs four tasks per connection (body loop,
ping, disconnect listener, exit signal), and what could be reused of it is private. Of
sse-starlette only the public ``ServerSentEvent`` encoding is used. :class:`EventStreamResponse`
sends what ``EventSourceResponse`` sends (its headers, ``Cache-Control: no-store``,
``X-Accel-Buffering: no``, ``text/event-stream; charset=utf-8``; the ping comment; HEAD
answered with the headers and an empty body) and:

* writes everything the subscriber is owed at that moment as one body chunk (events encoded
  once per message, ``Message.wire``, shared by every subscriber of a one-channel stream),
  with the send timeout around the whole write;
* runs the body loop in the request's own task, watched by a
  :class:`~pushserver.transports.streaming.SendGuard` (on pushserver's asyncio worker a
  listener and a shared timer, a second task elsewhere) that listens for the disconnect,
  sends the ping (under the send timeout) and enforces the send timeout. Under our hypercorn
  the server ends streams itself on shutdown (``Hub.shutdown``);
* lets the fan-out write a message for a subscriber that is keeping up straight to the
  connection, with no wake of this task (:meth:`Stream.batch`'s ``writer``): through the
  engine's writer where it offers one (:func:`pushserver.engine.send_now_of`: pushserver's
  worker, HTTP/1.1), by stepping the server's ``send`` on any other asyncio server
  (:func:`pushserver.transports.eager.writer_for`);
* keeps no send lock: hypercorn writes each send whole and in order (see
  :class:`EventStreamResponse`).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Sequence
from typing import Any

import anyio
from sse_starlette import ServerSentEvent

from ..engine import SendNow, inbox_of
from ..exceptions import BackendUnavailable, ChannelNotFound, StoreFull
from ..http import Headers, Receive, Request, Scope, Send, query_parameter
from ..http import Message as ASGIMessage
from ..hub import Closing, Delivery
from ..message import Message, MessageId
from ..protocol import format_compound_id, parse_resume_id, split_channels
from .admission import Refusal, RefusalKind
from .base import Counted, HTTPTransport
from .eager import EagerSend, release, writer_for
from .streaming import Deleted, Gap, SendGuard, Stream

logger = logging.getLogger("pushserver.transports")

#: Milliseconds an EventSource waits before reconnecting.
RETRY_MS = 3000
GAP_EVENT = "pushserver.gap"
DELETED_EVENT = "pushserver.deleted"
_SEP = "\n"
_HELLO = ServerSentEvent(comment="hi", retry=RETRY_MS, sep=_SEP).encode()
_PING = ServerSentEvent(comment="ping", sep=_SEP)
_CONNECTION_CLOSE = (b"connection", b"close")
#: Range of the ``retry:`` (milliseconds) a stream ends with when the server shuts down:
#: random per subscriber, so that they do not all reconnect in the same instant.
SHUTDOWN_RETRY_MS = (250, RETRY_MS)


def shutdown_block() -> bytes:
    """The last block of a stream the server ends to shut down."""
    retry = random.randint(*SHUTDOWN_RETRY_MS)
    return ServerSentEvent(comment="shutting down", retry=retry, sep=_SEP).encode()


def _text(message: Message) -> str:
    return message.body.decode("utf-8", "replace")


def encode_event(message: Message) -> bytes:
    """A one-channel stream's event: the same bytes for every subscriber."""
    return ServerSentEvent(
        _text(message), event=message.event, id=str(message.id), sep=_SEP
    ).encode()


def encode_event_without_id(message: Message) -> bytes:
    """A multiplexed stream's event minus the ``id:`` line, which is per subscriber."""
    return ServerSentEvent(_text(message), event=message.event, sep=_SEP).encode()


def encode_multiplexed(ids: dict[str, MessageId], item: Delivery) -> bytes:
    """The event with its compound id; ``ids`` are the positions once it is delivered."""
    head = f"id: {format_compound_id(ids.values(), list(ids).index(item.channel_id))}{_SEP}"
    return head.encode() + item.message.wire("sse-noid", encode_event_without_id)


def _body_event(message: Message) -> dict[str, Any]:
    """A one-channel stream's event as the ASGI body chunk that writes it alone."""
    return {
        "type": "http.response.body",
        "body": message.wire("sse", encode_event),
        "more_body": True,
    }


#: What an event stream's response starts with: what sse-starlette's ``EventSourceResponse``
#: sends, in its order (the location's headers follow; on HTTP/1.x the serving transport
#: replaces the ``connection`` header).
STREAM_HEADERS = (
    (b"cache-control", b"no-store"),
    (b"connection", b"keep-alive"),
    (b"x-accel-buffering", b"no"),
    (b"content-type", b"text/event-stream; charset=utf-8"),
)
_PING_BODY = {"type": "http.response.body", "body": _PING.encode(), "more_body": True}
_END_BODY = {"type": "http.response.body", "body": b"", "more_body": False}


class SendTimeout(TimeoutError):
    """A write was blocked for longer than the location's ``send_timeout``."""


class EventStreamResponse:
    """Writes a :class:`Stream` as an event stream, in batches (module docstring)."""

    __slots__ = (
        "_asgi_send",
        "_ids",
        "_multiplexed",
        "_sender",
        "active",
        "guard",
        "ping_interval",
        "raw_headers",
        "send_timeout",
        "start",
        "status_code",
        "stream",
    )

    def __init__(
        self,
        stream: Stream,
        *,
        ping: float,
        send_timeout: float | None,
        headers: Headers | None = None,
        start: ASGIMessage | None = None,
    ) -> None:
        self.stream = stream
        self.status_code = 200
        #: The response's headers: :data:`STREAM_HEADERS` unless given (then the caller's,
        #: shared by its streams and never changed, so every send is given a copy).
        self.raw_headers: Headers = list(STREAM_HEADERS) if headers is None else headers
        #: The ``http.response.start`` message, shared by the caller's streams (with these
        #: headers and the status), sent as it is only where the ASGI server's own stream
        #: takes it (the engine's writer is found: no middleware in between that
        #: could change a message). An idle stream's server keeps it for the response's
        #: life (hypercorn's ``HTTPStream.response``): one for all, not a dict and a list
        #: each.
        self.start = start
        self.ping_interval = ping
        self.send_timeout = send_timeout
        self.guard = SendGuard(send_timeout)
        # No send lock: hypercorn writes each ASGI send whole, in the order the sends were
        # made, under its own per-connection lock. ``active`` is cleared before the last
        # write, and the ping checks it with no await in between, so no ping can follow the
        # end of the body. (The WebSocket transport relies on the same order.)
        self.active = True
        self._multiplexed = len(stream.positions) > 1
        # Compound ids: every channel of the URL, in its order, at its last delivered id.
        # The stream forgets deleted channels; these keep them, so ids keep their shape.
        # (One channel: unused, and not copied.)
        self._ids = dict(stream.positions) if self._multiplexed else stream.positions
        self._sender: SendNow | None = None
        self._asgi_send: Send | None = None

    async def _send(self, send: Send, message: ASGIMessage) -> None:
        """One send under the send timeout (what the watching task sends)."""
        with anyio.move_on_after(self.send_timeout) as scope:
            await send(message)
        if scope.cancelled_caught:
            raise SendTimeout

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """What writes the response, for the caller to await. Not a coroutine of its own:
        one frame fewer held by every open stream. Failures come out bare (SendTimeout,
        BackendUnavailable); a write blocked past the send timeout ends it with
        ``guard.timed_out`` set, for the caller to raise :class:`SendTimeout`."""
        if scope["method"] == "HEAD":
            return self._head(send)
        # Kept here, not in a closure and a partial: bound methods are smaller, and the
        # watcher holds its ping for as long as the stream is open.
        self._sender, self._asgi_send = writer_for(scope, send)
        return self.guard.run(
            self._write_stream,
            receive,
            self._disconnected,
            self._ping,
            self.ping_interval,
            inbox_of(scope, receive),
        )

    async def _head(self, send: Send) -> None:
        # The headers and no stream, as sse-starlette answers HEAD.
        start = {"type": "http.response.start", "status": self.status_code}
        await self._send(send, {**start, "headers": list(self.raw_headers)})
        await self._send(send, _END_BODY)

    async def _ping(self) -> None:
        send = self._asgi_send
        if self.active and send is not None:
            await self._send(send, _PING_BODY)

    async def _disconnected(self, message: ASGIMessage) -> bool:
        """Whether a received message ends the stream (the client left)."""
        if message["type"] == "http.disconnect":
            self.active = False
            return True
        return False

    def write_now(self, item: Delivery) -> bool:
        """A live message, written at once by the fan-out (:meth:`Stream.batch`)."""
        sender = self._sender
        if sender is None:
            return False
        if not self._multiplexed:
            return sender.send_now(item.message.wire("sse-body", _body_event))
        ids = self._ids
        channel_id = item.channel_id
        before = ids[channel_id]
        ids[channel_id] = item.message.id
        body = encode_multiplexed(ids, item)
        if sender.send_now({"type": "http.response.body", "body": body, "more_body": True}):
            return True
        ids[channel_id] = before
        return False

    def close(self) -> None:
        """After the response was awaited, however that ended: the writers are let go."""
        release(self._sender)
        self._sender = None
        self._asgi_send = None

    async def _write_stream(self) -> None:
        send = self._asgi_send
        assert send is not None
        stream = self.stream
        guard = self.guard
        clock = time.monotonic
        multiplexed = self._multiplexed
        ids = self._ids
        writer = None if self._sender is None else self
        start = self.start
        # The shared start only where the server's own stream writes it (the engine's
        # writer): through anything else (EagerSend's send) a middleware may change it.
        if start is None or self._sender is None or type(self._sender) is EagerSend:
            start = {
                "type": "http.response.start",
                "status": self.status_code,
                "headers": list(self.raw_headers),
            }
        await send(start)
        # None while waiting: an idle stream holds no empty list.
        chunks: list[bytes] | None = [_HELLO]
        done = False
        while True:
            if chunks:
                body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                chunks = None
                guard.started = clock()
                await send({"type": "http.response.body", "body": body, "more_body": True})
                guard.started = 0.0
            if done:
                break
            for event in await stream.batch(writer):
                if chunks is None:
                    chunks = []
                if type(event) is Delivery:
                    if multiplexed:
                        ids[event.channel_id] = event.message.id
                        chunks.append(encode_multiplexed(ids, event))
                    else:
                        chunks.append(event.message.wire("sse", encode_event))
                elif isinstance(event, Gap):
                    chunks.append(ServerSentEvent(event.json(), event=GAP_EVENT, sep=_SEP).encode())
                elif isinstance(event, Deleted):
                    chunks.append(
                        ServerSentEvent(event.json(), event=DELETED_EVENT, sep=_SEP).encode()
                    )
                    done = not stream.positions
                elif isinstance(event, Closing):
                    chunks.append(shutdown_block())
                    done = True
        self.active = False  # no ping after this (see __init__)
        await send(_END_BODY)


class SSETransport(HTTPTransport):
    """Serves one subscriber location's event-stream requests."""

    #: The ``http.response.start`` of this location's streams, by the location's headers
    #: (one list per allowed origin, kept by :attr:`cors`) and HTTP/1.x or not: made once.
    _starts: dict[tuple[int, bool], tuple[Headers, ASGIMessage]] | None = None

    def _start(self, headers: Headers, http1: bool) -> ASGIMessage:
        """The start of a stream with the location's ``headers``: the same objects for
        every stream (never changed; see :attr:`EventStreamResponse.start`)."""
        starts = self._starts
        if starts is None:
            starts = self._starts = {}
        key = (id(headers), http1)
        known = starts.get(key)
        if known is not None and known[0] is headers:
            return known[1]
        stream_headers = [*STREAM_HEADERS, *headers]
        if http1:
            # Whatever ends a stream (a shutdown, the last channel deleted) ends the
            # connection too: the client then reconnects on a new one, instead of reusing
            # this one while the server closes it. (HTTP/2 has no such header.) It replaces
            # the "Connection: keep-alive" of STREAM_HEADERS.
            stream_headers = [h for h in stream_headers if h[0] != b"connection"]
            stream_headers.append(_CONNECTION_CLOSE)
        start = {"type": "http.response.start", "status": 200, "headers": stream_headers}
        if len(starts) >= 64:  # bounded, whatever hands it headers
            starts.clear()
        starts[key] = (headers, start)
        return start

    async def __call__(
        self,
        request: Request,
        raw_channels: str,
        receive: Receive,
        send: Send,
        connections: Counted | None = None,
    ) -> None:
        """Serve one event stream; at the end take it off ``connections`` if given (the
        subscriber location hands its count over, so that no frame of its own is held)."""
        try:
            headers = self.response_headers(request)
            resume = request.header("last-event-id")
            if resume is None:
                resume = query_parameter(request.scope.get("query_string", b""), "last_event_id")
            try:
                location = self.location
                channels = split_channels(
                    raw_channels, location.max_channel_id_length, location.max_channels
                )
                positions = dict(zip(channels, parse_resume_id(resume, len(channels)), strict=True))
            except ValueError as exc:
                await self.respond_refused(
                    send, Refusal(RefusalKind.BAD_REQUEST, str(exc)), headers
                )
                return
            try:
                admission = await self.admitter.admit(request, channels)
                if isinstance(admission, Refusal):
                    await self.respond_refused(send, admission, headers)
                    return
                try:
                    # Served here, not in a method of its own: its frame would be held by every
                    # open stream.
                    # Not ``async with hub.subscription()``: its context object and bound
                    # ``__aexit__`` would be held by every open stream.
                    subscription = await self.hub.subscribe(list(positions))
                    try:
                        stream = Stream(self.hub, subscription, positions)
                        http1 = request.scope.get("http_version", "1.1") in ("1.0", "1.1")
                        start = self._start(headers, http1)
                        response = EventStreamResponse(
                            stream,
                            ping=location.ping_interval,
                            send_timeout=location.send_timeout or None,
                            headers=start["headers"],
                            start=start,
                        )
                        tokens: Sequence[object] = ()  # no empty list held for the stream's life
                        if self.presence is not None and self.notify:
                            tokens = [self.presence.subscribed(request, c) for c in positions]
                        metrics = self.hub.metrics
                        metrics.eventsource += 1
                        try:
                            try:
                                await response(request.scope, receive, send)
                            finally:
                                response.close()
                            if response.guard.timed_out:
                                raise SendTimeout
                        except SendTimeout:
                            metrics.slow_eventsource += 1
                            logger.info(
                                "event-stream subscriber %s on %s stopped reading for %ss: "
                                "disconnected",
                                request.client_host,
                                ",".join(positions) or "-",
                                location.send_timeout,
                            )
                        finally:
                            metrics.eventsource -= 1
                            if self.presence is not None:
                                for token in tokens:
                                    self.presence.unsubscribed(token)
                    finally:
                        await self.hub.unsubscribe_shielded(subscription)
                finally:
                    admission.release()
            except (ChannelNotFound, StoreFull, BackendUnavailable) as exc:  # after the admission
                await self.respond_store_failure(send, exc, headers)
        finally:
            if connections is not None:
                connections.active -= 1
