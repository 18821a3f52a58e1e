"""The publisher location: POST publishes, PUT creates, GET describes, DELETE deletes."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from collections.abc import Iterable

from .backends.base import PublishResult
from .config import LocationConfig
from .exceptions import BackendUnavailable, ChannelNotFound, PushServerError, StoreFull
from .http import (
    BodyTooLarge,
    Headers,
    Receive,
    Request,
    Send,
    query_parameter,
    read_body,
    respond,
    respond_error,
)
from .hub import Hub
from .message import ChannelInfo, event_name_from_header
from .protocol import OriginHeaders, negotiate_info_format, render_channel_info

ALLOW = (b"allow", b"GET, POST, PUT, DELETE")
#: With CORS on (a CORS key on the location), OPTIONS answers the preflight.
CORS_ALLOW = (b"allow", b"GET, POST, PUT, DELETE, OPTIONS")
CORS_ALLOW_METHODS = (b"access-control-allow-methods", b"GET, POST, PUT, DELETE, OPTIONS")
PUBLISHER_ALLOW_HEADERS = (
    "Content-Type, Accept, Authorization, X-EventSource-Event, Idempotency-Key"
)
#: An ``Idempotency-Key``: 1 to 255 visible ASCII characters (a UUID, a base64 or hex
#: digest, an order number); anything else is refused with 400.
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")
LOOPBACK = ("127.0.0.0/8", "::1/128")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


RETRY_AFTER = (b"retry-after", b"1")


# -- what a publish answers: the publisher location and send_update both say it so ----------


def accepted(result: PublishResult) -> int:
    """The status of a stored publish: 201 when subscribers were waiting, else 202."""
    return 201 if result.subscribers else 202


def refusal(exc: PushServerError) -> tuple[int, str]:
    """The status and wording of a publish that stored nothing: 404 (the channel is missing
    and is not created on POST), 507 (:class:`StoreFull`: the store is at a budget; retrying
    soon will not help unless messages expire or channels are deleted) or 503
    (:class:`BackendUnavailable`: retry)."""
    if isinstance(exc, ChannelNotFound):
        return 404, "no such channel (create it with PUT first)"
    if isinstance(exc, StoreFull):
        return 507, str(exc)
    return 503, f"the channel store is unavailable: {exc}"


def publisher_token(secret: str) -> str:
    """The bearer token for ``publisher_secret``: an HMAC of a fixed label, so the secret
    itself never travels and the same secret can derive other keys without clashing."""
    return hmac.new(secret.encode(), b"pushserver publisher", hashlib.sha256).hexdigest()


def _networks(entries: Iterable[str]) -> tuple[Network, ...]:
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(str(entry).strip(), strict=False))
        except ValueError:  # an INTERNAL_IPS entry Django never validated: it allows nothing
            continue
    return tuple(networks)


def _client_address(host: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if host is None:  # a Unix socket: only local processes can reach it
        return ipaddress.ip_address("127.0.0.1")
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped  # a dual-stack socket's view of an IPv4 client
    return address


#: Peer addresses whose allow_from answer :class:`Access` keeps.
ALLOWED_CACHE = 1024


class Access:
    """Who may use a publisher-like location (publisher, status): the TCP peer's address in
    ``allow_from`` (default: loopback and ``internal_ips``) and, when tokens are given, one
    of them shown as ``Authorization: Bearer <token>`` (or as the query's ``token``). The
    address is the TCP peer's: behind a proxy it is the proxy's (X-Forwarded-For is not
    trusted)."""

    def __init__(
        self,
        allow_from: Iterable[str] | None,
        internal_ips: Iterable[str] = (),
        header_tokens: Iterable[str] = (),
        query_token: str | None = None,
    ) -> None:
        self.networks = _networks((*LOOPBACK, *internal_ips) if allow_from is None else allow_from)
        self.header_tokens = tuple(token.encode() for token in header_tokens)
        self.query_token = query_token.encode() if query_token else None
        self._allowed: dict[str | None, bool] = {}

    def address_allowed(self, request: Request) -> bool:
        # Parsing the address took about 5 % of a publish: the answer is kept per peer
        # address, in a table emptied when it reaches ALLOWED_CACHE entries (bounded).
        host = request.client_host
        allowed = self._allowed.get(host)
        if allowed is None:
            address = _client_address(host)
            allowed = address is not None and any(address in net for net in self.networks)
            if len(self._allowed) >= ALLOWED_CACHE:
                self._allowed.clear()
            self._allowed[host] = allowed
        return allowed

    def token_shown(self, request: Request) -> bool:
        if not self.header_tokens:
            return True
        scheme, _, given = (request.header("authorization") or "").partition(" ")
        if scheme.lower() == "bearer":
            shown = given.strip().encode()
            if any(hmac.compare_digest(shown, token) for token in self.header_tokens):
                return True
        if self.query_token is None:
            return False
        query = query_parameter(request.scope.get("query_string", b""), "token")
        return query is not None and hmac.compare_digest(query.encode(), self.query_token)


class Publisher:
    """Handles one publisher location (NHPM "Basic HTTP Push Relay Protocol" semantics)."""

    def __init__(
        self,
        location: LocationConfig,
        hub: Hub,
        base_headers: Headers,
        *,
        internal_ips: Iterable[str] = (),
        secret: str | None = None,
    ) -> None:
        self.location = location
        self.hub = hub
        #: Every response's headers for each request Origin: CORS only when the location
        #: has a CORS key (publishers are usually servers, which need none).
        self.cors: OriginHeaders | None = None
        if location.cors:
            self.cors = OriginHeaders(
                base_headers,
                location.allow_origin,
                location.allow_credentials,
                location.cors_max_age,
                allow_headers=PUBLISHER_ALLOW_HEADERS,
                expose_headers=None,
            )
            base_headers = self.cors.default
        self.headers = base_headers
        self.access = Access(
            location.allow_from, internal_ips, (publisher_token(secret),) if secret else ()
        )

    def refusal(self, request: Request) -> str | None:
        """Why this request may not publish, or None."""
        if not self.access.address_allowed(request):
            return (
                f"publishing is not allowed from {request.client_host} "
                "(see the location's allow_from)"
            )
        if not self.access.token_shown(request):
            return "publishing needs a valid publisher token (Authorization: Bearer ...)"
        return None

    def response_headers(self, request: Request) -> Headers:
        return self.headers if self.cors is None else self.cors.for_request(request)

    async def __call__(
        self, request: Request, channel_id: str, receive: Receive, send: Send
    ) -> None:
        method = request.method
        headers = self.response_headers(request)
        if method == "OPTIONS" and self.cors is not None:
            # Before the access checks: a browser sends no Authorization with a preflight.
            # The request that follows is checked as any other.
            await respond(send, 200, [*headers, CORS_ALLOW, CORS_ALLOW_METHODS])
            return
        refused = self.refusal(request)
        if refused is not None:
            await respond_error(send, 403, refused, headers)
            return
        if self.hub.shutting_down:
            # A request that arrives while the server stops (on a kept-alive connection; the
            # listening socket is closed): nothing is done, so it is safe to send elsewhere.
            # Requests that arrived before, publishes being received included, finish.
            await respond_error(
                send,
                503,
                "the server is shutting down: send the request again (to another server)",
                [*headers, RETRY_AFTER],
            )
            return
        try:
            if method == "POST":
                await self.post(request, channel_id, receive, send, headers)
            elif method == "PUT":
                await self.hub.create(channel_id)
                info = await self.hub.info(channel_id)
                await self.info_response(request, send, 200, info, headers)
            elif method == "GET":
                info = await self.hub.info(channel_id)
                if info is None:
                    await respond_error(send, 404, "no such channel", headers)
                else:
                    await self.info_response(request, send, 200, info, headers)
            elif method == "DELETE":
                info = await self.hub.info(channel_id)
                if info is None or not await self.hub.delete(channel_id):
                    await respond_error(send, 404, "no such channel", headers)
                else:
                    await self.info_response(request, send, 200, info, headers)
            else:
                allow = ALLOW if self.cors is None else CORS_ALLOW
                await respond_error(send, 405, f"{method} is not allowed here", [*headers, allow])
        except BackendUnavailable as exc:  # StoreFull included
            status, reason = refusal(exc)
            # Nothing was stored; only an unavailable store is worth retrying soon.
            await respond_error(
                send, status, reason, headers if status == 507 else [*headers, RETRY_AFTER]
            )

    async def post(
        self, request: Request, channel_id: str, receive: Receive, send: Send, headers: Headers
    ) -> None:
        limit = self.location.max_message_size
        declared = request.header("content-length")
        if limit and declared and declared.isdigit() and int(declared) > limit:
            await self.too_large(send, limit, headers)
            return
        try:
            body = await read_body(receive, limit)
        except BodyTooLarge:
            await self.too_large(send, limit, headers)
            return
        if body is None:  # the publisher went away before sending the whole body
            return
        content_type = request.header("content-type") or "application/octet-stream"
        key = request.header("idempotency-key")
        if key is not None and IDEMPOTENCY_KEY.fullmatch(key) is None:
            await respond_error(
                send,
                400,
                "Idempotency-Key must be 1 to 255 visible ASCII characters (no spaces)",
                headers,
            )
            return
        try:
            event = event_name_from_header(request.header("x-eventsource-event"))
        except ValueError as exc:
            await respond_error(send, 400, f"X-EventSource-Event: {exc}", headers)
            return
        try:
            result = await self.hub.publish(
                channel_id,
                body,
                content_type,
                event=event,
                create=self.location.create_on_post,
                idempotency_key=key,
            )
        except ChannelNotFound as exc:
            await respond_error(send, *refusal(exc), headers)
            return
        # The store describes the channel as it publishes (one round trip on Redis); a
        # store that does not (or a channel deleted meanwhile) is asked.
        info = result.info if result.info is not None else await self.hub.info(channel_id)
        status = accepted(result)
        if key is not None:
            # Which message the publish (or the first attempt, when replayed) stored.
            headers = [*headers, (b"x-message-id", str(result.message.id).encode())]
            if result.replayed:
                headers.append((b"idempotent-replayed", b"true"))
        await self.info_response(request, send, status, info, headers)

    async def too_large(self, send: Send, limit: int, headers: Headers) -> None:
        # The server's body guard (http.guard_body) drains the rest of the upload first.
        await respond_error(send, 413, f"the message is larger than {limit} bytes", headers)

    async def info_response(
        self, request: Request, send: Send, status: int, info: ChannelInfo | None, headers: Headers
    ) -> None:
        if info is None:  # deleted in between: describe an empty channel
            await respond(send, status, headers)
            return
        fmt, content_type = negotiate_info_format(request.header("accept"))
        body = render_channel_info(info, fmt)
        await respond(send, status, headers, body, content_type=content_type.encode())
