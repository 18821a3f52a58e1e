"""Two real ``runpushserver`` processes on a real Redis Cluster (three primaries, three
replicas; the session's ``redis_cluster``): every transport delivers and resumes across
processes, with channels on every shard; ``Idempotency-Key`` stores a retried publish once
across processes; the startup checks name a cluster option that does not fit the server.
(Failover is in test_redis_failover.py, on clusters of its own.)"""

from __future__ import annotations

import uuid
from functools import partial

import anyio
import anyio.to_thread
import httpx
import pytest
from django.core import checks
from django.test import override_settings

from pushserver.testing import free_port
from pushserver.utils.updates import asend_update, send_update
from tests.project.helpers import Follower, pushserver_messages, wait_for_subscribers
from tests.transports.test_shared_behaviour import ADAPTERS

pytestmark = pytest.mark.anyio

TIMEOUT = 30


def bodies(received) -> list[str]:
    """Message bodies as text (WebSocket binary frames arrive as bytes)."""
    return [r.body.decode() if isinstance(r.body, bytes) else r.body for r in received]


def cluster_config(store: dict) -> dict:
    """A publisher and a subscriber location (channels made on first GET, no pings, which
    the WebSocket test client would read as a message) on ``store``."""
    return {
        "store": store,
        "locations": [
            {"type": "publisher", "prefix": "/publisher/"},
            {
                "type": "subscriber",
                "prefix": "/subscriber/",
                "create_on_get": True,
                "ping_interval": 0,
            },
        ],
    }


def one_channel_per_shard(cluster, store: dict) -> list[str]:
    """Channel ids whose keys live on three different primaries."""
    by_primary: dict[int, str] = {}
    while len(by_primary) < 3:
        channel = f"c{uuid.uuid4().hex[:8]}"
        primary = cluster.primary_for(f"{store['key_prefix']}{{{channel}}}:meta")
        by_primary.setdefault(primary.port, channel)
    return list(by_primary.values())


@pytest.fixture
def two_servers(push_server_factory, redis_cluster):
    store = redis_cluster.store()
    config = cluster_config(store)
    return store, push_server_factory(config), push_server_factory(config)


async def test_every_transport_delivers_and_resumes_across_processes(two_servers, redis_cluster):
    store, a, b = two_servers
    await delivers_and_resumes(a, b, one_channel_per_shard(redis_cluster, store))


async def delivers_and_resumes(a, b, channels: list[str]) -> None:
    """Subscribers of every transport on ``b`` get what is published on ``a``, then resume
    on ``a`` from where each left off (also used on Sentinel, test_redis_failover.py)."""
    received: dict[tuple[str, str], list] = {}
    async with (
        httpx.AsyncClient(base_url=a.url, timeout=TIMEOUT) as on_a,
        httpx.AsyncClient(base_url=b.url, timeout=TIMEOUT) as on_b,
    ):
        with anyio.fail_after(TIMEOUT):
            # Subscribed on b to a channel on each shard, over each transport.
            positions: dict[tuple[str, str], str] = {}
            async with anyio.create_task_group() as group:

                async def follow(transport: str, channel: str) -> None:
                    async with ADAPTERS[transport](b, on_b, [channel]) as subscriber:
                        got = await subscriber.read(2)
                        received[transport, channel] = bodies(got)
                        positions[transport, channel] = subscriber.position

                for transport in ADAPTERS:
                    for channel in channels:
                        group.start_soon(follow, transport, channel)
                for channel in channels:
                    await wait_for_subscribers(on_a, f"/publisher/{channel}", len(ADAPTERS))
                for channel in channels:
                    for body in ("one", "two"):
                        response = await on_a.post(f"/publisher/{channel}", content=body)
                        assert response.status_code == 201, response.text
            assert all(got == ["one", "two"] for got in received.values()), received

            # Away meanwhile; back on the other process, from where each left off.
            for channel in channels:
                for body in ("three", "four"):
                    response = await on_b.post(f"/publisher/{channel}", content=body)
                    assert response.status_code == 202, response.text
            for (transport, channel), after in positions.items():
                async with ADAPTERS[transport](a, on_a, [channel], after=after) as subscriber:
                    got = await subscriber.read(2)
                    assert bodies(got) == ["three", "four"], (transport, channel)


