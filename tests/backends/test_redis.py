"""What only the Redis backend does: several nodes on one Redis, key layout, connection
settings and faults. Every test talks to a real redis-server."""

from __future__ import annotations

import signal
import sys
import time
import uuid
from pathlib import Path

import anyio
import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from pushserver.backends.redis import RedisBackend
from pushserver.exceptions import BackendUnavailable, ChannelNotFound, StoreFull
from pushserver.hub import Hub
from pushserver.message import ORIGIN

from .conftest import RecordingListener

pytestmark = pytest.mark.anyio


def node(server, *, record: bool = True, **options) -> RedisBackend:
    """One push server process's backend; ``recorder`` hears what it delivers."""
    store = server.store(**options)
    del store["type"]
    backend = RedisBackend(**store)
    if record:
        backend.recorder = RecordingListener()
        backend.bind(backend.recorder)
    return backend


async def raw(server) -> aioredis.Redis:
    return aioredis.Redis(port=server.port, password=server.password)


async def wait_until(predicate, timeout: float = 10) -> None:
    """Poll a real condition (bounded): for state only visible from outside."""
    with anyio.fail_after(timeout):
        while not await predicate():
            await anyio.sleep(0.02)


@pytest.fixture
def prefix():
    return f"p{uuid.uuid4().hex[:8]}:"


async def test_nodes_share_channels_messages_and_deletes(redis_server, prefix):
    async with (
        node(redis_server, key_prefix=prefix) as a,
        node(redis_server, key_prefix=prefix) as b,
    ):
        await a.listen("news")
        await b.listen("news")
        published = [(await x.publish("news", b"%d" % i, "text/plain")).message
                     for i, x in enumerate((a, b, a, b))]  # fmt: skip
        for backend in (a, b):
            delivered = await backend.recorder.wait_messages("news", 4)
            assert [m.id for m in delivered] == [m.id for m in published]
        assert (await b.read_after("news", published[0].id)).message.body == b"1"
        assert await b.delete("news")
        for backend in (a, b):
            await backend.recorder.wait_for(lambda r=backend.recorder: r.deleted == ["news"])
        assert not await a.exists("news")


async def test_subscriber_counts_add_up_across_nodes(redis_server, prefix):
    async with node(redis_server, key_prefix=prefix) as a:
        async with node(redis_server, key_prefix=prefix) as b:
            await a.create("news")
            await a.subscribers_changed("news", 1)
            await a.subscribers_changed("news", 1)
            await b.subscribers_changed("news", 1)
            assert (await a.info("news")).subscribers == 3
            assert (await b.publish("news", b"x", "text/plain")).subscribers == 3
        # A node that closes takes its subscribers out of the count.
        assert (await a.info("news")).subscribers == 2


async def test_one_redis_subscription_per_channel_per_process(redis_server, prefix):
    client = await raw(redis_server)
    live = f"{prefix}{{news}}:live"

    async def numsub() -> int:
        return dict(await client.pubsub_numsub(live))[live.encode()]

    try:
        # linger=0: unsubscribed as soon as the last one leaves (the lingering one: below).
        backend = node(redis_server, record=False, key_prefix=prefix, linger=0)
        hub = Hub(backend)
        async with hub:
            await backend.create("news")
            subscriptions = [await hub.subscribe(["news"]) for _ in range(5)]
            assert await numsub() == 1
            assert (await hub.info("news")).subscribers == 5
            for subscription in subscriptions[:4]:
                await hub.unsubscribe(subscription)
            assert await numsub() == 1
            await hub.unsubscribe(subscriptions[4])
            await wait_until(lambda: _eq(numsub(), 0))
            assert (await hub.info("news")).subscribers == 0
    finally:
        await client.aclose()


async def _eq(awaitable, value) -> bool:
    return await awaitable == value


