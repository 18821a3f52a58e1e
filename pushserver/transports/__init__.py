"""Transport adapters: how subscribers receive messages over HTTP."""

from .longpoll import LongPollTransport

__all__ = ["LongPollTransport"]
