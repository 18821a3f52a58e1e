"""``max_connections`` against a real runpushserver: past it every subscriber request gets
503 with Retry-After and its CORS headers (a WebSocket: close 1013), publishing goes on, the
subscribers already there keep receiving, and service resumes once some leave."""

from __future__ import annotations

import resource
from contextlib import AsyncExitStack

import anyio
import httpx
import pytest

from pushserver.app import (
    BUSY_RETRY_AFTER,
    ConnectionLimit,
    PushServer,
    default_max_connections,
)
from pushserver.config import load, parse
from tests.project.helpers import path, wait_for_subscribers
from tests.transports.streams import closed_with, connect, event_stream, ws_frame, ws_url

LIMIT = 6
ORIGIN = "http://a.example"
FLOOD = 40

CONFIG = {
    "max_connections": LIMIT,
    "locations": [
        {"type": "publisher", "prefix": "/publisher/"},
        {
            "type": "subscriber",
            "prefix": "/subscriber/",
            "create_on_get": True,
            "allow_origin": [ORIGIN, "http://b.example"],
        },
    ],
}

CLIENT_TIMEOUT = 30
BUSY_BODY = "503 Service Unavailable: the server is at its connection limit, try again later\n"


def assert_busy(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.text == BUSY_BODY
    assert response.headers["retry-after"] == str(BUSY_RETRY_AFTER)
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "Origin" in response.headers.get_list("vary")


@pytest.mark.anyio
async def test_flood_past_max_connections(server, client):
    received: dict[str, list] = {"poll": [], "sse": [], "ws": []}
    channel = "held"
    publisher = path("/publisher/", channel)
    with anyio.fail_after(60):
        async with AsyncExitStack() as stack, anyio.create_task_group() as tg:
            # LIMIT subscribers of every transport fill the process.
            async def poll() -> None:
                response = await client.get(path("/subscriber/", channel))
                received["poll"].append(response.content)

            for _ in range(2):
                tg.start_soon(poll)
            streams = [
                await stack.enter_async_context(event_stream(client, f"/subscriber/{channel}"))
                for _ in range(2)
            ]
            sockets = [
                await stack.enter_async_context(connect(ws_url(server, f"/subscriber/{channel}")))
                for _ in range(2)
            ]
            await wait_for_subscribers(client, publisher, LIMIT)

            # The flood: every kind of subscriber request, at once, each refused.
            limits = httpx.Limits(max_connections=FLOOD * 2)
            async with httpx.AsyncClient(
                base_url=server.url, timeout=CLIENT_TIMEOUT, limits=limits
            ) as flood_client:
                refused: list[httpx.Response] = []
                closes: list[tuple[int, str]] = []
                preflights: list[httpx.Response] = []
                headers = {"origin": ORIGIN}

                async def longpoll(index: int) -> None:
                    url = path("/subscriber/", f"flood-{index}")
                    refused.append(await flood_client.get(url, headers=headers))

                async def sse(index: int) -> None:
                    url = path("/subscriber/", f"flood-sse-{index}")
                    sse_headers = {**headers, "accept": "text/event-stream"}
                    refused.append(await flood_client.get(url, headers=sse_headers))

                async def websocket(index: int) -> None:
                    url = ws_url(server, f"/subscriber/flood-ws-{index}")
                    async with connect(url, origin=ORIGIN) as ws:  # type: ignore[arg-type]
                        closes.append(await closed_with(ws))

                async def preflight(index: int) -> None:
                    url = path("/subscriber/", f"flood-{index}")
                    preflights.append(
                        await flood_client.options(
                            url, headers={**headers, "access-control-request-method": "GET"}
                        )
                    )

                async with anyio.create_task_group() as flood:
                    for index in range(FLOOD):
                        flood.start_soon(longpoll, index)
                    for index in range(FLOOD // 4):
                        flood.start_soon(sse, index)
                        flood.start_soon(websocket, index)
                        flood.start_soon(preflight, index)

            assert len(refused) == FLOOD + FLOOD // 4
            for response in refused:
                assert_busy(response)
            assert closes == [(1013, "the server is at its connection limit, try again later")] * (
                FLOOD // 4
            )
            # A preflight is instant and still answered, so the browser can read the 503.
            for response in preflights:
                assert response.status_code == 200
                assert response.headers["access-control-allow-origin"] == ORIGIN

            # Publishing is never refused, and everyone already there receives.
            published = await client.post(publisher, content=b"to everyone")
            assert published.status_code == 201, published.text
            for stream in streams:
                assert (await stream.event()).data == "to everyone"
            for ws in sockets:
                assert ws_frame(await ws.recv())[1] == b"to everyone"
        assert received["poll"] == [b"to everyone"] * 2

    # Service resumes: the held subscribers left, a new one of each kind is served.
    with anyio.fail_after(30):
        await wait_for_subscribers(client, publisher, 0)
        async with (
            event_stream(client, "/subscriber/after") as stream,
            connect(ws_url(server, "/subscriber/after")) as ws,
        ):
            await wait_for_subscribers(client, path("/publisher/", "after"), 2)
            result: dict[str, httpx.Response] = {}

            async def late_poll() -> None:
                result["poll"] = await client.get(path("/subscriber/", "after"))

            async with anyio.create_task_group() as tg:
                tg.start_soon(late_poll)
                await wait_for_subscribers(client, path("/publisher/", "after"), 3)
                await client.post(path("/publisher/", "after"), content=b"back")
            assert result["poll"].content == b"back"
            assert (await stream.event()).data == "back"
            assert ws_frame(await ws.recv())[1] == b"back"

    log = server.log
    assert "Traceback" not in log, log
    # The refusals are in the access log; the server's own log says it once, not per request.
    assert log.count("refusing more with 503") == 1, log


# -- the setting -----------------------------------------------------------------------------


def test_default_follows_the_open_file_limit():
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    expected = soft - max(32, soft // 10)
    assert default_max_connections() == expected
    assert PushServer(load({})).max_connections == expected
    assert PushServer(load({"max_connections": 0})).max_connections == 0  # no limit
    assert PushServer(load({"max_connections": 10})).max_connections == 10


@pytest.mark.parametrize(
    ("key", "value", "code"),
    [
        ("max_connections", -1, "E080"),
        ("max_connections", "many", "E080"),
        ("max_header_size", 100, "E081"),
        ("max_header_size", 16.5, "E081"),
        ("client_header_timeout", 0, "E082"),
        ("client_header_timeout", float("inf"), "E082"),
        ("client_header_timeout", "60", "E082"),
    ],
)
def test_bad_limit_settings(key, value, code):
    config, problems = parse({key: value})
    assert [p.id for p in problems] == [f"pushserver.{code}"]
    assert problems[0].key == f"PUSH_SERVER[{key!r}]"
    # The default stays in force for what it would have set.
    assert getattr(config, key) == getattr(parse({})[0], key)


def test_limit_settings_are_read():
    config, problems = parse(
        {"max_connections": 0, "max_header_size": 4096, "client_header_timeout": 2.5}
    )
    assert problems == []
    assert (config.max_connections, config.max_header_size, config.client_header_timeout) == (
        0,
        4096,
        2.5,
    )


# -- every place given back ------------------------------------------------------------------


class _Watched(ConnectionLimit):
    """A ``ConnectionLimit`` that says when its count is back to 0 (an event, no polling)."""

    def watch(self) -> anyio.Event:
        self.idle = anyio.Event()
        if self._active == 0:
            self.idle.set()
        return self.idle

    @property  # type: ignore[override]
    def active(self) -> int:
        return self._active

    @active.setter
    def active(self, value: int) -> None:
        self._active = value
        idle = getattr(self, "idle", None)
        if value == 0 and idle is not None:
            idle.set()


@pytest.mark.anyio
@pytest.mark.parametrize("under", ["pushserver", "uvicorn"])
async def test_streams_websockets_and_refusals_give_their_place_back(under):
    """Each subscriber request holds one place in ``max_connections`` while it is served
    and gives it back when it ends: an event stream, a WebSocket (each of which hands its
    count to its transport) and an HTTP answer (here a 403), twice over."""
    from tests.transports.test_direct_writes import serving

    async with serving(under) as (app, url):
        limit = app.connections
        limit._active = limit.__dict__.pop("active")
        limit.__class__ = _Watched
        ws_base = url.replace("http://", "ws://")
        async with httpx.AsyncClient(base_url=url, timeout=CLIENT_TIMEOUT) as client:
            for _ in range(2):  # what a first round kept, the second would add to
                async with AsyncExitStack() as stack:
                    await stack.enter_async_context(event_stream(client, "/subscriber/s"))
                    await stack.enter_async_context(connect(ws_base + "/subscriber/w"))
                    assert limit.active == 2
                    # Long polls are off at this location: answered 403, counted meanwhile.
                    refused = await client.get("/subscriber/p")
                    assert refused.status_code == 403, refused.text
                    assert limit.active == 2
                    idle = limit.watch()
                with anyio.fail_after(10):
                    await idle.wait()
                assert limit.active == 0
