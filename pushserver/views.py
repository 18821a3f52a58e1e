"""The Django side of passthrough: the push server POSTs here when subscribers come and go."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden
from django.views.decorators.csrf import csrf_exempt

from . import signals


@csrf_exempt
def passthrough(request: HttpRequest) -> HttpResponse:
    """Send ``channel_subscribe`` or ``channel_unsubscribe`` for the push server's POST.

    Only the push server may call it: ``REMOTE_ADDR`` must be in ``INTERNAL_IPS``, the method
    POST and ``channel_id`` non-empty, with ``subscribe`` or ``unsubscribe`` set (subscribe
    wins); anything else is 403. ``request`` carries the subscriber's forwarded headers, so
    ``request.user`` is the subscriber. Receivers' exceptions are logged, not raised.

    With ``authorize`` set too (a location with ``passthrough_authorize``: the push server
    waits for this answer before serving the subscriber) the view can say no: a
    ``channel_subscribe`` receiver raising :class:`~django.core.exceptions.PermissionDenied`
    makes it answer 403 with the exception's text, which the push server gives the
    subscriber; any other exception in a receiver answers 500 (refused as well). Every
    receiver still runs, and a refused subscribe is followed by ``channel_unsubscribe``.
    """
    if request.META.get("REMOTE_ADDR") not in settings.INTERNAL_IPS:
        raise PermissionDenied("passthrough is only for the push server (INTERNAL_IPS)")
    if request.method != "POST":
        raise PermissionDenied("passthrough takes POST")
    channel_id = request.POST.get("channel_id")
    if not channel_id:
        raise PermissionDenied("channel_id is missing")
    if request.POST.get("subscribe"):
        signal = signals.channel_subscribe
    elif request.POST.get("unsubscribe"):
        signal = signals.channel_unsubscribe
    else:
        raise PermissionDenied("neither subscribe nor unsubscribe")
    results = signal.send_robust(sender=passthrough, request=request, channel_id=channel_id)
    if signal is signals.channel_subscribe and request.POST.get("authorize"):
        errors = [result for _, result in results if isinstance(result, Exception)]
        for error in errors:
            if isinstance(error, PermissionDenied):
                reason = str(error) or f"not allowed to subscribe to {channel_id}"
                return HttpResponseForbidden(reason, content_type="text/plain; charset=utf-8")
        if errors:
            return HttpResponse(
                "a channel_subscribe receiver failed",
                status=500,
                content_type="text/plain; charset=utf-8",
            )
    return HttpResponse()