async def _numsub(client, prefix: str, *channels: str) -> list[int]:
    lives = [f"{prefix}{{{c}}}:live" for c in channels]
    return [count for _, count in await client.pubsub_numsub(*lives)]


async def test_a_subscription_lingers_for_a_subscriber_that_comes_back(redis_server, prefix):
    client = await raw(redis_server)
    try:
        backend = node(redis_server, record=False, key_prefix=prefix, linger=0.5)
        async with Hub(backend) as hub:
            await backend.create("news")
            await hub.unsubscribe(await hub.subscribe(["news"]))
            # Still subscribed: a subscriber coming back within the linger finds it live.
            assert await _numsub(client, prefix, "news") == [1]
            assert backend.status()["lingering"] == 1
            again = await hub.subscribe(["news"])
            assert backend.status()["lingering"] == 0
            published = await backend.publish("news", b"live", "text/plain")
            delivered = await again.get()
            assert (delivered.message.id, delivered.message.body) == (published.message.id, b"live")
            await hub.unsubscribe(again)
            # Nobody came back: unsubscribed one to two lingers later.
            await wait_until(lambda: _eq(_numsub(client, prefix, "news"), [0]))
            assert backend.status()["lingering"] == 0
    finally:
        await client.aclose()


async def test_lingering_subscriptions_are_bounded(redis_server, prefix):
    client = await raw(redis_server)
    channels = [f"c{i}" for i in range(5)]
    try:
        backend = node(redis_server, record=False, key_prefix=prefix, linger=60)
        backend.max_lingering = 3
        async with Hub(backend) as hub:
            for channel_id in channels:
                await backend.create(channel_id)
                await hub.unsubscribe(await hub.subscribe([channel_id]))
            # The two that lingered longest went at once, long before their linger.
            assert backend.status()["lingering"] == 3
            await wait_until(lambda: _eq(_numsub(client, prefix, *channels), [0, 0, 1, 1, 1]))
    finally:
        await client.aclose()


async def test_a_lowered_count_lingers_for_other_processes_only(redis_server, prefix):
    async with (
        node(redis_server, key_prefix=prefix, linger=0.5) as a,
        node(redis_server, key_prefix=prefix) as b,
    ):
        await a.create("news")
        await a.subscribers_changed("news", 1)
        await a.subscribers_changed("news", 1)
        assert (await b.info("news")).subscribers == 2
        await a.subscribers_changed("news", -1)
        await a.subscribers_changed("news", -1)
        # The process itself counts what it has now...
        assert (await a.info("news")).subscribers == 0
        assert (await a.publish("news", b"x", "text/plain")).subscribers == 0
        # ...the others see its count lowered once it stayed lower for a linger.
        assert (await b.info("news")).subscribers == 2
        await wait_until(lambda: _eq(_subscribers(b), 0))
        # A raised count is written at once.
        await a.subscribers_changed("news", 1)
        assert (await b.publish("news", b"y", "text/plain")).subscribers == 1


