from django.urls import include, path

from . import authz, presence, update_views, views  # noqa: F401  (receivers connect)

urlpatterns = [
    path("publish-from-view/<str:channel_id>", views.publish_from_view),
    path("passthrough", include("pushserver.urls")),
    path("send-update/<path:channel_id>", update_views.send_update_view),
    path("asend-update/<path:channel_id>", update_views.asend_update_view),
]
