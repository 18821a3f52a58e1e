"""``runpushserver --server uvicorn|granian``: the application of :mod:`pushserver.asgi`
under another server than the embedded hypercorn.

What each server does with the settings that shape hypercorn (docs/command.md):

- ``max_header_size``: the push server answers 431 under both.
- ``client_header_timeout``: granian's ``--http1-header-read-timeout`` (at most 60 s);
  uvicorn bounds only idle keep-alive connections (``timeout_keep_alive``), not a head
  that arrives slowly, so the key set explicitly is refused under uvicorn.
- ``shutdown_timeout``: uvicorn's ``timeout_graceful_shutdown``, granian's
  ``--workers-kill-timeout``.
- ``max_connections``: the push server answers 503 under both.

Neither runs on trio or writes JSON access logs: those options are refused.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
from typing import Any

from .running import registry

#: --server choices; hypercorn is the default and always installed.
SERVERS = ("hypercorn", "uvicorn", "granian")
#: The import each extra needs, and the extra that installs it.
_NEEDS = {"uvicorn": ("uvicorn", "httptools"), "granian": ("granian",)}
#: What to install for each: the packages of the extra by name, since PyPI's
#: ``django-pushserver`` is the 2014 release (docs/index.md#install).
_INSTALL = {"uvicorn": "pip install uvicorn httptools uvloop", "granian": "pip install granian"}
#: granian's largest header read timeout, in seconds.
GRANIAN_MAX_HEADER_TIMEOUT = 60
#: Environment variable carrying runpushserver's options to the application granian loads.
OPTIONS_ENV = "PUSHSERVER_RUN_OPTIONS"


def problems(server: str, raw_settings: Any, options: dict[str, Any]) -> list[str]:
    """Why ``server`` cannot run with these settings and options (empty: it can)."""
    if server == "hypercorn":
        return []
    found: list[str] = []
    for module in _NEEDS[server]:
        try:
            __import__(module)
        except ImportError:
            found.append(
                f"--server {server} needs the {module!r} package: "
                f"{_INSTALL[server]} (the [{server}] extra)"
            )
            break
    if options.get("loop") == "trio":
        found.append(f"--server {server} runs on asyncio only: use --loop asyncio or uvloop.")
    if options.get("log_format") == "json":
        found.append(
            f"--log-format json formats hypercorn's access log; {server} writes its own: "
            "use --server hypercorn or drop --log-format json."
        )
    raw = raw_settings if isinstance(raw_settings, dict) else {}
    if server == "uvicorn" and "client_header_timeout" in raw:
        found.append(
            "PUSH_SERVER['client_header_timeout'] cannot be honoured by uvicorn, which does "
            "not bound the time a request head takes to arrive: remove the key (uvicorn then "
            "closes idle keep-alive connections after the default) or use --server hypercorn "
            "or granian."
        )
    if server == "granian":
        timeout = raw.get("client_header_timeout")
        if isinstance(timeout, int | float) and timeout > GRANIAN_MAX_HEADER_TIMEOUT:
            found.append(
                f"PUSH_SERVER['client_header_timeout'] = {timeout}: granian reads a request "
                f"head for at most {GRANIAN_MAX_HEADER_TIMEOUT} s; set it to "
                f"{GRANIAN_MAX_HEADER_TIMEOUT} or less, or use --server hypercorn."
            )
        if options.get("workers", 1) > 1:
            found.append(
                "--workers with --server granian: use granian's own workers instead "
                "(granian --workers N ... with pushserver.asgi), or --server hypercorn."
            )
    return found


def version(server: str) -> str:
    from importlib.metadata import version as installed

    try:
        return installed(server)
    except Exception:  # pragma: no cover - metadata missing in odd installs
        return "?"


async def serve_uvicorn(
    app: Any, sock: socket.socket, *, access_log: bool, shutdown_timeout: float, config: Any
) -> None:
    """Serve ``app`` on the bound ``sock`` with uvicorn (httptools) until SIGINT/SIGTERM:
    uvicorn stops listening, the app releases held subscribers (pushserver.asgi), requests
    in flight get ``shutdown_timeout`` seconds, then the lifespan closes the stores."""
    import gc

    import uvicorn

    from .server import BACKLOG, raise_gc_thresholds

    server_config = uvicorn.Config(
        app,
        http="httptools",
        ws="websockets-sansio",
        lifespan="on",
        access_log=access_log,
        server_header=False,  # the app sends its own (the 'servername' setting)
        # The peer address is the TCP peer's, as under hypercorn: publishers' allow_from
        # must not trust X-Forwarded-For (and the middleware cost 1-2 % of a request).
        proxy_headers=False,
        date_header=True,
        backlog=BACKLOG,
        timeout_graceful_shutdown=math.ceil(shutdown_timeout),
        timeout_keep_alive=math.ceil(config.client_header_timeout),
        ws_ping_interval=None,  # the locations' ping_interval does it
        ws_per_message_deflate=False,
        ws_max_size=2**20,
        log_config=None,  # pushserver's logging setup is kept
    )
    thresholds = raise_gc_thresholds()
    try:
        await uvicorn.Server(server_config).serve(sockets=[sock])
    finally:
        gc.set_threshold(*thresholds)
        # As pushserver.server.serve does: once serving is over, send_update in this process
        # no longer finds this app (pushserver.asgi registered it on the first request).
        registry.unregister(app)


def granian_command(
    address: str, port: int, options: dict[str, Any], transports: tuple[str, ...], config: Any
) -> tuple[list[str], dict[str, str]]:
    """The granian command line (and environment) serving :func:`command_application`."""
    from .server import BACKLOG

    run = {
        "allrequests": bool(options.get("allrequests")),
        "forcehost": options.get("forcehost"),
        "transports": list(transports),
    }
    command = [
        sys.executable, "-m", "granian",
        "--interface", "asgi",
        "--host", address,
        "--port", str(port),
        "--backlog", str(BACKLOG),
        "--loop", "uvloop" if options.get("loop") == "uvloop" else "asyncio",
        # The default (75 s) is over granian's limit: 60 s then (a value set over it is
        # refused by problems()).
        "--http1-header-read-timeout",
        str(int(min(config.client_header_timeout, GRANIAN_MAX_HEADER_TIMEOUT) * 1000)),
        "--workers-kill-timeout", str(max(1, math.ceil(options["shutdown_timeout"]))),
        "--no-ws" if "websocket" not in transports else "--ws",
        "--factory",
    ]  # fmt: skip
    if options.get("access_log", True):
        command.append("--access-log")
    command.append("pushserver.asgi:command_application")
    env = {
        **os.environ,
        OPTIONS_ENV: json.dumps(run),
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
    }
    return command, env
