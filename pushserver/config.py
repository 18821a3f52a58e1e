"""``PUSH_SERVER``: the original django-pushserver schema, parsed and validated.

:func:`parse` turns the settings dict into a :class:`ServerConfig` and a list of
:class:`Problem`; it never raises for bad input. The Django system checks report the
problems at startup (naming the key and the fix); :func:`load` raises
:class:`~pushserver.exceptions.ConfigurationError` for code outside Django.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .backends import memory as memory_backend
from .exceptions import ConfigurationError

TRANSPORTS = ("longpoll", "eventsource", "websocket")
#: Transports this version implements; the others are refused by the checks.
AVAILABLE_TRANSPORTS = ("longpoll", "eventsource", "websocket")

DEFAULT_LOCATIONS = (
    {"type": "publisher", "prefix": "/publisher/"},
    {"type": "subscriber", "prefix": "/subscriber/"},
)

# -- store bounds (docs/topics.md#bounded-memory) -------------------------------------------
#: Options both built-in stores take: empty channels a subscriber made are removed after
#: channel_timeout seconds; keep_publisher_channels spares the ones a publisher made.
CHANNEL_BOUND_DEFAULTS: dict[str, Any] = {
    "channel_timeout": memory_backend.DEFAULT_CHANNEL_TIMEOUT,
    "keep_publisher_channels": True,
}
#: The memory store's budget (Redis has its own: maxmemory).
MEMORY_BUDGET_DEFAULTS: dict[str, Any] = {
    "memory_limit": memory_backend.DEFAULT_MEMORY_LIMIT,
    "max_channels": memory_backend.DEFAULT_MAX_CHANNELS,
}
#: The largest channel_timeout (seconds, about 31 years): finite, and within what Redis's
#: PEXPIRE takes in milliseconds.
MAX_CHANNEL_TIMEOUT = 1e9
# --------------------------------------------------------------------------------------------

STORE_DEFAULTS: dict[str, dict[str, Any]] = {
    "memory": {
        "min_messages": 0,
        "max_messages": 0,
        "message_timeout": 0,
        **CHANNEL_BOUND_DEFAULTS,
        **MEMORY_BUDGET_DEFAULTS,
        "idempotency_window": 300,
    },
    "redis": {
        **CHANNEL_BOUND_DEFAULTS,
        "host": "127.0.0.1",
        "port": 6379,
        "database": 0,
        "key_prefix": "",
        "url": None,
        "password": None,
        "ssl": False,
        "min_messages": 0,
        "max_messages": 0,
        "message_timeout": 0,
        # Past one Redis (docs/redis.md): Cluster, Sentinel, durable acks, idempotency.
        "cluster": False,
        "sentinels": None,
        "service": None,
        "wait_replicas": 0,
        "wait_timeout": 1.0,
        "idempotency_window": 300,
    },
}

TOP_LEVEL_KEYS = {
    "port": "listen port (the command line overrides it)",
    "address": "bind address (the command line overrides it)",
    "servername": "value of the Server response header",
    "store": "one store dict with 'type', or a dict of named stores",
    "locations": "list of publisher and subscriber locations",
    "publisher_host": "{'location': 'host:port', 'secure': bool} used by send_update",
    "subscriber_host": "{'location': 'host:port', 'secure': bool} used by {% channel_url %}",
    "publish_timeout": "seconds send_update waits for the push server (default 5)",
    "transport": "the transport pages use: 'longpoll'",
    "max_message_size": "largest accepted message body in bytes (default 1 MiB)",
    "publish_via": "how send_update publishes: 'http' (default) or 'backend' (straight to Redis)",
    "publisher_secret": "shared secret publishers must prove (Authorization: Bearer token)",
    "max_channel_id_length": "longest accepted channel id in characters (default 1024, 0 = none)",
    "max_connections": "subscriber requests served at once per process (default: from ulimit -n)",
    "max_header_size": "largest request head in bytes (default 16 KiB; 431 above it)",
    "client_header_timeout": "seconds to receive a request head, also the keep-alive idle time",
    "shutdown_timeout": "seconds a stopping server lets in-flight requests finish (default 5)",
}

PUBLISH_VIA = ("http", "backend")
#: Store types send_update can publish to directly (``publish_via='backend'``): shared ones.
BACKEND_PUBLISH_STORES = ("redis",)

COMMON_LOCATION_KEYS = {
    "type",
    "url",
    "prefix",
    "store",
    "allow_origin",
    "allow_credentials",
    "cors_max_age",
}
#: Keys that turn CORS headers on for a publisher location (subscribers always send them).
CORS_KEYS = ("allow_origin", "allow_credentials", "cors_max_age")
#: The original's Access-Control-Max-Age.
DEFAULT_CORS_MAX_AGE = 864000
DEFAULT_MAX_HEADER_SIZE = 16 * 1024
#: Smallest max_header_size accepted: a browser's request line and headers need this much.
MIN_HEADER_SIZE = 1024
DEFAULT_CLIENT_HEADER_TIMEOUT = 75.0
#: scheme://host[:port], the form a browser's Origin header has (nothing after the port).
_ORIGIN_RE = re.compile(r"[a-z][a-z0-9+.-]*://[^\s/?#@]+\Z")
PUBLISHER_KEYS = COMMON_LOCATION_KEYS | {"create_on_post", "max_message_size", "allow_from"}
#: ``allow_from: '*'``: every address may publish.
ALLOW_ANY = ("0.0.0.0/0", "::/0")
SUBSCRIBER_KEYS = COMMON_LOCATION_KEYS | {
    "polling",
    "create_on_get",
    "passthrough",
    "timeout",
    "transports",
    "ping_interval",
    "send_timeout",
    "max_subscribers",
    "max_channels",
    "passthrough_authorize",
    "can_subscribe",
    "signed",
    "authorize_timeout",
}
#: A status location (counters, backend health, the live status page; docs/observability.md).
STATUS_KEYS = {"type", "url", "prefix", "allow_from", "interval"}
#: Default seconds between the snapshots a status page receives.
STATUS_INTERVAL = 2.0
#: Shortest interval accepted (0 aside, which means no live updates).
MIN_STATUS_INTERVAL = 0.1


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the settings, and how to fix it."""

    key: str
    message: str
    hint: str
    id: str
    level: str = "error"  # or "warning"

    def __str__(self) -> str:
        return f"{self.key}: {self.message} ({self.hint})"


