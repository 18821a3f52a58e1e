"""What a publish and a long-poll delivery cost in Redis commands (round trips), counted
on a real redis-server with ``MONITOR`` under a real ``runpushserver``: a script is one
command, whatever it runs inside."""

from __future__ import annotations

import hashlib
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from email.utils import formatdate

import anyio
import anyio.to_thread
import httpx
import pytest
import redis

from pushserver.backends.redis import _READ, _SUBSCRIBERS, _TOUCH
from tests.project.helpers import push_config

pytestmark = pytest.mark.anyio

#: What the server does on its own schedule, not for a request: the memory watcher's INFO,
#: the pub/sub reader's PING when it is quiet, a new pooled connection's setup, and the
#: SCRIPT EXISTS (and LOAD) redis-py sends before each pipeline of scripts (the batches of
#: counts and "last requested" times, once per linger or node_ttl / 3).
BACKGROUND = {"INFO", "PING", "CLIENT", "HELLO", "SCRIPT"}
_COUNTS_SHA = hashlib.sha1(_SUBSCRIBERS.encode()).hexdigest()
#: The sweeper's batch, once per linger, of "last requested" for channels opened without a
#: command (per channel and linger, not per request).
_TOUCH_SHA = hashlib.sha1(_TOUCH.encode()).hexdigest()
_READ_SHA = hashlib.sha1(_READ.encode()).hexdigest()


class CommandLog:
    """The commands the push server sends to Redis, read with MONITOR. Left out: what ran
    inside a script (MONITOR shows it as ``lua``), the test's own commands (over the unix
    socket; the server uses TCP) and :data:`BACKGROUND`, including the periodic refresh of
    the subscriber counts and the sweeper's batch of "last requested" times."""

    def __init__(self, server) -> None:
        self.client = redis.Redis(unix_socket_path=server.unix_socket, password=server.password)
        self.monitor = self.client.monitor()
        self.monitor.__enter__()

    def close(self) -> None:
        self.monitor.__exit__(None, None, None)
        self.client.close()

    def take(self) -> Counter[str]:
        """The commands since the last take, counted by name: an ECHO of a fresh marker
        ends them (MONITOR shows commands in the order Redis ran them)."""
        marker = uuid.uuid4().hex
        self.client.echo(marker)
        names: Counter[str] = Counter()
        self.scripts: Counter[str] = Counter()  # the EVALSHAs among them, by script
        while True:
            command = self.monitor.next_command()
            words = command["command"].split(" ")
            if command["client_type"] == "unix":
                if words[:2] == ["ECHO", marker]:
                    return names
                continue
            if command["client_type"] == "lua" or words[0].upper() in BACKGROUND:
                continue
            if words[0].upper() == "EVALSHA" and words[1] == _COUNTS_SHA and words[-2] == "1":
                continue  # the periodic refresh of this node's subscriber counts
            if words[0].upper() == "EVALSHA" and words[1] == _TOUCH_SHA:
                continue  # the sweeper's "last requested" of channels opened locally
            names[words[0].upper()] += 1
            if words[0].upper() == "EVALSHA":
                self.scripts[words[1]] += 1

    def numsub(self, channel: bytes) -> int:
        return dict(self.client.pubsub_numsub(channel))[channel]


@pytest.fixture
async def log(redis_server_factory):
    server = redis_server_factory()
    commands = await anyio.to_thread.run_sync(CommandLog, server)
    commands.server = server
    yield commands
    await anyio.to_thread.run_sync(commands.close)


#: The store's ``linger`` here: seconds a channel stays subscribed, and this process's count
#: of it unchanged, after its last subscriber left.
LINGER = 2.0


