"""What the subscriber transports of a location share."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

from ..authorize import SIGNATURE_PARAMETER, Refused
from ..config import LocationConfig
from ..http import Headers, Request, query_parameter
from ..hub import Hub
from ..protocol import OriginHeaders

if TYPE_CHECKING:
    from ..authorize import LocationAuthorizer


class Presence(Protocol):
    """Told when a subscriber starts waiting on a channel and when it stops (passthrough)."""

    def subscribed(self, request: Request, channel_id: str) -> object: ...

    def unsubscribed(self, token: object) -> None: ...


class SubscriberTransport:
    """One subscriber location's transport: who may subscribe, and how many may."""

    def __init__(
        self,
        location: LocationConfig,
        hub: Hub,
        presence: Presence | None = None,
        authorizer: LocationAuthorizer | None = None,
    ) -> None:
        self.location = location
        self.hub = hub
        self.presence = presence
        self.authorizer = authorizer
        #: Subscribe notifications the transport sends itself (not the authorizer's).
        self.notify = presence is not None and not location.passthrough_authorize

    async def authorize(
        self,
        request: Request,
        channels: list[str],
        refuse: Callable[[Refused], Awaitable[object]],
    ) -> list[object] | None:
        """Ask the location's authorizer about subscribing to ``channels`` (signatures from
        the ``sig`` query parameter): the passthrough tokens, one per channel or none, to
        :meth:`release` once the subscriber is gone; or None when it was refused, after
        ``refuse(exc)`` answered the client."""
        authorizer = self.authorizer
        if authorizer is None:
            return []
        signatures = query_parameter(request.scope.get("query_string", b""), SIGNATURE_PARAMETER)
        try:
            return await authorizer.authorize(request, channels, signatures)
        except Refused as exc:
            await refuse(exc)
            return None

    def release(self, tokens: list[object]) -> None:
        """Unsubscribe the tokens :meth:`authorize` returned."""
        if tokens and self.authorizer is not None:
            self.authorizer.release(tokens)

    async def full(self, channels: list[str]) -> str | None:
        """Why a new subscriber is refused: the first of ``channels`` that already has the
        location's ``max_subscribers`` (0 = no limit); None when none has.

        Counted by the store (cluster-wide on Redis) before subscribing: concurrent
        newcomers can overshoot by a few, which a limit meant against exhaustion tolerates.
        """
        limit = self.location.max_subscribers
        if limit:
            for channel_id in channels:
                info = await self.hub.info(channel_id)
                if info is not None and info.subscribers >= limit:
                    return f"channel {channel_id} has its maximum of {limit} subscribers"
        return None


class HTTPTransport(SubscriberTransport):
    """One subscriber location's transport over plain HTTP responses (long-poll, SSE)."""

    def __init__(
        self,
        location: LocationConfig,
        hub: Hub,
        base_headers: Headers,
        presence: Presence | None = None,
        authorizer: LocationAuthorizer | None = None,
    ) -> None:
        super().__init__(location, hub, presence, authorizer)
        #: Every response's headers (``base_headers`` plus CORS) for each request Origin.
        self.cors = OriginHeaders(
            base_headers, location.allow_origin, location.allow_credentials, location.cors_max_age
        )
        #: The headers of a request without a listed Origin (all of them for one origin).
        self.headers = self.cors.default

    def response_headers(self, request: Request) -> Headers:
        """The headers for this request: with several allowed origins, CORS names its own."""
        return self.cors.for_request(request)
