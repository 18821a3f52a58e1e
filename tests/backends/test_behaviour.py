"""The backend behaviour suite: every test runs against MemoryBackend, RedisBackend and
RedisBackend on a Redis Cluster (the ``backend`` and ``backend_factory`` fixtures are
parametrised over the three)."""

from __future__ import annotations

import itertools
import time

import anyio
import pytest

from pushserver.exceptions import ChannelNotFound
from pushserver.message import ORIGIN, MessageId
from tests.backends.conftest import RecordingListener

pytestmark = pytest.mark.anyio


async def publish_all(backend, channel_id, bodies, **kwargs):
    return [
        (await backend.publish(channel_id, body, "text/plain", **kwargs)).message for body in bodies
    ]


async def read_all(backend, channel_id, after=ORIGIN):
    messages = []
    while True:
        read = await backend.read_after(channel_id, after)
        if read.message is None:
            return messages
        messages.append(read.message)
        after = read.message.id


async def test_create_and_exists(backend):
    assert not await backend.exists("news")
    assert await backend.create("news")
    assert not await backend.create("news")
    assert await backend.exists("news")
    assert not await backend.exists("other")


async def test_publish_without_create_needs_the_channel(backend):
    with pytest.raises(ChannelNotFound):
        await backend.publish("news", b"x", "text/plain", create=False)
    assert not await backend.exists("news")
    await backend.create("news")
    result = await backend.publish("news", b"x", "text/plain", create=False)
    assert result.message.body == b"x"


async def test_ids_start_at_tag_zero_and_increase(backend):
    before = int(time.time())
    messages = await publish_all(backend, "news", [b"%d" % i for i in range(20)])
    first = messages[0].id
    assert first.tag == 0
    assert before - 2 <= first.time <= int(time.time()) + 2
    ids = [m.id for m in messages]
    assert ids == sorted(set(ids))
    for previous, current in itertools.pairwise(ids):
        # One second goes on counting tags; a new second starts again at 0.
        if current.time == previous.time:
            assert current.tag == previous.tag + 1
        else:
            assert current.time > previous.time and current.tag == 0


async def test_read_after_walks_the_channel_in_order(backend):
    messages = await publish_all(backend, "news", [b"a", b"b", b"c"])
    read = await backend.read_after("news", ORIGIN)
    assert read.message.id == messages[0].id and read.message.body == b"a"
    assert not read.gap
    assert [m.body for m in await read_all(backend, "news")] == [b"a", b"b", b"c"]
    read = await backend.read_after("news", messages[1].id)
    assert read.message.body == b"c"
    read = await backend.read_after("news", messages[2].id)
    assert read.message is None and not read.gap
    # Tag -1 stands before the second's first message.
    read = await backend.read_after("news", MessageId(messages[0].id.time, -1))
    assert read.message.id == messages[0].id
    # A position from the future has nothing after it.
    read = await backend.read_after("news", MessageId(messages[2].id.time + 100, 0))
    assert read.message is None


async def test_read_from_missing_channel(backend):
    with pytest.raises(ChannelNotFound):
        await backend.read_after("missing", ORIGIN)


async def test_message_fields_survive_storage_and_delivery(backend):
    await backend.listen("news")
    body = bytes(range(256)) * 4  # every byte value, newlines and NULs included
    result = await backend.publish(
        "news", body, "application/x-test; charset=latin-1", event="née update"
    )
    plain = await backend.publish("news", b"", "text/plain")
    stored = (await backend.read_after("news", ORIGIN)).message
    delivered = (await backend.recorder.wait_messages("news", 2))[0]
    for message in (result.message, stored, delivered):
        assert message.id == result.message.id
        assert message.body == body
        assert message.content_type == "application/x-test; charset=latin-1"
        assert message.event == "née update"
        assert abs(message.published_at - time.time()) < 5
    assert stored.published_at == pytest.approx(result.message.published_at, abs=1e-3)
    last = (await backend.read_after("news", result.message.id)).message
    assert last.id == plain.message.id and last.body == b"" and last.event is None


