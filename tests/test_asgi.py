"""``pushserver.asgi.get_asgi_application`` on the ASGI interface itself: settings errors at
build time, the stores opened by the lifespan or else by the first request (and closed
when the loop ends), and the registration for in-process publishing. Real servers run it
in tests/test_asgi_servers.py."""

from __future__ import annotations

import signal

import anyio
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from pushserver.asgi import get_asgi_application
from pushserver.running import registry as running
from pushserver.utils import updates

LOCATIONS = [
    {"type": "publisher", "prefix": "/publisher/"},
    {"type": "subscriber", "prefix": "/subscriber/", "create_on_get": True},
]


@pytest.fixture
def clean_process():
    """What the first request changes in the process, put back after the test."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    running.current = None
    running.host = None
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


async def call(app, method: str, path: str, body: bytes = b"") -> list[dict]:
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
        "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
        "query_string": b"", "root_path": "",
        "headers": [(b"host", b"push.example:8123"),
                    (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8123),
    }  # fmt: skip
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict] = []

    async def receive():
        if messages:
            return messages.pop(0)
        await anyio.sleep_forever()

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    return sent


def test_settings_errors_are_raised_when_the_application_is_built():
    bad = {"locations": [{"type": "pigeon", "prefix": "/x/"}]}
    with (
        override_settings(PUSH_SERVER=bad),
        pytest.raises(ImproperlyConfigured, match=r"pushserver\.E\d+"),
    ):
        get_asgi_application()


@override_settings(PUSH_SERVER={"locations": LOCATIONS})
def test_without_a_lifespan_the_first_request_opens_the_stores_until_the_loop_ends(
    clean_process,
):
    app = get_asgi_application()
    seen = {}

    async def main():
        sent = await call(app, "POST", "/publisher/a", b"hello")
        seen["status"] = sent[0]["status"]
        seen["open"] = app._stack is not None
        seen["registered"] = running.current is not None and running.current.app is app
        seen["host"] = running.current.host
        seen["first_request"] = app.first_request
        sent = await call(app, "GET", "/subscriber/a")
        seen["message"] = sent[1]["body"]

    anyio.run(main, backend="asyncio")
    assert seen == {
        "status": 202,
        "open": True,
        "registered": True,
        "host": "127.0.0.1:8123",
        "first_request": None,  # done once: later requests pay one attribute test
        "message": b"hello",
    }
    assert updates.current_host == "127.0.0.1:8123"
    # The loop ended: its tasks were cancelled, and the one holding the stores closed them.
    assert app._stack is None


@override_settings(PUSH_SERVER={"locations": LOCATIONS})
def test_the_lifespan_opens_and_closes_the_stores(clean_process):
    app = get_asgi_application()
    seen = {}

    async def main():
        events = [{"type": "lifespan.startup"}]
        shutdown = anyio.Event()
        answers = []

        async def receive():
            if events:
                return events.pop(0)
            await shutdown.wait()
            return {"type": "lifespan.shutdown"}

        started = anyio.Event()

        async def send(message):
            answers.append(message["type"])
            started.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(app, {"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
            with anyio.fail_after(5):
                await started.wait()
            seen["opened"] = app._stack is not None
            seen["status"] = (await call(app, "POST", "/publisher/b", b"x"))[0]["status"]
            shutdown.set()
        seen["answers"] = answers
        seen["closed"] = app._stack is None

    anyio.run(main, backend="asyncio")
    assert seen == {
        "opened": True,
        "status": 202,
        "answers": ["lifespan.startup.complete", "lifespan.shutdown.complete"],
        "closed": True,
    }
