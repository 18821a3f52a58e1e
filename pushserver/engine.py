"""What a serving engine may offer the transports beyond ASGI: watching a client without a
task, and writing to it without one.

A held subscriber (a long poll, an event stream, a WebSocket) is watched while it waits or
writes: for the client leaving or sending a command, for a write that has been under way
too long, for the next keepalive. Under plain ASGI that takes a second task per connection
reading ``receive`` (:meth:`pushserver.transports.streaming.SendGuard.watch`). An engine
that owns the request's queue can do better: call back when something arrives and keep
every deadline on one shared timer, so an idle connection has no task of its own besides
its application's (about 4 KiB less per held connection; bench/NOTES.md).

Such an engine puts an :class:`Inbox` in the request scope's extensions under
:data:`INBOX` (pushserver's hypercorn worker, :mod:`pushserver.hypercorn.worker`, does).
Transports find it with :func:`inbox_of` and never import the engine; where it is absent
(uvicorn, granian, daphne, hypercorn's stock worker, trio) they watch with a task.

The same engine may put a :class:`SendNow` under :data:`SEND_NOW`: the fan-out then writes
a message for a subscriber that is keeping up straight to its connection, from the hub's
loop over subscribers, instead of waking the subscriber's task to write it
(:meth:`pushserver.hub.Subscription.offer`). Found with :func:`send_now_of`; where it is
absent (other servers, hypercorn's stock worker, HTTP/2) the transports step the
server's own ``send`` from the fan-out instead, through ASGI alone
(:class:`pushserver.transports.eager.EagerSend`).

Servers that pushserver does not run with its own connection layer cannot put a writer in
the scope; for uvicorn (:mod:`pushserver.uvicorn.writer`) :func:`send_now_of` knows it by
the class of the object whose method ``send`` is (:data:`KNOWN_OWNERS`).

This module is the whole interface: it imports nothing of any server.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any, Protocol

#: The key of the :class:`Inbox` in ``scope["extensions"]``.
INBOX = "pushserver.inbox"
#: The key of the :class:`SendNow` in ``scope["extensions"]``.
SEND_NOW = "pushserver.send_now"


class Expiring(Protocol):
    """Something with a deadline on a :class:`DeadlineTimer`."""

    def expire(self, now: float) -> None:
        """Called once the deadline is reached; ``now`` may be a little past the call's
        own time (deadlines close together are served together), and counts as reached."""


class DeadlineTimer(Protocol):
    """Deadlines of many connections on one timer. Its entries are opaque handles."""

    def move(self, entry: Any, due: float, target: Expiring) -> Any:
        """The entry that calls ``target.expire`` at ``due`` (a ``time.monotonic()`` time;
        ``math.inf``: never, and None is returned). ``entry``, the target's previous one or
        None, is returned as it is when it is still pending at ``due``, otherwise dropped."""

    def cancel(self, entry: Any) -> None:
        """Drop ``entry`` (None, or one already served, is ignored)."""


class Inbox(Protocol):
    """A request's incoming ASGI messages, the same queue its ``receive`` reads, offered to
    a reader that waits on something else as well."""

    #: Called with no argument after each message arrives (None: nobody listens).
    listener: Callable[[], object] | None

    @property
    def deadlines(self) -> DeadlineTimer:
        """The engine's shared timer."""

    def qsize(self) -> int:
        """Messages waiting."""

    def get_nowait(self) -> Any:
        """The first message waiting; :class:`IndexError` when there is none."""

    def drop_leading(self, kind: str) -> None:
        """Take off the messages at the front whose ASGI ``type`` is ``kind``."""


def inbox_of(scope: Mapping[str, Any], receive: Callable[..., Any]) -> Inbox | None:
    """The engine's :class:`Inbox` for this request, or None when there is none.

    Only when ``receive`` reads that inbox itself (a bound method of it): an ASGI
    middleware that wraps ``receive`` may rewrite or hold back messages, and reading the
    queue behind its back would skip that.
    """
    extensions = scope.get("extensions")
    inbox = extensions.get(INBOX) if extensions else None
    if inbox is None or getattr(receive, "__self__", None) is not inbox:
        return None
    return inbox


class SendNow(Protocol):
    """A request's ``send``, synchronously, for when the connection can take a message at
    once: what lets the fan-out write without a task switch per subscriber."""

    def owns(self, send: Callable[..., Any]) -> bool:
        """Whether ``send`` is the engine's own for this request (not a wrapper of it)."""

    def send_now(self, message: Mapping[str, Any]) -> bool:
        """Write ``message`` now, as ``await send(message)`` would (the same bytes, the
        framing state of the connection kept), and return True; or write nothing and return
        False, and the caller sends it through ``send`` as usual.

        Only an ``http.response.body`` with ``more_body`` on an HTTP/1.1 response under way,
        or a ``websocket.send`` on an open WebSocket, can go this way, and only while the
        connection is open and not paused (its write buffer below the high-water mark): a
        write here never waits. Anything else returns False."""


#: Servers whose :class:`SendNow` is not in the scope but known by the class of the object
#: whose bound method ``send`` is: that class's module and name -> the module and function
#: making a writer for it (or None for that connection), imported when first met.
KNOWN_OWNERS = {
    (
        "uvicorn.protocols.http.httptools_impl",
        "RequestResponseCycle",
    ): ("pushserver.uvicorn.writer", "http_writer"),
    (
        "uvicorn.protocols.websockets.websockets_sansio_impl",
        "WebSocketsSansIOProtocol",
    ): ("pushserver.uvicorn.writer", "websocket_writer"),
}
#: The factory found for each class of ``send``'s owner met so far (None: none).
_factories: dict[type, Callable[[Any], SendNow | None] | None] = {}


def send_now_of(scope: Mapping[str, Any], send: Callable[..., Any]) -> SendNow | None:
    """The engine's :class:`SendNow` for this request, or None when there is none: the
    one in the scope's extensions, or one made for a server in :data:`KNOWN_OWNERS`.

    Only when ``send`` is the engine's own: an ASGI middleware that wraps ``send`` may
    rewrite or hold back messages, and writing behind its back would skip that.
    """
    extensions = scope.get("extensions")
    sender = extensions.get(SEND_NOW) if extensions else None
    if sender is not None:
        return sender if sender.owns(send) else None
    owner = getattr(send, "__self__", None)
    if owner is None:
        return None
    kind = type(owner)
    try:
        factory = _factories[kind]
    except KeyError:
        factory = _factories[kind] = _factory_for(kind)
    return None if factory is None else factory(owner)


def _factory_for(kind: type) -> Callable[[Any], SendNow | None] | None:
    known = KNOWN_OWNERS.get((kind.__module__, kind.__qualname__))
    if known is None:
        return None
    module, name = known
    factory: Callable[[Any], SendNow | None] = getattr(import_module(module), name)
    return factory
