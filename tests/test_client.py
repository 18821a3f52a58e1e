"""The Python client (:mod:`pushserver.client`) against real ``runpushserver`` processes, on
the memory store and on a real ``redis-server``: WebSocket and event-stream delivery,
resume across a restart, the fallback when WebSocket is refused, gaps and deletions."""

from __future__ import annotations

import threading
import time
from contextlib import aclosing

import anyio
import httpx
import pytest

from pushserver.client import Deleted, Gap, Message, SubscriptionError, subscribe, subscribe_sync
from pushserver.testing import PushServerProcess, free_port
from tests.conftest import ROOT
from tests.project.helpers import wait_for_info
from tests.transports.streams import last_id, publish

pytestmark = pytest.mark.anyio

BUFFER = 4
FAST = {"min_delay": 0.05, "max_delay": 0.5}  # reconnect quickly: the tests wait on items


def config(store: dict) -> dict:
    return {
        "store": store,
        "locations": [
            {"type": "publisher", "prefix": "/publisher/"},
            {"type": "subscriber", "prefix": "/subscriber/", "create_on_get": True},
            {"type": "subscriber", "prefix": "/strict/"},
            {
                "type": "subscriber",
                "prefix": "/nows/",
                "create_on_get": True,
                "transports": ["longpoll", "eventsource"],
            },
            {"type": "subscriber", "prefix": "/quiet/", "create_on_get": True, "ping_interval": 0},
            {
                "type": "subscriber",
                "prefix": "/hook/",
                "create_on_get": True,
                "can_subscribe": "tests.project.authz.async_hook",  # agent*: User-Agent friend
            },
        ],
    }


def store_for(kind: str, request) -> dict:
    if kind == "memory":
        return {"type": "memory", "max_messages": BUFFER}
    return request.getfixturevalue("redis_server").store(max_messages=BUFFER)


@pytest.fixture(scope="module", params=["memory", "redis"])
def server(request):
    push_server = config(store_for(request.param, request))
    with PushServerProcess(
        "tests.project.settings", push_server=push_server, cwd=str(ROOT)
    ) as process:
        yield process


#: Each test over WebSocket, and over the event stream the client falls back to.
BOTH_TRANSPORTS = pytest.mark.parametrize("prefix", ["/subscriber/", "/nows/"])


async def two_channels(client, prefix: str, tag: str) -> tuple[str, str]:
    """Two channels of this test and transport, with a retained ``a0`` and ``b0``."""
    name = prefix.strip("/")
    a, b = f"{tag}-a-{name}", f"{tag}-b-{name}"
    await publish(client, a, "a0")
    await publish(client, b, "b0")
    return a, b


async def take(items, count: int) -> list:
    with anyio.fail_after(20):
        return [await anext(items) for _ in range(count)]


@BOTH_TRANSPORTS
async def test_delivery_in_order(server, client, prefix):
    channel = f"order{prefix.strip('/')}"
    await publish(client, channel, '{"n": 0}', content_type="application/json")
    await publish(client, channel, b"\x00\xff", content_type="image/png")
    url = server.url + prefix + channel
    async with aclosing(subscribe(url, **FAST)) as items:
        first = await take(items, 2)
        for n in range(1, 21):  # subscribed: it delivered the retained ones
            await publish(client, channel, f"m{n}", x_eventsource_event="tick")
        live = await take(items, 20)
    assert all(type(item) is Message and item.channel == channel for item in first + live)
    assert first[0].json() == {"n": 0}
    assert [item.text for item in live] == [f"m{n}" for n in range(1, 21)]
    assert {item.event for item in live} == {"tick"}
    ids = [tuple(map(int, item.id.split(":"))) for item in first + live]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    if prefix == "/subscriber/":  # WebSocket carries the content type and the bytes
        assert first[0].content_type == "application/json"
        assert first[1].data == b"\x00\xff" and first[1].content_type == "image/png"
    else:  # an event stream carries text only
        assert first[0].content_type is None and first[1].data == "\x00\ufffd".encode()


@BOTH_TRANSPORTS
async def test_several_channels_resume_from_the_compound_id(server, client, prefix):
    a, b = await two_channels(client, prefix, "multi")
    url = f"{server.url}{prefix}{a},{b}"
    async with aclosing(subscribe(url, **FAST)) as items:
        got = await take(items, 2)
    assert sorted((m.channel, m.text) for m in got) == [(a, "a0"), (b, "b0")]
    await publish(client, a, "a1")
    resume = f"{await last_id(client, a)}"
    # Resuming after both a0 and b0: only what came later.
    ids = {m.channel: m.id for m in got}
    async with aclosing(subscribe(url, last_event_id=f"{ids[a]},{ids[b]}", **FAST)) as items:
        await publish(client, b, "b1")
        again = await take(items, 2)
    assert [(m.channel, m.text) for m in again] == [(a, "a1"), (b, "b1")]
    assert again[0].id == resume


