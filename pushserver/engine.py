"""What a serving engine may offer the transports beyond ASGI: watching a client without a task.

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

This module is the whole interface: it imports nothing of any server.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

#: The key of the :class:`Inbox` in ``scope["extensions"]``.
INBOX = "pushserver.inbox"


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
    return inbox  # type: ignore[no-any-return]
