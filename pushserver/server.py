"""Run a :class:`~pushserver.app.PushServer` under hypercorn, embedded, on anyio.

No subprocess: :func:`serve` binds the socket itself (so a busy port is a clear error
before anything starts, and port 0 picks a free one), then hands it to hypercorn's own
worker for the running anyio backend (asyncio or trio).

While it serves, the app is :data:`pushserver.running.registry`'s current server, for
in-process publishing. trio stays a supported backend, with its own hypercorn fixes
(docs/topics.md, "Why trio stays").
"""

from __future__ import annotations

import gc
import logging
import signal
import socket
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, cast

import anyio
import anyio.lowlevel
from hypercorn.config import Config, Sockets

from . import hypercorn_fixes
from ._async import asyncio_loop
from .app import PushServer
from .config import DEFAULT_CLIENT_HEADER_TIMEOUT, DEFAULT_MAX_HEADER_SIZE
from .running import format_host, registry

logger = logging.getLogger("pushserver")

BACKLOG = 4096
#: The cyclic collector's thresholds while serving (Python's default: 700, 10, 10). Every
#: held connection is a few hundred tracked objects, and fan-out makes many short-lived
#: ones: at the defaults, full collections walking every connection took most of the CPU
#: of a fan-out to 10,000 subscribers (bench/NOTES.md, the tuning log). With these the
#: interpreter almost never runs a full collection, so nothing a connection leaves behind
#: may depend on one: a closed connection's objects must be freed by reference counting
#: alone (tests/test_server_gc.py; on trio pushserver.hypercorn_fixes breaks the cycles
#: hypercorn leaves, which the soak (bench/NOTES.md) saw pile up at 4 MiB a minute, and
#: on Python 3.12 and 3.13 the one trio's socket streams leave; on asyncio pushserver's own
#: connection layer leaves none; on both, hypercorn_fixes breaks the one wsproto leaves per
#: WebSocket).
GC_THRESHOLDS = (50_000, 20, 100)
#: Python's own thresholds: a process that changed them chose its own, and keeps them.
DEFAULT_GC_THRESHOLDS = (700, 10, 10)


def raise_gc_thresholds() -> tuple[int, int, int]:
    """Set :data:`GC_THRESHOLDS` unless the process chose its own; the thresholds before,
    to put back when serving ends."""
    thresholds = gc.get_threshold()
    if thresholds == DEFAULT_GC_THRESHOLDS:
        gc.set_threshold(*GC_THRESHOLDS)
    return thresholds


ACCESS_LOG_FORMAT = '%(h)s "%(r)s" %(s)s %(b)s %(L)ss'


def bind(
    address: str, port: int, *, backlog: int = BACKLOG, reuse_port: bool = False
) -> socket.socket:
    """A listening TCP socket on ``address:port`` (IPv6 when the address is). With
    ``reuse_port`` several such sockets can share the port (``runpushserver --workers``)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio turns Nagle off only on sockets that say they are TCP,
    # and with Nagle on every response written in two parts waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            # Linux spreads incoming connections over every socket bound with it.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def hypercorn_config(
    *,
    access_log: bool = True,
    graceful_timeout: float = 5.0,
    header_timeout: float = DEFAULT_CLIENT_HEADER_TIMEOUT,
    max_header_size: int = DEFAULT_MAX_HEADER_SIZE,
    log_format: str = "text",
) -> Config:
    """hypercorn's settings; ``header_timeout`` and ``max_header_size`` are the top-level
    ``client_header_timeout`` and ``max_header_size``."""
    config = Config()
    config.include_server_header = False  # the app sends Server (the 'servername' setting)
    config.graceful_timeout = graceful_timeout
    # hypercorn's per-connection idle timer runs from when a connection opens, and again
    # from the end of each response, until a whole request head has arrived (a request in
    # progress, a held long poll or a stream, stops it): it is the header read timeout
    # (slowloris) and the keep-alive idle timeout in one. Not read_timeout: that one would
    # cut quiet event streams and WebSockets.
    config.keep_alive_timeout = header_timeout
    # h11 answers 431 to a head larger than this (a WebSocket upgrade is an h11 request
    # too); HTTP/2 (h2c) gets the same bound on its decoded header list.
    config.h11_max_incomplete_size = max_header_size
    config.h2_max_header_list_size = max_header_size
    # hypercorn calls listen() again with its own backlog (default 100), which would undo
    # bind()'s: 10,000 subscribers connecting at once then wait on SYN retransmits.
    config.backlog = BACKLOG
    # A long-poll client makes one request per message on one connection; hypercorn's
    # default (1,000) would close it mid-stream for no benefit.
    config.keep_alive_max_requests = 2**31
    if access_log:
        config.accesslog = logging.getLogger("pushserver.access")
        config.access_log_format = ACCESS_LOG_FORMAT
        if log_format == "json":
            from .logs import AccessLogger

            config.logger_class = AccessLogger
    config.errorlog = logging.getLogger("pushserver.server")
    return config


async def wait_for_signals() -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            logger.info("received %s, shutting down", signal.Signals(signum).name)
            return


def _running_trio() -> bool:
    return asyncio_loop() is None  # anyio runs only asyncio and trio


class _ASGI:
    """The app as hypercorn calls it (with its sync-spawn and call-soon helpers, which
    pushserver does not use). Not ``hypercorn.utils.wrap_app``: its wrapper awaits the app
    in a coroutine of its own, one more frame held by every open connection (368 bytes);
    this returns the app's coroutine for hypercorn to await directly."""

    __slots__ = ("app",)

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(
        self, scope: Any, receive: Any, send: Any, sync_spawn: Any, call_soon: Any
    ) -> Awaitable[None]:
        return cast(Awaitable[None], self.app(scope, receive, send))


