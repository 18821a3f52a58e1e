"""Publishing from Django: :func:`send_update`, :func:`asend_update` and the URL helpers.

``send_update(channel_id, data)`` JSON-encodes ``data`` with Django's encoder and POSTs it
to the push server's first publisher location, exactly as the original django-pushserver
did, plus a timeout (``PUSH_SERVER['publish_timeout']``) and a clear
:class:`SendUpdateError`. Inside ``runpushserver`` (the ``--allrequests`` views, the
passthrough signal receivers) it publishes straight into the server's own hub instead:
no HTTP hop, so no deadlock. With ``PUSH_SERVER['publish_via'] = 'backend'`` it writes to
the first publisher location's redis store itself, from this process (see
:func:`_publish_to_store`).

Hosts come from ``PUSH_SERVER['publisher_host']`` / ``['subscriber_host']`` (a
``{'location': 'host:port', 'secure': bool}`` dict or the legacy ``"host:port"`` string),
then from the address of the push server running in this process (``current_host``, a
read of :data:`pushserver.running.registry`'s ``host``), then from the ≤0.2.2
``PUSH_SERVER['address']`` + ``['port']``.
"""

from __future__ import annotations

import json
import socket
import sys
import urllib.error
import urllib.request
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple
from urllib.parse import quote, urlsplit

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
from django.core.serializers.json import DjangoJSONEncoder
from django.utils.regex_helper import normalize

from .. import settings as push_settings
from .. import signals
from ..backends import create_backend
from ..config import HostConfig, LocationConfig, ServerConfig, StoreConfig
from ..exceptions import BackendUnavailable, ChannelNotFound, PushServerError, StoreFull
from ..message import check_event_name
from ..publisher import IDEMPOTENCY_KEY, accepted, publisher_token, refusal
from ..running import Running, registry

CONTENT_TYPE = "application/json; charset=utf-8"

# A wildcard bind address is where a server listens, never where a client can connect.
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "[::1]", "": "127.0.0.1"}


def __getattr__(name: str) -> Any:
    """``current_host``: the ``host:port`` of the push server running in this process, or
    None (the original's name, kept for code that reads it; the registry sets it)."""
    if name == "current_host":
        return registry.host
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class SendUpdateError(PushServerError):
    """Publishing failed. ``url`` is the publisher URL; ``status`` the HTTP status the push
    server answered, or None when there was no answer (refused, timed out)."""

    def __init__(self, url: str, status: int | None, reason: str) -> None:
        what = f"answered {status}" if status is not None else "failed"
        super().__init__(f"send_update to {url} {what}: {reason}")
        self.url = url
        self.status = status
        self.reason = reason


class SendUpdateStoreFull(SendUpdateError, StoreFull):
    """Publishing was refused because the store is at a budget (``507 Insufficient
    Storage``): nothing was stored. Catch it as :class:`~pushserver.exceptions.StoreFull`
    or as :class:`SendUpdateError`."""

    def __init__(self, url: str, reason: str, limit: str = "") -> None:
        # Not SendUpdateError.__init__: through super() it would reach StoreFull's.
        Exception.__init__(self, f"send_update to {url} answered 507: {reason}")
        self.url = url
        self.status = 507
        self.reason = reason
        #: The budget that refused it, when known ('memory_limit', 'max_channels', ...).
        self.limit = limit


def _error(url: str, status: int | None, reason: str) -> SendUpdateError:
    if status == 507:
        # The push server's body names the budget: "... store is full (max_channels): ..."
        limit = reason.partition("full (")[2].partition(")")[0]
        return SendUpdateStoreFull(url, reason, limit)
    return SendUpdateError(url, status, reason)


@dataclass(frozen=True)
class UpdateResponse:
    """What ``post_send_update`` gets as ``response`` when publishing succeeded."""

    url: str
    #: 201: delivered to waiting subscribers; 202: stored, nobody was waiting.
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    #: True when published into this process's push server without HTTP.
    in_process: bool = False
    #: True when written straight to the store (``publish_via='backend'``), without HTTP.
    backend: bool = False
    #: True when the ``idempotency_key`` had been seen: the first publish's answer, nothing
    #: stored again.
    replayed: bool = False

    def getcode(self) -> int:  # the urllib response's name, for old receivers
        return self.status