@dataclass(frozen=True)
class StoreConfig:
    name: str
    type: str
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
    store: str = "default"
    polling: str = "long"
    create_on_get: bool = False
    create_on_post: bool = True
    allow_origin: str = "*"
    allow_credentials: bool = False
    passthrough: str | None = None
    timeout: float = 0
    max_message_size: int = 1024 * 1024
    transports: tuple[str, ...] = AVAILABLE_TRANSPORTS
    #: Seconds between keepalives on event streams and WebSockets (0 = none).
    ping_interval: float = 15.0
    #: Seconds one write to a streaming subscriber may block before it is disconnected.
    send_timeout: float = 30.0
    #: Networks a publisher may connect from; None: loopback plus ``internal_ips``.
    allow_from: tuple[str, ...] | None = None
    #: Longest channel id accepted, in characters (0 = no limit); from the top-level key.
    max_channel_id_length: int = 1024
    #: Subscribers one channel may have at once, counted by the store (0 = no limit).
    max_subscribers: int = 0
    #: Channels one event stream or WebSocket may multiplex (0 = no limit).
    max_channels: int = 255
    #: The passthrough URL authorizes each subscribe (a non-2xx answer refuses it).
    passthrough_authorize: bool = False
    #: Dotted path of ``can_subscribe(request, channel_id)``, asked before each subscribe.
    can_subscribe: str | None = None
    #: Subscribers must present a signature per channel (``?sig=``), see docs/authorization.md.
    signed: bool = False
    #: Seconds the passthrough authorizer or the hook may take to answer (0 = no limit).
    authorize_timeout: float = 5.0
    #: ``Access-Control-Max-Age``: seconds a browser may cache a preflight.
    cors_max_age: int = DEFAULT_CORS_MAX_AGE
    #: Whether responses carry CORS headers: always on subscriber locations, on publisher
    #: locations when one of :data:`CORS_KEYS` is given.
    cors: bool = True
    #: Status locations: seconds between the snapshots the status page gets (0 = none).
    interval: float = STATUS_INTERVAL

    @property
    def authorizes(self) -> bool:
        """Whether subscribers here are authorized (by any of the three ways)."""
        return self.passthrough_authorize or self.can_subscribe is not None or self.signed


@dataclass(frozen=True)
class ServerConfig:
    port: int | None = None
    address: str | None = None
    servername: str | None = None
    stores: dict[str, StoreConfig] = field(default_factory=dict)
    locations: tuple[LocationConfig, ...] = ()
    publisher_host: HostConfig | None = None
    subscriber_host: HostConfig | None = None
    publish_timeout: float = 5.0
    transport: str = "longpoll"
    #: ``send_update`` POSTs to the push server ('http') or writes to the store ('backend').
    publish_via: str = "http"
    #: Publishers must send ``Authorization: Bearer <token>`` derived from it (if set).
    publisher_secret: str | None = None
    #: Seconds a stopping server gives in-flight requests before it cuts what is still open
    #: (``runpushserver --shutdown-timeout`` overrides it).
    shutdown_timeout: float = 5.0
    #: Django's INTERNAL_IPS, put here by the Django layer: allowed to publish by default.
    internal_ips: tuple[str, ...] = ()
    #: Subscriber requests and WebSockets one process serves at once; past it 503 (0 = no
    #: limit, None = derived from the open-file limit when the server starts).
    max_connections: int | None = None
    #: Largest request head (request line and headers) in bytes; past it 431.
    max_header_size: int = DEFAULT_MAX_HEADER_SIZE
    #: Seconds a connection may take to send a request head, counted from when it opens or
    #: its previous response ended (so it also bounds an idle keep-alive connection).
    client_header_timeout: float = DEFAULT_CLIENT_HEADER_TIMEOUT

    def first(self, kind: str) -> LocationConfig | None:
        return next((loc for loc in self.locations if loc.type == kind), None)