async def test_an_open_read_on_a_subscribed_channel_misses_nothing_after_it(redis_server, prefix):
    """A subscriber opening a channel this process subscribes to already reads it while
    subscribed: its read after subscribing is answered without Redis unless something
    came (or the channel went) between the two."""
    async with node(redis_server, key_prefix=prefix) as other:
        backend = node(redis_server, record=False, key_prefix=prefix, linger=60)
        async with Hub(backend) as hub:
            first = (await other.publish("news", b"first", "text/plain")).message
            await hub.unsubscribe(await hub.subscribe(["news"]))  # subscribed, lingering
            # Nothing between: nothing to read again, and what comes next comes live.
            assert (await hub.open_channel("news", False, after=first.id)).read.message is None
            subscription = await hub.subscribe(["news"])
            assert (await hub.read_after("news", first.id)).message is None
            second = (await other.publish("news", b"second", "text/plain")).message
            assert (await subscription.get()).message.id == second.id
            await hub.unsubscribe(subscription)

            # A message reaching the process between the open's read and the subscription
            # (when the hub had nobody to give it to): the read finds it.
            assert (await hub.open_channel("news", False, after=second.id)).read.message is None
            published = hub.published
            await other.publish("news", b"third", "text/plain")
            await wait_until(lambda: _true(hub.published == published + 1))
            subscription = await hub.subscribe(["news"])
            third = (await hub.read_after("news", second.id)).message
            assert third is not None and third.body == b"third"
            await hub.unsubscribe(subscription)

            # The channel deleted in between: the read says so.
            assert (await hub.open_channel("news", False, after=third.id)).read.message is None
            assert await other.delete("news")
            await wait_until(lambda: _true(backend._listening["news"].delivered is None))
            subscription = await hub.subscribe(["news"])
            with pytest.raises(ChannelNotFound):
                await hub.read_after("news", third.id)
            await hub.unsubscribe(subscription)
            # And the next subscriber's open asks Redis (the process knows nothing now).
            with pytest.raises(ChannelNotFound):
                await hub.open_channel("news", False, after=third.id)


async def test_a_subscriber_opening_without_a_command_is_still_requested(redis_server, prefix):
    """An open answered by the process itself (the subscriber is at the newest message
    of a channel it is subscribed to) still marks the channel requested: at once in the
    process's own answers, in Redis by the next sweep."""
    async with node(redis_server, key_prefix=prefix) as other:
        backend = node(redis_server, record=False, key_prefix=prefix, linger=0.5)
        async with Hub(backend) as hub:
            first = (await other.publish("news", b"first", "text/plain")).message
            subscription = await hub.subscribe(["news"])
            asked = time.time()
            opened = await hub.open_channel("news", False, after=first.id)
            assert opened.read.message is None and not opened.created
            assert (await hub.info("news")).last_requested >= asked
            await wait_until(lambda: _at_least(other.info("news"), asked))
            # Behind the newest message: read from Redis, as always.
            second = (await other.publish("news", b"second", "text/plain")).message
            assert (await subscription.get()).message.id == second.id  # it has arrived
            assert (await hub.open_channel("news", False, after=first.id)).read.message.id == (
                second.id
            )
            # A message this process published is read at once, even before it has come
            # back on pub/sub (another process's comes live, once it arrives).
            third = (await hub.publish("news", b"third", "text/plain")).message
            assert (await hub.open_channel("news", False, after=second.id)).read.message.id == (
                third.id
            )
            await hub.unsubscribe(subscription)


async def _at_least(info, when: float) -> bool:
    requested = (await info).last_requested
    return requested is not None and requested >= when


async def test_keys_are_prefixed_and_hash_tagged_per_channel(redis_server, prefix):
    client = await raw(redis_server)
    try:
        async with node(redis_server, key_prefix=prefix) as backend:
            for channel_id in ("news", "a b/ü"):
                await backend.publish(channel_id, b"x", "text/plain")
                await backend.subscribers_changed(channel_id, 1)
            keys = sorted(k.decode() for k in await client.keys(f"{prefix}*"))
            assert keys == sorted(
                f"{prefix}{{{c}}}:{part}"
                for c in ("news", "a b/ü")
                for part in ("meta", "msgs", "subs")
            )
            for channel_id in ("news", "a b/ü"):
                slots = {key_slot(k.encode()) for k in keys if f"{{{channel_id}}}" in k}
                assert slots == {key_slot(channel_id.encode())}  # one Cluster slot per channel
    finally:
        await client.aclose()


async def test_url_database_and_unix_socket(redis_server, prefix):
    client = aioredis.Redis(port=redis_server.port, db=3)
    try:
        for url in (
            f"redis://127.0.0.1:{redis_server.port}/3",
            f"unix://{redis_server.unix_socket}?db=3",
        ):
            backend = RedisBackend(url=url, key_prefix=prefix)
            backend.bind(RecordingListener())
            async with backend:
                await backend.publish(url, b"x", "text/plain")
                assert backend.status()["ok"]
            assert await client.exists(f"{prefix}{{{url}}}:meta".encode())
    finally:
        await client.aclose()


