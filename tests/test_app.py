"""The push server's routing, in process on the ASGI interface a server calls it through,
on asyncio and on trio: each kind of location reaches its handler, an early answer (431)
carries that location's headers, and subscribers and the fallback share
``max_connections`` while publishers are not counted."""

from __future__ import annotations

import json

import anyio
import pytest

from pushserver.app import PushServer
from pushserver.config import load
from tests.project.helpers import asgi_request

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])]

LOCATIONS = [
    # A CORS key: the publisher then answers with CORS headers (by default it has none).
    {"type": "publisher", "prefix": "/publisher/", "allow_origin": "*"},
    {"type": "subscriber", "prefix": "/subscriber/", "create_on_get": True},
    {"type": "status", "prefix": "/status/", "interval": 0},
]
#: A request head larger than the default max_header_size.
HUGE = [(b"x-filler", b"x" * 20_000)]


class Fallback:
    """The application for paths no location matches: answers 200, or holds the request
    until ``release`` is set (a long-running fallback request)."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.entered = anyio.Event()
        self.release = anyio.Event()

    async def __call__(self, scope, receive, send) -> None:
        self.paths.append(scope["path"])
        self.entered.set()
        if scope["path"] == "/slow":
            await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"site"})


async def websocket_close_code(app: PushServer, path: str) -> int:
    """The close code a WebSocket to ``path`` gets without being accepted."""
    sent: list[dict] = []
    messages = [{"type": "websocket.connect"}]

    async def receive():
        return messages.pop(0) if messages else {"type": "websocket.disconnect", "code": 1000}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "websocket",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [],
        "client": ("127.0.0.1", 5000),
        "subprotocols": [],
    }
    await app(scope, receive, send)
    return sent[-1]["code"]


async def test_each_kind_of_location_reaches_its_handler(anyio_backend):
    fallback = Fallback()
    async with PushServer(load({"locations": LOCATIONS}), fallback=fallback) as app:
        sent = await asgi_request(app, "POST", "/publisher/c", b"hello")
        assert sent[0]["status"] == 202
        sent = await asgi_request(app, "GET", "/subscriber/c")
        assert (sent[0]["status"], sent[1]["body"]) == (200, b"hello")
        sent = await asgi_request(app, "GET", "/status/json")
        assert sent[0]["status"] == 200
        store = json.loads(sent[1]["body"])["stores"]["default"]
        assert (store["type"], store["published"]) == ("memory", 1)
        # A publisher's channel id is checked before the publisher gets the request.
        sent = await asgi_request(app, "POST", "/publisher/%ZZ", b"x")
        assert sent[0]["status"] == 400
        sent = await asgi_request(app, "GET", "/elsewhere")
        assert (sent[0]["status"], sent[1]["body"]) == (200, b"site")
        assert fallback.paths == ["/elsewhere"]
        # Publishers and status pages speak HTTP only.
        assert await websocket_close_code(app, "/publisher/c") == 1003
        assert await websocket_close_code(app, "/status/") == 1003


async def test_a_head_too_large_gets_431_with_the_locations_headers(anyio_backend):
    async with PushServer(load({"locations": LOCATIONS}), fallback=Fallback()) as app:
        answers = {}
        for target in ("/subscriber/c", "/publisher/c", "/status/", "/elsewhere"):
            sent = await asgi_request(app, "GET", target, headers=HUGE)
            answers[target] = (sent[0]["status"], dict(sent[0]["headers"]))
    cors = b"access-control-allow-origin"
    assert {target: status for target, (status, _) in answers.items()} == dict.fromkeys(
        answers, 431
    )
    # Subscribers and publishers answer with their CORS headers, for a browser to read.
    assert cors in answers["/subscriber/c"][1]
    assert cors in answers["/publisher/c"][1]
    assert cors not in answers["/status/"][1]
    assert cors not in answers["/elsewhere"][1]
    assert all(headers[b"server"].startswith(b"pushserver/") for _, headers in answers.values())


async def test_subscribers_and_the_fallback_share_max_connections(anyio_backend):
    fallback = Fallback()
    settings = {"locations": LOCATIONS, "max_connections": 1}
    async with PushServer(load(settings), fallback=fallback) as app:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as group:
                group.start_soon(asgi_request, app, "GET", "/slow")
                await fallback.entered.wait()
                assert app.connections.active == 1
                sent = await asgi_request(app, "GET", "/subscriber/c")
                assert sent[0]["status"] == 503
                assert (b"retry-after", b"5") in sent[0]["headers"]
                assert (await asgi_request(app, "GET", "/elsewhere"))[0]["status"] == 503
                # Publishers are not counted, nor refused.
                assert (await asgi_request(app, "POST", "/publisher/c", b"x"))[0]["status"] == 202
                fallback.release.set()
        assert app.connections.active == 0
        sent = await asgi_request(app, "GET", "/subscriber/c")
        assert (sent[0]["status"], sent[1]["body"]) == (200, b"x")
        assert app.connections.active == 0


class ViaAwaitable:
    """The app as pushserver's hypercorn wrapper calls it: ``awaitable_for``."""

    def __init__(self, app: PushServer) -> None:
        self.app = app

    def __call__(self, scope, receive, send):
        return self.app.awaitable_for(scope, receive, send)


async def test_awaitable_for_answers_as_the_app_does(anyio_backend):
    fallback = Fallback()
    async with PushServer(load({"locations": LOCATIONS}), fallback=fallback) as app:
        via = ViaAwaitable(app)
        sent = await asgi_request(via, "POST", "/publisher/c", b"hello")
        assert sent[0]["status"] == 202
        sent = await asgi_request(via, "GET", "/subscriber/c")
        assert (sent[0]["status"], sent[1]["body"]) == (200, b"hello")
        sent = await asgi_request(via, "GET", "/status/json")
        assert sent[0]["status"] == 200
        sent = await asgi_request(via, "GET", "/elsewhere")
        assert (sent[0]["status"], sent[1]["body"]) == (200, b"site")
        assert fallback.paths == ["/elsewhere"]
        sent = await asgi_request(via, "GET", "/subscriber/c", headers=HUGE)
        assert sent[0]["status"] == 431
        assert await websocket_close_code(via, "/status/") == 1003
        assert app.connections.active == 0

        # A plain location request is its handler's coroutine, without the app's own frame;
        # anything else is the app's __call__.
        def scope(path: str) -> dict:
            return {"type": "http", "method": "GET", "path": path, "raw_path": path.encode()}

        async def receive():
            return {"type": "http.disconnect"}

        async def send(message):
            pass

        for path, expected in (
            # (The subscriber location's dispatch returns its transport's coroutine; a
            # long poll's is Subscriber.serve_http.)
            ("/subscriber/c", "Subscriber.serve_http"),
            ("/elsewhere", "PushServer.__call__"),
        ):
            coro = app.awaitable_for({**scope(path), "headers": []}, receive, send)
            assert coro.cr_code.co_qualname == expected
            coro.close()
        app.forcehost = "example.com"
        coro = app.awaitable_for({**scope("/subscriber/c"), "headers": []}, receive, send)
        assert coro.cr_code.co_qualname == "PushServer.__call__"
        coro.close()
