"""The test project plus the browser test app: pages that load ``updates.js``.

DEBUG is on so that ``runpushserver --allrequests`` serves the static files (jQuery from the
demo, ``pushserver/updates.js``) as it does for the demo. Sessions live in signed cookies, so
the pages need no database; the one test that logs a Django user in migrates a file database
named by ``PUSHSERVER_TEST_DB``.
"""

from pathlib import Path

from tests.project.settings import *  # noqa: F403
from tests.project.settings import INSTALLED_APPS

ROOT = Path(__file__).resolve().parent.parent.parent

DEBUG = True
INSTALLED_APPS = [*INSTALLED_APPS, "tests.browser"]
ROOT_URLCONF = "tests.browser.urls"
STATICFILES_DIRS = [ROOT / "example" / "live" / "static"]
SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
