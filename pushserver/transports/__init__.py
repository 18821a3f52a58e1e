"""Transport adapters: how subscribers receive messages.

One subscriber URL serves three transports, chosen per request by
:class:`pushserver.app.Subscriber`: ``Accept: text/event-stream`` gets
:class:`SSETransport`, a WebSocket upgrade :class:`WebSocketTransport`, anything else
:class:`LongPollTransport`, on what :mod:`.base` gives a location's transports. All three
let a subscriber in through :mod:`.admission` (authorize, open the channels, check
capacity) and only render its typed refusals, as a status or a close code. The streaming
two share :mod:`.streaming` (catch-up from the buffer, gap events, watching the
connection); what their URLs name (multiplexed channel lists, resume ids) is
:mod:`pushserver.protocol`.
"""

from .longpoll import LongPollTransport
from .sse import SSETransport
from .websocket import WebSocketTransport

__all__ = ["LongPollTransport", "SSETransport", "WebSocketTransport"]