async def test_channel_info(backend):
    assert await backend.info("news") is None
    await backend.create("news")
    info = await backend.info("news")
    assert (info.channel_id, info.messages, info.subscribers) == ("news", 0, 0)
    assert info.last_requested is None and info.last_message_id is None
    messages = await publish_all(backend, "news", [b"a", b"b"])
    await backend.touch("news")
    await backend.subscribers_changed("news", 1)
    await backend.subscribers_changed("news", 1)
    info = await backend.info("news")
    assert info.messages == 2
    assert info.subscribers == 2
    assert info.last_message_id == messages[-1].id
    assert abs(info.last_requested - time.time()) < 5
    await backend.subscribers_changed("news", -1)
    assert (await backend.info("news")).subscribers == 1


async def test_touch_does_not_create(backend):
    await backend.touch("missing")
    assert not await backend.exists("missing")


# -- open_channel: what a subscriber does before subscribing, in one step ---------------------


async def test_open_channel_creates_only_when_asked(backend):
    with pytest.raises(ChannelNotFound):
        await backend.open_channel("news", create=False)
    assert not await backend.exists("news")
    opened = await backend.open_channel("news", create=True)
    assert opened.created and opened.read is None
    assert await backend.exists("news")
    assert not (await backend.open_channel("news", create=True)).created
    assert not (await backend.open_channel("news", create=False)).created


async def test_open_channel_marks_the_channel_requested(backend):
    await backend.create("news")
    assert (await backend.info("news")).last_requested is None
    before = time.time()
    await backend.open_channel("news", create=False)
    requested = (await backend.info("news")).last_requested
    assert before - 1 <= requested <= time.time() + 1
    # A channel opened into being is requested too.
    await backend.open_channel("made", create=True)
    assert (await backend.info("made")).last_requested >= before - 1


async def test_open_channel_reads_after_the_position(backend):
    first, second = await publish_all(backend, "news", [b"1", b"2"])
    read = (await backend.open_channel("news", create=False, after=ORIGIN)).read
    assert (read.message.id, read.message.body, read.gap) == (first.id, b"1", False)
    read = (await backend.open_channel("news", create=False, after=first.id)).read
    assert (read.message.id, read.message.body) == (second.id, b"2")
    assert (await backend.open_channel("news", create=False, after=second.id)).read.message is None
    # A channel it creates has nothing to read.
    opened = await backend.open_channel("made", create=True, after=ORIGIN)
    assert opened.created and opened.read.message is None and not opened.read.gap


async def test_open_channel_reports_a_gap(backend_factory):
    async with backend_factory(max_messages=1) as backend:
        first, _, third = await publish_all(backend, "news", [b"1", b"2", b"3"])
        read = (await backend.open_channel("news", create=False, after=first.id)).read
        assert read.message.id == third.id and read.gap


async def test_open_channel_refuses_a_new_channel_when_the_store_is_full(
    backend_kind, backend_factory, request
):
    """StoreFull, and nothing is made; an existing channel still opens. The memory store at
    its max_channels; Redis at its maxmemory (a dedicated server: the shared ones are left
    alone, and so is the shared cluster, which runs the same script)."""
    from pushserver.backends.redis import RedisBackend
    from pushserver.exceptions import StoreFull

    if backend_kind == "cluster":
        pytest.skip("the shared cluster's maxmemory is left alone; redis runs the same script")
    if backend_kind == "memory":
        store = backend_factory(max_channels=1)
    else:
        server = request.getfixturevalue("redis_server_factory")()
        options = server.store()
        del options["type"]
        store = RedisBackend(**options)
        store.bind(RecordingListener())
    async with store:
        await store.create("news")
        if backend_kind == "redis":
            import redis.asyncio as aioredis

            async with aioredis.Redis(unix_socket_path=server.unix_socket) as client:
                await client.config_set("maxmemory", 1)
        with pytest.raises(StoreFull):
            await store.open_channel("more", create=True)
        assert not await store.exists("more")
        if backend_kind == "memory":  # Redis refuses every write: touching an existing one too
            assert not (await store.open_channel("news", create=False)).created


# -- the publish result describes the channel (what the publisher answers with) -------------


