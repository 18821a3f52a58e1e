"""The project's ASGI application (``pushserver.asgi``, tests/project/asgi.py) under other
ASGI servers, each run from its own command line as a process: uvicorn (httptools, uvloop),
daphne (and ``runserver`` with ``daphne`` in INSTALLED_APPS), granian and hypercorn.

For each: the three transports, resuming, passthrough signals dispatched in-process,
``send_update`` from views published in-process, the hostile inputs where servers differ
(each one's answer is the one docs/deployment.md lists), and a graceful stop (SIGTERM)
that loses no acknowledged message (a redis store; the rest is read from another server).
"""

from __future__ import annotations

import signal
import uuid
from functools import partial

import anyio
import anyio.to_thread
import httpx
import pytest

from pushserver import __version__
from pushserver.testing import ASGIServerProcess, free_port
from tests.project.helpers import (
    ROOT,
    Follower,
    PresenceLog,
    assert_still_serving,
    path,
    position,
    wait_for_subscribers,
)
from tests.test_hostile_http import connect, exchange
from tests.test_passthrough import check_presence_loop, site_locations
from tests.transports.streams import connect as ws_connect
from tests.transports.streams import event_stream, longpoll_id, ws_frame, ws_url

pytestmark = pytest.mark.anyio

APP = "tests.project.asgi:application"
TEXT = {"content-type": "text/plain"}

#: name: (command, the output line saying it started, extra environment).
SERVERS = {
    "uvicorn": (
        ["uvicorn", APP, "--host", "{host}", "--port", "{port}", "--http", "httptools",
         "--loop", "uvloop", "--ws", "websockets-sansio", "--no-server-header"],
        r"Uvicorn running on",
        {},
    ),
    "daphne": (
        ["daphne", "-b", "{host}", "-p", "{port}", APP],
        r"Listening on TCP address",
        {},
    ),
    "daphne-runserver": (
        ["django", "runserver", "{host}:{port}", "--noreload", "--skip-checks"],
        r"Starting ASGI/Daphne",
        {"PUSHSERVER_TEST_DAPHNE_RUNSERVER": "1"},
    ),
    "granian": (
        ["granian", "--interface", "asgi", "--host", "{host}", "--port", "{port}",
         "--access-log", APP],
        r"Started worker-1",
        {},
    ),
    "hypercorn": (
        ["hypercorn", "--bind", "{host}:{port}", "--access-logfile", "-", APP],
        r"Running on http",
        {},
    ),
}  # fmt: skip

pytest.importorskip("uvicorn")
pytest.importorskip("daphne")
pytest.importorskip("granian")


def asgi_server(name: str, push_server: dict, env: dict | None = None) -> ASGIServerProcess:
    command, ready, extra = SERVERS[name]
    port = free_port()
    return ASGIServerProcess(
        "tests.project.settings",
        command,
        ready=ready,
        push_server=push_server(port) if callable(push_server) else push_server,
        address=f"127.0.0.1:{port}",
        env={**extra, **(env or {})},
        cwd=str(ROOT),
    )


def module_config(port: int) -> dict:
    locations = site_locations(f"http://127.0.0.1:{port}/passthrough")
    live = {"type": "subscriber", "prefix": "/live/", "create_on_get": True}
    brief = {"type": "subscriber", "prefix": "/brief/", "create_on_get": True, "timeout": 1}
    return {"locations": [*locations, live, brief]}


@pytest.fixture(scope="module", params=list(SERVERS))
def server(request, site_db):
    env = {"PUSHSERVER_TEST_DB": site_db["PUSHSERVER_TEST_DB"]}
    env["PUSHSERVER_TEST_PRESENCE_CHANNEL"] = "log"
    with asgi_server(request.param, module_config, env) as process:
        process.name = request.param
        yield process


@pytest.fixture
async def client(server):
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        yield client


# -- the transports and resuming ---------------------------------------------------------


async def test_three_transports_receive_a_publish(server, client):
    channel = f"all-{uuid.uuid4().hex}"
    got = {}

    async def long_poll():
        got["longpoll"] = (await client.get(path("/live/", channel))).content

    async def sse():
        async with event_stream(client, path("/live/", channel)) as reader:
            got["eventsource"] = (await reader.event()).data.encode()

    async def websocket():
        async with ws_connect(ws_url(server, path("/live/", channel))) as ws:
            got["websocket"] = ws_frame(await ws.recv())[1].encode()

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for transport in (long_poll, sse, websocket):
                tg.start_soon(transport)
            await wait_for_subscribers(client, path("/publisher/", channel), 3)
            published = await client.post(
                path("/publisher/", channel), content=b"to all", headers=TEXT
            )
            assert published.status_code == 201
    assert got == {"longpoll": b"to all", "eventsource": b"to all", "websocket": b"to all"}


