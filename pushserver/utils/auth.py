"""For ``can_subscribe`` hooks in Django projects: who is the subscriber?

::

    from pushserver.utils.auth import aget_user

    async def can_subscribe(request, channel_id):
        user = await aget_user(request)
        return user.is_authenticated and channel_id == f"user-{user.pk}"

The push server request carries the browser's cookies (on the push server's host: serve it
on the site's domain, or a subdomain with ``SESSION_COOKIE_DOMAIN`` set, for the browser to
send them), so the session is the site's and the user is who the site thinks it is.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib.auth import aget_user as _aget_user
from django.http import HttpRequest
from django.http.cookie import parse_cookie


async def aget_user(request: Any) -> Any:
    """The user of the session in ``request``'s cookies (``AnonymousUser`` without one).

    ``request`` is what ``can_subscribe`` gets (a :class:`pushserver.http.Request`) or an
    ASGI scope.
    """
    scope = getattr(request, "scope", request)
    cookie = ""
    for name, value in scope.get("headers", ()):
        if name.lower() == b"cookie":
            cookie = value.decode("latin-1")
            break
    django_request = HttpRequest()
    django_request.COOKIES = parse_cookie(cookie)
    engine = import_module(settings.SESSION_ENGINE)
    session_key = django_request.COOKIES.get(settings.SESSION_COOKIE_NAME)
    django_request.session = engine.SessionStore(session_key)
    return await _aget_user(django_request)