async def test_password(redis_server_factory, prefix):
    server = redis_server_factory(password="s3cret")
    async with node(server, key_prefix=prefix) as backend:
        assert (await backend.publish("news", b"x", "text/plain")).message.body == b"x"
    server.password = "wrong"
    async with node(server, key_prefix=prefix) as backend:
        status = backend.status()
        assert not status["ok"] and "s3cret" not in str(status)
        with pytest.raises(BackendUnavailable):
            await backend.publish("news", b"x", "text/plain")


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_refuses_to_run_on_trio(redis_server):
    backend = node(redis_server)
    with pytest.raises(RuntimeError, match="asyncio"):
        await backend.open()


async def test_lost_pubsub_connection_delivers_what_was_missed(redis_server, prefix):
    """Redis stays up but drops the node's pub/sub connection: messages published before
    the node re-subscribes reach its listener anyway, once each and in order."""
    client = await raw(redis_server)
    try:
        async with (
            node(redis_server, key_prefix=prefix) as a,
            node(redis_server, key_prefix=prefix) as b,
        ):
            await a.listen("news")
            await a.subscribers_changed("news", 1)
            first = (await b.publish("news", b"0", "text/plain")).message
            await a.recorder.wait_messages("news", 1)
            assert await client.client_kill_filter(_type="pubsub", skipme=True) >= 1
            for i in range(1, 20):
                await b.publish("news", b"%d" % i, "text/plain")
            delivered = await a.recorder.wait_messages("news", 20)
            assert [m.body for m in delivered] == [b"%d" % i for i in range(20)]
            assert delivered[0].id == first.id
            await wait_until(lambda: _true(a.status()["reconnects"] == 1))
            # And live delivery goes on.
            await b.publish("news", b"20", "text/plain")
            assert len(await a.recorder.wait_messages("news", 21)) == 21
            assert len(a.recorder.messages["news"]) == 21
    finally:
        await client.aclose()


async def _true(value: bool) -> bool:
    return value


async def test_redis_restart(redis_server_factory, prefix):
    server = redis_server_factory(durable=True)
    async with node(server, key_prefix=prefix) as backend:
        await backend.listen("news")
        before = (await backend.publish("news", b"before", "text/plain")).message
        await backend.recorder.wait_messages("news", 1)
        server.kill()
        with pytest.raises(BackendUnavailable, match="redis at"):
            await backend.publish("news", b"during", "text/plain")
        await wait_until(lambda: _true(not backend.status()["ok"]))
        assert backend.status()["error"]
        server.start()
        await wait_until(lambda: _true(backend.status()["ok"]))
        after = (await backend.publish("news", b"after", "text/plain")).message
        delivered = await backend.recorder.wait_messages("news", 2)
        assert [m.body for m in delivered] == [b"before", b"after"]
        assert after.id > before.id
        assert (await backend.read_after("news", ORIGIN)).message.id == before.id


async def test_tls(redis_server_factory, prefix):
    server = redis_server_factory(tls=True)
    verify = {"ssl_ca_certs": server.certificate}
    for options in (
        {"url": server.url, "ssl": verify},  # rediss://
        {"host": "127.0.0.1", "port": server.port, "ssl": verify},
    ):
        backend = RedisBackend(key_prefix=prefix, **options)
        backend.bind(RecordingListener())
        async with backend:
            assert backend.status()["ok"]
            assert backend.status()["address"].startswith("rediss://")
            assert (await backend.publish("news", b"x", "text/plain")).message.body == b"x"
    # A certificate nobody vouches for is refused.
    backend = RedisBackend(host="127.0.0.1", port=server.port, ssl=True, key_prefix=prefix)
    backend.bind(RecordingListener())
    async with backend:
        assert not backend.status()["ok"]
        with pytest.raises(BackendUnavailable, match="certificate"):
            await backend.publish("news", b"x", "text/plain")


