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

:class:`RedisClusterServers` (six ``redis-server`` processes made into a Redis Cluster) and
:class:`RedisSentinelServers` (a primary, replicas and ``redis-sentinel`` processes) run the
same way, for the redis store's ``cluster`` and ``sentinels`` options.

:func:`free_port` is a loopback TCP port that was free a moment ago.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
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
from typing import Any, Self

_RUNNING_RE = re.compile(r"running at (http://(\S+?))/\s*$")


class PushServerProcess:
    """``runpushserver`` in a child process; ``url`` is its base URL once started.

    ``push_server`` is handed to the child as JSON in ``PUSHSERVER_TEST_CONFIG`` (a test
    settings module can read it into ``PUSH_SERVER``); ``args`` are extra command arguments.
    ``reload`` is False by default (``--noreload``: the process under test is the one
    serving); True passes ``--reload``, None leaves it to the command (``DEBUG`` decides).
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
        reload: bool | None = False,
    ) -> None:
        self.settings_module = settings_module
        self.push_server = push_server
        self.args = list(args)
        self.address = address
        self.env = dict(env or {})
        self.cwd = cwd
        self.startup_timeout = startup_timeout
        self.reload = reload
        self.process: subprocess.Popen[str] | None = None
        self.url = ""
        self.host = ""
        self.output: list[str] = []
        self._output_changed = threading.Condition()
        self._drainer: threading.Thread | None = None
        #: Set (under ``_output_changed``) once the child's output has ended.
        self._output_ended = False

    def start(self) -> PushServerProcess:
        env = {**os.environ, **self.env, "DJANGO_SETTINGS_MODULE": self.settings_module}
        env["PYTHONUNBUFFERED"] = "1"
        if self.push_server is not None:
            env["PUSHSERVER_TEST_CONFIG"] = json.dumps(self.push_server)
        self._output_ended = False
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
            if self._output_ended:
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
        command = [sys.executable, "-m", "django", "runpushserver", self.address, *self.args]
        if self.reload is not None and not {"--reload", "--noreload"} & set(self.args):
            command.append("--reload" if self.reload else "--noreload")
        return command

    def started(self, match: re.Match[str]) -> None:
        self.url, self.host = match.group(1), match.group(2)

    def _drain(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            with self._output_changed:
                self.output.append(line)
                self._output_changed.notify_all()
        with self._output_changed:
            # A flag, not the thread's liveness: a waiter woken by this notify runs while
            # this thread is still alive, and would wait out its whole timeout.
            self._output_ended = True
            self._output_changed.notify_all()

    def wait_for_output(self, pattern: str, timeout: float = 10.0, after: int = 0) -> re.Match[str]:
        """Block until a line of the server's output matches the regex ``pattern``; with
        ``after``, a line past the first ``after`` lines (``len(server.output)`` taken
        before an action waits for what the action causes).

        Raises :class:`TimeoutError` (with the output so far) when none does in time or the
        server exits first.
        """
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        checked = after
        with self._output_changed:
            while True:
                for line in self.output[checked:]:
                    match = regex.search(line)
                    if match:
                        return match
                checked = len(self.output)
                remaining = deadline - time.monotonic()
                exited = self._drainer is None or self._output_ended
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


def _ephemeral_ports() -> range:
    """The kernel's range for the local end of outgoing connections (Linux's default
    elsewhere)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return range(int(low), int(high) + 1)
    except (OSError, ValueError):
        return range(32768, 61000)


#: Ports :func:`group_port` handed out in this process.
_GROUP_PORTS: set[int] = set()


