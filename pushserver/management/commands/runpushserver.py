"""``./manage.py runpushserver [addrport] [-6] [--allrequests] [--forcehost HOST]
[--transport NAME] [--server hypercorn|uvicorn|granian] [--workers N]
[--shutdown-timeout SECONDS] [--reload|--noreload]``

``--server`` picks the HTTP server for the application :mod:`pushserver.asgi` builds
(:mod:`pushserver.servers`: what each does with the settings that shape hypercorn).

With ``DEBUG = True`` (or ``--reload``) it restarts itself when a Python module changes, as
``runserver`` does, through Django's autoreloader: this process watches and a child serves
(in a thread, the reloader keeping the main one); a change ends the child and a new one
starts, so channels in a memory store are lost. ``--noreload``, ``DEBUG = False``,
``--workers N`` (N > 1) or ``--server granian`` (which replaces this process) serve without
it.

With ``--workers N`` (N > 1) this process binds the port, forks N workers that each serve
it (on Linux each has its own socket on the port, ``SO_REUSEPORT``, so the kernel spreads
connections evenly; elsewhere they share one), and supervises them: SIGINT/SIGTERM are
passed on, a worker that dies is replaced. Workers share channels only through a shared
store, so memory stores are refused.

A stop signal shuts a server down within ``--shutdown-timeout`` (``PUSH_SERVER
['shutdown_timeout']``) seconds plus the time to close its stores (see
:func:`pushserver.server.serve`); with workers, :class:`pushserver.supervisor.Supervisor`
stops listening at once and kills a worker still running
:data:`~pushserver.supervisor.KILL_AFTER` seconds past that.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import signal
import socket
import sys
import threading
from datetime import datetime
from typing import Any, TextIO, cast

import anyio
import django
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser, SystemCheckError
from django.core.management.commands.runserver import naiveip_re
from django.utils.regex_helper import _lazy_re_compile

from pushserver import __version__, hypercorn, servers
from pushserver.config import AVAILABLE_TRANSPORTS, TRANSPORTS
from pushserver.running import format_host, registry
from pushserver.settings import get_config
from pushserver.supervisor import STOP_SIGNALS, CrashLoop, Supervisor

FQDN_RE = _lazy_re_compile(r"^[a-zA-Z0-9.-]+$")

logger = logging.getLogger("pushserver")


class Command(BaseCommand):
    help = "Starts a push server."
    # As runserver: the checks run where the server runs (once per reload, in the child), and
    # after the port is bound, so that send_update's host is known (pushserver.W121).
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("addrport", nargs="?", help="[optional port number, or ipaddr:port]")
        parser.add_argument(
            "--ipv6",
            "-6",
            action="store_true",
            dest="use_ipv6",
            help="Tells Django to use an IPv6 address.",
        )
        parser.add_argument(
            "--allrequests", action="store_true", help="Process also non-push requests."
        )
        parser.add_argument(
            "--forcehost",
            help="When processing also non-push requests, force all request to one host",
        )
        parser.add_argument(
            "--transport",
            action="append",
            dest="transports",
            metavar="NAME",
            help=f"Serve only this transport (repeatable, or 'all'): {', '.join(TRANSPORTS)}.",
        )
        parser.add_argument(
            "--loop",
            choices=("asyncio", "uvloop", "trio"),
            default="asyncio",
            help="Event loop to run on (default asyncio; uvloop needs the uvloop package).",
        )
        # -- --server (issue 14): another ASGI server for pushserver.asgi's application --
        parser.add_argument(
            "--server",
            choices=servers.SERVERS,
            default="hypercorn",
            help="The HTTP server: hypercorn (embedded, default), or uvicorn or granian "
            "(the [uvicorn] and [granian] extras).",
        )
        parser.add_argument(
            "--workers",
            type=int,
            default=1,
            metavar="N",
            help="Run N worker processes sharing the port (N > 1 needs a redis store).",
        )
        parser.add_argument(
            "--shutdown-timeout",
            type=float,
            metavar="SECONDS",
            help="On SIGTERM/SIGINT, give in-flight requests this long to finish "
            "(default: PUSH_SERVER['shutdown_timeout'], 5).",
        )
        parser.add_argument(
            "--no-access-log",
            action="store_false",
            dest="access_log",
            help="Do not log each request.",
        )
        parser.add_argument(
            "--noreload",
            action="store_false",
            dest="use_reloader",
            default=None,
            help="Do not restart when code changes (the default with DEBUG = False).",
        )
        parser.add_argument(
            "--reload",
            action="store_true",
            dest="use_reloader",
            help="Restart when code changes (the default with DEBUG = True).",
        )
        parser.add_argument("--skip-checks", action="store_true", help="Skip system checks.")
        parser.add_argument(
            "--log-format",
            choices=("text", "json"),
            default="text",
            help="Log lines as text (default) or as one JSON object each.",
        )

    def resolve_address(self, options: dict[str, Any]) -> tuple[str, int]:
        config = get_config()
        use_ipv6 = options["use_ipv6"]
        address: str | None = None
        port: int | None = None
        if options.get("addrport"):
            match = re.match(naiveip_re, options["addrport"])
            if match is None:
                raise CommandError(
                    f'"{options["addrport"]}" is not a valid port number or address:port pair.'
                )
            address, _ipv4, ipv6, fqdn, port_text = match.groups()
            if not port_text.isdigit():
                raise CommandError(f"{port_text!r} is not a valid port number.")
            port = int(port_text)
            if ipv6:
                address = address[1:-1]
                use_ipv6 = True
            elif use_ipv6 and address and not fqdn:
                raise CommandError(f'"{address}" is not a valid IPv6 address.')
        if address is None:
            address = config.address
        if port is None:
            port = config.port
        if address is None:
            address = "::1" if use_ipv6 else "127.0.0.1"
        if port is None:
            port = 8000 if options["allrequests"] else 8001
        if not 0 <= port <= 65535:
            raise CommandError(f"{port} is not a valid port number.")
        return address, port

    def resolve_transports(self, names: list[str] | None) -> tuple[str, ...]:
        if not names:
            return AVAILABLE_TRANSPORTS
        chosen: list[str] = []
        for name in names:
            if name == "all":
                return AVAILABLE_TRANSPORTS
            if name not in TRANSPORTS:
                raise CommandError(
                    f"--transport {name!r} is unknown. "
                    f"Choose from: {', '.join(TRANSPORTS)}, or 'all'."
                )
            if name not in AVAILABLE_TRANSPORTS:
                raise CommandError(
                    f"--transport {name!r} is not available in this version. "
                    f"Available: {', '.join(AVAILABLE_TRANSPORTS)}."
                )
            chosen.append(name)
        return tuple(dict.fromkeys(chosen))

    def resolve_shutdown_timeout(self, value: float | None) -> float:
        if value is None:
            return get_config().shutdown_timeout
        if not 0 < value < float("inf"):
            raise CommandError(f"--shutdown-timeout must be a number of seconds > 0, not {value}.")
        return value

    def check_workers(self, workers: int) -> None:
        if workers < 1:
            raise CommandError(f"--workers must be 1 or more, not {workers}.")
        if workers == 1:
            return
        if not hasattr(os, "fork"):
            raise CommandError("--workers needs os.fork(), which this platform lacks.")
        from pushserver.backends import MemoryBackend, backend_class

        for store in get_config().stores.values():
            try:
                shared = not issubclass(backend_class(store.type), MemoryBackend)
            except (ImportError, AttributeError, TypeError, ValueError):
                continue  # the system checks report it
            if not shared:
                raise CommandError(
                    f"--workers {workers} cannot run with store {store.name!r}: it is a "
                    f"{store.type!r} store, so each worker would keep channels of its own and "
                    "a message published to one worker would not reach subscribers of the "
                    "others. Use a 'redis' store (shared by every worker) or --workers 1."
                )

    def bind_sockets(self, address: str, port: int, workers: int) -> list[socket.socket]:
        """One listening socket, or with workers on Linux one per worker on the same port."""
        from pushserver.server import bind

        reuse_port = workers > 1 and sys.platform.startswith("linux")
        sockets: list[socket.socket] = []
        try:
            # Bound plainly first: a port in use is an error, even by sockets that would
            # let ours join them (an old server still running with SO_REUSEPORT).
            sockets.append(bind(address, port))
            if reuse_port:
                port = sockets[0].getsockname()[1]
                sockets.pop().close()
                sockets.extend(bind(address, port, reuse_port=True) for _ in range(workers))
        except OSError as exc:
            for sock in sockets:
                sock.close()
            raise CommandError(
                f"Error: could not listen on {format_host(address, port)}: {exc.strerror or exc}"
            ) from exc
        return sockets

    def build_app(self, options: dict[str, Any], transports: tuple[str, ...]) -> Any:
        """The application ``pushserver.asgi`` builds, Django as its fallback under
        ``--allrequests`` (its registration for in-process publishing is serve()'s)."""
        from pushserver.asgi import build_application

        fallback = self.django_application() if options["allrequests"] else None
        return build_application(fallback, forcehost=options["forcehost"], transports=transports)

    def handle(self, *args: Any, **options: Any) -> None:
        if options["forcehost"] and not options["allrequests"]:
            raise CommandError("'forcehost' can be set only with 'allrequests'.")
        address, port = self.resolve_address(options)
        transports = self.resolve_transports(options["transports"])
        workers = options["workers"]
        server = options.get("server") or "hypercorn"
        self.check_server(server, options)
        self.server_choice = server
        self.check_workers(workers)
        options["shutdown_timeout"] = self.resolve_shutdown_timeout(options.get("shutdown_timeout"))
        self.configure_logging(options["log_format"])
        if server == "granian":
            # granian replaces this process (no reloader): the checks run here first.
            if not options.get("skip_checks"):
                self.run_checks()
            self.exec_granian(address, port, options, transports)
            return
        use_reloader = options.get("use_reloader")
        if use_reloader is None:
            use_reloader = settings.DEBUG
        if use_reloader and workers == 1:
            from django.utils import autoreload

            # The supervisor of --workers needs the main thread (signals), so only a single
            # server reloads. In the reloader's child the server runs in a thread.
            autoreload.run_with_reloader(
                self.run_reloaded, address, port, transports, workers, options
            )
        else:
            self.inner_run(address, port, transports, workers, options)

    def run_reloaded(self, *args: Any) -> None:
        """:meth:`inner_run` in the autoreloader's child. As runserver: a check error is
        reported and the reloader keeps watching for the fix; a port that cannot be bound
        ends the process."""
        try:
            self.inner_run(*args)
        except SystemCheckError as exc:
            self.stderr.write(str(exc))  # no traceback; the reloader waits for the fix
        except CommandError as exc:
            self.stderr.write(str(exc))
            sys.stderr.flush()
            os._exit(1)

    def run_checks(self) -> None:
        """Django's checks, then the ones that touch the network (the Redis ping, a
        deployment check so that other commands never connect)."""
        from pushserver.checks import NETWORK_TAG

        self.check()
        self.check(tags=[NETWORK_TAG], include_deployment_checks=True)

    def inner_run(
        self,
        address: str,
        port: int,
        transports: tuple[str, ...],
        workers: int,
        options: dict[str, Any],
    ) -> None:
        sockets = self.bind_sockets(address, port, workers)
        host = format_host(address, sockets[0].getsockname()[1])
        # Known from here on: the checks (pushserver.W121) and send_update's URLs use it.
        registry.host = host
        block_signals = False
        try:
            if not options.get("skip_checks"):
                self.run_checks()
            app = self.build_app(options, transports) if workers == 1 else None

            # A stop signal arriving from the banner on (a client may act on it at once) waits
            # until the server listens for it, instead of killing the process mid-start. Only
            # the main thread receives signals (under the reloader it does not serve).
            block_signals = (
                app is not None
                and hasattr(signal, "pthread_sigmask")
                and threading.current_thread() is threading.main_thread()
            )
            if block_signals:
                signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
            loop = options["loop"]
            quit_command = "CTRL-BREAK" if sys.platform == "win32" else "CONTROL-C"
            processes = f", {workers} workers" if workers > 1 else ""
            self.stdout.write(datetime.now().strftime("%B %d, %Y - %X"))
            self.banner(
                f"{self.server_version(self.server_choice)} ({loop}{processes})",
                transports,
                host,
                quit_command,
            )
            if app is not None:
                self.run_server(app, sockets[0], options)
            else:
                self.supervise(sockets, workers, options, transports)
        finally:
            if block_signals:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
            for sock in sockets:
                sock.close()
            registry.host = None

    # -- --server uvicorn|granian ----------------------------------------------------------

    def check_server(self, server: str, options: dict[str, Any]) -> None:
        found = servers.problems(server, getattr(settings, "PUSH_SERVER", None), options)
        if found:
            raise CommandError("\n".join(found))

    def server_version(self, server: str) -> str:
        if server == "hypercorn":
            return f"hypercorn version {hypercorn.version()}"
        return f"{server} version {servers.version(server)}"

    def banner(
        self, server: str, transports: tuple[str, ...], host: str, quit_command: str = "CONTROL-C"
    ) -> None:
        """The lines that say what serves where (the last but one is what
        :class:`pushserver.testing.PushServerProcess` waits for)."""
        self.stdout.write(
            f"Django version {django.get_version()}, using settings {settings.SETTINGS_MODULE!r}\n"
            f"Push server version {__version__} on {server}, "
            f"transports: {', '.join(transports)}\n"
            f"Development push server is running at http://{host}/\n"
            f"Quit the server with {quit_command}."
        )
        self.stdout.flush()

    def exec_granian(
        self, address: str, port: int, options: dict[str, Any], transports: tuple[str, ...]
    ) -> None:  # pragma: no cover - replaces the process (covered by real-process tests)
        """Check the port is free, say where it will listen, and become granian."""
        (sock,) = self.bind_sockets(address, port, 1)
        port = sock.getsockname()[1]
        sock.close()  # granian binds it itself
        command, env = servers.granian_command(address, port, options, transports, get_config())
        self.banner(self.server_version("granian"), transports, format_host(address, port))
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(command[0], command, env)

    def run_server(
        self, app: Any, sock: socket.socket, options: dict[str, Any], worker: bool = False
    ) -> None:
        """Serve ``app`` on ``sock`` on the ``--loop`` event loop until a stop signal."""
        loop = options["loop"]
        with contextlib.suppress(KeyboardInterrupt):
            anyio.run(
                self.serve_until_stopped,
                app,
                sock,
                options["access_log"],
                options["shutdown_timeout"],
                worker,
                options["log_format"],
                backend="trio" if loop == "trio" else "asyncio",
                backend_options={"use_uvloop": True} if loop == "uvloop" else {},
            )

    # -- several workers ----------------------------------------------------------------------

    def supervise(
        self,
        sockets: list[socket.socket],
        workers: int,
        options: dict[str, Any],
        transports: tuple[str, ...],
    ) -> None:
        """Serve with ``workers`` forked processes (:class:`pushserver.supervisor.Supervisor`)
        until a stop signal; a crash loop of workers is a command error."""
        from django.db import connections

        supervisor = Supervisor(
            sockets,
            workers,
            functools.partial(self.serve_worker, options=options, transports=transports),
            shutdown_timeout=options["shutdown_timeout"],
            # No database connection may be shared by forked children.
            before_fork=connections.close_all,
        )
        try:
            supervisor.run()
        except CrashLoop as exc:
            raise CommandError(str(exc)) from exc

    def serve_worker(
        self, sock: socket.socket, *, options: dict[str, Any], transports: tuple[str, ...]
    ) -> None:  # pragma: no cover - runs in forked children (covered by real-process tests)
        """What a forked worker runs: its own application, served on ``sock`` until a stop
        signal."""
        app = self.build_app(options, transports)
        logger.info("worker %d started", os.getpid())
        self.run_server(app, sock, options, worker=True)

    async def serve_until_stopped(
        self,
        app: Any,
        sock: socket.socket,
        access_log: bool,
        shutdown_timeout: float,
        worker: bool = False,
        log_format: str = "text",
    ) -> None:
        """Serve until SIGINT/SIGTERM, then shut down gracefully (server.serve). The signals
        are blocked until the receiver is open, so none is missed or fatal meanwhile: one
        arriving during startup stops the server as soon as it has started."""
        from pushserver.server import serve

        if self.server_choice == "uvicorn":
            await self.serve_uvicorn(app, sock, access_log, shutdown_timeout)
            return
        who = f"worker {os.getpid()}: " if worker else ""
        if threading.current_thread() is not threading.main_thread():
            # Under the autoreloader: its main thread handles the signals and ends the
            # process (a reload, Ctrl-C, SIGTERM), this server with it.
            await serve(
                app,
                sock,
                access_log=access_log,
                shutdown_trigger=anyio.sleep_forever,
                graceful_timeout=shutdown_timeout,
                log_format=log_format,
            )
            return
        # The receiver stays open until serving is over, so that later signals are absorbed
        # (Ctrl-C reaches a whole process group, then a supervisor passes its own on): the
        # shutdown is bounded anyway, and cutting it short would skip closing the stores.
        with anyio.open_signal_receiver(*STOP_SIGNALS) as signals:
            if hasattr(signal, "pthread_sigmask"):
                signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

            async def stop() -> None:
                async for signum in signals:
                    name = signal.Signals(signum).name
                    logger.info("%sreceived %s, shutting down", who, name)
                    return

            await serve(
                app,
                sock,
                access_log=access_log,
                shutdown_trigger=stop,
                graceful_timeout=shutdown_timeout,
                log_format=log_format,
            )

    #: The --server of this run (serve_until_stopped reads it, in workers too).
    server_choice = "hypercorn"

    async def serve_uvicorn(
        self, app: Any, sock: socket.socket, access_log: bool, shutdown_timeout: float
    ) -> None:
        """uvicorn handles the stop signals itself; pushserver.asgi's first request
        registers the app for in-process publishing and releases subscribers on a stop."""
        from pushserver.asgi import _FirstRequest

        # uvicorn raises the stop signal again once it has shut down, under the handler it
        # found: let that be a no-op, so the command returns (exit status 0) as it does
        # under hypercorn.
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                signal.signal(sig, lambda signum, frame: None)
            if hasattr(signal, "pthread_sigmask"):
                signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        # else: under the autoreloader, whose main thread handles the signals; uvicorn
        # installs none off the main thread.
        ours = logging.getLogger("pushserver")
        for name in ("uvicorn.error", "uvicorn.access"):
            other = logging.getLogger(name)
            if not other.handlers and ours.handlers:
                other.handlers = list(ours.handlers)
                other.propagate = False
                other.setLevel(logging.INFO)
        app.first_request = _FirstRequest(app)
        await servers.serve_uvicorn(
            app,
            sock,
            access_log=access_log,
            shutdown_timeout=shutdown_timeout,
            config=get_config(),
        )

    def django_application(self) -> Any:
        from pushserver.asgi import django_site

        return django_site()

    def configure_logging(self, log_format: str = "text") -> None:
        logger = logging.getLogger("pushserver")
        if not logger.handlers and not logging.getLogger().handlers:
            handler = logging.StreamHandler(cast(TextIO, self.stdout._out))
            if log_format == "json":
                from pushserver.logs import JSONFormatter

                handler.setFormatter(JSONFormatter())
            else:
                handler.setFormatter(
                    logging.Formatter("[%(asctime)s] %(message)s", "%d/%b/%Y %H:%M:%S")
                )
            logger.addHandler(handler)
            logger.propagate = False
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)