CRASHING_NODE = """
import os, signal, sys, anyio
from pushserver.backends.redis import RedisBackend
from tests.backends.conftest import RecordingListener

async def main():
    backend = RedisBackend(port=int(sys.argv[1]), key_prefix=sys.argv[2], node_ttl=1)
    backend.bind(RecordingListener())
    await backend.open()
    await backend.create("news")
    await backend.subscribers_changed("news", 2)
    print("counted", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # die without closing anything

anyio.run(main)
"""


async def test_counts_of_a_crashed_node_expire(redis_server, prefix):
    client = await raw(redis_server)
    subs = f"{prefix}{{news}}:subs"
    try:
        async with node(redis_server, key_prefix=prefix, node_ttl=1) as survivor:
            await survivor.create("news")
            await survivor.subscribers_changed("news", 1)
            mine = await client.hget(subs, survivor.node_id)
            crashed = await anyio.run_process(
                [sys.executable, "-c", CRASHING_NODE, str(redis_server.port), prefix],
                cwd=str(Path(__file__).resolve().parents[2]),
                check=False,
            )
            assert crashed.returncode == -signal.SIGKILL and b"counted" in crashed.stdout
            assert (await survivor.info("news")).subscribers == 3
            # The dead node's count expires; the survivor keeps prolonging its own.
            await wait_until(lambda: _eq(_subscribers(survivor), 1))
            await wait_until(lambda: _differs(client.hget(subs, survivor.node_id), mine))
            assert (await survivor.publish("news", b"x", "text/plain")).subscribers == 1
            assert await client.hlen(subs) == 1
    finally:
        await client.aclose()


async def _subscribers(backend) -> int:
    return (await backend.info("news")).subscribers


async def _differs(awaitable, value) -> bool:
    return await awaitable != value


# -- channel_timeout and Redis's maxmemory (docs/redis.md#memory-and-expiry) --------------------


@pytest.fixture
async def client(redis_server):
    """A plain client of the session's Redis, to look at TTLs."""
    client = await raw(redis_server)
    yield client
    await client.aclose()


async def test_a_channel_a_subscriber_made_expires_unless_a_publisher_takes_it(
    redis_server, client, prefix
):
    meta = f"{prefix}{{anon}}:meta"
    async with node(redis_server, key_prefix=prefix, channel_timeout=30) as backend:
        assert await backend.create("anon", publisher=False)
        assert 0 < await client.pttl(meta) <= 30_000
        await client.pexpire(meta, 1000)
        await backend.touch("anon")  # a subscriber asked again: 30 s from now
        assert await client.pttl(meta) > 1000
        await backend.create("put")  # a publisher's channel never expires
        assert await client.pttl(f"{prefix}{{put}}:meta") == -1
        await backend.publish("anon", b"x", "text/plain")  # now the publisher's
        assert await client.pttl(meta) == -1
        assert await client.pttl(f"{prefix}{{anon}}:msgs") == -1
        await backend.create("short", publisher=False)
        await client.pexpire(f"{prefix}{{short}}:meta", 1)  # as if 30 s had passed
        await wait_until(lambda: _eq(backend.exists("short"), False))


async def test_subscribers_keep_an_expiring_channel_and_it_goes_once_they_left(
    redis_server, client, prefix
):
    meta = f"{prefix}{{anon}}:meta"
    # linger=0: each count is written as it changes (lowered counts lingering: below).
    async with node(redis_server, key_prefix=prefix, channel_timeout=1, node_ttl=30, linger=0) as a:
        async with node(redis_server, key_prefix=prefix, channel_timeout=1, linger=0) as b:
            await a.create("anon", publisher=False)
            await a.subscribers_changed("anon", 1)
            await b.subscribers_changed("anon", 1)
            assert await client.pttl(meta) > 30_000  # node_ttl + channel_timeout
            await a.subscribers_changed("anon", -1)
            assert await client.pttl(meta) > 30_000  # b's subscriber is still there
        # b closed: its count is gone, but nothing told the channel; a's next change does.
        await a.subscribers_changed("anon", 1)
        await a.subscribers_changed("anon", -1)
        assert 0 < await client.pttl(meta) <= 1000
        await wait_until(lambda: _eq(a.exists("anon"), False))


