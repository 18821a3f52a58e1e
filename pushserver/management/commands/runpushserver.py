"""``./manage.py runpushserver [addrport] [-6] [--allrequests] [--forcehost HOST]
[--transport NAME]``"""

from __future__ import annotations

import logging
import re
import sys
from datetime import datetime
from typing import Any

import anyio
import django
import hypercorn
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.management.commands.runserver import naiveip_re
from django.utils.regex_helper import _lazy_re_compile

from pushserver import __version__
from pushserver.config import AVAILABLE_TRANSPORTS, TRANSPORTS
from pushserver.settings import get_config

FQDN_RE = _lazy_re_compile(r"^[a-zA-Z0-9.-]+$")


def _hypercorn_version() -> str:
    try:
        from importlib.metadata import version

        return version("hypercorn")
    except Exception:  # pragma: no cover - metadata missing in odd installs
        return getattr(hypercorn, "__version__", "?")


class Command(BaseCommand):
    help = "Starts a push server."
    requires_system_checks = "__all__"

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
        parser.add_argument(
            "--no-access-log",
            action="store_false",
            dest="access_log",
            help="Do not log each request.",
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

    def handle(self, *args: Any, **options: Any) -> None:
        if options["forcehost"] and not options["allrequests"]:
            raise CommandError("'forcehost' can be set only with 'allrequests'.")
        address, port = self.resolve_address(options)
        transports = self.resolve_transports(options["transports"])
        self.configure_logging()

        from pushserver.app import PushServer
        from pushserver.passthrough import presence_factory
        from pushserver.server import bind, format_host, serve
        from pushserver.utils import updates

        fallback = self.django_application() if options["allrequests"] else None
        app = PushServer(
            get_config(),
            fallback=fallback,
            forcehost=options["forcehost"],
            presence_factory=presence_factory(fallback),
            transports=transports,
        )
        try:
            sock = bind(address, port)
        except OSError as exc:
            raise CommandError(
                f"Error: could not listen on {format_host(address, port)}: {exc.strerror or exc}"
            ) from exc
        host = format_host(address, sock.getsockname()[1])
        updates.current_host = host

        loop = options["loop"]
        backend = "trio" if loop == "trio" else "asyncio"
        backend_options = {"use_uvloop": True} if loop == "uvloop" else {}
        quit_command = "CTRL-BREAK" if sys.platform == "win32" else "CONTROL-C"
        self.stdout.write(datetime.now().strftime("%B %d, %Y - %X"))
        self.stdout.write(
            f"Django version {django.get_version()}, using settings {settings.SETTINGS_MODULE!r}\n"
            f"Push server version {__version__} on hypercorn version {_hypercorn_version()} "
            f"({loop}), "
            f"transports: {', '.join(transports)}\n"
            f"Development push server is running at http://{host}/\n"
            f"Quit the server with {quit_command}."
        )
        self.stdout.flush()
        try:
            anyio.run(
                lambda: serve(app, sock, access_log=options["access_log"]),
                backend=backend,
                backend_options=backend_options,
            )
        except KeyboardInterrupt:
            pass
        finally:
            sock.close()
            updates.current_host = None

    def django_application(self) -> Any:
        from django.core.asgi import get_asgi_application

        application = get_asgi_application()
        if settings.DEBUG and "django.contrib.staticfiles" in settings.INSTALLED_APPS:
            # Unlike the original, serve static files like runserver does, in DEBUG only.
            from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

            application = ASGIStaticFilesHandler(application)
        return application

    def configure_logging(self) -> None:
        logger = logging.getLogger("pushserver")
        if not logger.handlers and not logging.getLogger().handlers:
            handler = logging.StreamHandler(self.stdout._out)
            handler.setFormatter(
                logging.Formatter("[%(asctime)s] %(message)s", "%d/%b/%Y %H:%M:%S")
            )
            logger.addHandler(handler)
            logger.propagate = False
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)
