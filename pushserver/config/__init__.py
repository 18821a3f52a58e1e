"""``PUSH_SERVER``: the original django-pushserver schema, parsed and validated.

:func:`parse` turns the settings dict into a :class:`ServerConfig` and a list of
:class:`Problem`; it never raises for bad input. The Django system checks report the
problems at startup (naming the key and the fix); :func:`load` raises
:class:`~pushserver.exceptions.ConfigurationError` for code outside Django.

The package, one concept per module:

:mod:`.table`
    every top-level and location key, declared once (name, default, kind, check id, doc),
    and the key sets derived from it;
:mod:`.model`
    the dataclasses :func:`parse` returns, their defaults taken from the table;
:mod:`.stores`
    the ``store`` dict; each store's options are declared and checked by its class
    (:class:`~pushserver.options.Configurable`);
:mod:`.locations`
    publisher, subscriber and status locations;
this module
    the top-level keys, the hosts, and :func:`parse` / :func:`load`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..backends import BUILTIN_OPTIONS, options_class
from ..exceptions import ConfigurationError
from ..options import Collector, Problem
from .locations import parse_location
from .model import HostConfig, LocationConfig, ServerConfig, StoreConfig
from .stores import check_backend_publishing, check_message_sizes, parse_stores
from .table import (
    ALLOW_ANY,
    AVAILABLE_TRANSPORTS,
    BACKEND_PUBLISH_STORES,
    COMMON_LOCATION_KEYS,
    CORS_KEYS,
    DEFAULT_CLIENT_HEADER_TIMEOUT,
    DEFAULT_CORS_MAX_AGE,
    DEFAULT_LOCATIONS,
    DEFAULT_MAX_HEADER_SIZE,
    LOCATION_OPTIONS,
    MIN_HEADER_SIZE,
    MIN_STATUS_INTERVAL,
    PUBLISH_VIA,
    PUBLISHER_KEYS,
    STATUS_INTERVAL,
    STATUS_KEYS,
    SUBSCRIBER_KEYS,
    TOP_LEVEL,
    TOP_LEVEL_KEYS,
    TOP_LEVEL_OPTIONS,
    TRANSPORTS,
)

#: The built-in stores' options with their defaults, as their classes declare them.
STORE_DEFAULTS: dict[str, dict[str, Any]] = {
    name: options_class(name).option_defaults() for name in BUILTIN_OPTIONS
}


def _parse_host(c: Collector, name: str, raw: Any) -> HostConfig | None:
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


def parse(raw: Mapping[str, Any] | None) -> tuple[ServerConfig, list[Problem]]:
    """Parse ``PUSH_SERVER``; return the config (best effort) and every problem found."""
    c = Collector()
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
    c.unknown_keys("PUSH_SERVER", raw, set(TOP_LEVEL), 2)
    # The keys a kind says enough about; the others below, each by hand.
    values = {
        option.name: option.read(c, "PUSH_SERVER", raw)
        for option in TOP_LEVEL_OPTIONS
        if option.kind is not None
    }
    default_size = values.pop("max_message_size")
    max_id_length = values.pop("max_channel_id_length")

    port = raw.get("port")
    if port is not None and (
        isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535
    ):
        c.error("PUSH_SERVER['port']", f"must be a port number, not {port!r}", "Use e.g. 8001.", 3)
        port = None
    transport = raw.get("transport", TOP_LEVEL["transport"].default)
    if transport not in AVAILABLE_TRANSPORTS:
        c.error(
            "PUSH_SERVER['transport']",
            f"unknown or unavailable transport {transport!r}",
            f"Available here: {', '.join(AVAILABLE_TRANSPORTS)}.",
            7,
        )
        transport = TOP_LEVEL["transport"].default
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
    publish_via = raw.get("publish_via", TOP_LEVEL["publish_via"].default)
    if publish_via not in PUBLISH_VIA:
        c.error(
            "PUSH_SERVER['publish_via']",
            f"must be 'http' or 'backend', not {publish_via!r}",
            "Use 'http' (POST to the push server) or 'backend' (publish to a redis store).",
            50,
        )
        publish_via = TOP_LEVEL["publish_via"].default
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

    stores, unchecked_stores = parse_stores(c, raw.get("store"))
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
        location = parse_location(
            c, index, raw_location, stores, unchecked_stores, default_size, max_id_length
        )
        if location is not None:
            locations.append(location)
    if publish_via == "backend":
        check_backend_publishing(c, stores, locations)
    check_message_sizes(c, stores, locations)

    config = ServerConfig(
        port=port,
        stores=stores,
        locations=tuple(locations),
        publisher_host=_parse_host(c, "publisher_host", raw.get("publisher_host")),
        subscriber_host=_parse_host(c, "subscriber_host", raw.get("subscriber_host")),
        transport=transport,
        publish_via=publish_via,
        publisher_secret=publisher_secret,
        max_header_size=max_header_size,
        **values,
    )
    return config, c.problems


def load(raw: Mapping[str, Any] | None) -> ServerConfig:
    """Parse and raise :class:`ConfigurationError` if anything is an error."""
    config, problems = parse(raw)
    errors = [p for p in problems if p.level == "error"]
    if errors:
        raise ConfigurationError(errors)
    return config


__all__ = [
    "ALLOW_ANY",
    "AVAILABLE_TRANSPORTS",
    "BACKEND_PUBLISH_STORES",
    "COMMON_LOCATION_KEYS",
    "CORS_KEYS",
    "DEFAULT_CLIENT_HEADER_TIMEOUT",
    "DEFAULT_CORS_MAX_AGE",
    "DEFAULT_LOCATIONS",
    "DEFAULT_MAX_HEADER_SIZE",
    "LOCATION_OPTIONS",
    "MIN_HEADER_SIZE",
    "MIN_STATUS_INTERVAL",
    "PUBLISHER_KEYS",
    "PUBLISH_VIA",
    "STATUS_INTERVAL",
    "STATUS_KEYS",
    "STORE_DEFAULTS",
    "SUBSCRIBER_KEYS",
    "TOP_LEVEL_KEYS",
    "TOP_LEVEL_OPTIONS",
    "TRANSPORTS",
    "HostConfig",
    "LocationConfig",
    "Problem",
    "ServerConfig",
    "StoreConfig",
    "load",
    "parse",
]
