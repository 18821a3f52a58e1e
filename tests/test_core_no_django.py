"""The core never imports Django: it runs with no settings configured."""

import os
import subprocess
import sys

CORE_MODULES = [
    "pushserver.message",
    "pushserver.exceptions",
    "pushserver.hub",
    "pushserver.backends",
    "pushserver.backends.base",
    "pushserver.backends.memory",
    "pushserver.protocol",
    "pushserver.options",
    "pushserver.config",
    "pushserver.http",
    "pushserver.publisher",
    "pushserver.app",
    "pushserver.server",
    "pushserver.running",
    "pushserver.supervisor",
    "pushserver.transports",
    "pushserver.transports.longpoll",
]

SCRIPT = f"""
import importlib, sys
for name in {CORE_MODULES!r}:
    importlib.import_module(name)
# The core is usable, not just importable: build and open a server from a config.
import anyio
from pushserver.app import PushServer
from pushserver.config import load

async def main():
    async with PushServer(load({{}})) as server:
        hub = server.default_hub
        result = await hub.publish("c", b"x", "text/plain")
        assert (await hub.read_after("c", result.message.id)).message is None

anyio.run(main)
leaked = sorted(name for name in sys.modules if name == "django" or name.startswith("django."))
print("LEAKED" if leaked else "CLEAN", leaked)
"""


def test_core_imports_and_runs_without_django():
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("CLEAN"), result.stdout
