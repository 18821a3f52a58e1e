"""One admission step for every subscriber: authorize, open, capacity, or a typed refusal.

A long poll, an event stream, a WebSocket connection and a WebSocket ``subscribe`` command
all ask the same question before anything is held: may this request subscribe to these
channels now? :meth:`Admitter.admit` answers it for all four, in this order:

1. **authorize**: the location's authorizers (:mod:`pushserver.authorize`), first, so that
   a refused subscriber learns nothing about which channels exist and creates none;
2. **open**: each channel exists, or is created where the location has ``create_on_get``
   (:meth:`~pushserver.hub.Hub.open_channel`: one store call, one round trip on Redis), and
   is marked requested now; a long poll's position is read in the same call (``after``);
3. **capacity**: no channel has the location's ``max_subscribers`` already (:meth:`room`).
   A long poll asks for room only before it waits (``hold=False``, then :meth:`room`): a
   message it can answer with at once holds nothing.

The answer is an :class:`Admission` (the channels, and the passthrough subscribes to
:meth:`Admission.release` once the subscriber is gone) or a :class:`Refusal`: a
:class:`RefusalKind` and the reason in words. The transports only render refusals:

======================  ====  =====  ====================================================
kind                    HTTP  close  ``subscribe`` command (an ``error`` control frame)
======================  ====  =====  ====================================================
BAD_REQUEST             400   4400   the reason, no ``status``
FORBIDDEN               403   4403   the reason, ``"status": 403``
UNAVAILABLE             503   1013   the reason, ``"status": 503`` (the authorizer did
                                     not answer: try again later)
NOT_FOUND               404   4404   ``no such channel``, no ``status``
STORE_FULL              507   4507   ``the channel store is full``, ``"status": 507``
TOO_MANY_SUBSCRIBERS    403   4403   the reason, no ``status``
======================  ====  =====  ====================================================

A store that cannot answer (:class:`~pushserver.exceptions.BackendUnavailable`) is not a
refusal of this subscriber: it may fail here or at any later store call while the
subscriber is served, so it is raised, and each transport handles it around the whole
request (503, close 1013, or the end of the connection after a command). A store that
answers "no such channel" or "full" after the admission (a channel deleted meanwhile)
means what it means here: :func:`store_refusal`.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ..authorize import SIGNATURE_PARAMETER, Refused
from ..exceptions import ChannelNotFound, StoreFull
from ..http import Request, query_parameter

if TYPE_CHECKING:
    from ..authorize import LocationAuthorizer
    from ..backends.base import ReadResult
    from ..config import LocationConfig
    from ..hub import Hub
    from ..message import MessageId


class RefusalKind(enum.Enum):
    """Why a subscriber is not let in; each transport maps a kind to its status or code."""

    BAD_REQUEST = "bad request"
    FORBIDDEN = "forbidden"
    UNAVAILABLE = "unavailable"
    NOT_FOUND = "not found"
    STORE_FULL = "store full"
    TOO_MANY_SUBSCRIBERS = "too many subscribers"


@dataclass(frozen=True, slots=True)
class Refusal:
    """A subscriber not let in: the kind, and the reason in words for the client."""

    kind: RefusalKind
    reason: str


def store_refusal(exc: ChannelNotFound | StoreFull) -> Refusal:
    """What the store's "no such channel" or "no room" means for a subscriber."""
    if isinstance(exc, ChannelNotFound):
        return Refusal(RefusalKind.NOT_FOUND, f"no such channel: {exc.channel_id}")
    return Refusal(RefusalKind.STORE_FULL, str(exc))


