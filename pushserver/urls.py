"""Mount with ``path("passthrough", include("pushserver.urls"))``: the passthrough URL is then
exactly ``/passthrough``, the value to give the subscriber location's ``passthrough``."""

from django.urls import re_path

from . import views

urlpatterns = [
    re_path(r"^$", views.passthrough, name="pushserver-passthrough"),
]
