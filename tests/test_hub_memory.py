"""The memory backend and the hub, in process, on asyncio and trio."""

import types

import anyio
import pytest

from pushserver.backends import MemoryBackend
from pushserver.backends import memory as memory_module
from pushserver.exceptions import ChannelNotFound, StoreFull
from pushserver.hub import Closing, Deletion, Delivery, Hub
from pushserver.message import ORIGIN, MessageId

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request):
    return request.param


class Clock:
    """A settable clock for the memory backend, so expiry needs no waiting."""

    def __init__(self, now: float = 1_800_000_000.25) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(memory_module, "time", types.SimpleNamespace(time=clock.time))
    return clock


def make_hub(**options) -> Hub:
    return Hub(MemoryBackend(**options), queue_size=8)


async def walk(hub, channel_id, after=ORIGIN):
    """Every retained message after ``after``, read the way a long-poll client reads."""
    bodies = []
    while True:
        read = await hub.read_after(channel_id, after)
        if read.message is None:
            return bodies
        bodies.append(read.message.body)
        after = read.message.id


async def test_ids_count_within_a_second_and_restart_on_the_next(clock):
    async with make_hub() as hub:
        ids = [(await hub.publish("c", b"%d" % i, "text/plain")).message.id for i in range(3)]
        assert ids == [MessageId(1_800_000_000, tag) for tag in range(3)]
        clock.now += 1
        later = (await hub.publish("c", b"3", "text/plain")).message.id
        assert later == MessageId(1_800_000_001, 0)


async def test_publish_and_read_after_walks_in_order(clock):
    async with make_hub() as hub:
        for i in range(10):
            await hub.publish("c", b"%d" % i, "text/plain")
            if i % 3 == 0:
                clock.now += 1
        assert await walk(hub, "c") == [b"%d" % i for i in range(10)]
        first = (await hub.read_after("c", ORIGIN)).message
        assert first.body == b"0" and first.content_type == "text/plain"
        # The JS client's first request (epoch, etag 0) also starts at the oldest message.
        assert (await hub.read_after("c", MessageId(0, 0))).message is first


async def test_publish_creates_unless_told_not_to():
    async with make_hub() as hub:
        with pytest.raises(ChannelNotFound):
            await hub.publish("missing", b"x", "text/plain", create=False)
        assert not await hub.backend.exists("missing")
        assert await hub.backend.create("made")
        assert not await hub.backend.create("made")
        result = await hub.publish("made", b"x", "text/plain", create=False)
        assert result.subscribers == 0
        with pytest.raises(ChannelNotFound):
            await hub.read_after("missing", ORIGIN)
        assert await hub.info("missing") is None


async def test_channel_info(clock):
    async with make_hub() as hub:
        await hub.backend.create("c")
        info = await hub.info("c")
        assert (info.messages, info.last_requested, info.subscribers, info.last_message_id) == (
            0,
            None,
            0,
            None,
        )
        await hub.publish("c", b"a", "text/plain")
        last = (await hub.publish("c", b"b", "text/plain")).message.id
        await hub.backend.touch("c")
        async with hub.subscription(["c"]):
            info = await hub.info("c")
            assert info.messages == 2
            assert info.last_requested == clock.now
            assert info.subscribers == 1
            assert info.last_message_id == last
        assert (await hub.info("c")).subscribers == 0


async def test_max_messages_keeps_the_newest_and_reports_the_gap(clock):
    async with make_hub(max_messages=3) as hub:
        ids = [(await hub.publish("c", b"%d" % i, "text/plain")).message.id for i in range(5)]
        assert (await hub.info("c")).messages == 3
        # A new client (no position) gets the oldest retained message; nothing was missed.
        read = await hub.read_after("c", ORIGIN)
        assert (read.message.body, read.gap) == (b"2", False)
        # A client that had read message 0 missed message 1: it resumes at 2, with the gap flagged.
        read = await hub.read_after("c", ids[0])
        assert (read.message.body, read.gap) == (b"2", True)
        # A client that had read message 1 missed nothing.
        read = await hub.read_after("c", ids[1])
        assert (read.message.body, read.gap) == (b"2", False)
        assert await walk(hub, "c", ids[0]) == [b"2", b"3", b"4"]


async def test_max_messages_zero_is_unlimited():
    async with make_hub(max_messages=0) as hub:
        for i in range(300):
            await hub.publish("c", b"%d" % i, "text/plain")
        assert (await hub.info("c")).messages == 300


