import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.project.settings")
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))

import django  # noqa: E402

django.setup()

from pushserver.testing import PushServerProcess  # noqa: E402


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def push_server_factory():
    """Start real ``runpushserver`` processes with a given PUSH_SERVER; stop them after."""
    started: list[PushServerProcess] = []

    def start(push_server=None, *args, **kwargs) -> PushServerProcess:
        server = PushServerProcess(
            "tests.project.settings", push_server=push_server, args=args, cwd=str(ROOT), **kwargs
        )
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def push_server(push_server_factory):
    """A push server with the default locations /publisher/ and /subscriber/."""
    return push_server_factory({"locations": [
        {"type": "publisher", "prefix": "/publisher/"},
        {"type": "subscriber", "prefix": "/subscriber/", "create_on_get": True},
    ]})
