"""The options of the redis store, declared apart from :mod:`pushserver.backends.redis`.

:class:`~pushserver.backends.redis.RedisBackend` takes them from :class:`RedisOptions`.
They live here, in a module that does not import redis-py, so a ``PUSH_SERVER['store']``
with ``'type': 'redis'`` is checked even where the ``redis`` extra is not installed (that
itself is ``pushserver.E016``, reported beside the option errors).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..options import FLAG, POSITIVE_SECONDS, SECONDS, WHOLE, Collector, Configurable, Option
from .base import CHANNEL_BOUND_OPTIONS, IDEMPOTENCY_WINDOW, RETENTION_OPTIONS


class RedisOptions(Configurable):
    """The redis store's options, and the checks between them: one Redis, a Cluster or
    Sentinel (E170, E171), durable acknowledgement (E172), idempotency (E173)."""

    option_table = (
        *CHANNEL_BOUND_OPTIONS,
        Option("host", "127.0.0.1", doc="Redis host"),
        Option("port", 6379, doc="Redis port"),
        Option("database", 0, doc="database number"),
        Option("key_prefix", "", doc="prefix of every key and pub/sub channel"),
        Option("url", None, doc="redis:// or rediss:// URL, instead of host, port, database"),
        Option("password", None, doc="Redis password"),
        Option("ssl", False, doc="TLS: True, or a dict of redis-py SSL options"),
        *RETENTION_OPTIONS,
        # Past one Redis (docs/redis.md): Cluster, Sentinel, durable acks, idempotency.
        Option("cluster", False, FLAG, 170, hint="Use True.", doc="the Redis is a Cluster"),
        Option("sentinels", None, code=171, doc="'host:port' of the Sentinel processes"),
        Option("service", None, code=171, doc="the primary the sentinels watch"),
        Option("wait_replicas", 0, WHOLE, 172, doc="replicas a publish waits for (WAIT)"),
        Option(
            "wait_timeout",
            1.0,
            POSITIVE_SECONDS,
            172,
            hint="Set it a little above your replicas' usual lag, e.g. 1.",
            doc="seconds a publish waits for wait_replicas",
        ),
        IDEMPOTENCY_WINDOW,
        Option(
            "linger",
            5.0,
            SECONDS,
            174,
            doc="seconds a process keeps a channel's subscription, and its count of the "
            "channel's subscribers, after its last subscriber there left",
        ),
    )

    @classmethod
    def check_combinations(cls, c: Collector, key: str, options: Mapping[str, Any]) -> None:
        cluster, sentinels, service = options["cluster"], options["sentinels"], options["service"]
        if cluster is True and sentinels:
            c.error(
                f"{key}['cluster']",
                "a store is either a Redis Cluster or watched by Sentinel, not both",
                "Remove 'sentinels' (Cluster fails over by itself) or set 'cluster': False.",
                170,
            )
        elif cluster is True and options["database"] != 0:
            c.error(
                f"{key}['database']",
                f"a Redis Cluster has database 0 only, not {options['database']!r}",
                "Remove 'database' (keep stores apart with 'key_prefix').",
                170,
            )
        if sentinels is None:
            return
        fine = (
            isinstance(sentinels, list | tuple)
            and sentinels
            and all(
                isinstance(entry, str) and entry.rpartition(":")[2].isdigit() for entry in sentinels
            )
        )
        if not fine:
            c.error(
                f"{key}['sentinels']",
                f"must be a list of 'host:port' strings, not {sentinels!r}",
                "Write ['10.0.0.1:26379', '10.0.0.2:26379', '10.0.0.3:26379'].",
                171,
            )
        if not isinstance(service, str) or not service:
            c.error(
                f"{key}['service']",
                f"names the primary the sentinels watch; it is {service!r}",
                "Set 'service' to the name in the sentinels' 'sentinel monitor <name> ...'.",
                171,
            )
