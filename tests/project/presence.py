"""Passthrough signal receivers for tests/test_passthrough.py.

When ``PUSHSERVER_TEST_PRESENCE_CHANNEL`` is set (in a push server subprocess), each
channel_subscribe / channel_unsubscribe is published, with what the receiver saw, to that
channel, so the test reads it back with a long poll instead of sleeping.
"""

import os

from django.dispatch import receiver

from pushserver import signals
from pushserver.utils import updates


def _report(event, request, channel_id):
    channel = os.environ.get("PUSHSERVER_TEST_PRESENCE_CHANNEL")
    if not channel or channel_id == channel:
        return
    meta = request.META
    updates.send_update(
        channel,
        {
            "type": event,
            "channel_id": channel_id,
            "user": request.user.get_username() if request.user.is_authenticated else None,
            "if_none_match": meta.get("HTTP_IF_NONE_MATCH"),
            "if_modified_since": meta.get("HTTP_IF_MODIFIED_SINCE"),
            "user_agent": meta.get("HTTP_USER_AGENT"),
            "origin": meta.get("HTTP_ORIGIN"),
            "host": meta.get("HTTP_HOST"),
            "remote_addr": meta.get("REMOTE_ADDR"),
        },
    )


@receiver(signals.channel_subscribe)
def report_subscribe(sender, request, channel_id, **kwargs):
    _report("subscribe", request, channel_id)


@receiver(signals.channel_unsubscribe)
def report_unsubscribe(sender, request, channel_id, **kwargs):
    _report("unsubscribe", request, channel_id)
