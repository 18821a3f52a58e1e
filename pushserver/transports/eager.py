"""Writing at once under any ASGI server: the fan-out steps the server's own ``send``.

pushserver's hypercorn worker offers the fan-out a synchronous writer
(:class:`pushserver.engine.SendNow`), so a subscriber that keeps up is written to without
waking its task. Other servers offer nothing of the kind, but their ``send`` for a body
chunk or a WebSocket message mostly does all its work at once: uvicorn writes to its
transport and waits only while the transport is paused, daphne hands the message to
Twisted, hypercorn's stock worker takes an unheld lock and drains a transport that is not
paused. :class:`EagerSend` uses that, through ASGI alone: the fan-out calls ``send``
and runs the awaitable one step, as the subscriber's task would, in the request's
context. If it is finished by then, the message was written with no task switch. If it
waits (the server is applying back-pressure, or its ``send`` always waits, as granian's
WebSocket send does), the message is the server's already: a task of its own finishes that
one send, every later write from the fan-out is declined until it has (those messages go
through the subscriber's queue), and the transport's own sends
(:meth:`EagerSend.send`) wait for it first, so the order on the wire is the order of the
messages. A connection whose ``send`` waits on its first step twice in a row is not tried
that way again.

So the transports need not know the server: :func:`writer_for` gives the engine's writer
where there is one, this one on any other asyncio server, and nothing on trio. A
middleware around ``send`` is called as it would be from the request's task, once per
message; unlike the engine's writer, which writes behind ``send``, this one goes through
it, so nothing a middleware does is skipped.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Generator, Iterator, Mapping
from typing import Any, Literal

from .._async import asyncio_loop
from ..engine import SendNow, send_now_of
from ..http import Scope, Send

logger = logging.getLogger("pushserver.transports")

#: First steps in a row that waited, after which a connection's ``send`` is not stepped
#: from the fan-out any more (a server whose ``send`` always waits gains nothing by it).
MISSES_BEFORE_GIVING_UP = 2


class _Rest:
    """The rest of a ``send`` that waited on its first step: what it waits for is handed
    to the task that awaits this, and the send is resumed (or cancelled) from there."""

    __slots__ = ("first", "steps")

    def __init__(self, steps: Iterator[Any], first: Any) -> None:
        self.steps = steps
        self.first = first

    def __await__(self) -> Generator[Any, None, None]:
        steps, waiting = self.steps, self.first
        del self.steps, self.first
        while True:
            try:
                yield waiting
            except BaseException as exc:  # cancelled: into the send, where it can be
                throw = getattr(steps, "throw", None)
                if throw is None:
                    raise
                try:
                    waiting = throw(exc)
                except StopIteration:
                    return
                continue
            try:
                waiting = next(steps)
            except StopIteration:
                return


async def _finish(rest: _Rest) -> None:
    await rest


def _retrieve(task: asyncio.Task[None]) -> None:
    # A failure is raised where the transport next sends (EagerSend.send); taken here too,
    # so a connection that ends before it sends again logs no "never retrieved".
    if not task.cancelled():
        task.exception()


class EagerSend:
    """A request's ``send``, for the fan-out to call synchronously (module docstring);
    :class:`pushserver.engine.SendNow`."""

    __slots__ = ("_context", "_misses", "_pending", "_send")

    def __init__(self, send: Send, context: contextvars.Context) -> None:
        self._send = send
        #: The request task's context, where every step of ``send`` runs.
        self._context = context
        #: The task finishing a send that waited, until the transport has awaited it.
        self._pending: asyncio.Task[None] | None = None
        self._misses = 0

    def owns(self, send: Any) -> bool:
        return send is self._send

    def send_now(self, message: Mapping[str, Any]) -> bool:
        pending = self._pending
        if pending is not None:
            if not pending.done() or pending.cancelled() or pending.exception() is not None:
                return False  # queued: the transport's next send waits for it, or raises
            self._pending = None
        if self._misses >= MISSES_BEFORE_GIVING_UP:
            return False
        try:
            outcome = self._context.run(self._step, message)
        except RuntimeError:
            # The context is entered already: the fan-out runs in the request's own task.
            return False
        if outcome is None:
            self._misses = 0
            return True
        if outcome is False:
            return False
        # It waited: the message is the server's; a task finishes this one send.
        self._misses += 1
        task = asyncio.get_running_loop().create_task(_finish(outcome), context=self._context)
        task.add_done_callback(_retrieve)
        self._pending = task
        return True

    def _step(self, message: Mapping[str, Any]) -> _Rest | Literal[False] | None:
        """One step of ``send(message)``: None when it is done, the rest when it waits,
        False when it failed (nothing to finish: the queued path sends it again, and fails
        there as it would, in the transport)."""
        try:
            steps = self._send(dict(message)).__await__()
            waiting = next(steps)
        except StopIteration:
            return None
        except Exception:
            return False
        return _Rest(steps, waiting)

    async def send(self, message: Mapping[str, Any]) -> None:
        """The transport's own send: after the send the fan-out left waiting, if any."""
        pending = self._pending
        if pending is not None:
            if not pending.done():
                try:
                    # Waited for, not awaited: the writer and the watcher may both wait
                    # here, and only the one that gives up ends it.
                    await asyncio.wait((pending,))
                except asyncio.CancelledError:
                    # This send timed out, or the connection is ending: so does the send
                    # it waited for (a close frame may then follow at once).
                    pending.cancel()
                    raise
            if self._pending is pending:
                self._pending = None
                if not pending.cancelled() and (failure := pending.exception()) is not None:
                    raise failure
        await self._send(message)  # type: ignore[arg-type]

    def close(self) -> None:
        """The response is over: a send still waiting is let go."""
        pending = self._pending
        if pending is not None:
            self._pending = None
            pending.cancel()


def writer_for(scope: Scope, send: Send) -> tuple[SendNow | None, Send]:
    """The writer the fan-out may use for this request, and the ``send`` the transport
    then sends with: the engine's own writer and ``send`` as it is; on any other asyncio
    server an :class:`EagerSend` and its :meth:`EagerSend.send`; on trio nothing."""
    sender = send_now_of(scope, send)
    if sender is not None:
        return sender, send
    loop = asyncio_loop()
    task = None if loop is None else asyncio.current_task(loop)
    if task is None:
        return None, send
    get_context = getattr(task, "get_context", None)  # Python 3.12+
    context = get_context() if get_context is not None else contextvars.copy_context()
    eager = EagerSend(send, context)
    return eager, eager.send


def release(sender: SendNow | None) -> None:
    """The response is over: what :func:`writer_for` gave lets go of any send it left
    waiting (only an :class:`EagerSend` can have one)."""
    if type(sender) is EagerSend:
        sender.close()


__all__ = ["EagerSend", "release", "writer_for"]
