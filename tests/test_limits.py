"""Limits against a real runpushserver: each refusal has the documented status (or WebSocket
close code) and a short body, and the server keeps serving everyone else."""

from __future__ import annotations

import json

import anyio
import httpx
import pytest

from pushserver.config import parse
from tests.project.helpers import assert_still_serving, path, position, wait_for_subscribers
from tests.transports.streams import closed_with, connect, ws_frame, ws_url

ID_LIMIT = 16

CONFIG = {
    "max_channel_id_length": ID_LIMIT,
    "locations": [
        {"type": "publisher", "prefix": "/publisher/"},
        {"type": "subscriber", "prefix": "/subscriber/", "create_on_get": True},
        {"type": "subscriber", "prefix": "/capped/", "create_on_get": True, "max_subscribers": 1},
        {"type": "subscriber", "prefix": "/few/", "create_on_get": True, "max_channels": 2},
    ],
}


CLIENT_TIMEOUT = 30


# -- channel id length ---------------------------------------------------------------------

TOO_LONG = "x" * (ID_LIMIT + 1)
LONG_REASON = f"the channel id is longer than {ID_LIMIT} characters"
LONG_BODY = f"400 Bad Request: {LONG_REASON}\n"


@pytest.mark.anyio
@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE"])
async def test_publisher_refuses_long_channel_id(client, method):
    response = await client.request(method, path("/publisher/", TOO_LONG), content=b"x")
    assert response.status_code == 400
    assert response.text == LONG_BODY
    await assert_still_serving(client, f"after-pub-{method}")


@pytest.mark.anyio
async def test_longpoll_refuses_long_channel_id(client):
    response = await client.get(path("/subscriber/", TOO_LONG))
    assert response.status_code == 400
    assert response.text == LONG_BODY
    await assert_still_serving(client, "after-longpoll")


@pytest.mark.anyio
async def test_event_stream_refuses_long_channel_id(client):
    # One id of a multiplexed list is enough to refuse the whole stream.
    response = await client.get(
        "/subscriber/ok," + TOO_LONG, headers={"accept": "text/event-stream"}
    )
    assert response.status_code == 400
    assert response.text == LONG_BODY
    await assert_still_serving(client, "after-sse")


@pytest.mark.anyio
async def test_websocket_refuses_long_channel_id(server, client):
    with anyio.fail_after(10):
        async with connect(ws_url(server, "/subscriber/" + TOO_LONG)) as ws:
            assert await closed_with(ws) == (4400, LONG_REASON)
        # A subscribe command with a long id gets an error reply; the connection stays.
        async with connect(ws_url(server, "/subscriber/ws-ok")) as ws:
            await ws.send(json.dumps({"subscribe": TOO_LONG}))
            assert json.loads(await ws.recv()) == {"type": "error", "error": LONG_REASON}
            await ws.send('{"ping": 1}')
            assert json.loads(await ws.recv()) == {"type": "pong"}
    await assert_still_serving(client, "after-ws")


@pytest.mark.anyio
async def test_limit_counts_decoded_characters(client):
    # 16 two-byte characters: 96 bytes percent-encoded, 16 characters decoded.
    channel_id = "é" * ID_LIMIT
    response = await client.post(path("/publisher/", channel_id), content=b"x")
    assert response.status_code == 202, response.text
    polled = await client.get(path("/subscriber/", channel_id))
    assert (polled.status_code, polled.content) == (200, b"x")
    await assert_still_serving(client, "after-decoded")


@pytest.mark.anyio
async def test_zero_means_no_limit(push_server_factory):
    server = push_server_factory({**CONFIG, "max_channel_id_length": 0})
    channel_id = "y" * 5000
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        response = await client.post(path("/publisher/", channel_id), content=b"x")
        assert response.status_code == 202, response.text
        polled = await client.get(path("/subscriber/", channel_id))
        assert (polled.status_code, polled.content) == (200, b"x")
        await assert_still_serving(client, "after-unlimited")


def test_id_length_default_and_checks():
    config, problems = parse({})
    assert problems == []
    assert all(loc.max_channel_id_length == 1024 for loc in config.locations)
    for bad in (-1, 1.5, "64", True):
        _, problems = parse({"max_channel_id_length": bad})
        assert [(p.id, p.key) for p in problems] == [
            ("pushserver.E054", "PUSH_SERVER['max_channel_id_length']")
        ]
        assert "whole number" in problems[0].message


# -- subscribers per channel ---------------------------------------------------------------


def full_reason(channel_id: str) -> str:
    return f"channel {channel_id} has its maximum of 1 subscribers"


@pytest.mark.anyio
async def test_max_subscribers_refuses_the_next_subscriber(server, client):
    channel_id = "capped"
    result: dict[str, httpx.Response] = {}

    async def hold() -> None:
        result["first"] = await client.get(path("/capped/", channel_id))

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hold)
            await wait_for_subscribers(client, path("/publisher/", channel_id), 1)

            refused = await client.get(path("/capped/", channel_id))
            assert refused.status_code == 403
            assert refused.text == f"403 Forbidden: {full_reason(channel_id)}\n"

            refused = await client.get(
                path("/capped/", channel_id), headers={"accept": "text/event-stream"}
            )
            assert refused.status_code == 403
            assert refused.text == f"403 Forbidden: {full_reason(channel_id)}\n"

            async with connect(ws_url(server, "/capped/" + channel_id)) as ws:
                assert await closed_with(ws) == (4403, full_reason(channel_id))
            async with connect(ws_url(server, "/capped/other")) as ws:
                await ws.send(json.dumps({"subscribe": channel_id}))
                reply = json.loads(await ws.recv())
                assert reply == {
                    "type": "error",
                    "error": full_reason(channel_id),
                    "channel": channel_id,
                }

            # The refusals did not count: still one subscriber, and it gets the message.
            info = await wait_for_subscribers(client, path("/publisher/", channel_id), 1)
            assert info["subscribers"] == 1
            published = await client.post(path("/publisher/", channel_id), content=b"one")
            assert published.status_code == 201
    assert (result["first"].status_code, result["first"].content) == (200, b"one")

    # Once the first subscriber left, the next one may wait again.
    await wait_for_subscribers(client, path("/publisher/", channel_id), 0)
    second: dict[str, httpx.Response] = {}

    async def wait_again() -> None:
        second["poll"] = await client.get(
            path("/capped/", channel_id), headers=position(result["first"])
        )

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_again)
            await wait_for_subscribers(client, path("/publisher/", channel_id), 1)
            await client.post(path("/publisher/", channel_id), content=b"two")
    assert (second["poll"].status_code, second["poll"].content) == (200, b"two")
    await assert_still_serving(client, "after-capped")