async def test_publish_result_describes_the_channel(backend):
    created = await backend.publish("news", b"a", "text/plain")
    assert created.info == await backend.info("news")
    assert created.info.messages == 1 and created.info.last_requested is None
    await backend.touch("news")
    await backend.subscribers_changed("news", 1)
    result = await backend.publish("news", b"b", "text/plain", event="e")
    assert result.info == await backend.info("news")
    info = result.info
    assert (info.channel_id, info.messages, info.subscribers) == ("news", 2, 1)
    assert info.last_message_id == result.message.id
    assert abs(info.last_requested - time.time()) < 5
    await backend.subscribers_changed("news", -1)


async def test_publish_result_describes_the_channel_after_retention(backend_factory):
    async with backend_factory(max_messages=2) as backend:
        results = [await backend.publish("news", b"%d" % i, "text/plain") for i in range(3)]
        assert results[-1].info.messages == 2
        assert results[-1].info == await backend.info("news")


async def test_a_replayed_publish_describes_the_channel_as_it_is(backend):
    await backend.publish("news", b"a", "text/plain", idempotency_key="k")
    later = await backend.publish("news", b"b", "text/plain")
    again = await backend.publish("news", b"a", "text/plain", idempotency_key="k")
    assert again.replayed
    # The first publish's id, and the channel as it is now: two messages, the last one later's.
    assert again.info == await backend.info("news")
    assert again.info.messages == 2 and again.info.last_message_id == later.message.id


async def test_publish_reports_waiting_subscribers(backend):
    assert (await backend.publish("news", b"a", "text/plain")).subscribers == 0
    await backend.subscribers_changed("news", 1)
    assert (await backend.publish("news", b"b", "text/plain")).subscribers == 1
    await backend.subscribers_changed("news", -1)
    assert (await backend.publish("news", b"c", "text/plain")).subscribers == 0


async def test_listener_hears_every_message_in_order(backend):
    await backend.listen("news")
    published = await publish_all(backend, "news", [b"%d" % i for i in range(30)])
    delivered = await backend.recorder.wait_messages("news", 30)
    assert [m.id for m in delivered] == [m.id for m in published]
    assert [m.body for m in delivered] == [m.body for m in published]


async def test_delete(backend):
    await backend.listen("news")
    old = await publish_all(backend, "news", [b"a", b"b"])
    assert await backend.delete("news")
    await backend.recorder.wait_for(lambda: "news" in backend.recorder.deleted)
    assert not await backend.exists("news")
    assert await backend.info("news") is None
    with pytest.raises(ChannelNotFound):
        await backend.read_after("news", ORIGIN)
    assert not await backend.delete("news")
    # A channel created again starts empty; its messages are new even if their ids are not.
    assert await backend.create("news")
    again = await publish_all(backend, "news", [b"c"])
    assert [m.body for m in await read_all(backend, "news")] == [b"c"]
    delivered = await backend.recorder.wait_messages("news", 3)
    assert [m.body for m in delivered] == [b"a", b"b", b"c"]
    assert again[0].id >= old[0].id


async def test_max_messages_keeps_the_newest_and_reports_gaps(backend_factory):
    async with backend_factory(max_messages=3) as backend:
        messages = await publish_all(backend, "news", [b"%d" % i for i in range(5)])
        assert (await backend.info("news")).messages == 3
        assert [m.body for m in await read_all(backend, "news")] == [b"2", b"3", b"4"]
        # Read from the start: nothing is missing for a client that asked for everything.
        assert not (await backend.read_after("news", ORIGIN)).gap
        # Behind the newest dropped message: a gap.
        read = await backend.read_after("news", messages[0].id)
        assert read.message.body == b"2" and read.gap
        # At the newest dropped message: the next one is kept, no gap.
        read = await backend.read_after("news", messages[1].id)
        assert read.message.body == b"2" and not read.gap


