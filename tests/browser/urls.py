from django.urls import path

from tests.project.urls import urlpatterns as project_urlpatterns

from . import views

urlpatterns = [
    path("browser/page", views.page),
    path("browser/login", views.login),
    path("browser/presence", views.presence),
    *project_urlpatterns,
]
