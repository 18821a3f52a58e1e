"""Everything pushserver knows of hypercorn, its embedded HTTP server: the one engine seam.

* :func:`build_config`: hypercorn's settings from pushserver's.
* :mod:`.fixes`: the fixes to hypercorn (and wsproto, trio) internals, each naming the
  upstream bug it works around; :func:`apply_fixes` applies them.
* :mod:`.worker`: pushserver's asyncio worker, hypercorn's protocols on a lighter
  connection layer; it offers the transports a :class:`pushserver.engine.Inbox` through the
  request scope, so they watch a client without a task and never import it.
* :func:`run`: serve an app on a bound socket with the worker for the running anyio backend.
  ``PUSHSERVER_HYPERCORN_WORKER=stock`` (:data:`WORKER_VARIABLE`) serves asyncio with
  hypercorn's own worker instead (the fixes still apply): what an upgrade of hypercorn is
  first tried with, before the worker is ported to its new internals.

:func:`pushserver.server.serve` drives these; no other module imports hypercorn.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, cast

from hypercorn.config import Config, Sockets

from . import fixes

if TYPE_CHECKING:

    class _WorkerServe(Protocol):
        """What hypercorn's two ``worker_serve`` and pushserver's have in common, as
        :func:`run` calls them."""

        def __call__(
            self,
            app: Any,
            config: Config,
            *,
            sockets: Sockets,
            shutdown_trigger: Callable[[], Awaitable[Any]],
        ) -> Awaitable[None]: ...


ACCESS_LOG_FORMAT = '%(h)s "%(r)s" %(s)s %(b)s %(L)ss'
#: The environment variable choosing the asyncio worker: ``stock`` for hypercorn's own,
#: anything else (or unset) for pushserver's (:mod:`.worker`).
WORKER_VARIABLE = "PUSHSERVER_HYPERCORN_WORKER"


def stock_worker() -> bool:
    """Whether hypercorn's own asyncio worker serves (:data:`WORKER_VARIABLE`)."""
    return os.environ.get(WORKER_VARIABLE, "").strip().lower() == "stock"


def version() -> str:
    """The installed hypercorn's version ("?" when its metadata is missing)."""
    try:
        from importlib.metadata import version

        return version("hypercorn")
    except Exception:  # pragma: no cover - metadata missing in odd installs
        return "?"


def build_config(
    *,
    access_log: bool,
    graceful_timeout: float,
    header_timeout: float,
    max_header_size: int,
    backlog: int,
    log_format: str = "text",
) -> Config:
    """hypercorn's settings; ``header_timeout`` and ``max_header_size`` are the top-level
    ``client_header_timeout`` and ``max_header_size``, ``backlog`` the listen backlog."""
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
    config.backlog = backlog
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


def close_every_connection_after_its_response(config: Config) -> None:
    """From now on every response says ``Connection: close`` (shutdown): hypercorn adds it
    once a connection has served ``keep_alive_max_requests`` requests, made 0 here."""
    config.keep_alive_max_requests = 0


def apply_fixes(*, on_trio: bool) -> None:
    """Apply every fix in :mod:`.fixes` this backend needs (each is idempotent)."""
    fixes.end_refused_websockets()
    fixes.refuse_non_ascii_websocket_handshakes()
    fixes.decline_bad_h2c_upgrades()
    fixes.lighter_websocket_connections()
    fixes.send_websocket_pings()
    fixes.free_closed_websocket_parsers()
    if on_trio:
        fixes.contain_connection_errors_on_trio()
        fixes.free_closed_connections_on_trio()
        fixes.translate_trio_socket_errors_without_cycles()


async def run(
    app: Any,
    config: Config,
    sock: socket.socket,
    *,
    on_trio: bool,
    shutdown_trigger: Callable[[], Awaitable[Any]],
) -> None:
    """Serve ``app`` on the bound plain-TCP ``sock`` until ``shutdown_trigger`` returns:
    hypercorn's own trio worker on trio; on asyncio pushserver's (:mod:`.worker`), or
    hypercorn's own when :func:`stock_worker` says so."""
    sockets = Sockets(secure_sockets=[], insecure_sockets=[sock], quic_sockets=[])
    wrapped = cast(Any, _ASGI(app))  # hypercorn types the app with its TypedDicts
    worker_serve: _WorkerServe
    if on_trio:
        from hypercorn.trio.run import worker_serve
    elif stock_worker():
        from hypercorn.asyncio.run import worker_serve
    else:
        from .worker import worker_serve
    await worker_serve(wrapped, config, sockets=sockets, shutdown_trigger=shutdown_trigger)


class _ASGI:
    """The app as hypercorn calls it (with its sync-spawn and call-soon helpers, which
    pushserver does not use). Not ``hypercorn.utils.wrap_app``: its wrapper awaits the app
    in a coroutine of its own, one more frame held by every open connection (368 bytes);
    this returns the app's coroutine for hypercorn to await directly. A
    :class:`pushserver.app.PushServer` is asked for it through ``awaitable_for``, which
    leaves out its own ``__call__`` frame where it can."""

    __slots__ = ("app",)

    def __init__(self, app: Any) -> None:
        self.app = getattr(app, "awaitable_for", app)

    def __call__(
        self, scope: Any, receive: Any, send: Any, sync_spawn: Any, call_soon: Any
    ) -> Awaitable[None]:
        return cast(Awaitable[None], self.app(scope, receive, send))
