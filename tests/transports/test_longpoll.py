"""Long-poll and interval-poll subscribers against a real runpushserver."""

import email.utils
import itertools
import uuid
from pathlib import Path

import anyio
import httpx
import pytest

from tests.conftest import about_transports
from tests.project.helpers import (
    CORS_ORIGIN,
    DEFAULT_CORS,
    FULL_CONFIG,
    SERVER_HEADER,
    channel_info,
    path,
    position,
    wait_for_info,
    wait_for_subscribers,
)

pytestmark = [pytest.mark.anyio, about_transports("longpoll")]

ROOT = Path(__file__).resolve().parent.parent.parent
EPOCH = "Thu, 1 Jan 1970 00:00:00 GMT"


CONFIG = FULL_CONFIG
CLIENT_TIMEOUT = 20


@pytest.fixture
def channel():
    return f"sub-{uuid.uuid4().hex}"


def assert_cors(response, expected=DEFAULT_CORS):
    for name, value in expected.items():
        assert response.headers[name] == value, name


async def publish(client, channel, body, prefix="/publisher/", content_type="text/plain"):
    response = await client.post(
        path(prefix, channel), content=body, headers={"content-type": content_type}
    )
    assert response.status_code in (201, 202), response.text
    return response


# -- one message -------------------------------------------------------------------------


async def test_unknown_channel_is_404_with_cors(client, channel):
    response = await client.get(path("/subscriber/", channel))
    assert response.status_code == 404
    assert response.text == "404 Not Found: no such channel\n"
    assert response.headers["server"] == SERVER_HEADER
    assert_cors(response)


async def test_200_headers(client, channel):
    await publish(client, channel, b'{"type": "x"}', content_type="application/json")
    response = await client.get(path("/subscriber/", channel))
    assert response.status_code == 200
    assert response.content == b'{"type": "x"}'
    headers = response.headers
    assert headers["etag"] == "0"  # bare integer, first message of its second
    assert headers["cache-control"] == "etag=0"
    assert headers["vary"] == "If-Modified-Since, If-None-Match"
    assert headers["content-type"] == "application/json"
    assert headers["content-length"] == "13"
    assert headers["server"] == SERVER_HEADER
    assert_cors(response)
    # Last-Modified is an RFC 1123 GMT date of the publish second.
    assert headers["last-modified"].endswith(" GMT")
    published = email.utils.parsedate_to_datetime(headers["last-modified"]).timestamp()
    info = await channel_info(client, path("/publisher/", channel))
    assert info["last_message_id"] == f"{int(published)}:0"


async def test_no_headers_or_the_js_clients_first_headers_mean_the_oldest_message(client, channel):
    for body in (b"first", b"second"):
        await publish(client, channel, body)
    for headers in ({}, {"if-modified-since": EPOCH, "if-none-match": "0"}):
        response = await client.get(path("/subscriber/", channel), headers=headers)
        assert response.content == b"first"


async def test_selection_is_the_first_message_strictly_newer(client, channel):
    await publish(client, channel, b"a")
    first = await client.get(path("/subscriber/", channel))
    await publish(client, channel, b"b")
    second = await client.get(path("/subscriber/", channel), headers=position(first))
    assert second.content == b"b"
    # The same position again gives the same answer: the walk is repeatable.
    again = await client.get(path("/subscriber/", channel), headers=position(first))
    assert again.content == b"b"
    assert (again.headers["last-modified"], again.headers["etag"]) == (
        second.headers["last-modified"],
        second.headers["etag"],
    )


async def test_query_string_is_ignored(client, channel):
    await publish(client, channel, b"x")
    response = await client.get(path("/subscriber/", channel) + "?_=1795472455123")
    assert (response.status_code, response.content) == (200, b"x")


async def test_create_on_get_then_long_poll_until_published(client, channel):
    async with anyio.create_task_group() as tg:
        got = {}

        async def subscribe():
            got["response"] = await client.get(path("/lazy/", channel))

        tg.start_soon(subscribe)
        await wait_for_subscribers(client, path("/publisher/", channel), 1)
        assert (await publish(client, channel, b"late")).status_code == 201
    response = got["response"]
    assert (response.status_code, response.content) == (200, b"late")
    assert response.headers["etag"] == "0"
    assert_cors(response)
    assert (await channel_info(client, path("/publisher/", channel)))["subscribers"] == 0


async def test_long_poll_waits_for_the_next_message_after_its_position(client, channel):
    await publish(client, channel, b"old")
    old = await client.get(path("/subscriber/", channel))
    async with anyio.create_task_group() as tg:
        got = {}

        async def subscribe():
            got["response"] = await client.get(path("/subscriber/", channel), headers=position(old))

        tg.start_soon(subscribe)
        await wait_for_subscribers(client, path("/publisher/", channel), 1)
        await publish(client, channel, b"new")
    assert got["response"].content == b"new"


