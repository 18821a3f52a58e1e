from django.urls import path

from tests.project.urls import urlpatterns as project_urlpatterns

from . import views

urlpatterns = [
    path("browser/page", views.page),
    path("browser/lib/<slug:name>", views.library_page),
    path("browser/fragment", views.fragment),
    path("browser/login", views.login),
    path("browser/presence", views.presence),
    *project_urlpatterns,
]
