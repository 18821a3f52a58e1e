"""The status location: what this process is doing, as JSON, Prometheus text or a page.

A location ``{"type": "status", "prefix": "/status/"}`` serves, under its prefix:

``/status/``
    JSON, Prometheus text or the HTML status page, by ``?format=json|prometheus|html`` or
    else by ``Accept`` (``text/html``: the page; ``text/plain`` or OpenMetrics: Prometheus;
    anything else: JSON).
``/status/json`` and ``/status/metrics``
    JSON and Prometheus text, whatever the ``Accept``.
``/status/events``
    The snapshots as server-sent events, one every ``interval`` seconds while someone
    listens: the status page's ``EventSource``. They are published to a channel of a
    private memory store and streamed by the same SSE transport subscribers use, so the
    page updates through the push server itself.

Access is the publisher's rule: the client address must be in the location's
``allow_from`` (loopback and ``INTERNAL_IPS`` by default) and, with ``publisher_secret``,
the request must carry a token: ``Authorization: Bearer`` with the publisher token or the
read-only status token (:func:`status_token`), or ``?token=`` with the status token (a
browser cannot set headers on a page or an ``EventSource``).

Every figure is this process's: with ``runpushserver --workers`` each worker answers for
itself (``pid`` says which).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio

from . import __version__
from .backends.memory import MemoryBackend
from .config import LocationConfig
from .http import Headers, Receive, Request, Scope, Send, query_parameter, respond, respond_error
from .hub import Hub
from .metrics import CONNECTION_TRANSPORTS
from .publisher import Access, publisher_token
from .transports.sse import SSETransport

logger = logging.getLogger("pushserver.status")

#: The private channel the snapshots are published to.
CHANNEL = "status"
JSON_TYPE = b"application/json"
PROMETHEUS_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
HTML_TYPE = b"text/html; charset=utf-8"
FORMATS = ("json", "prometheus", "html")
PAGE = Path(__file__).with_name("status.html")
ALLOW = (b"allow", b"GET")
NO_STORE = (b"cache-control", b"no-store")
PAGE_HEADERS: Headers = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        b"connect-src 'self'",
    ),
    (b"x-content-type-options", b"nosniff"),
]

#: The counters of each store, in the order JSON and Prometheus show them: name, the
#: Prometheus metric, its help text.
COUNTERS = (
    (
        "published",
        "pushserver_messages_published_total",
        "Messages stored by this process (publisher locations and in-process send_update).",
    ),
    (
        "publish_errors",
        "pushserver_publish_errors_total",
        "Publishes that failed because the store was unavailable (503).",
    ),
    (
        "publishes_refused",
        "pushserver_publishes_refused_total",
        "Publishes and channel creations (PUT) refused because the store was at a budget: "
        "memory_limit, max_channels or Redis's maxmemory (507).",
    ),
    (
        "subscribes_refused",
        "pushserver_subscribes_refused_total",
        "Subscribes refused because creating their channel (create_on_get) would pass the "
        "store's budget (507).",
    ),
    (
        "received",
        "pushserver_messages_received_total",
        "Messages the store handed to this process for fan-out to local subscribers.",
    ),
    (
        "delivered",
        "pushserver_deliveries_total",
        "Messages queued to local subscribers, one per subscriber reached.",
    ),
    (
        "queue_overflows",
        "pushserver_queue_overflows_total",
        "Deliveries dropped from a full subscriber queue (that subscriber then catches up "
        "from the buffer).",
    ),
    (
        "catch_ups",
        "pushserver_catch_ups_total",
        "Times a subscriber that fell behind its queue was caught up from the buffer.",
    ),
    (
        "gaps",
        "pushserver_gaps_total",
        "Gap notices sent: messages left the buffer before a subscriber got them.",
    ),
)
SLOW_TRANSPORTS = ("eventsource", "websocket")


def status_token(secret: str) -> str:
    """The read-only token for status locations: an HMAC of its own label, so it cannot
    publish, and a leaked one (it may travel in a URL) reveals only the status."""
    return hmac.new(secret.encode(), b"pushserver status", hashlib.sha256).hexdigest()


# -- the snapshot ----------------------------------------------------------------------------


def snapshot(hubs: Mapping[str, Hub], store_types: Mapping[str, str], started: float) -> dict:
    """Everything the status shows, as plain JSON-able data."""
    connections = dict.fromkeys(CONNECTION_TRANSPORTS, 0)
    slow = dict.fromkeys(SLOW_TRANSPORTS, 0)
    totals: dict[str, Any] = {name: 0 for name, _, _ in COUNTERS}
    channels = subscribers = 0
    stores: dict[str, Any] = {}
    for name, hub in hubs.items():
        metrics = hub.metrics
        try:
            backend = dict(hub.backend.status())
        except Exception as exc:  # a custom backend's status() must not break the page
            backend = {"ok": False, "error": f"status() failed: {exc!r}"}
        active, local = hub.local_totals()
        values = {
            "published": metrics.published,
            "publish_errors": metrics.publish_errors,
            "publishes_refused": metrics.publishes_refused,
            "subscribes_refused": metrics.subscribes_refused,
            "received": hub.published,
            "delivered": hub.delivered,
            "queue_overflows": hub.overflows,
            "catch_ups": metrics.catch_ups,
            "gaps": metrics.gaps,
        }
        store_slow = {
            "eventsource": metrics.slow_eventsource,
            "websocket": metrics.slow_websocket,
        }
        store_connections = metrics.connections()
        for key, value in values.items():
            totals[key] += value
        for key, value in store_connections.items():
            connections[key] += value
        for key, value in store_slow.items():
            slow[key] += value
        channels += active
        subscribers += local
        ok = bool(backend.pop("ok", False))
        backend.pop("type", None)
        stores[name] = {
            "type": store_types.get(name, getattr(hub.backend, "name", "")),
            "ok": ok,
            # Channels stored: known for a memory store; a shared store would need a scan.
            "channels": backend.pop("channels", None),
            **_budget(backend),
            "active_channels": active,
            "subscribers": local,
            "connections": store_connections,
            **values,
            "slow_disconnects": store_slow,
            "backend": backend,
        }
    return {
        "version": __version__,
        "pid": os.getpid(),
        "time": round(time.time(), 3),
        "uptime": round(time.monotonic() - started, 3),
        "connections": connections,
        "active_channels": channels,
        "subscribers": subscribers,
        **totals,
        "slow_disconnects": slow,
        "stores": stores,
    }


def _budget(backend: dict) -> dict:
    """Use against the store's budget, taken out of its ``status()``: ``memory`` (bytes
    used and the limit, 0 = none; None when the store does not say), ``max_channels``
    (0 = none) and ``expired_channels`` (removed by ``channel_timeout``)."""
    used = backend.pop("memory_used", None)
    limit = backend.pop("memory_limit", None)
    return {
        "memory": None if used is None else {"used": used, "limit": limit or 0},
        "max_channels": backend.pop("max_channels", None),
        "expired_channels": backend.pop("expired_channels", None),
    }


def render_json(data: dict) -> bytes:
    return json.dumps(data, indent=1).encode() + b"\n"


def _label(value: object) -> str:
    text = str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return f'"{text}"'


def _labels(**labels: object) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f"{key}={_label(value)}" for key, value in labels.items()) + "}"


def _number(value: float | int) -> str:
    return str(int(value)) if isinstance(value, bool | int) else repr(float(value))


def render_prometheus(data: dict) -> bytes:
    """The Prometheus text exposition format (0.0.4): HELP and TYPE, then the samples."""
    lines: list[str] = []

    def family(
        name: str, kind: str, help_text: str, samples: Iterable[tuple[dict, float | int]]
    ) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            lines.append(f"{name}{_labels(**labels)} {_number(value)}")

    stores = data["stores"]

    def reported(key: str) -> list[tuple[dict, float | int]]:
        """One sample per store whose figure ``key`` is known (not None)."""
        return [
            ({"store": name}, store[key])
            for name, store in stores.items()
            if store[key] is not None
        ]

    family(
        "pushserver_info",
        "gauge",
        "The push server's version and process id (always 1).",
        [({"version": data["version"], "pid": data["pid"]}, 1)],
    )
    family(
        "pushserver_uptime_seconds",
        "gauge",
        "Seconds since this process started serving.",
        [({}, data["uptime"])],
    )
    family(
        "pushserver_connections",
        "gauge",
        "Subscribers connected now: long polls waiting, event streams and WebSockets open.",
        [
            ({"store": name, "transport": transport}, store["connections"][transport])
            for name, store in stores.items()
            for transport in CONNECTION_TRANSPORTS
        ],
    )
    family(
        "pushserver_subscribers",
        "gauge",
        "Subscriptions of local subscribers, one per channel of each.",
        [({"store": name}, store["subscribers"]) for name, store in stores.items()],
    )
    family(
        "pushserver_active_channels",
        "gauge",
        "Channels with at least one local subscriber.",
        [({"store": name}, store["active_channels"]) for name, store in stores.items()],
    )
    family(
        "pushserver_channels",
        "gauge",
        "Channels stored (memory stores only).",
        reported("channels"),
    )
    memory = [(name, store["memory"]) for name, store in stores.items() if store["memory"]]
    family(
        "pushserver_store_memory_bytes",
        "gauge",
        "Bytes the store holds: retained messages and channels (memory store, estimated), "
        "or Redis's used_memory.",
        [({"store": name}, used["used"]) for name, used in memory],
    )
    family(
        "pushserver_store_memory_limit_bytes",
        "gauge",
        "The store's budget in bytes: memory_limit, or Redis's maxmemory (0: none).",
        [({"store": name}, used["limit"]) for name, used in memory],
    )
    family(
        "pushserver_store_max_channels",
        "gauge",
        "Channels the store may hold (max_channels; 0: no limit).",
        reported("max_channels"),
    )
    family(
        "pushserver_channels_expired_total",
        "counter",
        "Empty channels removed after channel_timeout.",
        reported("expired_channels"),
    )
    for key, metric, help_text in COUNTERS:
        family(
            metric,
            "counter",
            help_text,
            [({"store": name}, store[key]) for name, store in stores.items()],
        )
    family(
        "pushserver_slow_disconnects_total",
        "counter",
        "Streaming subscribers disconnected because a write blocked past send_timeout.",
        [
            ({"store": name, "transport": transport}, store["slow_disconnects"][transport])
            for name, store in stores.items()
            for transport in SLOW_TRANSPORTS
        ],
    )
    family(
        "pushserver_backend_up",
        "gauge",
        "1 while the store can store and deliver, 0 while it cannot (Redis unreachable).",
        [
            ({"store": name, "type": store["type"]}, int(store["ok"]))
            for name, store in stores.items()
        ],
    )
    reconnects = [
        ({"store": name}, store["backend"]["reconnects"])
        for name, store in stores.items()
        if isinstance(store["backend"].get("reconnects"), int)
    ]
    if reconnects:
        family(
            "pushserver_backend_reconnects_total",
            "counter",
            "Times the store's connection (Redis pub/sub) was re-established.",
            reconnects,
        )
    return ("\n".join(lines) + "\n").encode()


@functools.cache
def _page_template() -> str:
    return PAGE.read_text(encoding="utf-8")


def render_page(data: dict, events_url: str | None) -> bytes:
    """The status page with ``data`` in it; it follows ``events_url`` when there is one."""
    # Inside <script>, "</" would end the element: JSON allows writing it "\u003c".
    initial = json.dumps(data).replace("<", "\\u003c")
    events = json.dumps(events_url).replace("<", "\\u003c")
    page = _page_template()
    return page.replace("/*SNAPSHOT*/null", initial).replace("/*EVENTS*/null", events).encode()


def negotiate(request: Request) -> str | None:
    """The format asked for on the location's own path; None for an unknown ``format``."""
    chosen = query_parameter(request.scope.get("query_string", b""), "format")
    if chosen is not None:
        return chosen if chosen in FORMATS else None
    accept = (request.header("accept") or "").lower()
    if "text/html" in accept:
        return "html"
    if "text/plain" in accept or "application/openmetrics-text" in accept:
        return "prometheus"
    return "json"