class _Collector:
    def __init__(self) -> None:
        self.problems: list[Problem] = []
        # Stores already reported as wrong: locations naming them get no second error.
        self.broken_stores: set[str] = set()
        self.no_stores = False

    def error(self, key: str, message: str, hint: str, code: int) -> None:
        self.problems.append(Problem(key, message, hint, f"pushserver.E{code:03d}"))

    def warning(self, key: str, message: str, hint: str, code: int) -> None:
        self.problems.append(Problem(key, message, hint, f"pushserver.W{code:03d}", "warning"))

    def unknown_keys(
        self, key: str, given: Mapping[str, Any], allowed: set[str], code: int
    ) -> None:
        for name in given:
            if name in allowed:
                continue
            close = difflib.get_close_matches(str(name), sorted(allowed), n=1)
            suggestion = f"did you mean {close[0]!r}? " if close else ""
            self.error(
                f"{key}[{name!r}]",
                f"unknown key {name!r}",
                f"{suggestion}Known keys: {', '.join(sorted(allowed))}.",
                code,
            )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_non_negative(
    c: _Collector, key: str, value: Any, code: int, *, integer: bool, hint: str | None = None
) -> bool:
    ok = (isinstance(value, int) and not isinstance(value, bool)) if integer else _is_number(value)
    if not ok or value < 0:
        kind = "a whole number" if integer else "a number of seconds"
        hint = hint or f"Set {key} to {kind}, e.g. 0."
        c.error(key, f"must be {kind} >= 0, not {value!r}", hint, code)
        return False
    return True


def _top_level_limit(
    c: _Collector, raw: Mapping[str, Any], name: str, default: Any, code: int, *, integer: bool
) -> Any:
    """``PUSH_SERVER[name]`` if it is a non-negative number, else the default (and an error)."""
    value = raw.get(name, default)
    key = f"PUSH_SERVER[{name!r}]"
    return value if _check_non_negative(c, key, value, code, integer=integer) else default


def _positive_seconds(
    c: _Collector, raw: Mapping[str, Any], name: str, default: float, code: int, hint: str
) -> float:
    """``PUSH_SERVER[name]`` if it is a finite number of seconds > 0, else the default (and
    an error)."""
    value = raw.get(name, default)
    if not _is_number(value) or not 0 < value < float("inf"):
        c.error(
            f"PUSH_SERVER[{name!r}]", f"must be a number of seconds > 0, not {value!r}", hint, code
        )
        return default
    return float(value)


def _parse_stores(c: _Collector, raw: Any) -> dict[str, StoreConfig]:
    key = "PUSH_SERVER['store']"
    if raw is None:
        raw = {"type": "memory"}
    if not isinstance(raw, Mapping):
        c.error(key, f"must be a dict, not {type(raw).__name__}", "Use {'type': 'memory'}.", 10)
        c.no_stores = True
        return {}
    named: Mapping[str, Any] = {"default": raw} if "type" in raw else raw
    stores: dict[str, StoreConfig] = {}
    for name, options in named.items():
        skey = key if "type" in raw else f"{key}[{name!r}]"
        if not isinstance(options, Mapping):
            c.error(
                skey,
                f"store {name!r} must be a dict with a 'type', not {options!r}",
                "Write {'type': 'memory'} or {'type': 'redis', ...}.",
                11,
            )
            continue
        store_type = options.get("type")
        if store_type is None:
            c.error(
                f"{skey}['type']",
                "the store has no 'type'",
                "Add 'type': 'memory' (one process) or 'type': 'redis' (several).",
                12,
            )
            continue
        if not isinstance(store_type, str):
            c.error(f"{skey}['type']", f"must be a string, not {store_type!r}", "Use 'memory'.", 12)
            continue
        if store_type in STORE_DEFAULTS:
            defaults = STORE_DEFAULTS[store_type]
            c.unknown_keys(skey, options, {"type", *defaults}, 13)
            merged = {**defaults, **{k: v for k, v in options.items() if k != "type"}}
            for opt in ("min_messages", "max_messages"):
                if opt in merged:
                    _check_non_negative(c, f"{skey}[{opt!r}]", merged[opt], 14, integer=True)
            if "message_timeout" in merged:
                _check_non_negative(
                    c, f"{skey}['message_timeout']", merged["message_timeout"], 14, integer=False
                )
            _check_store_bounds(c, skey, store_type, merged)
            _check_store_durability(c, skey, merged)
        elif "." in store_type:
            merged = {k: v for k, v in options.items() if k != "type"}
        else:
            c.error(
                f"{skey}['type']",
                f"unknown store type {store_type!r}",
                "Use 'memory', 'redis', or the dotted path of a Backend subclass.",
                15,
            )
            continue
        stores[str(name)] = StoreConfig(str(name), store_type, merged)
    c.broken_stores.update(str(name) for name in named if str(name) not in stores)
    if not named:
        c.error(key, "no store is configured", "Use {'type': 'memory'}.", 10)
        c.no_stores = True
    return stores


