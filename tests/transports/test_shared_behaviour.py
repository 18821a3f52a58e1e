"""The protocol behaviours every transport shares, one suite over long-poll, server-sent
events and WebSocket against a real runpushserver (and, with PUSHSERVER_TEST_STORE=redis,
a real redis-server).

Each transport has a small adapter with the same interface (:class:`Subscriber`): ``next()``
the next thing the server says, as a :class:`Received`; ``read(n)`` the next ``n`` messages;
``position`` the id to resume from; ``ending()`` how the transport ends after its last
channel was deleted. Where the transports differ by design (long-poll has no gap signal and
no multiplexing; each ends a deleted channel its own way), the test says so explicitly.
"""

from __future__ import annotations

import itertools
import json
import uuid
from contextlib import AsyncExitStack
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any
from urllib.parse import quote

import anyio
import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from pushserver.testing import PushServerProcess
from tests.conftest import about_transports, transport_params
from tests.project.helpers import wait_for_subscribers
from tests.transports.streams import SSEReader, connect, longpoll_id, ws_frame

pytestmark = pytest.mark.anyio

BUFFER = 4  # what the "small" store retains: the gap test outruns it
#: Upper bound on any one test's exchange with the server.
TIMEOUT = 20

CONFIG = {
    "store": {
        "default": {"type": "memory", "max_messages": 100},
        "small": {"type": "memory", "max_messages": BUFFER},
    },
    "locations": [
        {"type": "publisher", "prefix": "/publisher/"},
        {"type": "publisher", "prefix": "/small-publisher/", "store": "small"},
        {"type": "subscriber", "prefix": "/subscriber/", "create_on_get": True, "ping_interval": 0},
        {
            "type": "subscriber",
            "prefix": "/small/",
            "store": "small",
            "create_on_get": True,
            "ping_interval": 0,
        },
        {"type": "subscriber", "prefix": "/strict/", "ping_interval": 0},
    ],
}

TRANSPORTS = ("longpoll", "sse", "websocket")
STREAMING = ("sse", "websocket")
NOTHING_YET = "0:-1"  # a multiplexed position for a channel with nothing delivered
#: The server's name (``runpushserver --transport``) of each adapter's transport.
SERVED = {"longpoll": "longpoll", "sse": "eventsource", "websocket": "websocket"}


CLIENT_TIMEOUT = TIMEOUT


@pytest.fixture
def channel():
    return f"shared-{uuid.uuid4().hex[:12]}"


# -- one adapter per transport ----------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """What a subscriber got: a message, or a ``gap`` / ``deleted`` signal."""

    kind: str
    channel: str
    id: str | None = None  # the message's own id (not a compound one)
    body: str | None = None
    data: Any = None  # a signal's payload as the transport carries it


class Subscriber:
    """One subscriber connection (or, for long-poll, a client walking from request to
    request) on ``channels`` under ``prefix``, resuming after ``after`` if given."""

    def __init__(
        self,
        server: PushServerProcess,
        client: httpx.AsyncClient,
        channels: list[str],
        after: str | None = None,
        prefix: str = "/subscriber/",
    ) -> None:
        self.server = server
        self.client = client
        self.channels = channels
        self.after = after
        self.path = prefix + ",".join(quote(c, safe="") for c in channels)
        self.stack = AsyncExitStack()

    async def __aenter__(self) -> Subscriber:
        await self.stack.__aenter__()
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stack.__aexit__(*exc_info)

    async def open(self) -> None:
        pass

    async def next(self) -> Received:
        raise NotImplementedError

    async def read(self, count: int) -> list[Received]:
        """The next ``count`` things received, which must all be messages."""
        got = [await self.next() for _ in range(count)]
        assert [r.kind for r in got] == ["message"] * count, got
        return got

    @property
    def position(self) -> str:
        raise NotImplementedError

    async def ending(self) -> tuple:
        """How the transport ends once its last channel was deleted."""
        raise NotImplementedError


