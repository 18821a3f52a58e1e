"""The server under test: pushserver's core under the embedded hypercorn, without Django.

``python bench/server.py --loop uvloop`` prints ``LISTENING <port>`` once it accepts
connections and serves until SIGTERM. Locations: ``/pub/<id>`` publishes, ``/sub/<id>``
subscribes with every transport this version implements. ``--redis-url`` swaps the memory
store for a redis store: several such processes on one Redis share every channel.
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import itertools
import os
import sys
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import raise_fd_limit
from pushserver.app import PushServer
from pushserver.config import AVAILABLE_TRANSPORTS, load
from pushserver.server import bind, serve

BUFFER = 1000  # messages kept per channel: long-poll clients that fall behind catch up


def build(
    redis_url: str | None = None,
    key_prefix: str = "",
    max_messages: int = BUFFER,
    cluster: bool = False,
    channel_timeout: float | None = None,
    ping_interval: float | None = None,
) -> PushServer:
    if redis_url:
        store = {"type": "redis", "url": redis_url, "key_prefix": key_prefix}
        if cluster:
            store["cluster"] = True
    else:
        # No budget: a throughput round over 10,000 channels keeping 1,000 messages each
        # would reach the default 64 MiB and measure 507s. channel_timeout keeps its default
        # (the soak's abandoned-channel flood relies on it).
        store = {"type": "memory", "memory_limit": 0, "max_channels": 0}
    if channel_timeout is not None:  # bench/hangups.py --flood: channels that go in seconds
        store["channel_timeout"] = channel_timeout
    # bench/instructions.py: no keepalive sweep inside a phase it counts per delivery.
    keepalive = {} if ping_interval is None else {"ping_interval": ping_interval}
    config = load(
        {
            "store": {**store, "max_messages": max_messages},
            "locations": [
                {"type": "publisher", "prefix": "/pub/"},
                {
                    "type": "subscriber",
                    "prefix": "/sub/",
                    "create_on_get": True,
                    "transports": list(AVAILABLE_TRANSPORTS),
                    **keepalive,
                },
                # Loopback only (the default allow_from): what bench/hangups.py watches.
                {"type": "status", "prefix": "/status/"},
            ],
        }
    )
    return PushServer(config)


async def main(
    port: int,
    redis_url: str | None,
    key_prefix: str,
    max_messages: int,
    asgi_server: str,
    cluster: bool = False,
    channel_timeout: float | None = None,
    ping_interval: float | None = None,
) -> None:
    sock = bind("127.0.0.1", port, backlog=4096)
    app = build(redis_url, key_prefix, max_messages, cluster, channel_timeout, ping_interval)
    # hypercorn's lifespan opens and closes the app, in one task, as under runpushserver
    # (the redis store's reader task group must be left in the task that entered it).
    # Connections made before startup completes wait in the listen backlog.
    print(f"LISTENING {sock.getsockname()[1]}", flush=True)
    if asgi_server == "uvicorn":  # as runpushserver --server uvicorn runs it
        from pushserver.servers import serve_uvicorn

        await serve_uvicorn(app, sock, access_log=False, shutdown_timeout=1, config=app.config)
    else:
        await serve(app, sock, access_log=False)


def granian_app() -> PushServer:
    """The app granian loads (a factory): :func:`build` with the options in the environment,
    in a worker tuned as ``runpushserver --server granian`` tunes it (the collector's
    thresholds, :func:`pushserver.asgi.command_application`)."""
    from pushserver.server import raise_gc_thresholds

    raise_gc_thresholds()
    return build(max_messages=int(os.environ.get("BENCH_MAX_MESSAGES", BUFFER)))


def exec_granian(
    port: int, loop: str, max_messages: int = BUFFER, factory: str = "bench.server:granian_app"
) -> None:
    """Become granian serving :func:`granian_app`, with the options ``runpushserver
    --server granian`` gives it, after printing ``LISTENING <port>``: granian binds the port
    itself a moment later, and its worker (a child process) serves it."""
    sock = bind("127.0.0.1", port)
    port = sock.getsockname()[1]
    sock.close()
    print(f"LISTENING {port}", flush=True)
    command = [
        sys.executable, "-m", "granian", "--interface", "asgi", "--host", "127.0.0.1",
        "--port", str(port), "--backlog", "4096", "--loop", loop, "--log-level", "warning",
        "--factory", factory,
    ]  # fmt: skip
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "BENCH_MAX_MESSAGES": str(max_messages), "PYTHONPATH": root}
    os.execve(command[0], command, env)


def collect_every(interval: float) -> None:
    """A full ``gc.collect()`` every ``interval`` seconds, from a daemon thread.

    The soak's comparison run (``python -m bench --scenarios soak --gc-every 30``): what
    memory does when reference cycles are collected promptly instead of whenever the
    interpreter's generation-2 threshold is reached.
    """
    import gc
    import threading
    import time

    def collect() -> None:
        while True:
            time.sleep(interval)
            gc.collect()

    threading.Thread(target=collect, daemon=True).start()


def trace_memory(directory: str, interval: float = 30.0) -> None:
    """Debug runs: tracemalloc snapshots and live object counts every ``interval`` seconds.

    Written from a daemon thread as ``<pid>-<k>.snap`` (``tracemalloc.Snapshot.load``) and
    ``<pid>-<k>.types.json`` (the 40 most common types among gc-tracked objects), so two
    moments of a soak can be compared. tracemalloc slows the server down: never for figures.
    """
    import collections
    import gc
    import json
    import threading
    import time
    import tracemalloc

    tracemalloc.start(10)

    def probe() -> None:
        for k in itertools.count():
            time.sleep(interval)
            tracemalloc.take_snapshot().dump(f"{directory}/{os.getpid()}-{k}.snap")
            counts = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
            with open(f"{directory}/{os.getpid()}-{k}.types.json", "w") as f:
                json.dump({"t": (k + 1) * interval, "types": counts.most_common(40)}, f)

    threading.Thread(target=probe, daemon=True).start()


def gc_probe(path: str, interval: float = 30.0) -> None:
    """Debug runs: every ``interval`` s, count gc-tracked objects by type, then run a full
    collection and count again, and what it collected; a JSON line each time, with RSS and
    pymalloc's blocks before and after. Growth that a collection removes is cyclic garbage
    waiting for the collector; growth that survives it is live (a leak, or a cache)."""
    import collections
    import gc
    import json
    import sys
    import threading
    import time

    from bench.common import rss_bytes

    def census() -> collections.Counter:
        return collections.Counter(type(o).__qualname__ for o in gc.get_objects())

    def probe() -> None:
        start = time.monotonic()
        with open(path, "a") as f:
            while True:
                time.sleep(interval)
                rss, blocks, before = rss_bytes(os.getpid()), sys.getallocatedblocks(), census()
                gc.set_debug(gc.DEBUG_SAVEALL)  # keep what the collection finds, to count it
                collected = gc.collect()
                gc.set_debug(0)
                garbage = collections.Counter(type(o).__qualname__ for o in gc.garbage)
                frames = collections.Counter(
                    f"{Path(o.f_code.co_filename).name}:{o.f_code.co_qualname}"
                    for o in gc.garbage
                    if type(o).__name__ == "frame"
                )
                gc.garbage.clear()
                gc.collect()
                after = census()
                line = {
                    "t": round(time.monotonic() - start, 1),
                    "rss_kib": rss // 1024,
                    "rss_after_kib": rss_bytes(os.getpid()) // 1024,
                    "pymalloc_blocks": blocks,
                    "pymalloc_blocks_after": sys.getallocatedblocks(),
                    "collected": collected,
                    "garbage": garbage.most_common(40),
                    "garbage_frames": frames.most_common(30),
                    "before": before.most_common(25),
                    "after": after.most_common(25),
                }
                f.write(json.dumps(line) + "\n")
                f.flush()

    threading.Thread(target=probe, daemon=True).start()


def gc_log(path: str) -> None:
    """Debug runs: a JSON line per full (generation 2) collection the interpreter runs by
    itself, with what it collected and RSS just before and after it."""
    import gc
    import json
    import time

    from bench.common import rss_bytes

    start = time.monotonic()
    f = open(path, "a")  # noqa: SIM115 - open for the process's life
    before = {}

    def callback(phase: str, info: dict) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            before["rss"], before["t"] = rss_bytes(os.getpid()), time.monotonic()
            return
        line = {
            "t": round(before["t"] - start, 1),
            "ms": round((time.monotonic() - before["t"]) * 1e3, 1),
            "collected": info["collected"],
            "rss_kib": before["rss"] // 1024,
            "rss_after_kib": rss_bytes(os.getpid()) // 1024,
            "objects_after": len(gc.get_objects()),
        }
        f.write(json.dumps(line) + "\n")
        f.flush()

    gc.callbacks.append(callback)


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                     "uordblks", "fordblks", "keepcost")
    ]  # fmt: skip


def heap_log(path: str, interval: float = 10.0) -> None:
    """Debug runs: every ``interval`` s a JSON line with glibc's ``mallinfo2()`` (bytes the
    C heap has in use, ``uordblks``, and holds free, ``fordblks``; Python's objects, uvloop's
    and every C library's allocations are all in it) and pymalloc's allocated block count.
    Live C allocations that grow point at a leak; free heap that grows, at fragmentation."""
    import json
    import sys
    import threading
    import time

    from bench.common import rss_bytes

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _Mallinfo2

    def probe() -> None:
        start = time.monotonic()
        with open(path, "a") as f:
            while True:
                info = libc.mallinfo2()
                line = {
                    "t": round(time.monotonic() - start, 1),
                    "rss_kib": rss_bytes(os.getpid()) // 1024,
                    "heap_in_use_kib": info.uordblks // 1024,
                    "heap_free_kib": info.fordblks // 1024,
                    "mmapped_kib": info.hblkhd // 1024,
                    "pymalloc_blocks": sys.getallocatedblocks(),
                }
                f.write(json.dumps(line) + "\n")
                f.flush()
                time.sleep(interval)

    threading.Thread(target=probe, daemon=True).start()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument(
        "--asgi-server",
        choices=["hypercorn", "uvicorn", "granian"],
        default="hypercorn",
        help="the ASGI server (uvicorn and granian as runpushserver --server runs them)",
    )
    parser.add_argument("--redis-url", help="redis://host:port/db: a redis store, not memory")
    parser.add_argument("--key-prefix", default="", help="the redis store's key_prefix")
    parser.add_argument(
        "--redis-cluster", action="store_true", help="--redis-url names a Redis Cluster node"
    )
    parser.add_argument(
        "--max-messages", type=int, default=BUFFER, help="messages kept per channel"
    )
    parser.add_argument(
        "--channel-timeout",
        type=float,
        help="the store's channel_timeout in seconds (default: the store's, 60)",
    )
    parser.add_argument(
        "--ping-interval",
        type=float,
        help="the subscriber location's ping_interval in seconds (0: no keepalive)",
    )
    parser.add_argument(
        "--gc-every",
        type=float,
        default=0,
        help="run a full garbage collection every this many seconds (0: as Python decides)",
    )
    args = parser.parse_args()
    raise_fd_limit()
    if args.asgi_server == "granian":
        exec_granian(args.port, args.loop, args.max_messages)
    if os.environ.get("BENCH_PROFILE_DIR"):  # where the CPU goes: cProfile, dumped at exit
        import cProfile

        profile = cProfile.Profile()
        profile.enable()
        atexit.register(
            lambda: profile.dump_stats(f"{os.environ['BENCH_PROFILE_DIR']}/{os.getpid()}.prof")
        )
    if args.gc_every:
        collect_every(args.gc_every)
    if os.environ.get("BENCH_TRACEMALLOC_DIR"):  # what grows: see trace_memory()
        trace_memory(os.environ["BENCH_TRACEMALLOC_DIR"])
    if os.environ.get("BENCH_MALLINFO"):  # live C heap or fragmentation: see heap_log()
        heap_log(os.environ["BENCH_MALLINFO"])
    if os.environ.get("BENCH_GC_PROBE"):  # garbage not yet collected, or live: see gc_probe()
        gc_probe(os.environ["BENCH_GC_PROBE"])
    if os.environ.get("BENCH_GC_LOG"):  # when the collector runs a full collection
        gc_log(os.environ["BENCH_GC_LOG"])
    anyio.run(
        main,
        args.port,
        args.redis_url,
        args.key_prefix,
        args.max_messages,
        args.asgi_server,
        args.redis_cluster,
        args.channel_timeout,
        args.ping_interval,
        backend="asyncio",
        backend_options={"use_uvloop": args.loop == "uvloop"},
    )
