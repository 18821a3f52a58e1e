"""pushserver.utils.updates: URL helpers, send_update / asend_update against real servers."""

import datetime
import decimal
import json
import socket
import time

import anyio
import httpx
import pytest
from django.test import override_settings
from django.utils.translation import gettext_lazy

from pushserver.running import registry
from pushserver.testing import free_port
from pushserver.utils import updates
from pushserver.utils.updates import SendUpdateError, UpdateResponse
from tests.project.helpers import wait_for_subscribers

LOCATIONS = [
    {"type": "publisher", "prefix": "/publisher/"},
    {"type": "subscriber", "prefix": "/subscriber/", "create_on_get": True},
]


def client_settings(host, **extra):
    """PUSH_SERVER as a Django process other than the push server sees it."""
    return {
        "locations": LOCATIONS,
        "publisher_host": {"location": host},
        "subscriber_host": {"location": host},
        **extra,
    }


# -- URLs ---------------------------------------------------------------------------------------


@override_settings(PUSH_SERVER=client_settings("push.example:8001"))
def test_urls_quote_the_channel_id():
    assert (
        updates.publisher_url("a b/c?d#é")
        == "http://push.example:8001/publisher/a%20b%2Fc%3Fd%23%C3%A9"
    )
    assert updates.subscriber_url("news") == "http://push.example:8001/subscriber/news"


@override_settings(
    PUSH_SERVER={
        "locations": [
            {"type": "subscriber", "url": r"^/updates/([^/]+)$"},
            {"type": "publisher", "url": r"/send-update/(?P<id>[^/]+)"},
            {"type": "publisher", "prefix": "/second/"},
            {"type": "subscriber", "prefix": "/second-sub/"},
        ],
        "publisher_host": {"location": "127.0.0.1:8001", "secure": True},
        "subscriber_host": "push.example",  # the 0.2.3-0.2.6 plain-string form
    }
)
def test_urls_reverse_the_first_location_of_each_type():
    assert updates.publisher_url("a/b") == "https://127.0.0.1:8001/send-update/a%2Fb"
    assert updates.subscriber_url("x") == "http://push.example/updates/x"


def test_urls_fall_back_to_current_host_then_address_and_port(monkeypatch):
    with (
        override_settings(PUSH_SERVER={"locations": LOCATIONS}),
        pytest.raises(ValueError, match="publisher_host"),
    ):
        updates.publisher_url("x")
        monkeypatch.setattr(registry, "host", "0.0.0.0:8005")
        # A bind-all address is not where to connect.
        assert updates.publisher_url("x") == "http://127.0.0.1:8005/publisher/x"
    monkeypatch.setattr(registry, "host", None)
    with override_settings(PUSH_SERVER={"locations": LOCATIONS, "address": "::1", "port": 8009}):
        assert updates.subscriber_url("x") == "http://[::1]:8009/subscriber/x"
    with override_settings(
        PUSH_SERVER={"locations": LOCATIONS, "address": "push.example", "port": 80}
    ):
        assert updates.subscriber_url("x") == "http://push.example/subscriber/x"


def test_url_errors_say_what_to_fix():
    host = {"location": "h:1"}
    with (
        override_settings(PUSH_SERVER={"locations": LOCATIONS[1:], "publisher_host": host}),
        pytest.raises(ValueError, match="no publisher location"),
    ):
        updates.publisher_url("x")
    bad = [{"type": "subscriber", "url": r"/u/(a|b)"}]
    with (
        override_settings(PUSH_SERVER={"locations": bad, "subscriber_host": host}),
        pytest.raises(ValueError, match="does not fit"),
    ):
        updates.subscriber_url("c")
    optional = [{"type": "subscriber", "url": r"/u/(x)?"}]
    with (
        override_settings(PUSH_SERVER={"locations": optional, "subscriber_host": host}),
        pytest.raises(ValueError, match="Non-reversible"),
    ):
        updates.subscriber_url("x")


def test_url_error_escapes_before_any_signal(recorded):
    with override_settings(PUSH_SERVER={"locations": LOCATIONS}), pytest.raises(ValueError):
        updates.send_update("x", {})
    assert recorded == []


# -- send_update against a real push server ---------------------------------------------------


