"""CORS against a real runpushserver: '*', one origin and a list of origins; the preflight;
credentials; the headers on every response, errors included, on every HTTP transport and
on publisher locations that ask for CORS. And the settings' checks."""

from __future__ import annotations

import anyio
import httpx
import pytest

from pushserver.config import parse
from tests.project.helpers import path, wait_for_subscribers
from tests.transports.streams import closed_with, connect, event_stream, publish, ws_url

A = "http://a.example"
B = "http://b.example"
OTHER = "http://evil.example"
MAX_AGE = 600

#: A location allowing A and B, with credentials and its own max-age.
LIST = {"allow_origin": [A, B], "allow_credentials": True, "cors_max_age": MAX_AGE}

CONFIG = {
    "max_channel_id_length": 32,
    "locations": [
        {"type": "publisher", "prefix": "/publisher/"},
        {
            "type": "publisher",
            "prefix": "/cors-publisher/",
            **LIST,
            "max_message_size": 16,
            "create_on_post": False,
        },
        {"type": "subscriber", "prefix": "/any/", "create_on_get": True},
        {
            "type": "subscriber",
            "prefix": "/one/",
            "create_on_get": True,
            "allow_origin": A,
            "allow_credentials": True,
        },
        {"type": "subscriber", "prefix": "/list/", "create_on_get": True, **LIST},
        {
            "type": "subscriber",
            "prefix": "/list-strict/",
            **LIST,
            "allow_origin": f"{A} {B}",  # the original's space-separated form
            "max_subscribers": 1,
        },
        {"type": "subscriber", "prefix": "/list-sse-only/", **LIST, "transports": ["eventsource"]},
    ],
}

pytestmark = pytest.mark.anyio


def allowed(response: httpx.Response) -> str | None:
    return response.headers.get("access-control-allow-origin")


def assert_list_cors(response: httpx.Response, origin: str | None) -> None:
    """The headers of a response from a location allowing [A, B] with credentials."""
    assert allowed(response) == origin
    assert response.headers["access-control-allow-credentials"] == "true"
    assert response.headers["access-control-max-age"] == str(MAX_AGE)
    assert "Origin" in response.headers.get_list("vary")


async def test_wildcard_answers_any_origin(client):
    await publish(client, "w", "x")
    response = await client.get(path("/any/", "w"), headers={"origin": OTHER})
    assert response.status_code == 200
    assert allowed(response) == "*"
    assert response.headers["access-control-allow-credentials"] == "false"
    assert response.headers["access-control-max-age"] == "864000"
    assert "Origin" not in response.headers.get_list("vary")


async def test_one_origin_is_always_named(client):
    await publish(client, "one", "x")
    for origin in (A, OTHER, None):
        headers = {"origin": origin} if origin else {}
        response = await client.get(path("/one/", "one"), headers=headers)
        assert response.status_code == 200
        # The same answer for every request (cacheable); another origin's page is refused
        # by its browser, which compares the origin.
        assert allowed(response) == A
        assert response.headers["access-control-allow-credentials"] == "true"
        assert "Origin" not in response.headers.get_list("vary")


async def test_list_names_only_a_listed_origin(client):
    await publish(client, "list", "x")
    for origin in (A, B):
        response = await client.get(path("/list/", "list"), headers={"origin": origin})
        assert response.status_code == 200
        assert_list_cors(response, origin)
    for headers in ({"origin": OTHER}, {}):
        response = await client.get(path("/list/", "list"), headers=headers)
        assert response.status_code == 200  # served, but no page elsewhere can read it
        assert_list_cors(response, None)


async def test_list_on_an_event_stream(client):
    async with event_stream(client, "/list/sse", origin=B) as stream:
        assert_list_cors(stream.response, B)
    async with event_stream(client, "/list/sse", origin=OTHER) as stream:
        assert_list_cors(stream.response, None)


async def test_preflight(client):
    # Answered whatever the channel id: the request that follows gets the readable 400.
    for channel in ("pre", "x" * 100, "%zz"):
        response = await client.options(
            "/list/" + channel,
            headers={
                "origin": B,
                "access-control-request-method": "GET",
                "access-control-request-headers": "if-modified-since, if-none-match",
            },
        )
        assert response.status_code == 200
        assert response.content == b""
        assert response.headers["access-control-allow-methods"] == "GET, OPTIONS"
        assert "If-None-Match" in response.headers["access-control-allow-headers"]
        assert_list_cors(response, B)
    other = await client.options("/list/pre", headers={"origin": OTHER})
    assert_list_cors(other, None)


@pytest.mark.parametrize(
    ("request_args", "status"),
    [
        ({"url": "/list/x", "headers": {"if-none-match": "abc"}}, 400),
        ({"url": "/list/" + "x" * 40}, 400),
        ({"url": "/list/%zz"}, 400),
        ({"url": "/list-strict/nosuch"}, 404),
        ({"url": "/list-sse-only/x"}, 403),
        ({"url": "/list-sse-only/" + "x" * 40, "headers": {"accept": "text/event-stream"}}, 400),
        ({"url": "/list/x", "method": "POST"}, 405),
    ],
)
async def test_errors_carry_the_headers(client, request_args, status):
    headers = {"origin": B, **request_args.get("headers", {})}
    method = request_args.get("method", "GET")
    response = await client.request(method, request_args["url"], headers=headers)
    assert response.status_code == status, response.text
    assert response.text.startswith(f"{status} ")
    assert_list_cors(response, B)