def group_port(host: str = "127.0.0.1", *, low: int = 10000, high: int = 22000) -> int:
    """A free port for a server of a group (cluster nodes, sentinels) that must be told its
    port before the others start: picked in ``low``..``high``, outside the kernel's range
    for outgoing connections, so that no client connecting somewhere meanwhile takes it
    (a port from :func:`free_port` can be, between the pick and the server's bind: seen
    in CI as a sentinel set's replica failing with 'Address already in use'). A cluster
    node's bus port, its port + 10000, stays outside that range too."""
    ephemeral = _ephemeral_ports()
    for _ in range(1000):
        port = random.randrange(low, high)
        if port in _GROUP_PORTS or port in ephemeral or port + 10000 in ephemeral:
            continue
        if port == _SYSTEM_REDIS_PORT or port + 10000 == _SYSTEM_REDIS_PORT:
            continue
        try:
            with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
                sock.bind((host, port))
        except OSError:
            continue
        _GROUP_PORTS.add(port)
        return port
    return free_port(host)


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
    saved. ``config`` is a configuration file put before the options, ``ready`` the log
    line that means it is ready. ``args`` are added to the command line; ``port`` picks the
    port (default: a free one). ``password`` sets ``requirepass``; with ``tls`` the port
    speaks only TLS, with a self-signed certificate (``certificate``; made with
    ``openssl``). ``prefix`` goes before the command (``["taskset", "-c", "1"]``; it must
    exec ``redis-server``, so that ``pid`` is Redis's own).

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
        args: Sequence[str] = (),
        port: int | None = None,
        config: str | Path | None = None,
        ready: str = _READY,
    ) -> None:
        self._temporary: tempfile.TemporaryDirectory[str] | None = None
        if directory is None:
            self._temporary = tempfile.TemporaryDirectory(prefix="pushserver-redis-")
            directory = self._temporary.name
        self.directory = Path(directory)
        if port is None:
            port = free_port()
            while port == _SYSTEM_REDIS_PORT:  # only if the kernel's range includes it
                port = free_port()
        self.port = port
        #: Extra ``redis-server`` arguments (``["--cluster-enabled", "yes"]``).
        self.args = list(args)
        #: A configuration file named before the arguments (``redis-sentinel`` needs one).
        self.config = str(config) if config is not None else None
        #: The log line that says the server is ready.
        self.ready = ready
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
            *([self.config] if self.config else []),
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
        args += self.args
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
        if not any(self.ready in line for line in self.output):
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
            if self.ready in line:
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


#: The ``redis-cli`` :class:`RedisClusterServers` uses to make the cluster: the one on ``PATH``.
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
#: The ``redis-sentinel`` :class:`RedisSentinelServers` runs.
REDIS_SENTINEL = shutil.which("redis-sentinel") or "/usr/bin/redis-sentinel"