def test_send_update_round_trip(push_server, recorded):
    data = {
        "type": "answer",
        "when": datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.UTC),
        "day": datetime.date(2024, 5, 6),
        "amount": decimal.Decimal("4.20"),
        "label": gettext_lazy("Password"),
        "text": "čšž €",
    }
    with override_settings(PUSH_SERVER=client_settings(push_server.host)):
        assert updates.send_update("room č/1", data) is None
        url = updates.subscriber_url("room č/1")
    response = httpx.get(url, timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert response.json() == {
        "type": "answer",
        "when": "2024-05-06T07:08:09Z",
        "day": "2024-05-06",
        "amount": "4.20",
        "label": "Password",
        "text": "čšž €",
    }
    (pre, pre_sender, pre_kwargs), (post, post_sender, post_kwargs) = recorded
    assert (pre, post) == ("pre", "post")
    assert pre_sender is post_sender is updates
    assert pre_kwargs["channel_id"] == post_kwargs["channel_id"] == "room č/1"
    assert pre_kwargs["data"] is data and pre_kwargs["already_serialized"] is False
    assert (
        pre_kwargs["request"].full_url == f"http://{push_server.host}/publisher/room%20%C4%8D%2F1"
    )
    assert post_kwargs["request"] is pre_kwargs["request"]
    result = post_kwargs["response"]
    assert isinstance(result, UpdateResponse)
    assert (result.status, result.getcode(), result.in_process) == (202, 202, False)


def test_send_update_already_serialized(push_server):
    with override_settings(PUSH_SERVER=client_settings(push_server.host)):
        updates.send_update("raw", '{"type": "s", "v": "č"}', already_serialized=True)
        updates.send_update("raw", b'{"type": "b"}', already_serialized=True)
        url = updates.subscriber_url("raw")
    with httpx.Client(timeout=5) as client:
        first = client.get(url)
        assert first.json() == {"type": "s", "v": "č"}
        headers = {
            "if-modified-since": first.headers["last-modified"],
            "if-none-match": first.headers["etag"],
        }
        assert client.get(url, headers=headers).json() == {"type": "b"}


def test_send_update_server_down(recorded):
    host = f"127.0.0.1:{free_port()}"
    with (
        override_settings(PUSH_SERVER=client_settings(host)),
        pytest.raises(SendUpdateError) as info,
    ):
        updates.send_update("x", {"type": "t"})
    error = info.value
    assert error.url == f"http://{host}/publisher/x" and error.status is None
    assert error.url in str(error) and "refused" in str(error).lower()
    assert [kind for kind, _, _ in recorded] == ["pre", "post"]
    assert recorded[1][2]["response"] is error


def test_send_update_http_error_names_url_and_status(push_server_factory):
    server = push_server_factory(
        {
            "locations": [
                {"type": "publisher", "prefix": "/publisher/", "create_on_post": False},
                LOCATIONS[1],
            ]
        }
    )
    with (
        override_settings(PUSH_SERVER=client_settings(server.host)),
        pytest.raises(SendUpdateError) as info,
    ):
        updates.send_update("missing", {"type": "t"})
    assert info.value.status == 404
    assert "404" in str(info.value) and f"http://{server.host}/publisher/missing" in str(info.value)


def test_send_update_does_not_follow_redirects(push_server_factory):
    server = push_server_factory(
        {"locations": LOCATIONS}, "--allrequests", "--forcehost", "elsewhere.test"
    )
    with (
        override_settings(PUSH_SERVER=client_settings(server.host)),
        pytest.raises(SendUpdateError) as info,
    ):
        updates.send_update("x", {"type": "t"})
    assert info.value.status == 301
    assert "elsewhere.test" in str(info.value)


def test_send_update_times_out():
    # A listening socket that never accepts: the kernel completes the handshake and
    # buffers the request, and no answer ever comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        host = f"127.0.0.1:{silent.getsockname()[1]}"
        with override_settings(PUSH_SERVER=client_settings(host, publish_timeout=0.3)):
            started = time.monotonic()
            with pytest.raises(SendUpdateError, match=r"no answer within 0\.3 s") as info:
                updates.send_update("x", {"type": "t"})
            elapsed = time.monotonic() - started
    assert info.value.status is None
    assert 0.25 <= elapsed < 3


def test_ignore_errors_argument_and_setting(recorded):
    host = f"127.0.0.1:{free_port()}"
    with override_settings(PUSH_SERVER=client_settings(host)):
        assert updates.send_update("x", {"type": "t"}, ignore_errors=True) is None
        with override_settings(PUSH_SERVER_IGNORE_ERRORS=True):
            assert updates.send_update("x", {"type": "t"}) is None
    posts = [kwargs["response"] for kind, _, kwargs in recorded if kind == "post"]
    assert len(posts) == 2 and all(isinstance(r, SendUpdateError) for r in posts)


# -- asend_update -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_asend_update_round_trip_and_error(push_server, recorded):
    with override_settings(PUSH_SERVER=client_settings(push_server.host)):
        await updates.asend_update("async", {"type": "a", "n": decimal.Decimal("1.5")})
        url = updates.subscriber_url("async")
    async with httpx.AsyncClient(timeout=5) as client:
        with anyio.fail_after(5):
            response = await client.get(url)
    assert response.json() == {"type": "a", "n": "1.5"}
    assert recorded[-1][2]["response"].status == 202

    with (
        override_settings(PUSH_SERVER=client_settings(f"127.0.0.1:{free_port()}")),
        pytest.raises(SendUpdateError),
    ):
        await updates.asend_update("async", {})
        assert await updates.asend_update("async", {}, ignore_errors=True) is None


# -- in-process publishing under --allrequests --------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("view", ["send-update", "asend-update"])
async def test_views_publish_in_process_under_allrequests(push_server_factory, view):
    server = push_server_factory({"locations": LOCATIONS}, "--allrequests")
    results = {}
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:

        async def subscribe(name):
            results[name] = await client.get("/subscriber/room%2F1")

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(subscribe, "first")
                tg.start_soon(subscribe, "second")
                await wait_for_subscribers(client, "/publisher/room%2F1", 2)
                answer = await client.get(f"/{view}/room%2F1")
            # The server still serves after publishing to itself.
            again = await client.get(f"/{view}/room%2F1")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"status": 201, "in_process": True}
    assert again.json() == {"status": 202, "in_process": True}
    kind = "from-view" if view == "send-update" else "from-async-view"
    for name in ("first", "second"):
        assert results[name].status_code == 200
        assert results[name].json() == {"type": kind, "channel": "room/1"}
    assert '"POST /publisher/' not in server.log  # no HTTP hop


