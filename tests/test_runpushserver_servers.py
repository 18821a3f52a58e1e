"""``runpushserver --server uvicorn|granian``: the same application and behaviour as under
the embedded hypercorn, and the startup errors for what a server cannot honour."""

from __future__ import annotations

import re
import signal
import sys
import uuid

import anyio
import anyio.to_thread
import httpx
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from tests.project.helpers import (
    assert_still_serving,
    path,
    position,
    wait_for_subscribers,
    worker_pids,
)
from tests.test_slowloris import read_until_closed

LOCATIONS = [
    {"type": "publisher", "prefix": "/publisher/"},
    {"type": "subscriber", "prefix": "/subscriber/", "create_on_get": True},
]


@pytest.mark.anyio
@pytest.mark.parametrize("name", ["uvicorn", "granian"])
async def test_serves_pushes_and_pages_and_stops_on_sigterm(push_server_factory, name):
    pytest.importorskip(name)
    server = push_server_factory(
        {"locations": LOCATIONS, "shutdown_timeout": 30},
        "--allrequests",
        "--server",
        name,
    )
    assert f"on {name} version" in server.log
    channel = f"srv-{uuid.uuid4().hex}"
    result = {}
    async with httpx.AsyncClient(base_url=server.url, timeout=20) as client:

        async def poll(key, headers=None):
            result[key] = await client.get(path("/subscriber/", channel), headers=headers)

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(poll, "first")
                await wait_for_subscribers(client, path("/publisher/", channel), 1)
                answer = await client.get(f"/send-update/{channel}")
            assert answer.json() == {"status": 201, "in_process": True}
            assert result["first"].json() == {"type": "from-view", "channel": channel}
            assert (await client.get("/no-such-page")).status_code == 404

            # A held long poll is released at once on SIGTERM (304), well before the
            # 30 s shutdown timeout, and the server exits with status 0.
            async with anyio.create_task_group() as tg:
                tg.start_soon(poll, "held", position(result["first"]))
                await wait_for_subscribers(client, path("/publisher/", channel), 1)
                server.process.send_signal(signal.SIGTERM)
            code = await anyio.to_thread.run_sync(server.process.wait)
    assert result["held"].status_code == 304
    assert code == 0, server.log
    assert "Traceback" not in server.log


def run(*args, push_server=None):
    with override_settings(PUSH_SERVER={"locations": LOCATIONS, **(push_server or {})}):
        call_command("runpushserver", "127.0.0.1:0", *args)


@pytest.mark.parametrize(
    ("args", "push_server", "message"),
    [
        (
            ["--server", "uvicorn"],
            {"client_header_timeout": 10},
            "PUSH_SERVER['client_header_timeout'] cannot be honoured by uvicorn",
        ),
        (
            ["--server", "granian"],
            {"client_header_timeout": 90},
            "granian reads a request head for at most 60 s",
        ),
        (["--server", "uvicorn", "--loop", "trio"], {}, "--server uvicorn runs on asyncio only"),
        (["--server", "granian", "--log-format", "json"], {}, "use --server hypercorn"),
        (["--server", "granian", "--workers", "2"], {}, "use granian's own workers"),
    ],
)
def test_what_a_server_cannot_honour_is_a_startup_error(args, push_server, message):
    with pytest.raises(CommandError, match=re.escape(message)):
        run(*args, push_server=push_server)


@pytest.mark.parametrize(
    ("name", "module", "fix"),
    [
        ("uvicorn", "httptools", "pip install uvicorn httptools uvloop (the [uvicorn] extra)"),
        ("granian", "granian", "pip install granian (the [granian] extra)"),
    ],
)
def test_missing_extra_names_the_fix(monkeypatch, name, module, fix):
    # The packages by name: PyPI's django-pushserver is the 2014 release.
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    with pytest.raises(CommandError, match=re.escape(fix)):
        run("--server", name)


def test_unknown_server_is_refused():
    with pytest.raises(CommandError, match="invalid choice: 'gunicorn'"):
        run("--server", "gunicorn")