async def test_disconnected_subscriber_is_no_longer_counted(server, client, channel):
    await client.put(path("/publisher/", channel))
    async with httpx.AsyncClient(base_url=server.url) as other, anyio.create_task_group() as tg:
        tg.start_soon(other.get, path("/subscriber/", channel))
        await wait_for_subscribers(client, path("/publisher/", channel), 1)
        tg.cancel_scope.cancel()
    await wait_for_subscribers(client, path("/publisher/", channel), 0)
    assert (await publish(client, channel, b"x")).status_code == 202


# -- walking -----------------------------------------------------------------------------


async def test_walking_1000_buffered_messages_loses_and_repeats_none(client, channel):
    count = 1000
    for i in range(count):
        await publish(client, channel, b"%d" % i)
    received, etags = [], []
    headers = {}
    with anyio.fail_after(30):
        while len(received) < count:
            response = await client.get(path("/subscriber/", channel), headers=headers)
            assert response.status_code == 200
            received.append(int(response.content))
            etags.append((response.headers["last-modified"], int(response.headers["etag"])))
            headers = position(response)
    assert received == list(range(count))
    # Etags count from 0 within each second and restart at 0 in the next.
    for (previous_date, previous_tag), (date, tag) in itertools.pairwise(etags):
        assert tag == (previous_tag + 1 if date == previous_date else 0)
    assert etags[0][1] == 0


async def test_live_walk_of_1000_quickly_published_messages(client, channel):
    """A long-poll client chasing a fast publisher sees every message once, in order."""
    count = 1000
    await client.put(path("/publisher/", channel))
    received = []

    async def walk():
        headers = {"if-modified-since": EPOCH, "if-none-match": "0"}
        while len(received) < count:
            response = await client.get(path("/subscriber/", channel), headers=headers)
            assert response.status_code == 200
            received.append(int(response.content))
            headers = position(response)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(walk)
            for i in range(count):
                await publish(client, channel, b"%d" % i)
    assert received == list(range(count))


# -- broadcast and deletion --------------------------------------------------------------


async def test_broadcast_reaches_200_waiting_subscribers(client, channel):
    waiting = 200
    await client.put(path("/publisher/", channel))
    responses = []

    async def subscribe():
        responses.append(await client.get(path("/subscriber/", channel)))

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for _ in range(waiting):
                tg.start_soon(subscribe)
            await wait_for_subscribers(client, path("/publisher/", channel), waiting, timeout=30)
            response = await publish(client, channel, b"to everyone")
            assert response.status_code == 201
    assert len(responses) == waiting
    assert {(r.status_code, r.content, r.headers["etag"]) for r in responses} == {
        (200, b"to everyone", "0")
    }
    assert (await channel_info(client, path("/publisher/", channel)))["subscribers"] == 0


async def test_delete_wakes_waiters_with_410(client, channel):
    await client.put(path("/publisher/", channel))
    responses = []

    async def subscribe(prefix):
        responses.append(await client.get(path(prefix, channel)))

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(subscribe, "/subscriber/")
        await wait_for_subscribers(client, path("/publisher/", channel), 5)
        assert (await client.delete(path("/publisher/", channel))).status_code == 200
    assert {r.status_code for r in responses} == {410}
    for response in responses:
        assert response.text == "410 Gone: the channel was deleted\n"
        assert_cors(response)


# -- interval polling and the long-poll timeout ------------------------------------------


async def test_interval_polling_answers_304_when_nothing_is_newer(client, channel):
    await client.put(path("/publisher/", channel))
    response = await client.get(path("/interval/", channel))
    assert response.status_code == 304  # the original answered 500
    assert response.content == b""
    assert_cors(response)
    assert response.headers["etag"] == "-1"
    assert response.headers["last-modified"] == "Thu, 01 Jan 1970 00:00:00 GMT"
    await publish(client, channel, b"x")
    response = await client.get(path("/interval/", channel))
    assert (response.status_code, response.content) == (200, b"x")
    again = await client.get(path("/interval/", channel), headers=position(response))
    assert again.status_code == 304
    # The 304 echoes the client's own position, so echoing it back changes nothing.
    assert position(again) == position(response)


async def test_interval_polling_unknown_channel_is_404(client, channel):
    assert (await client.get(path("/interval/", channel))).status_code == 404


async def test_long_poll_timeout_answers_304_with_the_clients_position(client, channel):
    await publish(client, channel, b"x")
    first = await client.get(path("/timeout/", channel))
    with anyio.fail_after(5):
        response = await client.get(path("/timeout/", channel), headers=position(first))
    assert response.status_code == 304
    assert position(response) == position(first)
    assert_cors(response)
    # The client re-polls with those headers and gets the next message.
    async with anyio.create_task_group() as tg:
        got = {}

        async def subscribe():
            got["response"] = await client.get(
                path("/timeout/", channel), headers=position(response)
            )

        tg.start_soon(subscribe)
        await wait_for_subscribers(client, path("/publisher/", channel), 1)
        await publish(client, channel, b"y")
    assert got["response"].content == b"y"


