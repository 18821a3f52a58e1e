"""Passthrough: tell the Django site when long-poll subscribers start and stop waiting.

For a subscriber location with ``'passthrough': URL`` the push server POSTs the form
``channel_id=<id>&subscribe=1`` when a long poll starts waiting and
``channel_id=<id>&unsubscribe=1`` when it ends (message delivered, 410, timeout, client
gone). The subscriber's own request headers are forwarded (Cookie, If-None-Match,
If-Modified-Since, User-Agent, Origin, ...; hop-by-hop ones excepted), so the Django view
sees the subscriber's session; ``Host`` stays the push server's host, as in the original.

Semantics:

* Fire and forget. :meth:`LocationPresence.subscribed` / ``unsubscribed`` only queue a job
  and return at once; delivery to subscribers never waits for Django.
* Bounded. At most ``concurrency`` POSTs are in flight and ``queue_size`` wait; when the
  queue is full the notification is dropped and a warning logged (at most one per
  ``WARN_INTERVAL`` per kind). Each POST gets ``timeout`` seconds; responses are not read
  beyond the status line, and a non-2xx status is logged.
* Ordered per connection. A connection's unsubscribe is sent only after its subscribe has
  completed, and not at all if its subscribe was dropped: receivers never see an
  unsubscribe without its subscribe.
* In-process under ``--allrequests``: when the URL points at this very server, the POST is
  handed to the Django ASGI application directly (client ``127.0.0.1`` so ``INTERNAL_IPS``
  passes), with no HTTP hop.

Authorizing (``passthrough_authorize``): :meth:`LocationPresence.authorize` sends the
subscribe with ``authorize=1`` and waits for the answer (status and the first
``ANSWER_LIMIT`` bytes of the body), outside the queue; :mod:`pushserver.authorize` decides
with it. That POST is the subscribe notification; its unsubscribe follows as usual.

The HTTP client is a few lines of anyio (``connect_tcp``, write the request, read the
status line): cancellable by a plain ``fail_after`` on asyncio and trio alike, no thread per
request and no new dependency. This module imports no Django.
"""

from __future__ import annotations

import contextlib
import logging
import math
import ssl
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit

import anyio
import anyio.abc
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .config import LocationConfig
from .http import ASGIApp, Headers, Request
from .running import registry

logger = logging.getLogger("pushserver.passthrough")

#: Not forwarded: hop-by-hop headers, and those describing the subscriber's own body.
SKIPPED_HEADERS = frozenset(
    {
        b"host",
        b"connection",
        b"keep-alive",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"expect",
        b"content-length",
        b"content-type",
        b"accept-encoding",
    }
)
FORM = b"application/x-www-form-urlencoded"
WARN_INTERVAL = 10.0
_LOCAL_NAMES = {"localhost", "127.0.0.1", "::1", "0.0.0.0", "::"}

_QUEUED, _DONE, _DROPPED = "queued", "done", "dropped"
#: How much of an authorizing answer's body is kept (the refusal reason).
ANSWER_LIMIT = 1024
UNREACHABLE = "the authorizer cannot be reached"
NO_ANSWER = "the authorizer did not answer in time"


@dataclass(frozen=True)
class Target:
    """A passthrough URL, split once."""

    url: str
    scheme: str
    host: str
    port: int
    netloc: str
    raw_path: bytes  # as sent on the request line (still percent-encoded)
    query: bytes

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"passthrough must be an absolute http(s) URL, not {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(
            url,
            parts.scheme,
            parts.hostname,
            port,
            parts.netloc,
            (parts.path or "/").encode("latin-1"),
            parts.query.encode("latin-1"),
        )

    @property
    def request_target(self) -> bytes:
        return self.raw_path + (b"?" + self.query if self.query else b"")


class Connection:
    """One waiting long poll: the presence token handed back to the transport."""

    __slots__ = ("channel_id", "headers", "state", "target", "unsubscribe_wanted")

    def __init__(self, target: Target, channel_id: str, headers: Headers) -> None:
        self.target = target
        self.channel_id = channel_id
        self.headers = headers
        self.state = _QUEUED
        self.unsubscribe_wanted = False


