"""The push server running in this process: one registry, for in-process publishing.

Code in the server's own process (views under ``runpushserver --allrequests``, the
passthrough's receivers, a project served by ``pushserver.asgi`` under any ASGI server)
must not publish to that server over HTTP: a blocking POST from a view the server itself
runs can deadlock it. :data:`registry` says which server that is and where it listens:

- ``registry.current`` is the :class:`Running` server, or None. :func:`pushserver.server.serve`
  and the first request of :mod:`pushserver.asgi`'s application register it;
  ``send_update`` and the passthrough publish into it directly when their URL points at
  its address.
- ``registry.host`` is the ``host:port`` URLs fall back to when ``publisher_host`` or
  ``subscriber_host`` names none (read as ``pushserver.utils.updates.current_host``).
  ``runpushserver`` sets it as soon as its port is bound (before the system checks, which
  look at it); the first request under another ASGI server sets it where nothing did.

Everything here is set and read in one process: other processes (``runserver``, Celery
workers, the shell) see nothing, and need the host settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import anyio.lowlevel

    from .app import PushServer


def format_host(address: str, port: int) -> str:
    """``address:port`` as it goes in a URL (an IPv6 address in brackets)."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


@dataclass(frozen=True)
class Running:
    """The push server running in this process, and what reaching it takes."""

    app: PushServer
    #: Its event loop, for a thread to hand a publish to (``anyio.from_thread.run``).
    token: anyio.lowlevel.EventLoopToken
    #: Where it listens (:func:`format_host`), compared with a URL's to recognise it.
    host: str


class Registry:
    """Which push server runs in this process (``current``) and the host URLs fall back
    to (``host``); see the module docstring."""

    def __init__(self) -> None:
        self.current: Running | None = None
        self.host: str | None = None

    def register(self, app: PushServer, token: anyio.lowlevel.EventLoopToken, host: str) -> None:
        """Make ``app``, serving on the loop of ``token`` at ``host``, the current one."""
        self.current = Running(app, token, host)

    def unregister(self, app: PushServer) -> None:
        """``app`` stopped serving: forget it, and its address as the host for URLs (they
        fall back to the settings again), unless another server replaced it meanwhile."""
        running = self.current
        if running is None or running.app is not app:
            return
        if self.host == running.host:
            self.host = None
        self.current = None


#: The one registry of this process.
registry = Registry()
