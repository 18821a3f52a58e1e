"""Fixtures for backend tests: real ``redis-server`` processes on free ports, and a
``backend`` fixture that runs the shared behaviour suite against every backend."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import threading
import uuid
from pathlib import Path

import anyio
import pytest

from pushserver.backends import MemoryBackend
from pushserver.message import Message

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """One ``redis-server`` on 127.0.0.1 and a unix socket in ``directory``.

    With ``durable`` every write is fsynced to the append-only file before Redis replies,
    so a killed and restarted server still has everything it accepted.
    """

    def __init__(
        self,
        directory: Path,
        *,
        durable: bool = False,
        password: str | None = None,
        tls: bool = False,
    ):
        self.directory = directory
        self.port = free_port()
        self.unix_socket = str(directory / "redis.sock")
        self.durable = durable
        self.password = password
        #: With ``tls`` the TCP port speaks only TLS, with this self-signed certificate.
        self.certificate = str(directory / "cert.pem") if tls else None
        self.process: subprocess.Popen[str] | None = None
        self.output: list[str] = []
        self._drainer: threading.Thread | None = None

    @property
    def url(self) -> str:
        scheme = "rediss" if self.certificate else "redis"
        return f"{scheme}://127.0.0.1:{self.port}/0"

    def store(self, **options) -> dict:
        """A ``PUSH_SERVER['store']`` for this server, in a namespace of its own."""
        store = {
            "type": "redis",
            "host": "127.0.0.1",
            "port": self.port,
            "key_prefix": f"t{uuid.uuid4().hex[:8]}:",
        }
        if self.password is not None:
            store["password"] = self.password
        return {**store, **options}

    def start(self) -> RedisServer:
        if self.certificate:
            self._make_certificate()
            port = [
                "--port",
                "0",
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                self.certificate,
                "--tls-key-file",
                self._key,
                "--tls-auth-clients",
                "no",
            ]
        else:
            port = ["--port", str(self.port)]
        args = [
            REDIS_SERVER,
            *port,
            "--bind", "127.0.0.1",
            "--unixsocket", self.unix_socket,
            "--unixsocketperm", "700",
            "--dir", str(self.directory),
            "--save", "",
            "--logfile", "",
            "--daemonize", "no",
        ]  # fmt: skip
        if self.durable:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        if self.password is not None:
            args += ["--requirepass", self.password]
        self.process = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        # A thread reads the log from the start: readiness is a log line, and the pipe must
        # never fill up.
        ready = threading.Event()
        self._drainer = threading.Thread(
            target=self._drain, args=(self.process, ready), daemon=True
        )
        self._drainer.start()
        if not ready.wait(30):
            self.kill()
            raise TimeoutError("redis-server did not start:\n" + "".join(self.output))
        if not any("Ready to accept connections" in line for line in self.output):
            self.process.wait(10)
            raise RuntimeError("redis-server exited:\n" + "".join(self.output))
        return self

    @property
    def _key(self) -> str:
        return str(self.directory / "key.pem")

    def _make_certificate(self) -> None:
        if Path(self._key).exists():
            return
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-keyout", self._key, "-out", self.certificate, "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1"],
            check=True,
            capture_output=True,
        )  # fmt: skip

    def _drain(self, process: subprocess.Popen[str], ready: threading.Event) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.output.append(line)
            if "Ready to accept connections" in line:
                ready.set()
        ready.set()  # exited: start() reports it

    def _end(self, sig: int) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._drainer is not None:
            self._drainer.join(10)
        if process.stdout is not None:
            process.stdout.close()

    def kill(self) -> None:
        """Crash it (SIGKILL): no shutdown save, clients see their connections drop."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        self._end(signal.SIGTERM)

    def restart(self) -> RedisServer:
        self.kill()
        return self.start()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One redis-server for the session; tests keep apart by key prefix."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_server_factory(tmp_path_factory):
    """Start dedicated redis-servers (to kill, restart or configure); stopped after."""
    started: list[RedisServer] = []

    def start(**kwargs) -> RedisServer:
        server = RedisServer(tmp_path_factory.mktemp("redis"), **kwargs)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


class RecordingListener:
    """A backend's listener that records what it hears and lets tests wait for it."""

    def __init__(self) -> None:
        self.messages: dict[str, list[Message]] = {}
        self.deleted: list[str] = []
        self._changed = anyio.Event()

    def on_message(self, channel_id: str, message: Message) -> int:
        self.messages.setdefault(channel_id, []).append(message)
        self._wake()
        return 0

    def on_delete(self, channel_id: str) -> None:
        self.deleted.append(channel_id)
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, predicate, timeout: float = 5) -> None:
        with anyio.fail_after(timeout):
            while not predicate():
                await self._changed.wait()

    async def wait_messages(self, channel_id: str, count: int, timeout: float = 5) -> list[Message]:
        await self.wait_for(lambda: len(self.messages.get(channel_id, ())) >= count, timeout)
        return self.messages[channel_id]


def make_backend(kind: str, redis_server: RedisServer | None, **limits):
    if kind == "memory":
        return MemoryBackend(**limits)
    from pushserver.backends.redis import RedisBackend

    assert redis_server is not None
    options = redis_server.store(**limits)
    del options["type"]
    return RedisBackend(**options)


@pytest.fixture(params=["memory", "redis"])
def backend_kind(request):
    return request.param


@pytest.fixture
def backend_factory(backend_kind, request):
    """Open backends of the parametrised kind (closed after the test), each with a
    :class:`RecordingListener` as ``backend.recorder``."""
    redis = request.getfixturevalue("redis_server") if backend_kind == "redis" else None

    def create(**limits):
        backend = make_backend(backend_kind, redis, **limits)
        backend.recorder = RecordingListener()
        backend.bind(backend.recorder)
        return backend

    return create


@pytest.fixture
async def backend(backend_factory):
    async with backend_factory() as opened:
        yield opened
