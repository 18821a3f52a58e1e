"""Settings for the test project. PUSH_SERVER comes from PUSHSERVER_TEST_CONFIG (JSON) when
set, so each test server can run its own configuration."""

import json
import os

SECRET_KEY = "tests-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INTERNAL_IPS = ["127.0.0.1", "::1"]
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.staticfiles",
    "pushserver",
    "tests.project",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
ROOT_URLCONF = "tests.project.urls"
ASGI_APPLICATION = "tests.project.asgi.application"
# daphne's runserver (an ASGI runserver) where a test asks for it: it must come first.
if os.environ.get("PUSHSERVER_TEST_DAPHNE_RUNSERVER"):
    INSTALLED_APPS.insert(0, "daphne")
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("PUSHSERVER_TEST_DB", ":memory:"),
    }
}
STATIC_URL = "/static/"
USE_TZ = True

_CONFIG = os.environ.get("PUSHSERVER_TEST_CONFIG")
PUSH_SERVER = json.loads(_CONFIG) if _CONFIG else {}
