"""Views for tests/test_updates.py: publish with send_update / asend_update from a view
running inside ``runpushserver --allrequests`` (the original deadlocked here)."""

from django.http import JsonResponse

from pushserver import signals
from pushserver.utils import updates


def _recording():
    seen = []

    def record(sender, response, **kwargs):
        seen.append(response)

    signals.post_send_update.connect(record, weak=False)
    return seen, record


def _answer(seen, request):
    response = seen[-1]
    answer = {"status": response.status, "in_process": response.in_process}
    if "key" in request.GET:
        answer["replayed"] = response.replayed
    return JsonResponse(answer)


def _keyed(request):
    """``?key=K`` sends ``idempotency_key=K``."""
    key = request.GET.get("key")
    return {} if key is None else {"idempotency_key": key}


def send_update_view(request, channel_id):
    seen, record = _recording()
    try:
        updates.send_update(
            channel_id, {"type": "from-view", "channel": channel_id}, **_keyed(request)
        )
    except updates.SendUpdateError as exc:
        return JsonResponse({"error": str(exc), "status": exc.status}, status=502)
    finally:
        signals.post_send_update.disconnect(record)
    return _answer(seen, request)


async def asend_update_view(request, channel_id):
    seen, record = _recording()
    try:
        await updates.asend_update(
            channel_id, {"type": "from-async-view", "channel": channel_id}, **_keyed(request)
        )
    finally:
        signals.post_send_update.disconnect(record)
    return _answer(seen, request)