async def test_message_timeout_expires_messages(clock):
    async with make_hub(message_timeout=10) as hub:
        first = (await hub.publish("c", b"old", "text/plain")).message.id
        clock.now += 5
        await hub.publish("c", b"new", "text/plain")
        clock.now += 5.5  # "old" is 10.5 s old, "new" 5.5 s
        assert (await hub.info("c")).messages == 1
        read = await hub.read_after("c", ORIGIN)
        assert read.message.body == b"new"
        assert (await hub.read_after("c", first)).gap is False  # nothing after "old" was lost
        clock.now += 5
        assert (await hub.info("c")).messages == 0
        assert (await hub.read_after("c", ORIGIN)).message is None
        # The channel and its id sequence outlive its messages.
        assert (await hub.info("c")).last_message_id is not None


async def test_min_messages_are_kept_even_when_expired(clock):
    async with make_hub(message_timeout=1, min_messages=2) as hub:
        for i in range(4):
            await hub.publish("c", b"%d" % i, "text/plain")
        clock.now += 60
        assert (await hub.info("c")).messages == 2
        assert await walk(hub, "c") == [b"2", b"3"]


async def test_max_messages_wins_over_min_messages(clock):
    async with make_hub(max_messages=2, min_messages=5, message_timeout=1) as hub:
        for i in range(4):
            await hub.publish("c", b"%d" % i, "text/plain")
        assert await walk(hub, "c") == [b"2", b"3"]


async def test_delete_tells_subscribers_and_forgets_the_channel():
    async with make_hub() as hub:
        await hub.publish("c", b"x", "text/plain")
        async with hub.subscription(["c", "other"]) as subscription:
            assert await hub.delete("c")
            assert subscription.get_nowait() == Deletion("c")
        assert not await hub.delete("c")
        assert await hub.info("c") is None
        assert not await hub.backend.exists("c")
        with pytest.raises(ChannelNotFound):
            await hub.read_after("c", ORIGIN)


async def test_publish_counts_waiting_subscribers_and_delivers_to_all():
    async with make_hub() as hub:
        await hub.backend.create("c")
        async with hub.subscription(["c"]) as one, hub.subscription(["c"]) as two:
            result = await hub.publish("c", b"x", "text/plain")
            assert result.subscribers == 2
            for subscription in (one, two):
                with anyio.fail_after(1):
                    event = await subscription.get()
                assert isinstance(event, Delivery)
                # The very same message object: encoded once for everyone.
                assert event.message is result.message
        assert hub.local_subscribers("c") == 0
        assert (await hub.publish("c", b"y", "text/plain")).subscribers == 0


async def test_waiting_subscriber_wakes_on_publish():
    async with make_hub() as hub:
        await hub.backend.create("c")
        async with hub.subscription(["c"]) as subscription:
            received = []

            async def wait():
                received.append(await subscription.next_message_after(ORIGIN))

            with anyio.fail_after(2):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(wait)
                    await anyio.wait_all_tasks_blocked()
                    await hub.publish("c", b"x", "text/plain")
            assert received[0].message.body == b"x"


async def test_next_message_after_skips_what_the_client_has_and_times_out():
    async with make_hub() as hub:
        await hub.backend.create("c")
        async with hub.subscription(["c"]) as subscription:
            seen = (await hub.publish("c", b"seen", "text/plain")).message.id
            await hub.publish("c", b"new", "text/plain")
            event = await subscription.next_message_after(seen)
            assert event.message.body == b"new"
            with anyio.fail_after(2):
                assert await subscription.next_message_after(seen, timeout=0.01) is None


async def test_overflow_marks_the_subscription_and_spares_the_others():
    async with make_hub() as hub:
        await hub.backend.create("c")
        async with hub.subscription(["c"], maxlen=2) as slow, hub.subscription(["c"]) as fast:
            for i in range(3):
                await hub.publish("c", b"%d" % i, "text/plain")
            assert slow.overflowed and slow.pending() == 2
            assert not fast.overflowed and fast.pending() == 3
            assert hub.overflows == 1
            assert [(await slow.get()).message.body for _ in range(2)] == [b"0", b"1"]
            # Woken with nothing queued: the caller re-reads the backend's buffer.
            with anyio.fail_after(1):
                assert await slow.get() is None
            # A deletion is never dropped, even from a full queue.
            for i in range(2):
                await hub.publish("c", b"%d" % i, "text/plain")
            await hub.delete("c")
            kinds = [slow.get_nowait().kind for _ in range(3)]
            assert kinds == ["message", "message", "deleted"]


async def test_shutdown_closes_current_and_future_subscriptions():
    async with make_hub() as hub:
        async with hub.subscription(["c"]) as subscription:
            hub.shutdown()
            assert subscription.get_nowait() == Closing()
        async with hub.subscription(["d"]) as late:
            assert late.get_nowait() == Closing()


