"""What the subscriber transports of a location share: the admission step, presence, and
over HTTP the response headers and how a refusal is answered."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from ..config import LocationConfig
from ..exceptions import BackendUnavailable, ChannelNotFound, StoreFull
from ..http import Headers, Request, Send, respond_error
from ..hub import Hub
from ..protocol import OriginHeaders
from .admission import Admitter, Refusal, RefusalKind, store_refusal

if TYPE_CHECKING:
    from ..authorize import LocationAuthorizer


class Presence(Protocol):
    """Told when a subscriber starts waiting on a channel and when it stops (passthrough)."""

    def subscribed(self, request: Request, channel_id: str) -> object: ...

    def unsubscribed(self, token: object) -> None: ...


class Counted(Protocol):
    """Where a request is counted while it is served (``max_connections``: the app's
    ``ConnectionLimit``): a transport handed one takes its request off at the end."""

    active: int


class SubscriberTransport:
    """One subscriber location's transport: who may subscribe, and how many may
    (:attr:`admitter`), and who is told about subscribers (:attr:`presence`)."""

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
        #: Who may subscribe, and to what (:mod:`.admission`).
        self.admitter = Admitter(location, hub, authorizer)
        #: Subscribe notifications the transport sends itself (not the authorizer's).
        self.notify = presence is not None and not location.passthrough_authorize


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

    async def respond_refused(self, send: Send, refusal: Refusal, headers: Headers) -> None:
        """Answer a subscriber the admission refused: a status and a short plain text."""
        await respond_error(send, HTTP_STATUS[refusal.kind], refusal.reason, headers)

    async def respond_store_failure(
        self, send: Send, exc: ChannelNotFound | StoreFull | BackendUnavailable, headers: Headers
    ) -> None:
        """Answer a subscriber the store failed after the admission: its refusal (404, 507),
        or 503 when the store is unavailable."""
        if isinstance(exc, BackendUnavailable):
            await respond_error(send, 503, f"the channel store is unavailable: {exc}", headers)
        else:
            await self.respond_refused(send, store_refusal(exc), headers)


#: The status a refused subscriber gets over HTTP (long-poll, server-sent events).
HTTP_STATUS = {
    RefusalKind.BAD_REQUEST: 400,
    RefusalKind.FORBIDDEN: 403,
    RefusalKind.UNAVAILABLE: 503,
    RefusalKind.NOT_FOUND: 404,
    RefusalKind.STORE_FULL: 507,
    RefusalKind.TOO_MANY_SUBSCRIBERS: 403,
}
