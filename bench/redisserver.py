"""A private ``redis-server`` for the Redis runs: :class:`pushserver.testing.RedisServer`
(a free port, no persistence, optionally under ``taskset``), and what the report says of it.

Never the machine's own Redis: each run starts its own on a port the kernel picked, so
its CPU (read from ``/proc/<pid>/stat``) is the bench's alone and its keys start empty.
"""

from __future__ import annotations

import shutil
import subprocess

from pushserver.testing import REDIS_SERVER, RedisClusterServers, RedisServer

__all__ = ["REDIS_SERVER", "RedisClusterServers", "RedisServer", "available", "version"]


def available() -> bool:
    return shutil.which(REDIS_SERVER) is not None


def version() -> str | None:
    try:
        done = subprocess.run([REDIS_SERVER, "--version"], capture_output=True, text=True)
    except OSError:
        return None
    # "Redis server v=7.0.15 sha=... malloc=jemalloc-5.3.0 bits=64 build=..."
    for word in done.stdout.split():
        if word.startswith("v="):
            return word[2:]
    return done.stdout.strip() or None