# -- the location ----------------------------------------------------------------------------


class Status:
    """Serves one status location, and publishes its snapshots while the page listens.

    ``hubs`` are the server's, by store name (read at each snapshot, never changed here);
    ``store_types`` the type of each store, as configured."""

    def __init__(
        self,
        location: LocationConfig,
        hubs: Mapping[str, Hub],
        store_types: Mapping[str, str],
        headers: Headers,
        *,
        internal_ips: Iterable[str] = (),
        secret: str | None = None,
    ) -> None:
        self.location = location
        self.hubs = hubs
        self.store_types = dict(store_types)
        self.headers = [*headers, NO_STORE]
        #: With a secret: the publisher's or the status token in the Authorization header,
        #: only the read-only status token in ``?token=`` (URLs end up in logs).
        token = status_token(secret) if secret else None
        self.access = Access(
            location.allow_from,
            internal_ips,
            (publisher_token(secret), token) if secret and token else (),
            token,
        )
        self.started = time.monotonic()
        #: The private store of the snapshots (its own hub: not counted in the figures).
        self.hub = Hub(MemoryBackend(max_messages=1), queue_size=4)
        stream_location = replace(
            location,
            type="subscriber",
            create_on_get=True,
            transports=("eventsource",),
            max_channels=1,
            max_subscribers=0,
        )
        # Event streams say Cache-Control: no-store themselves.
        self.sse = SSETransport(stream_location, self.hub, list(headers))

    def snapshot(self) -> dict:
        return snapshot(self.hubs, self.store_types, self.started)

    def refusal(self, request: Request) -> str | None:
        """Why this request may not read the status, or None (the publisher's rule)."""
        if not self.access.address_allowed(request):
            return (
                f"the status is not available from {request.client_host} "
                "(see the location's allow_from)"
            )
        if not self.access.token_shown(request):
            return "the status needs a valid token (Authorization: Bearer ..., or ?token=)"
        return None

    async def __call__(self, scope: Scope, rest: str, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1003})
            return
        request = Request(scope)
        refused = self.refusal(request)
        if refused is not None:
            await respond_error(send, 403, refused, self.headers)
            return
        if request.method != "GET":
            await respond_error(
                send, 405, f"{request.method} is not allowed here", [*self.headers, ALLOW]
            )
            return
        if rest == "events":
            if not self.location.interval:
                await respond_error(send, 404, "live updates are off (interval 0)", self.headers)
                return
            await self.sse(request, CHANNEL, receive, send)
            return
        if rest == "":
            fmt = negotiate(request)
            if fmt is None:
                reason = f"format must be one of {', '.join(FORMATS)}"
                await respond_error(send, 400, reason, self.headers)
                return
        elif rest in ("json", "metrics"):
            fmt = "json" if rest == "json" else "prometheus"
        else:
            await respond_error(send, 404, "use json, metrics, events or nothing", self.headers)
            return
        data = self.snapshot()
        if fmt == "json":
            await respond(send, 200, self.headers, render_json(data), content_type=JSON_TYPE)
        elif fmt == "prometheus":
            body = render_prometheus(data)
            await respond(send, 200, self.headers, body, content_type=PROMETHEUS_TYPE)
        else:
            path = scope.get("raw_path") or scope["path"].encode()
            base = path.decode("latin-1")[: len(path) - len(rest.encode("latin-1"))]
            events = base + "events" if self.location.interval else None
            body = render_page(data, events)
            headers = [*self.headers, *PAGE_HEADERS]
            await respond(send, 200, headers, body, content_type=HTML_TYPE)

    async def run(self) -> None:
        """Publish a snapshot every ``interval`` seconds while the page is open somewhere."""
        interval = self.location.interval
        await self.publish()  # the page's stream starts with a fresh one
        while True:
            await anyio.sleep(interval)
            if self.hub.local_subscribers(CHANNEL):
                await self.publish()

    async def publish(self) -> None:
        try:
            body = json.dumps(self.snapshot(), separators=(",", ":")).encode()
            await self.hub.publish(CHANNEL, body, "application/json")
        except Exception:  # a broken figure must not end the server (this runs in its tasks)
            logger.exception("status: could not publish a snapshot")