# -- URLs -------------------------------------------------------------------------------------


def _split_host(location: str) -> tuple[str, str]:
    """``host:port`` -> (host, ":port"); IPv6 stays bracketed."""
    if location.startswith("["):
        host, _, rest = location.partition("]")
        return host + "]", rest
    if location.count(":") == 1:
        host, _, port = location.partition(":")
        return host, ":" + port
    return location, ""


def _reachable(location: str) -> str:
    host, port = _split_host(location)
    return _WILDCARDS.get(host, host) + port


def _host(config: ServerConfig, host: HostConfig | None, name: str) -> tuple[str, str]:
    """(scheme, "host:port") for URLs of one kind."""
    secure = host.secure if host is not None else False
    location = host.location if host is not None else None
    if not location:
        location = registry.host
    if not location and config.port is not None:
        # django-pushserver <= 0.2.2 built URLs from the listen address and port.
        address = config.address or "127.0.0.1"
        if ":" in address and not address.startswith("["):
            address = f"[{address}]"
        location = address if config.port == 80 else f"{address}:{config.port}"
    if not location:
        raise ValueError(
            f"Missing required settings: no host for {name} URLs. Set PUSH_SERVER[{name!r}] = "
            "{'location': 'host:port', 'secure': False} (runpushserver sets it only in its "
            "own process)."
        )
    return ("https" if secure else "http"), _reachable(location)


def _reversed(url: str, index: int) -> tuple[str, str]:
    """(template, group name) of a location's ``url`` regex, as Django reverses it;
    ValueError when it does not reverse to one path with one group (an alternation
    outside the group, an optional group)."""
    forms = normalize(url)
    if len(forms) != 1 or len(forms[0][1]) != 1:
        raise ValueError(
            f"Non-reversible reg-exp: {url!r} (PUSH_SERVER['locations'][{index}]['url'] must "
            "reverse with exactly one group, the channel id)."
        )
    template, (name,) = forms[0]
    return template, name


def _path(location: LocationConfig, channel_id: str) -> str:
    quoted = quote(str(channel_id), safe="")
    if location.url is not None:
        template, name = _reversed(location.url, location.index)
        # Substitute by hand: the pattern may hold a literal '%'.
        path = template.replace(f"%({name})s", quoted)
    else:
        assert location.prefix is not None
        path = location.prefix + quoted
    if location.regex.match(path) is None:
        raise ValueError(
            f"channel id {channel_id!r} does not fit PUSH_SERVER['locations'][{location.index}] "
            f"{location.pattern!r}: the URL path {path!r} would not match it."
        )
    return path


def _first(config: ServerConfig, kind: str) -> LocationConfig:
    location = config.first(kind)
    if location is None:
        raise ValueError(
            f"Missing required settings: PUSH_SERVER['locations'] has no {kind} location. "
            f"Add {{'type': {kind!r}, 'url': r'/{kind}/(.+)'}}."
        )
    return location


def _url(kind: str, channel_id: str) -> tuple[str, LocationConfig]:
    config = push_settings.get_config()
    location = _first(config, kind)
    host = config.publisher_host if kind == "publisher" else config.subscriber_host
    scheme, netloc = _host(config, host, f"{kind}_host")
    return f"{scheme}://{netloc}{_path(location, channel_id)}", location


def publisher_url(channel_id: str) -> str:
    """Absolute URL of the first publisher location for ``channel_id`` (id URL-quoted)."""
    return _url("publisher", channel_id)[0]


def subscriber_url(channel_id: str) -> str:
    """Absolute URL of the first subscriber location for ``channel_id`` (id URL-quoted)."""
    return _url("subscriber", channel_id)[0]


