"""The backend interface.

A backend stores channels and their retained messages, assigns message ids and tells the
:class:`~pushserver.hub.Hub` about every message published and every channel deleted,
including those published by other processes (a Redis backend hears them over Redis).
Fan-out to subscribers is not the backend's business: the hub does it, once, in the core.

Lifecycle is ``async with backend: ...``. A backend is bound to exactly one listener (its
hub) before it is opened.

Options: a backend class declares the options ``PUSH_SERVER['store']`` may give it in
:attr:`Backend.option_table` (see :class:`~pushserver.options.Configurable`); the settings
checks refuse unknown keys and check each option's kind from that table, and the class's
``check_combinations`` adds the rest. The options both built-in stores share are declared
here.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Protocol

from ..exceptions import ChannelNotFound
from ..message import ChannelInfo, Message, MessageId
from ..options import (
    FLAG,
    SECONDS,
    WHOLE,
    Collector,
    Configurable,
    Kind,
    Option,
    check_non_negative,
)

#: Seconds an empty channel no publisher made is kept (NHPM's push_channel_timeout default).
DEFAULT_CHANNEL_TIMEOUT = 60.0
#: The largest channel_timeout (seconds, about 31 years): finite, and within what Redis's
#: PEXPIRE takes in milliseconds.
MAX_CHANNEL_TIMEOUT = 1e9


def _channel_timeout(c: Collector, key: str, value: Any, option: Option) -> bool:
    if not check_non_negative(c, key, value, option.code, integer=False):
        return False
    if value <= MAX_CHANNEL_TIMEOUT:  # False for NaN too
        return True
    # NaN would have the sweeper reschedule every channel forever and keep them all;
    # infinity or more than Redis's expiry can hold would fail every subscribe there.
    c.error(
        key,
        f"must be a finite number of seconds, at most {MAX_CHANNEL_TIMEOUT:.0f}, not {value!r}",
        "Use e.g. 60 (NHPM's push_channel_timeout); 0 means channels never time out.",
        option.code,
    )
    return False


#: Retention, the original's store options (docs/settings.md#memory).
RETENTION_OPTIONS = (
    Option("min_messages", 0, WHOLE, 14, doc="the newest messages kept however old"),
    Option("max_messages", 0, WHOLE, 14, doc="messages kept per channel (0 = all)"),
    Option("message_timeout", 0, SECONDS, 14, doc="seconds a message is kept (0 = forever)"),
)
#: Empty channels a subscriber made are removed after channel_timeout seconds;
#: keep_publisher_channels spares the ones a publisher made (docs/topics.md#bounded-memory).
CHANNEL_BOUND_OPTIONS = (
    Option(
        "channel_timeout",
        DEFAULT_CHANNEL_TIMEOUT,
        Kind(_channel_timeout, float),
        100,
        doc="seconds an empty, unsubscribed channel is kept (0 = forever)",
    ),
    Option(
        "keep_publisher_channels",
        True,
        FLAG,
        101,
        hint="True keeps empty channels a publisher made (the original's behaviour); False "
        "removes them after channel_timeout too, as NHPM does.",
        doc="channel_timeout spares the channels a publisher made",
    ),
)
#: Seconds a publish's Idempotency-Key is remembered (0: keys are ignored).
IDEMPOTENCY_WINDOW = Option(
    "idempotency_window", 300, SECONDS, 173, doc="seconds an Idempotency-Key is remembered"
)


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
    #: The channel as :meth:`Backend.info` would describe it right after the publish (what
    #: the publisher answers with), read in the same step; None from a backend that does
    #: not (the publisher then asks :meth:`Backend.info`), or when the channel is gone.
    info: ChannelInfo | None = None


@dataclass(frozen=True, slots=True)
class ReadResult:
    #: The first retained message strictly after the position asked for, or None.
    message: Message | None
    #: True when messages after the position were dropped from the buffer before they
    #: could be read (the client fell too far behind).
    gap: bool = False


@dataclass(frozen=True, slots=True)
class OpenResult:
    """What :meth:`Backend.open_channel` found."""

    #: True when this call created the channel.
    created: bool
    #: With a position to read after: the first retained message after it (and whether
    #: some were lost), read in the same step; None without one.
    read: ReadResult | None = None


class Backend(Configurable, ABC):
    """Channel storage and id assignment. Subclasses implement every abstract method, and
    declare their options in :attr:`option_table`."""

    #: The ``type`` name used in ``PUSH_SERVER['store']``.
    name: str = ""

    def __init__(self, **options: Any) -> None:
        self.options = options
        self._listener: Listener | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A subclass written before ``create`` took ``publisher`` (``create(self,
        channel_id)``) keeps working: its ``create`` is wrapped to drop the keyword, and a
        :class:`DeprecationWarning` says so. Such a store cannot tell a subscriber's channel
        from a publisher's, so ``channel_timeout`` is its own business."""
        super().__init_subclass__(**kwargs)
        create = cls.__dict__.get("create")
        if create is None or getattr(create, "__isabstractmethod__", False):
            return
        try:
            parameters = inspect.signature(create).parameters
        except (TypeError, ValueError):  # pragma: no cover - not introspectable: trust it
            return
        kinds = {p.kind for p in parameters.values()}
        if "publisher" in parameters or inspect.Parameter.VAR_KEYWORD in kinds:
            return
        warnings.warn(
            f"{cls.__module__}.{cls.__qualname__}.create() takes no 'publisher' keyword: "
            "it is called without it. Add '*, publisher: bool = True' (False when a "
            "subscriber creates the channel, see docs/topics.md#stores).",
            DeprecationWarning,
            stacklevel=2,
        )

        @functools.wraps(create)
        async def create_without_publisher(
            self: Backend, channel_id: str, *, publisher: bool = True
        ) -> bool:
            return await create(self, channel_id)

        cls.create = create_without_publisher  # type: ignore[method-assign]

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

    async def open_channel(
        self, channel_id: str, *, create: bool, after: MessageId | None = None
    ) -> OpenResult:
        """What a subscriber does before subscribing, in one step: create the channel if it
        is missing and ``create`` (a subscriber's channel: ``publisher=False``), else raise
        :class:`~pushserver.exceptions.ChannelNotFound`; mark it requested now
        (:meth:`touch`); with ``after``, read the first retained message after it
        (:meth:`read_after`), so a subscriber that finds one waiting needs nothing more.

        Raises :class:`~pushserver.exceptions.StoreFull` when the store has no room for a
        new channel. This default is built from the primitives (two to four calls); a
        backend whose calls cost a round trip each does it in one (the redis store: one
        script).
        """
        created = False
        if not await self.exists(channel_id):
            if not create:
                raise ChannelNotFound(channel_id)
            created = await self.create(channel_id, publisher=False)
        await self.touch(channel_id)
        read = None if after is None else await self.read_after(channel_id, after)
        return OpenResult(created, read)

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

        The result's ``info`` describes the channel after the publish (what the publisher
        answers with), so that the publisher needs no second call; a backend may leave it
        None, and the publisher then asks :meth:`info`.

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
