"""The floor: the least an ASGI broadcaster can do, under the same hypercorn as ours.

No channel logic, no ids to parse beyond an integer, no retention rules: a publish appends
bytes encoded once for each transport and wakes every waiter on the channel. Subscribers
still do what any correct server must: watch for their client going away (a long poll
with pushserver's ``wait_watching``, the cheapest watch known), and (long-poll) answer a
request from its ``If-None-Match`` position. The channel's list grows for the few
seconds a scenario runs; that is fine here and nowhere else.

``python bench/floor.py --loop uvloop`` prints ``LISTENING <port>`` and serves until SIGTERM.
``--asgi-server uvicorn`` serves it under uvicorn (bench/uvicornserve.py), ``--asgi-server
granian`` under granian as ``bench/server.py --asgi-server granian`` runs ours (its worker, a
child process, serves). ``--as-ours`` (bench/requestpath.py's floors): under uvicorn, with
``pushserver.servers.serve_uvicorn``'s settings, as ``bench/server.py`` serves ours.
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import raise_fd_limit
from pushserver.server import bind, serve
from pushserver.transports.longpoll import wait_watching

LAST_MODIFIED = b"Thu, 01 Jan 2026 00:00:00 GMT"
SSE_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-store")],
}
PUBLISHED = {"type": "http.response.start", "status": 201, "headers": [(b"content-length", b"0")]}
EMPTY_BODY = {"type": "http.response.body", "body": b""}
NOT_FOUND = {"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"0")]}


class Channel:
    __slots__ = ("changed", "longpoll", "sse", "ws")

    def __init__(self) -> None:
        self.longpoll: list[tuple[dict, dict]] = []  # (response start, body) per message
        self.sse: list[dict] = []
        self.ws: list[dict] = []
        self.changed = anyio.Event()

    def publish(self, body: bytes, content_type: bytes) -> None:
        n = len(self.longpoll)
        tag = str(n).encode()
        start = {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"last-modified", LAST_MODIFIED),
                (b"etag", tag),
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
            ],
        }
        self.longpoll.append((start, {"type": "http.response.body", "body": body}))
        event = b"id: 0:" + tag + b"\ndata: " + body + b"\n\n"
        self.sse.append({"type": "http.response.body", "body": event, "more_body": True})
        self.ws.append({"type": "websocket.send", "text": body.decode()})
        self.changed.set()
        self.changed = anyio.Event()


async def until_disconnect(receive, kind: str, work) -> None:
    """Run ``work()`` until it returns or the client goes away, whichever is first."""
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            while (await receive())["type"] != kind:
                pass
            tg.cancel_scope.cancel()

        tg.start_soon(watch)
        await work()
        tg.cancel_scope.cancel()


class Floor:
    def __init__(self) -> None:
        self.channels: dict[str, Channel] = {}

    def begin_shutdown(self) -> None:
        pass

    def channel(self, path: str) -> Channel | None:
        prefix, _, name = path[1:].partition("/")
        if prefix not in ("pub", "sub") or not name:
            return None
        channel = self.channels.get(name)
        if channel is None:
            channel = self.channels[name] = Channel()
        return channel

    async def __call__(self, scope, receive, send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        channel = self.channel(scope["path"])
        if channel is None:
            if kind == "http":
                await send(NOT_FOUND)
                await send(EMPTY_BODY)
            return
        if kind == "websocket":
            await self.websocket(channel, receive, send)
        elif scope["method"] == "POST":
            body = b""
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            content_type = b"application/octet-stream"
            for name, value in scope["headers"]:
                if name == b"content-type":
                    content_type = value
            channel.publish(body, content_type)
            await send(PUBLISHED)
            await send(EMPTY_BODY)
        else:
            accept = etag = None
            for name, value in scope["headers"]:
                if name == b"accept":
                    accept = value
                elif name == b"if-none-match":
                    etag = value
            if accept is not None and b"text/event-stream" in accept:
                await self.eventsource(channel, receive, send)
            else:
                await self.longpoll(channel, int(etag) + 1 if etag else 0, receive, send)

    async def longpoll(self, channel: Channel, index: int, receive, send) -> None:
        async def wait() -> None:
            while index >= len(channel.longpoll):
                await channel.changed.wait()

        # The cheapest disconnect watch we have (one bare read, no second task group),
        # pushserver's own: a floor dearer than ours would show nothing.
        if index >= len(channel.longpoll) and (
            (await wait_watching(wait(), receive))[1] or index >= len(channel.longpoll)
        ):
            return
        start, body = channel.longpoll[index]
        await send(start)
        await send(body)

    async def eventsource(self, channel: Channel, receive, send) -> None:
        await send(SSE_START)
        await until_disconnect(
            receive, "http.disconnect", lambda: stream(channel.sse, channel, send)
        )

    async def websocket(self, channel: Channel, receive, send) -> None:
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        await until_disconnect(
            receive, "websocket.disconnect", lambda: stream(channel.ws, channel, send)
        )


async def stream(messages: list, channel: Channel, send) -> None:
    sent = len(messages)  # a new subscriber gets what is published from now on
    while True:
        changed = channel.changed
        while sent < len(messages):
            await send(messages[sent])
            sent += 1
        await changed.wait()


def granian_app() -> Floor:
    """The app granian loads (a factory), in a worker with the collector's thresholds
    raised as ``bench.server:granian_app`` has them for ours."""
    from pushserver.server import raise_gc_thresholds

    raise_gc_thresholds()
    return Floor()


async def main(port: int, asgi_server: str, as_ours: bool = False) -> None:
    sock = bind("127.0.0.1", port, backlog=4096)
    print(f"LISTENING {sock.getsockname()[1]}", flush=True)
    if asgi_server == "uvicorn" and as_ours:  # bench/server.py's settings for ours
        from pushserver.config.model import ServerConfig
        from pushserver.servers import serve_uvicorn

        config = types.SimpleNamespace(client_header_timeout=ServerConfig.client_header_timeout)
        await serve_uvicorn(Floor(), sock, access_log=False, shutdown_timeout=1, config=config)
    elif asgi_server == "uvicorn":  # a measurement only: see bench/uvicornserve.py
        from bench import uvicornserve

        await uvicornserve.serve(Floor(), sock)
    else:
        await serve(Floor(), sock, access_log=False)  # type: ignore[arg-type]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument(
        "--asgi-server", choices=["hypercorn", "uvicorn", "granian"], default="hypercorn"
    )
    parser.add_argument("--as-ours", action="store_true", help="uvicorn: as ours is served")
    args = parser.parse_args()
    raise_fd_limit()
    if args.asgi_server == "granian":
        from bench.server import exec_granian

        exec_granian(args.port, args.loop, factory="bench.floor:granian_app")
    anyio.run(
        main,
        args.port,
        args.asgi_server,
        args.as_ours,
        backend="asyncio",
        backend_options={"use_uvloop": args.loop == "uvloop"},
    )
