"""Several real ``runpushserver`` processes sharing one real redis-server."""

from __future__ import annotations

import anyio
import httpx
import pytest

from tests.project.helpers import Follower, channel_info, push_config, wait_for_subscribers

pytestmark = pytest.mark.anyio


@pytest.fixture
def two_servers(push_server_factory, redis_server):
    # A short linger: a process's count of subscribers that left reaches the other process
    # within one to two lingers (docs/redis.md), well inside these tests' waits.
    config = push_config(redis_server.store(linger=1))
    return push_server_factory(config), push_server_factory(config)


async def test_message_published_on_one_server_reaches_subscribers_of_both(two_servers):
    a, b = two_servers
    async with (
        httpx.AsyncClient(base_url=a.url) as pub_a,
        httpx.AsyncClient(base_url=b.url) as pub_b,
    ):
        assert (await pub_a.put("/publisher/news")).status_code == 200
        followers = [Follower(a.url, "news"), Follower(b.url, "news"), Follower(b.url, "news")]
        try:
            with anyio.fail_after(20):
                async with anyio.create_task_group() as tg:
                    for follower in followers:
                        tg.start_soon(follower.read, 1)
                    # Both nodes' subscribers are counted in either node's channel info.
                    await wait_for_subscribers(pub_a, "/publisher/news", 3)
                    assert (await channel_info(pub_b, "/publisher/news"))["subscribers"] == 3
                    response = await pub_b.post(
                        "/publisher/news", content=b"hello", headers={"content-type": "text/plain"}
                    )
                    assert response.status_code == 201  # delivered to waiting subscribers
            first = followers[0].received
            assert [body for _, body in first] == [b"hello"]
            assert all(f.received == first for f in followers)
            # Every node took its count back.
            await wait_for_subscribers(pub_a, "/publisher/news", 0)
        finally:
            for follower in followers:
                await follower.aclose()


async def test_client_moves_between_servers_without_loss(two_servers):
    a, b = two_servers
    async with httpx.AsyncClient(base_url=a.url) as pub_a:
        for body in (b"m0", b"m1", b"m2"):
            response = await pub_a.post("/publisher/news", content=body)
            assert response.status_code == 202
        on_a = Follower(a.url, "news")
        on_b = Follower(b.url, "news")
        try:
            with anyio.fail_after(20):
                await on_a.read(2)
                on_b.headers = on_a.headers  # the same client, now talking to b
                await on_b.read(1)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(on_b.read, 2)
                    await wait_for_subscribers(pub_a, "/publisher/news", 1)
                    assert (await pub_a.post("/publisher/news", content=b"m3")).status_code == 201
            bodies = [body for _, body in on_a.received + on_b.received]
            assert bodies == [b"m0", b"m1", b"m2", b"m3"]
            positions = [pos for pos, _ in on_a.received + on_b.received]
            assert positions == sorted(set(positions))
        finally:
            await on_a.aclose()
            await on_b.aclose()


async def test_concurrent_publishers_on_two_servers(two_servers):
    a, b = two_servers
    per_worker, workers = 10, 3
    total = 2 * workers * per_worker
    followers = [Follower(server.url, "race") for server in (a, b, a, b)]
    async with (
        httpx.AsyncClient(base_url=a.url) as pub_a,
        httpx.AsyncClient(base_url=b.url) as pub_b,
    ):
        assert (await pub_a.put("/publisher/race")).status_code == 200

        async def publish(client: httpx.AsyncClient, name: str) -> None:
            for i in range(per_worker):
                response = await client.post("/publisher/race", content=f"{name}-{i}".encode())
                assert response.status_code in (201, 202), response.text

        try:
            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    for follower in followers:
                        tg.start_soon(follower.read, total)
                    await wait_for_subscribers(pub_a, "/publisher/race", len(followers))
                    async with anyio.create_task_group() as publishers:
                        for w in range(workers):
                            publishers.start_soon(publish, pub_a, f"a{w}")
                            publishers.start_soon(publish, pub_b, f"b{w}")
        finally:
            for follower in followers:
                await follower.aclose()
    expected = sorted(
        f"{n}{w}-{i}".encode() for n in "ab" for w in range(workers) for i in range(per_worker)
    )
    reference = followers[0].received
    positions = [pos for pos, _ in reference]
    assert positions == sorted(set(positions)), "ids unique and increasing"
    assert sorted(body for _, body in reference) == expected, "every message exactly once"
    for follower in followers[1:]:
        assert follower.received == reference, "every subscriber saw the same order"
    # Each publisher's own messages stay in the order it sent them.
    for name in (f"{n}{w}" for n in "ab" for w in range(workers)):
        mine = [body for _, body in reference if body.startswith(f"{name}-".encode())]
        assert mine == [f"{name}-{i}".encode() for i in range(per_worker)]


