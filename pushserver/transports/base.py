"""What the HTTP subscriber transports of a location share."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from ..config import LocationConfig
from ..http import Headers, Request
from ..hub import Hub
from ..protocol import cors_headers

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
        self.headers = base_headers
        self.presence = presence
        self.authorizer = authorizer
        #: Subscribe notifications the transport sends itself (not the authorizer's).
        self.notify = presence is not None and not location.passthrough_authorize
        self._many_origins = len(location.allow_origin.split()) > 1

    def response_headers(self, request: Request) -> Headers:
        """The base headers; with several allowed origins, CORS names the request's own."""
        if not self._many_origins:
            return self.headers
        cors = cors_headers(
            self.location.allow_origin, self.location.allow_credentials, request.header("origin")
        )
        names = {name for name, _ in cors}
        return [*(h for h in self.headers if h[0] not in names), *cors]
