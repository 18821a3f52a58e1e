"""Pages for the browser tests, and a record of what the passthrough signals saw."""

import threading

from django import dispatch
from django.contrib.auth import get_user_model
from django.contrib.auth import login as auth_login
from django.http import HttpResponse, JsonResponse
from django.shortcuts import render

from pushserver import signals

from .npm import npm_url

_lock = threading.Lock()
_seen: list[dict] = []


def page(request):
    """A page with jQuery and updates.js; ``?channel=<id>`` also subscribes it as ``main``
    through ``{% channel_url %}``, as a real page would (``&signed=1``: a signed one).
    ``&jquery=3.7`` loads that jQuery from npm (``tests/browser/npm.py``) instead of the demo's."""
    jquery = request.GET.get("jquery")
    context = {
        "channel": request.GET.get("channel"),
        "signed": bool(request.GET.get("signed")),
        "jquery": npm_url("jquery", "dist/jquery.min.js", jquery) if jquery else None,
    }
    return render(request, "browser/page.html", context)


def library_page(request, name):
    """``browser/lib/<name>``: the page ``templates/browser/<name>.html`` (htmx, Turbo,
    plain WebSocket / EventSource, nchan's client, pushserver's client), which loads its
    library from ``/npm/`` (``tests/browser/npm.py``); the query string is its context
    ``q`` (``?url=`` the subscriber URL, ...)."""
    return render(request, f"browser/{name}.html", {"q": request.GET})


def fragment(request):
    """An HTML fragment, as a view an htmx page fetches would answer: ``<p>?text</p>``."""
    return render(request, "browser/fragment.html", {"text": request.GET.get("text", "")})


def login(request):
    """Log ``?name=`` in as a Django user (created on first use)."""
    user, _ = get_user_model().objects.get_or_create(username=request.GET["name"])
    auth_login(request, user)
    return HttpResponse(user.username)


def presence(request):
    with _lock:
        return JsonResponse({"seen": list(_seen)})


def _record(action, request, channel_id):
    user = request.user
    with _lock:
        _seen.append(
            {
                "action": action,
                "channel": channel_id,
                "user": user.get_username() if user.is_authenticated else None,
            }
        )


@dispatch.receiver(signals.channel_subscribe)
def subscribed(sender, request, channel_id, **kwargs):
    _record("subscribe", request, channel_id)


@dispatch.receiver(signals.channel_unsubscribe)
def unsubscribed(sender, request, channel_id, **kwargs):
    _record("unsubscribe", request, channel_id)