def _redis_cli(port: int, *command: str, timeout: float = 5.0) -> str:
    """One command by ``redis-cli`` to 127.0.0.1:``port``; its output ('' if it failed)."""
    try:
        done = subprocess.run(
            [REDIS_CLI, "-h", "127.0.0.1", "-p", str(port), *command],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return ""
    return done.stdout if done.returncode == 0 else ""


def _wait_until(what: str, condition: Any, timeout: float) -> None:
    """Poll ``condition()`` (a state outside this process: nothing to wait on) until true."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what} after {timeout} s")
        time.sleep(0.05)


class _ServerGroup:
    """Start and stop a group of :class:`RedisServer` in directories of their own."""

    #: What :meth:`start` waits for once every server runs (its TimeoutError names it).
    _waiting_for = "the servers to be ready"

    def __init__(self, directory: str | Path | None, prefix: str, startup_timeout: float) -> None:
        self._temporary: tempfile.TemporaryDirectory[str] | None = None
        if directory is None:
            self._temporary = tempfile.TemporaryDirectory(prefix=prefix)
            directory = self._temporary.name
        self.directory = Path(directory)
        self.startup_timeout = startup_timeout
        self.servers: list[RedisServer] = []

    def _add(self, name: str, **kwargs: Any) -> RedisServer:
        path = self.directory / name
        path.mkdir(parents=True, exist_ok=True)
        kwargs.setdefault("port", group_port())
        server = RedisServer(path, **kwargs)
        self.servers.append(server)
        return server

    def start(self) -> Self:
        """Start every server, :meth:`_join` them, and wait until :meth:`_ready` (all of
        them stopped again if that fails)."""
        try:
            for server in self.servers:
                server.start()
            self._join()
            _wait_until(self._waiting_for, self._ready, self.startup_timeout)
        except BaseException:
            self.close()
            raise
        return self

    def _join(self) -> None:
        """What makes the running servers one group (nothing by default)."""

    def _ready(self) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        """Stop every server (SIGTERM) and remove the temporary directory, if one was made."""
        for server in self.servers:
            server.stop()
        if self._temporary is not None:
            self._temporary.cleanup()
            self._temporary = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class RedisClusterServers(_ServerGroup):
    """A private Redis Cluster: ``primaries`` ``redis-server`` processes in cluster mode with
    ``replicas`` replicas each (3 and 1: six processes), on free loopback ports, joined with
    ``redis-cli --cluster create``.

    ``node_timeout`` (milliseconds) is how soon a silent primary counts as failed and its
    replica takes over. ``cluster-require-full-coverage`` is off, so the other shards keep
    serving while one fails over. With ``durable`` each node fsyncs every write (see
    :class:`RedisServer`). :meth:`start` returns once every node reports ``cluster_state:ok``
    and every replica is in sync; ``servers`` lists the processes, :meth:`primary_for` finds
    the one serving a key; after one is crashed (``server.kill()``) :meth:`wait_for_failover`
    waits until its slots are served again. ``store()`` is a ``PUSH_SERVER['store']`` for it.
    """

    def __init__(
        self,
        directory: str | Path | None = None,
        *,
        primaries: int = 3,
        replicas: int = 1,
        node_timeout: int = 1000,
        durable: bool = False,
        startup_timeout: float = 60.0,
    ) -> None:
        super().__init__(directory, "pushserver-cluster-", startup_timeout)
        for index in range((primaries) * (1 + replicas)):
            self._add(
                f"node{index}",
                durable=durable,
                args=[
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", "nodes.conf",
                    # A bus port of its own, as free as the node's (group_port).
                    "--cluster-port", str(group_port()),
                    "--cluster-node-timeout", str(node_timeout),
                    "--cluster-require-full-coverage", "no",
                    "--cluster-replica-validity-factor", "0",
                ],
            )  # fmt: skip
        self.replicas = replicas

    @property
    def ports(self) -> list[int]:
        return [server.port for server in self.servers]

    @property
    def url(self) -> str:
        """A ``redis://`` URL of the first node (a cluster client finds the others)."""
        return self.servers[0].url

    def store(self, **options: Any) -> dict[str, Any]:
        """A ``PUSH_SERVER['store']`` for this cluster, in a ``key_prefix`` of its own."""
        return self.servers[0].store(cluster=True, **options)

    _waiting_for = "the cluster to be ready"

    def _join(self) -> None:
        done = subprocess.run(
            [REDIS_CLI, "--cluster", "create",
             *(f"127.0.0.1:{port}" for port in self.ports),
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=self.startup_timeout,
        )  # fmt: skip
        if done.returncode != 0:
            output = done.stdout + done.stderr
            raise RuntimeError(f"redis-cli --cluster create failed:\n{output}")

    def nodes(self, port: int | None = None) -> list[dict[str, Any]]:
        """``CLUSTER NODES`` as seen by one live node: dicts with ``port``, ``flags``,
        ``primary`` (bool), ``failed`` (bool) and ``slots`` (a list of (first, last))."""
        for asked in [port] if port is not None else self._live_ports():
            text = _redis_cli(asked, "cluster", "nodes")
            if text:
                return [_cluster_node(line) for line in text.splitlines() if line.strip()]
        return []

    def _live_ports(self) -> list[int]:
        return [s.port for s in self.servers if s.process is not None]

    def _ready(self) -> bool:
        for port in self._live_ports():
            if "cluster_state:ok" not in _redis_cli(port, "cluster", "info"):
                return False
            info = _redis_cli(port, "info", "replication")
            if "role:slave" in info and "master_link_status:up" not in info:
                return False
            alive = [n for n in self.nodes(port) if not n["failed"]]
            if len(alive) != len(self._live_ports()):
                return False
        return True

    def slot(self, key: str | bytes) -> int:
        text = key.decode() if isinstance(key, bytes) else key
        return int(_redis_cli(self._live_ports()[0], "cluster", "keyslot", text).strip())

    def primary_for(self, key: str | bytes) -> RedisServer:
        """The live primary serving ``key``'s slot."""
        return self.primary_for_slot(self.slot(key))

    def primaries(self) -> list[RedisServer]:
        return [self._server(n["port"]) for n in self.nodes() if n["primary"] and not n["failed"]]

    def _server(self, port: int) -> RedisServer:
        return next(server for server in self.servers if server.port == port)

    def wait_for_failover(self, killed: RedisServer, timeout: float = 30.0) -> RedisServer:
        """Wait until a replica of ``killed`` (a crashed primary) was promoted and every live
        node reports ``cluster_state:ok``; the new primary."""
        slots = next(n["slots"] for n in self.nodes() if n["port"] == killed.port)
        first = slots[0][0] if slots else 0

        def promoted() -> bool:
            try:
                primary = self.primary_for_slot(first)
            except LookupError:
                return False
            return primary is not killed and all(
                "cluster_state:ok" in _redis_cli(p, "cluster", "info") for p in self._live_ports()
            )

        _wait_until(f"a replica of 127.0.0.1:{killed.port} to take over", promoted, timeout)
        return self.primary_for_slot(first)

    def primary_for_slot(self, slot: int) -> RedisServer:
        for node in self.nodes():
            serves = any(a <= slot <= b for a, b in node["slots"])
            if node["primary"] and not node["failed"] and serves:
                return self._server(node["port"])
        raise LookupError(f"no live primary serves slot {slot}")


def _cluster_node(line: str) -> dict[str, Any]:
    parts = line.split()
    flags = parts[2].split(",")
    slots = []
    for item in parts[8:]:
        if item.startswith("["):
            continue  # a slot being migrated
        first, _, last = item.partition("-")
        slots.append((int(first), int(last or first)))
    return {
        "port": int(parts[1].split("@")[0].rpartition(":")[2]),
        "flags": flags,
        "primary": "master" in flags,
        "failed": "fail" in flags or "fail?" in flags or "noaddr" in flags,
        "slots": slots,
    }


class RedisSentinelServers(_ServerGroup):
    """A private Sentinel set: one primary, ``replicas`` replicas and ``sentinels``
    ``redis-sentinel`` processes watching it as ``service`` (quorum: a majority), on free
    loopback ports.

    ``down_after`` (milliseconds) is how soon a silent primary counts as down. :meth:`start`
    returns once every sentinel knows the primary, its replicas and the other sentinels;
    ``primary`` is the current primary (asked of the sentinels), :meth:`wait_for_failover`
    waits until another one took over. ``store()`` is a ``PUSH_SERVER['store']`` for it.
    """

    def __init__(
        self,
        directory: str | Path | None = None,
        *,
        service: str = "pushserver",
        replicas: int = 2,
        sentinels: int = 3,
        down_after: int = 1000,
        durable: bool = False,
        startup_timeout: float = 60.0,
    ) -> None:
        super().__init__(directory, "pushserver-sentinel-", startup_timeout)
        self.service = service
        self.data = [self._add("primary", durable=durable)]
        primary_port = self.data[0].port
        for index in range(replicas):
            self.data.append(
                self._add(
                    f"replica{index}",
                    durable=durable,
                    args=["--replicaof", "127.0.0.1", str(primary_port)],
                )
            )
        self.sentinels: list[RedisServer] = []
        quorum = sentinels // 2 + 1
        for index in range(sentinels):
            config = self.directory / f"sentinel{index}.conf"
            config.write_text(
                f"sentinel monitor {service} 127.0.0.1 {primary_port} {quorum}\n"
                f"sentinel down-after-milliseconds {service} {down_after}\n"
                f"sentinel failover-timeout {service} {max(down_after * 3, 3000)}\n"
                f"sentinel parallel-syncs {service} {replicas}\n"
            )
            self.sentinels.append(
                self._add(
                    f"sentinel{index}",
                    executable=REDIS_SENTINEL,
                    config=config,
                    ready="+monitor master",
                )
            )

    @property
    def sentinel_addresses(self) -> list[str]:
        return [f"127.0.0.1:{s.port}" for s in self.sentinels]

    def store(self, **options: Any) -> dict[str, Any]:
        """A ``PUSH_SERVER['store']`` for this set, in a ``key_prefix`` of its own."""
        store = self.data[0].store(sentinels=self.sentinel_addresses, service=self.service)
        del store["host"], store["port"]
        return {**store, **options}

    _waiting_for = "the sentinels to see everything"

    def _ready(self) -> bool:
        replicas = len(self.data) - 1
        for sentinel in self.sentinels:
            text = _redis_cli(sentinel.port, "sentinel", "master", self.service)
            lines = text.split()
            fields = dict(zip(lines[::2], lines[1::2], strict=False))
            if int(fields.get("num-slaves", -1)) < replicas:
                return False
            if int(fields.get("num-other-sentinels", -1)) < len(self.sentinels) - 1:
                return False
        for server in self.data[1:]:
            if "master_link_status:up" not in _redis_cli(server.port, "info", "replication"):
                return False
        return True

    def primary_port(self) -> int | None:
        """The primary's port according to a live sentinel."""
        for sentinel in self.sentinels:
            if sentinel.process is None:
                continue
            text = _redis_cli(
                sentinel.port, "sentinel", "get-master-addr-by-name", self.service
            ).split()
            if len(text) == 2:
                return int(text[1])
        return None

    @property
    def primary(self) -> RedisServer:
        port = self.primary_port()
        return next(server for server in self.data if server.port == port)

    def wait_for_failover(self, killed: RedisServer, timeout: float = 30.0) -> RedisServer:
        """Wait until the sentinels promoted a replica in place of ``killed`` and it
        answers as primary; the new primary."""

        def promoted() -> bool:
            port = self.primary_port()
            return (
                port is not None
                and port != killed.port
                and "role:master" in _redis_cli(port, "info", "replication")
            )

        _wait_until(f"the sentinels to replace 127.0.0.1:{killed.port}", promoted, timeout)
        return self.primary
