"""Who has the demo page open, from the passthrough signals.

The push server tells Django each time a long poll starts waiting (``channel_subscribe``) and
ends (``channel_unsubscribe``); the forwarded session cookie says whose it was. Every delivered
message ends each waiting poll and the browser opens the next one at once, so a name is only
taken off the list after it has had no open poll for ``GRACE`` seconds; otherwise each
``online`` update would itself flip everyone offline and online again.
"""

import threading

from django import dispatch

from pushserver import signals

GRACE = 5.0

_lock = threading.Lock()
_polls: dict[str, int] = {}  # name -> long polls waiting now
_online: set[str] = set()
_leaving: dict[str, threading.Timer] = {}


def online() -> list[str]:
    with _lock:
        return sorted(_online)


def _publish() -> None:
    from live.views import CHANNEL
    from pushserver.utils.updates import send_update

    send_update(CHANNEL, {"type": "online", "names": online()}, ignore_errors=True)


def _name(request, channel_id):
    from live.views import CHANNEL

    if channel_id != CHANNEL:
        return None
    return request.session.get("name")


@dispatch.receiver(signals.channel_subscribe)
def subscribed(sender, request, channel_id, **kwargs):
    name = _name(request, channel_id)
    if not name:
        return
    with _lock:
        _polls[name] = _polls.get(name, 0) + 1
        timer = _leaving.pop(name, None)
        if timer is not None:
            timer.cancel()
        arrived = name not in _online
        _online.add(name)
    if arrived:
        _publish()


@dispatch.receiver(signals.channel_unsubscribe)
def unsubscribed(sender, request, channel_id, **kwargs):
    name = _name(request, channel_id)
    if not name:
        return
    with _lock:
        # An unsubscribe may come without a subscribe (the poll found a message at once).
        left = _polls.get(name, 0) - 1
        if left > 0:
            _polls[name] = left
            return
        _polls.pop(name, None)
        if name not in _online or name in _leaving:
            return
        timer = _leaving[name] = threading.Timer(GRACE, _leave, (name,))
        timer.daemon = True
    timer.start()


def _leave(name: str) -> None:
    with _lock:
        if _leaving.get(name) is not threading.current_thread() or _polls.get(name):
            return
        del _leaving[name]
        _online.discard(name)
    _publish()