def _check_store_bounds(c: _Collector, skey: str, store_type: str, options: dict) -> None:
    """channel_timeout, keep_publisher_channels, memory_limit, max_channels; and a warning
    when nothing bounds what the store retains."""
    timeout = options["channel_timeout"]
    if _check_non_negative(c, f"{skey}['channel_timeout']", timeout, 100, integer=False) and not (
        timeout <= MAX_CHANNEL_TIMEOUT  # False for NaN too
    ):
        # NaN would have the sweeper reschedule every channel forever and keep them all;
        # infinity or more than Redis's expiry can hold would fail every subscribe there.
        c.error(
            f"{skey}['channel_timeout']",
            f"must be a finite number of seconds, at most {MAX_CHANNEL_TIMEOUT:.0f}, "
            f"not {timeout!r}",
            "Use e.g. 60 (NHPM's push_channel_timeout); 0 means channels never time out.",
            100,
        )
    keep = options["keep_publisher_channels"]
    if not isinstance(keep, bool):
        c.error(
            f"{skey}['keep_publisher_channels']",
            f"must be True or False, not {keep!r}",
            "True keeps empty channels a publisher made (the original's behaviour); False "
            "removes them after channel_timeout too, as NHPM does.",
            101,
        )
    # Redis has its own budget (maxmemory), known only once connected: the store logs a
    # warning then if it has none (docs/redis.md#memory).
    unbounded = store_type == "memory"
    if store_type == "memory":
        for name, code, example in (
            ("memory_limit", 102, f"{memory_backend.DEFAULT_MEMORY_LIMIT} (64 MiB)"),
            ("max_channels", 104, f"{memory_backend.DEFAULT_MAX_CHANNELS}"),
        ):
            value, key = options[name], f"{skey}[{name!r}]"
            hint = f"Use e.g. {example}; 0 means no limit."
            if not _check_non_negative(c, key, value, code, integer=True, hint=hint):
                unbounded = False  # reported: no second message about it
            elif name == "memory_limit" and value > 0:
                unbounded = False
    if (
        not options.get("max_messages")
        and not options.get("message_timeout")
        and unbounded
        and _is_number(options.get("max_messages"))
        and _is_number(options.get("message_timeout"))
    ):
        c.warning(
            skey,
            "retention is unbounded: max_messages, message_timeout and memory_limit are 0, "
            "so the store grows for as long as messages come",
            "Set 'max_messages' (messages kept per channel), 'message_timeout' (seconds a "
            "message is kept) or 'memory_limit' (bytes the store may hold).",
            100,
        )


def _check_budgets(
    c: _Collector, stores: dict[str, StoreConfig], locations: list[LocationConfig]
) -> None:
    """A memory store's memory_limit must hold at least one channel with one message of the
    largest size its publisher locations accept."""
    for store in stores.values():
        limit = store.options.get("memory_limit")
        if store.type != "memory" or not isinstance(limit, int) or isinstance(limit, bool):
            continue
        sizes = [
            location.max_message_size
            for location in locations
            if location.type == "publisher" and location.store == store.name
        ]
        largest = max(sizes, default=0)
        needed = (
            largest
            + memory_backend.MESSAGE_OVERHEAD
            + memory_backend.CHANNEL_OVERHEAD
            + 1024  # a long channel id and content type
        )
        if limit > 0 and largest and limit < needed:
            key = "PUSH_SERVER['store']" + (f"[{store.name!r}]" if store.name != "default" else "")
            c.error(
                f"{key}['memory_limit']",
                f"{limit} bytes cannot hold one message of max_message_size ({largest} bytes)",
                f"Raise memory_limit to at least {needed}, or lower max_message_size.",
                103,
            )


def _check_store_durability(c: _Collector, skey: str, options: Mapping[str, Any]) -> None:
    """The redis store's Cluster, Sentinel, ``wait_replicas`` and idempotency options (and
    the memory store's ``idempotency_window``): E170-E173."""
    if "idempotency_window" in options:
        _check_non_negative(
            c, f"{skey}['idempotency_window']", options["idempotency_window"], 173, integer=False
        )
    if "cluster" not in options:
        return  # a memory store
    cluster, sentinels, service = options["cluster"], options["sentinels"], options["service"]
    if not isinstance(cluster, bool):
        c.error(f"{skey}['cluster']", f"must be True or False, not {cluster!r}", "Use True.", 170)
    elif cluster and sentinels:
        c.error(
            f"{skey}['cluster']",
            "a store is either a Redis Cluster or watched by Sentinel, not both",
            "Remove 'sentinels' (Cluster fails over by itself) or set 'cluster': False.",
            170,
        )
    elif cluster and options.get("database", 0) != 0:
        c.error(
            f"{skey}['database']",
            f"a Redis Cluster has database 0 only, not {options['database']!r}",
            "Remove 'database' (keep stores apart with 'key_prefix').",
            170,
        )
    if sentinels is not None:
        fine = (
            isinstance(sentinels, list | tuple)
            and sentinels
            and all(
                isinstance(entry, str) and entry.rpartition(":")[2].isdigit() for entry in sentinels
            )
        )
        if not fine:
            c.error(
                f"{skey}['sentinels']",
                f"must be a list of 'host:port' strings, not {sentinels!r}",
                "Write ['10.0.0.1:26379', '10.0.0.2:26379', '10.0.0.3:26379'].",
                171,
            )
        if not isinstance(service, str) or not service:
            c.error(
                f"{skey}['service']",
                f"names the primary the sentinels watch; it is {service!r}",
                "Set 'service' to the name in the sentinels' 'sentinel monitor <name> ...'.",
                171,
            )
    replicas = options["wait_replicas"]
    if _check_non_negative(c, f"{skey}['wait_replicas']", replicas, 172, integer=True):
        timeout = options["wait_timeout"]
        if not _is_number(timeout) or not 0 < timeout < float("inf"):
            c.error(
                f"{skey}['wait_timeout']",
                f"must be a number of seconds > 0, not {timeout!r}",
                "Set it a little above your replicas' usual lag, e.g. 1.",
                172,
            )


def _parse_host(c: _Collector, name: str, raw: Any) -> HostConfig | None:
    key = f"PUSH_SERVER[{name!r}]"
    if raw is None or raw == {}:
        return None
    if isinstance(raw, str):  # the 0.2.3-0.2.6 form "host:port"
        return HostConfig(raw or None, False)
    if not isinstance(raw, Mapping):
        c.error(
            key,
            f"must be a dict, not {raw!r}",
            "Use {'location': 'host:port', 'secure': False}.",
            20,
        )
        return None
    c.unknown_keys(key, raw, {"location", "secure"}, 21)
    location = raw.get("location")
    if location is not None and (not isinstance(location, str) or "/" in location):
        c.error(
            f"{key}['location']",
            f"must be 'host:port' without scheme or path, not {location!r}",
            "For example '127.0.0.1:8001'; set 'secure': True for https.",
            22,
        )
        location = None
    return HostConfig(location or None, bool(raw.get("secure", False)))