async def test_a_waiting_long_poll_whose_client_hangs_up_is_let_go(server, client):
    """Under every server the wait hears the disconnect (on asyncio without the engine's
    inbox: the read :func:`pushserver.transports.longpoll.wait_watching` leaves waiting),
    first with a request that had no body, then with one whose body was sent."""
    channel = f"gone-{uuid.uuid4().hex}"
    publisher = path("/publisher/", channel)
    await client.put(publisher)
    for content in (None, b"unread body"):
        with anyio.fail_after(20):
            async with (
                httpx.AsyncClient(base_url=server.url) as other,
                anyio.create_task_group() as tg,
            ):
                tg.start_soon(
                    partial(other.request, "GET", path("/live/", channel), content=content)
                )
                await wait_for_subscribers(client, publisher, 1)
                tg.cancel_scope.cancel()
            # The client's connection is closed: the server lets the subscriber go.
            await wait_for_subscribers(client, publisher, 0)
    published = await client.post(publisher, content=b"to nobody", headers=TEXT)
    assert published.status_code == 202  # queued, no subscriber


async def test_a_long_poll_timeout_answers_304_and_the_next_poll_gets_the_message(server, client):
    """The location's ``timeout`` ends a waiting long poll under every server (on asyncio
    without the engine's inbox: the deadline around the wait that
    :func:`pushserver.transports.longpoll.wait_watching` awaits), with the client's own
    position; the poll after it is held and answered by the next publish."""
    channel = f"brief-{uuid.uuid4().hex}"
    publisher = path("/publisher/", channel)
    assert (await client.post(publisher, content=b"first", headers=TEXT)).status_code == 202
    first = await client.get(path("/brief/", channel))
    assert first.content == b"first"
    with anyio.fail_after(10):
        timed_out = await client.get(path("/brief/", channel), headers=position(first))
    assert timed_out.status_code == 304
    assert position(timed_out) == position(first)
    got = {}

    async def poll() -> None:
        response = timed_out
        while response.status_code == 304:  # a busy machine may reach the timeout first
            response = await client.get(path("/brief/", channel), headers=position(response))
        got["next"] = response

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(poll)
            await wait_for_subscribers(client, publisher, 1)
            await client.post(publisher, content=b"second", headers=TEXT)
    assert (got["next"].status_code, got["next"].content) == (200, b"second")


async def test_every_transport_resumes_after_a_message(server, client):
    channel = f"resume-{uuid.uuid4().hex}"
    for body in (b"one", b"two", b"three"):
        published = await client.post(path("/publisher/", channel), content=body, headers=TEXT)
        assert published.status_code == 202
    with anyio.fail_after(20):
        first = await client.get(path("/live/", channel))
        after = longpoll_id(first)
        second = await client.get(path("/live/", channel), headers=position(first))
        async with event_stream(client, path("/live/", channel), last_event_id=after) as r:
            streamed = [event.data for event in await r.events(2)]
        url = ws_url(server, path("/live/", channel)) + f"?last_event_id={after}"
        async with ws_connect(url) as ws:
            framed = [ws_frame(await ws.recv())[1] for _ in range(2)]
    assert (first.content, second.content) == (b"one", b"two")
    assert streamed == framed == ["two", "three"]


# -- in-process: send_update from views, passthrough signals -----------------------------


@pytest.mark.parametrize("view", ["send-update", "asend-update"])
async def test_views_publish_in_process(server, client, view):
    channel = f"view-{uuid.uuid4().hex}"
    result = {}

    async def subscribe():
        result["poll"] = await client.get(path("/live/", channel))

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(subscribe)
            await wait_for_subscribers(client, path("/publisher/", channel), 1)
            answer = await client.get(f"/{view}/{channel}")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"status": 201, "in_process": True}
    assert result["poll"].json()["channel"] == channel
    assert f"POST /publisher/{channel}" not in server.log  # no HTTP hop


async def test_passthrough_signals_in_process(server, site_db):
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        log = PresenceLog(client, "/presence/log")
        with anyio.fail_after(30):
            await check_presence_loop(server.url, log, site_db["session"], server.host)
    assert "/passthrough" not in server.log  # dispatched in-process, no HTTP request


async def test_django_pages_are_served_beside_the_push_locations(server, client):
    response = await client.get("/no-such-page")
    assert response.status_code == 404
    # Ours first; hypercorn's command line adds its own after it (docs/deployment.md).
    assert response.headers["server"].startswith(f"pushserver/{__version__}")


# -- hostile input -----------------------------------------------------------------------

