"""The push server inside a project's own ASGI application, for any ASGI server.

In the project's ``asgi.py``::

    from pushserver.asgi import get_asgi_application

    application = get_asgi_application()

then ``uvicorn mysite.asgi:application`` (or daphne, granian, hypercorn) serves the
``PUSH_SERVER`` locations and the Django site from one process. This module's
:func:`get_asgi_application` is a stable API; ``runpushserver --allrequests`` serves the
application it returns.

How the stores are opened and closed, and how a stop is handled, depends on what the
server sends (docs/deployment.md, "Any ASGI server"):

- With an ASGI lifespan (uvicorn, granian, hypercorn), startup opens the stores and
  shutdown closes them.
- Without one (daphne; ``uvicorn --lifespan off``), the first request opens them in a task
  of their own, which closes them when the event loop ends (its tasks are cancelled) or,
  failing that, at interpreter exit.
- On the first request the stop signals' handlers (SIGTERM, SIGINT), where the server set
  Python handlers in the main thread, are chained: the server's own handler runs first,
  and :data:`RELEASE_DELAY` seconds later (time for it to close its listening sockets) the
  held subscribers are told to reconnect elsewhere and new publishes get 503, as under
  ``runpushserver``. Without that, a server would wait on held long polls and event
  streams until its own graceful timeout cut them.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import signal
import threading
from typing import Any, cast

import anyio
import anyio.lowlevel

from ._async import asyncio_loop
from .app import PushServer
from .http import ASGIApp, Scope
from .running import format_host, registry

logger = logging.getLogger("pushserver")

__all__ = ["RELEASE_DELAY", "get_asgi_application"]

#: Seconds from a stop signal to releasing held subscribers (see the module docstring).
RELEASE_DELAY = 0.5
#: Seconds the stores get to close when the loop ends or the interpreter exits.
CLOSE_TIMEOUT = 3.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def get_asgi_application(django_app: ASGIApp | None = None) -> PushServer:
    """An ASGI application serving the ``PUSH_SERVER`` locations and handing every other
    request to ``django_app`` (default: Django's own ASGI application).

    Settings errors the ``pushserver`` system checks would report are raised here as
    :class:`~django.core.exceptions.ImproperlyConfigured`, as the server starts, since ASGI
    servers run no system checks. ``send_update`` / ``asend_update`` called in this process
    publish straight into it, without an HTTP request, when ``publisher_host`` points at the
    address the server is reached on (or is not set). ``django_app`` gets no lifespan
    events: this application answers them.
    """
    import django
    from django.apps import apps

    if django_app is None:
        from django.core.asgi import get_asgi_application as django_asgi_application

        # An ASGI app: django-stubs types its scope as a dict and its messages as Mappings.
        django_app = cast(ASGIApp, django_asgi_application())
    elif not apps.ready:
        django.setup(set_prefix=False)
    check_settings()
    app = build_application(django_app)
    app.first_request = _FirstRequest(app)
    return app


def check_settings() -> None:
    """Raise ImproperlyConfigured with every error of the ``PUSH_SERVER`` checks."""
    from django.core.exceptions import ImproperlyConfigured

    from .checks import check_push_server_settings

    errors = [m for m in check_push_server_settings() if m.is_serious()]
    if errors:
        lines = "\n".join(
            f"{m.id}: {m.msg}" + (f" HINT: {m.hint}" if m.hint else "") for m in errors
        )
        raise ImproperlyConfigured(f"PUSH_SERVER has errors:\n{lines}")


def build_application(
    fallback: ASGIApp | None,
    *,
    forcehost: str | None = None,
    transports: tuple[str, ...] | None = None,
) -> PushServer:
    """The push server for this project's settings, with passthrough (in-process to
    ``fallback`` when its URL points here) and signed channel URLs: what
    :func:`get_asgi_application` and ``runpushserver`` serve."""
    from .passthrough import presence_factory
    from .settings import get_config
    from .utils.signing import verify_channel

    return PushServer(
        get_config(),
        fallback=fallback,
        forcehost=forcehost,
        presence_factory=presence_factory(fallback),
        transports=transports,
        channel_verifier=verify_channel,
    )


class _FirstRequest:
    """What the first request does under an ASGI server other than ``runpushserver``'s."""

    def __init__(self, app: PushServer) -> None:
        self.app = app
        self.lock: anyio.Lock | None = None
        self.holder: Any = None

    async def __call__(self, scope: Scope) -> None:
        if self.lock is None:
            self.lock = anyio.Lock()
        async with self.lock:
            if self.app.first_request is None:
                return  # another request did it meanwhile
            if self.app._stack is None:
                await self.open_lazily()
            register(self.app, scope)
            chain_stop_signals(self.app)
            self.app.first_request = None

    async def open_lazily(self) -> None:
        """Open the stores in a task that keeps them open until the loop ends."""
        opened = anyio.Event()
        failure: list[BaseException] = []

        async def hold() -> None:
            try:
                await self.app.open()
            except Exception as exc:
                failure.append(exc)
                opened.set()
                return
            opened.set()
            try:
                await anyio.sleep_forever()
            finally:
                with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_TIMEOUT):
                    await self.app.aclose()

        loop = asyncio_loop()
        if loop is None:  # trio: a system task is cancelled when the run ends
            import trio

            trio.lowlevel.spawn_system_task(hold)
        else:
            self.holder = loop.create_task(hold())
            atexit.register(_close_at_exit, self.holder)
        await opened.wait()
        if failure:
            logger.error("push server failed to open its stores: %r", failure[0])
            raise failure[0]