async def test_a_retried_publish_is_stored_once_across_processes(two_servers):
    _, a, b = two_servers
    key = uuid.uuid4().hex
    async with (
        httpx.AsyncClient(base_url=a.url, timeout=TIMEOUT) as on_a,
        httpx.AsyncClient(base_url=b.url, timeout=TIMEOUT) as on_b,
    ):
        first = await on_a.post("/publisher/orders", content=b"x", headers={"idempotency-key": key})
        assert first.status_code == 202, first.text
        assert "idempotent-replayed" not in first.headers
        # The retry reaches the other process: same answer, same id, nothing stored again.
        again = await on_b.post("/publisher/orders", content=b"x", headers={"idempotency-key": key})
        assert again.status_code == 202
        assert again.headers["idempotent-replayed"] == "true"
        assert again.headers["x-message-id"] == first.headers["x-message-id"]
        info = (await on_b.get("/publisher/orders", headers={"accept": "application/json"})).json()
        assert info["messages"] == 1
        assert info["last_message_id"] == first.headers["x-message-id"]
        # A malformed key is refused before anything is stored.
        for bad in ("", "has space", "x" * 256, "caf\u00e9"):
            response = await on_a.post(
                "/publisher/orders", content=b"y", headers={"idempotency-key": bad.encode()}
            )
            assert response.status_code == 400, bad
            assert "Idempotency-Key" in response.text
        info = (await on_a.get("/publisher/orders", headers={"accept": "application/json"})).json()
        assert info["messages"] == 1


async def test_send_update_to_the_cluster_with_a_key_over_http_and_straight(two_servers, recorded):
    """``send_update(..., idempotency_key=...)`` through a push server (HTTP) and straight
    to the cluster (``publish_via='backend'``): a retry with the same key, either way, is
    answered as the first and stored once."""
    store, a, _ = two_servers
    host = {"location": a.host, "secure": False}
    over_http = {**cluster_config(store), "publisher_host": host}
    straight = {**cluster_config(store), "publish_via": "backend"}
    for settings in (over_http, straight, over_http):
        with override_settings(PUSH_SERVER=settings):
            await anyio.to_thread.run_sync(
                partial(send_update, "keyed", {"n": 1}, idempotency_key="same-key")
            )
            await asend_update("keyed", {"n": 2}, idempotency_key="other-key")
    responses = [kwargs["response"] for kind, _, kwargs in recorded if kind == "post"]
    assert [r.replayed for r in responses] == [False, False, True, True, True, True]
    assert [r.backend for r in responses] == [False, False, True, True, False, False]
    async with httpx.AsyncClient(base_url=a.url, timeout=TIMEOUT) as on_a:
        info = (await on_a.get("/publisher/keyed", headers={"accept": "application/json"})).json()
        assert info["messages"] == 2
        follower = Follower(a.url, "keyed")
        try:
            with anyio.fail_after(TIMEOUT):
                await follower.read(2)
        finally:
            await follower.aclose()
    assert [body for _, body in follower.received] == [b'{"n": 1}', b'{"n": 2}']
    with pytest.raises(ValueError, match="idempotency_key"):
        send_update("keyed", 1, idempotency_key="with space")


# -- startup checks ---------------------------------------------------------------------------


def test_a_cluster_passes_the_checks(redis_cluster):
    assert pushserver_messages({"store": redis_cluster.store()}, deploy=True) == []