# -- publishing -------------------------------------------------------------------------------


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # urllib would turn a redirected POST into a GET (a channel-info read that "succeeds").
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def _encode(data: Any, already_serialized: bool) -> bytes:
    if already_serialized:
        return data if isinstance(data, bytes) else str(data).encode("utf-8")
    return json.dumps(data, cls=DjangoJSONEncoder).encode("utf-8")


def _running_here(url: str) -> Running | None:
    """The push server running in this process, if ``url`` points at it."""
    running = registry.current
    if running is None:
        return None
    if _reachable(urlsplit(url).netloc) != _reachable(running.host):
        return None
    return running


def _on_loop_of(running: Running) -> bool:
    try:
        token = anyio.lowlevel.current_token()
    except Exception:  # no event loop in this thread
        return False
    return token.native_token is running.token.native_token


def _check_size(location: LocationConfig, url: str, body: bytes) -> None:
    limit = location.max_message_size
    if limit and len(body) > limit:
        raise SendUpdateError(url, 413, f"the message is larger than {limit} bytes")


async def _publish_on(
    target: Any, location: LocationConfig, url: str, channel_id: str, payload: Payload
) -> tuple[int, bool]:
    """What the publisher location does with a POST, without the HTTP: publish on
    ``target`` (a hub or a backend); the status a POST would have got, and whether the
    idempotency ``key`` made it a replay."""
    key = payload.idempotency_key
    keyed = {} if key is None else {"idempotency_key": key}
    try:
        result = await target.publish(
            channel_id,
            payload.body,
            payload.content_type,
            event=payload.event,
            create=location.create_on_post,
            **keyed,
        )
    except (ChannelNotFound, BackendUnavailable) as exc:  # StoreFull included
        # What the publisher location would have answered, raised as send_update's HTTP
        # path raises that answer.
        raise _error(url, *refusal(exc)) from exc
    return accepted(result), result.replayed


async def _publish_in_process(
    running: Running, location: LocationConfig, url: str, channel_id: str, payload: Payload
) -> UpdateResponse:
    _check_size(location, url, payload.body)
    hub = running.app.hub_for(location)
    status, replayed = await _publish_on(hub, location, url, channel_id, payload)
    return UpdateResponse(url, status, in_process=True, replayed=replayed)


async def _publish_to_store(
    store: StoreConfig,
    location: LocationConfig,
    url: str,
    channel_id: str,
    payload: Payload,
    timeout: float | None,
) -> UpdateResponse:
    """``publish_via='backend'``: open the store for commands only (no pub/sub reader),
    publish, close. The push servers hear the message from Redis as if it had been POSTed
    to one of them: same script, same ids, same delivery."""
    _check_size(location, url, payload.body)
    backend: Any = create_backend(store.type, store.options)
    try:
        with anyio.fail_after(timeout) if timeout else nullcontext():
            await backend.open(listen=False)
            try:
                status, replayed = await _publish_on(backend, location, url, channel_id, payload)
            finally:
                with anyio.CancelScope(shield=True):
                    await backend.aclose()
    except TimeoutError as exc:
        raise SendUpdateError(url, None, f"no answer from the store within {timeout} s") from exc
    return UpdateResponse(url, status, backend=True, replayed=replayed)


def _run_on_store(
    config: ServerConfig, location: LocationConfig, url: str, channel_id: str, payload: Payload
) -> UpdateResponse:
    # A short-lived event loop per call, not a background loop thread: nothing to clean up
    # at exit, nothing to break when a Celery or gunicorn parent forks, and one connection
    # per call costs what the HTTP path's own new connection costs.
    return anyio.run(
        _publish_to_store,
        config.stores[location.store],
        location,
        url,
        channel_id,
        payload,
        config.publish_timeout or None,
        backend="asyncio",
    )


def _backend_target(config: ServerConfig, channel_id: str) -> tuple[str, LocationConfig]:
    """(url, location) for ``publish_via='backend'``: the URL a POST would have gone to,
    for signals and errors; just its path when no host is configured (none is needed)."""
    location = _first(config, "publisher")
    path = _path(location, channel_id)
    try:
        scheme, netloc = _host(config, config.publisher_host, "publisher_host")
    except ValueError:
        return path, location
    return f"{scheme}://{netloc}{path}", location


