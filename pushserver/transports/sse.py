"""Server-sent events (``Accept: text/event-stream``), on sse-starlette's response.

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
  :mod:`pushserver.transports.streaming`). Resume with the ``Last-Event-ID`` header (what
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

* The stream ends without an event when the server shuts down; ``EventSource`` reconnects
  with ``Last-Event-ID`` after ``retry`` milliseconds and loses nothing.
* A subscriber that falls behind its bounded queue is caught up from the buffer (with a gap
  event where the messages are gone). One write that blocks longer than the location's
  ``send_timeout`` (a client that stopped reading) closes the connection.

Errors before the stream starts are short plain-text responses: 400 (bad channel list or
last event id), 404 (no such channel, unless ``create_on_get``), 503 (store unavailable).

Why sse-starlette's ``EventSourceResponse``: it brings the SSE headers (``Cache-Control:
no-store``, ``X-Accel-Buffering: no``), the comment pings under one send lock, the send
timeout and the disconnect listener. Its per-event path is one ``isinstance`` and one send:
events are handed over as bytes, encoded once per message (``Message.wire``) and shared by
every subscriber of a one-channel stream.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from sse_starlette.event import ServerSentEvent
from sse_starlette.sse import EventSourceResponse, SendTimeoutError

from ..config import LocationConfig
from ..exceptions import BackendUnavailable, ChannelNotFound
from ..http import Headers, Receive, Request, Send, respond_error
from ..hub import Closing, Hub
from ..message import Message, MessageId
from ..protocol import cors_headers
from .longpoll import Presence
from .streaming import Deleted, Gap, Item, Stream, parse_resume_id, query_parameter, split_channels

logger = logging.getLogger("pushserver.transports")

#: Milliseconds an EventSource waits before reconnecting.
RETRY_MS = 3000
GAP_EVENT = "pushserver.gap"
DELETED_EVENT = "pushserver.deleted"
_SEP = "\n"
_HELLO = ServerSentEvent(comment="hi", retry=RETRY_MS, sep=_SEP).encode()
_PING = ServerSentEvent(comment="ping", sep=_SEP)


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


def encode_multiplexed(stream: Stream, item: Item) -> bytes:
    head = f"id: {stream.compound_id(item.channel_id)}{_SEP}".encode()
    return head + item.message.wire("sse-noid", encode_event_without_id)


class SSETransport:
    """Serves one subscriber location's event-stream requests."""

    def __init__(
        self,
        location: LocationConfig,
        hub: Hub,
        base_headers: Headers,
        presence: Presence | None = None,
    ) -> None:
        self.location = location
        self.hub = hub
        self.headers = base_headers
        self.presence = presence

    def response_headers(self, request: Request) -> Headers:
        """The base headers; with several allowed origins, CORS names the request's own."""
        if len(self.location.allow_origin.split()) < 2:
            return self.headers
        cors = cors_headers(
            self.location.allow_origin, self.location.allow_credentials, request.header("origin")
        )
        names = {name for name, _ in cors}
        return [*(h for h in self.headers if h[0] not in names), *cors]

    async def __call__(
        self, request: Request, raw_channels: str, receive: Receive, send: Send
    ) -> None:
        headers = self.response_headers(request)
        resume = request.header("last-event-id")
        if resume is None:
            resume = query_parameter(request.scope.get("query_string", b""), "last_event_id")
        try:
            channels = split_channels(raw_channels)
            positions = dict(zip(channels, parse_resume_id(resume, len(channels)), strict=True))
        except ValueError as exc:
            await respond_error(send, 400, str(exc), headers)
            return
        try:
            for channel_id in channels:
                if not await self.hub.backend.exists(channel_id):
                    if not self.location.create_on_get:
                        raise ChannelNotFound(channel_id)
                    await self.hub.backend.create(channel_id)
                await self.hub.backend.touch(channel_id)
            await self.serve(request, positions, receive, send, headers)
        except ChannelNotFound as exc:
            await respond_error(send, 404, f"no such channel: {exc.channel_id}", headers)
        except BackendUnavailable as exc:
            await respond_error(send, 503, f"the channel store is unavailable: {exc}", headers)

    async def serve(
        self,
        request: Request,
        positions: dict[str, MessageId],
        receive: Receive,
        send: Send,
        headers: Headers,
    ) -> None:
        location = self.location
        async with self.hub.subscription(list(positions)) as subscription:
            stream = Stream(self.hub, subscription, positions)
            response = EventSourceResponse(
                self.events(stream),
                ping=location.ping_interval,
                ping_message_factory=lambda: _PING,
                sep=_SEP,
                send_timeout=location.send_timeout or None,
            )
            response.raw_headers.extend(headers)
            tokens = []
            if self.presence is not None:
                tokens = [self.presence.subscribed(request, c) for c in positions]
            try:
                await response(request.scope, receive, send)
            except SendTimeoutError:
                logger.info(
                    "event-stream subscriber %s on %s stopped reading for %ss: disconnected",
                    request.client_host,
                    ",".join(positions) or "-",
                    location.send_timeout,
                )
            finally:
                if self.presence is not None:
                    for token in tokens:
                        self.presence.unsubscribed(token)

    async def events(self, stream: Stream) -> AsyncIterator[bytes]:
        yield _HELLO
        multiplexed = len(stream.positions) > 1
        async for event in stream.items():
            if isinstance(event, Item):
                if multiplexed:
                    yield encode_multiplexed(stream, event)
                else:
                    yield event.message.wire("sse", encode_event)
            elif isinstance(event, Gap):
                yield ServerSentEvent(event.json(), event=GAP_EVENT, sep=_SEP).encode()
            elif isinstance(event, Deleted):
                yield ServerSentEvent(event.json(), event=DELETED_EVENT, sep=_SEP).encode()
                if not stream.positions:
                    return
            elif isinstance(event, Closing):
                return
