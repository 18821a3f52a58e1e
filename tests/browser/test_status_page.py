"""The status page in Chromium: it follows the server live, through the push server's own
event stream, without reloading."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from pushserver.status import status_token
from tests.conftest import about_transports

from .conftest import PUBLISHER, WAIT, publish, subscriber

pytestmark = pytest.mark.browser

STATUS = {"type": "status", "prefix": "/status/", "interval": 0.2}


def counter(page, label):
    """The number cell of a row of the Messages table."""
    return page.locator("#totals tr", has=page.locator("td", has_text=label)).locator("td.n")


def connections(page, column):
    return page.locator("#connections tr").nth(1).locator("td").nth(column)


@about_transports("eventsource")  # its subscriber elsewhere is an EventSource
def test_the_status_page_updates_live(start_server, new_page):
    server = start_server({"locations": [PUBLISHER, subscriber(), STATUS]}, allrequests=False)
    page = new_page()
    page.goto(server.url + "/status/")
    expect(page.locator("#state")).to_have_text("live", timeout=WAIT)
    expect(page.locator("#stores td.ok")).to_have_text("ok")
    counters = {name: counter(page, name) for name in ("published", "received", "delivered")}
    before = {name: int(cell.text_content()) for name, cell in counters.items()}
    page.evaluate("window.notReloaded = true")

    # A subscriber elsewhere (an EventSource in another tab) shows up...
    expect(connections(page, 1)).to_have_text("0")
    other = new_page()
    other.goto(server.url + "/status/json")
    other.evaluate("window.source = new EventSource('/subscriber/news')")
    expect(connections(page, 1)).to_have_text("1", timeout=WAIT)

    # ...a message is published and delivered to it...
    publish(server, "news", {"n": 1})
    for name, cell in counters.items():
        expect(cell).to_have_text(str(before[name] + 1), timeout=WAIT)

    # ...and it goes away.
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


def last_y(page, selector):
    """The height of a chart line's newest point (SVG y grows downwards), or None."""
    return page.evaluate(
        """selector => {
            const line = document.querySelector(selector);
            if (!line || !line.getAttribute('points')) return null;
            const points = line.getAttribute('points').trim().split(' ');
            return Number(points[points.length - 1].split(',')[1]);
        }""",
        selector,
    )


@about_transports("eventsource")  # its subscriber elsewhere is an EventSource
def test_the_charts_move_after_a_publish_burst(start_server, new_page):
    store = {"type": "memory", "memory_limit": 8 * 1024 * 1024}
    server = start_server(
        {"store": store, "locations": [PUBLISHER, subscriber(), STATUS]}, allrequests=False
    )
    page = new_page()
    page.goto(server.url + "/status/")
    expect(page.locator("#state")).to_have_text("live", timeout=WAIT)
    memory = "#chart-memory polyline[data-series='default']"
    budget = "#chart-memory polyline[data-series='default budget']"
    deliveries = "#chart-deliveries svg"
    page.wait_for_function(f"document.querySelector({memory!r})", timeout=WAIT)
    expect(page.locator("#chart-memory .latest")).to_contain_text("of 8.0 MiB")
    before = last_y(page, memory)
    assert page.locator(deliveries).get_attribute("data-top") == "1"  # nothing yet: the floor

    other = new_page()
    other.goto(server.url + "/status/json")
    other.evaluate("window.source = new EventSource('/subscriber/burst')")
    expect(connections(page, 1)).to_have_text("1", timeout=WAIT)
    for n in range(40):
        publish(server, "burst", "x" * 20_000 + str(n), content_type="text/plain")

    # The store's line rises (SVG y falls) toward its dashed budget, and deliveries per
    # second were drawn above the empty chart's floor.
    page.wait_for_function(
        """([selector, before]) => {
            const line = document.querySelector(selector);
            const points = line.getAttribute('points').trim().split(' ');
            return Number(points[points.length - 1].split(',')[1]) < before;
        }""",
        arg=[memory, before],
        timeout=WAIT,
    )
    assert last_y(page, budget) is not None
    page.wait_for_function(
        f"Number(document.querySelector({deliveries!r}).dataset.top) > 1", timeout=WAIT
    )
    expect(page.locator("#budgets")).to_contain_text("8.0 MiB")
    assert page.errors == []
