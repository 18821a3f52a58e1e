from django.urls import include, path

from live import views

urlpatterns = [
    path("", views.index, name="index"),
    path("passthrough", include("pushserver.urls")),
]
