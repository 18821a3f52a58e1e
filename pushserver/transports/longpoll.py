"""Long-polling and interval-polling subscribers, as the Nginx HTTP Push Module serves them.

A GET names its position with ``If-Modified-Since`` + ``If-None-Match`` (the previous
response's ``Last-Modified`` / ``Etag``) and gets the first retained message after it. With
nothing newer, long polling holds the request until the next message; interval polling
answers ``304``. ``304`` also ends a long poll on the location's ``timeout`` and on server
shutdown; it echoes the client's own position so the client simply asks again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from inspect import CO_COROUTINE
from typing import Any, TypeVar

import anyio

from .._async import asyncio_loop
from ..backends.base import ReadResult
from ..engine import inbox_of
from ..exceptions import BackendUnavailable, ChannelNotFound, StoreFull
from ..http import Headers, Receive, Request, Send, respond, respond_error
from ..http import Message as ASGIMessage
from ..hub import Deletion, Delivery, Event, Subscription
from ..message import Message, MessageId
from ..protocol import (
    longpoll_response_headers,
    position_from_headers,
    position_headers,
)
from .admission import Refusal, RefusalKind
from .base import HTTPTransport
from .streaming import SendGuard

T = TypeVar("T")

ALLOW = (b"allow", b"GET, OPTIONS")
ALLOW_METHODS = (b"access-control-allow-methods", b"GET, OPTIONS")


class LongPollTransport(HTTPTransport):
    """Serves one subscriber location's long-poll (or interval-poll) requests."""

    def _encode_start(self, message: Message) -> dict:
        start = _encode_start(message)
        start["headers"] = self.headers + start["headers"]
        return start

    async def __call__(
        self, request: Request, channel_id: str, receive: Receive, send: Send
    ) -> None:
        # OPTIONS (the preflight) never gets here: the Subscriber answers it first.
        headers = self.response_headers(request)
        if request.method != "GET":
            await respond_error(
                send, 405, f"{request.method} is not allowed here", [*headers, ALLOW]
            )
            return
        try:
            position = position_from_headers(
                request.header("if-modified-since"), request.header("if-none-match")
            )
        except ValueError as exc:
            await self.respond_refused(send, Refusal(RefusalKind.BAD_REQUEST, str(exc)), headers)
            return
        try:
            # Room is asked for only before waiting (serve): an answer at once holds nothing.
            admission = await self.admitter.admit(request, [channel_id], hold=False, after=position)
            if isinstance(admission, Refusal):
                await self.respond_refused(send, admission, headers)
                return
            try:
                await self.serve(
                    request, channel_id, position, admission.read, receive, send, headers
                )
            finally:
                admission.release()
        except (ChannelNotFound, StoreFull, BackendUnavailable) as exc:  # after the admission
            await self.respond_store_failure(send, exc, headers)

    async def respond_refused(self, send: Send, refusal: Refusal, headers: Headers) -> None:
        if refusal.kind is RefusalKind.NOT_FOUND:
            # The URL names its one channel: the body says no more, as the publisher's 404.
            refusal = Refusal(RefusalKind.NOT_FOUND, "no such channel")
        await super().respond_refused(send, refusal, headers)

    async def preflight(self, request: Request, send: Send) -> None:
        """OPTIONS, the CORS preflight: 200 and an empty body, as the original answered."""
        await respond(send, 200, [*self.response_headers(request), ALLOW, ALLOW_METHODS])

    async def serve(
        self,
        request: Request,
        channel_id: str,
        position: MessageId,
        read: ReadResult | None,
        receive: Receive,
        send: Send,
        headers: Headers,
    ) -> None:
        """Answer with ``read`` (the first message after ``position``, read while the
        channel was opened) or wait for the next one."""
        hub = self.hub
        # Read while the admission opened the channel (one round trip on Redis).
        assert read is not None
        if read.message is not None:
            await self.send_message(send, read.message, headers)
            return
        if self.location.polling == "interval":
            await respond(send, 304, [*headers, *position_headers(position)])
            return
        if self.location.max_subscribers:  # no await (nor list) per poll without a limit
            refusal = await self.admitter.room([channel_id])
            if refusal is not None:
                await self.respond_refused(send, refusal, headers)
                return
        presence = self.presence if self.notify else None
        token = None
        waited = False
        outcome: Event | Message | None = None
        try:
            async with hub.subscription([channel_id], maxlen=4) as subscription:
                # Subscribed first, then read again: a message published in between is not
                # missed.
                read = await hub.read_after(channel_id, position)
                if read.message is not None:
                    outcome = read.message
                else:
                    token = presence.subscribed(request, channel_id) if presence else None
                    hub.metrics.longpoll += 1
                    waited = True
                    # Watching for the client leaving needs no task of its own where
                    # the engine offers an inbox (SendGuard.run; no write deadline here);
                    # under another server on asyncio, one bare read (wait_watching), which
                    # awaits the wait itself: no closure around it.
                    inbox = inbox_of(request.scope, receive)
                    # One deadline for the whole wait, however often an overflow re-reads
                    # (and no cancel scope at all without one).
                    waiting: Awaitable[Event | Message | None]
                    waiting = self.wait(subscription, channel_id, position)
                    if self.location.timeout:
                        waiting = _within(self.location.timeout, waiting)
                    if asyncio_loop() is not None and inbox is None:
                        outcome, gone = await wait_watching(waiting, receive)
                        if gone:
                            return
                    else:
                        disconnected = False

                        async def handle(message: ASGIMessage) -> bool:
                            nonlocal disconnected
                            disconnected = message["type"] == "http.disconnect"
                            return disconnected  # the guard then cancels the wait

                        async def wait() -> None:
                            nonlocal outcome
                            outcome = await waiting

                        await SendGuard(None).run(wait, receive, handle, inbox=inbox)
                        if disconnected:
                            return
            # The subscription is given back before the answer goes out: a client polling
            # again at once is not counted twice against max_subscribers.
            if isinstance(outcome, Message):
                await self.send_message(send, outcome, headers)
            elif isinstance(outcome, Delivery):
                await self.send_message(send, outcome.message, headers)
            elif isinstance(outcome, Deletion):
                await respond_error(send, 410, "the channel was deleted", headers)
            else:  # the timeout, or Closing: the client asks again from where it was
                await respond(send, 304, [*headers, *position_headers(position)])
        finally:
            if waited:
                hub.metrics.longpoll -= 1
                if presence is not None:
                    presence.unsubscribed(token)

    async def wait(
        self, subscription: Subscription, channel_id: str, position: MessageId
    ) -> Event | Message:
        """The next message after ``position``, a deletion, or the server closing."""
        while True:
            event = await subscription.next_after(position)
            if event is not None:
                return event
            # Overflowed: more arrived than the queue holds; the buffer has them in order.
            subscription.overflowed = False
            self.hub.metrics.catch_ups += 1
            read = await self.hub.read_after(channel_id, position)
            if read.message is not None:
                return read.message

    async def send_message(self, send: Send, message: Message, headers: Headers) -> None:
        if headers is self.headers:
            # The location's own headers: the whole start event is shared by every poller.
            # Keyed by this transport, which each message's cache then holds on to (a name
            # made from id(self) could be reused by a later transport).
            start = message.wire(self, self._encode_start)
        else:
            start = message.wire("longpoll", _encode_start)
            start = {**start, "headers": headers + start["headers"]}
        await send(start)
        await send({"type": "http.response.body", "body": message.body})


