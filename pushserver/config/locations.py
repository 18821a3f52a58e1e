"""``PUSH_SERVER['locations']``: publisher, subscriber and status locations.

The keys each kind takes and their defaults come from :data:`~.table.LOCATION_OPTIONS`; the
keys with a kind are read from there, the others (the path, origins, networks, the
authorization hook, transports) are checked here.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any

from ..options import Collector, is_number
from .model import LocationConfig, StoreConfig
from .table import (
    ALLOW_ANY,
    AVAILABLE_TRANSPORTS,
    CORS_KEYS,
    LOCATION,
    LOCATION_OPTIONS,
    MIN_STATUS_INTERVAL,
    PUBLISHER,
    PUBLISHER_KEYS,
    STATUS,
    STATUS_INTERVAL,
    STATUS_KEYS,
    SUBSCRIBER,
    SUBSCRIBER_KEYS,
)

#: scheme://host[:port], the form a browser's Origin header has (nothing after the port).
_ORIGIN_RE = re.compile(r"[a-z][a-z0-9+.-]*://[^\s/?#@]+\Z")
_DOTTED_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")
#: The options a publisher or subscriber location reads from the table, by their kind.
_KINDED = tuple(
    option
    for option in LOCATION_OPTIONS
    if option.kind is not None and {PUBLISHER, SUBSCRIBER} & set(option.where)
)


def _location_pattern(
    c: Collector, key: str, raw: Mapping[str, Any], rest: str = "(.+)"
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


def _parse_allow_from(c: Collector, key: str, raw: Any) -> tuple[str, ...] | None:
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


def _parse_allow_origin(c: Collector, key: str, raw: Any) -> str | None:
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


def _check_authorization(c: Collector, key: str, raw: Mapping[str, Any], values: dict) -> None:
    """What the subscriber authorization keys say together (E061, E062, W060); importing
    the hook is checked at startup by the Django checks (E065, E066), the signing key too
    (E067). Sets ``values['can_subscribe']``."""
    if values["passthrough_authorize"] and "passthrough" not in raw:
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
    values["can_subscribe"] = hook
    if "authorize_timeout" in raw and not (values["passthrough_authorize"] or hook):
        c.warning(
            f"{key}['authorize_timeout']",
            "has no effect: the location has neither 'passthrough_authorize' nor 'can_subscribe'",
            "Remove it, or turn on one of those authorizers.",
            60,
        )


def _parse_transports(c: Collector, key: str, raw: Mapping[str, Any]) -> tuple[str, ...]:
    transports = raw.get("transports", LOCATION["transports"].default)
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
    return tuple(t for t in transports if t in AVAILABLE_TRANSPORTS) or ("longpoll",)


def parse_location(
    c: Collector,
    index: int,
    raw: Any,
    stores: dict[str, StoreConfig],
    unchecked_stores: set[str] | None,
    default_size: int,
    max_channel_id_length: int,
) -> LocationConfig | None:
    """One location. A store name in ``unchecked_stores`` (a store already reported as
    wrong; None: all, there is no store) is not reported again."""
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
    if kind == STATUS:
        return _parse_status_location(c, index, raw, key)
    if kind not in (PUBLISHER, SUBSCRIBER):
        c.error(
            f"{key}['type']",
            f"must be 'publisher', 'subscriber' or 'status', not {kind!r}",
            "Each location says what it is: 'type': 'publisher' or 'type': 'subscriber'.",
            35,
        )
        return None
    allowed = PUBLISHER_KEYS if kind == PUBLISHER else SUBSCRIBER_KEYS
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
    store = raw.get("store", LOCATION["store"].default)
    if store not in stores and unchecked_stores is not None and store not in unchecked_stores:
        c.error(
            f"{key}['store']",
            f"names the store {store!r}, which is not configured",
            f"Use one of: {', '.join(map(repr, stores)) or 'none configured'}, "
            "or add it to PUSH_SERVER['store'].",
            38,
        )
    polling = raw.get("polling", LOCATION["polling"].default)
    if polling not in ("long", "interval"):
        c.error(
            f"{key}['polling']", f"must be 'long' or 'interval', not {polling!r}", "Use 'long'.", 39
        )
        polling = LOCATION["polling"].default
    # A publisher location's largest message defaults to the top-level max_message_size.
    values = {
        option.name: option.read(
            c, key, raw, default_size if option.name == "max_message_size" else ...
        )
        for option in _KINDED
    }
    origins = _parse_allow_origin(
        c, f"{key}['allow_origin']", raw.get("allow_origin", LOCATION["allow_origin"].default)
    )
    if values["allow_credentials"] and origins is not None and "*" in origins.split():
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
    _check_authorization(c, key, raw, values)
    allow_from = _parse_allow_from(c, f"{key}['allow_from']", raw.get("allow_from"))
    transports = _parse_transports(c, key, raw)
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
        store=store if isinstance(store, str) else LOCATION["store"].default,
        polling=polling,
        allow_origin=origins or LOCATION["allow_origin"].default,
        passthrough=passthrough,
        transports=transports,
        allow_from=allow_from,
        max_channel_id_length=max_channel_id_length,
        cors=kind == SUBSCRIBER or any(name in raw for name in CORS_KEYS),
        **values,
    )


def _parse_status_location(
    c: Collector, index: int, raw: Mapping[str, Any], key: str
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
    if not is_number(interval) or not (interval == 0 or interval >= MIN_STATUS_INTERVAL):
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
        type=STATUS,
        pattern=pattern,
        url=raw.get("url"),
        prefix=raw.get("prefix"),
        regex=regex,
        allow_from=allow_from,
        interval=float(interval),
    )
