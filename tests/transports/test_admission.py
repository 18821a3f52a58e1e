"""The admission step itself (pushserver.transports.admission), in process on a memory store:
each kind of refusal, the order of the steps, and how the WebSocket transport renders them.
What each transport answers end to end is in the transport suites beside this one."""

import json

import pytest

from pushserver.authorize import create_authorizer
from pushserver.backends import MemoryBackend
from pushserver.config import load
from pushserver.exceptions import ChannelNotFound, StoreFull
from pushserver.http import Request
from pushserver.hub import Hub
from pushserver.transports.admission import (
    Admission,
    Admitter,
    Refusal,
    RefusalKind,
    store_refusal,
)
from pushserver.transports.websocket import CLOSE_CODES, refusal_frame

pytestmark = pytest.mark.anyio

HOOK = f"{__name__}.hook"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request):
    return request.param


async def hook(request, channel_id):
    """A ``can_subscribe`` hook: ``private`` is refused, ``broken`` fails, the rest pass."""
    if channel_id == "broken":
        raise RuntimeError("a bug in the hook")
    return channel_id != "private"


def verify(channel_id, signature):
    """The signed location's verifier: a channel's signature is ``good-<channel id>``."""
    return None if signature == f"good-{channel_id}" else "bad signature"


def admitter(hub, **options):
    raw = {"locations": [{"type": "subscriber", "prefix": "/s/", **options}]}
    location = load(raw).locations[0]
    return Admitter(location, hub, create_authorizer(location, None, verify))


def request(query=b""):
    return Request({"type": "http", "method": "GET", "headers": [], "query_string": query})


async def test_an_admission_holds_its_channels_open_and_marked_requested():
    async with Hub(MemoryBackend()) as hub:
        await hub.publish("old", b"x", "text/plain")
        answer = await admitter(hub, create_on_get=True).admit(request(), ["old", "new"])
        assert isinstance(answer, Admission)
        assert answer.channels == ["old", "new"] and answer.tokens == []
        for channel_id in ("old", "new"):
            info = await hub.info(channel_id)
            assert info is not None and info.requested_seconds_ago() >= 0


async def test_a_channel_that_does_not_exist_is_not_found():
    async with Hub(MemoryBackend()) as hub:
        await hub.publish("here", b"x", "text/plain")
        answer = await admitter(hub).admit(request(), ["here", "missing"])
        assert answer == Refusal(RefusalKind.NOT_FOUND, "no such channel: missing")
        assert not await hub.backend.exists("missing")


async def test_a_channel_the_store_has_no_room_for_is_store_full():
    async with Hub(MemoryBackend(max_channels=1)) as hub:
        await hub.publish("one", b"x", "text/plain")
        answer = await admitter(hub, create_on_get=True).admit(request(), ["two"])
        assert isinstance(answer, Refusal) and answer.kind is RefusalKind.STORE_FULL
        assert answer.reason.startswith("the channel store is full (max_channels)")
        assert hub.metrics.subscribes_refused == 1
        assert not await hub.backend.exists("two")


async def test_a_channel_at_max_subscribers_refuses_a_subscriber_that_would_hold_it():
    async with Hub(MemoryBackend()) as hub:
        await hub.publish("c", b"x", "text/plain")
        gate = admitter(hub, create_on_get=True, max_subscribers=1)
        full = Refusal(
            RefusalKind.TOO_MANY_SUBSCRIBERS, "channel c has its maximum of 1 subscribers"
        )
        async with hub.subscription(["c"]):
            assert await gate.admit(request(), ["a", "c"]) == full
            # A long poll that may answer at once holds nothing: it asks for room later.
            assert isinstance(await gate.admit(request(), ["c"], hold=False), Admission)
            assert await gate.room(["c"]) == full
        assert isinstance(await gate.admit(request(), ["c"]), Admission)
        assert await gate.room(["c"]) is None


async def test_signatures_come_from_the_query_or_from_the_caller():
    async with Hub(MemoryBackend()) as hub:
        gate = admitter(hub, create_on_get=True, signed=True)
        assert await gate.admit(request(), ["c"]) == Refusal(
            RefusalKind.FORBIDDEN, "a signed URL is needed here (the 'sig' parameter)"
        )
        assert await gate.admit(request(b"sig=forged"), ["c"]) == Refusal(
            RefusalKind.FORBIDDEN, "c: bad signature"
        )
        # A refused subscriber learns nothing of the store, and creates nothing in it.
        assert not await hub.backend.exists("c")
        assert isinstance(await gate.admit(request(b"sig=good-c"), ["c"]), Admission)
        # A WebSocket command's own signature, not the handshake URL's.
        assert isinstance(await gate.admit(request(), ["d"], signatures="good-d"), Admission)
        refused = await gate.admit(request(b"sig=good-e"), ["e"], signatures=None)
        assert isinstance(refused, Refusal) and refused.kind is RefusalKind.FORBIDDEN


async def test_an_authorizer_that_fails_is_unavailable_and_one_that_says_no_forbidden():
    async with Hub(MemoryBackend()) as hub:
        gate = admitter(hub, create_on_get=True, can_subscribe=HOOK)
        assert await gate.admit(request(), ["private"]) == Refusal(
            RefusalKind.FORBIDDEN, "not allowed to subscribe to private"
        )
        assert await gate.admit(request(), ["broken"]) == Refusal(
            RefusalKind.UNAVAILABLE, "the authorizer failed"
        )
        assert not await hub.backend.exists("private")
        assert not await hub.backend.exists("broken")
        assert isinstance(await gate.admit(request(), ["public"]), Admission)


def test_the_store_answering_after_the_admission_means_the_same_refusals():
    assert store_refusal(ChannelNotFound("gone")) == Refusal(
        RefusalKind.NOT_FOUND, "no such channel: gone"
    )
    full = StoreFull("memory_limit", "1 KiB")
    assert store_refusal(full) == Refusal(RefusalKind.STORE_FULL, str(full))


@pytest.mark.parametrize(
    ("refusal", "code", "frame"),
    [
        (Refusal(RefusalKind.BAD_REQUEST, "too many"), 4400, {"error": "too many"}),
        (Refusal(RefusalKind.FORBIDDEN, "no"), 4403, {"error": "no", "status": 403}),
        (Refusal(RefusalKind.UNAVAILABLE, "later"), 1013, {"error": "later", "status": 503}),
        (Refusal(RefusalKind.NOT_FOUND, "no such channel: c"), 4404, {"error": "no such channel"}),
        (
            Refusal(RefusalKind.STORE_FULL, "the channel store is full (max_channels): 1"),
            4507,
            {"error": "the channel store is full", "status": 507},
        ),
        (
            Refusal(RefusalKind.TOO_MANY_SUBSCRIBERS, "at its maximum"),
            4403,
            {"error": "at its maximum"},
        ),
    ],
)
def test_websocket_renders_each_refusal_as_a_close_code_or_an_error_frame(refusal, code, frame):
    assert CLOSE_CODES[refusal.kind] == code
    sent = refusal_frame(refusal, "c")
    assert json.loads(sent["text"]) == {"type": "error", **frame, "channel": "c"}
