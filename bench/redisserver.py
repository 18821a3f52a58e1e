"""A private ``redis-server`` for the Redis runs: a free port, no persistence, stopped after.

Never the machine's own Redis: each run starts its own on a port the kernel picked, so
its CPU (read from ``/proc/<pid>/stat``) is the bench's alone and its keys start empty.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import threading

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """``redis-server`` on 127.0.0.1, optionally under ``taskset`` (``prefix``)."""

    def __init__(self, prefix: list[str] | None = None) -> None:
        self.prefix = prefix or []
        self.port = free_port()
        self.directory = tempfile.TemporaryDirectory(prefix="bench-redis-")
        self.output: list[str] = []
        self.process: subprocess.Popen[str] | None = None
        self._drainer: threading.Thread | None = None
        self.pid = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 30) -> RedisServer:
        args = [
            *self.prefix, REDIS_SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", self.directory.name,
            "--save", "",
            "--appendonly", "no",
            "--logfile", "",
            "--daemonize", "no",
        ]  # fmt: skip
        # ``taskset -c N redis-server`` execs redis-server: the pid is Redis's own.
        self.process = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.pid = self.process.pid
        ready = threading.Event()
        # Readiness is a log line; a thread reads the log so the pipe never fills up.
        self._drainer = threading.Thread(target=self._drain, args=(ready,), daemon=True)
        self._drainer.start()
        if not ready.wait(timeout) or self.process.poll() is not None:
            self.stop()
            raise RuntimeError("redis-server did not start:\n" + "".join(self.output[-20:]))
        return self

    def _drain(self, ready: threading.Event) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            if len(self.output) < 200:
                self.output.append(line)
            if "Ready to accept connections" in line:
                ready.set()
        ready.set()  # exited: start() reports it

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            if self._drainer is not None:
                self._drainer.join(10)
            if process.stdout is not None:
                process.stdout.close()
        self.directory.cleanup()