#: What each server answers to a request line it cannot parse (docs/deployment.md).
MALFORMED = b"GET /publisher/a b c HTTP/1.1\r\nHost: t\r\n\r\n"
#: A head far over max_header_size (16 KiB by default) that is complete.
OVERSIZED = b"GET /publisher/a HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n"


async def answer_head(server, data: bytes) -> bytes:
    """Send ``data`` on a new connection; what comes back up to the end of the first
    response head, or until the server closes (b"": closed without an answer)."""
    received = b""
    with anyio.fail_after(10):
        connection = await connect(server)
        async with connection.stream:
            await connection.send(data)
            while b"\r\n\r\n" not in received and (chunk := await connection.read_some()):
                received += chunk
    return received


async def test_malformed_request_is_refused_and_serving_goes_on(server, client):
    data = await answer_head(server, MALFORMED)
    # Every server refuses it (400) or, daphne, just closes the connection.
    if data:
        assert data.startswith(b"HTTP/1.1 400"), data[:200]
    else:
        assert server.name.startswith("daphne")
    await assert_still_serving(client, subscriber="/live/")


async def test_oversized_head_is_refused_and_serving_goes_on(server, client):
    data = await answer_head(server, OVERSIZED)
    status = data.split(b" ", 2)[1] if data else b"closed"
    # 431, the push server's (uvicorn, granian) or the server's own (hypercorn: h11's
    # 16 KiB); daphne (Twisted's line limit) closes the connection without an answer.
    expected = b"closed" if server.name.startswith("daphne") else b"431"
    assert status == expected, data[:300]
    await assert_still_serving(client, subscriber="/live/")


async def test_body_shorter_than_declared_publishes_nothing(server, client):
    channel = f"short-{uuid.uuid4().hex}"
    head = (
        f"POST /publisher/{channel} HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n"
    ).encode()
    with anyio.fail_after(10):
        connection = await connect(server)
        async with connection.stream:
            await connection.send(head + b"only this")
        # The client went away mid-body: nothing published (not even an empty channel).
        info = await client.get(path("/publisher/", channel), headers={"accept": "text/json"})
    assert info.status_code == 404
    await assert_still_serving(client, subscriber="/live/")


async def test_length_with_transfer_encoding(server, client):
    data = (
        b"POST /publisher/x HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    )
    responses, _ = await exchange(server, data)
    # granian lets Transfer-Encoding win (RFC 9112 6.3 allows it): an empty message.
    assert responses[0].status == (202 if server.name == "granian" else 400)
    await assert_still_serving(client, subscriber="/live/")


# -- graceful stop -----------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SERVERS))
async def test_sigterm_loses_no_acknowledged_message(name, redis_server, push_server_factory):
    """Publishes acknowledged before and during a stop all reach a follower that goes on
    reading from another server on the same redis store; the server exits, status 0,
    without waiting for its held long poll to time out."""
    config = {
        "store": redis_server.store(),
        "locations": [
            {"type": "publisher", "prefix": "/publisher/"},
            {"type": "subscriber", "prefix": "/subscriber/", "create_on_get": True},
        ],
    }
    channel = f"stop-{uuid.uuid4().hex}"
    server = asgi_server(name, config)
    acknowledged: list[bytes] = []
    with server:
        follower = Follower(server.url, channel)
        try:
            with anyio.fail_after(60):
                async with httpx.AsyncClient(base_url=server.url, timeout=10) as publisher:

                    async def follow() -> None:
                        while True:
                            try:
                                response = await follower.next()
                            except httpx.HTTPError:
                                return  # the server is gone
                            if response.status_code not in (200, 304):
                                return

                    async with anyio.create_task_group() as tg:
                        tg.start_soon(follow)
                        await wait_for_subscribers(publisher, path("/publisher/", channel), 1)
                        for number in range(1000):
                            if number == 5:
                                server.process.send_signal(signal.SIGTERM)
                            body = f"m{number}".encode()
                            try:
                                response = await publisher.post(
                                    path("/publisher/", channel), content=body
                                )
                            except httpx.HTTPError:
                                break
                            if response.status_code not in (201, 202):
                                assert response.status_code == 503, response.text
                                break
                            acknowledged.append(body)
                code = await anyio.to_thread.run_sync(server.process.wait)
        finally:
            await follower.aclose()
    # uvicorn ends by raising the signal again once it has shut down (its design).
    assert code == (-signal.SIGTERM if name == "uvicorn" else 0), server.log
    assert len(acknowledged) >= 5
    assert "Traceback" not in server.log
    other = push_server_factory(config)
    rest = Follower(other.url, channel)
    rest.headers = follower.headers
    try:
        with anyio.fail_after(20):
            await rest.read(len(acknowledged) - len(follower.received))
    finally:
        await rest.aclose()
    bodies = [body for _, body in follower.received + rest.received]
    assert bodies == acknowledged
