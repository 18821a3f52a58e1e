"""The server under test: pushserver's core under the embedded hypercorn, without Django.

``python bench/server.py --loop uvloop`` prints ``LISTENING <port>`` once it accepts
connections and serves until SIGTERM. Locations: ``/pub/<id>`` publishes, ``/sub/<id>``
subscribes with every transport this version implements. ``--redis-url`` swaps the memory
store for a redis store: several such processes on one Redis share every channel.
"""

from __future__ import annotations

import argparse
import atexit
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
    redis_url: str | None = None, key_prefix: str = "", max_messages: int = BUFFER
) -> PushServer:
    if redis_url:
        store = {"type": "redis", "url": redis_url, "key_prefix": key_prefix}
    else:
        store = {"type": "memory"}
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
                },
            ],
        }
    )
    return PushServer(config)


async def main(port: int, redis_url: str | None, key_prefix: str, max_messages: int) -> None:
    sock = bind("127.0.0.1", port, backlog=4096)
    app = build(redis_url, key_prefix, max_messages)
    # hypercorn's lifespan opens and closes the app, in one task, as under runpushserver
    # (the redis store's reader task group must be left in the task that entered it).
    # Connections made before startup completes wait in the listen backlog.
    print(f"LISTENING {sock.getsockname()[1]}", flush=True)
    await serve(app, sock, access_log=False)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--redis-url", help="redis://host:port/db: a redis store, not memory")
    parser.add_argument("--key-prefix", default="", help="the redis store's key_prefix")
    parser.add_argument(
        "--max-messages", type=int, default=BUFFER, help="messages kept per channel"
    )
    args = parser.parse_args()
    raise_fd_limit()
    if os.environ.get("BENCH_PROFILE_DIR"):  # where the CPU goes: cProfile, dumped at exit
        import cProfile

        profile = cProfile.Profile()
        profile.enable()
        atexit.register(
            lambda: profile.dump_stats(f"{os.environ['BENCH_PROFILE_DIR']}/{os.getpid()}.prof")
        )
    anyio.run(
        main,
        args.port,
        args.redis_url,
        args.key_prefix,
        args.max_messages,
        backend="asyncio",
        backend_options={"use_uvloop": args.loop == "uvloop"},
    )