async def test_message_timeout_keeps_min_messages(backend_factory):
    async with backend_factory(message_timeout=0.3, min_messages=1) as backend:
        messages = await publish_all(backend, "news", [b"a", b"b", b"c"])
        with anyio.fail_after(5):  # expiry is the behaviour under test: watch it happen
            while (await backend.info("news")).messages > 1:
                await anyio.sleep(0.05)
        assert [m.body for m in await read_all(backend, "news")] == [b"c"]
        assert (await backend.read_after("news", messages[0].id)).gap
        assert not (await backend.read_after("news", messages[1].id)).gap


async def test_message_timeout_can_empty_a_channel(backend_factory):
    async with backend_factory(message_timeout=0.2) as backend:
        message = (await backend.publish("news", b"a", "text/plain")).message
        with anyio.fail_after(5):
            while (await backend.info("news")).messages:
                await anyio.sleep(0.05)
        read = await backend.read_after("news", ORIGIN)
        assert read.message is None
        assert (await backend.info("news")).last_message_id == message.id
        # Ids go on from the last one, never back.
        assert (await backend.publish("news", b"b", "text/plain")).message.id > message.id


async def test_concurrent_publishes_get_unique_ordered_ids(backend):
    await backend.listen("news")
    results = []

    async def publish(i: int) -> None:
        results.append((await backend.publish("news", b"%d" % i, "text/plain")).message)

    async with anyio.create_task_group() as tg:
        for i in range(50):
            tg.start_soon(publish, i)
    ids = [m.id for m in results]
    assert len(set(ids)) == 50
    stored = await read_all(backend, "news")
    assert [m.id for m in stored] == sorted(ids)
    assert sorted(m.body for m in stored) == sorted(b"%d" % i for i in range(50))
    delivered = await backend.recorder.wait_messages("news", 50)
    assert [m.id for m in delivered] == sorted(ids)


@pytest.mark.parametrize("channel_id", ["ä ö/ü", "a}b{c", "{x}", "with:colons"])
async def test_channel_ids_are_kept_apart(backend, channel_id):
    await backend.publish(channel_id, b"mine", "text/plain")
    await backend.publish("a", b"other", "text/plain")
    assert [m.body for m in await read_all(backend, channel_id)] == [b"mine"]
    assert [m.body for m in await read_all(backend, "a")] == [b"other"]
    assert await backend.delete(channel_id)
    assert await backend.exists("a")


async def test_a_retried_publish_with_the_same_key_is_stored_once(backend):
    await backend.listen("news")
    first = await backend.publish("news", b"a", "text/plain", idempotency_key="order-1")
    assert not first.replayed
    again = await backend.publish("news", b"a", "text/plain", idempotency_key="order-1")
    assert again.replayed
    assert again.message.id == first.message.id
    assert again.message.published_at == first.message.published_at
    assert again.subscribers == first.subscribers
    other = await backend.publish("news", b"b", "text/plain", idempotency_key="order-2")
    assert not other.replayed and other.message.id > first.message.id
    assert [m.body for m in await read_all(backend, "news")] == [b"a", b"b"]
    # Delivered once each.
    messages = await backend.recorder.wait_messages("news", 2)
    assert [m.body for m in messages] == [b"a", b"b"]
    # A key is the channel's own: the same key elsewhere is a new publish.
    elsewhere = await backend.publish("sport", b"a", "text/plain", idempotency_key="order-1")
    assert not elsewhere.replayed
    info = await backend.info("news")
    assert info.messages == 2


async def test_an_idempotency_key_is_forgotten_after_its_window(backend_factory):
    async with backend_factory(idempotency_window=0.2) as backend:
        first = await backend.publish("news", b"a", "text/plain", idempotency_key="k")
        assert (await backend.publish("news", b"a", "text/plain", idempotency_key="k")).replayed
        deadline = time.monotonic() + 10
        while True:  # the key lives in the store's own clock: wait for it to lapse there
            again = await backend.publish("news", b"a", "text/plain", idempotency_key="k")
            if not again.replayed:
                break
            assert time.monotonic() < deadline, "the key was never forgotten"
            await anyio.sleep(0.05)
        assert again.message.id > first.message.id
        assert (await backend.info("news")).messages == 2