@pytest.mark.anyio
@pytest.mark.parametrize("view", ["send-update", "asend-update"])
async def test_in_process_publish_keeps_the_idempotency_key(push_server_factory, view):
    """The key travels in the Payload to the in-process hub too: a retry from a view is
    answered as the first (replayed) and stored once. (Over HTTP and publish_via='backend':
    tests/backends/test_redis_cluster.py.)"""
    server = push_server_factory({"locations": LOCATIONS}, "--allrequests")
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        with anyio.fail_after(10):
            first = await client.get(f"/{view}/keyed", params={"key": "once"})
            again = await client.get(f"/{view}/keyed", params={"key": "once"})
            other = await client.get(f"/{view}/keyed", params={"key": "twice"})
            info = await client.get("/publisher/keyed", headers={"accept": "application/json"})
    assert first.json() == {"status": 202, "in_process": True, "replayed": False}
    assert again.json() == {"status": 202, "in_process": True, "replayed": True}
    assert other.json() == {"status": 202, "in_process": True, "replayed": False}
    assert info.json()["messages"] == 2
    assert '"POST /publisher/' not in server.log  # no HTTP hop


@pytest.mark.anyio
async def test_in_process_publish_honours_create_on_post(push_server_factory):
    locations = [
        {"type": "publisher", "prefix": "/publisher/", "create_on_post": False},
        LOCATIONS[1],
    ]
    server = push_server_factory({"locations": locations}, "--allrequests")
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        with anyio.fail_after(10):
            refused = await client.get("/send-update/nope")
            assert (await client.put("/publisher/nope")).status_code == 200
            accepted = await client.get("/send-update/nope")
            message = await client.get("/subscriber/nope")
    assert refused.status_code == 502
    assert refused.json()["status"] == 404
    assert "/publisher/nope answered 404" in refused.json()["error"]
    assert accepted.json() == {"status": 202, "in_process": True}
    assert json.loads(message.content) == {"type": "from-view", "channel": "nope"}