def test_the_cluster_option_on_one_redis_is_a_warning_naming_it(redis_server):
    (message,) = pushserver_messages({"store": redis_server.store(cluster=True)}, deploy=True)
    assert message.id == "pushserver.W053" and message.level == checks.WARNING
    assert f"cluster redis://127.0.0.1:{redis_server.port}/0" in message.msg
    assert "not a Redis Cluster node" in message.msg
    assert "'cluster'" in message.hint


def test_a_cluster_node_without_the_option_is_a_warning(redis_cluster):
    store = redis_cluster.store()
    del store["cluster"]
    (message,) = pushserver_messages({"store": store}, deploy=True)
    assert message.id == "pushserver.W053"
    assert f"redis://127.0.0.1:{redis_cluster.servers[0].port}/0" in message.msg
    assert "is a Redis Cluster node" in message.msg


def test_an_unreachable_cluster_is_a_warning_naming_it():
    port = free_port()
    (message,) = pushserver_messages(
        {"store": {"type": "redis", "port": port, "cluster": True}}, deploy=True
    )
    assert message.id == "pushserver.W052"
    assert f"cannot reach Redis at cluster redis://127.0.0.1:{port}/0" in message.msg


def test_unreachable_sentinels_are_a_warning_naming_them():
    ports = [free_port(), free_port()]
    sentinels = [f"127.0.0.1:{port}" for port in ports]
    store = {"type": "redis", "sentinels": sentinels, "service": "main"}
    (message,) = pushserver_messages({"store": store}, deploy=True)
    assert message.id == "pushserver.W052"
    assert f"sentinel://{','.join(sentinels)}/main" in message.msg
    assert "no sentinel named a primary for 'main'" in message.msg


@pytest.mark.parametrize(
    ("options", "code", "key"),
    [
        ({"cluster": "yes"}, "E170", "cluster"),
        ({"cluster": True, "sentinels": ["127.0.0.1:26379"], "service": "m"}, "E170", "cluster"),
        ({"cluster": True, "database": 2}, "E170", "database"),
        ({"sentinels": "127.0.0.1:26379", "service": "m"}, "E171", "sentinels"),
        ({"sentinels": ["127.0.0.1:26379"]}, "E171", "service"),
        ({"wait_replicas": -1}, "E172", "wait_replicas"),
        ({"wait_replicas": 1, "wait_timeout": 0}, "E172", "wait_timeout"),
        ({"idempotency_window": "5m"}, "E173", "idempotency_window"),
    ],
)
def test_bad_cluster_sentinel_and_durability_options(options, code, key):
    from pushserver.config import parse

    _, problems = parse({"store": {"type": "redis", **options}})
    assert [(p.id, p.key) for p in problems] == [
        (f"pushserver.{code}", f"PUSH_SERVER['store'][{key!r}]")
    ], problems


def test_memory_store_idempotency_window_is_checked():
    from pushserver.config import parse

    _, problems = parse({"store": {"type": "memory", "idempotency_window": -1}})
    assert [p.id for p in problems] == ["pushserver.E173"]


# -- the store on a cluster, below HTTP ---------------------------------------------------------


async def test_the_reader_comes_back_on_nodes_without_its_scripts(redis_cluster):
    """A promoted replica has an empty script cache (it is not replicated): after the
    reader reconnects to such a node, subscriber counts are written and messages delivered
    again. Emptied here with SCRIPT FLUSH, the reader's connections cut with CLIENT KILL."""
    import redis

    from pushserver.backends.redis import RedisBackend
    from tests.backends.conftest import RecordingListener

    options = redis_cluster.store()
    del options["type"]
    listening, publishing = RedisBackend(**options), RedisBackend(**options)
    listening.bind(recorder := RecordingListener())
    publishing.bind(RecordingListener())
    async with listening, publishing:
        await listening.listen("news")
        await listening.subscribers_changed("news", 1)
        await publishing.publish("news", b"before", "text/plain")
        await recorder.wait_messages("news", 1)
        reconnects = listening.reconnects
        for port in redis_cluster.ports:
            with redis.Redis(host="127.0.0.1", port=port) as node:
                node.script_flush()
                node.client_kill_filter(_type="pubsub")
        with anyio.fail_after(TIMEOUT):
            while listening.reconnects == reconnects or not listening.connected:
                await anyio.sleep(0.05)  # polls the backend's own state
        assert (await publishing.publish("news", b"after", "text/plain")).subscribers == 1
        messages = await recorder.wait_messages("news", 2, timeout=TIMEOUT)
        assert [m.body for m in messages] == [b"before", b"after"]