def _on_a_loop() -> bool:
    try:
        anyio.lowlevel.current_token()
    except Exception:  # no event loop in this thread
        return False
    return True


def _run_in_process(
    running: Running, location: LocationConfig, url: str, channel_id: str, payload: Payload
) -> UpdateResponse:
    try:
        return anyio.from_thread.run(
            _publish_in_process, running, location, url, channel_id, payload, token=running.token
        )
    except anyio.RunFinishedError as exc:
        raise SendUpdateError(url, None, "the push server in this process has stopped") from exc


def _post(request: urllib.request.Request, timeout: float | None) -> UpdateResponse:
    url = request.full_url
    try:
        with _opener.open(request, timeout=timeout) as response:
            headers = dict(response.headers)
            replayed = response.headers.get("Idempotent-Replayed") == "true"
            return UpdateResponse(url, response.status, response.read(), headers, replayed=replayed)
    except urllib.error.HTTPError as exc:
        with exc:
            text = exc.read(200).decode("utf-8", "replace").strip()
        if 300 <= exc.code < 400:
            where = exc.headers.get("Location")
            text = f"redirected to {where}; point publisher_host at the push server itself"
        raise _error(url, exc.code, text or str(exc.reason)) from exc
    except TimeoutError as exc:
        raise SendUpdateError(url, None, f"no answer within {timeout} s") from exc
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError | socket.timeout):
            raise SendUpdateError(url, None, f"no answer within {timeout} s") from exc
        raise SendUpdateError(url, None, str(exc.reason)) from exc
    except OSError as exc:  # reset or closed mid-response
        raise SendUpdateError(url, None, str(exc)) from exc


class Payload(NamedTuple):
    """What one update publishes."""

    body: bytes
    content_type: str = CONTENT_TYPE
    event: str | None = None
    #: Stores the update once within the store's ``idempotency_window`` (send_update's
    #: ``idempotency_key``).
    idempotency_key: str | None = None


def _payload(
    data: Any,
    already_serialized: bool,
    content_type: str | None,
    event: str | None,
    idempotency_key: str | None,
) -> Payload:
    """The update's payload; TypeError / ValueError on bad arguments."""
    key = idempotency_key
    if key is not None and IDEMPOTENCY_KEY.fullmatch(key) is None:
        raise ValueError(f"idempotency_key must be 1 to 255 visible ASCII characters, not {key!r}")
    if event is not None:
        check_event_name(event)
    if content_type is None:
        return Payload(_encode(data, already_serialized), CONTENT_TYPE, event, idempotency_key)
    if not content_type.strip() or any(c in content_type for c in "\r\n\0"):
        raise ValueError(f"bad content_type {content_type!r}")
    if isinstance(data, bytes):
        return Payload(data, content_type, event, idempotency_key)
    if not isinstance(data, str):
        raise TypeError(
            f"send_update(content_type={content_type!r}) publishes str or bytes as they are, "
            f"not {type(data).__name__}: render it first (render_to_string), or leave "
            "content_type out to send JSON"
        )
    if content_type.lower().startswith("text/") and "charset" not in content_type.lower():
        content_type += "; charset=utf-8"
    return Payload(data.encode("utf-8"), content_type, event, idempotency_key)


