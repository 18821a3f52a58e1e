"""``send_update`` with ``PUSH_SERVER['publish_via'] = 'backend'``: straight to Redis from
the Django process, no HTTP hop, delivered by a real ``runpushserver`` like a POST."""

from __future__ import annotations

from functools import partial

import anyio
import anyio.to_thread
import httpx
import pytest
from django.test import override_settings

from pushserver.utils.updates import SendUpdateError, UpdateResponse, asend_update, send_update
from tests.project.helpers import (
    Follower,
    channel_info,
    push_config,
    silent_server,
    wait_for_subscribers,
)

pytestmark = pytest.mark.anyio


def backend_settings(store: dict, **extra) -> dict:
    # No publisher_host: publishing to the store needs none.
    return {**push_config(store), "publish_via": "backend", **extra}


async def publish(channel: str, data, **kwargs) -> None:
    """The sync send_update, from a thread (as a view or a Celery task calls it)."""
    await anyio.to_thread.run_sync(partial(send_update, channel, data, **kwargs))


async def test_subscriber_gets_it_with_the_usual_position(
    push_server_factory, redis_server, recorded
):
    # linger=0: the server's count drops as soon as the follower's poll ends, so the publish
    # from this other process answers 202 right after (with a linger it is 201 until the
    # count is lowered: tests/backends/test_redis.py, lowered counts linger).
    store = redis_server.store(linger=0)
    server = push_server_factory(push_config(store))
    follower = Follower(server.url, "news")
    try:
        async with httpx.AsyncClient(base_url=server.url) as client:
            # One message over HTTP first: ids continue across the two ways of publishing.
            response = await client.post("/publisher/news", content=b'"over http"')
            assert response.status_code == 202
            await follower.read(1)
            with override_settings(PUSH_SERVER=backend_settings(store)):
                with anyio.fail_after(20):
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(follower.read, 2)
                        await wait_for_subscribers(client, "/publisher/news", 1)
                        await publish("news", {"text": "via redis"})
                    await publish("news", [1, 2])  # nobody waits: stored (202)
                    await follower.read(3)
            info = await channel_info(client, "/publisher/news")
    finally:
        await follower.aclose()
    bodies = [body for _, body in follower.received]
    assert bodies == [b'"over http"', b'{"text": "via redis"}', b"[1, 2]"]
    positions = [pos for pos, _ in follower.received]
    assert positions == sorted(set(positions))  # Last-Modified / Etag as for any message
    assert info["messages"] == 3
    assert info["last_message_id"] == "{}:{}".format(*positions[-1])
    # Signals as for HTTP, with no HTTP request; 201 when a subscriber was waiting.
    kinds = [kind for kind, _, _ in recorded]
    assert kinds == ["pre", "post", "pre", "post"]
    responses = [kwargs["response"] for kind, _, kwargs in recorded if kind == "post"]
    assert all(isinstance(r, UpdateResponse) and r.backend for r in responses)
    assert [r.status for r in responses] == [201, 202]
    assert all(kwargs["request"] is None for _, _, kwargs in recorded)
    assert recorded[0][2]["channel_id"] == "news"
    # No publisher host configured: the URL reported is the publisher path.
    assert responses[0].url == "/publisher/news"


async def test_asend_update_and_publisher_host_url(push_server_factory, redis_server, recorded):
    store = redis_server.store()
    server = push_server_factory(push_config(store))
    follower = Follower(server.url, "a/b é")
    settings = backend_settings(store, publisher_host={"location": "push.invalid:9"})
    try:
        with override_settings(PUSH_SERVER=settings), anyio.fail_after(20):
            await asend_update("a/b é", "x")  # push.invalid is never contacted
            await follower.read(1)
    finally:
        await follower.aclose()
    assert follower.received[0][1] == b'"x"'
    response = recorded[-1][2]["response"]
    assert response.url == "http://push.invalid:9/publisher/a%2Fb%20%C3%A9"
    assert response.status == 202


async def test_publisher_location_rules_apply(redis_server):
    store = redis_server.store()
    config = {
        "store": store,
        "publish_via": "backend",
        "locations": [
            {
                "type": "publisher",
                "prefix": "/pub/",
                "create_on_post": False,
                "max_message_size": 10,
            }
        ],
    }
    with override_settings(PUSH_SERVER=config):
        with pytest.raises(SendUpdateError) as info:
            await publish("missing", "x")
        assert (info.value.status, info.value.url) == (404, "/pub/missing")
        with pytest.raises(SendUpdateError) as info:
            await publish("missing", "x" * 20)
        assert info.value.status == 413


async def test_redis_down_raises(redis_server_factory, recorded):
    redis = redis_server_factory()
    settings = backend_settings(redis.store())
    with override_settings(PUSH_SERVER=settings):
        await publish("news", "up")
        redis.kill()
        with pytest.raises(SendUpdateError) as info:
            await publish("news", "down")
        assert info.value.status == 503
        assert f"redis at redis://127.0.0.1:{redis.port}/0" in str(info.value)
        failure = recorded[-1][2]["response"]
        assert failure is info.value  # post_send_update carries the exception
        # ignore_errors: reported through the signal only.
        await publish("news", "down", ignore_errors=True)
        assert isinstance(recorded[-1][2]["response"], SendUpdateError)
        with override_settings(PUSH_SERVER_IGNORE_ERRORS=True):
            await asend_update("news", "down")
        with pytest.raises(SendUpdateError):
            await asend_update("news", "down")


async def test_silent_redis_times_out_after_publish_timeout():
    with silent_server() as (port, _accepted):
        settings = backend_settings({"type": "redis", "port": port}, publish_timeout=0.3)
        with (
            override_settings(PUSH_SERVER=settings),
            anyio.fail_after(10),
            pytest.raises(SendUpdateError) as info,
        ):
            await publish("news", "x")
    assert info.value.status is None
    assert "no answer from the store within 0.3 s" in str(info.value)


async def test_sync_call_on_an_event_loop_is_refused(redis_server, recorded):
    settings = backend_settings(redis_server.store())
    with override_settings(PUSH_SERVER=settings), pytest.raises(RuntimeError, match="asend_update"):
        send_update("news", "x")
    assert recorded == []  # refused before any signal