def forwarded_headers(request: Request, target: Target) -> Headers:
    """The subscriber's headers as the passthrough request carries them (without the body's)."""
    host = target.netloc.encode("latin-1")
    forwarded: Headers = []
    for name, value in request.scope.get("headers", ()):
        lname = name.lower()
        if lname == b"host":
            host = value
        elif lname not in SKIPPED_HEADERS:
            forwarded.append((lname, value))
    return [(b"host", host), *forwarded]


class LocationPresence:
    """The :class:`~pushserver.transports.longpoll.Presence` of one subscriber location."""

    def __init__(self, sender: PassthroughSender, location: LocationConfig) -> None:
        assert location.passthrough is not None
        self.sender = sender
        self.location = location
        self.target = Target.parse(location.passthrough)

    def subscribed(self, request: Request, channel_id: str) -> Connection:
        connection = Connection(self.target, channel_id, forwarded_headers(request, self.target))
        if not self.sender.submit(connection, "subscribe"):
            connection.state = _DROPPED
        return connection

    async def authorize(
        self, request: Request, channel_id: str, timeout: float
    ) -> tuple[Connection, int | None, str]:
        """The subscribe POST, waited for (``passthrough_authorize``): ``(token, status,
        body)``. The token is unsubscribed as usual; status is None (and body says why) when
        no answer came within ``timeout`` seconds (0 = no limit) or the site was unreachable.
        """
        connection = Connection(self.target, channel_id, forwarded_headers(request, self.target))
        status, body = await self.sender.ask(connection, timeout or None)
        # Timed out: sent, perhaps processed, so its unsubscribe goes out later as usual.
        connection.state = _DROPPED if status is None and body == UNREACHABLE else _DONE
        return connection, status, body

    def unsubscribed(self, token: object) -> None:
        if not isinstance(token, Connection) or token.state == _DROPPED:
            return
        if token.state == _DONE:
            self.sender.submit(token, "unsubscribe")
        else:  # the worker sending the subscribe sends this right after it
            token.unsubscribe_wanted = True


