"""``runpushserver --workers N``: real worker processes sharing one port and one real
redis-server; which worker holds which subscriber is read from Redis itself (each worker
keeps its own subscriber count there, under a node id carrying its pid)."""

from __future__ import annotations

import os
import signal
from functools import partial

import anyio
import anyio.to_thread
import httpx
import pytest
import redis
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from tests.project.helpers import Follower, push_config, wait_for_subscribers, worker_pids

pytestmark = pytest.mark.anyio


def subscribers_by_pid(redis_server, store: dict, channel: str) -> dict[int, int]:
    """Each node's subscriber count on ``channel``, as stored in Redis, keyed by pid."""
    with redis.Redis(host="127.0.0.1", port=redis_server.port) as client:
        fields = client.hgetall(f"{store['key_prefix']}{{{channel}}}:subs")
    counts: dict[int, int] = {}
    for node, value in fields.items():
        pid = int(node.decode().split(":")[1])  # "<host>:<pid>:<random>"
        counts[pid] = counts.get(pid, 0) + int(value.split()[0])
    return counts


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_workers_share_port_and_redis(push_server_factory, redis_server):
    store = redis_server.store()
    server = push_server_factory(push_config(store), "--workers", "2", "--no-access-log")
    assert "(asyncio, 2 workers)" in server.log
    pids = await worker_pids(server, 2)
    assert len(set(pids)) == 2 and server.process.pid not in pids
    async with httpx.AsyncClient(base_url=server.url) as client:
        assert (await client.put("/publisher/fan")).status_code == 200

    count = 24
    followers = [Follower(server.url, "fan") for _ in range(count)]
    try:
        async with httpx.AsyncClient(base_url=server.url) as publisher:
            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    for follower in followers:
                        tg.start_soon(follower.read, 1)
                    # The count is cluster-wide.
                    await wait_for_subscribers(publisher, "/publisher/fan", count)
                    # The kernel spread the connections over both workers.
                    by_pid = subscribers_by_pid(redis_server, store, "fan")
                    assert set(by_pid) == set(pids), by_pid
                    assert all(by_pid[pid] > 0 for pid in pids), by_pid
                    assert sum(by_pid.values()) == count
                    response = await publisher.post("/publisher/fan", content=b"to all")
                    assert response.status_code == 201, response.text
    finally:
        for follower in followers:
            await follower.aclose()
    # One publish, received by every subscriber of both workers, with one position.
    assert {tuple(f.received) for f in followers} == {tuple(followers[0].received)}
    assert followers[0].received[0][1] == b"to all"

    assert server.stop(signal.SIGTERM) == 0
    assert "received SIGTERM, stopping 2 worker(s)" in server.log
    for pid in pids:
        assert f"worker {pid}: received SIGTERM, shutting down" in server.log
        assert gone(pid), f"worker {pid} outlived the server"


async def test_dead_worker_is_replaced(push_server_factory, redis_server):
    store = redis_server.store()
    server = push_server_factory(push_config(store), "--workers", "2", "--no-access-log")
    first, second = await worker_pids(server, 2)
    os.kill(first, signal.SIGKILL)
    replacement = (await worker_pids(server, 3))[2]
    assert f"worker {first} exited unexpectedly (signal SIGKILL); starting a new one" in server.log

    # The replacement serves its share of the port (its predecessor's socket).
    count = 24
    followers = [Follower(server.url, "again") for _ in range(count)]
    try:
        async with httpx.AsyncClient(base_url=server.url) as publisher:
            assert (await publisher.put("/publisher/again")).status_code == 200
            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    for follower in followers:
                        tg.start_soon(follower.read, 1)
                    await wait_for_subscribers(publisher, "/publisher/again", count)
                    by_pid = subscribers_by_pid(redis_server, store, "again")
                    assert set(by_pid) == {second, replacement}, by_pid
                    response = await publisher.post("/publisher/again", content=b"x")
                    assert response.status_code == 201
    finally:
        for follower in followers:
            await follower.aclose()
    assert all(f.received[0][1] == b"x" for f in followers)

    assert server.stop(signal.SIGINT) == 0
    assert gone(second) and gone(replacement) and gone(first)


def test_memory_store_is_refused():
    with override_settings(PUSH_SERVER={}), pytest.raises(CommandError) as info:
        call_command("runpushserver", "127.0.0.1:0", workers=2)
    message = str(info.value)
    assert "--workers 2 cannot run with store 'default': it is a 'memory' store" in message
    assert "Use a 'redis' store" in message and "--workers 1" in message


def test_memory_store_is_refused_among_others(redis_server):
    config = {"store": {"default": redis_server.store(), "side": {"type": "memory"}}}
    with override_settings(PUSH_SERVER=config), pytest.raises(CommandError) as info:
        call_command("runpushserver", "127.0.0.1:0", workers=3)
    assert "store 'side'" in str(info.value)


def test_worker_count_must_be_positive():
    with override_settings(PUSH_SERVER={}), pytest.raises(CommandError, match="1 or more"):
        call_command("runpushserver", "127.0.0.1:0", workers=0)


async def test_crash_loop_stops_the_server(push_server_factory, redis_server):
    """Workers dying over and over (here: killed as soon as they start) stop the command
    with an error instead of restarting forever."""
    server = push_server_factory(
        push_config(redis_server.store()), "--workers", "2", "--no-access-log"
    )
    victim, survivor = await worker_pids(server, 2)
    pids = [victim, survivor]
    for deaths in range(1, 7):
        os.kill(victim, signal.SIGKILL)
        if deaths < 6:
            pids = await worker_pids(server, 2 + deaths)
            victim = pids[-1]  # the replacement
    assert await anyio.to_thread.run_sync(partial(server.process.wait, 30)) == 1
    assert "the 6th worker to die within 60 s: stopping the push server" in server.log
    assert all(gone(pid) for pid in [survivor, *pids])