async def test_a_publish_and_a_long_poll_delivery_in_redis_commands(log, push_server_factory):
    store = {**log.server.store(), "linger": LINGER}
    config = push_config(store)
    config["locations"].append({"type": "status", "prefix": "/status/"})
    server = push_server_factory(config)
    live = f"{store['key_prefix']}{{news}}:live".encode()
    subs = f"{store['key_prefix']}{{news}}:subs"
    async with httpx.AsyncClient(base_url=server.url, timeout=20) as client:
        # Warming up: the pool's connections, and each script's first use (redis-py loads
        # a script Redis does not know yet: SCRIPT LOAD and a second EVALSHA, once).
        assert (await client.put("/publisher/news")).status_code == 200
        position = (await publish(client, b"warm-up")).json()["last_message_id"]
        await client.get("/subscriber/news")
        older = await wait_once(client, log, live, position, b"warm-up 2")
        await wait_gone(log, live, subs)
        await anyio.to_thread.run_sync(log.take)

        # A publish is one script, the channel info it answers with included.
        response = await publish(client, b"first")
        assert response.status_code == 202 and response.json()["messages"] == 3
        assert await anyio.to_thread.run_sync(log.take) == {"EVALSHA": 1}

        # A long poll that finds its message waiting: one script opens and reads.
        found = await client.get("/subscriber/news", headers=position_headers(older))
        assert found.content == b"first"
        assert await anyio.to_thread.run_sync(log.take) == {"EVALSHA": 1}

        # A long poll that waits on a channel this process does not subscribe to: open and
        # read (nothing yet), subscribe, count itself in, read again. The publish that wakes
        # it is its one script.
        position = await wait_once(
            client, log, live, response.json()["last_message_id"], b"second", linger=True
        )
        waited = await anyio.to_thread.run_sync(log.take)
        waited["EVALSHA"] -= 1  # the publish
        assert waited == {"EVALSHA": 3, "SUBSCRIBE": 1}

        # The same client polling again at once (as every long-poll client does), and
        # waiting: the channel is still subscribed, its count still in place, and the
        # process knows the channel's newest message (it came on pub/sub, and the count
        # written while subscribed told it where the channel stood): a client at that
        # message has nothing to read, and whatever comes next comes live. No command at
        # all for the long poll; the publish that wakes it is its one script.
        for body in (b"third", b"fourth", b"fifth"):
            position = await wait_again(client, position, body)
            again = await anyio.to_thread.run_sync(log.take)
            again["EVALSHA"] -= 1  # the publish
            assert again == Counter(), body

        # A client behind the newest message (one missed while away): the open reads it.
        behind = position
        position = (await publish(client, b"sixth")).json()["last_message_id"]
        seventh = await publish(client, b"seventh")
        assert seventh.status_code == 202
        await anyio.to_thread.run_sync(log.take)
        found = await client.get("/subscriber/news", headers=position_headers(behind))
        assert found.content == b"sixth"
        assert await anyio.to_thread.run_sync(log.take) == {"EVALSHA": 1}
        position = seventh.json()["last_message_id"]

        # The pub/sub connection lost: the process resubscribes and catches up (a read),
        # and no longer knows where the channel stands. The next waiting long poll's open
        # reads from Redis again (and, read while subscribed, tells it); the one after is
        # free again.
        await anyio.to_thread.run_sync(lambda: log.client.client_kill_filter(_type="pubsub"))
        with anyio.fail_after(20):
            while True:
                await anyio.to_thread.run_sync(log.take)
                if log.scripts[_READ_SHA]:  # the catch-up, run once resubscribed
                    break
                await anyio.sleep(0.05)
        for body, cost in ((b"eighth", {"EVALSHA": 1}), (b"ninth", {})):
            position = await wait_again(client, position, body)
            again = await anyio.to_thread.run_sync(log.take)
            again["EVALSHA"] -= 1  # the publish
            assert again == Counter(cost), body

        # Nobody polls again: one to two lingers later the subscription goes, and this
        # process's count with it (what the cold poll's delivery used to cost at once).
        await wait_gone(log, live, subs)
        assert await anyio.to_thread.run_sync(log.take) == {"UNSUBSCRIBE": 1, "EVALSHA": 1}


async def publish(client: httpx.AsyncClient, body: bytes) -> httpx.Response:
    """POST ``body``; the answer describes the channel in JSON."""
    return await client.post(
        "/publisher/news", content=body, headers={"Accept": "application/json"}
    )


def position_headers(message_id: str) -> dict[str, str]:
    """The long-poll headers of a client that has read up to ``message_id``."""
    seconds, _, tag = message_id.partition(":")
    return {"If-Modified-Since": formatdate(int(seconds), usegmt=True), "If-None-Match": tag}


async def wait_once(
    client: httpx.AsyncClient,
    log: CommandLog,
    live: bytes,
    position: str,
    body: bytes,
    *,
    linger: bool = False,
) -> str:
    """Long-poll from ``position`` and, once the poll waits (Redis has its subscription),
    publish ``body``; return the position of ``body`` once the poll answered with it (and,
    unless ``linger``, once Redis has dropped the subscription again)."""

    async def subscribed() -> bool:  # Redis's own subscription count
        return await anyio.to_thread.run_sync(log.numsub, live) != 0

    published = await poll_and_publish(client, position, body, subscribed)
    if not linger:
        with anyio.fail_after(10):
            while await anyio.to_thread.run_sync(log.numsub, live) != 0:
                await anyio.sleep(0.01)
    return published.json()["last_message_id"]


async def wait_again(client: httpx.AsyncClient, position: str, body: bytes) -> str:
    """Long-poll from ``position`` on a channel that is subscribed already and, once the
    server counts the poll as waiting (its status; no Redis command), publish ``body``;
    return its position once the poll answered with it."""

    async def waiting() -> bool:  # the server's own count of waiting long polls
        return (await client.get("/status/json")).json()["connections"]["longpoll"] == 1

    published = await poll_and_publish(client, position, body, waiting)
    return published.json()["last_message_id"]


async def poll_and_publish(
    client: httpx.AsyncClient,
    position: str,
    body: bytes,
    waiting: Callable[[], Awaitable[bool]],
) -> httpx.Response:
    """Long-poll from ``position``; once ``waiting()`` says the poll waits, publish ``body``
    and check that the poll answered with it. The publish's answer."""
    received: list[httpx.Response] = []
    async with anyio.create_task_group() as tg:

        async def poll() -> None:
            received.append(
                await client.get("/subscriber/news", headers=position_headers(position))
            )

        tg.start_soon(poll)
        with anyio.fail_after(10):
            while not await waiting():
                await anyio.sleep(0.01)
        published = await publish(client, body)
    assert received[0].content == body
    return published


async def wait_gone(log: CommandLog, live: bytes, subs: str) -> None:
    """Until Redis has neither the channel's subscription nor the process's count of it."""
    with anyio.fail_after(10 + 4 * LINGER):
        while await anyio.to_thread.run_sync(log.numsub, live) or await anyio.to_thread.run_sync(
            log.client.exists, subs
        ):
            await anyio.sleep(0.05)
