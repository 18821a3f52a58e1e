"""An ASGI app under uvicorn instead of hypercorn, for the floor and the memory probe.

``bench/floor.py --asgi-server uvicorn`` and ``bench/memprobe.py --asgi-server uvicorn`` use
:func:`serve` (``bench/server.py --asgi-server uvicorn`` runs the shipped
``pushserver.servers.serve_uvicorn`` instead, as ``runpushserver --server uvicorn`` does;
:func:`available` gates every uvicorn target): uvicorn with httptools (HTTP/1.1), its
``websockets-sansio`` WebSocket protocol, the app's lifespan on, on the running (uvloop)
loop, accepting on the socket already bound by ``pushserver.server.bind``. The garbage
collector gets the thresholds ``pushserver.server.serve`` sets under hypercorn, so the
comparison differs in the server only. uvicorn is not a dependency of pushserver: the bench
skips these targets without it.
"""

from __future__ import annotations

import gc
import os
import socket
from typing import Any

#: uvicorn's sans-I/O WebSocket protocol on the ``websockets`` package (its legacy one is
#: deprecated; wsproto is not installed). ``BENCH_UVICORN_WS=websockets`` picks the legacy one.
WS = os.environ.get("BENCH_UVICORN_WS", "websockets-sansio")


def available() -> str | None:
    """None when uvicorn and httptools can be imported, else why not."""
    try:
        import httptools  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        return f"not installed ({exc.name})"
    return None


async def serve(app: Any, sock: socket.socket) -> None:
    """Serve ``app`` on ``sock`` until SIGINT/SIGTERM, then shut it down (lifespan too)."""
    import uvicorn

    from pushserver.server import GC_THRESHOLDS

    config = uvicorn.Config(
        app,
        http="httptools",
        ws=WS,
        lifespan="on",
        access_log=False,
        server_header=False,  # the app sends its own
        log_level="warning",
        backlog=4096,
        # Streams live as long as their clients: no graceful-shutdown wait in the bench.
        timeout_graceful_shutdown=1,
        ws_ping_interval=None,  # hypercorn's default: no server pings
        ws_per_message_deflate=False,  # the bench's clients offer no extension anyway
    )
    thresholds = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        await uvicorn.Server(config).serve(sockets=[sock])
    finally:
        gc.set_threshold(*thresholds)
