"""Subscriber authorization: who may subscribe to which channel, asked before anything is
held or streamed. Three ways, each opted in per subscriber location (docs/authorization.md):

``signed``
    Each channel needs a signature, the ``sig`` query parameter (several channels: one per
    channel, comma-separated, in URL order; a WebSocket ``subscribe`` command: ``"sig"``).
    The core checks it with a *verifier* the Django layer injects
    (:func:`pushserver.utils.signing.verify_channel`, Django's signing): this module imports
    no Django.
``can_subscribe``
    A function, by dotted path, loaded once at startup: ``can_subscribe(request, channel_id)``
    with the :class:`~pushserver.http.Request` (``request.scope`` is the ASGI scope). Async
    functions are awaited on the event loop; plain functions run in a worker thread (so they
    may use the Django ORM). Truthy allows; falsy refuses with 403; raising
    :class:`PermissionError` refuses with 403 and the exception's text as the reason.
``passthrough_authorize``
    The location's passthrough POST for the subscribe, waited for: a 2xx answer allows,
    anything else refuses with 403 and the answer's body (see :mod:`pushserver.passthrough`).

A location using several must pass all of them, cheapest first (signature, hook,
passthrough); a multiplexed request must be allowed on every channel. A refusal is 403; an
authorizer that does not answer within ``authorize_timeout``, cannot be reached or fails is
503 (the subscriber may try again later). Either way the request is refused.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import anyio.to_thread

from .config import LocationConfig
from .http import Request

logger = logging.getLogger("pushserver.authorize")

#: The query parameter carrying channel signatures.
SIGNATURE_PARAMETER = "sig"
SEPARATOR = ","

#: ``verifier(channel_id, signature) -> None`` if valid, else the reason it is not.
Verifier = Callable[[str, str], "str | None"]


class Refused(Exception):
    """A subscribe the authorizers did not allow: the status (403 or 503) and why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def deny_all(request: Request, channel_id: str) -> bool:
    """Stands in for a ``can_subscribe`` setting that is not a dotted path (pushserver.E062)."""
    return False


def load_hook(path: str) -> Callable[..., Any]:
    """The callable at ``path`` (``module.attribute``); ImportError / TypeError otherwise."""
    module_name, _, attribute = path.rpartition(".")
    module = importlib.import_module(module_name)
    try:
        hook = getattr(module, attribute)
    except AttributeError:
        raise ImportError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not callable(hook):
        raise TypeError(f"{path} is not callable: {hook!r}")
    return hook


def split_signatures(text: str | None, count: int) -> list[str]:
    """One signature per channel from a ``sig`` value; :class:`Refused` when they do not fit."""
    if not text:
        raise Refused(403, f"a signed URL is needed here (the {SIGNATURE_PARAMETER!r} parameter)")
    signatures = text.split(SEPARATOR)
    if len(signatures) != count:
        raise Refused(
            403, f"{len(signatures)} signature(s) for {count} channel(s): one per channel"
        )
    return signatures


class LocationAuthorizer:
    """The authorizers of one subscriber location; :meth:`authorize` asks them all."""

    def __init__(
        self,
        location: LocationConfig,
        presence: Any = None,
        verifier: Verifier | None = None,
    ) -> None:
        if location.signed and verifier is None:
            raise ValueError(
                f"PUSH_SERVER['locations'][{location.index}] has 'signed': True, but the push "
                "server was given no channel verifier (runpushserver passes Django's)"
            )
        self.location = location
        self.presence = presence
        self.verifier = verifier
        self.hook = load_hook(location.can_subscribe) if location.can_subscribe else None
        self._hook_is_async = self.hook is not None and (
            inspect.iscoroutinefunction(self.hook)
            or inspect.iscoroutinefunction(getattr(self.hook, "__call__", None))  # noqa: B004
        )

    async def authorize(
        self, request: Request, channels: list[str], signatures: str | None
    ) -> list[object]:
        """Check every channel; the passthrough tokens to unsubscribe later, or
        :class:`Refused`. ``signatures`` is the ``sig`` value (None when absent)."""
        location = self.location
        if location.signed:
            assert self.verifier is not None
            for channel_id, signature in zip(
                channels, split_signatures(signatures, len(channels)), strict=True
            ):
                reason = self.verifier(channel_id, signature)
                if reason is not None:
                    raise Refused(403, f"{channel_id}: {reason}")
        if self.hook is not None:
            for channel_id in channels:
                await self.ask_hook(request, channel_id)
        tokens: list[object] = []
        if location.passthrough_authorize:
            try:
                for channel_id in channels:
                    tokens.append(await self.ask_site(request, channel_id))
            except BaseException:
                self.release(tokens)
                raise
        return tokens

    def release(self, tokens: Sequence[object]) -> None:
        """Send the unsubscribes of the subscribes :meth:`authorize` made."""
        if self.presence is not None:
            for token in tokens:
                self.presence.unsubscribed(token)

    async def ask_hook(self, request: Request, channel_id: str) -> None:
        assert self.hook is not None
        hook = self.hook
        timeout = self.location.authorize_timeout or None
        try:
            with anyio.fail_after(timeout):
                if self._hook_is_async:
                    allowed = await hook(request, channel_id)
                else:
                    allowed = await anyio.to_thread.run_sync(
                        hook, request, channel_id, abandon_on_cancel=True
                    )
                    if inspect.isawaitable(allowed):  # a sync callable returning a coroutine
                        allowed = await allowed
        except PermissionError as exc:
            raise Refused(403, str(exc) or f"not allowed to subscribe to {channel_id}") from None
        except TimeoutError:
            logger.warning(
                "can_subscribe %s gave no answer within %s s", self.location.can_subscribe, timeout
            )
            raise Refused(503, "the authorizer did not answer in time") from None
        except Exception:
            logger.exception("can_subscribe %s failed", self.location.can_subscribe)
            raise Refused(503, "the authorizer failed") from None
        if not allowed:
            raise Refused(403, f"not allowed to subscribe to {channel_id}")

    async def ask_site(self, request: Request, channel_id: str) -> object:
        presence = self.presence
        if presence is None or not hasattr(presence, "authorize"):
            raise Refused(503, "no passthrough authorizer is running")
        token, status, body = await presence.authorize(
            request, channel_id, self.location.authorize_timeout
        )
        if status is not None and 200 <= status < 300:
            return token
        presence.unsubscribed(token)  # a subscribe the site saw gets its unsubscribe
        if status is None:
            raise Refused(503, body)
        raise Refused(403, body or f"not allowed to subscribe to {channel_id}")


def create_authorizer(
    location: LocationConfig, presence: Any, verifier: Verifier | None
) -> LocationAuthorizer | None:
    """The location's authorizer, or None when it authorizes nobody."""
    if not location.authorizes:
        return None
    return LocationAuthorizer(location, presence, verifier)
