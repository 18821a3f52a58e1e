"""The demo page (``example/``) in several tabs: what one tab does, every tab shows."""

from __future__ import annotations

import os

import pytest
from playwright.sync_api import expect

from pushserver.testing import free_port

from .conftest import ROOT

pytestmark = pytest.mark.browser

WAIT = 10_000


def enter(page, url, name):
    page.goto(url)
    page.fill("#name", name)
    page.click("button[type=submit]")
    expect(page.locator("#me")).to_have_text(name)


def test_the_demo_page_works_in_several_tabs(new_page, start_server):
    port = free_port()
    path = os.pathsep.join([str(ROOT / "example"), str(ROOT), os.environ.get("PYTHONPATH", "")])
    server = start_server(
        None,
        port=port,
        settings="tests.browser.demo_settings",
        env={"PUSHSERVER_DEMO_PORT": str(port), "PYTHONPATH": path},
    )
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
