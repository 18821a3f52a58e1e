"""Keepalive pings of the plain and ``ws+meta.nchan`` WebSocket modes, and how they fail safe.

They go through a hypercorn internal (:func:`pushserver.hypercorn.fixes.send_websocket_pings`,
the ``pushserver.websocket.ping`` scope extension). Through the real server the ping frames
are checked in tests/transports/test_websocket.py
(``test_plain_mode_keepalive_is_ping_frames``, which fails if a hypercorn upgrade breaks
them). Here: a server without the extension (any other ASGI server) is never sent the event
it would reject, and a hypercorn without the internals is left alone."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import pytest

from pushserver.app import PushServer
from pushserver.config import load
from pushserver.hypercorn import fixes as hypercorn_fixes
from pushserver.transports.websocket import NCHAN_META, PING_EXTENSION
from tests.project.helpers import asgi_request

pytestmark = pytest.mark.anyio

INTERVAL = 0.05

CONFIG = {
    "store": {"type": "memory"},
    "locations": [
        {"type": "publisher", "prefix": "/publisher/"},
        {
            "type": "subscriber",
            "prefix": "/subscriber/",
            "create_on_get": True,
            "ping_interval": INTERVAL,
        },
    ],
}


class Connection:
    """One WebSocket connection as an ASGI server holds it for the app: the events the app
    sent, and a receive that waits for the client. ``extensions`` is what the server offers;
    a server without pushserver's one rejects a ``websocket.ping`` event, as uvicorn and
    daphne reject any event ASGI does not define."""

    def __init__(self, channel: str, subprotocols: list[str], extensions: dict) -> None:
        self.scope = {
            "type": "websocket",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "scheme": "ws",
            "path": f"/subscriber/{channel}",
            "raw_path": f"/subscriber/{channel}".encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"127.0.0.1")],
            "client": ("127.0.0.1", 5000),
            "server": ("127.0.0.1", 8001),
            "subprotocols": subprotocols,
            "extensions": extensions,
        }
        self.sent: list[dict[str, Any]] = []
        self.pings = 0
        self.accepted = anyio.Event()
        self.pinged = anyio.Event()  # three pings
        self.messages = anyio.Event()  # a message frame
        self.connected = False
        self.left = anyio.Event()

    async def receive(self) -> dict:
        if not self.connected:
            self.connected = True
            return {"type": "websocket.connect"}
        await self.left.wait()
        return {"type": "websocket.disconnect", "code": 1000}

    async def send(self, event: dict[str, Any]) -> None:
        if event["type"] == "websocket.ping":
            if PING_EXTENSION not in self.scope["extensions"]:
                raise RuntimeError("Expected ASGI message 'websocket.send' or 'websocket.close'")
            self.pings += 1
            if self.pings == 3:
                self.pinged.set()
            return
        self.sent.append(event)
        if event["type"] == "websocket.accept":
            self.accepted.set()
        elif event["type"] == "websocket.send":
            self.messages.set()

    def leave(self) -> None:
        self.left.set()

    async def run(self, app: PushServer) -> None:
        await app(self.scope, self.receive, self.send)


async def publish(app: PushServer, channel: str, body: bytes) -> None:
    headers = [(b"content-type", b"text/plain")]
    sent = await asgi_request(app, "POST", f"/publisher/{channel}", body, headers)
    assert sent[0]["status"] in (201, 202), sent


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
@pytest.mark.parametrize("mode", [None, NCHAN_META])
async def test_only_a_server_offering_the_extension_is_sent_pings(mode):
    """Two connections, one on a server without the extension, started first: once the
    other has been pinged three times, it has been through as many keepalive intervals,
    was sent no ping event (its send would have raised and ended it), and is still open."""
    subprotocols = [mode] if mode else []
    async with PushServer(load(CONFIG)) as app, anyio.create_task_group() as group:
        other = Connection("pings", subprotocols, {"websocket.http.response": {}})
        ours = Connection("pings", subprotocols, {PING_EXTENSION: {}})
        with anyio.fail_after(10):
            group.start_soon(other.run, app)
            await other.accepted.wait()
            group.start_soon(ours.run, app)
            await ours.pinged.wait()
            await publish(app, "pings", b"still open")
            await other.messages.wait()
            await ours.messages.wait()
        other.leave()
        ours.leave()
    assert other.pings == 0
    frame = other.sent[-1]
    assert frame["type"] == "websocket.send"
    assert frame["text"].endswith("still open")
    assert ours.sent[-1] == frame


async def test_the_extension_is_offered_once_applied():
    assert hypercorn_fixes.send_websocket_pings() is True
    from hypercorn.protocol.ws_stream import WSStream

    patched = WSStream.app_send
    assert getattr(patched, "sends_pings", False)
    assert hypercorn_fixes.send_websocket_pings() is True  # idempotent
    assert WSStream.app_send is patched


async def test_the_fixes_wrapping_the_same_method_stay_idempotent():
    """serve() applies every fix at each start, and three wrap WSStream.handle, one over
    the other: a second server in the same process wraps none of them again (the refusal
    fix once did, and then told the application of a refusal twice)."""
    from hypercorn.protocol.ws_stream import WSStream

    def apply() -> None:
        hypercorn_fixes.end_refused_websockets()
        hypercorn_fixes.send_websocket_pings()
        hypercorn_fixes.free_closed_websocket_parsers()

    apply()
    handle = WSStream.handle
    apply()
    assert WSStream.handle is handle


@pytest.mark.parametrize("missing", ["_send_wsproto_event", "app_send"])
async def test_a_hypercorn_without_the_internals_is_left_alone(monkeypatch, caplog, missing):
    """A future hypercorn without what the extension uses: nothing is patched, scopes get
    no extension (so the app sends no ping event), and the log says so."""
    from hypercorn.protocol.ws_stream import WSStream

    handle = WSStream.handle
    monkeypatch.delattr(WSStream, missing)
    kept = getattr(WSStream, "app_send", None)
    with caplog.at_level(logging.WARNING, logger="pushserver"):
        assert hypercorn_fixes.send_websocket_pings() is False
    assert WSStream.handle is handle and getattr(WSStream, "app_send", None) is kept
    assert "no keepalive pings" in caplog.text
