"""What the HTTP subscriber transports of a location share."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from ..config import LocationConfig
from ..http import Headers, Request
from ..hub import Hub
from ..protocol import OriginHeaders

if TYPE_CHECKING:
    from ..authorize import LocationAuthorizer


class Presence(Protocol):
    """Told when a subscriber starts waiting on a channel and when it stops (passthrough)."""

    def subscribed(self, request: Request, channel_id: str) -> object: ...

    def unsubscribed(self, token: object) -> None: ...


class HTTPTransport:
    """One subscriber location's transport over plain HTTP responses (long-poll, SSE)."""

    def __init__(
        self,
        location: LocationConfig,
        hub: Hub,
        base_headers: Headers,
        presence: Presence | None = None,
        authorizer: LocationAuthorizer | None = None,
    ) -> None:
        self.location = location
        self.hub = hub
        #: Every response's headers (``base_headers`` plus CORS) for each request Origin.
        self.cors = OriginHeaders(
            base_headers, location.allow_origin, location.allow_credentials, location.cors_max_age
        )
        #: The headers of a request without a listed Origin (all of them for one origin).
        self.headers = self.cors.default
        self.presence = presence
        self.authorizer = authorizer
        #: Subscribe notifications the transport sends itself (not the authorizer's).
        self.notify = presence is not None and not location.passthrough_authorize

    def response_headers(self, request: Request) -> Headers:
        """The headers for this request: with several allowed origins, CORS names its own."""
        return self.cors.for_request(request)
