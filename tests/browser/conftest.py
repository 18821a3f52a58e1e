"""Fixtures for the browser tests: Debian's Chromium through Playwright, push servers that
also serve the test pages (``runpushserver --allrequests`` with ``tests.browser.settings``),
and helpers to publish and to wait on the page or the server."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pushserver.testing import PushServerProcess, free_port

from .npm import install as install_npm_packages
from .npm import route_npm

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
ROOT = Path(__file__).resolve().parent.parent.parent
SETTINGS = "tests.browser.settings"


def subscriber(prefix: str = "/subscriber/", **options) -> dict:
    return {"type": "subscriber", "prefix": prefix, "create_on_get": True, **options}


PUBLISHER = {"type": "publisher", "prefix": "/publisher/"}


def cors_config(site, store=None, transport="longpoll", **location) -> dict:
    """Settings with a publisher, ``/subscriber/`` and ``/cors/``, which allows ``site``
    with credentials (``location``: more keys of it)."""
    settings = {
        "transport": transport,
        "locations": [
            PUBLISHER,
            subscriber(),
            subscriber("/cors/", allow_origin=[site], allow_credentials=True, **location),
        ],
    }
    if store is not None:
        settings["store"] = store
    return settings


def start_cross_origin(start, store=None, **kwargs):
    """``(server, site)``: a server started by ``start`` (``start_server`` or
    ``start_module_server``) with :func:`cors_config`; its pages are served from ``site``,
    ``http://localhost:<port>``, another origin to the browser than its ``url``
    ``http://127.0.0.1:<port>``. ``kwargs``: :func:`cors_config`'s, and ``args`` for the
    server."""
    port = free_port()
    site = f"http://localhost:{port}"
    args = kwargs.pop("args", ())
    return start(cors_config(site, store, **kwargs), port=port, args=args), site


WAIT = 10_000  # ms: a bound on every wait for the page, never a sleep


def publish(server, channel, data, content_type="application/json", event=None):
    body = data if isinstance(data, (bytes, str)) else json.dumps(data)
    headers = {"content-type": content_type}
    if event is not None:
        headers["x-eventsource-event"] = event
    response = httpx.post(f"{server.url}/publisher/{channel}", content=body, headers=headers)
    assert response.status_code in (201, 202), response.text
    return response


def channel_info(server, channel):
    response = httpx.get(
        f"{server.url}/publisher/{channel}", headers={"accept": "application/json"}
    )
    assert response.status_code == 200, response.text
    return response.json()


def wait_received(page, count):
    page.wait_for_function("n => window.received.length >= n", arg=count, timeout=WAIT)
    return page.evaluate("window.received")


def wait_problem(page, kind):
    page.wait_for_function(
        "kind => window.problems.some(p => p.kind === kind)", arg=kind, timeout=WAIT
    )
    return page.evaluate("window.problems")


def flush_events(page):
    """Let Playwright's sync API deliver the page's events (it only does during its own
    calls): a round trip to the page comes back after every event the page sent before."""
    page.evaluate("0")


def restart_missing_two(page, start_server, server, other, settings, channel):
    """The restart step of the resume tests (the page got ``{"type": "test", "n": 1}``):
    stop the page's ``server`` (its clients report a ``request`` problem), publish n 2 and 3
    through ``other`` (same store) while it is down, start it again on its port; the page
    must then have exactly 1, 2, 3. Returns the server started again."""
    server.stop()
    wait_problem(page, "request")
    publish(other, channel, {"type": "test", "n": 2})
    publish(other, channel, {"type": "test", "n": 3})
    port = int(server.url.rsplit(":", 1)[1])
    server = start_server(settings, port=port)
    received = wait_received(page, 3)
    assert [item["data"]["n"] for item in received] == [1, 2, 3]
    return server


def subscribers(server, channel):
    info = httpx.get(f"{server.url}/publisher/{channel}", headers={"accept": "application/json"})
    if info.status_code == 404:  # not created yet
        return 0
    return info.json()["subscribers"]


def wait_subscribers(server, channel, count, timeout=10.0):
    """Poll the channel info (a real signal from the server) until ``count`` subscribers
    (long polls waiting, event streams or WebSockets open) are there."""
    deadline = time.monotonic() + timeout
    while (seen := subscribers(server, channel)) != count:
        assert time.monotonic() < deadline, f"{seen} subscribers on {channel!r}, expected {count}"
        time.sleep(0.02)  # the poll interval, so the loop does not hog the shared CPUs


# Module scope, not session: sync Playwright keeps an asyncio loop running in the main
# thread while it is open, which would break every async test collected after this package.
@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(
            f"{CHROMIUM} is missing: install Debian's chromium package to run the browser tests"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def new_page(browser):
    """``new_page()`` opens a tab in a fresh browser context (its own cookies); the page's
    errors are collected in ``page.errors``.

    ``PUSHSERVER_TEST_JQUERY=/path/to/jquery.js`` serves that file in place of the vendored
    jQuery, to run the suite against another jQuery version. ``/npm/...`` URLs are answered
    from the npm cache (see ``tests/browser/npm.py``; use the ``npm`` fixture to install it).
    """
    contexts = []
    jquery = os.environ.get("PUSHSERVER_TEST_JQUERY")

    def open_page():
        context = browser.new_context()
        contexts.append(context)
        route_npm(context)
        if jquery:
            context.route("**/static/live/jquery.min.js", lambda route: route.fulfill(path=jquery))
        page = context.new_page()
        page.set_default_timeout(10_000)
        page.errors = []
        page.on("pageerror", lambda error: page.errors.append(str(error)))
        return page

    yield open_page
    for context in contexts:
        context.close()


@pytest.fixture(scope="session")
def npm():
    """The ``node_modules`` directory of the browser libraries (``tests/browser/npm.py``),
    installed once per session; skips the test when npm cannot install them."""
    return install_npm_packages()


@pytest.fixture
def page(new_page):
    return new_page()


def _server_starter() -> Iterator:
    """``start(push_server, port=None, allrequests=True, settings=..., env=..., args=())``:
    a real ``runpushserver`` on 127.0.0.1 (``args``: more command arguments); every server
    it started is stopped when the generator ends."""
    started: list[PushServerProcess] = []

    def start(
        push_server, port=None, allrequests=True, settings=SETTINGS, env=None, cwd=ROOT, args=()
    ):
        server = PushServerProcess(
            settings,
            push_server=push_server,
            args=[*(["--allrequests"] if allrequests else []), *args],
            address=f"127.0.0.1:{port or 0}",
            env=env,
            cwd=str(cwd),
        )
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()
        # pytest shows this only when the test failed.
        print(f"--- runpushserver {server.address} ---\n{server.log}")


@pytest.fixture
def start_server() -> Iterator:
    """``start_server(push_server, ...)``: see :func:`_server_starter`; stopped after the
    test."""
    yield from _server_starter()


@pytest.fixture(scope="module")
def start_module_server() -> Iterator:
    """The same, stopped after the module: for a module that shares one server between its
    tests (each test on channels of its own)."""
    yield from _server_starter()
