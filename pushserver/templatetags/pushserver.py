"""``{% load pushserver %}``: channel URLs and the client script for templates.

``{% channel_url channel_id %}``
    The absolute subscriber URL of ``channel_id`` (id URL-quoted), HTML-escaped by
    autoescape; ``{% channel_url id as url %}`` stores it instead.
    ``{% channel_url id signed=True %}`` adds the channel's signature (``?sig=``, for a
    location with ``'signed': True``); ``max_age=3600`` makes it expire (and implies signed).
``{% pushserver_transport %}``
    The transport pages use (``PUSH_SERVER['transport']``), e.g. ``longpoll``.
``{% pushserver_script %}``
    The client script with the transport in an attribute, e.g.
    ``<script src="/static/pushserver/updates.js" data-pushserver-transport="longpoll"></script>``;
    ``updates.js`` reads it, so changing the setting needs no JS change.
``{% pushserver_client %}``
    The same for the dependency-free client, ``pushserver/pushserver.js`` (defines the
    global ``PushServer``); ``{% pushserver_client module=True %}`` loads its ES module,
    ``pushserver/pushserver.mjs``, as ``<script type="module">`` instead. The client starts
    with the transport of the attribute and falls back from there.
"""

from __future__ import annotations

from django import template
from django.templatetags.static import static
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

from ..settings import get_config
from ..utils import signing, updates

register = template.Library()


@register.simple_tag
def channel_url(channel_id: object, signed: bool = False, max_age: int | None = None) -> str:
    # A plain str, so autoescape applies (the original's output was raw).
    if signed or max_age is not None:
        return signing.signed_channel_url(str(channel_id), max_age)
    return updates.subscriber_url(str(channel_id))


@register.simple_tag
def pushserver_transport() -> str:
    return get_config().transport


def _script(path: str, module: bool = False) -> SafeString:
    """A script tag for the static ``path``, with ``PUSH_SERVER['transport']`` in the
    attribute both clients read."""
    return format_html(
        '<script{} src="{}" data-pushserver-transport="{}"></script>',
        mark_safe(' type="module"') if module else "",
        static(path),
        get_config().transport,
    )


@register.simple_tag
def pushserver_script() -> SafeString:
    return _script("pushserver/updates.js")


@register.simple_tag
def pushserver_client(module: bool = False) -> SafeString:
    if module:
        return _script("pushserver/pushserver.mjs", module=True)
    return _script("pushserver/pushserver.js")