async def wait_for_log(server, text: str, timeout: float = 20) -> None:
    """Wait (bounded) until the server's output shows ``text``: its own account of events."""
    with anyio.fail_after(timeout):
        while text not in server.log:
            await anyio.sleep(0.05)


async def test_redis_restart_mid_stream(push_server_factory, redis_server_factory):
    # Redis fsyncs every write before replying, so whatever was accepted survives a crash.
    redis = redis_server_factory(durable=True)
    config = push_config(redis.store())
    a, b = push_server_factory(config), push_server_factory(config)
    followers = [Follower(a.url, "live"), Follower(b.url, "live")]
    accepted: list[bytes] = []
    async with (
        httpx.AsyncClient(base_url=a.url) as pub_a,
        httpx.AsyncClient(base_url=b.url) as pub_b,
    ):

        async def publish(client: httpx.AsyncClient, body: bytes) -> httpx.Response:
            response = await client.post("/publisher/live", content=body)
            if response.status_code in (201, 202):
                accepted.append(body)
            return response

        assert (await pub_a.put("/publisher/live")).status_code == 200
        try:
            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    for follower in followers:
                        tg.start_soon(follower.read, 10)
                    for i in range(5):
                        response = await publish((pub_a, pub_b)[i % 2], b"before-%d" % i)
                        assert response.status_code in (201, 202)
                    # Everyone has read the first five and waits for more.
                    await wait_for_subscribers(pub_a, "/publisher/live", 2)

                    redis.kill()
                    for client in (pub_a, pub_b, pub_a):
                        response = await publish(client, b"during")
                        assert response.status_code == 503, response.text
                        assert "unavailable" in response.text
                        assert response.headers["retry-after"] == "1"
                    assert (await pub_b.get("/publisher/live")).status_code == 503
                    for server in (a, b):
                        await wait_for_log(server, "redis: connection lost")

                    redis.start()
                    for server in (a, b):
                        await wait_for_log(server, "redis: reconnected")
                    for i in range(5):
                        response = await publish((pub_b, pub_a)[i % 2], b"after-%d" % i)
                        assert response.status_code in (201, 202), response.text
        finally:
            for follower in followers:
                await follower.aclose()
        assert accepted == [b"before-%d" % i for i in range(5)] + [
            b"after-%d" % i for i in range(5)
        ]
        for follower in followers:
            # The long polls held across the outage were answered, never failed.
            assert set(follower.statuses) == {200}
            assert [body for _, body in follower.received] == accepted
            positions = [pos for pos, _ in follower.received]
            assert positions == sorted(set(positions))
        # Nothing accepted was lost: a newcomer reads all ten from the start.
        newcomer = Follower(b.url, "live")
        try:
            with anyio.fail_after(20):
                await newcomer.read(10)
        finally:
            await newcomer.aclose()
        assert [body for _, body in newcomer.received] == accepted
        info = await channel_info(pub_a, "/publisher/live")
        assert info["messages"] == 10
