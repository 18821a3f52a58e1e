"""Signals, with the original django-pushserver's names and arguments.

``channel_subscribe`` / ``channel_unsubscribe``: sent by :func:`pushserver.views.passthrough`
with ``request`` (the passthrough request, carrying the subscriber's forwarded cookies, so
``request.user`` is the subscriber) and ``channel_id``.

``pre_send_update`` / ``post_send_update``: sent by :func:`pushserver.utils.updates.send_update`
with ``channel_id``, ``data``, ``already_serialized``, ``request`` and, on post,
``response`` (the response, or the exception on failure).
"""

from django.dispatch import Signal

channel_subscribe = Signal()
channel_unsubscribe = Signal()
pre_send_update = Signal()
post_send_update = Signal()
