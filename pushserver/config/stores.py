"""``PUSH_SERVER['store']``: one store or several named ones, each checked by its class.

The parser knows the shape (a dict with a ``type``, or a dict of such dicts); what options a
store takes, their defaults and their checks belong to the store class
(:class:`~pushserver.options.Configurable`, which every
:class:`~pushserver.backends.base.Backend` is), so a backend named by dotted path is checked
the same way as the built-in ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..backends import BUILTIN_OPTIONS, options_class
from ..options import Collector, Configurable
from .model import LocationConfig, StoreConfig
from .table import BACKEND_PUBLISH_STORES, TOP_LEVEL

KEY = "PUSH_SERVER['store']"


def _options_class(store_type: str) -> type[Configurable] | None:
    """The class declaring the store's options; None when it cannot be imported (the
    Django checks report that: ``pushserver.E016``, ``pushserver.E017``)."""
    try:
        return options_class(store_type)
    except (ImportError, AttributeError, TypeError, ValueError):
        return None


def parse_stores(c: Collector, raw: Any) -> tuple[dict[str, StoreConfig], set[str] | None]:
    """The stores configured, and the names of the ones already reported as wrong (a
    location naming one gets no second error); None instead when there is no store at all."""
    if raw is None:
        raw = TOP_LEVEL["store"].default
    if not isinstance(raw, Mapping):
        c.error(KEY, f"must be a dict, not {type(raw).__name__}", "Use {'type': 'memory'}.", 10)
        return {}, None
    named: Mapping[str, Any] = {"default": raw} if "type" in raw else raw
    stores: dict[str, StoreConfig] = {}
    for name, options in named.items():
        skey = KEY if "type" in raw else f"{KEY}[{name!r}]"
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
        if store_type not in BUILTIN_OPTIONS and "." not in store_type:
            c.error(
                f"{skey}['type']",
                f"unknown store type {store_type!r}",
                "Use 'memory', 'redis', or the dotted path of a Backend subclass.",
                15,
            )
            continue
        cls = _options_class(store_type) or Configurable  # unchecked until it imports
        merged, problems = cls.check_options(skey, options)
        c.problems.extend(problems)
        stores[str(name)] = StoreConfig(str(name), store_type, merged)
    if not named:
        c.error(KEY, "no store is configured", "Use {'type': 'memory'}.", 10)
        return stores, None
    return stores, {str(name) for name in named if str(name) not in stores}


def check_message_sizes(
    c: Collector, stores: dict[str, StoreConfig], locations: list[LocationConfig]
) -> None:
    """Each store's class says whether it can hold a message of the largest size its
    publisher locations accept (a memory store's ``memory_limit``: ``pushserver.E103``)."""
    for store in stores.values():
        largest = max(
            (
                location.max_message_size
                for location in locations
                if location.type == "publisher" and location.store == store.name
            ),
            default=0,
        )
        cls = _options_class(store.type)
        if largest and cls is not None:
            key = KEY + (f"[{store.name!r}]" if store.name != "default" else "")
            cls.check_message_size(c, key, store.options, largest)


def check_backend_publishing(
    c: Collector, stores: dict[str, StoreConfig], locations: list[LocationConfig]
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
