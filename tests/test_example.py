"""The demo's setup (``example/``) outside the browser: ``send_update`` from
``./manage.py shell`` reaches the running demo, and its log times are the machine's."""

from __future__ import annotations

import json

import httpx

from pushserver.testing import PushServerProcess, free_port
from tests.project.helpers import DEMO_SETTINGS, ROOT, demo_env, manage


def test_send_update_from_the_shell_reaches_the_running_demo():
    port = free_port()
    env = demo_env(port)
    with PushServerProcess(
        DEMO_SETTINGS, args=["--allrequests"], address=f"127.0.0.1:{port}", env=env, cwd=str(ROOT)
    ) as server:
        assert "pushserver.W12" not in server.log
        code = (
            "from pushserver.utils.updates import send_update; "
            "send_update('demo', {'type': 'chat', 'name': 'shell', 'text': 'hello from the shell'})"
        )
        result = manage("shell", "-c", code, settings=DEMO_SETTINGS, env=env)
        assert result.returncode == 0, result.stdout
        server.wait_for_output(r'"POST /send-update/demo 1\.1" 20[12]')  # over HTTP
        # A new subscriber is sent the channel's oldest retained message: the shell's.
        response = httpx.get(f"{server.url}/updates/demo", timeout=10)
    assert response.status_code == 200
    assert json.loads(response.text) == {
        "type": "chat",
        "name": "shell",
        "text": "hello from the shell",
    }


def test_the_demo_logs_in_the_machines_time_zone():
    code = "from django.conf import settings; print(settings.TIME_ZONE)"
    env = {**demo_env(8000), "TZ": "Europe/Paris"}
    assert manage("shell", "-c", code, settings=DEMO_SETTINGS, env=env).stdout.split()[-1] == (
        "Europe/Paris"
    )
    env["TZ"] = "Not/AZone"
    assert manage("shell", "-c", code, settings=DEMO_SETTINGS, env=env).stdout.split()[-1] == "UTC"