def _location_pattern(
    c: _Collector, key: str, raw: Mapping[str, Any], rest: str = "(.+)"
) -> tuple[str, re.Pattern[str]] | None:
    url = raw.get("url")
    prefix = raw.get("prefix")
    if url is None and prefix is None:
        c.error(
            key,
            "the location has neither 'url' nor 'prefix'",
            "Add 'url': r'/updates/([^/]+)' (one group: the channel id) or 'prefix': '/updates/'.",
            31,
        )
        return None
    if url is not None:
        if not isinstance(url, str):
            c.error(
                f"{key}['url']",
                f"must be a regex string, not {url!r}",
                "Use r'/updates/([^/]+)'.",
                32,
            )
            return None
        pattern = url
        what = f"{key}['url']"
    else:
        if not isinstance(prefix, str):
            c.error(f"{key}['prefix']", f"must be a string, not {prefix!r}", "Use '/updates/'.", 32)
            return None
        pattern = prefix + rest
        what = f"{key}['prefix']"
    try:
        regex = re.compile(pattern + "$")
    except re.error as exc:
        c.error(what, f"is not a valid regular expression: {exc}", "Fix the regex syntax.", 33)
        return None
    if regex.groups != 1:
        c.error(
            what,
            f"must have exactly one group (the channel id), {pattern!r} has {regex.groups}",
            "Make other groups non-capturing: (?:...).",
            34,
        )
        return None
    return pattern, regex


def _parse_allow_from(c: _Collector, key: str, raw: Any) -> tuple[str, ...] | None:
    if raw is None:
        return None
    if raw == "*":
        return ALLOW_ANY
    hint = "Use a list of addresses or networks, e.g. ['127.0.0.1', '10.0.0.0/8'], or '*'."
    if not isinstance(raw, list | tuple):
        c.error(key, f"must be a list of addresses or networks, not {raw!r}", hint, 52)
        return ()  # refuse everyone rather than fall back to something wider
    networks: list[str] = []
    for entry in raw:
        try:
            if not isinstance(entry, str):
                raise ValueError(entry)
            networks.append(str(ipaddress.ip_network(entry.strip(), strict=False)))
        except ValueError:
            c.error(key, f"{entry!r} is not an IP address or network", hint, 52)
    return tuple(networks)


_DOTTED_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")


def _parse_authorization(
    c: _Collector, key: str, raw: Mapping[str, Any], passthrough: str | None
) -> dict[str, Any]:
    """The subscriber authorization keys (checks E060-E064, W060); importing the hook is
    checked at startup by the Django checks (E065, E066), the signing key too (E067)."""
    parsed: dict[str, Any] = {}
    for flag, code in (("passthrough_authorize", 60), ("signed", 63)):
        value = raw.get(flag, False)
        if not isinstance(value, bool):
            c.error(
                f"{key}[{flag!r}]",
                f"must be True or False, not {value!r}",
                "Use True to turn it on, or remove the key.",
                code,
            )
            value = False
        parsed[flag] = value
    if parsed["passthrough_authorize"] and "passthrough" not in raw:
        c.error(
            f"{key}['passthrough_authorize']",
            "authorizes through the passthrough URL, but the location has no 'passthrough'",
            "Add 'passthrough': 'http://127.0.0.1:8000/passthrough' (the Django passthrough "
            "view), or remove 'passthrough_authorize'.",
            61,
        )
    hook = raw.get("can_subscribe")
    if hook is not None and (not isinstance(hook, str) or not _DOTTED_PATH.match(hook)):
        c.error(
            f"{key}['can_subscribe']",
            f"must be the dotted path of a function, not {hook!r}",
            "For example 'myapp.push.can_subscribe' (a sync or async "
            "can_subscribe(request, channel_id) returning True to allow).",
            62,
        )
        hook = "pushserver.authorize.deny_all"  # refuse everyone rather than no one
    parsed["can_subscribe"] = hook
    timeout = raw.get("authorize_timeout", 5.0)
    if not _check_non_negative(c, f"{key}['authorize_timeout']", timeout, 64, integer=False):
        timeout = 5.0
    parsed["authorize_timeout"] = float(timeout)
    if "authorize_timeout" in raw and not (
        parsed["passthrough_authorize"] or parsed["can_subscribe"]
    ):
        c.warning(
            f"{key}['authorize_timeout']",
            "has no effect: the location has neither 'passthrough_authorize' nor 'can_subscribe'",
            "Remove it, or turn on one of those authorizers.",
            60,
        )
    return parsed