async def test_full_channel_403_carries_the_headers(client):
    """max_subscribers: the second waiting subscriber is refused, readably."""
    await client.put(path("/publisher/", "full"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(client.get, path("/list-strict/", "full"))
        await wait_for_subscribers(client, path("/publisher/", "full"), 1)
        refused = await client.get(path("/list-strict/", "full"), headers={"origin": A})
        assert refused.status_code == 403
        assert_list_cors(refused, A)
        await publish(client, "full", "done")


async def test_publisher_without_cors_keys_sends_none(client):
    response = await client.put(path("/publisher/", "plain"), headers={"origin": A})
    assert response.status_code == 200
    assert allowed(response) is None
    assert not any(name.startswith("access-control-") for name in response.headers)
    assert (await client.options(path("/publisher/", "plain"))).status_code == 405


async def test_publisher_with_cors_keys(client):
    preflight = await client.options(
        path("/cors-publisher/", "p"),
        headers={
            "origin": A,
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-methods"] == "GET, POST, PUT, DELETE, OPTIONS"
    assert "Content-Type" in preflight.headers["access-control-allow-headers"]
    assert_list_cors(preflight, A)

    created = await client.put(path("/cors-publisher/", "p"), headers={"origin": A})
    assert created.status_code == 200
    assert_list_cors(created, A)
    posted = await client.post(path("/cors-publisher/", "p"), content=b"hi", headers={"origin": B})
    assert posted.status_code == 202
    assert_list_cors(posted, B)
    # Errors too: 413, 404, 400, 405; and no name for an origin outside the list.
    for response, status in [
        (
            await client.post(
                path("/cors-publisher/", "p"), content=b"x" * 17, headers={"origin": B}
            ),
            413,
        ),
        (
            await client.post(
                path("/cors-publisher/", "nosuch"), content=b"x", headers={"origin": B}
            ),
            404,
        ),
        (await client.get("/cors-publisher/" + "x" * 40, headers={"origin": B}), 400),
        (await client.patch(path("/cors-publisher/", "p"), headers={"origin": B}), 405),
    ]:
        assert response.status_code == status, response.text
        assert_list_cors(response, B)
    other = await client.get(path("/cors-publisher/", "p"), headers={"origin": OTHER})
    assert other.status_code == 200
    assert_list_cors(other, None)


async def test_websocket_origin_is_checked_against_the_list(server):
    for origin in (A, B):
        async with connect(ws_url(server, "/list/ws"), origin=origin) as ws:  # type: ignore[arg-type]
            await ws.send('{"ping": 1}')
            assert '"pong"' in await ws.recv()
    async with connect(ws_url(server, "/list/ws"), origin=OTHER) as ws:  # type: ignore[arg-type]
        assert await closed_with(ws) == (4403, "this Origin is not allowed")
    assert "Traceback" not in server.log


# -- the settings ----------------------------------------------------------------------------


def subscriber_problems(**options):
    config, problems = parse({"locations": [{"type": "subscriber", "prefix": "/s/", **options}]})
    return config.locations[0] if config.locations else None, problems


def test_list_forms_are_read():
    for value in ([A, B], (A, B), f"{A} {B}", f"  {A}\t{B} "):
        location, problems = subscriber_problems(allow_origin=value)
        assert problems == []
        assert location.allow_origin == f"{A} {B}"


@pytest.mark.parametrize("value", ["*", ["*"], [A, "*"], f"{A} *"])
def test_wildcard_with_credentials_is_refused(value):
    _, problems = subscriber_problems(allow_origin=value, allow_credentials=True)
    assert "pushserver.E042" in [p.id for p in problems]


def test_wildcard_among_origins_is_a_warning():
    location, problems = subscriber_problems(allow_origin=[A, "*"])
    assert [(p.id, p.level) for p in problems] == [("pushserver.W080", "warning")]
    assert location.allow_origin == f"{A} *"


@pytest.mark.parametrize(
    ("value", "fix"),
    [
        ("https://www.example.com/", "'https://www.example.com'"),
        ("https://www.example.com/app", None),
        ("https://WWW.Example.com", "'https://www.example.com'"),
        ("https://www.example.com:443", "'https://www.example.com'"),
        ("http://www.example.com:80", "'http://www.example.com'"),
        ("www.example.com", None),
        ("null", None),
    ],
)
def test_entry_that_is_not_an_origin(value, fix):
    _, problems = subscriber_problems(allow_origin=[A, value])
    assert [p.id for p in problems] == ["pushserver.E084"]
    assert problems[0].key == "PUSH_SERVER['locations'][0]['allow_origin']"
    assert repr(value) in problems[0].message
    if fix:
        assert fix in problems[0].hint


@pytest.mark.parametrize("value", ["", [], [""], 42, [A, 42], None])
def test_allow_origin_of_the_wrong_type(value):
    _, problems = subscriber_problems(allow_origin=value)
    assert [p.id for p in problems] == ["pushserver.E041"]


def test_no_false_wildcard_error_when_every_origin_is_wrong():
    _, problems = subscriber_problems(allow_origin=["example.com"], allow_credentials=True)
    assert [p.id for p in problems] == ["pushserver.E084"]


@pytest.mark.parametrize("value", [-1, 1.5, "600", True])
def test_bad_cors_max_age(value):
    location, problems = subscriber_problems(cors_max_age=value)
    assert [p.id for p in problems] == ["pushserver.E083"]
    assert location.cors_max_age == 864000


def test_publisher_cors_only_with_a_cors_key():
    config, problems = parse(
        {
            "locations": [
                {"type": "publisher", "prefix": "/p/"},
                {"type": "publisher", "prefix": "/q/", "allow_origin": A},
                {"type": "publisher", "prefix": "/r/", "cors_max_age": 60},
                {"type": "subscriber", "prefix": "/s/"},
            ]
        }
    )
    assert problems == []
    assert [location.cors for location in config.locations] == [False, True, True, True]
