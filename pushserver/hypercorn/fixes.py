"""Fixes for hypercorn 0.18 and the libraries under it (:func:`pushserver.hypercorn.apply_fixes`).

Each wraps one internal of hypercorn (or of wsproto or trio beneath it), is idempotent
(applying it twice changes nothing) and is covered by a test that fails without it:
tests/test_hostile_http.py for what a client can trigger, tests/test_server_gc.py for the
reference cycles; the memory fix and the ping extension (not a fix) name theirs. Re-run
those after any hypercorn upgrade (pyproject.toml pins the minor version for that reason).
Each docstring says what goes wrong without it and names the upstream report
(``hypercorn issue #N``) it works around, or says it is not reported upstream: those are
worth reporting, and a fix whose upstream bug is closed in a new release can go.
"""

from __future__ import annotations

import logging
from types import MappingProxyType
from typing import Any

logger = logging.getLogger("pushserver")


def end_refused_websockets() -> None:
    """Make hypercorn finish a WebSocket request it refused itself (idempotent).

    hypercorn (0.18) answers a WebSocket request with a bad handshake, or one whose
    client sends bytes before the handshake response (RFC 6455 forbids that; a raw socket
    can do it in the same write as the request), with ``400`` and ``connection: close``,
    and then:

    * neither closes the connection nor tells the application, which it may already have
      started: the application waits for a ``websocket.disconnect`` that never comes,
      holding its subscription (counted by ``max_subscribers``), its task and the socket
      for as long as the process lives;
    * on trio, marks the request refused only after writing the 400: the application's
      accept runs during that write and puts the connection in an error state, and the
      exception that follows ends the whole server.

    So a request refused for early data is marked refused before the 400 is written
    (the application's accept is then ignored), and after any such refusal the application
    is told the client left and the connection is closed, as the 400 says.

    Upstream: hypercorn issue #225 (the whole server crashing on bytes after a WebSocket
    upgrade request, on trio); the refused connection left open is not reported upstream.
    """
    from hypercorn.protocol.events import Body, Data, StreamClosed
    from hypercorn.protocol.ws_stream import WSStream

    # The marker is on the class: other fixes wrap WSStream.handle over this one.
    if getattr(WSStream, "_pushserver_ends_refusals", False):
        return
    handle = WSStream.handle

    async def handle_and_end_refusals(self: Any, event: Any) -> None:
        if isinstance(event, Body | Data) and not self.closed and not self.handshake.accepted:
            self.closed = True  # before the write, during which the application may run
            await self._send_error_response(400)
        else:
            was_closed = self.closed
            await handle(self, event)
            if was_closed or not self.closed or isinstance(event, StreamClosed):
                return
        if self.app_put is not None:
            await self.app_put({"type": "websocket.disconnect", "code": 1006})
        await self.send(StreamClosed(stream_id=self.stream_id))

    WSStream._pushserver_ends_refusals = True  # type: ignore[attr-defined]
    WSStream.handle = handle_and_end_refusals  # type: ignore[method-assign]


def refuse_non_ascii_websocket_handshakes() -> None:
    """Answer ``400`` to a WebSocket handshake whose header lists are not ASCII (idempotent).

    hypercorn (0.18) splits ``Sec-WebSocket-Protocol``, ``Sec-WebSocket-Extensions`` and
    ``Connection`` of a WebSocket request with wsproto's ``split_comma_header``, which
    decodes them as ASCII: a client that sends any other byte there (``Sec-WebSocket-
    Protocol: é``) gets its connection dropped without an answer and a traceback in the
    log. RFC 6455 makes these lists of tokens, so such a handshake is a bad one, and is now
    answered as hypercorn answers other bad handshakes: ``400`` and ``connection: close``.

    Upstream: not reported (hypercorn issue #204 is the other direction: non-ASCII header
    values an application sends, encoded as ASCII).
    """
    from hypercorn.protocol.ws_stream import Handshake

    init = Handshake.__init__
    if getattr(init, "refuses_non_ascii", False):
        return

    def init_or_invalid(self: Any, headers: Any, http_version: str) -> None:
        try:
            init(self, headers, http_version)
        except UnicodeDecodeError:
            self.accepted = False
            self.http_version = http_version
            self.connection_tokens = self.extensions = self.subprotocols = None
            self.key = self.upgrade = None
            self.version = None  # is_valid() is then False, whatever the HTTP version

    init_or_invalid.refuses_non_ascii = True  # type: ignore[attr-defined]
    Handshake.__init__ = init_or_invalid  # type: ignore[method-assign]