def _parse_allow_origin(c: _Collector, key: str, raw: Any) -> str | None:
    """``allow_origin`` as one space-separated string: ``'*'``, one origin, or several
    (given as a list, or as one string separated by spaces, the original's form). None
    when no entry is usable (an error was reported)."""
    hint = "Use '*', 'https://www.example.com', or a list such as ['https://a.example', ...]."
    if isinstance(raw, str):
        entries = raw.split()
    elif isinstance(raw, list | tuple) and all(isinstance(entry, str) for entry in raw):
        entries = [part for entry in raw for part in entry.split()]
    else:
        entries = []
    if not entries:
        c.error(key, f"must be an origin string or a list of origins, not {raw!r}", hint, 41)
        return None
    origins: list[str] = []
    for entry in entries:
        if entry == "*":
            origins.append(entry)
            continue
        if not _ORIGIN_RE.match(entry) or entry != entry.lower():
            fixed = entry.rstrip("/")
            c.error(
                key,
                f"{entry!r} is not an origin: a browser's Origin is scheme://host[:port] in "
                "lower case, without a path or a trailing slash, so it would never match",
                f"Write {fixed.lower()!r}." if _ORIGIN_RE.match(fixed.lower()) else hint,
                84,
            )
            continue
        scheme, _, host = entry.partition("://")
        default_port = {"http": ":80", "https": ":443"}.get(scheme)
        if default_port and host.endswith(default_port):
            c.error(
                key,
                f"{entry!r} names the scheme's default port, which a browser's Origin leaves "
                "out, so it would never match",
                f"Write {entry[: -len(default_port)]!r}.",
                84,
            )
            continue
        if entry not in origins:
            origins.append(entry)
    if "*" in origins and len(origins) > 1:
        c.warning(
            key,
            "'*' allows every origin, so the other origins listed with it change nothing",
            "Use '*' alone, or list only the exact origins that may read responses.",
            80,
        )
    return " ".join(origins) or None


def _parse_location(
    c: _Collector,
    index: int,
    raw: Any,
    stores: dict[str, StoreConfig],
    default_size: int,
    max_channel_id_length: int = 1024,
) -> LocationConfig | None:
    key = f"PUSH_SERVER['locations'][{index}]"
    if not isinstance(raw, Mapping):
        c.error(
            key,
            f"must be a dict, not {raw!r}",
            "Use {'type': 'subscriber', 'prefix': '/updates/'}.",
            30,
        )
        return None
    kind = raw.get("type")
    if kind == "status":
        return _parse_status_location(c, index, raw, key)
    if kind not in ("publisher", "subscriber"):
        c.error(
            f"{key}['type']",
            f"must be 'publisher', 'subscriber' or 'status', not {kind!r}",
            "Each location says what it is: 'type': 'publisher' or 'type': 'subscriber'.",
            35,
        )
        return None
    allowed = PUBLISHER_KEYS if kind == "publisher" else SUBSCRIBER_KEYS
    for name in raw:
        if name not in allowed and name in (PUBLISHER_KEYS | SUBSCRIBER_KEYS):
            c.error(
                f"{key}[{name!r}]",
                f"{name!r} does not apply to {kind} locations",
                f"Move it to a {'subscriber' if kind == 'publisher' else 'publisher'} location.",
                36,
            )
    c.unknown_keys(
        key,
        {k: v for k, v in raw.items() if k not in (PUBLISHER_KEYS | SUBSCRIBER_KEYS)},
        allowed,
        37,
    )
    parsed = _location_pattern(c, key, raw)
    store = raw.get("store", "default")
    if store not in stores and not c.no_stores and store not in c.broken_stores:
        c.error(
            f"{key}['store']",
            f"names the store {store!r}, which is not configured",
            f"Use one of: {', '.join(map(repr, stores)) or 'none configured'}, "
            "or add it to PUSH_SERVER['store'].",
            38,
        )
    polling = raw.get("polling", "long")
    if polling not in ("long", "interval"):
        c.error(
            f"{key}['polling']", f"must be 'long' or 'interval', not {polling!r}", "Use 'long'.", 39
        )
    for flag in ("create_on_get", "create_on_post", "allow_credentials"):
        if flag in raw and not isinstance(raw[flag], bool):
            c.error(
                f"{key}[{flag!r}]", f"must be True or False, not {raw[flag]!r}", "Use a bool.", 40
            )
    origins = _parse_allow_origin(c, f"{key}['allow_origin']", raw.get("allow_origin", "*"))
    cors_max_age = raw.get("cors_max_age", DEFAULT_CORS_MAX_AGE)
    if not _check_non_negative(c, f"{key}['cors_max_age']", cors_max_age, 83, integer=True):
        cors_max_age = DEFAULT_CORS_MAX_AGE
    credentials = raw.get("allow_credentials", False) is True
    if credentials and origins is not None and "*" in origins.split():
        c.error(
            f"{key}['allow_origin']",
            "'*' cannot be combined with 'allow_credentials': True (browsers refuse it)",
            "Set 'allow_origin' to the exact origin of your pages, e.g. 'http://127.0.0.1:8000'.",
            42,
        )
    passthrough = raw.get("passthrough")
    if passthrough is not None and (
        not isinstance(passthrough, str) or not passthrough.startswith(("http://", "https://"))
    ):
        c.error(
            f"{key}['passthrough']",
            f"must be an absolute http(s) URL, not {passthrough!r}",
            "For example 'http://127.0.0.1:8000/passthrough'.",
            43,
        )
        passthrough = None
    timeout = raw.get("timeout", 0)
    if not _check_non_negative(c, f"{key}['timeout']", timeout, 44, integer=False):
        timeout = 0
    size = raw.get("max_message_size", default_size)
    if not _check_non_negative(c, f"{key}['max_message_size']", size, 45, integer=True):
        size = default_size
    ping_interval = raw.get("ping_interval", 15.0)
    if not _check_non_negative(c, f"{key}['ping_interval']", ping_interval, 48, integer=False):
        ping_interval = 15.0
    send_timeout = raw.get("send_timeout", 30.0)
    if not _check_non_negative(c, f"{key}['send_timeout']", send_timeout, 49, integer=False):
        send_timeout = 30.0
    max_subscribers = raw.get("max_subscribers", 0)
    if not _check_non_negative(c, f"{key}['max_subscribers']", max_subscribers, 55, integer=True):
        max_subscribers = 0
    max_channels = raw.get("max_channels", 255)
    if not _check_non_negative(c, f"{key}['max_channels']", max_channels, 56, integer=True):
        max_channels = 255
    authorization = _parse_authorization(c, key, raw, passthrough)
    allow_from = _parse_allow_from(c, f"{key}['allow_from']", raw.get("allow_from"))
    transports = raw.get("transports", AVAILABLE_TRANSPORTS)
    if isinstance(transports, str):
        transports = (transports,)
    if not isinstance(transports, list | tuple) or not transports:
        c.error(
            f"{key}['transports']",
            f"must be a list of transports, not {transports!r}",
            "Use ['longpoll'].",
            46,
        )
        transports = AVAILABLE_TRANSPORTS
    for name in transports:
        if name not in AVAILABLE_TRANSPORTS:
            c.error(
                f"{key}['transports']",
                f"unknown or unavailable transport {name!r}",
                f"Available here: {', '.join(AVAILABLE_TRANSPORTS)}.",
                47,
            )
    if parsed is None:
        return None
    pattern, regex = parsed
    return LocationConfig(
        index=index,
        type=kind,
        pattern=pattern,
        url=raw.get("url"),
        prefix=raw.get("prefix"),
        regex=regex,
        store=store if isinstance(store, str) else "default",
        polling=polling if polling in ("long", "interval") else "long",
        create_on_get=raw.get("create_on_get", False) is True,
        create_on_post=raw.get("create_on_post", True) is not False,
        allow_origin=origins or "*",
        allow_credentials=credentials,
        passthrough=passthrough,
        timeout=float(timeout),
        max_message_size=int(size),
        transports=tuple(t for t in transports if t in AVAILABLE_TRANSPORTS) or ("longpoll",),
        ping_interval=float(ping_interval),
        send_timeout=float(send_timeout),
        allow_from=allow_from,
        max_channel_id_length=max_channel_id_length,
        max_subscribers=int(max_subscribers),
        max_channels=int(max_channels),
        **authorization,
        cors_max_age=int(cors_max_age),
        cors=kind == "subscriber" or any(name in raw for name in CORS_KEYS),
    )