async def test_without_keep_publisher_channels_a_channel_goes_after_its_messages(
    redis_server, client, prefix
):
    options = {"channel_timeout": 2, "keep_publisher_channels": False, "message_timeout": 5}
    async with node(redis_server, key_prefix=prefix, **options) as backend:
        await backend.create("put")
        assert 0 < await client.pttl(f"{prefix}{{put}}:meta") <= 2000
        await backend.publish("put", b"x", "text/plain")
        for part in ("meta", "msgs"):  # message_timeout + channel_timeout
            assert 5000 < await client.pttl(f"{prefix}{{put}}:{part}") <= 7000


async def test_maxmemory_refuses_with_store_full_and_keeps_what_was_stored(
    redis_server_factory, prefix
):
    server = redis_server_factory()
    client = await raw(server)
    try:
        async with node(server, key_prefix=prefix) as backend:
            backend.memory_interval = 0.05
            await backend.publish("kept", b"first", "text/plain")
            used = int((await client.info("memory"))["used_memory"])
            await client.config_set("maxmemory", used + 256 * 1024)
            body = b"x" * 64 * 1024
            with pytest.raises(StoreFull) as refused:
                for _ in range(100):
                    await backend.publish("big", body, "text/plain")
            assert refused.value.limit == "maxmemory"
            assert isinstance(refused.value, BackendUnavailable)
            assert (await backend.read_after("kept", ORIGIN)).message.body == b"first"
            await wait_until(lambda: _eq(_value(lambda: backend.memory_limit), used + 256 * 1024))
            status = backend.status()
            assert status["refusals"]["maxmemory"] == 1
            assert status["memory_used"] > 0 and status["maxmemory_policy"] == "noeviction"
    finally:
        await client.aclose()


async def _value(function):
    return function()


async def test_a_redis_with_no_budget_or_an_evicting_one_is_logged_once(
    redis_server_factory, prefix, caplog
):
    """docs/redis.md#memory-and-expiry: no maxmemory while the store keeps everything is a
    warning, and so is a maxmemory-policy that evicts (accepted messages would vanish)."""
    server = redis_server_factory()
    client = await raw(server)

    def messages() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]

    async def logged(text: str) -> bool:
        return sum(text in m for m in messages()) == 1

    caplog.set_level("WARNING", logger="pushserver.backends.redis")
    try:
        await client.config_set("maxmemory", 0)
        async with node(server, key_prefix=prefix) as backend:
            backend.memory_interval = 0.05
            await wait_until(lambda: logged("has no maxmemory"), timeout=20)
            await client.config_set("maxmemory", 512 * 1024 * 1024)
            await client.config_set("maxmemory-policy", "allkeys-lru")
            await wait_until(lambda: logged("evicts keys at its maxmemory"), timeout=20)
            assert backend.memory_limit == 512 * 1024 * 1024
            assert backend.memory_policy == "allkeys-lru"
        # Each said once, however many reads followed.
        assert sum("has no maxmemory" in m for m in messages()) == 1
        # With retention bounded by the store there is nothing to say about maxmemory.
        caplog.clear()
        await client.config_set("maxmemory", 0)
        await client.config_set("maxmemory-policy", "noeviction")
        async with node(server, key_prefix=prefix, max_messages=10) as backend:
            backend.memory_interval = 0.05
            await wait_until(lambda: _eq(_value(lambda: backend.memory_limit), 0))
            assert messages() == []
    finally:
        await client.aclose()