async def test_fallback_only_when_websocket_is_refused(server):
    url = server.url + "/nows/only-sse"
    with anyio.fail_after(20):
        with pytest.raises(SubscriptionError) as refused:
            async with aclosing(subscribe(url, transport="websocket", **FAST)) as items:
                await anext(items)
    assert (refused.value.code, refused.value.reason) == (4403, "WebSocket is not enabled here")
    with anyio.fail_after(20), pytest.raises(SubscriptionError) as missing:
        async with aclosing(subscribe(server.url + "/strict/missing", **FAST)) as items:
            await anext(items)
    assert (missing.value.code, missing.value.reason) == (4404, "no such channel: missing")


@BOTH_TRANSPORTS
async def test_gap_after_falling_behind_the_buffer(server, client, prefix):
    channel = f"gap-{prefix.strip('/')}"
    await publish(client, channel, "m0")
    first = await last_id(client, channel)
    for n in range(1, BUFFER + 3):
        await publish(client, channel, f"m{n}")
    url = server.url + prefix + channel
    async with aclosing(subscribe(url, last_event_id=first, **FAST)) as items:
        gap, *messages = await take(items, 1 + BUFFER)
    assert gap == Gap(channel, first, messages[0].id)
    assert [m.text for m in messages] == ["m3", "m4", "m5", "m6"]


@BOTH_TRANSPORTS
async def test_deleted_channels_end_the_subscription(server, client, prefix):
    a, b = await two_channels(client, prefix, "del")
    async with aclosing(subscribe(f"{server.url}{prefix}{a},{b}", **FAST)) as items:
        await take(items, 2)
        await client.delete(f"/publisher/{a}")
        assert await take(items, 1) == [Deleted(a)]
        await publish(client, b, "b1")
        assert [m.text for m in await take(items, 1)] == ["b1"]
        await client.delete(f"/publisher/{b}")
        assert await take(items, 1) == [Deleted(b)]
        with anyio.fail_after(20), pytest.raises(StopAsyncIteration):
            await anext(items)


@pytest.mark.parametrize("store", ["memory", "redis"])
@BOTH_TRANSPORTS
async def test_resume_after_the_server_restarts(push_server_factory, request, store, prefix):
    push_server = config(store_for(store, request))
    address = f"127.0.0.1:{free_port()}"
    server = push_server_factory(push_server, address=address)
    channel = "restart"
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        await publish(client, channel, "m0")
        await publish(client, channel, "m1")
    async with aclosing(subscribe(server.url + prefix + channel, **FAST)) as items:
        before = await take(items, 2)
        assert [m.text for m in before] == ["m0", "m1"]
        server.stop()
        again = push_server_factory(push_server, address=address)
        # A memory store starts its ids again from the clock: a message of the second m1
        # was published in would count as older than it (nchan's ids behave the same).
        while int(time.time()) <= int(before[1].id.split(":")[0]):
            await anyio.sleep(0.05)
        async with httpx.AsyncClient(base_url=again.url, timeout=10) as client:
            # Published while the client is away (asked for nothing yet, it has not
            # reconnected): it resumes from m1's id and gets exactly what followed.
            await publish(client, channel, "m2")
            await publish(client, channel, "m3")
        items_after = await take(items, 2)
    # Nothing repeated (with redis the new process still has m0 and m1), nothing lost.
    assert [(type(m), m.text) for m in items_after] == [(Message, "m2"), (Message, "m3")]


def test_subscribe_sync_in_a_script(push_server):
    with httpx.Client(base_url=push_server.url, timeout=10) as client:
        for n in range(3):
            response = client.post("/publisher/sync", content=f"s{n}")
            assert response.status_code in (201, 202)
    got = []
    threads = threading.active_count()
    items = subscribe_sync(push_server.url + "/subscriber/sync", **FAST)
    for item in items:
        got.append(item.text)
        if len(got) == 3:
            break
    items.close()  # what leaving a for loop does once the generator is collected
    assert got == ["s0", "s1", "s2"]
    assert threading.active_count() == threads  # the portal's thread is gone


async def test_without_retry_a_shutdown_raises_with_its_close_code(push_server):
    async with httpx.AsyncClient(base_url=push_server.url, timeout=10) as client:
        await publish(client, "once", "m0")
    url = push_server.url + "/subscriber/once"
    async with aclosing(subscribe(url, retry=False)) as items:
        assert [m.text for m in await take(items, 1)] == ["m0"]
        push_server.stop()
        with anyio.fail_after(20), pytest.raises(SubscriptionError) as ended:
            await anext(items)
    assert (ended.value.code, ended.value.reason) == (1001, "the server is shutting down")


