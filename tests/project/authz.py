"""Authorizers for tests/test_subscriber_auth.py: ``can_subscribe`` hooks (by dotted path)
and a ``channel_subscribe`` receiver that refuses authorizing subscribes.

The receiver acts only on authorizing passthrough POSTs (``authorize`` in the form), so the
fire-and-forget passthrough tests are unaffected: ``deny*`` channels are refused, ``user-X``
channels are only for the logged-in user X.
"""

import anyio
from django.core.exceptions import PermissionDenied
from django.dispatch import receiver

from pushserver import signals


def sync_hook(request, channel_id):
    """Allows ``ok*`` channels (run in a worker thread)."""
    return channel_id.startswith("ok")


async def async_hook(request, channel_id):
    """Allows ``ok*``; ``closed*`` refused with a reason; ``slow*`` never answers;
    ``boom*`` fails; ``agent*`` only for the User-Agent 'friend'."""
    if channel_id.startswith("closed"):
        raise PermissionError(f"{channel_id} is closed")
    if channel_id.startswith("slow"):
        await anyio.sleep_forever()
    if channel_id.startswith("boom"):
        raise RuntimeError("hook bug")
    if channel_id.startswith("agent"):
        return request.header("user-agent") == "friend"
    return channel_id.startswith("ok")


not_callable = 42


@receiver(signals.channel_subscribe)
def refuse(sender, request, channel_id, **kwargs):
    if not request.POST.get("authorize"):
        return
    if channel_id.startswith("deny"):
        raise PermissionDenied("denied by the site")
    if channel_id.startswith("user-"):
        owner = channel_id.removeprefix("user-")
        if not (request.user.is_authenticated and request.user.get_username() == owner):
            raise PermissionDenied(f"only {owner} may subscribe")


async def user_hook(request, channel_id):
    """``mine-X`` only for the logged-in user X (the session from the request's cookie)."""
    from pushserver.utils.auth import aget_user

    user = await aget_user(request)
    return user.is_authenticated and channel_id == f"mine-{user.get_username()}"