class LongPoll(Subscriber):
    """GETs that walk with If-Modified-Since / If-None-Match; the whole path segment is one
    channel id (long-poll does not multiplex)."""

    async def open(self) -> None:
        self.channel = ",".join(self.channels)
        self._position = self.after

    def position_headers(self) -> dict[str, str]:
        if self._position is None:
            return {}
        seconds, tag = self._position.split(":")
        return {"if-modified-since": formatdate(int(seconds), usegmt=True), "if-none-match": tag}

    async def next(self) -> Received:
        while True:
            response = await self.client.get(self.path, headers=self.position_headers())
            if response.status_code == 304:
                continue  # the location's timeout: ask again from the same position
            if response.status_code == 410:
                return Received("deleted", self.channel, data=(410, response.text))
            assert response.status_code == 200, (response.status_code, response.text)
            self._position = longpoll_id(response)
            return Received("message", self.channel, self._position, response.text)

    @property
    def position(self) -> str:
        assert self._position is not None
        return self._position

    async def ending(self) -> tuple:
        response = await self.client.get(self.path, headers=self.position_headers())
        return ("status", response.status_code)


class EventStream(Subscriber):
    """``Accept: text/event-stream`` over httpx, resuming with ``Last-Event-ID``."""

    async def open(self) -> None:
        headers = {"accept": "text/event-stream"}
        if self.after is not None:
            headers["last-event-id"] = self.after
        response = await self.stack.enter_async_context(
            self.client.stream("GET", self.path, headers=headers)
        )
        assert response.status_code == 200, (response.status_code, await response.aread())
        self.reader = SSEReader(response)
        hello = await self.reader.block()  # written once the server has subscribed
        assert hello is not None and hello.comments == ["hi"]
        self._position = self.after

    async def next(self) -> Received:
        event = await self.reader.event()
        if event.event == "pushserver.gap":
            return Received("gap", event.json["channel"], data=event.json)
        if event.event == "pushserver.deleted":
            return Received("deleted", event.json["channel"], data=event.json)
        assert event.event is None, event
        self._position = event.id
        # A multiplexed stream's id is compound; the brackets mark the event's channel.
        parts = event.id.split(",")
        index = next((i for i, p in enumerate(parts) if p.startswith("[")), 0)
        message_id = parts[index].strip("[]")
        return Received("message", self.channels[index], message_id, event.data)

    @property
    def position(self) -> str:
        assert self._position is not None
        return self._position

    async def ending(self) -> tuple:
        while (block := await self.reader.block()) is not None:
            assert block.data is None, block  # nothing but comments until the end
        return ("end",)


class WebSocket(Subscriber):
    """The ``websockets`` client, resuming with ``?last_event_id=``."""

    async def open(self) -> None:
        url = self.server.url.replace("http://", "ws://") + self.path
        if self.after is not None:
            url += "?last_event_id=" + quote(self.after, safe="")
        self.ws = await self.stack.enter_async_context(connect(url, ping_interval=None))
        self.positions: dict[str, str] = {}
        if self.after is not None:
            self.positions = dict(zip(self.channels, self.after.split(","), strict=True))

    async def next(self) -> Received:
        frame = await self.ws.recv()
        if isinstance(frame, str) and frame.startswith("{"):
            control = json.loads(frame)
            assert control["type"] in ("gap", "deleted"), control
            return Received(control["type"], control["channel"], data=control)
        head, body = ws_frame(frame)
        self.positions[head["channel"]] = head["id"]
        return Received("message", head["channel"], head["id"], body)

    @property
    def position(self) -> str:
        # Frames carry each message's own id: a client builds the compound id itself.
        return ",".join(self.positions.get(c, NOTHING_YET) for c in self.channels)

    async def ending(self) -> tuple:
        with pytest.raises(ConnectionClosed) as info:
            while True:
                await self.ws.recv()
        assert info.value.rcvd is not None, "no close frame from the server"
        return ("close", info.value.rcvd.code, info.value.rcvd.reason)


ADAPTERS: dict[str, type[Subscriber]] = {
    "longpoll": LongPoll,
    "sse": EventStream,
    "websocket": WebSocket,
}


@pytest.fixture(params=transport_params(*TRANSPORTS, served=SERVED))
def transport(request):
    return request.param


@pytest.fixture
def subscribe(server, client):
    """``subscribe(transport, channels, after=None, prefix=...)``: an open Subscriber."""

    def open_subscriber(transport: str, channels: str | list[str], **kwargs: Any) -> Subscriber:
        if isinstance(channels, str):
            channels = [channels]
        return ADAPTERS[transport](server, client, channels, **kwargs)

    return open_subscriber


async def publish_range(client, channel, start, stop, prefix="/publisher/"):
    for n in range(start, stop):
        response = await client.post(
            prefix + channel, content=f"m{n}", headers={"content-type": "text/plain"}
        )
        assert response.status_code in (201, 202), response.text


