"""Run a :class:`~pushserver.app.PushServer` under hypercorn, embedded, on anyio.

No subprocess: :func:`serve` binds the socket itself (so a busy port is a clear error
before anything starts, and port 0 picks a free one), then hands it to hypercorn through
:mod:`pushserver.hypercorn` (its config, its fixes and the worker for the running anyio
backend: pushserver's own on asyncio, hypercorn's on trio).

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
from typing import Any

import anyio
import anyio.lowlevel

from . import hypercorn
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
#: alone (tests/test_server_gc.py; on trio pushserver.hypercorn.fixes breaks the cycles
#: hypercorn leaves, which the soak (bench/NOTES.md) saw pile up at 4 MiB a minute, and
#: on Python 3.12 and 3.13 the one trio's socket streams leave; on asyncio pushserver's own
#: connection layer leaves none; on both, hypercorn.fixes breaks the one wsproto leaves per
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


async def wait_for_signals() -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            logger.info("received %s, shutting down", signal.Signals(signum).name)
            return


def _running_trio() -> bool:
    return asyncio_loop() is None  # anyio runs only asyncio and trio


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
    limits: dict[str, Any] = {
        "header_timeout": DEFAULT_CLIENT_HEADER_TIMEOUT,
        "max_header_size": DEFAULT_MAX_HEADER_SIZE,
    }
    if isinstance(app, PushServer):
        limits["header_timeout"] = app.config.client_header_timeout
        limits["max_header_size"] = app.config.max_header_size
    config = hypercorn.build_config(
        access_log=access_log,
        graceful_timeout=graceful_timeout,
        log_format=log_format,
        backlog=BACKLOG,
        **limits,
    )
    hypercorn.apply_fixes(on_trio=_running_trio())
    trigger = shutdown_trigger or wait_for_signals
    # The last resort: hypercorn bounds the wait for connections by graceful_timeout, except
    # on Python >= 3.12.1, where its Server.wait_closed() waits for every connection first
    # (hypercorn issue 308). This deadline, set once shutdown begins, cuts that wait short.
    bound = anyio.CancelScope()

    async def shutdown() -> None:
        await trigger()
        bound.deadline = anyio.current_time() + graceful_timeout + CLOSE_GRACE
        # A client then opens its next request on a new connection (elsewhere) instead of
        # racing the close of this one.
        hypercorn.close_every_connection_after_its_response(config)
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
        with bound:
            await hypercorn.run(
                app, config, sock, on_trio=_running_trio(), shutdown_trigger=shutdown
            )
        if bound.cancelled_caught:
            logger.warning(
                "shutdown took longer than %gs: cut the connections left", graceful_timeout
            )
            with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_GRACE):
                await app.aclose()  # if the lifespan did not get to it
    finally:
        registry.unregister(app)
        gc.set_threshold(*thresholds)
