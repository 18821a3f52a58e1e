"""Bounded memory against a real runpushserver: an anonymous flood of channel-creating long
polls leaves nothing behind, a publish flood stops at the store's budget with 507 and loses
nothing it accepted, and the status location counts it all (docs/topics.md#bounded-memory).

RSS is read from /proc: these are bounds the server must stay within, not timings."""

from __future__ import annotations

import uuid

import anyio
import pytest
from django.test import override_settings

from bench.common import rss_bytes
from pushserver.exceptions import StoreFull
from pushserver.utils import updates
from pushserver.utils.updates import SendUpdateError
from tests.project.helpers import assert_still_serving, path
from tests.test_status import parse_prometheus, sample, status, wait_status

ORIGIN = "https://site.example"
#: The budget the publish flood runs into, and the size of its messages.
LIMIT = 2 * 1024 * 1024
BODY_SIZE = 64 * 1024

CONFIG = {
    "max_message_size": BODY_SIZE,
    "store": {
        "default": {"type": "memory"},
        "anon": {"type": "memory", "channel_timeout": 1},
        "small": {"type": "memory", "memory_limit": LIMIT},
        "few": {"type": "memory", "max_channels": 3},
    },
    "locations": [
        {"type": "publisher", "prefix": "/publisher/", "allow_origin": ORIGIN},
        {"type": "subscriber", "prefix": "/subscriber/", "create_on_get": True},
        {"type": "subscriber", "prefix": "/anon/", "store": "anon", "create_on_get": True},
        {
            "type": "publisher",
            "prefix": "/small-publisher/",
            "store": "small",
            "allow_origin": ORIGIN,
        },
        {"type": "subscriber", "prefix": "/small/", "store": "small", "polling": "interval"},
        {"type": "publisher", "prefix": "/few-publisher/", "store": "few"},
        {"type": "subscriber", "prefix": "/few/", "store": "few", "create_on_get": True},
        {"type": "status", "prefix": "/status/", "interval": 0.2},
    ],
}
CLIENT_TIMEOUT = 30

#: Anonymous long polls per flood, and how many hang up at once.
FLOOD = 10_000
CONCURRENCY = 48
#: What the first flood may add to the server's RSS (it fills allocator pools and caches
#: once), and what a second one as large may add on top: with no channel left behind, about
#: nothing (without channel_timeout each flood kept ~2.8 MiB of channels, ~230 B each).
FIRST_FLOOD_RSS = 24 * 1024 * 1024
SECOND_FLOOD_RSS = 2 * 1024 * 1024

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


