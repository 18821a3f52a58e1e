"""Test clients for the streaming transports: a spec-following SSE reader over httpx, and
helpers for the WebSocket frame format. Real HTTP, real sockets; no server internals."""

from __future__ import annotations

import json
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
from websockets.asyncio.client import connect as _connect

from pushserver.transports.websocket import PUSHSERVER_V1
from tests.project.helpers import message_position


@dataclass
class SSE:
    """One block of an event stream: an event (data not None) or comments only."""

    id: str | None = None
    event: str | None = None
    data: str | None = None
    retry: int | None = None
    comments: list[str] = field(default_factory=list)

    @property
    def json(self):
        return json.loads(self.data)


class SSEReader:
    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()

    async def block(self) -> SSE | None:
        """The next block; None at the end of the stream."""
        block = SSE()
        seen = False
        data: list[str] = []
        async for line in self._lines:
            if line == "":
                if not seen:
                    continue
                block.data = "\n".join(data) if data else None
                return block
            seen = True
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "":
                block.comments.append(value)
            elif name == "id":
                block.id = value
            elif name == "event":
                block.event = value
            elif name == "data":
                data.append(value)
            elif name == "retry":
                block.retry = int(value)
        return None

    async def event(self) -> SSE:
        """The next block that is an event (comments skipped)."""
        while True:
            block = await self.block()
            assert block is not None, "the stream ended"
            if block.data is not None:
                return block

    async def events(self, count: int) -> list[SSE]:
        return [await self.event() for _ in range(count)]


@asynccontextmanager
async def event_stream(client: httpx.AsyncClient, path: str, **headers: str):
    """GET ``path`` as an event stream; yields a reader after the opening comment.

    The opening comment is written after the server subscribed, so anything published once
    this yields reaches the stream.
    """
    request_headers = {
        "accept": "text/event-stream",
        **{k.replace("_", "-"): v for k, v in headers.items()},
    }
    async with client.stream("GET", path, headers=request_headers, timeout=30) as response:
        assert response.status_code == 200, (response.status_code, await response.aread())
        reader = SSEReader(response)
        hello = await reader.block()
        assert hello is not None and hello.comments == ["hi"] and hello.retry == 3000
        yield reader


def longpoll_id(response: httpx.Response) -> str:
    """The message id a long-poll response names with Last-Modified / Etag."""
    return "{}:{}".format(*message_position(response))


def ws_frame(data: str | bytes) -> tuple[dict[str, str], str | bytes]:
    """Split a WebSocket message frame into its header fields and body."""
    if isinstance(data, str):
        head, sep, body = data.partition("\n\n")
        text_head = head
    else:
        index = data.index(b"\n\n")
        text_head, body, sep = data[:index].decode(), data[index + 2 :], "\n\n"
    assert sep, data
    fields = dict(line.split(": ", 1) for line in text_head.split("\n"))
    return fields, body


async def publish(
    client: httpx.AsyncClient, channel: str, body: bytes | str, **headers: str
) -> httpx.Response:
    if isinstance(body, str):
        body = body.encode()
    response = await client.post(
        f"/publisher/{channel}",
        content=body,
        headers={
            "content-type": "text/plain",
            **{k.replace("_", "-"): v for k, v in headers.items()},
        },
    )
    assert response.status_code in (201, 202), response.text
    return response


async def last_id(client: httpx.AsyncClient, channel: str) -> str:
    response = await client.get(f"/publisher/{channel}", headers={"accept": "application/json"})
    return response.json()["last_message_id"]


def connect(uri: str, **kwargs):
    """``websockets``' client asking for ``pushserver.v1`` (header lines, control frames,
    commands), unless ``subprotocols`` says otherwise."""
    kwargs.setdefault("subprotocols", [PUSHSERVER_V1])
    return _connect(uri, **kwargs)


def ws_url(server, path: str) -> str:
    """The WebSocket URL of ``path`` on a test server."""
    return server.url.replace("http://", "ws://") + path


async def closed_with(ws) -> tuple[int, str]:
    """Read until the server closes; return its close code and reason."""
    from websockets.exceptions import ConnectionClosed

    try:
        while True:
            await ws.recv()
    except ConnectionClosed as closed:
        assert closed.rcvd is not None, "no close frame from the server"
        return closed.rcvd.code, closed.rcvd.reason