_detached: set[Any] = set()


def _spawn_system_task(function: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``function`` beside hypercorn's tasks (it must not raise)."""
    if _running_trio():
        import trio

        trio.lowlevel.spawn_system_task(function)
    else:
        import asyncio

        task = asyncio.get_running_loop().create_task(function())
        _detached.add(task)  # a strong reference until it is done
        task.add_done_callback(_detached.discard)


def _quiet_cancelled_connections() -> None:
    """Connections still open at the end of the graceful period are cancelled: on Python
    3.11, asyncio's stream callback then logs each as "Exception in callback" with a
    CancelledError traceback. Cutting them is the plan, not an error: keep the log clean."""
    import asyncio

    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if isinstance(context.get("exception"), asyncio.CancelledError):
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


#: Seconds a stopping server has, after ``graceful_timeout``, to close its stores before
#: whatever is left is cancelled: the process exits within the sum whatever clients do.
CLOSE_GRACE = 3.0


async def serve(
    app: PushServer,
    sock: socket.socket,
    *,
    access_log: bool = True,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    graceful_timeout: float = 5.0,
    log_format: str = "text",
) -> None:
    """Serve ``app`` on the bound ``sock`` until ``shutdown_trigger`` returns (default: a
    SIGINT or SIGTERM), then shut down within ``graceful_timeout`` + :data:`CLOSE_GRACE`
    seconds.

    On the way out, in this order: responses started from then on say ``Connection:
    close``; hypercorn closes the listening socket (new connections are refused) and idle
    keep-alive connections; then held subscribers are released (long polls answer 304,
    event streams end with a ``retry:`` hint, WebSockets close with 1001) and new publishes
    get 503. The requests in flight, publishes included, get up to ``graceful_timeout``
    seconds to finish; whatever is still open then (a client that stopped reading, a body
    that stopped arriving) is cut, and the stores are closed.
    """
    thresholds = raise_gc_thresholds()
    limits: dict[str, Any] = {}
    if isinstance(app, PushServer):
        limits["header_timeout"] = app.config.client_header_timeout
        limits["max_header_size"] = app.config.max_header_size
    config = hypercorn_config(
        access_log=access_log, graceful_timeout=graceful_timeout, log_format=log_format, **limits
    )
    hypercorn_fixes.end_refused_websockets()
    hypercorn_fixes.refuse_non_ascii_websocket_handshakes()
    hypercorn_fixes.decline_bad_h2c_upgrades()
    hypercorn_fixes.lighter_websocket_connections()
    hypercorn_fixes.send_websocket_pings()
    hypercorn_fixes.free_closed_websocket_parsers()
    if _running_trio():
        hypercorn_fixes.contain_connection_errors_on_trio()
        hypercorn_fixes.free_closed_connections_on_trio()
        hypercorn_fixes.translate_trio_socket_errors_without_cycles()
    trigger = shutdown_trigger or wait_for_signals
    # The last resort: hypercorn bounds the wait for connections by graceful_timeout, except
    # on Python >= 3.12.1, where its Server.wait_closed() waits for every connection first
    # (hypercorn issue 308). This deadline, set once shutdown begins, cuts that wait short.
    bound = anyio.CancelScope()

    async def shutdown() -> None:
        await trigger()
        bound.deadline = anyio.current_time() + graceful_timeout + CLOSE_GRACE
        # hypercorn adds "Connection: close" to every response once a connection has served
        # this many requests: from now on, all of them. A client then opens its next request
        # on a new connection (elsewhere) instead of racing the close of this one.
        config.keep_alive_max_requests = 0
        if not _running_trio():
            _quiet_cancelled_connections()
        _spawn_system_task(release)

    async def release() -> None:
        # Subscribers are told to reconnect once hypercorn has closed the listening socket
        # (it does so right after this trigger returns): reconnecting at once, they are
        # refused here and go elsewhere, instead of reaching a socket about to be closed.
        with anyio.move_on_after(1.0):
            while sock.fileno() != -1:
                await anyio.sleep(0.001)
        app.begin_shutdown()

    address, port = sock.getsockname()[:2]
    # While it serves, send_update in this process publishes straight into it.
    registry.register(app, anyio.lowlevel.current_token(), format_host(address, port))
    try:
        sockets = Sockets(secure_sockets=[], insecure_sockets=[sock], quic_sockets=[])
        wrapped = cast(Any, _ASGI(app))  # hypercorn types the app with its TypedDicts
        with bound:
            if _running_trio():
                from hypercorn.trio.run import worker_serve as trio_serve

                await trio_serve(wrapped, config, sockets=sockets, shutdown_trigger=shutdown)
            else:
                from .asyncio_worker import worker_serve as asyncio_serve

                await asyncio_serve(wrapped, config, sockets=sockets, shutdown_trigger=shutdown)
        if bound.cancelled_caught:
            logger.warning(
                "shutdown took longer than %gs: cut the connections left", graceful_timeout
            )
            with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_GRACE):
                await app.aclose()  # if the lifespan did not get to it
    finally:
        registry.unregister(app)
        gc.set_threshold(*thresholds)
