"""The parsed configuration: what :func:`pushserver.config.parse` returns.

Each default is the one declared in :mod:`.table` (``TOP_LEVEL[...]`` for the server,
``LOCATION[...]`` for locations), so it is written once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .table import LOCATION, TOP_LEVEL


@dataclass(frozen=True)
class StoreConfig:
    name: str
    type: str
    #: The options the backend class is built with, its declared defaults filled in.
    options: dict[str, Any]


@dataclass(frozen=True)
class HostConfig:
    location: str | None
    secure: bool = False

    @property
    def scheme(self) -> str:
        return "https" if self.secure else "http"


@dataclass(frozen=True)
class LocationConfig:
    index: int
    type: str  # "publisher", "subscriber" or "status"
    pattern: str  # the URL regex, as configured (or built from the prefix)
    url: str | None
    prefix: str | None
    regex: re.Pattern[str]
    store: str = LOCATION["store"].default
    polling: str = LOCATION["polling"].default
    create_on_get: bool = LOCATION["create_on_get"].default
    create_on_post: bool = LOCATION["create_on_post"].default
    allow_origin: str = LOCATION["allow_origin"].default
    allow_credentials: bool = LOCATION["allow_credentials"].default
    passthrough: str | None = LOCATION["passthrough"].default
    timeout: float = LOCATION["timeout"].default
    max_message_size: int = LOCATION["max_message_size"].default
    transports: tuple[str, ...] = LOCATION["transports"].default
    #: Seconds between keepalives on event streams and WebSockets (0 = none).
    ping_interval: float = LOCATION["ping_interval"].default
    #: Seconds one write to a streaming subscriber may block before it is disconnected.
    send_timeout: float = LOCATION["send_timeout"].default
    #: Networks a publisher may connect from; None: loopback plus ``internal_ips``.
    allow_from: tuple[str, ...] | None = LOCATION["allow_from"].default
    #: Longest channel id accepted, in characters (0 = no limit); from the top-level key.
    max_channel_id_length: int = TOP_LEVEL["max_channel_id_length"].default
    #: Subscribers one channel may have at once, counted by the store (0 = no limit).
    max_subscribers: int = LOCATION["max_subscribers"].default
    #: Channels one event stream or WebSocket may multiplex (0 = no limit).
    max_channels: int = LOCATION["max_channels"].default
    #: The passthrough URL authorizes each subscribe (a non-2xx answer refuses it).
    passthrough_authorize: bool = LOCATION["passthrough_authorize"].default
    #: Dotted path of ``can_subscribe(request, channel_id)``, asked before each subscribe.
    can_subscribe: str | None = LOCATION["can_subscribe"].default
    #: Subscribers must present a signature per channel (``?sig=``), see docs/authorization.md.
    signed: bool = LOCATION["signed"].default
    #: Seconds the passthrough authorizer or the hook may take to answer (0 = no limit).
    authorize_timeout: float = LOCATION["authorize_timeout"].default
    #: ``Access-Control-Max-Age``: seconds a browser may cache a preflight.
    cors_max_age: int = LOCATION["cors_max_age"].default
    #: Whether responses carry CORS headers: always on subscriber locations, on publisher
    #: locations when one of :data:`~.table.CORS_KEYS` is given.
    cors: bool = True
    #: Status locations: seconds between the snapshots the status page gets (0 = none).
    interval: float = LOCATION["interval"].default

    @property
    def authorizes(self) -> bool:
        """Whether subscribers here are authorized (by any of the three ways)."""
        return self.passthrough_authorize or self.can_subscribe is not None or self.signed


@dataclass(frozen=True)
class ServerConfig:
    port: int | None = TOP_LEVEL["port"].default
    address: str | None = TOP_LEVEL["address"].default
    servername: str | None = TOP_LEVEL["servername"].default
    stores: dict[str, StoreConfig] = field(default_factory=dict)
    locations: tuple[LocationConfig, ...] = ()
    publisher_host: HostConfig | None = TOP_LEVEL["publisher_host"].default
    subscriber_host: HostConfig | None = TOP_LEVEL["subscriber_host"].default
    publish_timeout: float = TOP_LEVEL["publish_timeout"].default
    transport: str = TOP_LEVEL["transport"].default
    #: ``send_update`` POSTs to the push server ('http') or writes to the store ('backend').
    publish_via: str = TOP_LEVEL["publish_via"].default
    #: Publishers must send ``Authorization: Bearer <token>`` derived from it (if set).
    publisher_secret: str | None = TOP_LEVEL["publisher_secret"].default
    #: Seconds a stopping server gives in-flight requests before it cuts what is still open
    #: (``runpushserver --shutdown-timeout`` overrides it).
    shutdown_timeout: float = TOP_LEVEL["shutdown_timeout"].default
    #: Django's INTERNAL_IPS, put here by the Django layer: allowed to publish by default.
    internal_ips: tuple[str, ...] = ()
    #: Subscriber requests and WebSockets one process serves at once; past it 503 (0 = no
    #: limit, None = derived from the open-file limit when the server starts).
    max_connections: int | None = TOP_LEVEL["max_connections"].default
    #: Largest request head (request line and headers) in bytes; past it 431.
    max_header_size: int = TOP_LEVEL["max_header_size"].default
    #: Seconds a connection may take to send a request head, counted from when it opens or
    #: its previous response ended (so it also bounds an idle keep-alive connection).
    client_header_timeout: float = TOP_LEVEL["client_header_timeout"].default

    def first(self, kind: str) -> LocationConfig | None:
        return next((loc for loc in self.locations if loc.type == kind), None)