async def test_add_and_remove_channels_on_an_open_subscription():
    async with make_hub() as hub:
        for channel_id in ("a", "b"):
            await hub.backend.create(channel_id)
        async with hub.subscription(["a"]) as subscription:
            await hub.add_channel(subscription, "b")
            await hub.add_channel(subscription, "b")
            assert (await hub.info("b")).subscribers == 1
            await hub.publish("b", b"x", "text/plain")
            assert subscription.get_nowait().channel_id == "b"
            await hub.remove_channel(subscription, "b")
            assert (await hub.info("b")).subscribers == 0
            assert hub.local_subscribers("b") == 0
            await hub.publish("b", b"y", "text/plain")
            assert subscription.get_nowait() is None
        assert (await hub.info("a")).subscribers == 0


async def test_unsubscribe_twice_counts_once():
    async with make_hub() as hub:
        await hub.backend.create("c")
        one = await hub.subscribe(["c"])
        two = await hub.subscribe(["c"])
        await hub.unsubscribe(one)
        await hub.unsubscribe(one)
        assert (await hub.info("c")).subscribers == 1
        await hub.unsubscribe(two)
        assert (await hub.info("c")).subscribers == 0


# -- bounds: channel_timeout, memory_limit, max_channels ---------------------------------------


async def exists_after(clock, backend, seconds: float, channel_id: str) -> bool:
    """Let ``seconds`` pass, run the sweeper as its task would, and look."""
    clock.now += seconds
    backend.sweep(clock.now)
    return await backend.exists(channel_id)


async def test_an_empty_channel_a_subscriber_made_goes_after_channel_timeout(clock):
    async with make_hub(channel_timeout=60) as hub:
        backend = hub.backend
        await backend.create("anon", publisher=False)
        assert await exists_after(clock, backend, 59, "anon")
        await backend.touch("anon")  # a subscriber asked for it again: the clock restarts
        assert await exists_after(clock, backend, 59, "anon")
        assert not await exists_after(clock, backend, 1, "anon")
        assert backend.memory_used == 0
        assert backend.status()["expired_channels"] == 1


async def test_a_channel_a_publisher_made_stays_unless_told(clock):
    for keep in (True, False):
        async with make_hub(channel_timeout=10, keep_publisher_channels=keep) as hub:
            backend = hub.backend
            await backend.create("put")
            await backend.create("anon", publisher=False)
            await hub.publish("anon", b"x", "text/plain")  # a publisher used it: its now
            clock.now += 3600
            backend.sweep(clock.now)
            assert await backend.exists("put") is keep
            assert await backend.exists("anon")  # it holds a message


async def test_a_subscribed_channel_stays_and_goes_once_left(clock):
    async with make_hub(channel_timeout=10) as hub:
        backend = hub.backend
        await backend.create("anon", publisher=False)
        subscription = await hub.subscribe(["anon"])
        assert await exists_after(clock, backend, 100, "anon")
        await hub.unsubscribe(subscription)
        assert await exists_after(clock, backend, 9, "anon")
        assert not await exists_after(clock, backend, 1, "anon")


async def test_expired_messages_are_freed_and_then_the_channel(clock):
    options = {"message_timeout": 5, "channel_timeout": 10, "keep_publisher_channels": False}
    async with make_hub(**options) as hub:
        backend = hub.backend
        await hub.publish("c", b"x" * 1000, "text/plain")
        assert backend.memory_used > 1000
        clock.now += 5
        backend.sweep(clock.now)  # the message expired: freed without a read
        assert await backend.exists("c")
        assert backend.memory_used == memory_module.channel_cost("c")
        assert not await exists_after(clock, backend, 10, "c")
        assert backend.memory_used == 0


async def test_sweeping_a_backlog_is_bounded_per_step(clock):
    async with make_hub(channel_timeout=1) as hub:
        backend = hub.backend
        for i in range(1200):
            await backend.create(f"c{i}", publisher=False)
        clock.now += 1
        assert backend.sweep(clock.now, limit=500) is True
        assert len(backend.channel_ids()) == 700
        assert backend.sweep(clock.now, limit=500) is True
        assert backend.sweep(clock.now, limit=500) is False
        assert backend.channel_ids() == []


async def test_the_sweeper_runs_on_its_own():
    async with make_hub(channel_timeout=0.05) as hub:
        await hub.backend.create("anon", publisher=False)
        with anyio.fail_after(5):
            while await hub.backend.exists("anon"):
                await anyio.sleep(0.01)