def decline_bad_h2c_upgrades() -> None:
    """Serve over HTTP/1.1 a request asking for an ``h2c`` upgrade with bad settings
    (idempotent).

    hypercorn (0.18) answers ``Upgrade: h2c`` with ``101`` before it decodes the request's
    ``HTTP2-Settings``; when they are missing, not base64url or not valid settings, the
    exception that follows is logged as a traceback on asyncio and ends the whole server on
    trio. RFC 9113 section 3.2 lets a server ignore an upgrade, and requires ignoring one
    without exactly one ``HTTP2-Settings``: such requests are now answered over HTTP/1.1.

    Upstream: not reported (hypercorn issues #317 and #318 are h2c upgrades failing
    altogether, fixed after 0.18; a bad ``HTTP2-Settings`` is a separate case).
    """
    from hypercorn.protocol.h11 import H11Protocol

    check = H11Protocol._check_protocol
    if getattr(check, "declines_bad_h2c", False):
        return

    async def check_protocol(self: Any, event: Any) -> None:
        # Once per request: one pass, over h11's own list where it has one (iterating its
        # Headers goes through Sequence.__iter__, an index at a time). h11 lowercases the
        # names. The last Upgrade header decides, as in hypercorn.
        items = getattr(event.headers, "_full_items", None)
        if items is None:
            items = [(n, n, v) for n, v in event.headers]
        upgrade = None
        settings = []
        for _, name, value in items:
            if name == b"upgrade":
                upgrade = value
            elif name == b"http2-settings":
                settings.append(value)
        if (
            upgrade is not None
            and upgrade.strip().lower() == b"h2c"
            and not _h2c_settings_valid(settings)
        ):
            return
        await check(self, event)

    check_protocol.declines_bad_h2c = True  # type: ignore[attr-defined]
    H11Protocol._check_protocol = check_protocol  # type: ignore[method-assign]


def _h2c_settings_valid(values: list[bytes]) -> bool:
    import h2.config
    import h2.connection

    if len(values) != 1:
        return False
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    try:
        connection.initiate_upgrade_connection(values[0])
    except Exception:  # whatever h2 raises for this header, it is not one to upgrade with
        return False
    return True


def contain_connection_errors_on_trio() -> None:
    """On trio, end only the connection whose handling failed (idempotent).

    hypercorn's trio worker runs each connection in the listeners' nursery, so an exception
    it does not expect from one connection (a hypercorn, h11 or h2 bug a client can
    trigger) ends the whole server. Its asyncio worker logs it and goes on; so does this.

    Upstream: hypercorn issue #225 (one such crash), and PR #228, which contains these
    errors in the trio ``TCPServer`` but is not in 0.18.
    """
    from hypercorn.trio.tcp_server import TCPServer

    run = TCPServer.run
    if getattr(run, "contains_errors", False):
        return

    async def run_contained(self: Any) -> None:
        try:
            await run(self)
        except Exception:
            logger.exception("a connection failed in hypercorn and was closed")

    run_contained.contains_errors = True  # type: ignore[attr-defined]
    TCPServer.run = run_contained  # type: ignore[method-assign]


def free_closed_connections_on_trio() -> None:
    """On trio, too, a finished connection's objects go by reference counting (idempotent):
    hypercorn's ``TCPServer`` and its protocol refer to each other (the protocol sends
    through a method of the server), a cycle of about 30 objects per connection.

    Upstream: not reported."""
    from hypercorn.trio.tcp_server import TCPServer

    run = TCPServer.run
    if getattr(run, "frees_connections", False):
        return

    async def run_and_free(self: Any) -> None:
        try:
            await run(self)
        finally:
            self.__dict__.clear()

    run_and_free.frees_connections = True  # type: ignore[attr-defined]
    TCPServer.run = run_and_free  # type: ignore[method-assign]


# -- reference cycles ---------------------------------------------------------------------
#
# Serving all but turns the cyclic collector off (pushserver.server.GC_THRESHOLDS), so what a
# closed connection leaves in a reference cycle stays until a rare full collection
# (tests/test_server_gc.py). Dependencies make these two, per connection.