async def last_id(client, channel, prefix="/publisher/") -> str:
    response = await client.get(prefix + channel, headers={"accept": "application/json"})
    assert response.status_code == 200, response.text
    return response.json()["last_message_id"]


def ordered(ids: list[str]) -> bool:
    keys = [tuple(map(int, i.split(":"))) for i in ids]
    return keys == sorted(set(keys))


# -- the behaviours -----------------------------------------------------------------------------


async def test_messages_arrive_in_order(client, subscribe, transport, channel):
    """50 messages, the first 20 retained before the subscriber comes, 30 published while
    it reads: all 50 in publish order, none twice."""
    await publish_range(client, channel, 0, 20)
    with anyio.fail_after(TIMEOUT):
        async with subscribe(transport, channel) as subscriber, anyio.create_task_group() as tg:
            tg.start_soon(publish_range, client, channel, 20, 50)
            got = await subscriber.read(50)
    assert [r.body for r in got] == [f"m{n}" for n in range(50)]
    assert {r.channel for r in got} == {channel}
    assert ordered([r.id for r in got])
    assert got[-1].id == await last_id(client, channel)


async def test_resume_exactly_after_a_position(client, subscribe, transport, channel):
    await publish_range(client, channel, 0, 10)
    with anyio.fail_after(TIMEOUT):
        async with subscribe(transport, channel) as subscriber:
            first = await subscriber.read(10)
        async with subscribe(transport, channel, after=first[4].id) as subscriber:
            again = await subscriber.read(5)
            await publish_range(client, channel, 10, 11)
            live = await subscriber.next()  # not a repeat of m9
    assert [(r.id, r.body) for r in again] == [(r.id, r.body) for r in first[5:]]
    assert (live.kind, live.body) == ("message", "m10")


async def test_resume_from_an_evicted_position(client, subscribe, transport, channel):
    """The messages after the position left the buffer: the streams say so with a gap
    signal before the oldest retained message; long-poll has no gap signal and simply
    answers the oldest retained one."""
    await publish_range(client, channel, 0, 1, prefix="/small-publisher/")
    evicted = await last_id(client, channel, prefix="/small-publisher/")
    await publish_range(client, channel, 1, BUFFER + 3, prefix="/small-publisher/")
    with anyio.fail_after(TIMEOUT):
        async with subscribe(transport, channel, after=evicted, prefix="/small/") as subscriber:
            if transport in STREAMING:
                gap = await subscriber.next()
            retained = await subscriber.read(BUFFER)
            await publish_range(client, channel, BUFFER + 3, BUFFER + 4, prefix="/small-publisher/")
            live = await subscriber.next()  # no second gap
    assert [r.body for r in retained] == ["m3", "m4", "m5", "m6"]
    assert (live.kind, live.body) == ("message", "m7")
    if transport in STREAMING:
        assert gap.kind == "gap"
        assert gap.data == {"type": "gap", "channel": channel, "after": evicted,
                            "next": retained[0].id}  # fmt: skip


#: What a subscriber gets when its channel is deleted, and how the transport then ends.
DELETED = {
    "longpoll": ((410, "410 Gone: the channel was deleted\n"), ("status", 404)),
    "sse": ("json", ("end",)),
    "websocket": ("json", ("close", 4410, "the channel was deleted")),
}


async def test_delete_ends_the_subscription(client, subscribe, transport, channel):
    assert (await client.put(f"/publisher/{channel}")).status_code == 200
    await publish_range(client, channel, 0, 1)
    newest = await last_id(client, channel)
    got: list[Received] = []
    with anyio.fail_after(TIMEOUT):
        async with subscribe(transport, channel, after=newest, prefix="/strict/") as subscriber:
            async with anyio.create_task_group() as tg:

                async def take() -> None:
                    got.append(await subscriber.next())

                tg.start_soon(take)
                # Deleted only once the subscriber waits: long-poll would get 404 otherwise.
                await wait_for_subscribers(client, f"/publisher/{channel}", 1)
                assert (await client.delete(f"/publisher/{channel}")).status_code == 200
            ending = await subscriber.ending()
    signal, expected_ending = DELETED[transport]
    [deleted] = got
    assert (deleted.kind, deleted.channel) == ("deleted", channel)
    if signal == "json":
        assert deleted.data == {"type": "deleted", "channel": channel}
    else:
        assert deleted.data == signal
    assert ending == expected_ending