async def test_max_channels_refuses_new_channels_only():
    async with make_hub(max_channels=2) as hub:
        backend = hub.backend
        await backend.create("a")
        await hub.publish("b", b"1", "text/plain")
        with pytest.raises(StoreFull) as refused:
            await backend.create("c", publisher=False)
        assert refused.value.limit == "max_channels"
        with pytest.raises(StoreFull):
            await hub.publish("c", b"1", "text/plain")
        assert not await backend.exists("c")
        await hub.publish("b", b"2", "text/plain")  # existing channels still take messages
        assert await walk(hub, "b") == [b"1", b"2"]
        assert hub.metrics.publishes_refused == 1
        assert backend.status()["refusals"] == {"memory_limit": 0, "max_channels": 2}


async def test_the_hub_is_the_door_to_the_store_and_counts_each_refusal_once():
    """Subscribers open channels and publishers create them through the hub; a refusal
    is counted once, against the side that asked."""
    async with make_hub(max_channels=1) as hub:
        opened = await hub.open_channel("a", True, after=ORIGIN)
        assert opened.created and opened.read.message is None
        with pytest.raises(ChannelNotFound):
            await hub.open_channel("missing", False)
        with pytest.raises(StoreFull):
            await hub.open_channel("b", True)
        assert (hub.metrics.subscribes_refused, hub.metrics.publishes_refused) == (1, 0)
        with pytest.raises(StoreFull):
            await hub.create("b")
        assert (hub.metrics.subscribes_refused, hub.metrics.publishes_refused) == (1, 1)
        assert not await hub.create("a")  # there already: not created, nothing refused
        published = await hub.publish("a", b"1", "text/plain")
        assert published.info == await hub.info("a")
        read = (await hub.open_channel("a", False, after=ORIGIN)).read
        assert read.message.body == b"1"


async def test_memory_limit_refuses_and_keeps_what_was_accepted():
    body = b"x" * 10_000
    limit = 5 * (len(body) + memory_module.MESSAGE_OVERHEAD + 10) + 5000
    async with make_hub(memory_limit=limit) as hub:
        backend = hub.backend
        accepted = refused = 0
        for i in range(10):
            try:
                await hub.publish(f"c{i % 3}", body + b"%d" % i, "text/plain")
                accepted += 1
            except StoreFull as exc:
                assert exc.limit == "memory_limit"
                refused += 1
        assert (accepted, refused) == (5, 5)
        assert backend.memory_used <= limit
        bodies = [b for c in ("c0", "c1", "c2") for b in await walk(hub, c)]
        assert sorted(bodies) == sorted(body + b"%d" % i for i in range(5))
        await hub.delete("c0")
        await hub.publish("c0", body, "text/plain")  # room again
        assert hub.metrics.publishes_refused == 5


async def test_memory_limit_lets_max_messages_rotate():
    body = b"x" * 1000
    cost = len(body) + len("text/plain") + memory_module.MESSAGE_OVERHEAD
    limit = memory_module.channel_cost("c") + 3 * cost
    async with make_hub(memory_limit=limit, max_messages=3) as hub:
        for _ in range(10):  # full at three, and each new one replaces the oldest
            await hub.publish("c", body, "text/plain")
        assert hub.backend.memory_used == limit
        with pytest.raises(StoreFull):
            await hub.publish("c", body + b"more", "text/plain")
        assert len(await walk(hub, "c")) == 3


async def test_an_idle_channel_holds_no_message_list():
    async with make_hub() as hub:
        await hub.backend.create("c")
        assert hub.backend._channels["c"].messages == ()


async def test_one_subscriber_then_two_then_one_again():
    """The hub keeps a lone subscriber without a dict of its own (224 bytes an idle channel
    saves); the second one, and the way back, must change nothing anyone sees."""
    async with make_hub() as hub:
        await hub.backend.create("c")
        first = await hub.subscribe(["c"])
        assert type(hub._subscriptions["c"]) is not dict
        assert (await hub.publish("c", b"1", "text/plain")).subscribers == 1
        second = await hub.subscribe(["c", "d"])
        assert hub.local_subscribers("c") == 2 and hub.local_totals() == (2, 3)
        await hub.publish("c", b"2", "text/plain")
        await hub.unsubscribe(first)
        assert type(hub._subscriptions["c"]) is not dict
        await hub.publish("c", b"3", "text/plain")
        assert [e.message.body for e in first.take()] == [b"1", b"2"]
        assert [e.message.body for e in second.take()] == [b"2", b"3"]
        await hub.delete("c")
        assert [e.kind for e in second.take()] == ["deleted"]
        await hub.unsubscribe(second)
        await hub.unsubscribe(second)
        assert hub.local_totals() == (0, 0)