async def test_without_a_key_every_publish_is_stored(backend):
    for _ in range(2):
        result = await backend.publish("news", b"a", "text/plain")
        assert not result.replayed
    assert (await backend.info("news")).messages == 2


async def test_the_memory_store_remembers_a_bounded_number_of_keys():
    from pushserver.backends.memory import MAX_IDEMPOTENCY_KEYS, MemoryBackend
    from tests.backends.conftest import RecordingListener

    backend = MemoryBackend()
    backend.bind(RecordingListener())
    for index in range(MAX_IDEMPOTENCY_KEYS + 1):
        await backend.publish("news", b"x", "text/plain", idempotency_key=f"k{index}")
    # The oldest key was forgotten to make room; the newest are remembered.
    assert not (await backend.publish("news", b"x", "text/plain", idempotency_key="k0")).replayed
    assert (await backend.publish("news", b"x", "text/plain", idempotency_key="k2")).replayed


async def test_a_replay_answers_the_first_id_after_its_message_left_retention(backend_factory):
    async with backend_factory(max_messages=1) as backend:
        first = await backend.publish("news", b"first", "text/plain", idempotency_key="k")
        await backend.publish("news", b"second", "text/plain")  # trims the first
        again = await backend.publish("news", b"first", "text/plain", idempotency_key="k")
        assert again.replayed and again.message.id == first.message.id
        assert again.message.published_at == first.message.published_at
        assert (await backend.info("news")).messages == 1


async def test_the_memory_store_keeps_no_body_for_a_remembered_key():
    """A remembered key keeps the first publish's id, time and subscribers, not its
    message: a body trimmed from retention is freed, not held outside memory_limit for
    the window (docs/redis.md#idempotent-publishing)."""
    import gc
    import tracemalloc

    from pushserver.backends.memory import MemoryBackend
    from tests.backends.conftest import RecordingListener

    backend = MemoryBackend(max_messages=1)
    backend.bind(recorder := RecordingListener())
    tracemalloc.start()
    try:
        await backend.publish("news", b"x" * (4 << 20), "text/plain", idempotency_key="k")
        await backend.publish("news", b"y", "text/plain")  # trims the 4 MiB message
        recorder.messages.clear()
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 1 << 20
    assert (await backend.publish("news", b"x", "text/plain", idempotency_key="k")).replayed


async def test_the_memory_store_counts_remembered_keys_against_its_budget():
    """Each remembered key counts against memory_limit until it is forgotten (its window
    passed, the per-channel cap, or the channel removed), and a keyed publish that would
    pass the budget is refused like any other."""
    from pushserver.backends.memory import (
        MemoryBackend,
        channel_cost,
        idempotency_key_cost,
        message_cost,
    )
    from pushserver.exceptions import StoreFull
    from tests.backends.conftest import RecordingListener

    backend = MemoryBackend(max_messages=1, idempotency_window=0.2)
    backend.bind(RecordingListener())
    first = await backend.publish("news", b"x", "text/plain", idempotency_key="k1")
    await backend.publish("news", b"y", "text/plain", idempotency_key="k2")
    keys = idempotency_key_cost("k1") + idempotency_key_cost("k2")
    assert backend.memory_used == channel_cost("news") + message_cost(first.message) + keys
    # Once their window has passed, the next keyed publish forgets them.
    window_end = time.time() + 0.2
    while time.time() <= window_end:
        await anyio.sleep(0.05)  # waits for a deadline on the store's clock
    await backend.publish("news", b"x", "text/plain", idempotency_key="k3")
    assert backend.memory_used == (
        channel_cost("news") + message_cost(first.message) + idempotency_key_cost("k3")
    )
    assert await backend.delete("news")
    assert backend.memory_used == 0
    # At the budget, the key's bytes are what tips it over.
    needed = channel_cost("c") + message_cost(first.message)
    tight = MemoryBackend(memory_limit=needed + idempotency_key_cost("k") - 1)
    tight.bind(RecordingListener())
    with pytest.raises(StoreFull):
        await tight.publish("c", b"x", "text/plain", idempotency_key="k")
    assert tight.memory_used == 0
    await tight.publish("c", b"x", "text/plain")
    assert tight.memory_used == needed
