"""A private ``redis-server`` for the Redis runs: :class:`pushserver.testing.RedisServer`
(a free port, no persistence, optionally under ``taskset``), and what the report says of it.

Never the machine's own Redis: each run starts its own on a port the kernel picked, so
its CPU (read from ``/proc/<pid>/stat``) is the bench's alone and its keys start empty.
"""

from __future__ import annotations

import re
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


class CommandStats:
    """Redis's own count of the commands it ran (``INFO commandstats``) over one phase:
    :meth:`reset` (``CONFIG RESETSTAT``) before it, :meth:`read` after; summed over every
    Redis process of the row (a cluster's nodes). Blocking calls: made between phases."""

    def __init__(self, urls: list[str]) -> None:
        import redis

        self.clients = [redis.Redis.from_url(url) for url in urls]

    def reset(self) -> None:
        for client in self.clients:
            client.config_resetstat()

    def read(self) -> dict[str, int]:
        """Calls per command since :meth:`reset` (``config`` left out: the reset itself)."""
        calls: dict[str, int] = {}
        for client in self.clients:
            for key, stats in client.info("commandstats").items():
                name = key.removeprefix("cmdstat_")
                if name.partition("|")[0] != "config":
                    calls[name] = calls.get(name, 0) + int(stats["calls"])
        return calls

    def close(self) -> None:
        for client in self.clients:
            client.close()


def script_commands() -> frozenset[str]:
    """The commands pushserver's Lua scripts run (read from their sources; ``PUBLISH`` and
    ``SPUBLISH`` are named by an argument)."""
    from pushserver.backends import redis as store

    sources = "".join(v for k, v in vars(store).items() if k.isupper() and isinstance(v, str))
    names = set(re.findall(r"redis\.call\('([A-Z]+)'", sources)) | {"PUBLISH", "SPUBLISH"}
    return frozenset(name.lower() for name in names)


def commands_sent(calls: dict[str, int]) -> int:
    """Of ``INFO commandstats``' calls, the commands clients sent, each one round trip.

    Redis counts the commands a script runs under their own names too (an ``EVALSHA`` of
    the publish script adds an ``xadd``, a ``publish``, ...): those are left out, and a
    script counts once, as its ``evalsha``. So a command that pushserver both sends itself
    and runs in a script would be missed; none does on a request's path (the last,
    ``EXISTS`` before opening a channel, now runs inside the open script)."""
    inside = script_commands()
    return sum(n for name, n in calls.items() if name.partition("|")[0] not in inside)