def _parse_status_location(
    c: _Collector, index: int, raw: Mapping[str, Any], key: str
) -> LocationConfig | None:
    """A status location: its path (the rest after the prefix may be empty), who may read
    it (``allow_from``, as a publisher location) and the status page's ``interval``."""
    other_keys = (PUBLISHER_KEYS | SUBSCRIBER_KEYS) - STATUS_KEYS
    for name in raw:
        if name in other_keys:
            c.error(
                f"{key}[{name!r}]",
                f"{name!r} does not apply to status locations",
                f"Remove it; a status location takes {', '.join(sorted(STATUS_KEYS))}.",
                36,
            )
    c.unknown_keys(key, {k: v for k, v in raw.items() if k not in other_keys}, STATUS_KEYS, 37)
    parsed = _location_pattern(c, key, raw, rest="(.*)")
    interval = raw.get("interval", STATUS_INTERVAL)
    if not _is_number(interval) or not (interval == 0 or interval >= MIN_STATUS_INTERVAL):
        c.error(
            f"{key}['interval']",
            f"must be 0 or a number of seconds >= {MIN_STATUS_INTERVAL}, not {interval!r}",
            f"Use e.g. {STATUS_INTERVAL:g} (seconds between status page updates), or 0 for none.",
            70,
        )
        interval = STATUS_INTERVAL
    allow_from = _parse_allow_from(c, f"{key}['allow_from']", raw.get("allow_from"))
    if parsed is None:
        return None
    pattern, regex = parsed
    return LocationConfig(
        index=index,
        type="status",
        pattern=pattern,
        url=raw.get("url"),
        prefix=raw.get("prefix"),
        regex=regex,
        allow_from=allow_from,
        interval=float(interval),
    )


def _check_backend_publishing(
    c: _Collector, stores: dict[str, StoreConfig], locations: list[LocationConfig]
) -> None:
    """``publish_via='backend'`` writes to the first publisher location's store from the
    Django process: only a store shared with the push server makes that reach anyone."""
    key = "PUSH_SERVER['publish_via']"
    publisher = next((loc for loc in locations if loc.type == "publisher"), None)
    if publisher is None:
        c.error(
            key,
            "'backend' publishes to the first publisher location's store, and there is none",
            "Add {'type': 'publisher', 'prefix': '/publisher/', 'store': ...} to 'locations'.",
            51,
        )
        return
    store = stores.get(publisher.store)
    if store is not None and store.type not in BACKEND_PUBLISH_STORES:
        c.error(
            key,
            f"'backend' needs a redis store, but the first publisher location "
            f"(PUSH_SERVER['locations'][{publisher.index}]) uses {store.name!r}, "
            f"a {store.type!r} store that only the push server process can reach",
            "Give that location a 'type': 'redis' store, or set 'publish_via': 'http'.",
            51,
        )


