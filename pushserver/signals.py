"""Signals, with the original django-pushserver's names and arguments.

``channel_subscribe`` / ``channel_unsubscribe``: sent by :func:`pushserver.views.passthrough`
with ``request`` (the passthrough request, carrying the subscriber's forwarded cookies, so
``request.user`` is the subscriber) and ``channel_id``.

``pre_send_update`` / ``post_send_update``: sent by :func:`pushserver.utils.updates.send_update`
(and ``asend_update``) with sender the ``pushserver.utils.updates`` module and ``channel_id``,
``data``, ``already_serialized``, ``request`` (the ``urllib.request.Request`` built for the
publisher URL) and, on post, ``response``: an :class:`~pushserver.utils.updates.UpdateResponse`
(``status`` 201/202, ``url``, ``in_process``), or the exception on failure. ``pre`` is sent
after the URL is built, so a URL error escapes with no signal at all.
"""

from django.dispatch import Signal

channel_subscribe = Signal()
channel_unsubscribe = Signal()
pre_send_update = Signal()
post_send_update = Signal()