def send_update(
    channel_id: str,
    data: Any,
    already_serialized: bool = False,
    ignore_errors: bool = False,
    *,
    content_type: str | None = None,
    event: str | None = None,
    idempotency_key: str | None = None,
) -> None:
    """Publish ``data`` (JSON-encoded unless ``already_serialized``) to ``channel_id``.

    ``content_type`` (e.g. ``"text/html"``, ``"text/vnd.turbo-stream.html"``) publishes
    ``data``, a str (a ``render_to_string`` result) or bytes, as it is, with that content
    type (``; charset=utf-8`` added to a ``text/`` type given a str); without it the body is
    JSON (``application/json; charset=utf-8``). ``event`` names the message's event
    (``X-EventSource-Event``): event streams send it as ``event: <name>``.

    With ``idempotency_key`` (1 to 255 visible ASCII characters, else :class:`ValueError`),
    sending the same update again with the same key within the store's
    ``idempotency_window`` (5 minutes by default) stores it once: retry a failed call (a
    ``SendUpdateError`` with status 503 or None) with the same key and no subscriber gets
    it twice. The response's ``replayed`` says the key had been seen.

    Sends ``pre_send_update`` before and ``post_send_update`` after (with ``response`` an
    :class:`UpdateResponse`, or the exception on failure). Raises :class:`SendUpdateError`
    unless ``ignore_errors`` or ``PUSH_SERVER_IGNORE_ERRORS`` is set. A URL that cannot be
    built, a bad ``event`` name or ``content_type`` raise :class:`ValueError` (data that is
    not str or bytes with a ``content_type``: :class:`TypeError`) before any signal, whatever
    ``ignore_errors`` says. Returns None.
    """
    config = push_settings.get_config()
    channel = str(channel_id)
    request: urllib.request.Request | None = None
    payload = _payload(data, already_serialized, content_type, event, idempotency_key)
    if config.publish_via == "backend":
        url, location = _backend_target(config, channel_id)
        # Inside runpushserver its own hub is connected to the same store already.
        running = registry.current
        if running is None and _on_a_loop():
            raise RuntimeError(
                "send_update() was called on a running event loop, where blocking would stall "
                "it; use 'await asend_update(...)' in async code"
            )
        publish = partial(_run_on_store, config, location, url, channel, payload)
    else:
        url, location = _url("publisher", channel_id)
        headers = {"Content-Type": payload.content_type}
        if payload.event is not None:
            # Header values are Latin-1 on the wire: UTF-8 bytes, as the server reads them.
            headers["X-EventSource-Event"] = payload.event.encode("utf-8").decode("latin-1")
        if payload.idempotency_key is not None:
            headers["Idempotency-Key"] = payload.idempotency_key
        if config.publisher_secret:
            headers["Authorization"] = f"Bearer {publisher_token(config.publisher_secret)}"
        request = urllib.request.Request(url, data=payload.body, headers=headers, method="POST")
        running = _running_here(url)
        publish = partial(_post, request, config.publish_timeout or None)
    if running is not None:
        if _on_loop_of(running):
            raise RuntimeError(
                "send_update() was called on the push server's event loop, where blocking "
                "would stall it; use 'await asend_update(...)' in async code"
            )
        publish = partial(_run_in_process, running, location, url, channel, payload)
    kwargs = {
        "channel_id": channel_id,
        "data": data,
        "already_serialized": already_serialized,
        "request": request,
        "content_type": payload.content_type,
        "event": payload.event,
    }
    # The signals' sender is this module, as in the original (receivers may filter on it).
    sender = sys.modules[__name__]
    signals.pre_send_update.send(sender=sender, **kwargs)
    try:
        response = publish()
    except Exception as exc:
        signals.post_send_update.send(sender=sender, response=exc, **kwargs)
        if ignore_errors or push_settings.ignore_errors():
            return None
        raise
    signals.post_send_update.send(sender=sender, response=response, **kwargs)
    return None


async def asend_update(
    channel_id: str,
    data: Any,
    already_serialized: bool = False,
    ignore_errors: bool = False,
    *,
    content_type: str | None = None,
    event: str | None = None,
    idempotency_key: str | None = None,
) -> None:
    """The async twin of :func:`send_update`, for async views and consumers.

    The work (signal receivers may touch the database; the HTTP POST blocks) runs in a
    worker thread, so the event loop is never blocked; inside ``runpushserver`` the thread
    hands the publish back to the server's loop.
    """
    await anyio.to_thread.run_sync(
        partial(
            send_update,
            channel_id,
            data,
            already_serialized,
            ignore_errors,
            content_type=content_type,
            event=event,
            idempotency_key=idempotency_key,
        )
    )