async def test_without_a_timeout_a_long_poll_is_held(client, channel):
    await client.put(path("/publisher/", channel))
    with anyio.move_on_after(1.0) as scope:
        await client.get(path("/subscriber/", channel))
    assert scope.cancelled_caught


# -- retention ---------------------------------------------------------------------------


async def test_buffer_limit_keeps_the_newest_and_skips_the_gap(client, channel):
    publisher = "/small-publisher/"
    await publish(client, channel, b"0", prefix=publisher)
    first = await client.get(path("/small-subscriber/", channel))
    for i in range(1, 5):
        await publish(client, channel, b"%d" % i, prefix=publisher)
    assert (await channel_info(client, path(publisher, channel)))["messages"] == 3
    response = await client.get(path("/small-subscriber/", channel))
    assert response.content == b"2"
    # A client behind the window resumes at the oldest retained message.
    response = await client.get(path("/small-subscriber/", channel), headers=position(first))
    assert response.content == b"2"


async def test_expired_messages_are_dropped_down_to_min_messages(client, channel):
    publisher = "/expiring-publisher/"
    for i in range(3):
        await publish(client, channel, b"%d" % i, prefix=publisher)
    # message_timeout is 1 s and min_messages 1: wait for the server to say so.
    await wait_for_info(client, path(publisher, channel), "messages", 1, timeout=5)
    # A new client gets the newest message: the older two expired.
    response = await client.get(path("/expiring-subscriber/", channel))
    assert response.content == b"2"
    # The one kept by min_messages does not expire however old it gets.
    assert (await channel_info(client, path(publisher, channel)))["messages"] == 1


# -- CORS --------------------------------------------------------------------------------


async def test_options_preflight(client, channel):
    response = await client.options(
        path("/subscriber/", channel),
        headers={
            "origin": "http://elsewhere.example",
            "access-control-request-method": "GET",
            "access-control-request-headers": "if-modified-since, if-none-match",
        },
    )
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["access-control-allow-methods"] == "GET, OPTIONS"
    assert response.headers["allow"] == "GET, OPTIONS"
    assert_cors(response)


async def test_exact_origin_with_credentials_on_every_response(client, channel):
    expected = {
        **DEFAULT_CORS,
        "access-control-allow-origin": CORS_ORIGIN,
        "access-control-allow-credentials": "true",
    }
    options = await client.options(path("/credentials/", channel))
    assert_cors(options, expected)
    await publish(client, channel, b"x")
    ok = await client.get(path("/credentials/", channel), headers={"origin": CORS_ORIGIN})
    assert ok.status_code == 200
    assert_cors(ok, expected)
    bad = await client.get(path("/credentials/", channel), headers={"if-none-match": '"0"'})
    assert bad.status_code == 400
    assert_cors(bad, expected)


async def test_one_of_several_allowed_origins_is_echoed(client, channel):
    await publish(client, channel, b"x")
    for origin in ("http://a.example", "http://b.example"):
        response = await client.get(path("/origins/", channel), headers={"origin": origin})
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == origin
        assert response.headers["access-control-allow-credentials"] == "true"
        assert "Origin" in response.headers.get_list("vary")
        preflight = await client.options(path("/origins/", channel), headers={"origin": origin})
        assert preflight.headers["access-control-allow-origin"] == origin
    other = await client.get(path("/origins/", channel), headers={"origin": "http://c.example"})
    assert other.status_code == 200
    assert "access-control-allow-origin" not in other.headers  # its page cannot read it
    assert "Origin" in other.headers.get_list("vary")


# -- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["/subscriber/", "/interval/"])
@pytest.mark.parametrize(
    "headers",
    [
        {"if-none-match": '"0"'},
        {"if-none-match": "abc"},
        {"if-modified-since": "yesterday"},
        {"if-modified-since": EPOCH, "if-none-match": 'W/"1"'},
    ],
)
async def test_unparseable_position_headers_are_400(client, channel, prefix, headers):
    await publish(client, channel, b"x")
    response = await client.get(path(prefix, channel), headers=headers)
    assert response.status_code == 400
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.text.startswith("400 Bad Request: If-")
    assert_cors(response)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "HEAD"])
async def test_other_methods_are_405(client, channel, method):
    await publish(client, channel, b"x")
    response = await client.request(method, path("/subscriber/", channel))
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, OPTIONS"
    assert_cors(response)
    # Nothing was published or deleted.
    assert (await channel_info(client, path("/publisher/", channel)))["messages"] == 1
