"""WebSocket subscribers, on the ASGI WebSocket protocol (hypercorn does the framing).

Connect to the subscriber URL, e.g. ``ws://host/subscriber/news`` or, multiplexed,
``ws://host/subscriber/news,sport`` (see :mod:`pushserver.protocol`). Resume
with ``?last_event_id=<id>`` (a compound id for several channels) exactly as for server-sent
events; without it the retained messages come first. This holds in every mode below.

Modes
    The client picks the framing with the subprotocols it offers
    (``Sec-WebSocket-Protocol``; ``new WebSocket(url, ['pushserver.v1'])`` in a browser).
    The server takes the first offered one it speaks and echoes it; when it speaks none of
    them (or none is offered) it answers without a subprotocol, in the plain mode:

    ================  =======================================================================
    (none)            **plain**: each message is one frame holding exactly the published
                      body, nothing else in-band; commands from the client are ignored
    ``ws+meta.nchan`` **nchan's**: ``id: <id>``, ``content-type: <type>``, an empty line,
                      the body (nchan's own client, NchanSubscriber, reads it); commands
                      from the client are ignored
    ``pushserver.v1`` **pushserver's own**: message frames with the channel, control frames
                      (gap, deleted, subscribed, errors, pings) and JSON commands, below
    ================  =======================================================================

    In every mode a frame is a text frame when the content type is textual (``text/*``,
    JSON, XML, JavaScript, form data; :func:`is_textual`) and the body is UTF-8, otherwise a
    binary frame (the header lines, where the mode has them, in UTF-8 before the raw body):
    a body is never re-encoded. Each frame is encoded once per mode and shared by every
    subscriber (a multiplexed ``ws+meta.nchan`` connection: the body part; its compound id
    is its own).

    Without control frames, the plain and ``ws+meta.nchan`` modes tell what ``pushserver.v1``
    sends as a frame by other means: the last channel of the connection deleted closes with
    4410 (another one deleted is left out silently); messages lost after the position (a
    gap) close a plain connection with 4416, since its client has no id to resume from,
    while ``ws+meta.nchan`` goes on with the oldest retained message as nchan does (the
    ``id:`` lines say where it is). Keepalive is by WebSocket ping frames (below).

``pushserver.v1``: server to client
    **Message frames** start with header lines, then an empty line, then the body::

        id: 1700000000:0
        channel: news
        content-type: text/plain
        event: tick                 (only when published with X-EventSource-Event)

        <body>

    ``id`` is the message id, as long-poll's Last-Modified / Etag and SSE's ``id:``.

    **Control frames** are text frames holding one JSON object (they start with ``{``,
    message frames with ``id:``): ``{"type":"gap","channel":C,"after":ID,"next":ID|null}``
    (as the SSE gap event), ``{"type":"deleted","channel":C}``,
    ``{"type":"subscribed","channel":C}``, ``{"type":"unsubscribed","channel":C}``,
    ``{"type":"pong"}``, ``{"type":"ping"}`` and ``{"type":"error","error":TEXT}`` (plus
    ``"channel"`` when it concerns one). A client ignores types it does not know.

``pushserver.v1``: client to server
    Text frames holding one JSON command; a bad command gets an error frame, never a close:

    * ``{"subscribe": "sport"}`` or ``{"subscribe": "sport", "last_event_id": "1700000000:3"}``
      adds a channel to the open connection: ``subscribed`` is sent first, then what the
      channel owes after that id (every retained message without one); ``"sig"`` carries
      the channel's signature where the location is ``signed``. At most the
      location's ``max_channels`` (255) channels per connection; unknown channels are
      refused unless ``create_on_get``.
    * ``{"unsubscribe": "sport"}``: nothing more from that channel; ``unsubscribed`` follows.
    * ``{"ping": 1}``: answered with ``pong`` (a heartbeat browsers can send).

Keepalive
    Every ``ping_interval`` seconds of the location (0 = never) the server sends, with
    ``pushserver.v1``, a ``{"type":"ping"}`` control frame (browsers cannot see protocol
    pings), and in the other modes a WebSocket ping frame (where the server can send one:
    pushserver's own server can; another ASGI server pings on its own settings). Either
    keeps proxies from closing idle connections. Protocol-level pings from clients are
    answered by hypercorn with pongs.

Close codes
    ========  =============================================================================
    1001      the server is shutting down: reconnect with ``last_event_id``
    4400      bad request: malformed channel list or ``last_event_id``, too many channels
    4403      not allowed: WebSocket is not enabled at this location or for this process,
              or the ``Origin`` is not one of the location's ``allow_origin``, or the
              subscriber authorization refused it (:mod:`pushserver.authorize`)
    4404      no such channel (the location has no ``create_on_get``)
    4408      too slow: one write blocked longer than the location's ``send_timeout``
    4410      the channel was deleted (the last one of the connection)
    4416      plain mode only: messages after the position are gone (a gap)
    4507      the channel store is full: creating the channel (``create_on_get``) would
              pass its ``memory_limit`` or ``max_channels``
    1013      the channel store is unavailable, the authorizer did not answer, or the
              process is at ``max_connections``: try again later
    ========  =============================================================================

    The refusals of :mod:`.admission` close with the code of their kind (:data:`CLOSE_CODES`).
    Refusals are sent after accepting the handshake (with the subprotocol chosen), so a
    browser sees the code and reason. A subscriber that falls behind its bounded queue is
    caught up from the buffer (with a gap frame where the messages are gone); only a
    blocked write disconnects it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Iterable, MutableMapping
from contextlib import suppress
from typing import Any

import anyio

from ..authorize import SIGNATURE_PARAMETER, LocationAuthorizer
from ..config import LocationConfig
from ..engine import inbox_of
from ..exceptions import BackendUnavailable, ChannelNotFound, StoreFull
from ..http import Headers, Receive, Request, Scope, Send, query_parameter
from ..hub import Closing, Delivery, Hub
from ..message import ORIGIN, Message, MessageId
from ..protocol import check_channel_id, format_compound_id, parse_resume_id, split_channels
from .admission import Admission, Refusal, RefusalKind, store_refusal
from .base import Counted, Presence, SubscriberTransport
from .eager import release, writer_for
from .streaming import Deleted, Gap, SendGuard, Stream

logger = logging.getLogger("pushserver.transports")

CLOSE_GOING_AWAY = 1001
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_BAD_REQUEST = 4400
CLOSE_NOT_ALLOWED = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_TOO_SLOW = 4408
CLOSE_DELETED = 4410
CLOSE_GAP = 4416
CLOSE_STORE_FULL = 4507

#: pushserver's own subprotocol: the full protocol (channel headers, control frames, commands).
PUSHSERVER_V1 = "pushserver.v1"
#: nchan's subprotocol: ``id:`` and ``content-type:`` lines before each body.
NCHAN_META = "ws+meta.nchan"
#: The subprotocols the server speaks; anything else (or nothing) is the plain mode, None.
SUBPROTOCOLS = frozenset({PUSHSERVER_V1, NCHAN_META})

#: Longest client command accepted (a channel id and an id fit easily).
MAX_COMMAND = 8192
#: Seconds a close frame may take to leave before the connection is dropped anyway.
CLOSE_TIMEOUT = 1.0

_TEXT_TYPES = frozenset(
    {
        "application/json",
        "application/javascript",
        "application/ecmascript",
        "application/xml",
        "application/x-www-form-urlencoded",
    }
)


def is_textual(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media.startswith("text/") or media in _TEXT_TYPES or media.endswith(("+json", "+xml"))


def choose_subprotocol(offered: Iterable[str] | None) -> str | None:
    """The mode of a connection: the first of the client's ``offered`` subprotocols the
    server speaks, or None (the plain mode) when it speaks none of them."""
    for name in offered or ():
        if name in SUBPROTOCOLS:
            return name
    return None


def _data_event(head: str, message: Message) -> dict[str, Any]:
    """``head`` then the body: a text frame when it is textual UTF-8, else a binary one."""
    if is_textual(message.content_type):
        try:
            return {"type": "websocket.send", "text": head + message.body.decode("utf-8")}
        except UnicodeDecodeError:
            pass  # declared textual but is not UTF-8: a binary frame carries it intact
    return {"type": "websocket.send", "bytes": head.encode() + message.body}


def encode_frame(channel_id: str, message: Message) -> dict[str, Any]:
    """The ASGI send event of a ``pushserver.v1`` message frame (see the module docstring)."""
    event = f"event: {message.event}\n" if message.event else ""
    return _data_event(
        f"id: {message.id}\nchannel: {channel_id}\ncontent-type: {message.content_type}\n{event}\n",
        message,
    )


def _encode_frame(message: Message, channel_id: str) -> dict[str, Any]:
    return encode_frame(channel_id, message)  # the order Message.wire calls it in


def encode_plain(message: Message) -> dict[str, Any]:
    """The ASGI send event of a plain-mode frame: the published body and nothing else."""
    return _data_event("", message)


def nchan_head(message_id: str, content_type: str) -> str:
    """The header lines of a ``ws+meta.nchan`` frame, as nchan writes them (``content-type``
    left out when the message has none)."""
    if content_type:
        return f"id: {message_id}\ncontent-type: {content_type}\n\n"
    return f"id: {message_id}\n\n"


def encode_nchan(message: Message, message_id: str | None = None) -> dict[str, Any]:
    """The ASGI send event of a ``ws+meta.nchan`` frame; ``message_id`` is the compound id
    of a multiplexed connection (the message's own id otherwise)."""
    head = nchan_head(str(message.id) if message_id is None else message_id, message.content_type)
    if message_id is None:
        return _data_event(head, message)
    # Multiplexed: the id is the subscriber's own; the body part is shared.
    plain = message.wire("ws-plain", encode_plain)
    text = plain.get("text")
    if text is not None:
        return {"type": "websocket.send", "text": head + text}
    return {"type": "websocket.send", "bytes": head.encode() + plain["bytes"]}


#: Longest close reason in bytes: a close frame's payload is at most 125 bytes, 2 of them the code.
MAX_CLOSE_REASON = 123


def close_reason(text: str) -> str:
    """``text`` cut to :data:`MAX_CLOSE_REASON` bytes of UTF-8, on a character boundary.

    A refusal names what it refuses (a channel id, an authorizer's reason), which may be
    longer, and not ASCII: cutting by characters could still overflow the frame. wsproto
    cuts too, but the ASGI event is the application's to get right for any server.
    """
    data = text.encode("utf-8")
    if len(data) <= MAX_CLOSE_REASON:
        return text
    return data[:MAX_CLOSE_REASON].decode("utf-8", "ignore")  # drops a cut character


def control(kind: str, **fields: Any) -> dict[str, Any]:
    return {
        "type": "websocket.send",
        "text": json.dumps({"type": kind, **fields}, separators=(",", ":")),
    }


_PING = control("ping")
_PONG = control("pong")

#: The ASGI extension (in the scope's ``extensions``) of a server that sends a WebSocket
#: ping frame for a ``{"type": "websocket.ping"}`` event: pushserver's own server
#: (:func:`pushserver.hypercorn.fixes.send_websocket_pings`). ASGI itself has no such event.
PING_EXTENSION = "pushserver.websocket.ping"
_PROTOCOL_PING = {"type": "websocket.ping"}


def parse_command(text: str, max_length: int = 0) -> tuple[str, str | None, MessageId]:
    """``(action, channel_id, position)`` of a client command; :class:`ValueError` if bad."""
    if len(text) > MAX_COMMAND:
        raise ValueError(f"a command is at most {MAX_COMMAND} characters")
    try:
        command = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than json allows
        raise ValueError('a command is a JSON object, e.g. {"subscribe": "news"}') from None
    if not isinstance(command, dict):
        raise ValueError('a command is a JSON object, e.g. {"subscribe": "news"}')
    if "ping" in command:
        return "ping", None, ORIGIN
    for action in ("subscribe", "unsubscribe"):
        if action in command:
            channel_id = command[action]
            if not isinstance(channel_id, str):
                raise ValueError(f"{action!r} takes a channel id string")
            check_channel_id(channel_id, max_length)
            position = ORIGIN
            resume = command.get("last_event_id")
            if action == "subscribe" and resume is not None:
                if not isinstance(resume, str):
                    raise ValueError("'last_event_id' is a message id string")
                position = MessageId.parse(resume)
            return action, channel_id, position
    raise ValueError("unknown command: use subscribe, unsubscribe or ping")


def command_signature(text: str) -> str | None:
    """The ``"sig"`` of a (valid) subscribe command: its channel's signature, if any."""
    signature = json.loads(text).get(SIGNATURE_PARAMETER)
    return signature if isinstance(signature, str) else None


#: The close code of each refusal (:mod:`.admission`).
CLOSE_CODES = {
    RefusalKind.BAD_REQUEST: CLOSE_BAD_REQUEST,
    RefusalKind.FORBIDDEN: CLOSE_NOT_ALLOWED,
    RefusalKind.UNAVAILABLE: CLOSE_TRY_AGAIN_LATER,
    RefusalKind.NOT_FOUND: CLOSE_NOT_FOUND,
    RefusalKind.STORE_FULL: CLOSE_STORE_FULL,
    RefusalKind.TOO_MANY_SUBSCRIBERS: CLOSE_NOT_ALLOWED,
}
#: A full store's reason in a close or an error frame (a close reason is short: the budget
#: it reached is in the HTTP answer and the log).
STORE_FULL = "the channel store is full"
#: The HTTP-like ``status`` a ``subscribe`` command's error frame carries, by refusal kind
#: (the others have none).
COMMAND_STATUS = {
    RefusalKind.FORBIDDEN: 403,
    RefusalKind.UNAVAILABLE: 503,
    RefusalKind.STORE_FULL: 507,
}


def refusal_frame(refusal: Refusal, channel_id: str) -> dict[str, Any]:
    """The error control frame answering a ``subscribe`` command the admission refused."""
    kind = refusal.kind
    if kind is RefusalKind.NOT_FOUND:
        error = "no such channel"  # the frame's "channel" names it
    elif kind is RefusalKind.STORE_FULL:
        error = STORE_FULL
    else:
        error = refusal.reason
    status = COMMAND_STATUS.get(kind)
    if status is None:
        return control("error", error=error, channel=channel_id)
    return control("error", error=error, channel=channel_id, status=status)


class _TooSlow(Exception):
    pass


class WebSocketTransport(SubscriberTransport):
    """Serves one subscriber location's WebSocket connections."""

    def __init__(
        self,
        location: LocationConfig,
        hub: Hub,
        server_header: tuple[bytes, bytes],
        presence: Presence | None = None,
        *,
        enabled: bool = True,
        authorizer: LocationAuthorizer | None = None,
    ) -> None:
        super().__init__(location, hub, presence, authorizer)
        self.headers: Headers = [server_header]
        self.enabled = enabled
        origins = location.allow_origin.split()
        self.origins = None if "*" in origins else frozenset(origins)

    async def __call__(
        self,
        scope: Scope,
        raw_channels: str,
        receive: Receive,
        send: Send,
        connections: Counted | None = None,
    ) -> None:
        """Serve one WebSocket; at the end take it off ``connections`` if given (the
        subscriber location hands its count over, so that no frame of its own is held)."""
        try:
            if (await receive())["type"] != "websocket.connect":
                return
            request = Request(scope, "GET")
            mode = choose_subprotocol(scope.get("subprotocols"))
            if not self.enabled:
                await self.refuse(send, CLOSE_NOT_ALLOWED, "WebSocket is not enabled here", mode)
                return
            origin = request.header("origin")
            if self.origins is not None and origin is not None and origin not in self.origins:
                await self.refuse(send, CLOSE_NOT_ALLOWED, "this Origin is not allowed", mode)
                return
            try:
                location = self.location
                channels = split_channels(
                    raw_channels, location.max_channel_id_length, location.max_channels
                )
                resume = query_parameter(scope.get("query_string", b""), "last_event_id")
                positions = dict(zip(channels, parse_resume_id(resume, len(channels)), strict=True))
            except ValueError as exc:
                await self.close_refused(send, Refusal(RefusalKind.BAD_REQUEST, str(exc)), mode)
                return
            try:
                admission = await self.admitter.admit(request, channels)
                if isinstance(admission, Refusal):
                    await self.close_refused(send, admission, mode)
                    return
                try:
                    await send(
                        {"type": "websocket.accept", "headers": self.headers, "subprotocol": mode}
                    )
                    # Not ``async with hub.subscription()``: its context object and bound
                    # ``__aexit__`` would be held by every open stream.
                    subscription = await self.hub.subscribe(channels)
                    try:
                        stream = Stream(self.hub, subscription, positions)
                        connection = _Connection(self, request, stream, receive, send, mode)
                        # From here the connection unsubscribes them, channel by channel.
                        connection.tokens = admission.hand_over() or None
                        metrics = self.hub.metrics
                        metrics.websocket += 1
                        try:
                            try:
                                await connection.run()
                            except (_TooSlow, BackendUnavailable) as exc:
                                connection.failed(exc)
                            await connection.close()
                        finally:
                            connection.unsubscribe()
                            release(connection.sender)
                            metrics.websocket -= 1
                    finally:
                        await self.hub.unsubscribe_shielded(subscription)
                finally:
                    admission.release()
            except (ChannelNotFound, StoreFull) as exc:  # the store, after the admission
                await self.close_refused(send, store_refusal(exc), mode)
            except BackendUnavailable:
                await self.refuse(
                    send, CLOSE_TRY_AGAIN_LATER, "the channel store is unavailable", mode
                )
        finally:
            if connections is not None:
                connections.active -= 1

    async def close_refused(self, send: Send, refusal: Refusal, mode: str | None) -> None:
        """Close a connection the admission refused, with the kind's code (:data:`CLOSE_CODES`)."""
        reason = STORE_FULL if refusal.kind is RefusalKind.STORE_FULL else refusal.reason
        await self.refuse(send, CLOSE_CODES[refusal.kind], reason, mode)

    async def refuse(
        self, send: Send, code: int, reason: str, subprotocol: str | None = None
    ) -> None:
        """Close with ``code``, accepting first if the handshake is still open (with the
        ``subprotocol`` chosen: a browser that asked for one fails a connection without
        it, and would not see the code)."""
        accept = {"type": "websocket.accept", "headers": self.headers, "subprotocol": subprotocol}
        with anyio.move_on_after(CLOSE_TIMEOUT):
            with suppress(Exception):  # already accepted: hypercorn refuses a second accept
                await send(accept)
            await send({"type": "websocket.close", "code": code, "reason": close_reason(reason)})


class _Connection:
    """One open connection: the sender in the request's task, and the watching
    (:meth:`SendGuard.run`: commands, disconnect, send timeout, keepalive; a task of its own
    only where the engine offers no inbox); the first to finish decides how the connection
    ends and cancels the other."""

    __slots__ = (
        "_send",
        "close_code",
        "close_reason",
        "guard",
        "ids",
        "location",
        "mode",
        "receive",
        "request",
        "sender",
        "stream",
        "tokens",
        "transport",
    )

    def __init__(
        self,
        transport: WebSocketTransport,
        request: Request,
        stream: Stream,
        receive: Receive,
        send: Send,
        mode: str | None,
    ) -> None:
        self.transport = transport
        #: The subprotocol (None: the plain mode).
        self.mode = mode
        self.location = transport.location
        self.request = request
        self.stream = stream
        self.receive = receive
        #: The engine's writer or an EagerSend, for the fan-out to write at once
        #: (:meth:`write_now`), and the send this connection sends with.
        self.sender, self._send = writer_for(request.scope, send)
        # No lock of our own around writes from the two tasks: hypercorn writes each frame
        # whole under its per-connection send lock, in the order the sends were made, and
        # an acknowledgement that must precede messages is awaited before they can exist.
        self.guard = SendGuard(self.location.send_timeout)
        # A multiplexed ws+meta.nchan connection sends compound ids: every channel of the
        # URL at its last delivered id, deleted ones included so ids keep their shape.
        self.ids = (
            dict(stream.positions) if mode == NCHAN_META and len(stream.positions) > 1 else None
        )
        self.close_code: int | None = None
        self.close_reason = ""
        #: The passthrough tokens by channel, to unsubscribe with (None while there are
        #: none: no empty dict held by every connection).
        self.tokens: dict[str, object] | None = None

    def run(self) -> Awaitable[None]:
        """The writer (:meth:`deliver`) and the watcher (commands, disconnect, send timeout,
        keepalive) under :meth:`SendGuard.run`, for the caller to await; how either side
        ends decides the close, which follows (:meth:`failed`, :meth:`close`, then
        :meth:`unsubscribe` whatever happened: :meth:`WebSocketTransport.__call__`). Not
        a coroutine of its own: one frame fewer held by every open connection."""
        presence = self.transport.presence
        if self.transport.notify:
            assert presence is not None
            for channel_id in self.stream.positions:
                self.held_tokens()[channel_id] = presence.subscribed(self.request, channel_id)
        return self.guard.run(
            self.deliver,
            self.receive,
            self.received,
            self.ping,
            self.location.ping_interval,
            inbox_of(self.request.scope, self.receive),
        )

    def failed(self, exc: _TooSlow | BackendUnavailable) -> None:
        """:meth:`run` raised one of the failures that decide the close code."""
        if isinstance(exc, _TooSlow):
            self.too_slow()
        else:
            self.finish(CLOSE_TRY_AGAIN_LATER, "the channel store is unavailable")

    async def close(self) -> None:
        """After :meth:`run`: the close frame, if the server decided the close."""
        if self.guard.timed_out:
            self.too_slow()
        if self.close_code is not None:
            with anyio.move_on_after(CLOSE_TIMEOUT):
                await self._send(
                    {
                        "type": "websocket.close",
                        "code": self.close_code,
                        "reason": self.close_reason,
                    }
                )

    def unsubscribe(self) -> None:
        presence = self.transport.presence
        if presence is not None:
            for token in (self.tokens or {}).values():
                presence.unsubscribed(token)

    def too_slow(self) -> None:
        if self.close_code is None:
            self.transport.hub.metrics.slow_websocket += 1
        self.finish(CLOSE_TOO_SLOW, "too slow: stopped reading")
        logger.info(
            "WebSocket subscriber %s stopped reading for %ss: disconnected",
            self.request.client_host,
            self.location.send_timeout,
        )

    def finish(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason

    async def send(self, event: dict[str, Any]) -> None:
        """A frame from the watching task (command replies, keepalive), under its own
        timeout: the guard cannot watch the task it runs in."""
        with anyio.move_on_after(self.guard.timeout) as scope:
            await self._send(event)
        if scope.cancelled_caught:
            raise _TooSlow

    async def ping(self) -> None:
        if self.mode == PUSHSERVER_V1:
            await self.send(_PING)
        elif PING_EXTENSION in (self.request.scope.get("extensions") or ()):
            await self.send(_PROTOCOL_PING)  # nothing in-band: a WebSocket ping frame

    def frame(self, item: Delivery) -> dict[str, Any]:
        """The frame of a message in this connection's mode (a multiplexed ws+meta.nchan
        connection's compound id moves on to it)."""
        message = item.message
        mode = self.mode
        # Encoded once per mode, by the first subscriber.
        if mode == PUSHSERVER_V1:
            return message.wire("ws", _encode_frame, item.channel_id)
        if mode is None:
            return message.wire("ws-plain", encode_plain)
        ids = self.ids
        if ids is None:
            return message.wire("ws-nchan", encode_nchan)
        ids[item.channel_id] = message.id
        marked = list(ids).index(item.channel_id)
        return encode_nchan(message, format_compound_id(ids.values(), marked))

    def write_now(self, item: Delivery) -> bool:
        """A live message, written at once by the fan-out (:meth:`Stream.batch`)."""
        sender = self.sender
        if sender is None:
            return False
        ids = self.ids
        before = ids[item.channel_id] if ids is not None else None
        if sender.send_now(self.frame(item)):
            return True
        if ids is not None:
            ids[item.channel_id] = before  # type: ignore[assignment]
        return False

    async def deliver(self) -> None:
        stream = self.stream
        send = self._send
        guard = self.guard
        clock = time.monotonic
        mode = self.mode
        v1 = mode == PUSHSERVER_V1
        writer = None if self.sender is None else self
        while True:
            for event in await stream.batch(writer):
                if type(event) is Delivery:
                    frame = self.frame(event)
                elif isinstance(event, Gap | Deleted):
                    if v1:
                        frame = {"type": "websocket.send", "text": event.json()}
                    elif type(event) is Deleted:
                        frame = None  # no control frames: the close code tells the last one
                    elif mode is None:
                        # The client has no ids to resume from: the close tells it.
                        # (A reason without the channel id: a close reason is at most
                        # 123 bytes, an id up to max_channel_id_length characters.)
                        self.finish(CLOSE_GAP, "messages after the position are gone")
                        return
                    else:
                        continue  # nchan goes on with the oldest retained message
                elif isinstance(event, Closing):
                    self.finish(CLOSE_GOING_AWAY, "the server is shutting down")
                    return
                else:
                    continue
                if frame is not None:
                    guard.started = clock()
                    await send(frame)
                    guard.started = 0.0
                if type(event) is Deleted:
                    self.forget(event.channel_id)
                    if not stream.positions:
                        self.finish(CLOSE_DELETED, "the channel was deleted")
                        return

    async def received(self, message: MutableMapping[str, Any]) -> bool:
        """Handle one message from the client; True once it went away."""
        if message["type"] == "websocket.disconnect":
            return True
        if message["type"] != "websocket.receive" or self.mode != PUSHSERVER_V1:
            return False  # without pushserver.v1, what the client sends is ignored
        text = message.get("text")
        if text is None:
            try:
                text = bytes(message.get("bytes") or b"").decode("utf-8")
            except UnicodeDecodeError:
                await self.send(control("error", error="a command is UTF-8 JSON text"))
                return False
        await self.command(text)
        return False

    async def command(self, text: str) -> None:
        try:
            max_length = self.transport.location.max_channel_id_length
            action, channel_id, position = parse_command(text, max_length)
        except ValueError as exc:
            await self.send(control("error", error=str(exc)))
            return
        stream = self.stream
        if action == "ping":
            await self.send(_PONG)
        elif action == "unsubscribe":
            assert channel_id is not None
            await stream.remove(channel_id)
            self.forget(channel_id)
            await self.send(control("unsubscribed", channel=channel_id))
        else:
            assert channel_id is not None
            if channel_id in stream.positions:
                await self.send(control("subscribed", channel=channel_id))
                return
            max_channels = self.transport.location.max_channels
            if max_channels and len(stream.positions) >= max_channels:
                error = f"at most {max_channels} channels per connection"
                answer: Admission | Refusal = Refusal(RefusalKind.BAD_REQUEST, error)
            else:
                answer = await self.transport.admitter.admit(
                    self.request, [channel_id], signatures=command_signature(text)
                )
            if isinstance(answer, Refusal):
                await self.send(refusal_frame(answer, channel_id))
                return
            # Unsubscribed by forget(), whatever happens next.
            handed = answer.hand_over()
            if handed:
                self.held_tokens().update(handed)
            # Acknowledged before the channel is added, so its messages follow the ack.
            await self.send(control("subscribed", channel=channel_id))
            await stream.add(channel_id, position)
            presence = self.transport.presence
            if presence is not None and self.transport.notify:
                self.held_tokens()[channel_id] = presence.subscribed(self.request, channel_id)

    def held_tokens(self) -> dict[str, object]:
        """:attr:`tokens`, made if there is none yet."""
        if self.tokens is None:
            self.tokens = {}
        return self.tokens

    def forget(self, channel_id: str) -> None:
        token = self.tokens.pop(channel_id, None) if self.tokens else None
        presence = self.transport.presence
        if token is not None and presence is not None:
            presence.unsubscribed(token)
