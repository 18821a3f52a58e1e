"""Counters for the status location: one small object per hub (per store), per process.

The hub and the transports increment plain integer attributes; nothing here runs per
subscriber. Fan-out itself is counted by the hub's own ``published`` / ``delivered`` /
``overflows`` (one addition per message, not per subscriber), which the status snapshot
reads next to these. Gauges (connections open now) go up when a connection starts and down
when it ends, in a ``finally``.
"""

from __future__ import annotations

#: Transports whose open connections are counted, in the order the status shows them.
CONNECTION_TRANSPORTS = ("longpoll", "eventsource", "websocket")


class Metrics:
    """What one hub's store and its transports did in this process since it started."""

    __slots__ = (
        "catch_ups",
        "eventsource",
        "gaps",
        "longpoll",
        "publish_errors",
        "published",
        "publishes_refused",
        "slow_eventsource",
        "slow_websocket",
        "subscribes_refused",
        "websocket",
    )

    def __init__(self) -> None:
        #: Messages this process stored (publisher locations and in-process send_update).
        self.published = 0
        #: Publishes that failed because the store was unavailable (503).
        self.publish_errors = 0
        #: Publishes refused because the store was at a budget (507), and subscribes that
        #: would have created a channel then (memory_limit, max_channels, maxmemory).
        self.publishes_refused = 0
        self.subscribes_refused = 0
        #: Gauges: long polls waiting, event streams and WebSockets open.
        self.longpoll = 0
        self.eventsource = 0
        self.websocket = 0
        #: Streaming subscribers disconnected by ``send_timeout`` (they stopped reading).
        self.slow_eventsource = 0
        self.slow_websocket = 0
        #: Subscribers that overflowed their queue and were caught up from the buffer.
        self.catch_ups = 0
        #: Gap notices sent: messages had left the buffer before a subscriber got them.
        self.gaps = 0

    def connections(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in CONNECTION_TRANSPORTS}