async def test_status_sums_the_memory_of_every_primary(redis_cluster):
    """On a cluster, INFO answers for one node: status reads every primary and shows the
    sum of used memory and of maxmemory (none if a primary has none), and an evicting
    policy if any primary has one (docs/redis.md#memory-and-expiry)."""
    import redis

    from pushserver.backends.redis import RedisBackend
    from tests.backends.conftest import RecordingListener

    options = redis_cluster.store()
    del options["type"]
    primaries = redis_cluster.primaries()
    assert len(primaries) == 3
    clients = [redis.Redis(host="127.0.0.1", port=s.port) for s in primaries]

    async def reads(limit, policy):
        with anyio.fail_after(TIMEOUT):
            while (backend.memory_limit, backend.memory_policy) != (limit, policy):
                await anyio.sleep(0.02)  # polls the backend's own state

    backend = RedisBackend(**options)
    backend.bind(RecordingListener())
    backend.memory_interval = 0.05
    try:
        async with backend:
            for index, client in enumerate(clients):
                client.config_set("maxmemory", (index + 1) << 30)
            await reads(6 << 30, "noeviction")
            largest = max(int(c.info("memory")["used_memory"]) for c in clients)
            assert backend.memory_used > 2 * largest  # three nodes' worth, not one
            clients[1].config_set("maxmemory-policy", "allkeys-lru")
            await reads(6 << 30, "allkeys-lru")
            clients[2].config_set("maxmemory", 0)
            await reads(0, "allkeys-lru")
    finally:
        for client in clients:
            client.config_set("maxmemory", 0)
            client.config_set("maxmemory-policy", "noeviction")
            client.close()


async def test_live_delivery_uses_sharded_pub_sub_on_the_channel_s_own_shard(redis_cluster):
    """A channel is subscribed (SSUBSCRIBE) and published (SPUBLISH, in the publish
    script) on the primary holding its slot only, so a message crosses only its shard;
    nothing goes through classic, cluster-wide PUBLISH."""
    import redis

    from pushserver.backends.redis import RedisBackend
    from tests.backends.conftest import RecordingListener

    options = redis_cluster.store()
    del options["type"]
    live = f"{options['key_prefix']}{{news}}:live".encode()
    owner = redis_cluster.primary_for(live)
    clients = {
        s.port: redis.Redis(host="127.0.0.1", port=s.port) for s in redis_cluster.primaries()
    }

    def calls(client, command: str) -> int:
        return int(client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))

    backend = RedisBackend(**options)
    backend.bind(recorder := RecordingListener())
    try:
        async with backend:
            await backend.listen("news")
            for port, client in clients.items():
                assert (live in client.pubsub_shardchannels()) == (port == owner.port)
                assert live not in client.pubsub_channels()
            before = {
                port: (calls(c, "spublish"), calls(c, "publish")) for port, c in clients.items()
            }
            await backend.publish("news", b"x", "text/plain")
            await recorder.wait_messages("news", 1, timeout=TIMEOUT)
            for port, client in clients.items():
                spublished = calls(client, "spublish") - before[port][0]
                assert spublished == (1 if port == owner.port else 0), port
                assert calls(client, "publish") == before[port][1], port
    finally:
        for client in clients.values():
            client.close()
