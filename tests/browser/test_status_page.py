"""The status page in Chromium: it follows the server live, through the push server's own
event stream, without reloading."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from pushserver.status import status_token

from .conftest import PUBLISHER, WAIT, publish, subscriber

pytestmark = pytest.mark.browser

STATUS = {"type": "status", "prefix": "/status/", "interval": 0.2}


def counter(page, label):
    """The number cell of a row of the Messages table."""
    return page.locator("#totals tr", has=page.locator("td", has_text=label)).locator("td.n")


def connections(page, column):
    return page.locator("#connections tr").nth(1).locator("td").nth(column)


def test_the_status_page_updates_live(start_server, new_page):
    server = start_server({"locations": [PUBLISHER, subscriber(), STATUS]}, allrequests=False)
    page = new_page()
    page.goto(server.url + "/status/")
    expect(page.locator("#state")).to_have_text("live", timeout=WAIT)
    expect(page.locator("#stores td.ok")).to_have_text("ok")
    published = counter(page, "published")
    before = int(published.text_content())
    page.evaluate("window.notReloaded = true")

    publish(server, "news", {"n": 1})
    expect(published).to_have_text(str(before + 1), timeout=WAIT)
    expect(counter(page, "received for fan-out")).to_have_text(str(before + 1), timeout=WAIT)

    # A subscriber elsewhere (an EventSource in another tab) shows up, then goes away.
    expect(connections(page, 1)).to_have_text("0")
    other = new_page()
    other.goto(server.url + "/status/json")
    other.evaluate("window.source = new EventSource('/subscriber/news')")
    expect(connections(page, 1)).to_have_text("1", timeout=WAIT)
    other.evaluate("window.source.close()")
    expect(connections(page, 1)).to_have_text("0", timeout=WAIT)

    assert page.evaluate("window.notReloaded") is True
    assert page.errors == []


def test_the_status_page_with_a_token(start_server, new_page):
    secret = "page secret"
    server = start_server({"publisher_secret": secret, "locations": [STATUS]}, allrequests=False)
    page = new_page()
    response = page.goto(server.url + "/status/")
    assert response.status == 403
    page.goto(f"{server.url}/status/?token={status_token(secret)}")
    expect(page.locator("#state")).to_have_text("live", timeout=WAIT)
    first = page.evaluate("Number(document.body.dataset.time)")
    page.wait_for_function("t => Number(document.body.dataset.time) > t", arg=first, timeout=WAIT)
    assert page.errors == []