def free_closed_websocket_parsers() -> None:
    """Drop a closed WebSocket's frame parser generator (idempotent).

    wsproto (1.3) parses frames with a generator that it creates in
    ``FrameProtocol.__init__`` (``self._parse_more = self._parse_more_gen()``): the
    generator's frame holds the ``FrameProtocol``, which holds the generator, a cycle of
    seven objects behind every WebSocket, on every Python. On 3.11 the collector's
    finalizer closes the generator, which releases the rest, uncounted by
    ``gc.collect()``; on 3.12 and 3.13 closing a generator that never ran (a subscriber
    that sent no frame) leaves its frame as it was (CPython issue 142766, fixed in 3.13
    releases from December 2025), so the whole cycle waits for the collector. Once
    hypercorn's stream has seen the connection close (it reads no frame after that), the
    generator is replaced by an empty iterator, and the rest goes by reference counting.

    Upstream: CPython issue 142766 (above); the generator cycle itself is not reported to
    wsproto.
    """
    from hypercorn.protocol.events import StreamClosed
    from hypercorn.protocol.ws_stream import WSStream

    # The marker is on the class: other fixes wrap WSStream.handle too.
    if getattr(WSStream, "_pushserver_frees_parsers", False):
        return
    handle = WSStream.handle

    async def handle_and_free_parser(self: Any, event: Any) -> None:
        try:
            await handle(self, event)
        finally:
            if isinstance(event, StreamClosed):
                protocol: Any = getattr(getattr(self, "connection", None), "_proto", None)
                if getattr(protocol, "_parse_more", None) is not None:
                    protocol._parse_more = iter(())

    WSStream._pushserver_frees_parsers = True  # type: ignore[attr-defined]
    WSStream.handle = handle_and_free_parser  # type: ignore[method-assign]


