"""Fixtures for the browser tests: Debian's Chromium through Playwright, and push servers
that also serve the test pages (``runpushserver --allrequests`` with ``tests.browser.settings``)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from pushserver.testing import PushServerProcess

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


def free_port() -> int:
    """A port that was free a moment ago (the push server must know its own port up front
    for passthrough, and a restarted server must come back on the same one)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def subscriber(prefix: str = "/subscriber/", **options) -> dict:
    return {"type": "subscriber", "prefix": prefix, "create_on_get": True, **options}


PUBLISHER = {"type": "publisher", "prefix": "/publisher/"}


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
    jQuery, to run the suite against another jQuery version.
    """
    contexts = []
    jquery = os.environ.get("PUSHSERVER_TEST_JQUERY")

    def open_page():
        context = browser.new_context()
        contexts.append(context)
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


@pytest.fixture
def page(new_page):
    return new_page()


@pytest.fixture
def start_server() -> Iterator:
    """``start_server(push_server, port=None, allrequests=True, settings=..., env=...)``: a
    real ``runpushserver`` on 127.0.0.1; stopped after the test."""
    started: list[PushServerProcess] = []

    def start(push_server, port=None, allrequests=True, settings=SETTINGS, env=None, cwd=ROOT):
        server = PushServerProcess(
            settings,
            push_server=push_server,
            args=["--allrequests"] if allrequests else [],
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