async def hang_up(port: int, channel: str) -> None:
    """A long poll on a fresh channel (created: create_on_get) that hangs up at once: the
    request, then the end of stream; returns when the server has closed its side."""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(f"GET /anon/{channel} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        await stream.send_eof()
        with anyio.fail_after(30):
            try:
                while await stream.receive():
                    pass
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass


async def flood(port: int, count: int) -> None:
    limiter = anyio.CapacityLimiter(CONCURRENCY)

    async def one() -> None:
        async with limiter:
            await hang_up(port, f"anon-{uuid.uuid4().hex}")

    async with anyio.create_task_group() as tg:
        for _ in range(count):
            tg.start_soon(one)


async def test_abandoned_channels_flood_keeps_memory_flat_and_serves_others(server, client):
    port = int(server.url.rsplit(":", 1)[1])
    pid = server.process.pid
    await assert_still_serving(client)
    before = rss_bytes(pid)

    async def serve_others_meanwhile() -> None:
        for _ in range(3):
            await assert_still_serving(client)

    async with anyio.create_task_group() as tg:
        tg.start_soon(serve_others_meanwhile)
        await flood(port, FLOOD)
    first = rss_bytes(pid)
    await flood(port, FLOOD)
    second = rss_bytes(pid)
    # Every flooded channel was created, and is gone once channel_timeout has passed.
    data = await wait_status(client, lambda d: d["stores"]["anon"]["channels"] == 0)
    store = data["stores"]["anon"]
    assert store["expired_channels"] >= 2 * FLOOD
    assert store["memory"]["used"] == 0
    assert store["connections"]["longpoll"] == 0
    await assert_still_serving(client)
    assert first - before < FIRST_FLOOD_RSS, (before, first)
    assert second - first < SECOND_FLOOD_RSS, (first, second)


async def test_publish_flood_is_refused_at_the_budget_and_keeps_what_it_accepted(client):
    accepted: dict[str, list[bytes]] = {}
    refusals = 0
    for i in range(60):
        channel = f"big-{i % 12}"
        body = bytes([65 + i % 26]) * (BODY_SIZE - 8) + b"%08d" % i
        response = await client.post(
            path("/small-publisher/", channel), content=body, headers={"origin": ORIGIN}
        )
        assert response.headers["access-control-allow-origin"] == ORIGIN
        if response.status_code == 507:
            refusals += 1
            assert response.text.startswith("507 Insufficient Storage: the channel store is full")
            assert "memory_limit" in response.text
            assert len(response.content) < 200
        else:
            assert response.status_code == 202, response.text
            accepted.setdefault(channel, []).append(body)
    kept = sum(map(len, accepted.values()))
    assert 20 < kept < 32 and refusals == 60 - kept
    # What was accepted reads back whole and in order.
    for channel, bodies in accepted.items():
        headers: dict[str, str] = {}
        read = []
        while True:
            response = await client.get(path("/small/", channel), headers=headers)
            if response.status_code == 304:
                break
            assert response.status_code == 200
            read.append(response.content)
            headers = {
                "if-modified-since": response.headers["last-modified"],
                "if-none-match": response.headers["etag"],
            }
        assert read == bodies
    # The status says so, in JSON and in Prometheus text.
    store = (await status(client))["stores"]["small"]
    assert store["publishes_refused"] == refusals
    assert store["backend"]["refusals"]["memory_limit"] == refusals
    assert LIMIT - BODY_SIZE < store["memory"]["used"] <= LIMIT == store["memory"]["limit"]
    families = parse_prometheus((await client.get("/status/metrics")).text)
    assert sample(families, "pushserver_publishes_refused_total", store="small") == refusals
    assert sample(families, "pushserver_store_memory_limit_bytes", store="small") == LIMIT
    assert sample(families, "pushserver_store_memory_bytes", store="small") <= LIMIT
    # Deleting makes room again.
    assert (await client.delete(path("/small-publisher/", "big-0"))).status_code == 200
    response = await client.post(path("/small-publisher/", "big-0"), content=b"room again")
    assert response.status_code == 202


async def test_a_channel_creating_subscribe_past_max_channels_is_refused(server, client):
    for channel in ("a", "b", "c"):
        assert (await client.put(path("/few-publisher/", channel))).status_code == 200
    response = await client.get(path("/few/", "d"))
    assert response.status_code == 507
    assert response.text.startswith("507 Insufficient Storage: the channel store is full")
    assert "max_channels" in response.text
    assert response.headers["access-control-allow-origin"] == "*"
    stream = await client.get(path("/few/", "e"), headers={"accept": "text/event-stream"})
    assert stream.status_code == 507
    assert (await client.put(path("/few-publisher/", "f"))).status_code == 507
    # Existing channels are served as before.
    response = await client.post(path("/few-publisher/", "a"), content=b"still")
    assert response.status_code == 202
    response = await client.get(path("/few/", "a"))
    assert (response.status_code, response.content) == (200, b"still")
    store = (await status(client))["stores"]["few"]
    assert (store["subscribes_refused"], store["publishes_refused"]) == (2, 1)
    assert store["max_channels"] == 3 and store["channels"] == 3


async def test_send_update_raises_store_full(server, client):
    for channel in ("a", "b", "c"):
        await client.put(path("/few-publisher/", channel))
    host = server.host
    settings = {
        "locations": [{"type": "publisher", "prefix": "/few-publisher/"}],
        "publisher_host": {"location": host},
    }
    with override_settings(PUSH_SERVER=settings), pytest.raises(StoreFull) as raised:
        await anyio.to_thread.run_sync(updates.send_update, "new-channel", {"x": 1})
    assert isinstance(raised.value, SendUpdateError)
    assert (raised.value.status, raised.value.limit) == (507, "max_channels")
    assert "max_channels" in str(raised.value)
    # An existing channel still takes it.
    with override_settings(PUSH_SERVER=settings):
        await anyio.to_thread.run_sync(updates.send_update, "a", {"x": 2})


async def test_the_flood_figures_are_bounded_by_default():
    """The documented example's store (no limits written) has a budget and a timeout."""
    from pushserver.config import load
    from tests.test_config_checks import DOCUMENTED_EXAMPLE

    options = load(DOCUMENTED_EXAMPLE).stores["default"].options
    assert options["channel_timeout"] > 0
    assert options["memory_limit"] > 0 and options["max_channels"] > 0
