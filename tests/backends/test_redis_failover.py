"""A primary killed mid-stream under two real ``runpushserver`` processes in durable mode
(``wait_replicas: 1``): on a Redis Cluster (its replica takes over) and on Sentinel (the
sentinels promote a replica). Publishes during the failover get 503 and none hangs; a
publisher retrying with the same ``Idempotency-Key`` gets every message stored once; every
subscriber (long-poll, SSE, WebSocket, on the other process) ends up with every acknowledged
message, in order: nothing acknowledged is lost.

On Sentinel, every transport also delivers and resumes across processes first, as on a
cluster (test_redis_cluster.py). Each topology is this module's own (a node of it is
killed). The figures (time to recover, refused publishes, lost messages) are printed:
``pytest -s`` shows them.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

import anyio
import anyio.to_thread
import httpx
import pytest

from pushserver.testing import RedisClusterServers, RedisSentinelServers, RedisServer
from tests.backends.test_redis_cluster import cluster_config, delivers_and_resumes
from tests.project.helpers import wait_for_subscribers
from tests.transports.streams import longpoll_id
from tests.transports.test_shared_behaviour import ADAPTERS, LongPoll, Received

pytestmark = pytest.mark.anyio

#: Messages published; the primary is killed once a third of them were acknowledged.
COUNT = 30
#: Bounds the whole exchange, failover included.
TIMEOUT = 90
#: A publish that takes longer than this "hangs" (the store's own bound is about 6 s).
PUBLISH_BOUND = 12
DURABLE = {"wait_replicas": 1, "wait_timeout": 1}


def failover_config(store: dict) -> dict:
    return cluster_config({**store, **DURABLE})


@dataclass
class Figures:
    acknowledged: list[str] = field(default_factory=list)
    refused: int = 0
    slowest: float = 0.0
    killed_at: float = 0.0
    recovered_after: float | None = None
    #: Seconds from the kill until Redis reported a new primary.
    failover: float | None = None

    def report(self, name: str, lost: int) -> str:
        return (
            f"{name}: new primary {self.failover:.2f} s and publishing "
            f"recovered {self.recovered_after:.2f} s after the kill, "
            f"{self.refused} publish(es) refused (503), lost {lost}, "
            f"slowest answer {self.slowest:.2f} s"
        )


class PatientLongPoll(LongPoll):
    """Long-poll through an outage: a 503 (the store unreachable) is asked again, as
    updates.js does."""

    async def next(self) -> Received:
        while True:
            response = await self.client.get(self.path, headers=self.position_headers())
            if response.status_code in (304, 503):
                if response.status_code == 503:
                    await anyio.sleep(0.1)  # client back-off, not synchronisation
                continue
            assert response.status_code == 200, (response.status_code, response.text)
            self._position = longpoll_id(response)
            return Received("message", self.channel, self._position, response.text)


SUBSCRIBERS = {**ADAPTERS, "longpoll": PatientLongPoll}


async def publish_through_a_failover(a, b, channel: str, fail) -> Figures:
    """Publish COUNT messages on ``a`` (retrying 503s with the same key) while subscribers
    of every transport read them on ``b``; ``fail()`` (run in a thread once a third was
    acknowledged) kills the primary, brings the store back and returns how long the
    failover took. Checks nothing acknowledged is missing; returns the figures."""
    figures = Figures()
    received: dict[str, list[str]] = {}
    async with (
        httpx.AsyncClient(base_url=a.url, timeout=PUBLISH_BOUND) as on_a,
        httpx.AsyncClient(base_url=b.url, timeout=TIMEOUT) as on_b,
    ):
        try:
            await publish_and_follow(a, b, on_a, on_b, channel, fail, figures, received)
        except TimeoutError:
            progress = {t: len(got) for t, got in received.items()}
            pytest.fail(
                f"no progress for {TIMEOUT} s: {len(figures.acknowledged)} acknowledged, "
                f"{figures.refused} refused, received {progress}, failover {figures.failover}"
                f"\n--- a:\n{''.join(a.output[-15:])}--- b:\n{''.join(b.output[-15:])}"
            )
    lost = {t: [m for m in figures.acknowledged if m not in got] for t, got in received.items()}
    for transport, got in received.items():
        # Every acknowledged message, each once, in order.
        assert got == figures.acknowledged, (transport, lost[transport], got)
    assert figures.refused >= 1, "the publish right after the kill must have been refused"
    assert figures.slowest < PUBLISH_BOUND
    print("\n" + figures.report(channel, max(len(v) for v in lost.values())))
    return figures


async def publish_and_follow(a, b, on_a, on_b, channel, fail, figures, received) -> None:
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as group:

            async def follow(transport: str) -> None:
                got = received[transport] = []
                async with SUBSCRIBERS[transport](b, on_b, [channel]) as subscriber:
                    while len(got) < COUNT:
                        (message,) = await subscriber.read(1)
                        body = message.body
                        got.append(body.decode() if isinstance(body, bytes) else body)

            for transport in SUBSCRIBERS:
                group.start_soon(follow, transport)
            await wait_for_subscribers(on_a, f"/publisher/{channel}", len(SUBSCRIBERS))

            for index in range(COUNT):
                key = f"{channel}-{index}"
                while True:
                    started = time.monotonic()
                    response = await on_a.post(
                        f"/publisher/{channel}",
                        content=f"m{index}",
                        headers={"idempotency-key": key},
                    )
                    figures.slowest = max(figures.slowest, time.monotonic() - started)
                    if response.status_code in (201, 202):
                        break
                    assert response.status_code == 503, response.text
                    figures.refused += 1
                    await anyio.sleep(0.05)  # the publisher's back-off
                figures.acknowledged.append(f"m{index}")
                if figures.killed_at and figures.recovered_after is None:
                    figures.recovered_after = time.monotonic() - figures.killed_at
                if index == COUNT // 3:
                    figures.killed_at = time.monotonic()
                    group.start_soon(failing, figures, fail)


async def failing(figures: Figures, fail) -> None:
    figures.failover = await anyio.to_thread.run_sync(fail)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with RedisClusterServers(tmp_path_factory.mktemp("failover-cluster")) as started:
        yield started


@pytest.fixture(scope="module")
def sentinel_set(tmp_path_factory):
    with RedisSentinelServers(tmp_path_factory.mktemp("failover-sentinel")) as started:
        yield started


async def test_every_transport_delivers_and_resumes_across_processes_on_sentinel(
    push_server_factory, sentinel_set
):
    """As on a cluster (test_redis_cluster.py), through the primary the sentinels name;
    before this module's Sentinel failover (file order), which kills that primary."""
    config = cluster_config(sentinel_set.store())
    a, b = push_server_factory(config), push_server_factory(config)
    await delivers_and_resumes(a, b, [f"s{uuid.uuid4().hex[:8]}", f"s{uuid.uuid4().hex[:8]}"])


