"""Where a held connection's memory goes: ``python -m bench.memprobe``.

Starts a server (ours, as ``bench/server.py``, or the floor), holds ``--base`` idle
subscribers, takes a measurement, holds ``--n`` more, takes another, and prints the
difference per added connection: resident memory (``VmRSS``), the Python heap as
``tracemalloc`` sees it grouped by where it was allocated, and the live objects the cyclic
collector tracks, by type. ``--no-trace`` measures RSS alone (tracemalloc costs memory and
time of its own). A debugging aid, not part of ``python -m bench``.

    python -m bench.memprobe --target ours --transport sse --n 5000

``--asgi-server uvicorn`` serves the same app under uvicorn (bench/uvicornserve.py).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import cpu_seconds, raise_fd_limit, rss_bytes  # noqa: E402

# -- the server side (a child process) --------------------------------------------------------


def _dump(directory: str, index: int, trace: bool) -> None:
    gc.collect()
    counts = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
    info = {"rss": rss_bytes(os.getpid()), "types": counts}
    if trace:
        import tracemalloc

        tracemalloc.take_snapshot().dump(f"{directory}/{index}.snapshot")
    with open(f"{directory}/{index}.json", "w") as f:
        json.dump(info, f)


def serve(target: str, directory: str, trace: bool, asgi_server: str = "hypercorn") -> None:
    import anyio

    if trace:
        import tracemalloc

        tracemalloc.start(int(os.environ.get("MEMPROBE_FRAMES", "6")))
    from pushserver.server import bind
    from pushserver.server import serve as serve_app

    if target == "floor":
        from bench.floor import Floor

        app = Floor()
    else:
        from bench.server import build

        app = build()

    async def main() -> None:
        sock = bind("127.0.0.1", 0, backlog=4096)

        async def dumps() -> None:
            index = 0
            with anyio.open_signal_receiver(signal.SIGUSR1) as signals:
                async for _ in signals:
                    _dump(directory, index, trace)
                    print(f"DUMPED {index}", flush=True)
                    index += 1

        async with anyio.create_task_group() as tg:
            tg.start_soon(dumps)
            print(f"LISTENING {sock.getsockname()[1]}", flush=True)
            if asgi_server == "uvicorn":  # see bench/uvicornserve.py
                from bench import uvicornserve

                await uvicornserve.serve(app, sock)
            else:
                await serve_app(app, sock, access_log=False)  # type: ignore[arg-type]
            tg.cancel_scope.cancel()

    raise_fd_limit()
    # SIGTERM from the parent ends it; how does not matter here.
    with contextlib.suppress(BaseException):
        anyio.run(main, backend="asyncio", backend_options={"use_uvloop": True})


# -- the client side ------------------------------------------------------------------------


class Holder(asyncio.Protocol):
    """Sends one subscribe request and keeps the connection open, reading and ignoring."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.head = b""

    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if not self.ready.done():
            self.head += data
            if b"\r\n\r\n" in self.head:
                self.ready.set_result(self.head.startswith((b"HTTP/1.1 200", b"HTTP/1.1 101")))

    def connection_lost(self, exc) -> None:  # type: ignore[no-untyped-def]
        if not self.ready.done():
            self.ready.set_result(False)


def request(transport: str, path: bytes) -> bytes:
    if transport == "ws":
        key = base64.b64encode(os.urandom(16))
        return (
            b"GET %s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (path, key)
        )
    return b"GET %s HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n" % path


async def hold(port: int, transport: str, n: int, kept: list) -> int:
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(64)

    async def one() -> bool:
        async with gate:
            _, holder = await loop.create_connection(
                lambda: Holder(request(transport, b"/sub/probe")), "127.0.0.1", port
            )
            kept.append(holder)
            return await holder.ready

    return sum(await asyncio.gather(*(one() for _ in range(n))))


def wait_quiet(pid: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = cpu_seconds(pid)
        if now - last < 0.005:
            return
        last = now


def report(directory: str, added: int, trace: bool, top: int) -> None:
    a = json.loads(Path(f"{directory}/0.json").read_text())
    b = json.loads(Path(f"{directory}/1.json").read_text())
    print(f"RSS: {(b['rss'] - a['rss']) / added / 1024:.1f} KiB per connection")
    types = collections.Counter(b["types"])
    types.subtract(a["types"])
    print("gc-tracked objects per connection (type: count):")
    for name, count in types.most_common(top):
        if count / added >= 0.5:
            print(f"  {name}: {count / added:.2f}")
    if trace:
        import tracemalloc

        first = tracemalloc.Snapshot.load(f"{directory}/0.snapshot")
        second = tracemalloc.Snapshot.load(f"{directory}/1.snapshot")
        flt = [tracemalloc.Filter(False, tracemalloc.__file__)]
        first, second = first.filter_traces(flt), second.filter_traces(flt)
        diff = second.compare_to(first, "traceback")
        total = sum(d.size_diff for d in diff)
        print(f"tracemalloc: {total / added / 1024:.2f} KiB per connection; by allocation site:")
        for stat in diff[:top]:
            if stat.size_diff / added < 16:
                break
            # Innermost frame first: where the allocation happened, then its callers.
            frames = [f"{Path(f.filename).name}:{f.lineno}" for f in stat.traceback]
            print(f"  {stat.size_diff / added:7.0f} B  {' < '.join(reversed(frames))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--serve", choices=["ours", "floor"], help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    parser.add_argument("--target", choices=["ours", "floor"], default="ours")
    parser.add_argument("--transport", choices=["sse", "ws"], default="sse")
    parser.add_argument("--asgi-server", choices=["hypercorn", "uvicorn"], default="hypercorn")
    parser.add_argument("--base", type=int, default=200)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--no-trace", action="store_true")
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    trace = not args.no_trace
    if args.serve:
        serve(args.serve, args.dir, trace, args.asgi_server)
        return
    raise_fd_limit()
    directory = tempfile.mkdtemp(prefix="memprobe-")
    command = [sys.executable, "-m", "bench.memprobe", "--serve", args.target, "--dir", directory]
    command += ["--asgi-server", args.asgi_server]
    if not trace:
        command.append("--no-trace")
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline().split()[1])
        kept: list = []

        def dump() -> None:
            wait_quiet(server.pid)
            server.send_signal(signal.SIGUSR1)
            assert server.stdout is not None
            line = server.stdout.readline()
            assert line.startswith("DUMPED"), line

        async def run() -> None:
            ok = await hold(port, args.transport, args.base, kept)
            assert ok == args.base, f"{ok}/{args.base} subscribed"
            await asyncio.to_thread(dump)
            ok = await hold(port, args.transport, args.n, kept)
            assert ok == args.n, f"{ok}/{args.n} subscribed"
            await asyncio.to_thread(dump)

        asyncio.run(run())
        report(directory, args.n, trace, args.top)
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