@BOTH_TRANSPORTS
async def test_a_gap_is_told_once_across_reconnects(push_server_factory, redis_server, prefix):
    """Everything after the position expired: the gap has no next message, so the client
    still holds that position when the server restarts, and is told the same gap again;
    it passes it on once."""
    push_server = config(redis_server.store(message_timeout=1))
    address = f"127.0.0.1:{free_port()}"
    server = push_server_factory(push_server, address=address)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        await publish(client, "expired", "m0")
        first = await last_id(client, "expired")
        await publish(client, "expired", "m1")
        await wait_for_info(client, "/publisher/expired", "messages", 0, timeout=20)
    url = server.url + prefix + "expired"
    async with aclosing(subscribe(url, last_event_id=first, **FAST)) as items:
        assert await take(items, 1) == [Gap("expired", first, None)]
        server.stop()
        again = push_server_factory(push_server, address=address)
        async with httpx.AsyncClient(base_url=again.url, timeout=10) as client:
            await publish(client, "expired", "m2")
        (item,) = await take(items, 1)
    assert (type(item), item.text) == (Message, "m2")


async def test_fallback_where_the_websocket_handshake_fails_against_nchan():
    """nchan itself (Debian's nginx with libnginx-mod-nchan) answers the offer of
    ``pushserver.v1`` with an empty Sec-WebSocket-Protocol, which ``websockets`` refuses:
    the client goes on over nchan's event stream, from the same position. (The other way
    to fall back, a 4403 close, is test_fallback_only_when_websocket_is_refused.)"""
    from bench.nchan import Nchan, available

    if not available():
        pytest.skip("nginx with libnginx-mod-nchan is not installed")
    nchan = Nchan(free_port(), cpu=0, nofile=1024).start()
    try:
        base = f"http://127.0.0.1:{nchan.port}"
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            for body in ("n0", "n1"):
                response = await client.post("/pub/theirs", content=body)
                assert response.status_code in (201, 202), response.text
            url = base + "/sub/theirs"
            with anyio.fail_after(20), pytest.raises(SubscriptionError) as refused:
                async with aclosing(subscribe(url, transport="websocket", **FAST)) as items:
                    await anext(items)
            assert refused.value.code == 4403
            assert refused.value.reason.startswith("WebSocket handshake failed")
            async with aclosing(subscribe(url, **FAST)) as items:
                got = await take(items, 2)
                await client.post("/pub/theirs", content="n2")
                got += await take(items, 1)
    finally:
        nchan.stop()
    assert [(m.channel, m.text) for m in got] == [("theirs", f"n{n}") for n in range(3)]
    assert len({m.id for m in got}) == 3


async def test_an_event_stream_silent_past_idle_timeout_is_dropped(server, client):
    """An event stream that sends nothing, not even a keepalive comment (this location
    sends none), for ``idle_timeout`` seconds counts as dropped: with ``retry=False`` it
    raises the network's TimeoutError; ``idle_timeout=None`` waits on."""
    await publish(client, "idle", "m0")
    url = server.url + "/quiet/idle"
    options = {"transport": "eventsource", "retry": False}
    async with aclosing(subscribe(url, idle_timeout=0.3, **options)) as items:
        assert [m.text for m in await take(items, 1)] == ["m0"]
        with anyio.fail_after(20), pytest.raises(TimeoutError):
            await anext(items)

    async def after_a_silence() -> None:
        await anyio.sleep(0.6)  # the silence under test (twice the timeout above), no sync
        await publish(client, "idle", "m1")

    async with aclosing(subscribe(url, idle_timeout=None, **options)) as items:
        assert [m.text for m in await take(items, 1)] == ["m0"]
        async with anyio.create_task_group() as group:
            group.start_soon(after_a_silence)
            assert [m.text for m in await take(items, 1)] == ["m1"]


@pytest.mark.parametrize("transport", ["websocket", "eventsource"])
async def test_headers_go_with_every_connection(server, client, transport):
    """``headers`` reach the server on each transport: a ``can_subscribe`` hook that lets
    only the User-Agent 'friend' in (tests/project/authz.py) accepts the client that sends
    it, and refuses (403 / 4403) the one that does not."""
    channel = f"agent-{transport}"
    await publish(client, channel, "for friends")
    url = server.url + "/hook/" + channel
    friend = {"transport": transport, "headers": {"User-Agent": "friend"}}
    async with aclosing(subscribe(url, **friend, **FAST)) as items:
        assert [m.text for m in await take(items, 1)] == ["for friends"]
    stranger = {"transport": transport, "headers": {"User-Agent": "stranger"}}
    with anyio.fail_after(20), pytest.raises(SubscriptionError) as refused:
        async with aclosing(subscribe(url, **stranger, **FAST)) as items:
            await anext(items)
    assert refused.value.code == (4403 if transport == "websocket" else 403)