class PassthroughSender:
    """Sends every location's passthrough POSTs; ``factory(location) -> Presence``.

    An async context manager: :meth:`PushServer.open <pushserver.app.PushServer.open>`
    enters it (its workers live as long as the server) and leaving it gives queued
    notifications ``drain_timeout`` seconds to go out.
    """

    def __init__(
        self,
        fallback: ASGIApp | None = None,
        *,
        concurrency: int = 10,
        queue_size: int = 256,
        timeout: float = 10.0,
        drain_timeout: float = 2.0,
    ) -> None:
        self.fallback = fallback
        self.concurrency = concurrency
        self.queue_size = queue_size
        self.timeout = timeout
        self.drain_timeout = drain_timeout
        self.presences: list[LocationPresence] = []
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self._send: MemoryObjectSendStream[tuple[Connection, str]] | None = None
        self._receive: MemoryObjectReceiveStream[tuple[Connection, str]] | None = None
        self._task_group: TaskGroup | None = None
        self._warned: dict[str, float] = {}
        self._ssl_context: ssl.SSLContext | None = None

    def __call__(self, location: LocationConfig) -> LocationPresence:
        presence = LocationPresence(self, location)
        self.presences.append(presence)
        return presence

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> PassthroughSender:
        if not self.presences or self._task_group is not None:
            return self  # no location uses passthrough: no workers
        self._send, self._receive = anyio.create_memory_object_stream[tuple[Connection, str]](
            self.queue_size
        )
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        for _ in range(self.concurrency):
            task_group.start_soon(self._worker)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        task_group, self._task_group = self._task_group, None
        if task_group is None:
            return
        assert self._send is not None and self._receive is not None
        self._send.close()  # workers finish the queue, then stop
        task_group.cancel_scope.deadline = anyio.current_time() + self.drain_timeout
        try:
            await task_group.__aexit__(None, None, None)
        finally:
            self._receive.close()

    # -- queueing (sync, on the event loop) ------------------------------------------------

    def submit(self, connection: Connection, action: str) -> bool:
        """Queue one notification; False (and a warning) when it cannot be queued."""
        if self._send is None:
            return False
        try:
            self._send.send_nowait((connection, action))
        except anyio.WouldBlock:
            self.dropped += 1
            self._warn(
                "full",
                "passthrough queue full (%d waiting): dropped %s of %r; %d dropped so far",
                self.queue_size,
                action,
                connection.channel_id,
                self.dropped,
            )
            return False
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            return False  # shutting down
        return True

    # -- sending ------------------------------------------------------------------------------

    async def _worker(self) -> None:
        assert self._receive is not None
        async for connection, action in self._receive:
            reached = await self._deliver(connection, action)
            if action == "subscribe":
                # An unsubscribe follows only a subscribe the site may have seen.
                connection.state = _DONE if reached else _DROPPED
                if reached and connection.unsubscribe_wanted:
                    await self._deliver(connection, "unsubscribe")

    async def ask(self, connection: Connection, timeout: float | None) -> tuple[int | None, str]:
        """The authorizing subscribe (``authorize=1`` in the form), answered: ``(status,
        body)``, or ``(None, why)``. Not queued: the subscriber waits for it."""
        target = connection.target
        body = urlencode(
            {"channel_id": connection.channel_id, "subscribe": "1", "authorize": "1"}
        ).encode("ascii")
        headers = [
            *connection.headers,
            (b"content-type", FORM),
            (b"content-length", str(len(body)).encode()),
        ]
        with anyio.move_on_after(timeout):
            try:
                if self._in_process(target):
                    status, answer = await self._exchange_asgi(target, headers, body, ANSWER_LIMIT)
                else:
                    status, answer = await self._exchange_http(
                        target, [*headers, (b"connection", b"close")], body, ANSWER_LIMIT
                    )
            except Exception as exc:
                self.failed += 1
                self._warn(
                    f"error {target.url}",
                    "passthrough authorize to %s failed: %r",
                    target.url,
                    exc,
                )
                return None, UNREACHABLE
            self.sent += 1
            return status, answer.decode("utf-8", "replace").strip()
        self.failed += 1
        self._warn(
            f"timeout {target.url}",
            "passthrough authorize to %s got no answer within %s s",
            target.url,
            timeout,
        )
        return None, NO_ANSWER

    async def _deliver(self, connection: Connection, action: str) -> bool:
        """Send one notification; True unless it surely did not reach the site."""
        target = connection.target
        body = urlencode({"channel_id": connection.channel_id, action: "1"}).encode("ascii")
        headers = [
            *connection.headers,
            (b"content-type", FORM),
            (b"content-length", str(len(body)).encode()),
        ]
        status: int | None = None
        with anyio.move_on_after(self.timeout):
            try:
                if self._in_process(target):
                    status = await self._post_asgi(target, headers, body)
                else:
                    status = await self._post_http(
                        target, [*headers, (b"connection", b"close")], body
                    )
            except Exception as exc:
                self.failed += 1
                self._warn(
                    f"error {target.url}",
                    "passthrough %s to %s failed: %r",
                    action,
                    target.url,
                    exc,
                )
                return False
        if status is None:  # sent, perhaps processed: the site was just slow
            self.failed += 1
            self._warn(
                f"timeout {target.url}",
                "passthrough %s to %s got no answer within %s s",
                action,
                target.url,
                self.timeout,
            )
            return True
        if not 200 <= status < 300:
            self.failed += 1
            self._warn(
                f"{status} {target.url}",
                "passthrough %s to %s answered %d",
                action,
                target.url,
                status,
            )
            return False
        self.sent += 1
        return True

    def _in_process(self, target: Target) -> bool:
        if self.fallback is None:
            return False
        running = registry.current
        if running is None:
            return True  # the app is served some other way; the fallback is the site
        host, _, port = running.host.rpartition(":")
        host = host.strip("[]")
        if target.port != int(port):
            return False
        return target.host == host or (target.host in _LOCAL_NAMES and host in _LOCAL_NAMES)

    async def _post_http(self, target: Target, headers: Headers, body: bytes) -> int:
        return (await self._exchange_http(target, headers, body, 0))[0]

    async def _exchange_http(
        self, target: Target, headers: Headers, body: bytes, limit: int
    ) -> tuple[int, bytes]:
        """POST; the status and up to ``limit`` bytes of the body (0: only the status line)."""
        stream: anyio.abc.ByteStream
        if target.scheme == "https":
            if self._ssl_context is None:
                self._ssl_context = ssl.create_default_context()
            stream = await anyio.connect_tcp(
                target.host,
                target.port,
                ssl_context=self._ssl_context,
                tls_standard_compatible=False,  # we read only the status line, then close
            )
        else:
            stream = await anyio.connect_tcp(target.host, target.port)
        async with stream:
            head = b"POST " + target.request_target + b" HTTP/1.1\r\n"
            head += b"".join(name + b": " + value + b"\r\n" for name, value in headers)
            await stream.send(head + b"\r\n" + body)
            received = b""
            end = b"\r\n\r\n" if limit else b"\r\n"
            while end not in received:
                received += await stream.receive()
                if len(received) > 8192 + limit:
                    raise ValueError("no HTTP response head in the first 8 KiB")
            parts = received.split(b"\r\n", 1)[0].split(None, 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
                raise ValueError(f"not an HTTP response: {received[:80]!r}")
            if not limit:
                return int(parts[1]), b""
            head, _, answer = received.partition(b"\r\n\r\n")
            fields = {}
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                fields[name.strip().lower()] = value.strip()
            length = fields.get(b"content-length", b"")
            wanted = min(int(length), limit) if length.isdigit() else limit
            chunked = b"chunked" in fields.get(b"transfer-encoding", b"").lower()
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                while len(answer) < wanted:
                    answer += await stream.receive()
        if chunked:
            answer = _first_chunk(answer)
        return int(parts[1]), answer[:limit]

    async def _post_asgi(self, target: Target, headers: Headers, body: bytes) -> int:
        return (await self._exchange_asgi(target, headers, body, 0))[0]

    async def _exchange_asgi(
        self, target: Target, headers: Headers, body: bytes, limit: int
    ) -> tuple[int, bytes]:
        assert self.fallback is not None
        status = 0
        answer = b""
        body_sent = False

        async def receive() -> dict[str, Any]:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await anyio.sleep_forever()  # "still connected" until the app stops listening
            raise AssertionError

        async def send(message: Any) -> None:
            nonlocal status, answer
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and len(answer) < limit:
                answer += message.get("body", b"")[: limit - len(answer)]

        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": target.scheme,
            "path": unquote(target.raw_path.decode("latin-1")),
            "raw_path": target.raw_path,
            "query_string": target.query,
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 0),
            "server": (target.host, target.port),
        }
        await self.fallback(scope, receive, send)
        return status, answer

    def _warn(self, key: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._warned.get(key, -math.inf) >= WARN_INTERVAL:
            self._warned[key] = now
            logger.warning(message, *args)


def _first_chunk(data: bytes) -> bytes:
    """The data of the first chunk of a chunked body (enough for a short reason)."""
    size, _, rest = data.partition(b"\r\n")
    try:
        return rest[: int(size.split(b";")[0].strip() or b"0", 16)]
    except ValueError:
        return b""


def presence_factory(fallback: Any = None) -> PassthroughSender:
    """What ``runpushserver`` gives :class:`~pushserver.app.PushServer`: passthrough for
    every location that sets it, in-process to ``fallback`` (the Django ASGI app under
    ``--allrequests``) when the URL points at this server."""
    return PassthroughSender(fallback)
