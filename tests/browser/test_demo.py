"""The demo page (``example/``) in several tabs: what one tab does, every tab shows."""

from __future__ import annotations

import time

import httpx
import pytest
from playwright.sync_api import expect

from pushserver.testing import free_port
from tests.conftest import about_transports
from tests.project.helpers import DEMO_SETTINGS, demo_env, manage

pytestmark = pytest.mark.browser

WAIT = 10_000


def enter(page, url, name):
    page.goto(url)
    page.fill("#name", name)
    page.click("button[type=submit]")
    expect(page.locator("#me")).to_have_text(name)


def start_demo(start_server):
    """The demo, as its README runs it, on a free port."""
    port = free_port()
    return start_server(None, port=port, settings=DEMO_SETTINGS, env=demo_env(port))


def test_the_demo_page_works_in_several_tabs(new_page, start_server):
    server = start_demo(start_server)
    alice, bob = new_page(), new_page()  # two browsers' worth of cookies: two people
    errors: list[str] = []
    watch = lambda tab: tab.on("pageerror", lambda error: errors.append(str(error)))  # noqa: E731
    watch(alice)
    watch(bob)
    enter(alice, server.url, "alice")
    enter(bob, server.url, "bob")
    alice_again = alice.context.new_page()  # alice's second tab, same session
    watch(alice_again)
    alice_again.goto(server.url)
    tabs = (alice, bob, alice_again)

    alice.fill("#text", "hello, everyone")
    alice.press("#text", "Enter")
    bob.click("#count-button")
    bob.click("#count-button")
    for tab in tabs:
        expect(tab.locator("#messages li")).to_have_text(["alice: hello, everyone"], timeout=WAIT)
        expect(tab.locator("#counter")).to_have_text("2", timeout=WAIT)
        expect(tab.locator("#counted-by")).to_have_text("last click: bob", timeout=WAIT)
        # Who is online comes from the passthrough signals, keyed by the session's name.
        expect(tab.locator("#online")).to_have_text("alice, bob", timeout=WAIT)

    bob.fill("#text", "hi alice")
    bob.click("#say-form button")
    for tab in tabs:
        expect(tab.locator("#messages li")).to_have_text(
            ["alice: hello, everyone", "bob: hi alice"], timeout=WAIT
        )
    # A tab opened later replays the channel's retained history.
    late = bob.context.new_page()
    watch(late)
    late.goto(server.url)
    expect(late.locator("#messages li")).to_have_text(
        ["alice: hello, everyone", "bob: hi alice"], timeout=WAIT
    )
    expect(late.locator("#counter")).to_have_text("2", timeout=WAIT)
    for tab in (*tabs, late):
        assert tab.locator("#status").inner_text() == ""
    assert errors == []

    # bob closes his tabs; once his polls have been gone for the grace period, he is offline.
    bob.context.close()
    for tab in (alice, alice_again):
        expect(tab.locator("#online")).to_have_text("alice", timeout=WAIT + 5_000)


def connections(server) -> dict[str, int]:
    """Subscriber connections per transport, from the demo's status location."""
    return httpx.get(f"{server.url}/status/", timeout=10).json()["connections"]


def wait_connections(server, transport, timeout=10.0):
    """Poll the status location until the page's one connection is ``transport``."""
    deadline = time.monotonic() + timeout
    others = {"longpoll", "eventsource", "websocket"} - {transport}
    while True:
        seen = connections(server)
        # A long poll is briefly not held between two requests; a stream stays open.
        if seen[transport] == 1 and not any(seen[o] for o in others):
            return
        assert time.monotonic() < deadline, f"{seen}, expected only {transport}"
        time.sleep(0.02)  # the poll interval, so the loop does not hog the shared CPUs


@about_transports("longpoll", "eventsource", "websocket")
def test_the_transport_switch(new_page, start_server):
    """Each transport chosen with the switch receives; the updates come from
    `./manage.py shell`, as a developer would try them."""
    server = start_demo(start_server)
    env = demo_env(int(server.host.rsplit(":", 1)[1]))
    page = new_page()
    enter(page, server.url, "carol")
    expect(page.locator("#transport-switch input[value=longpoll]")).to_be_checked()
    wait_connections(server, "longpoll")
    said = []
    for transport in ("eventsource", "websocket", "longpoll"):
        page.check(f"#transport-switch input[value={transport}]")
        wait_connections(server, transport)
        text = f"over {transport}"
        code = (
            "from pushserver.utils.updates import send_update; "
            f"send_update('demo', {{'type': 'chat', 'name': 'shell', 'text': {text!r}}})"
        )
        result = manage("shell", "-c", code, settings=DEMO_SETTINGS, env=env)
        assert result.returncode == 0, result.stdout
        said.append(f"shell: {text}")
        expect(page.locator("#messages li")).to_have_text(said, timeout=WAIT)
        assert page.url.endswith(f"?transport={transport}")
    # The choice survives a reload of the page (it is in the address).
    page.reload()
    expect(page.locator("#transport-switch input[value=longpoll]")).to_be_checked()
    page.goto(f"{server.url}/?transport=websocket")
    expect(page.locator("#transport-switch input[value=websocket]")).to_be_checked()
    wait_connections(server, "websocket")
    expect(page.locator("#messages li")).to_have_text(said, timeout=WAIT)  # replayed
    assert page.locator("#status").inner_text() == ""
    assert page.errors == []
