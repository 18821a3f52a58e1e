"""Helpers for testing a project against a real push server.

:class:`PushServerProcess` runs ``manage.py runpushserver`` in a subprocess on a free
loopback port and stops it, so tests speak real HTTP to the real command::

    with PushServerProcess(settings_module="mysite.settings") as server:
        httpx.get(server.url + "/subscriber/news")

:class:`RedisServer` runs a private ``redis-server`` for a test run (a project's own CI may
use it for the redis store): on a free loopback port, never the machine's own Redis on
127.0.0.1:6379, with nothing saved unless asked::

    with RedisServer() as redis:
        PUSH_SERVER = {"store": redis.store(), ...}

:func:`free_port` is a loopback TCP port that was free a moment ago.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

_RUNNING_RE = re.compile(r"running at (http://(\S+?))/\s*$")


class PushServerProcess:
    """``runpushserver`` in a child process; ``url`` is its base URL once started.

    ``push_server`` is handed to the child as JSON in ``PUSHSERVER_TEST_CONFIG`` (a test
    settings module can read it into ``PUSH_SERVER``); ``args`` are extra command arguments.
    """

    def __init__(
        self,
        settings_module: str,
        *,
        push_server: Mapping[str, Any] | None = None,
        args: Sequence[str] = (),
        address: str = "127.0.0.1:0",
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self.settings_module = settings_module
        self.push_server = push_server
        self.args = list(args)
        self.address = address
        self.env = dict(env or {})
        self.cwd = cwd
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[str] | None = None
        self.url = ""
        self.host = ""
        self.output: list[str] = []
        self._output_changed = threading.Condition()
        self._drainer: threading.Thread | None = None

    def start(self) -> PushServerProcess:
        env = {**os.environ, **self.env, "DJANGO_SETTINGS_MODULE": self.settings_module}
        env["PYTHONUNBUFFERED"] = "1"
        if self.push_server is not None:
            env["PUSHSERVER_TEST_CONFIG"] = json.dumps(self.push_server)
        self.process = subprocess.Popen(
            self.command(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=self.cwd,
        )
        # One thread reads the child's output from the start (so the pipe never fills) and
        # wakes waiters per line; selecting on the pipe would miss lines already buffered.
        self._drainer = threading.Thread(target=self._drain, daemon=True)
        self._drainer.start()
        try:
            match = self.wait_for_output(self.ready_pattern, timeout=self.startup_timeout)
        except TimeoutError:
            if self._drainer is not None and not self._drainer.is_alive():
                # Its output ended: it is exiting, maybe not yet reaped; don't race that.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(10)
            exited = self.process.poll() is not None
            self.stop()
            name = " ".join(self.command()[2:4])
            if exited:
                raise RuntimeError(
                    f"{name} exited with {self.process.returncode}:\n{self.log}"
                ) from None
            raise TimeoutError(f"{name} did not start:\n{self.log}") from None
        self.started(match)
        self.wait_listening()
        return self

    def wait_listening(self) -> None:
        """Some servers say they started before they listen (daphne's runserver, granian
        under ``runpushserver --server granian``): wait until the port accepts a
        connection (polling another process, bounded by ``startup_timeout``)."""
        host, _, port = self.host.rpartition(":")
        deadline = time.monotonic() + self.startup_timeout
        while True:
            try:
                socket.create_connection((host.strip("[]"), int(port)), timeout=1).close()
                return
            except OSError:
                if self.process is None or self.process.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"the server exited:\n{self.log}") from None
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"nothing listens on {self.host}:\n{self.log}") from None
                time.sleep(0.05)

    #: The output line that says the server is up (its groups: :meth:`started`).
    ready_pattern = _RUNNING_RE.pattern

    def command(self) -> list[str]:
        return [sys.executable, "-m", "django", "runpushserver", self.address, *self.args]

    def started(self, match: re.Match[str]) -> None:
        self.url, self.host = match.group(1), match.group(2)

    def _drain(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            with self._output_changed:
                self.output.append(line)
                self._output_changed.notify_all()
        with self._output_changed:
            self._output_changed.notify_all()

    def wait_for_output(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """Block until a line of the server's output matches the regex ``pattern``.

        Raises :class:`TimeoutError` (with the output so far) when none does in time or the
        server exits first.
        """
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        checked = 0
        with self._output_changed:
            while True:
                for line in self.output[checked:]:
                    match = regex.search(line)
                    if match:
                        return match
                checked = len(self.output)
                remaining = deadline - time.monotonic()
                exited = self._drainer is None or not self._drainer.is_alive()
                if remaining <= 0 or exited:
                    raise TimeoutError(f"no output line matched {pattern!r}:\n{self.log}")
                self._output_changed.wait(remaining)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        """Signal the server (SIGTERM by default) and wait for it to exit."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._drainer is not None:
            self._drainer.join(timeout)
        if process.stdout is not None:
            process.stdout.close()
        return process.returncode

    @property
    def log(self) -> str:
        return "".join(self.output)

    def __enter__(self) -> PushServerProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class ASGIServerProcess(PushServerProcess):
    """Another ASGI server's command line in a child process, serving the project's ASGI
    application (``pushserver.asgi``) on ``address`` (``host:port``; port 0: a free one)::

        server = ASGIServerProcess(
            "mysite.settings",
            ["uvicorn", "mysite.asgi:application", "--host", "{host}", "--port", "{port}"],
            ready=r"Uvicorn running on",
        )

    ``{host}`` and ``{port}`` in ``command`` are replaced; ``command[0]`` is run as
    ``python -m command[0]`` with this interpreter. The server is up once a line of its
    output matches ``ready``. Other arguments are :class:`PushServerProcess`'s.
    """

    def __init__(
        self, settings_module: str, command: Sequence[str], *, ready: str, **kwargs: Any
    ) -> None:
        super().__init__(settings_module, **kwargs)
        host, _, port = self.address.rpartition(":")
        self.bind_host = host.strip("[]") or "127.0.0.1"
        self.port = int(port) or free_port(self.bind_host)
        self.template = list(command)
        self.ready_pattern = ready

    def command(self) -> list[str]:
        values = {"host": self.bind_host, "port": str(self.port)}
        return [sys.executable, "-m", *(part.format(**values) for part in self.template)]

    def started(self, match: re.Match[str]) -> None:
        host = f"[{self.bind_host}]" if ":" in self.bind_host else self.bind_host
        self.host = f"{host}:{self.port}"
        self.url = f"http://{self.host}"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago (the kernel's pick), for a server
    that must be told its port up front, or a port where nothing listens."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


#: The ``redis-server`` :class:`RedisServer` runs: the one on ``PATH``.
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
#: The machine's own Redis: a :class:`RedisServer` never takes this port.
_SYSTEM_REDIS_PORT = 6379
_READY = "Ready to accept connections"


class RedisServer:
    """A private ``redis-server`` on 127.0.0.1 (a free port) and a unix socket.

    ``directory`` holds its unix socket, append-only file and TLS certificate; without one
    a temporary directory is made, removed by :meth:`close` (or leaving the ``with``).
    With ``durable`` every write is fsynced to the append-only file before Redis replies, so
    a killed and restarted server still has everything it accepted; otherwise nothing is
    saved. ``password`` sets ``requirepass``; with ``tls`` the port speaks only TLS, with a
    self-signed certificate (``certificate``; made with ``openssl``). ``prefix`` goes before
    the command (``["taskset", "-c", "1"]``; it must exec ``redis-server``, so that ``pid``
    is Redis's own).

    :meth:`start` returns once Redis accepts connections (``TimeoutError`` or
    ``RuntimeError``, with its log, otherwise); :meth:`stop` ends it (SIGTERM),
    :meth:`kill` crashes it (SIGKILL); :meth:`start` again brings it back on the same port,
    and :meth:`restart` is kill and start. ``output`` is its log.
    """

    def __init__(
        self,
        directory: str | Path | None = None,
        *,
        durable: bool = False,
        password: str | None = None,
        tls: bool = False,
        prefix: Sequence[str] = (),
        executable: str = REDIS_SERVER,
        startup_timeout: float = 30.0,
    ) -> None:
        self._temporary: tempfile.TemporaryDirectory[str] | None = None
        if directory is None:
            self._temporary = tempfile.TemporaryDirectory(prefix="pushserver-redis-")
            directory = self._temporary.name
        self.directory = Path(directory)
        port = free_port()
        while port == _SYSTEM_REDIS_PORT:  # only if the kernel's range includes it
            port = free_port()
        self.port = port
        self.unix_socket = str(self.directory / "redis.sock")
        self.durable = durable
        self.password = password
        #: With ``tls``, the self-signed certificate the TCP port presents.
        self.certificate = str(self.directory / "cert.pem") if tls else None
        self.prefix = list(prefix)
        self.executable = executable
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[str] | None = None
        #: The process id of the last start (kept after it stops).
        self.pid = 0
        self.output: list[str] = []
        self._drainer: threading.Thread | None = None

    @property
    def url(self) -> str:
        scheme = "rediss" if self.certificate else "redis"
        return f"{scheme}://127.0.0.1:{self.port}/0"

    def store(self, **options: Any) -> dict[str, Any]:
        """A ``PUSH_SERVER['store']`` for this server, in a ``key_prefix`` of its own;
        ``options`` are added (or override)."""
        store: dict[str, Any] = {
            "type": "redis",
            "host": "127.0.0.1",
            "port": self.port,
            "key_prefix": f"t{uuid.uuid4().hex[:8]}:",
        }
        if self.password is not None:
            store["password"] = self.password
        return {**store, **options}

    def start(self) -> RedisServer:
        if self.port == _SYSTEM_REDIS_PORT:
            raise ValueError("RedisServer never runs on 6379, the machine's own Redis")
        if self.certificate:
            self._make_certificate()
            port = [
                "--port", "0",
                "--tls-port", str(self.port),
                "--tls-cert-file", self.certificate,
                "--tls-key-file", self._key,
                "--tls-auth-clients", "no",
            ]  # fmt: skip
        else:
            port = ["--port", str(self.port)]
        args = [
            *self.prefix, self.executable,
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
        else:
            args += ["--appendonly", "no"]
        if self.password is not None:
            args += ["--requirepass", self.password]
        process = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.process, self.pid = process, process.pid
        # A thread reads the log from the start: readiness is a log line, and the pipe must
        # never fill up.
        ready = threading.Event()
        self._drainer = threading.Thread(target=self._drain, args=(process, ready), daemon=True)
        self._drainer.start()
        if not ready.wait(self.startup_timeout):
            self.kill()
            raise TimeoutError("redis-server did not start:\n" + self.log)
        if not any(_READY in line for line in self.output):
            self._end(signal.SIGKILL)  # it exited; reap it
            raise RuntimeError(f"redis-server exited with {process.returncode}:\n{self.log}")
        return self

    @property
    def log(self) -> str:
        return "".join(self.output)

    @property
    def _key(self) -> str:
        return str(self.directory / "key.pem")

    def _make_certificate(self) -> None:
        if Path(self._key).exists():
            return
        assert self.certificate is not None
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
            if _READY in line:
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

    def stop(self) -> None:
        """End it (SIGTERM) and wait; :meth:`start` brings it back on the same port."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """Crash it (SIGKILL): no shutdown save, clients see their connections drop."""
        self._end(signal.SIGKILL)

    def restart(self) -> RedisServer:
        self.kill()
        return self.start()

    def close(self) -> None:
        """Stop it and remove the temporary directory it made (if it made one)."""
        self.stop()
        if self._temporary is not None:
            self._temporary.cleanup()
            self._temporary = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
