"""Settings of the demo project: one process, memory backend, `runpushserver --allrequests`."""

import os
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "demo-only-not-secret"
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]
INTERNAL_IPS = ["127.0.0.1", "::1"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "pushserver",
    "live",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "example.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
# The demo keeps names in signed-cookie sessions and never queries a database, so it runs
# without `migrate`.
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / "db.sqlite3"}}
SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
MESSAGE_STORAGE = "django.contrib.messages.storage.cookie.CookieStorage"
STATIC_URL = "/static/"
USE_TZ = True


def _local_time_zone() -> str:
    """This machine's time zone (``TZ``, else where ``/etc/localtime`` points), else UTC.
    Django's default, America/Chicago, would put the server's log lines hours away from the
    times the browser on this machine shows (the status page's "updated" time)."""
    name = os.environ.get("TZ", "").lstrip(":")
    if not name:
        target = str(Path("/etc/localtime").resolve())
        name = target.partition("zoneinfo/")[2]
    try:
        ZoneInfo(name)
    except (ValueError, ZoneInfoNotFoundError):
        return "UTC"
    return name


TIME_ZONE = _local_time_zone()

# Same origin: the page and the push locations are both served by
# `./manage.py runpushserver --allrequests` on 127.0.0.1:8000.
PUSH_SERVER = {
    # Where send_update reaches the push server from other processes, such as
    # `./manage.py shell` (the views, running inside runpushserver, need no host).
    "publisher_host": {"location": "127.0.0.1:8000", "secure": False},
    "store": {"type": "memory", "max_messages": 100, "message_timeout": 3600},
    "locations": (
        {
            "type": "subscriber",
            "url": r"/updates/([^/]+)",
            "create_on_get": True,
            "passthrough": "http://127.0.0.1:8000/passthrough",
        },
        {"type": "publisher", "url": r"/send-update/([^/]+)"},
        # Figures of the running server: /status/ (JSON), /status/metrics (Prometheus) and
        # a live page at /status/ in a browser; readable from this machine only.
        {"type": "status", "prefix": "/status/"},
    ),
}
# {% channel_url %} is only used by pages runpushserver serves, and there it builds URLs from
# the address it listens on (and the browser's own cookies reach it): no subscriber_host.
SILENCED_SYSTEM_CHECKS = ["pushserver.W123"]