async def test_a_durable_publish_at_maxmemory_is_store_full_not_unavailable(
    redis_server_factory, prefix
):
    """The WAIT path maps Redis's OOM answer as _run does: 507 (StoreFull), not 503. One
    Redis with no replica: were the OOM missed, WAIT's 0 of 1 would be a 503 instead."""
    server = redis_server_factory()
    client = await raw(server)
    try:
        async with node(server, key_prefix=prefix, wait_replicas=1, wait_timeout=0.1) as backend:
            with pytest.raises(BackendUnavailable) as unreplicated:  # no replica: 503
                await backend.publish("kept", b"first", "text/plain")
            assert not isinstance(unreplicated.value, StoreFull)
            used = int((await client.info("memory"))["used_memory"])
            await client.config_set("maxmemory", used + 256 * 1024)
            body = b"x" * 64 * 1024
            with pytest.raises(StoreFull) as refused:
                for _ in range(100):
                    try:  # stored on the primary, WAIT 0 of 1: 503 until Redis is full
                        await backend.publish("big", body, "text/plain")
                    except StoreFull:
                        raise
                    except BackendUnavailable as exc:
                        assert "replica(s) acknowledged" in str(exc)
            assert refused.value.limit == "maxmemory"  # the publisher answers 507
            assert backend.status()["refusals"]["maxmemory"] == 1
    finally:
        await client.aclose()


@pytest.fixture(params=["one", "cluster"])
async def store_and_client(request):
    """A store (one Redis, or the session's cluster) and a plain client of it, to look at
    TTLs."""
    if request.param == "one":
        server = request.getfixturevalue("redis_server")
        client = await raw(server)
    else:
        from redis.asyncio.cluster import RedisCluster

        server = request.getfixturevalue("redis_cluster")
        client = RedisCluster(host="127.0.0.1", port=server.servers[0].port)
    yield server, client
    await client.aclose()


async def test_a_keyed_publish_settles_the_channel_and_a_replay_answers_the_first(
    store_and_client, prefix
):
    """The publish script reads channel_timeout and keep_publisher_channels as its last two
    arguments, after the idempotency key's window: a keyed publish still expires (or keeps)
    the channel as settle() says, and a replay answers the first id, storing nothing."""
    server, client = store_and_client
    options = {"channel_timeout": 2, "keep_publisher_channels": False, "message_timeout": 5}
    async with node(server, key_prefix=prefix, idempotency_window=60, **options) as backend:
        first = await backend.publish("put", b"x", "text/plain", idempotency_key="k1")
        for part in ("meta", "msgs"):  # message_timeout + channel_timeout
            assert 5000 < await client.pttl(f"{prefix}{{put}}:{part}") <= 7000
        assert 50_000 < await client.pttl(f"{prefix}{{put}}:idem:k1") <= 60_000
        again = await backend.publish("put", b"x", "text/plain", idempotency_key="k1")
        assert again.replayed and again.message.id == first.message.id
        assert (await backend.info("put")).messages == 1
    async with node(server, key_prefix=prefix, idempotency_window=60, channel_timeout=30) as kept:
        assert await kept.create("anon", publisher=False)
        assert 0 < await client.pttl(f"{prefix}{{anon}}:meta") <= 30_000
        first = await kept.publish("anon", b"x", "text/plain", idempotency_key="k2")
        assert await client.pttl(f"{prefix}{{anon}}:meta") == -1  # now the publisher's
        assert await client.pttl(f"{prefix}{{anon}}:msgs") == -1
        again = await kept.publish("anon", b"y", "text/plain", idempotency_key="k2")
        assert again.replayed and again.message.id == first.message.id
        read = await kept.read_after("anon", ORIGIN)
        assert read.message.body == b"x"
        assert (await kept.read_after("anon", read.message.id)).message is None