def by_channel(received: list[Received]) -> dict[str, list[tuple[str | None, str | None]]]:
    """Per channel, the (id, body) pairs in the order received."""
    channels: dict[str, list[tuple[str | None, str | None]]] = {}
    for r in received:
        channels.setdefault(r.channel, []).append((r.id, r.body))
    return channels


def bodies_by_channel(sequence: list[str]) -> dict[str, list[str]]:
    channels: dict[str, list[str]] = {}
    for n, channel in enumerate(sequence):
        channels.setdefault(channel, []).append(f"m{n}")
    return channels


@pytest.mark.parametrize("transport", transport_params(*STREAMING, served=SERVED))
async def test_multiplexed_order_and_resume(client, subscribe, transport, channel):
    """One stream on two channels: each channel's messages in order, each with its channel;
    the compound position resumes exactly after the third.

    Order *across* channels is by message id, and ids are per channel (``<time>:<tag>``,
    the tag counting within the second per channel), so it is not publish order.
    """
    a, b = f"{channel}-a", f"{channel}-b"
    sequence = [a, b, a, b, b, a]
    with anyio.fail_after(TIMEOUT):
        async with subscribe(transport, [a, b]) as subscriber:
            for n, target in enumerate(sequence):
                await publish_range(client, target, n, n + 1)
            head = await subscriber.read(3)
            position = subscriber.position
            tail = await subscriber.read(3)
        async with subscribe(transport, [a, b], after=position) as subscriber:
            again = await subscriber.read(3)
            await publish_range(client, b, 6, 7)
            live = await subscriber.next()
    got = by_channel(head + tail)
    assert {c: [body for _, body in got[c]] for c in got} == bodies_by_channel(sequence)
    assert all(ordered([i for i, _ in pairs]) for pairs in got.values())
    assert by_channel(again) == by_channel(tail)
    assert (live.channel, live.body) == (b, "m6")


@about_transports("longpoll")
async def test_long_poll_does_not_multiplex(client, subscribe, channel):
    """On long-poll ``a,b`` is one channel of that name, not ``a`` and ``b``."""
    a, b = f"{channel}-a", f"{channel}-b"
    await publish_range(client, a, 0, 1)
    await publish_range(client, f"{a},{b}", 1, 2)
    with anyio.fail_after(TIMEOUT):
        async with subscribe("longpoll", [a, b]) as subscriber:
            [got] = await subscriber.read(1)
    assert (got.channel, got.body) == (f"{a},{b}", "m1")


@about_transports(*SERVED.values())
@pytest.mark.parametrize("order", list(itertools.permutations(TRANSPORTS)), ids="-".join)
async def test_moving_between_transports(client, subscribe, channel, order):
    """Read some with one transport, carry on from its last id with the next: the ids are
    the same everywhere, so nothing is lost or repeated."""
    await publish_range(client, channel, 0, 9)
    got: list[Received] = []
    position = None
    with anyio.fail_after(TIMEOUT):
        for transport in order:
            async with subscribe(transport, channel, after=position) as subscriber:
                got += await subscriber.read(3)
                position = subscriber.position
                if transport == order[-1]:
                    await publish_range(client, channel, 9, 10)
                    got += await subscriber.read(1)
    assert [r.body for r in got] == [f"m{n}" for n in range(10)]
    assert ordered([r.id for r in got])
    assert got[-1].id == await last_id(client, channel)


@about_transports("eventsource", "websocket")
@pytest.mark.parametrize("order", [STREAMING, STREAMING[::-1]], ids="-".join)
async def test_compound_position_moves_between_streams(client, subscribe, channel, order):
    """A multiplexed position from an event stream resumes a WebSocket, and back."""
    a, b = f"{channel}-a", f"{channel}-b"
    sequence = [a, b, b, a, b, a]
    for n, target in enumerate(sequence):
        await publish_range(client, target, n, n + 1)
    first, second = order
    with anyio.fail_after(TIMEOUT):
        async with subscribe(first, [a, b]) as subscriber:
            head = await subscriber.read(3)
            position = subscriber.position
        async with subscribe(second, [a, b], after=position) as subscriber:
            tail = await subscriber.read(3)
    got = by_channel(head + tail)
    assert {c: [body for _, body in got[c]] for c in got} == bodies_by_channel(sequence)
    assert all(ordered([i for i, _ in pairs]) for pairs in got.values())