def parse(raw: Mapping[str, Any] | None) -> tuple[ServerConfig, list[Problem]]:
    """Parse ``PUSH_SERVER``; return the config (best effort) and every problem found."""
    c = _Collector()
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        c.error(
            "PUSH_SERVER",
            f"must be a dict, not {type(raw).__name__}",
            "Write PUSH_SERVER = {...}.",
            1,
        )
        raw = {}
    c.unknown_keys("PUSH_SERVER", raw, set(TOP_LEVEL_KEYS), 2)

    port = raw.get("port")
    if port is not None and (
        isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535
    ):
        c.error("PUSH_SERVER['port']", f"must be a port number, not {port!r}", "Use e.g. 8001.", 3)
        port = None
    address = raw.get("address")
    if address is not None and not isinstance(address, str):
        c.error(
            "PUSH_SERVER['address']", f"must be a string, not {address!r}", "Use '127.0.0.1'.", 4
        )
        address = None
    servername = raw.get("servername")
    if servername is not None and not isinstance(servername, str):
        c.error(
            "PUSH_SERVER['servername']",
            f"must be a string, not {servername!r}",
            "Use e.g. 'push'.",
            5,
        )
        servername = None
    publish_timeout = _top_level_limit(c, raw, "publish_timeout", 5.0, 6, integer=False)
    transport = raw.get("transport", "longpoll")
    if transport not in AVAILABLE_TRANSPORTS:
        c.error(
            "PUSH_SERVER['transport']",
            f"unknown or unavailable transport {transport!r}",
            f"Available here: {', '.join(AVAILABLE_TRANSPORTS)}.",
            7,
        )
        transport = "longpoll"
    default_size = _top_level_limit(c, raw, "max_message_size", 1024 * 1024, 8, integer=True)
    max_id_length = _top_level_limit(c, raw, "max_channel_id_length", 1024, 54, integer=True)
    max_connections = raw.get("max_connections")
    if max_connections is not None and not _check_non_negative(
        c, "PUSH_SERVER['max_connections']", max_connections, 80, integer=True
    ):
        max_connections = None
    max_header_size = raw.get("max_header_size", DEFAULT_MAX_HEADER_SIZE)
    if (
        isinstance(max_header_size, bool)
        or not isinstance(max_header_size, int)
        or max_header_size < MIN_HEADER_SIZE
    ):
        c.error(
            "PUSH_SERVER['max_header_size']",
            f"must be a whole number of bytes >= {MIN_HEADER_SIZE}, not {max_header_size!r}",
            f"Use e.g. {DEFAULT_MAX_HEADER_SIZE} (16 KiB, the default); browsers with many "
            "cookies send heads of several KiB.",
            81,
        )
        max_header_size = DEFAULT_MAX_HEADER_SIZE
    header_timeout = _positive_seconds(
        c,
        raw,
        "client_header_timeout",
        DEFAULT_CLIENT_HEADER_TIMEOUT,
        82,
        f"Use e.g. {DEFAULT_CLIENT_HEADER_TIMEOUT:g}, the default.",
    )
    shutdown_timeout = _positive_seconds(
        c,
        raw,
        "shutdown_timeout",
        5.0,
        90,
        "Set it to how long a stopping server may finish in-flight requests, e.g. 5.",
    )

    publish_via = raw.get("publish_via", "http")
    if publish_via not in PUBLISH_VIA:
        c.error(
            "PUSH_SERVER['publish_via']",
            f"must be 'http' or 'backend', not {publish_via!r}",
            "Use 'http' (POST to the push server) or 'backend' (publish to a redis store).",
            50,
        )
        publish_via = "http"

    publisher_secret = raw.get("publisher_secret")
    if publisher_secret is not None and (
        not isinstance(publisher_secret, str) or not publisher_secret
    ):
        c.error(
            "PUSH_SERVER['publisher_secret']",
            "must be a non-empty string",
            "Use a long random string kept out of version control, or remove the key.",
            53,
        )
        publisher_secret = None

    stores = _parse_stores(c, raw.get("store"))
    raw_locations = raw.get("locations", DEFAULT_LOCATIONS)
    locations: list[LocationConfig] = []
    if not isinstance(raw_locations, list | tuple):
        c.error(
            "PUSH_SERVER['locations']",
            f"must be a list of location dicts, not {type(raw_locations).__name__}",
            "Use [{'type': 'publisher', 'prefix': '/publisher/'}, "
            "{'type': 'subscriber', 'prefix': '/subscriber/'}].",
            30,
        )
        raw_locations = ()
    for index, raw_location in enumerate(raw_locations):
        location = _parse_location(c, index, raw_location, stores, default_size, int(max_id_length))
        if location is not None:
            locations.append(location)
    if publish_via == "backend":
        _check_backend_publishing(c, stores, locations)
    _check_budgets(c, stores, locations)

    config = ServerConfig(
        port=port,
        address=address,
        servername=servername,
        stores=stores,
        locations=tuple(locations),
        publisher_host=_parse_host(c, "publisher_host", raw.get("publisher_host")),
        subscriber_host=_parse_host(c, "subscriber_host", raw.get("subscriber_host")),
        publish_timeout=float(publish_timeout),
        transport=transport,
        publish_via=publish_via,
        publisher_secret=publisher_secret,
        max_connections=max_connections,
        max_header_size=int(max_header_size),
        client_header_timeout=float(header_timeout),
        shutdown_timeout=float(shutdown_timeout),
    )
    return config, c.problems


def load(raw: Mapping[str, Any] | None) -> ServerConfig:
    """Parse and raise :class:`ConfigurationError` if anything is an error."""
    config, problems = parse(raw)
    errors = [p for p in problems if p.level == "error"]
    if errors:
        raise ConfigurationError(errors)
    return config