def _encode_start(message: Message) -> dict:
    return {
        "type": "http.response.start",
        "status": 200,
        "headers": longpoll_response_headers(message),
    }


async def _within(seconds: float, waiting: Awaitable[T]) -> T | None:
    """``waiting``'s result, or None after ``seconds`` (one deadline for the whole wait,
    however often an overflow re-reads)."""
    with anyio.move_on_after(seconds):
        return await waiting
    return None


async def wait_watching(main: Awaitable[T], receive: Receive) -> tuple[T | None, bool]:
    """Await ``main`` in this task until it completes or the client goes away, under any
    ASGI server on asyncio: its result and False, or None and True when the client left.

    :class:`~.streaming.SendGuard` watches in a second task with its own loop, cancel
    scope and a wait for it at the end: about a fifth of a long-poll delivery's CPU under
    uvicorn or granian (docs/benchmark.md). A long poll only needs to hear the disconnect,
    so this reads with a bare task whose callback cancels this one (:class:`_Watch`); at
    the end the read is cancelled and left to finish on its own (a server's ``receive`` is
    cancel-safe).
    """
    task = asyncio.current_task()
    assert task is not None
    watch = _Watch(task, receive)
    watch.read()
    result: T | None = None
    try:
        result = await main
    except asyncio.CancelledError:
        if not watch.gone or task.uncancel() > 0:
            raise
    finally:
        watch.stop()
    return result, watch.gone


class _Watch:
    """The read :func:`wait_watching` keeps going, and what it heard.

    An object rather than closures: two closures that call each other are a reference
    cycle, and it held the request's whole ASGI cycle (the server's request object, its
    event, the read's task) until the cyclic collector ran, which then cost about a tenth
    of a long-poll delivery's CPU. Here the read's done callback is the only reference
    back to the watch, and it goes when the read ends or :meth:`stop` removes it.
    """

    __slots__ = ("finished", "gone", "reader", "receive", "task")

    def __init__(self, task: asyncio.Task[Any], receive: Receive) -> None:
        self.task = task
        self.receive = receive
        self.reader: asyncio.Future[Any] | None = None
        self.gone = False
        self.finished = False

    def read(self) -> None:
        receive = self.receive
        code = getattr(getattr(receive, "__func__", receive), "__code__", None)
        if code is not None and code.co_flags & CO_COROUTINE:
            # An async function (uvicorn's receive): one task reads past the body to the
            # disconnect, not a task per read.
            self.reader = asyncio.ensure_future(_past_body(receive))
        else:
            # granian's receive() gives a future: a done callback on it and no task at all
            # (ensure_future gives a future back as it is); anything else, a task.
            self.reader = asyncio.ensure_future(receive())
        self.reader.add_done_callback(self.received)

    def received(self, done: asyncio.Future[Any]) -> None:
        # Done callbacks run later: one may come after main() has returned, when cancelling
        # the task would hit whatever the request does next.
        if done.cancelled() or self.finished:
            return
        if done.exception() is None and done.result()["type"] == "http.request":
            self.read()  # more of a request body nobody reads: keep listening
            return
        self.gone = True  # http.disconnect, or the server failed the read: the client is gone
        self.task.cancel()

    def stop(self) -> None:
        """``main()`` is over: no more cancelling; the pending read is cancelled."""
        self.finished = True
        reader, self.reader = self.reader, None
        if reader is not None and not reader.done():
            reader.remove_done_callback(self.received)
            reader.cancel()


async def _past_body(receive: Receive) -> ASGIMessage:
    """The first message after the request's body (which nobody reads): the disconnect.

    One task reads them all: a task per read was one more task per long poll, as the
    body's (a GET's empty) ``http.request`` comes first. This coroutine holds ``receive``
    only, not the :class:`_Watch`, so it makes no reference cycle."""
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return message
