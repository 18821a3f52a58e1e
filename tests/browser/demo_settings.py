"""The demo's own settings (``example/example/settings.py``), with its passthrough and its
publisher_host pointed at the port the test runs it on instead of 8000. Needs ``example/`` on
the Python path."""

import os

from example.settings import *  # noqa: F403
from example.settings import PUSH_SERVER

_port = os.environ["PUSHSERVER_DEMO_PORT"]
_passthrough = f"http://127.0.0.1:{_port}/passthrough"
PUSH_SERVER = {
    **PUSH_SERVER,
    "publisher_host": {"location": f"127.0.0.1:{_port}", "secure": False},
    "locations": [
        {**location, "passthrough": _passthrough} if "passthrough" in location else location
        for location in PUSH_SERVER["locations"]
    ],
}

# A transport cell of the matrix (PUSHSERVER_TEST_TRANSPORT=X, tests/conftest.py) serves only
# X, as `runpushserver --transport X`; the demo's page is set to speak X, as a site would be.
if os.environ.get("PUSHSERVER_TEST_TRANSPORT"):
    PUSH_SERVER["transport"] = os.environ["PUSHSERVER_TEST_TRANSPORT"]
