from django.urls import include, path

from . import views

urlpatterns = [
    path("publish-from-view/<str:channel_id>", views.publish_from_view),
    path("passthrough", include("pushserver.urls")),
]