class _SocketErrorsAsStreamErrors:
    """trio's translation of a socket's ``OSError`` into its stream errors (``EBADF`` or
    ``ENOTSOCK``: ``ClosedResourceError``; any other: ``BrokenResourceError`` caused by
    it), as a plain context manager, stateless, so one instance serves every use."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> None:
        if not isinstance(error, OSError):
            return
        import trio
        from trio._highlevel_socket import _closed_stream_errnos

        if error.errno in _closed_stream_errnos:
            raise trio.ClosedResourceError("this socket was already closed") from None
        raise trio.BrokenResourceError(f"socket connection broken: {error}") from error


_socket_errors_as_stream_errors = _SocketErrorsAsStreamErrors()


def translate_trio_socket_errors_without_cycles() -> None:
    """On trio, translate a socket error into a stream error without a reference cycle
    (idempotent).

    trio (0.35) wraps each socket call of a ``SocketStream`` in a ``@contextmanager``
    generator that raises ``BrokenResourceError`` from the ``OSError`` it catches. On
    Python 3.12 and 3.13 the frame of a generator ended by an exception keeps its caller
    as ``f_back`` (CPython issue 100964, fixed in 3.13 releases from December 2025); that
    caller is ``contextlib``'s ``__exit__``, whose frame holds the ``OSError``, whose
    traceback holds the generator's frame: a cycle that keeps every frame up the stack
    alive, and all they refer to. Each connection its client reset (``send``, ``recv``
    or hypercorn's ``shutdown`` failing) left about 20 objects (an event stream) to 90 (a
    WebSocket: the whole connection) for the cyclic collector. The same translation, by a
    context manager object, makes no cycle, and no generator per socket call either.

    Upstream: CPython issue 100964 (above); not reported to trio.
    """
    try:
        from trio import _highlevel_socket

        # Any: its translation is replaced below by an equivalent of another type.
        module: Any = _highlevel_socket
        module._closed_stream_errnos  # noqa: B018 (what the translation reads)
        original = module._translate_socket_errors_to_stream_errors
    except (ImportError, AttributeError) as exc:
        logger.warning("this trio has no socket error translation to replace (%s)", exc)
        return
    if original is _translate_without_cycles:
        return
    module._translate_socket_errors_to_stream_errors = _translate_without_cycles


def _translate_without_cycles() -> _SocketErrorsAsStreamErrors:
    return _socket_errors_as_stream_errors


# -- memory -------------------------------------------------------------------------------


class _EventList(list):
    """The two deque methods wsproto uses on its event backlog, on a list (empty: 56 bytes
    where an empty deque takes 760)."""

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)


def lighter_websocket_connections() -> None:
    """Give each WebSocket's ``wsproto.Connection`` a list for its event backlog instead of
    a deque (idempotent).

    wsproto (1.3) keeps a ``deque`` of pending events per connection, which only ever holds
    the abnormal-closure event of a dropped connection, read back at once; an empty deque
    holds a 760-byte block, about a twentieth of an idle WebSocket subscriber's memory.
    Only ``append``, ``popleft`` and truth are used on it (tests/test_asyncio_worker.py,
    tests/test_dependency_internals.py).

    Where no extension is in effect (no compression), its frame protocol and frame decoder
    each keep an empty list of extensions, which wsproto only iterates: both get the one
    empty tuple (two 72-byte lists less per connection; a later rebinding of wsproto's own
    puts a list back, as before).

    Upstream: not reported (a memory saving, not a bug).
    """
    from collections import deque

    from wsproto.connection import Connection

    init = Connection.__init__
    if getattr(init, "lighter", False):
        return

    def lighter_init(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        events = getattr(self, "_events", None)
        if type(events) is deque and not events:
            self._events = _EventList()
        proto: Any = getattr(self, "_proto", None)
        if type(getattr(proto, "extensions", None)) is list and not proto.extensions:
            proto.extensions = ()
            decoder: Any = getattr(proto, "_frame_decoder", None)
            if type(getattr(decoder, "extensions", None)) is list and not decoder.extensions:
                decoder.extensions = ()

    lighter_init.lighter = True  # type: ignore[attr-defined]
    Connection.__init__ = lighter_init  # type: ignore[method-assign]


# -- an extension -----------------------------------------------------------------------------

#: The ping extension's (empty) value in every WebSocket scope: one, read-only, for all.
_PING_OFFERED: MappingProxyType[str, Any] = MappingProxyType({})


def send_websocket_pings() -> bool:
    """Let the application send a WebSocket ping frame (idempotent); True once it can.

    Not a fix: ASGI has no event for a ping frame, and hypercorn (0.18) only pings every
    connection of the server on one interval, from a task of each connection's own. The
    plain and ``ws+meta.nchan`` modes of :mod:`pushserver.transports.websocket` have nothing
    in-band to keep a connection alive with, so each WebSocket scope gets the
    ``pushserver.websocket.ping`` extension, and a ``{"type": "websocket.ping"}`` event from
    the application sends a ping frame on an open connection (the client's pong is
    swallowed by wsproto; any other state ignores it).

    It leans on hypercorn internals, so it fails safe: on a hypercorn without them it
    changes nothing, logs a warning and returns False. Scopes then have no extension, and
    the application never sends the event (it would send it to no other server either):
    those modes just have no keepalive of their own (tests/test_websocket_pings.py).

    Upstream: not reported (ASGI itself has no ping event to ask hypercorn for).
    """
    try:
        from hypercorn.protocol.events import Request
        from hypercorn.protocol.ws_stream import ASGIWebsocketState, WSStream
        from wsproto.events import Ping

        handle, app_send = WSStream.handle, WSStream.app_send
        WSStream._send_wsproto_event  # noqa: B018 (what a ping is sent with)
        connected = ASGIWebsocketState.CONNECTED
    except (ImportError, AttributeError) as exc:
        logger.warning(
            "this hypercorn cannot send WebSocket pings for the application (%s): plain and "
            "ws+meta.nchan WebSocket connections get no keepalive pings",
            exc,
        )
        return False

    from ..transports.websocket import PING_EXTENSION

    if getattr(app_send, "sends_pings", False):
        return True

    async def handle_and_offer_pings(self: Any, event: Any) -> None:
        await handle(self, event)
        scope = getattr(self, "scope", None)
        if isinstance(event, Request) and isinstance(scope, dict):
            # The application reads it at its first keepalive, long after it started.
            extensions = scope.setdefault("extensions", {})
            if isinstance(extensions, dict):
                extensions[PING_EXTENSION] = _PING_OFFERED

    async def app_send_with_pings(self: Any, message: Any) -> None:
        if message is not None and message["type"] == "websocket.ping":
            if not self.closed and self.state == connected:
                await self._send_wsproto_event(Ping())
            return
        await app_send(self, message)

    app_send_with_pings.sends_pings = True  # type: ignore[attr-defined]
    WSStream.handle = handle_and_offer_pings  # type: ignore[method-assign]
    WSStream.app_send = app_send_with_pings  # type: ignore[method-assign]
    return True