async def test_cluster_primary_killed_mid_stream_loses_nothing_acknowledged(
    push_server_factory, cluster
):
    store = cluster.store()
    config = failover_config(store)
    a, b = push_server_factory(config), push_server_factory(config)
    channel = f"f{uuid.uuid4().hex[:8]}"
    primary = cluster.primary_for(f"{store['key_prefix']}{{{channel}}}:meta")

    def fail() -> float:
        started = time.monotonic()
        primary.kill()
        cluster.wait_for_failover(primary)
        failover = time.monotonic() - started
        # The promoted replica has no replica of its own, so durable publishes on its
        # shard are refused until the old primary is back, as its replica.
        primary.start()
        return failover

    figures = await publish_through_a_failover(a, b, channel, fail)
    assert figures.recovered_after is not None
    assert cluster.primary_for_slot(cluster.slot(f"{{{channel}}}")) is not primary


async def test_sentinel_primary_killed_mid_stream_loses_nothing_acknowledged(
    push_server_factory, sentinel_set
):
    config = failover_config(sentinel_set.store())
    a, b = push_server_factory(config), push_server_factory(config)
    primary: RedisServer = sentinel_set.primary

    def fail() -> float:
        started = time.monotonic()
        primary.kill()
        sentinel_set.wait_for_failover(primary)
        return time.monotonic() - started

    figures = await publish_through_a_failover(a, b, f"s{uuid.uuid4().hex[:8]}", fail)
    assert figures.recovered_after is not None
    assert sentinel_set.primary is not primary
