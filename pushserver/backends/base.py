"""The backend interface.

A backend stores channels and their retained messages, assigns message ids and tells the
:class:`~pushserver.hub.Hub` about every message published and every channel deleted,
including those published by other processes (a Redis backend hears them over Redis).
Fan-out to subscribers is not the backend's business: the hub does it, once, in the core.

Lifecycle is ``async with backend: ...``. A backend is bound to exactly one listener (its
hub) before it is opened.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Protocol

from ..message import ChannelInfo, Message, MessageId


class Listener(Protocol):
    """What a backend reports to. :class:`~pushserver.hub.Hub` implements it."""

    def on_message(self, channel_id: str, message: Message) -> int:
        """A message was published; return how many local subscribers it reached."""

    def on_delete(self, channel_id: str) -> None:
        """The channel was deleted; its subscribers must be told."""


@dataclass(frozen=True, slots=True)
class PublishResult:
    message: Message
    #: Subscribers that were waiting for this channel when it was published (201 vs 202).
    subscribers: int
    #: True when an idempotency key had been seen: this is the first publish's result (its
    #: id, time and subscribers), and nothing was stored this time.
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class ReadResult:
    #: The first retained message strictly after the position asked for, or None.
    message: Message | None
    #: True when messages after the position were dropped from the buffer before they
    #: could be read (the client fell too far behind).
    gap: bool = False


class Backend(ABC):
    """Channel storage and id assignment. Subclasses implement every abstract method."""

    #: The ``type`` name used in ``PUSH_SERVER['store']``.
    name: str = ""

    def __init__(self, **options: Any) -> None:
        self.options = options
        self._listener: Listener | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def bind(self, listener: Listener) -> None:
        if self._listener is not None and self._listener is not listener:
            raise RuntimeError("a backend serves exactly one hub")
        self._listener = listener

    @property
    def listener(self) -> Listener:
        if self._listener is None:
            raise RuntimeError("backend used before a hub was bound to it")
        return self._listener

    async def open(self) -> None:
        """Acquire resources (connections, background tasks)."""

    async def aclose(self) -> None:
        """Release everything :meth:`open` acquired."""

    def status(self) -> dict[str, Any]:
        """The backend's health for server info and logs; ``ok`` is False while it cannot
        store or deliver (a distributed backend that lost its server).

        Optional keys the status location shows against the store's budget:
        ``memory_used`` and ``memory_limit`` (bytes; limit 0 = none), ``channels`` and
        ``max_channels``, ``refusals`` (a dict: budget name -> refusals counted by the
        backend itself)."""
        return {"type": self.name, "ok": True}

    async def __aenter__(self) -> Backend:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- channels ---------------------------------------------------------------------------

    @abstractmethod
    async def create(self, channel_id: str, *, publisher: bool = True) -> bool:
        """Create the channel if missing; return True if it was created.

        ``publisher=False`` when a subscriber creates it (``create_on_get``): the store's
        ``channel_timeout`` then removes it while it stays empty and unsubscribed. Raises
        :class:`~pushserver.exceptions.StoreFull` when the store is at a budget.
        """

    @abstractmethod
    async def exists(self, channel_id: str) -> bool: ...

    @abstractmethod
    async def publish(
        self,
        channel_id: str,
        body: bytes,
        content_type: str,
        *,
        event: str | None = None,
        create: bool = True,
        idempotency_key: str | None = None,
    ) -> PublishResult:
        """Store a message and have it delivered to every subscriber of the channel.

        With an ``idempotency_key`` seen on the channel within the backend's
        ``idempotency_window``, nothing is stored: the result is the first publish's, with
        ``replayed`` set. (The hub passes the key only when there is one, so a backend
        without idempotency support keeps working without it.)

        Raises :class:`~pushserver.exceptions.ChannelNotFound` when the channel is missing
        and ``create`` is false, :class:`~pushserver.exceptions.StoreFull` when the store is
        at a budget, :class:`~pushserver.exceptions.BackendUnavailable` when it could not be
        stored otherwise (in every case nothing was published).
        """

    @abstractmethod
    async def read_after(self, channel_id: str, after: MessageId) -> ReadResult:
        """The first retained message with an id greater than ``after``.

        Raises :class:`~pushserver.exceptions.ChannelNotFound` for a missing channel.
        """

    @abstractmethod
    async def info(self, channel_id: str) -> ChannelInfo | None:
        """Channel info, or None when the channel does not exist."""

    @abstractmethod
    async def delete(self, channel_id: str) -> bool:
        """Delete the channel and its messages; False if it did not exist."""

    @abstractmethod
    async def touch(self, channel_id: str) -> None:
        """Record that a subscriber asked for the channel now ("last requested")."""

    # -- live delivery ----------------------------------------------------------------------

    async def listen(self, channel_id: str) -> None:
        """The hub has its first local subscriber on the channel.

        A distributed backend starts receiving the channel's messages from other processes
        here (one subscription per channel per process); the memory backend has nothing to do.
        """

    async def unlisten(self, channel_id: str) -> None:
        """The hub's last local subscriber on the channel left."""

    async def subscribers_changed(self, channel_id: str, delta: int) -> None:
        """Local subscribers of the channel went up or down by ``delta``."""
