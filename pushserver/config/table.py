"""Every ``PUSH_SERVER`` key, declared once: name, default, kind, check id and doc.

The parser (:mod:`pushserver.config`) reads the keys from these tables, the dataclasses of
:mod:`.model` take their defaults from them, and the key sets the checks use (which keys a
publisher, subscriber or status location takes) are derived from them. Keys whose shape is
more than a :class:`~pushserver.options.Kind` can say (a regex, a list of origins, a store)
have no kind: the parser checks them by hand, with the check id written here. The stores'
options are declared by the store classes themselves (:attr:`Backend.option_table
<pushserver.backends.base.Backend.option_table>`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..options import FLAG, POSITIVE_SECONDS, SECONDS, TEXT, WHOLE, Option

TRANSPORTS = ("longpoll", "eventsource", "websocket")
#: Transports this version implements; the others are refused by the checks.
AVAILABLE_TRANSPORTS = ("longpoll", "eventsource", "websocket")

DEFAULT_LOCATIONS = (
    {"type": "publisher", "prefix": "/publisher/"},
    {"type": "subscriber", "prefix": "/subscriber/"},
)
PUBLISH_VIA = ("http", "backend")
#: Store types send_update can publish to directly (``publish_via='backend'``): shared ones.
BACKEND_PUBLISH_STORES = ("redis",)
#: The largest message body a publisher location accepts unless told otherwise (1 MiB).
DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024
DEFAULT_MAX_HEADER_SIZE = 16 * 1024
#: Smallest max_header_size accepted: a browser's request line and headers need this much.
MIN_HEADER_SIZE = 1024
DEFAULT_CLIENT_HEADER_TIMEOUT = 75.0
#: The original's Access-Control-Max-Age.
DEFAULT_CORS_MAX_AGE = 864000
#: Keys that turn CORS headers on for a publisher location (subscribers always send them).
CORS_KEYS = ("allow_origin", "allow_credentials", "cors_max_age")
#: ``allow_from: '*'``: every address may publish.
ALLOW_ANY = ("0.0.0.0/0", "::/0")
#: Default seconds between the snapshots a status page receives.
STATUS_INTERVAL = 2.0
#: Shortest interval accepted (0 aside, which means no live updates).
MIN_STATUS_INTERVAL = 0.1

TOP_LEVEL_OPTIONS = (
    Option("port", None, code=3, doc="listen port (the command line overrides it)"),
    Option(
        "address",
        None,
        TEXT,
        4,
        hint="Use '127.0.0.1'.",
        doc="bind address (the command line overrides it)",
    ),
    Option("servername", None, TEXT, 5, hint="Use e.g. 'push'.", doc="value of the Server header"),
    Option(
        "store",
        {"type": "memory"},
        code=10,
        doc="one store dict with 'type', or a dict of named stores",
    ),
    Option(
        "locations", DEFAULT_LOCATIONS, code=30, doc="list of publisher and subscriber locations"
    ),
    Option(
        "publisher_host",
        None,
        code=20,
        doc="{'location': 'host:port', 'secure': bool} used by send_update",
    ),
    Option(
        "subscriber_host",
        None,
        code=20,
        doc="{'location': 'host:port', 'secure': bool} used by {% channel_url %}",
    ),
    Option("publish_timeout", 5.0, SECONDS, 6, doc="seconds send_update waits for the push server"),
    Option("transport", "longpoll", code=7, doc="the transport pages use"),
    Option(
        "max_message_size",
        DEFAULT_MAX_MESSAGE_SIZE,
        WHOLE,
        8,
        doc="largest accepted message body in bytes (0 = no limit)",
    ),
    Option(
        "publish_via",
        "http",
        code=50,
        doc="how send_update publishes: 'http' or 'backend' (straight to Redis)",
    ),
    Option(
        "publisher_secret",
        None,
        code=53,
        doc="shared secret publishers must prove (Authorization: Bearer token)",
    ),
    Option(
        "max_channel_id_length",
        1024,
        WHOLE,
        54,
        doc="longest accepted channel id in characters (0 = no limit)",
    ),
    Option(
        "max_connections",
        None,
        WHOLE,
        80,
        doc="subscriber requests served at once per process (None: from ulimit -n)",
    ),
    Option(
        "max_header_size",
        DEFAULT_MAX_HEADER_SIZE,
        code=81,
        doc="largest request head in bytes (431 above it)",
    ),
    Option(
        "client_header_timeout",
        DEFAULT_CLIENT_HEADER_TIMEOUT,
        POSITIVE_SECONDS,
        82,
        hint=f"Use e.g. {DEFAULT_CLIENT_HEADER_TIMEOUT:g}, the default.",
        doc="seconds to receive a request head, also the keep-alive idle time",
    ),
    Option(
        "shutdown_timeout",
        5.0,
        POSITIVE_SECONDS,
        90,
        hint="Set it to how long a stopping server may finish in-flight requests, e.g. 5.",
        doc="seconds a stopping server lets in-flight requests finish",
    ),
)

PUBLISHER, SUBSCRIBER, STATUS = "publisher", "subscriber", "status"
_BOTH = (PUBLISHER, SUBSCRIBER)


@dataclass(frozen=True)
class LocationOption(Option):
    """A location key: an :class:`~pushserver.options.Option` and the kinds of location
    that take it (a key given to another kind is ``pushserver.E036``)."""

    #: The location types that take the key.
    where: tuple[str, ...] = _BOTH


_FLAG_HINT = "Use True to turn it on, or remove the key."

LOCATION_OPTIONS = (
    LocationOption(
        "type",
        None,
        code=35,
        where=(PUBLISHER, SUBSCRIBER, STATUS),
        doc="'publisher', 'subscriber' or 'status'",
    ),
    LocationOption(
        "url",
        None,
        code=32,
        where=(PUBLISHER, SUBSCRIBER, STATUS),
        doc="regex of the path, with one group: the channel id",
    ),
    LocationOption(
        "prefix",
        None,
        code=32,
        where=(PUBLISHER, SUBSCRIBER, STATUS),
        doc="path prefix; the channel id is the rest",
    ),
    LocationOption("store", "default", code=38, doc="name of the store the location uses"),
    LocationOption("allow_origin", "*", code=41, doc="Access-Control-Allow-Origin"),
    LocationOption(
        "allow_credentials", False, FLAG, 40, doc="Access-Control-Allow-Credentials: true"
    ),
    LocationOption(
        "cors_max_age", DEFAULT_CORS_MAX_AGE, WHOLE, 83, doc="Access-Control-Max-Age, seconds"
    ),
    LocationOption(
        "create_on_post",
        True,
        FLAG,
        40,
        where=(PUBLISHER,),
        doc="a POST to an unknown channel creates it",
    ),
    LocationOption(
        "max_message_size",
        DEFAULT_MAX_MESSAGE_SIZE,
        WHOLE,
        45,
        where=(PUBLISHER,),
        doc="largest accepted body in bytes (default: the top-level key)",
    ),
    LocationOption(
        "allow_from",
        None,
        code=52,
        where=(PUBLISHER, STATUS),
        doc="networks that may connect (None: loopback and INTERNAL_IPS)",
    ),
    LocationOption(
        "polling", "long", code=39, where=(SUBSCRIBER,), doc="'long' or 'interval' polling"
    ),
    LocationOption(
        "create_on_get",
        False,
        FLAG,
        40,
        where=(SUBSCRIBER,),
        doc="a GET on an unknown channel creates it",
    ),
    LocationOption(
        "passthrough",
        None,
        code=43,
        where=(SUBSCRIBER,),
        doc="URL told when a subscriber starts and stops listening",
    ),
    LocationOption(
        "timeout",
        0.0,
        SECONDS,
        44,
        where=(SUBSCRIBER,),
        doc="longest a long poll is held, seconds (0 = no limit)",
    ),
    LocationOption(
        "transports",
        AVAILABLE_TRANSPORTS,
        code=46,
        where=(SUBSCRIBER,),
        doc="transports the location serves",
    ),
    LocationOption(
        "ping_interval",
        15.0,
        SECONDS,
        48,
        where=(SUBSCRIBER,),
        doc="seconds between keepalives on event streams and WebSockets (0 = none)",
    ),
    LocationOption(
        "send_timeout",
        30.0,
        SECONDS,
        49,
        where=(SUBSCRIBER,),
        doc="seconds one write to a streaming subscriber may block",
    ),
    LocationOption(
        "max_subscribers",
        0,
        WHOLE,
        55,
        where=(SUBSCRIBER,),
        doc="subscribers one channel may have at once (0 = no limit)",
    ),
    LocationOption(
        "max_channels",
        255,
        WHOLE,
        56,
        where=(SUBSCRIBER,),
        doc="channels one event stream or WebSocket may carry (0 = no limit)",
    ),
    LocationOption(
        "passthrough_authorize",
        False,
        FLAG,
        60,
        hint=_FLAG_HINT,
        where=(SUBSCRIBER,),
        doc="the passthrough URL authorizes each subscribe",
    ),
    LocationOption(
        "can_subscribe",
        None,
        code=62,
        where=(SUBSCRIBER,),
        doc="dotted path of can_subscribe(request, channel_id)",
    ),
    LocationOption(
        "signed",
        False,
        FLAG,
        63,
        hint=_FLAG_HINT,
        where=(SUBSCRIBER,),
        doc="subscribers present a signature per channel",
    ),
    LocationOption(
        "authorize_timeout",
        5.0,
        SECONDS,
        64,
        where=(SUBSCRIBER,),
        doc="seconds an authorizer may take (0 = no limit)",
    ),
    LocationOption(
        "interval",
        STATUS_INTERVAL,
        code=70,
        where=(STATUS,),
        doc="seconds between status page snapshots (0 = none)",
    ),
)

#: Top-level keys and what each is for.
TOP_LEVEL_KEYS = {option.name: option.doc for option in TOP_LEVEL_OPTIONS}
#: The options by name.
TOP_LEVEL = {option.name: option for option in TOP_LEVEL_OPTIONS}
LOCATION = {option.name: option for option in LOCATION_OPTIONS}


def _keys(kind: str) -> set[str]:
    return {option.name for option in LOCATION_OPTIONS if kind in option.where}


PUBLISHER_KEYS = _keys(PUBLISHER)
SUBSCRIBER_KEYS = _keys(SUBSCRIBER)
#: A status location (counters, backend health, the live status page; docs/observability.md).
STATUS_KEYS = _keys(STATUS)
COMMON_LOCATION_KEYS = PUBLISHER_KEYS & SUBSCRIBER_KEYS
