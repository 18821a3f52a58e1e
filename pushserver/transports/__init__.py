"""Transport adapters: how subscribers receive messages.

One subscriber URL serves three transports, chosen per request by
:class:`pushserver.app.Subscriber`: ``Accept: text/event-stream`` gets
:class:`SSETransport`, a WebSocket upgrade :class:`WebSocketTransport`, anything else
:class:`LongPollTransport`. The streaming two share :mod:`.streaming` (multiplexed channel
lists, resume ids, catch-up from the buffer, gap events).
"""

from .longpoll import LongPollTransport
from .sse import SSETransport
from .websocket import WebSocketTransport

__all__ = ["LongPollTransport", "SSETransport", "WebSocketTransport"]