@dataclass(slots=True)
class Admission:
    """A subscriber let in: its channels exist and are marked requested; ``tokens`` are the
    passthrough subscribes the authorizer made (one per channel, or none)."""

    channels: list[str]
    #: Once given up (:meth:`release`, :meth:`hand_over`), the shared empty tuple: a
    #: WebSocket holds its admission for as long as it is open.
    tokens: Sequence[object]
    authorizer: LocationAuthorizer | None
    #: With ``admit(after=...)``: the first retained message after that position on the
    #: (one) channel, read while opening it.
    read: ReadResult | None = None

    def release(self) -> None:
        """Send the unsubscribes of the tokens still held (once: they are given up)."""
        if self.tokens and self.authorizer is not None:
            tokens, self.tokens = self.tokens, ()
            self.authorizer.release(tokens)

    def hand_over(self) -> dict[str, object]:
        """The tokens by channel, for a connection that unsubscribes channel by channel
        (WebSocket); :meth:`release` has nothing left to do after this."""
        tokens, self.tokens = self.tokens, ()
        return dict(zip(self.channels, tokens, strict=False))


class _Signatures(enum.Enum):
    IN_QUERY = "in the query"


#: :meth:`Admitter.admit`'s default: the signatures are the request's ``sig`` parameter.
IN_QUERY: Literal[_Signatures.IN_QUERY] = _Signatures.IN_QUERY


class Admitter:
    """The admission step of one subscriber location (module docstring)."""

    __slots__ = ("authorizer", "hub", "location")

    def __init__(
        self, location: LocationConfig, hub: Hub, authorizer: LocationAuthorizer | None
    ) -> None:
        self.location = location
        self.hub = hub
        self.authorizer = authorizer

    async def admit(
        self,
        request: Request,
        channels: list[str],
        *,
        signatures: str | Literal[_Signatures.IN_QUERY] | None = IN_QUERY,
        hold: bool = True,
        after: MessageId | None = None,
    ) -> Admission | Refusal:
        """Authorize ``request`` on ``channels``, open them and, with ``hold``, check there
        is room on each. ``signatures`` is a ``sig`` value (a ``subscribe`` command's; None
        when absent); by default the request's query parameter, read only where the
        location authorizes. With ``after`` (a long poll's position, one channel) the
        opening also reads the next message: :attr:`Admission.read`. Raises what the store
        raises when it cannot answer (:class:`~pushserver.exceptions.BackendUnavailable`);
        nothing is held then."""
        tokens: list[object] = []
        authorizer = self.authorizer
        if authorizer is not None:
            if signatures is IN_QUERY:
                query = request.scope.get("query_string", b"")
                signatures = query_parameter(query, SIGNATURE_PARAMETER)
            try:
                tokens = await authorizer.authorize(request, channels, signatures)
            except Refused as exc:
                kind = RefusalKind.FORBIDDEN if exc.status == 403 else RefusalKind.UNAVAILABLE
                return Refusal(kind, exc.reason)
        admission = Admission(channels, tokens, authorizer)
        refusal: Refusal | None = None
        try:
            hub = self.hub
            create = self.location.create_on_get
            for channel_id in channels:
                try:
                    opened = await hub.open_channel(channel_id, create, after=after)
                    admission.read = opened.read
                except (ChannelNotFound, StoreFull) as exc:
                    refusal = store_refusal(exc)
                    break
            # room() only under a limit: no extra await per subscriber where there is none.
            if refusal is None and hold and self.location.max_subscribers:
                refusal = await self.room(channels)
        except BaseException:
            admission.release()
            raise
        if refusal is not None:
            admission.release()
            return refusal
        return admission

    async def room(self, channels: list[str]) -> Refusal | None:
        """A refusal when one of ``channels`` already has the location's
        ``max_subscribers`` (0 = no limit); None when every one has room.

        Counted by the store (cluster-wide on Redis) before subscribing: concurrent
        newcomers can overshoot by a few, which a limit meant against exhaustion tolerates.
        """
        limit = self.location.max_subscribers
        if limit:
            for channel_id in channels:
                info = await self.hub.info(channel_id)
                if info is not None and info.subscribers >= limit:
                    return Refusal(
                        RefusalKind.TOO_MANY_SUBSCRIBERS,
                        f"channel {channel_id} has its maximum of {limit} subscribers",
                    )
        return None
