"""System checks for the redis store and for ``publish_via``: a missing extra is an error,
an unreachable Redis a warning naming it (startup goes on), ``publish_via='backend'``
without a redis store an error."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.core import checks

from pushserver.testing import PushServerProcess, free_port
from tests.project.helpers import manage, pushserver_messages, silent_server

ROOT = Path(__file__).resolve().parent.parent


def test_reachable_redis_passes(redis_server):
    assert pushserver_messages({"store": redis_server.store()}, deploy=True) == []
    assert (
        pushserver_messages({"store": {"type": "redis", "url": redis_server.url}}, deploy=True)
        == []
    )


def test_refused_connection_is_a_warning_naming_the_url():
    port = free_port()  # nothing listens there
    (message,) = pushserver_messages({"store": {"type": "redis", "port": port}}, deploy=True)
    assert message.id == "pushserver.W052"
    assert message.level == checks.WARNING
    assert f"cannot reach Redis at redis://127.0.0.1:{port}/0" in message.msg
    assert "PUSH_SERVER['store'] 'default'" in message.msg
    assert "starts anyway" in message.hint


def test_url_and_named_stores_each_warned_once_per_address():
    port = free_port()
    url = f"redis://:secret@127.0.0.1:{port}/3"
    messages = pushserver_messages(
        {
            "store": {
                "default": {"type": "redis", "url": url},
                "other": {"type": "redis", "url": url, "key_prefix": "o:"},
                "mem": {"type": "memory"},
            }
        },
        deploy=True,
    )
    assert [m.id for m in messages] == ["pushserver.W052", "pushserver.W052"]
    for message in messages:
        assert f"redis://127.0.0.1:{port}/3" in message.msg
        assert "secret" not in message.msg  # never the password


def test_silent_server_times_out_in_about_a_second():
    """A peer that accepts and never answers (a hung Redis, a firewall) costs the check
    its 1 s timeout, not the default socket timeout."""
    with silent_server() as (port, accepted):
        started = time.monotonic()
        (message,) = pushserver_messages({"store": {"type": "redis", "port": port}}, deploy=True)
        elapsed = time.monotonic() - started
    assert message.id == "pushserver.W052"
    assert accepted  # it did connect: this was the reply timeout
    assert elapsed < 3, elapsed


def test_runpushserver_starts_with_the_warning(push_server_factory):
    port = free_port()
    server = push_server_factory({"store": {"type": "redis", "port": port}})
    assert "pushserver.W052" in server.log
    assert f"redis://127.0.0.1:{port}/0" in server.log


def test_missing_redis_extra_is_an_error():
    """Without redis-py (blocked from importing in a child interpreter) the check command
    fails with E016 and the install hint."""
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "from django.core.management import execute_from_command_line\n"
        "execute_from_command_line(['manage.py', 'check'])\n"
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.project.settings",
        "PUSHSERVER_TEST_CONFIG": '{"store": {"type": "redis"}}',
    }
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "pushserver.E016" in result.stderr
    assert "pip install 'redis>=5' (the [redis] extra)" in result.stderr
    assert "W052" not in result.stderr  # no second, confusing report


# -- publish_via --------------------------------------------------------------------------


def test_publish_via_backend_with_a_redis_store_passes(redis_server):
    assert pushserver_messages({"publish_via": "backend", "store": redis_server.store()}) == []
    assert pushserver_messages({"publish_via": "http"}) == []


def test_publish_via_unknown_value():
    (message,) = pushserver_messages({"publish_via": "redis"})
    assert message.id == "pushserver.E050"
    assert message.msg.startswith("PUSH_SERVER['publish_via']: must be 'http' or 'backend'")


def test_publish_via_backend_needs_a_redis_store(redis_server):
    (message,) = pushserver_messages({"publish_via": "backend"})
    assert message.id == "pushserver.E051"
    assert "'default', a 'memory' store" in message.msg
    assert "'publish_via': 'http'" in message.hint
    # The first publisher location decides, not the default store.
    config = {
        "publish_via": "backend",
        "store": {"default": redis_server.store(), "mem": {"type": "memory"}},
        "locations": [
            {"type": "subscriber", "prefix": "/s/"},
            {"type": "publisher", "prefix": "/p/", "store": "mem"},
            {"type": "publisher", "prefix": "/q/"},
        ],
    }
    (message,) = pushserver_messages(config)
    assert message.id == "pushserver.E051"
    assert "PUSH_SERVER['locations'][1]" in message.msg


def test_publish_via_backend_needs_a_publisher_location(redis_server):
    config = {
        "publish_via": "backend",
        "store": redis_server.store(),
        "locations": [{"type": "subscriber", "prefix": "/s/"}],
    }
    (message,) = pushserver_messages(config)
    assert message.id == "pushserver.E051"
    assert "there is none" in message.msg


# -- which commands ping -----------------------------------------------------------------


#: Commands that must never touch the network, and the text each prints when it ran.
OFFLINE_COMMANDS = [
    (("migrate", "--noinput"), "Apply all migrations"),
    (("shell", "-c", "print('shell ran')"), "shell ran"),
    (("check",), "System check identified"),
]


@pytest.mark.parametrize(("args", "ran"), OFFLINE_COMMANDS)
def test_other_commands_do_not_ping_an_unreachable_redis(args, ran):
    result = manage(*args, push_server={"store": {"type": "redis", "port": free_port()}})
    assert result.returncode == 0, result.stdout
    assert ran in result.stdout
    assert "W052" not in result.stdout


def test_check_deploy_pings_an_unreachable_redis():
    port = free_port()
    result = manage("check", "--deploy", push_server={"store": {"type": "redis", "port": port}})
    assert "pushserver.W052" in result.stdout
    assert f"cannot reach Redis at redis://127.0.0.1:{port}/0" in result.stdout


def test_only_runpushserver_and_check_deploy_connect_to_a_real_redis(redis_server):
    """Counted by the Redis itself: the connections it accepted."""
    import redis

    push_server = {"store": redis_server.store()}
    client = redis.Redis.from_url(redis_server.url)

    def connections() -> int:
        return int(client.info("stats")["total_connections_received"])

    try:
        before = connections()
        for args, ran in OFFLINE_COMMANDS:
            result = manage(*args, push_server=push_server)
            assert ran in result.stdout, result.stdout
        assert connections() == before  # migrate, shell and check never connected
        result = manage("check", "--deploy", push_server=push_server)
        assert "W052" not in result.stdout, result.stdout
        after_deploy = connections()
        assert after_deploy > before  # the ping
        with PushServerProcess(
            "tests.project.settings", push_server=push_server, cwd=str(ROOT)
        ) as server:
            assert "W052" not in server.log
            assert connections() > after_deploy
    finally:
        client.close()
