"""The demo: a chat and a shared counter, live in every open tab.

Everything goes through one channel, ``demo``; each message's ``type`` picks its processor in
the page: ``chat`` (a line said), ``counter`` (the new count) and ``online`` (who has the page
open, from the passthrough signals in ``live.presence``). Names live in the signed-cookie
session, so the demo needs no database.
"""

import threading

from django.http import HttpResponse, HttpResponseBadRequest
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from pushserver.utils.updates import send_update

CHANNEL = "demo"
MAX_NAME = 40
MAX_TEXT = 500

_counter_lock = threading.Lock()
_counter = 0


def _done(request):
    # The page posts with XMLHttpRequest and needs no body; a plain form post goes back to the page.
    if request.headers.get("x-requested-with") == "XMLHttpRequest":
        return HttpResponse(status=204)
    return redirect("index")


def index(request):
    name = request.session.get("name")
    if not name:
        return render(request, "live/login.html")
    return render(request, "live/index.html", {"name": name, "channel": CHANNEL, "count": _counter})


@require_POST
def login(request):
    name = " ".join(request.POST.get("name", "").split())[:MAX_NAME]
    if not name:
        return render(request, "live/login.html", {"error": "Please type a name."}, status=400)
    request.session["name"] = name
    return redirect("index")


@require_POST
def logout(request):
    request.session.flush()
    return redirect("index")


@require_POST
def say(request):
    name = request.session.get("name")
    text = request.POST.get("text", "").strip()[:MAX_TEXT]
    if not name:
        return HttpResponseBadRequest("log in first")
    if text:
        send_update(CHANNEL, {"type": "chat", "name": name, "text": text})
    return _done(request)


@require_POST
def count(request):
    global _counter
    if not request.session.get("name"):
        return HttpResponseBadRequest("log in first")
    with _counter_lock:
        _counter += 1
        value = _counter
        # Published under the lock, so the counter's messages are in counting order.
        send_update(CHANNEL, {"type": "counter", "value": value, "name": request.session["name"]})
    return _done(request)