def _close_at_exit(task: Any) -> None:
    """The loop stopped without cancelling the task that holds the stores open (daphne's
    reactor stops its loop and leaves it): cancel it on that loop, so the stores close."""
    if task.done():
        return
    loop = task.get_loop()
    if loop.is_closed() or loop.is_running():
        return
    with contextlib.suppress(Exception):
        task.cancel()
        loop.run_until_complete(_wait(task))


async def _wait(task: Any) -> None:
    import asyncio

    with contextlib.suppress(BaseException):
        await asyncio.wait_for(task, CLOSE_TIMEOUT + 1)


def register(app: PushServer, scope: Scope) -> None:
    """Make ``app`` the push server ``send_update`` and passthrough find in this process
    (unless ``runpushserver`` registered its own), at the address the request came to;
    ``serve_uvicorn`` unregisters it when serving ends."""
    address = scope.get("server")
    host = format_host(str(address[0]), int(address[1])) if address else "unix"
    if registry.current is None:
        registry.register(app, anyio.lowlevel.current_token(), host)
    if registry.host is None and address:
        registry.host = host


def chain_stop_signals(app: PushServer) -> None:
    """Release held subscribers :data:`RELEASE_DELAY` seconds after a stop signal, after
    the server's own handler has run (see the module docstring). Only where the server
    set a Python handler in the main thread on asyncio; elsewhere the server's graceful
    timeout ends held subscribers."""
    loop = asyncio_loop()
    if loop is None or threading.current_thread() is not threading.main_thread():
        return

    def release() -> None:
        logger.info("stop signal: releasing held subscribers")
        app.begin_shutdown()

    for signum in STOP_SIGNALS:
        previous = signal.getsignal(signum)
        if not callable(previous) or getattr(previous, "_pushserver_chained", False):
            continue

        def handler(sig: int, frame: Any, previous: Any = previous) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed already
                loop.call_soon_threadsafe(loop.call_later, RELEASE_DELAY, release)
            previous(sig, frame)

        handler._pushserver_chained = True  # type: ignore[attr-defined]
        try:
            signal.signal(signum, handler)
        except (ValueError, OSError):  # pragma: no cover - not the main thread after all
            return


def django_site() -> ASGIApp:
    """Django's ASGI application, serving static files in DEBUG as ``runserver`` does
    (``runpushserver --allrequests``)."""
    from django.conf import settings
    from django.core.asgi import get_asgi_application as django_asgi_application

    application = django_asgi_application()
    if settings.DEBUG and "django.contrib.staticfiles" in settings.INSTALLED_APPS:
        from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

        application = ASGIStaticFilesHandler(application)
    # An ASGI app: django-stubs types its scope as a dict and its messages as Mappings.
    return cast(ASGIApp, application)


def command_application() -> PushServer:
    """What ``runpushserver --server granian`` has granian load (a factory): the
    application ``runpushserver`` would serve with the options it passed on, in a worker
    process with the collector's thresholds raised as under the other servers
    (:data:`pushserver.server.GC_THRESHOLDS`; at Python's defaults, full collections walking
    every held connection were over a fifth of a connect's CPU)."""
    import json
    import os

    import django

    from .server import raise_gc_thresholds
    from .servers import OPTIONS_ENV

    raise_gc_thresholds()  # for the worker's life: it is the server
    django.setup(set_prefix=False)
    options = json.loads(os.environ.get(OPTIONS_ENV) or "{}")
    fallback = django_site() if options.get("allrequests") else None
    transports = options.get("transports")
    app = build_application(
        fallback,
        forcehost=options.get("forcehost"),
        transports=tuple(transports) if transports else None,
    )
    app.first_request = _FirstRequest(app)
    return app
