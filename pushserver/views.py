"""The Django side of passthrough (completed in issue 3)."""

from django.http import HttpResponse
from django.views.decorators.csrf import csrf_exempt


@csrf_exempt
def passthrough(request):
    return HttpResponse()