@pytest.mark.anyio
async def test_a_long_poll_polling_again_at_once_is_not_counted_twice(client):
    """Its subscription is given back before the answer is sent, so the next poll, sent
    as soon as the answer arrives, finds the channel's one place free."""
    channel_id = "capped-follower"
    headers: dict[str, str] = {}
    with anyio.fail_after(30):
        for i in range(20):
            got: dict[str, httpx.Response] = {}

            async def poll(got: dict = got, headers: dict = headers) -> None:
                got["poll"] = await client.get(path("/capped/", channel_id), headers=headers)

            async with anyio.create_task_group() as tg:
                tg.start_soon(poll)
                if i == 0:
                    await wait_for_subscribers(client, path("/publisher/", channel_id), 1)
                await client.post(path("/publisher/", channel_id), content=b"%d" % i)
            # The first poll is answered by the publish; each later one by the buffer or by
            # the publish, whichever comes first: never refused.
            assert got["poll"].status_code == 200, got["poll"].text
            assert got["poll"].content == b"%d" % i
            headers = position(got["poll"])


def test_max_subscribers_checks():
    config, problems = parse({})
    assert all(loc.max_subscribers == 0 for loc in config.locations)
    locations = [{"type": "subscriber", "prefix": "/s/", "max_subscribers": -1}]
    _, problems = parse({"locations": locations})
    assert [(p.id, p.key) for p in problems] == [
        ("pushserver.E055", "PUSH_SERVER['locations'][0]['max_subscribers']")
    ]
    # A publisher location has no subscribers to limit: an unknown key there.
    _, problems = parse(
        {"locations": [{"type": "publisher", "prefix": "/p/", "max_subscribers": 1}]}
    )
    assert [(p.id, p.key) for p in problems] == [
        ("pushserver.E036", "PUSH_SERVER['locations'][0]['max_subscribers']")
    ]


# -- channels per multiplexed connection ---------------------------------------------------


@pytest.mark.anyio
async def test_max_channels_is_a_location_setting(server, client):
    many = "/few/m1,m2,m3"
    response = await client.get(many, headers={"accept": "text/event-stream"})
    assert response.status_code == 400
    assert response.text == "400 Bad Request: at most 2 channels per subscriber, not 3\n"
    with anyio.fail_after(10):
        async with connect(ws_url(server, many)) as ws:
            assert await closed_with(ws) == (4400, "at most 2 channels per subscriber, not 3")
        async with connect(ws_url(server, "/few/m1,m2")) as ws:
            await ws.send(json.dumps({"subscribe": "m3"}))
            reply = json.loads(await ws.recv())
            assert reply == {
                "type": "error",
                "error": "at most 2 channels per connection",
                "channel": "m3",
            }
            # The two it has still deliver.
            await wait_for_subscribers(client, "/publisher/m2", 1)
            published = await client.post("/publisher/m2", content=b"to m2")
            assert published.status_code == 201
            head, body = ws_frame(await ws.recv())
            assert (head["channel"], body) == ("m2", b"to m2")
    await assert_still_serving(client, "after-few")


def test_max_channels_checks():
    config, problems = parse({})
    assert problems == []
    assert [loc.max_channels for loc in config.locations] == [255, 255]
    locations = [{"type": "subscriber", "prefix": "/s/", "max_channels": "2"}]
    _, problems = parse({"locations": locations})
    assert [(p.id, p.key) for p in problems] == [
        ("pushserver.E056", "PUSH_SERVER['locations'][0]['max_channels']")
    ]


@pytest.mark.anyio
async def test_max_subscribers_counts_across_servers_on_redis(push_server_factory, redis_server):
    """With Redis the count is cluster-wide: a subscriber on one server fills the channel
    for another server sharing the store."""
    settings = {
        "store": redis_server.store(),
        "locations": [
            {"type": "publisher", "prefix": "/publisher/"},
            {
                "type": "subscriber",
                "prefix": "/capped/",
                "create_on_get": True,
                "max_subscribers": 1,
            },
        ],
    }
    first, second = push_server_factory(settings), push_server_factory(settings)
    result: dict[str, httpx.Response] = {}
    async with (
        httpx.AsyncClient(base_url=first.url, timeout=30) as one,
        httpx.AsyncClient(base_url=second.url, timeout=30) as two,
    ):

        async def hold() -> None:
            result["first"] = await one.get("/capped/shared")

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(hold)
                await wait_for_subscribers(two, "/publisher/shared", 1)
                refused = await two.get("/capped/shared")
                assert refused.status_code == 403
                assert refused.text == f"403 Forbidden: {full_reason('shared')}\n"
                published = await two.post("/publisher/shared", content=b"across")
                assert published.status_code == 201
        assert (result["first"].status_code, result["first"].content) == (200, b"across")
