from django.urls import include, path
from live import views

urlpatterns = [
    path("", views.index, name="index"),
    path("login", views.login, name="login"),
    path("logout", views.logout, name="logout"),
    path("say", views.say, name="say"),
    path("count", views.count, name="count"),
    # The push server's passthrough POSTs land here (PUSH_SERVER 'passthrough').
    path("passthrough", include("pushserver.urls")),
]