@pytest.mark.anyio
async def test_uvicorn_workers_share_a_redis_store_and_stop_together(
    push_server_factory, redis_server
):
    pytest.importorskip("uvicorn")
    config = {"store": redis_server.store(), "locations": LOCATIONS}
    server = push_server_factory(config, "--workers", "2", "--server", "uvicorn")
    pids = await worker_pids(server, 2)
    channel = f"workers-{uuid.uuid4().hex}"
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        published = await client.post(path("/publisher/", channel), content=b"shared")
        polled = await client.get(path("/subscriber/", channel))
    assert (published.status_code, polled.content) == (202, b"shared")
    server.process.send_signal(signal.SIGTERM)
    with anyio.fail_after(30):
        code = await anyio.to_thread.run_sync(server.process.wait)
    assert code == 0, server.log
    assert server.log.count("Application shutdown complete") == len(pids) == 2


@pytest.mark.anyio
async def test_granian_closes_a_half_sent_head_after_client_header_timeout(push_server_factory):
    """client_header_timeout reaches granian (--http1-header-read-timeout): a slowloris
    connection is closed, and serving goes on meanwhile."""
    pytest.importorskip("granian")
    server = push_server_factory(
        {"locations": LOCATIONS, "client_header_timeout": 1}, "--server", "granian"
    )
    host, port = server.host.rsplit(":", 1)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        with anyio.fail_after(15):
            stream = await anyio.connect_tcp(host, int(port))
            async with stream:
                await stream.send(b"GET /subscriber/slow HTTP/1.1\r\nHost: t\r\nX-A: ")
                await assert_still_serving(client)
                received = await read_until_closed(stream)
    # Closed by granian without a response to a request it never finished reading (or
    # with its 408): either way the connection is gone within the bound.
    assert received == b"" or received.startswith(b"HTTP/1.1 408"), received[:200]


@pytest.mark.anyio
async def test_uvicorn_in_process_publishing_ends_with_serving():
    """Under --server uvicorn the first request registers the app for in-process
    send_update; once serving is over (here: cancelled) it is no longer found, as after
    hypercorn's serve()."""
    import socket

    from pushserver.asgi import _FirstRequest, build_application
    from pushserver.running import registry as running
    from pushserver.servers import serve_uvicorn
    from pushserver.settings import get_config
    from pushserver.utils import updates

    app = build_application(None)
    app.first_request = _FirstRequest(app)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    port = sock.getsockname()[1]
    try:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as group:
                group.start_soon(
                    lambda: serve_uvicorn(
                        app, sock, access_log=False, shutdown_timeout=1, config=get_config()
                    )
                )
                async with httpx.AsyncClient() as client:
                    while True:  # until uvicorn listens
                        try:
                            response = await client.get(f"http://127.0.0.1:{port}/status/")
                            break
                        except httpx.ConnectError:
                            await anyio.sleep(0.05)
                assert response.status_code in (200, 403, 404)
                assert running.current is not None and running.current.app is app
                group.cancel_scope.cancel()
    finally:
        sock.close()
    # Nor the address it registered: URLs fall back to the settings again.
    assert running.current is None
    assert updates.current_host is None


def test_granian_worker_raises_the_collector_thresholds(monkeypatch):
    """granian's worker process builds the application with command_application(): the
    cyclic collector gets the thresholds serving uses under hypercorn and uvicorn (at
    Python's defaults, full collections over every held connection cost a fifth of a
    connect), unless the process chose its own."""
    import gc

    from pushserver import asgi, server

    monkeypatch.setenv("PUSHSERVER_RUN_OPTIONS", "{}")
    thresholds = gc.get_threshold()
    try:
        gc.set_threshold(*server.DEFAULT_GC_THRESHOLDS)
        asgi.command_application()
        assert gc.get_threshold() == server.GC_THRESHOLDS
        gc.set_threshold(1000, 10, 10)
        asgi.command_application()
        assert gc.get_threshold() == (1000, 10, 10)
    finally:
        gc.set_threshold(*thresholds)
